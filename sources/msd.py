"""The Medical Segmentation Decathlon layout: ``dataset.json`` -> the list of cases (nnU-Net v2's too).

See docs/explanation/internals.md#the-msd-and-nnu-net-layouts-sourcesmsdpy-sourcesnnunetpy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.common.errors import PancreasError
from dataset.common.links import broken_link
from dataset.common.paths import inside
from sources.nnunet import check_single_ct_channel, is_v2, labels_by_value, split_channel

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SPLIT_FOLDERS = {"training": ("imagesTr", "labelsTr"), "test": ("imagesTs", None)}


class MsdDatasetError(PancreasError, ValueError):
    """A dataset folder or dataset.json that cannot be used; the message names it."""


@dataclass(frozen=True)
class MsdCase:
    case_id: str
    split: str  # "training" | "test"
    image: Path
    label: Path | None


@dataclass(frozen=True)
class MsdDataset:
    root: Path
    name: str
    labels: dict[str, str]  # {"0": "background", ...} as declared (nnU-Net v2's name -> value turned round)
    cases: tuple[MsdCase, ...]
    layout: str = "msd"  # "msd" | "nnunet" (v2)

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(int(k) for k in self.labels))


def case_id_of(path: str | Path) -> str:
    """``pancreas_001`` from ``.../pancreas_001.nii.gz`` (a DICOM folder: its name)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_ignored(name: str) -> bool:
    """macOS resource files (``._x.nii.gz``) and other hidden files."""
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    return not is_ignored(name) and name.endswith(NIFTI_SUFFIXES)


def _resolve(root: Path, entry: Any, where: str) -> Path:
    if not isinstance(entry, str) or not entry.strip():
        raise MsdDatasetError(f"{root / DATASET_JSON}: {where}: expected a relative path, got {entry!r}")
    path = (root / entry).resolve()
    if not path.is_relative_to(root):
        raise MsdDatasetError(f"{root / DATASET_JSON}: {where} {entry!r} resolves outside the dataset folder ({path})")
    return path


def _skip_listed(image: Path, entry: str) -> bool:
    """True (with a warning) for a listed macOS resource file or a file that is not NIfTI."""
    if is_ignored(image.name):
        log.warning("ignoring %s listed in dataset.json (macOS resource file)", entry)
        return True
    if image.is_file() and not image.name.endswith(NIFTI_SUFFIXES):
        log.warning("ignoring %s listed in dataset.json (not a NIfTI file)", entry)
        return True
    return False


def _listed_cases(root: Path, meta: dict[str, Any]) -> list[MsdCase]:
    cases = []
    for i, entry in enumerate(meta.get("training") or []):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise MsdDatasetError(f"{root / DATASET_JSON}: training[{i}] must have 'image' and 'label', got {entry!r}")
        image = _resolve(root, entry["image"], f"training[{i}].image")
        label = _resolve(root, entry["label"], f"training[{i}].label")
        if _skip_listed(image, entry["image"]):
            continue
        cases.append(MsdCase(case_id_of(image), "training", image, label))
    for i, entry in enumerate(meta.get("test") or []):
        if isinstance(entry, dict):  # some tools write {"image": ...} for test entries too
            entry = entry.get("image")
        image = _resolve(root, entry, f"test[{i}]")
        if _skip_listed(image, entry):
            continue
        cases.append(MsdCase(case_id_of(image), "test", image, None))
    return cases


def _resolve_scanned(root: Path, path: Path) -> Path:
    """``path`` with links resolved; refused, like a listed entry, if that leaves ``root``.

    A link that leads nowhere (dangling, or a loop) is kept as it is: reading it fails,
    and the case is reported failed rather than silently missing (or a traceback).
    """
    if broken_link(path):
        return path
    resolved = path.resolve()
    if not inside(resolved, root):
        raise MsdDatasetError(
            f"{path}: resolves outside the dataset folder ({resolved}); "
            f"copy the file into {root} instead of linking to it"
        )
    return resolved


def _scanned_cases(root: Path) -> list[MsdCase]:
    """Cases found in imagesTr/labelsTr/imagesTs when dataset.json lists none."""
    cases = []
    for split, (images, labels) in SPLIT_FOLDERS.items():
        folder = root / images
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not is_image_name(path.name):
                continue
            label = _resolve_scanned(root, root / labels / path.name) if labels else None
            cases.append(MsdCase(case_id_of(path), split, _resolve_scanned(root, path), label))
    return cases


