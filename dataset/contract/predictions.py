"""``PRED_DIR/predictions.json``: what ``pancreas predict`` wrote into its output folder.

Predict reads it back to skip up-to-date cases and to know which files in PRED_DIR are its
own: a case is listed (``pending``) before its files are written. A case is up to date when
its record is ``done`` with the same input and settings fingerprints and its
files (``output_names``) exist. Fields: the dataclasses below and docs/reference/contract.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dataset.common.records import ContractError, read_record, write_record

PREDICTIONS_NAME = "predictions.json"
LABEL_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
SEG_SUFFIX = "_seg.dcm"
# what predict writes per case: the NIfTI label map, a DICOM Segmentation (DICOM input only), or both
OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")
STATUSES = ("done", "failed", "pending")
_REMEDY = "move the folder's files away or choose another output folder"


class PredictionsError(ContractError):
    """A ``predictions.json`` that cannot be read; the message names it."""


def label_name(case_id: str) -> str:
    """File name of a case's label map in PRED_DIR."""
    return f"{case_id}{LABEL_SUFFIX}"


def probabilities_name(case_id: str) -> str:
    """File name of a case's optional class-probability maps in PRED_DIR."""
    return f"{case_id}{PROBABILITIES_SUFFIX}"


def seg_name(case_id: str) -> str:
    """File name of a case's DICOM Segmentation in PRED_DIR."""
    return f"{case_id}{SEG_SUFFIX}"


def writes_nifti(output_format: str) -> bool:
    return output_format in ("nifti", "both")


def writes_seg(output_format: str) -> bool:
    return output_format in ("dicom-seg", "both")


def output_names(case_id: str, output_format: str) -> list[str]:
    """The files a case is written as under ``output_format`` (one of ``OUTPUT_FORMATS``)."""
    nifti = [label_name(case_id)] if writes_nifti(output_format) else []
    return nifti + ([seg_name(case_id)] if writes_seg(output_format) else [])


@dataclass(frozen=True)
class PredictionRecord:
    """One case of ``predictions.json``."""

    input: str  # the CT file or DICOM folder read (as given); one series of several: "FOLDER (DICOM series UID)"
    input_fingerprint: str | None  # fingerprint_file of the input, taken when the case was planned | null
    settings_fingerprint: str  # the settings fingerprint the case was predicted with
    status: str = "pending"  # "done" | "failed" | "pending" (planned, not finished: a killed run)
    error: str | None = None  # null | one-line reason
    output: str | None = None  # path of <case>.nii.gz when done (none is written for output_format dicom-seg) | null
    shape_zyx: tuple[int, ...] | None = None  # [z, y, x] of the preprocessed (stored-grid) volume | null
    output_sha256: str | None = None  # SHA-256 of <case>.nii.gz as predict wrote it (an edited file differs) | null
    dicom_seg: str | None = None  # path of <case>_seg.dcm (DICOM Segmentation) when one was written | null
    dicom_seg_sha256: str | None = None  # SHA-256 of <case>_seg.dcm as predict wrote it | null
    # seconds per step: {"preprocess", "model" (the first pass included), "first_pass", "stitch", "export"}, 3 decimals
    seconds: Mapping[str, float] = field(default_factory=dict)
    # roi: auto: {"mode", "margin_mm", "result", "boxes" (stored grid, half-open [{"start_zyx", "stop_zyx"}] |
    # null: predicted everywhere), "windows" (the full pass's), "windows_whole" (the whole grid's),
    # "first_pass_windows"} | null (not predicted yet, failed)
    roi: Mapping[str, Any] | None = None
    # TensorFlow's intra-op threads the seconds were measured with (--threads; default: every core this
    # process may use) | null (a model other than a Keras checkpoint, or a case predicted before issue 20)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise PredictionsError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        object.__setattr__(self, "seconds", {k: round(float(v), 3) for k, v in self.seconds.items()})

    @property
    def done(self) -> bool:
        return self.status == "done"


@dataclass(frozen=True)
class Predictions:
    """The whole ``predictions.json``."""

    KIND: ClassVar[str] = "predictions record"
    ERROR: ClassVar[type[Exception]] = PredictionsError

    version: int = field(default=1, kw_only=True)  # format version of this file
    # {case id: record}, in the order cases were first predicted
    cases: Mapping[str, PredictionRecord] = field(default_factory=dict, kw_only=True)
    run: str  # absolute path of the training run of the latest predict (an ensemble: the runs joined by os.pathsep)
    settings_fingerprint: str  # of input contract + resolved config + model file (every run's), and the postprocessing
    config: Mapping[str, Any]  # the resolved PredictConfig of that run
    package: str | None = None  # the model package (MODEL.zip or its folder) that predict read, as given | null
    package_sha256: str | None = None  # that package's hash (SHA-256 of its package.json) | null

    def with_case(self, case_id: str, record: PredictionRecord) -> Predictions:
        """A copy with ``case_id``'s record set (a case already listed keeps its place)."""
        return dataclasses.replace(self, cases={**self.cases, case_id: record})

    def owns(self, name: str) -> bool:
        """Whether the file ``name`` of PRED_DIR is one this record lets predict replace."""
        return any(name in (label_name(c), probabilities_name(c), seg_name(c)) for c in self.cases)


def predictions_path(folder: str | Path) -> Path:
    return Path(folder) / PREDICTIONS_NAME


def read_predictions(folder: str | Path) -> Predictions | None:
    """The folder's record, ``None`` when it has none; one clear line when it is damaged."""
    path = predictions_path(folder)
    if not path.exists():
        return None
    return read_record(path, Predictions, "predictions record", _REMEDY)


def write_predictions(folder: str | Path, predictions: Predictions) -> None:
    """Atomically and durably replace the record (crash point ``predictions``)."""
    write_record(predictions_path(folder), predictions, point="predictions")


__all__ = [
    "LABEL_SUFFIX",
    "OUTPUT_FORMATS",
    "PREDICTIONS_NAME",
    "PROBABILITIES_SUFFIX",
    "SEG_SUFFIX",
    "STATUSES",
    "PredictionRecord",
    "Predictions",
    "PredictionsError",
    "label_name",
    "output_names",
    "predictions_path",
    "probabilities_name",
    "read_predictions",
    "seg_name",
    "write_predictions",
    "writes_nifti",
    "writes_seg",
]
