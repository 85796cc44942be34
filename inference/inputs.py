"""What ``pancreas predict`` reads: the cases of ``--input`` and the folders they come from.

``--input`` is a NIfTI file, a folder of NIfTI files, an MSD task folder (its test cases)
or a DICOM series folder. Each case is named by its file name without the NIfTI suffix
(``dataset.common.msd.case_id_of``), a DICOM series by its folder's name; that name is
the output's file name, so two inputs with one name are refused before anything runs.

``PredictError`` lives here, in the first layer of prediction, so every later layer
(``inference.safety``, ``inference.settings``, ``inference.volume``, ``inference.predict``)
raises the same error without importing a layer above it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dataset.common.msd import case_id_of, is_image_name, load_msd_dataset


class PredictError(ValueError):
    """An input, run or setting that prediction cannot use; the message names it."""


@dataclass(frozen=True)
class CaseInput:
    case_id: str
    path: Path


def discover_inputs(path: str | Path) -> list[CaseInput]:
    """A NIfTI file, a folder of NIfTI files, an MSD task folder (its test cases) or a DICOM folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: input not found")
    if p.is_file():
        if not is_image_name(p.name):
            raise PredictError(f"{p}: not a NIfTI file (.nii or .nii.gz)")
        return [CaseInput(case_id_of(p), p)]
    if (p / "dataset.json").is_file():
        return _msd_test_cases(p)
    niftis = sorted(q for q in p.iterdir() if q.is_file() and is_image_name(q.name))
    if niftis:
        return [CaseInput(case_id_of(q), q) for q in niftis]
    return [CaseInput(dicom_case_id(p), p)]  # a DICOM series folder; read_image says if it is not one


def _msd_test_cases(folder: Path) -> list[CaseInput]:
    """The test cases ``dataset.json`` lists, else every NIfTI file of ``imagesTs/``."""
    tests = [c for c in load_msd_dataset(folder).cases if c.split == "test"]
    if tests:
        return [CaseInput(c.case_id, c.image) for c in tests]
    tests_dir = folder / "imagesTs"
    if not tests_dir.is_dir():
        raise PredictError(f"{folder}: MSD folder lists no test cases and has no imagesTs/")
    return [CaseInput(case_id_of(q), q) for q in sorted(tests_dir.iterdir()) if is_image_name(q.name)]


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


def input_folders(inputs: str | Path | Sequence[CaseInput], cases: Sequence[CaseInput]) -> list[Path]:
    """Folders the inputs come from (the folder given, each case's folder; a DICOM series is one)."""
    given = [Path(inputs)] if isinstance(inputs, (str, Path)) else []
    folders = [p if p.is_dir() else p.parent for p in [*given, *(c.path for c in cases)]]
    return list(dict.fromkeys(folders))
