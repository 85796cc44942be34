"""What ``pancreas predict`` reads: the cases of ``--input`` and their names.

``PredictError`` lives here, in the first layer, so every later layer raises it without importing a
layer above. See docs/how-to/predict.md#what---input-may-be.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dataset.common.errors import PancreasError
from dataset.contract.predictions import writes_seg
from sources.msd import case_id_of, is_image_name, load_msd_dataset
from sources.nnunet import stripped_case_ids

log = logging.getLogger(__name__)


class PredictError(PancreasError, ValueError):
    """An input, run or setting that prediction cannot use; the message names it."""


@dataclass(frozen=True)
class CaseInput:
    case_id: str
    path: Path
    series_uid: str | None = None  # the DICOM series to read when ``path`` is a folder holding several

    @property
    def source(self) -> str:
        """What the case is read from, as ``predictions.json`` records it."""
        return str(self.path) if self.series_uid is None else f"{self.path} (DICOM series {self.series_uid})"


def discover_inputs(path: str | Path) -> list[CaseInput]:
    """A NIfTI file, a folder of NIfTI files, an MSD/nnU-Net v2 folder (its test cases) or a DICOM folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: input not found")
    if p.is_file():
        if not is_image_name(p.name):
            raise PredictError(f"{p}: not a NIfTI file (.nii or .nii.gz)")
        return nifti_cases([p])
    if (p / "dataset.json").is_file():
        return _msd_test_cases(p)
    # a link that leads nowhere is kept: it becomes a failed case, never a silently missing one
    niftis = sorted(q for q in p.iterdir() if (q.is_file() or q.is_symlink()) and is_image_name(q.name))
    if niftis:
        return nifti_cases(niftis)
    return dicom_cases(p)


def nifti_cases(paths: Sequence[Path]) -> list[CaseInput]:
    """One case per file, named without NIfTI suffix and, when all carry it, nnU-Net's ``_0000``."""
    stems = [case_id_of(q) for q in paths]
    try:
        stripped = stripped_case_ids(stems)
    except ValueError as err:
        raise PredictError(f"{paths[0].parent}: {err}") from None
    return [CaseInput(stripped[stem] if stripped else stem, q) for stem, q in zip(stems, paths)]


def _msd_test_cases(folder: Path) -> list[CaseInput]:
    """The test cases ``dataset.json`` lists (nnU-Net v2: finds), else every NIfTI file of ``imagesTs/``."""
    dataset = load_msd_dataset(folder)
    tests = [c for c in dataset.cases if c.split == "test"]
    if tests:
        return [CaseInput(c.case_id, c.image) for c in tests]
    tests_dir = folder / "imagesTs"
    if dataset.layout == "nnunet":
        raise PredictError(f"{tests_dir}: nnU-Net dataset has no test images (<case>_0000.nii.gz) to predict")
    if not tests_dir.is_dir():
        raise PredictError(f"{folder}: MSD folder lists no test cases and has no imagesTs/")
    return [CaseInput(case_id_of(q), q) for q in sorted(tests_dir.iterdir()) if is_image_name(q.name)]


def dicom_cases(folder: Path) -> list[CaseInput]:
    """One case per DICOM series in ``folder`` and below (see the module docstring for names)."""
    from preprocess.dicom import find_series, uid_suffix

    series = find_series(folder)
    if not series:
        raise PredictError(
            f"{folder}: no NIfTI file, dataset.json or readable DICOM series in this folder or the folders below it"
        )
    if len(series) == 1:
        only = series[0]
        alone = only.folder == folder and all(Path(f).parent == folder for f in only.files)  # read as before
        cases = [CaseInput(dicom_case_id(folder), folder if alone else only.folder, None if alone else only.uid)]
    else:
        cases = [CaseInput(f"{dicom_case_id(s.folder)}_{uid_suffix(s.uid)}", s.folder, s.uid) for s in series]
    for case, s in zip(cases, series):
        log.info("case %s: DICOM %s", case.case_id, s.summary())
    return cases


def dicom_case_id(folder: Path) -> str:
    """The case id of a DICOM series folder: its resolved name, so ``.`` and ``..`` are named too."""
    name = folder.resolve().name
    if not name:
        raise PredictError(f"{folder}: a DICOM series folder needs a name to name its case (got the root folder)")
    return name


def gather_inputs(inputs: str | Path | Sequence[CaseInput]) -> list[CaseInput]:
    """The cases of ``inputs`` (a path to discover, or cases), each name once."""
    cases = list(inputs) if not isinstance(inputs, (str, Path)) else discover_inputs(inputs)
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise PredictError(f"several inputs share the case name(s) {', '.join(duplicates)}; outputs would collide")
    return cases


def check_seg_inputs(cases: Sequence[CaseInput], output_format: str) -> None:
    """Refuse, before any work, a DICOM SEG of a case that is no DICOM series (nothing to reference)."""
    if not writes_seg(output_format):
        return
    for case in cases:
        if not case.path.is_dir():
            raise PredictError(
                f"{case.path}: output format {output_format!r} writes a DICOM SEG, which must reference a "
                "DICOM series, and this input is a NIfTI file; give a DICOM folder, or --format nifti"
            )


def input_folders(inputs: str | Path | Sequence[CaseInput], cases: Sequence[CaseInput]) -> list[Path]:
    """Folders the inputs come from (the folder given, each case's folder; a DICOM series is one)."""
    given = [Path(inputs)] if isinstance(inputs, (str, Path)) else []
    folders = [p if p.is_dir() else p.parent for p in [*given, *(c.path for c in cases)]]
    return list(dict.fromkeys(folders))
