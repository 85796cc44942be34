"""``PRED_DIR/predictions.json``: what ``pancreas predict`` wrote into its output folder.

``pancreas predict`` (and ``evaluate --run``, which predicts through it) is the only
writer; it reads the record back to skip up-to-date cases and to know which files in
PRED_DIR are its own: it replaces ``<case>.nii.gz`` and ``<case>_probabilities.nii.gz``
only for cases this record lists, and refuses any other file of those names. So a case is
listed (status ``pending``) *before* its files are written, and a killed run leaves only
files its record owns. Layout::

    {"cases": {"<case_id>": {...PredictionRecord...}},
     "run": "/abs/RUN_DIR", "settings_fingerprint": "...", "config": {...resolved PredictConfig...}}

Top-level fields (``Predictions``, in this order):

====================  ==========================================================================
cases                 {case id: record}, in the order cases were first predicted
run                   absolute path of the training run of the latest run of predict (an
                      ensemble: the runs' paths joined by ``os.pathsep``)
settings_fingerprint  fingerprint of input contract + resolved config + model file of that run
                      (an ensemble: of every run), and the post-processing decision
config                the resolved ``PredictConfig`` of that run (a mapping)
====================  ==========================================================================

Record fields (``PredictionRecord``, in this order):

====================  ==========================================================================
input                 the CT file or DICOM folder the case was read from (as given); one series of
                      a folder holding several: ``FOLDER (DICOM series UID)``
input_fingerprint     ``fingerprint_file`` of the input, taken when the case was planned | null
settings_fingerprint  the settings fingerprint the case was predicted with
status                "done" | "failed" | "pending" (planned, not finished: a killed run)
error                 null | one-line reason
output                path of ``<case>.nii.gz`` when done | null
shape_zyx             [z, y, x] of the preprocessed (stored-grid) volume | null
seconds               {"preprocess", "model", "stitch", "export"}: seconds, 3 decimals
====================  ==========================================================================

A case is up to date when its record is ``done`` with the same input and settings
fingerprints and its ``<case>.nii.gz`` exists. Readers: ``pancreas predict``; ``pancreas
evaluate`` reads the label maps by name (``label_name``) and skips ``probabilities_name``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset.common.atomic import read_json, write_json_atomic
from dataset.common.errors import PancreasError

PREDICTIONS_NAME = "predictions.json"
LABEL_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
STATUSES = ("done", "failed", "pending")
_REMEDY = "move the folder's files away or choose another output folder"


class PredictionsError(PancreasError, ValueError):
    """A ``predictions.json`` that cannot be read; the message names it."""


def label_name(case_id: str) -> str:
    """File name of a case's label map in PRED_DIR."""
    return f"{case_id}{LABEL_SUFFIX}"


def probabilities_name(case_id: str) -> str:
    """File name of a case's optional class-probability maps in PRED_DIR."""
    return f"{case_id}{PROBABILITIES_SUFFIX}"


@dataclass(frozen=True)
class PredictionRecord:
    """One case of ``predictions.json`` (see the module docstring)."""

    input: str
    input_fingerprint: str | None
    settings_fingerprint: str
    status: str = "pending"
    error: str | None = None
    output: str | None = None
    shape_zyx: tuple[int, ...] | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shape_zyx"] = [int(v) for v in self.shape_zyx] if self.shape_zyx else None
        data["seconds"] = {k: round(float(v), 3) for k, v in self.seconds.items()}
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PredictionRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, Mapping) or set(data) - names or "input" not in data:
            keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise PredictionsError(f"{where}: not a prediction record ({keys}); {_REMEDY}")
        if data.get("status") not in STATUSES:
            raise PredictionsError(f"{where}: status {data.get('status')!r} is not one of {', '.join(STATUSES)}")
        values = {**data, "settings_fingerprint": str(data.get("settings_fingerprint") or "")}
        if values.get("shape_zyx") is not None:
            values["shape_zyx"] = tuple(int(v) for v in values["shape_zyx"])
        values["seconds"] = dict(values.get("seconds") or {})
        return cls(**values)


@dataclass(frozen=True)
class Predictions:
    """The whole ``predictions.json``."""

    run: str
    settings_fingerprint: str
    config: Mapping[str, Any]
    cases: Mapping[str, PredictionRecord] = field(default_factory=dict)

    def with_case(self, case_id: str, record: PredictionRecord) -> Predictions:
        """A copy with ``case_id``'s record set (a case already listed keeps its place)."""
        return dataclasses.replace(self, cases={**self.cases, case_id: record})

    def owns(self, name: str) -> bool:
        """Whether the file ``name`` of PRED_DIR is one this record lets predict replace."""
        return any(name in (label_name(c), probabilities_name(c)) for c in self.cases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cases": {c: r.to_dict() for c, r in self.cases.items()},
            "run": self.run,
            "settings_fingerprint": self.settings_fingerprint,
            "config": dict(self.config),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Predictions:
        if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
            raise PredictionsError(f"{where}: not a predictions record (no 'cases' mapping); {_REMEDY}")
        return cls(
            run=str(data.get("run") or ""),
            settings_fingerprint=str(data.get("settings_fingerprint") or ""),
            config=dict(data.get("config") or {}),
            cases={c: PredictionRecord.from_dict(r, f"{where}: case {c}") for c, r in data["cases"].items()},
        )


def predictions_path(folder: str | Path) -> Path:
    return Path(folder) / PREDICTIONS_NAME


def read_predictions(folder: str | Path) -> Predictions | None:
    """The folder's record, ``None`` when it has none; one clear line when it is damaged."""
    path = predictions_path(folder)
    if not path.exists():
        return None
    return Predictions.from_dict(read_json(path, "predictions record", _REMEDY, PredictionsError), str(path))


def write_predictions(folder: str | Path, predictions: Predictions) -> None:
    """Atomically and durably replace the record (crash point ``predictions``)."""
    write_json_atomic(predictions_path(folder), predictions.to_dict(), point="predictions")


__all__ = [
    "LABEL_SUFFIX",
    "PREDICTIONS_NAME",
    "PROBABILITIES_SUFFIX",
    "STATUSES",
    "PredictionRecord",
    "Predictions",
    "PredictionsError",
    "label_name",
    "predictions_path",
    "probabilities_name",
    "read_predictions",
    "write_predictions",
]