def _v2_images(root: Path, folder: Path, ending: str) -> list[tuple[str, Path]]:
    """(case id, image) of an nnU-Net v2 image folder; a file without ``_0000`` is refused."""
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if is_ignored(path.name):
            continue
        if not path.name.endswith(ending):
            other = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
            if other is not None:  # skipped silently, it would surface as a wrong case count
                raise MsdDatasetError(
                    f"{path}: ends in {other!r} but dataset.json's 'file_ending' is {ending!r}; "
                    "correct file_ending (nnU-Net v2 has one ending for every file) or rename the files"
                )
            continue
        parts = split_channel(path.name[: -len(ending)])
        if parts is None:
            raise MsdDatasetError(f"{path}: no channel suffix; nnU-Net v2 images are named <case>_0000{ending}")
        if parts[1] != 0:
            raise MsdDatasetError(
                f"{path}: channel {parts[1]:04d} of case {parts[0]!r}; this pipeline reads a single CT channel (_0000)"
            )
        found.append((parts[0], _resolve_scanned(root, path)))
    return found


def _v2_cases(root: Path, meta: dict[str, Any], meta_path: Path) -> list[MsdCase]:
    """Cases of an nnU-Net v2 raw dataset: its folders scanned, channel suffixes dropped."""
    if "dataset" in meta:
        raise MsdDatasetError(
            f"{meta_path}: 'dataset' (nnU-Net's explicit file list) is not supported; put the "
            "files in imagesTr/, labelsTr/ and imagesTs/"
        )
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_SUFFIXES:
        raise MsdDatasetError(
            f"{meta_path}: 'file_ending' {ending!r} is not one of {list(NIFTI_SUFFIXES)}; "
            "this pipeline reads NIfTI (or DICOM with `pancreas predict`)"
        )
    if "training" in meta or "test" in meta:
        log.warning(
            "%s: nnU-Net v2 dataset.json: its 'training'/'test' lists are ignored, the folders are scanned", meta_path
        )
    cases = []
    for split, (images, labels) in SPLIT_FOLDERS.items():
        for case_id, image in _v2_images(root, root / images, ending):
            label = _resolve_scanned(root, root / labels / f"{case_id}{ending}") if labels else None
            cases.append(MsdCase(case_id, split, image, label))
    declared = meta.get("numTraining")
    n_training = sum(c.split == "training" for c in cases)
    if isinstance(declared, int) and declared != n_training:
        raise MsdDatasetError(
            f"{meta_path}: 'numTraining' is {declared} but {root / 'imagesTr'} holds "
            f"{n_training} case(s); correct numTraining or the folder"
        )
    return cases


def _labels(meta: dict[str, Any], meta_path: Path, v2: bool) -> dict[str, str]:
    """Declared labels as ``{"0": "background", ...}``, after checking the single CT channel."""
    if v2 and "channel_names" not in meta:
        raise MsdDatasetError(
            f"{meta_path}: an nnU-Net v2 dataset.json without 'channel_names'; declare the single CT "
            'channel: "channel_names": {"0": "CT"}'
        )
    try:
        check_single_ct_channel(meta.get("channel_names" if v2 else "modality"), "channel_names" if v2 else "modality")
        return labels_by_value(meta.get("labels") or {"0": "background"})
    except ValueError as err:
        raise MsdDatasetError(f"{meta_path}: {err}") from None


def load_msd_dataset(folder: str | Path) -> MsdDataset:
    """Parse ``folder/dataset.json`` (MSD or nnU-Net v2) into cases (training with labels, test without)."""
    root = Path(folder).resolve()
    meta_path = root / DATASET_JSON
    if not meta_path.is_file():
        raise MsdDatasetError(f"{root}: no {DATASET_JSON}; expected an MSD task folder or an nnU-Net v2 raw dataset")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MsdDatasetError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise MsdDatasetError(f"{meta_path}: expected a JSON object")
    v2 = is_v2(meta)
    labels = _labels(meta, meta_path, v2)
    if v2:
        cases = _v2_cases(root, meta, meta_path)
    else:
        cases = _listed_cases(root, meta) if "training" in meta or "test" in meta else _scanned_cases(root)
    seen: dict[str, MsdCase] = {}
    for case in cases:
        if case.case_id in seen:
            raise MsdDatasetError(
                f"{meta_path}: case id {case.case_id!r} appears twice ({seen[case.case_id].image}, {case.image})"
            )
        seen[case.case_id] = case
    return MsdDataset(root, str(meta.get("name", root.name)), labels, tuple(cases), "nnunet" if v2 else "msd")
