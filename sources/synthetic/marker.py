"""Which files of an output folder ``pancreas synth`` may replace: the ownership rules.

See docs/how-to/synth.md#where-it-writes and docs/explanation/internals.md#synthetic-datasets-sourcessynthetic.
"""

from __future__ import annotations

import re
from pathlib import Path

from dataset.common.atomic import read_json, write_json_atomic
from dataset.common.errors import UsageError
from sources.synthetic.params import CaseParams

JUNK_NAME = "._pancreas_001.nii.gz"
SYNTH_MARKER = ".pancreas-synth.json"  # what `pancreas synth` wrote here (see the module docstring)
SPLIT_DIRS = {"training": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
# how dataset.json says synth wrote it: "reference", the start of "description", the file names
SYNTH_REFERENCE = "synthetic (pancreas synth)"
SYNTH_DESCRIPTION = "Synthetic pancreas and tumour CT phantoms"
SYNTH_FILE_NAME = re.compile(r"pancreas_\d{3,}\.nii(\.gz)?")
SYNTH_CASE_FILE = re.compile(r"pancreas_\d{3,}(_0000)?\.nii(\.gz)?")  # either layout's image or label


LAYOUTS = ("msd", "nnunet")
NNUNET_ENDING = ".nii.gz"  # nnU-Net v2 has one file_ending per dataset: the uncompressed cases are gzipped there
DICOM_DIR = "dicomTs"  # --dicom: each test case's image as a DICOM series, dicomTs/<case>/IM0001.dcm...


def case_file_names(params: CaseParams, layout: str = "msd") -> tuple[str, str]:
    """(image, label) file names of a case: MSD ``x.nii[.gz]`` twice, nnU-Net v2 ``x_0000.nii.gz`` and ``x.nii.gz``."""
    if layout == "nnunet":
        return f"{params.name}_0000{NNUNET_ENDING}", f"{params.name}{NNUNET_ENDING}"
    return params.filename, params.filename


def slice_file_name(number: int) -> str:
    """The file of a DICOM series' instance ``number`` (from 1): ``IM0001.dcm``."""
    return f"IM{number:04d}.dcm"


def series_file_names(params: CaseParams) -> list[str]:
    """The files of a case's DICOM series (one per slice), relative to the dataset folder."""
    return [f"{DICOM_DIR}/{params.name}/{slice_file_name(k + 1)}" for k in range(params.grid_size[2])]


def planned_files(params: list[CaseParams], n_cases: int, layout: str = "msd", dicom: bool = False) -> set[str]:
    """Every file ``make_dataset`` writes for ``params`` (training first), relative to the folder."""
    files = {"dataset.json", *(f"{folder}/{JUNK_NAME}" for folder in SPLIT_DIRS["training"])}
    for i, p in enumerate(params):
        images, labels = SPLIT_DIRS["training" if i < n_cases else "test"]
        image, label = case_file_names(p, layout)
        files |= {f"{images}/{image}", f"{labels}/{label}"}
        if dicom and i >= n_cases:
            files.update(series_file_names(p))
    return files


def stale_case_files(out: Path, planned: set[str], listed: set[str]) -> list[Path]:
    """Case files an earlier synth run wrote (``listed``) that this run does not write (``planned``)."""
    folders = {folder for split in SPLIT_DIRS.values() for folder in split if folder}
    stale = []
    for rel in sorted(listed - planned):
        parts = rel.split("/")  # only "<split folder>/<a name synth gives>": a marker is data, not trusted paths
        if (
            len(parts) != 2
            or parts[0] not in folders
            or (out / parts[0]).is_symlink()
            or not SYNTH_CASE_FILE.fullmatch(parts[1])
        ):
            continue
        path = out / rel
        if path.is_file() and not path.is_symlink():
            stale.append(path)
    return stale


def read_synth_marker(out: Path) -> set[str]:
    """Files earlier synth runs wrote into ``out`` (empty without a marker)."""
    path = out / SYNTH_MARKER
    if not path.exists():
        return set()
    data = read_json(path, "synth marker", "choose a new --out folder")
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise UsageError(f"{path}: not a `pancreas synth` marker (no 'files' list)")
    return {str(f) for f in data["files"]}


def write_synth_marker(out: Path, files: set[str]) -> None:
    """Record ``files`` (sorted, so a rerun writes the same bytes) as synth's in ``out``."""
    write_json_atomic(
        out / SYNTH_MARKER,
        {"written_by": "pancreas synth", "files": sorted(files)},
        keep_identical=True,
        point="synth-marker",
    )


def _entry_name(entry: object, folder: str) -> str | None:
    """``name`` of a dataset.json entry ``./<folder>/<name>`` when it is a name synth gives."""
    prefix = f"./{folder}/"
    if isinstance(entry, str) and entry.startswith(prefix) and SYNTH_FILE_NAME.fullmatch(entry[len(prefix) :]):
        return entry[len(prefix) :]
    return None


def _training_name(entry: object) -> str | None:
    """The file name of a training entry synth could have written (image and label named alike)."""
    if not isinstance(entry, dict):
        return None
    name = _entry_name(entry.get("image"), "imagesTr")
    return name if name and entry.get("label") == f"./labelsTr/{name}" else None


def legacy_synth_files(out: Path) -> set[str]:
    """Files synth wrote into ``out`` before it left markers, as its ``dataset.json`` names them.

    Empty unless ``out/dataset.json`` is one synth wrote (see the module docstring): any
    other reference, description or file name, or a missing or unreadable file, and
    nothing in ``out`` counts as synth's.
    """
    try:
        data = read_json(out / "dataset.json", "dataset.json")
    except ValueError:
        return set()
    if (
        not isinstance(data, dict)
        or data.get("reference") != SYNTH_REFERENCE
        or not str(data.get("description", "")).startswith(SYNTH_DESCRIPTION)
        or not isinstance(data.get("training"), list)
        or not isinstance(data.get("test"), list)
    ):
        return set()
    train = [_training_name(e) for e in data["training"]]
    test = [_entry_name(e, "imagesTs") for e in data["test"]]
    if None in train or None in test:
        return set()
    split_names = {"training": train, "test": test}
    files = {"dataset.json", *(f"{folder}/{JUNK_NAME}" for folder in SPLIT_DIRS["training"])}
    return files | {
        f"{folder}/{name}" for split, names in split_names.items() for folder in SPLIT_DIRS[split] for name in names
    }


def synth_files(out: Path) -> set[str]:
    """Files of ``out`` synth may replace: its marker's list, or without one ``legacy_synth_files``."""
    marker = out / SYNTH_MARKER
    return read_synth_marker(out) if marker.exists() or marker.is_symlink() else legacy_synth_files(out)


def check_not_replacing(out: Path, planned: set[str], listed: set[str]) -> None:
    """Refuse to replace a file that synth did not write (``listed``: ``synth_files(out)``)."""
    foreign = sorted(rel for rel in planned - listed if (out / rel).exists() or (out / rel).is_symlink())
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UsageError(
            f"--out {out}: holds {foreign[0]}{more}, not written by `pancreas synth` (not listed in "
            f"{SYNTH_MARKER} nor in a dataset.json synth wrote); synth would replace it: "
            "choose a new or empty --out folder"
        )
