"""``MODEL.zip/package.json``: what ``pancreas package`` puts in a model package, with every member's hash.

Written by ``evaluation.packaging``, read by ``prediction.packages`` (predict and ``package --verify``).
The zip's layout, the member rules and the probe: docs/how-to/package.md; the fields: the dataclasses
below and docs/reference/contract.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from dataset.common.records import ContractError, optional, record_from_dict, record_to_dict
from dataset.contract.postprocessing import POSTPROCESSING_NAME

PACKAGE_NAME = "package.json"
MODEL_CARD_NAME = "MODEL.md"
PROBE_NAME = "probe.npz"
CHECKPOINTS = ("best", "last")
REPORT_DIR = "report"  # the cross-validation report's files, as evaluate --cv wrote them
MODEL_DIR = "model_{i}"  # one run folder per model, in ensemble order
FORMAT = "pancreas-seg model package"  # what says a zip is one of ours


class PackageError(ContractError):
    """A model package that cannot be used; the message names it and the first thing wrong."""


@dataclass(frozen=True)
class PackageMember:
    """One member of the zip, as the packager wrote it."""

    size: int  # bytes, uncompressed
    sha256: str  # SHA-256 of its bytes (hex)


@dataclass(frozen=True)
class PackageModel:
    """One model of the ensemble: a run folder inside the zip."""

    folder: str  # "model_<i>": a run folder (input_contract.json, checkpoints/<checkpoint>.keras, ...)
    run: str  # the run it was packaged from (absolute path on the packaging machine)
    fold: int | None = optional()  # the index fold it trained on


@dataclass(frozen=True, kw_only=True)
class PackageRecord:
    """``package.json``: the package's format, contents and the hash of every other member."""

    KIND: ClassVar[str] = "package record"
    ERROR: ClassVar[type[Exception]] = PackageError

    version: int = field(default=1, kw_only=True)  # format version of the package
    format: str = FORMAT  # "pancreas-seg model package": what marks the zip as ours
    created_utc: str  # when it was packaged (ISO 8601, UTC)
    pancreas_seg: str  # the version of pancreas-seg that packaged it
    checkpoint: str  # "best" | "last": the checkpoint of every model
    models: list[PackageModel]  # in ensemble order
    postprocessing: str | None = optional()  # the member holding postprocessing.json | null: none
    cv_dir: str | None = optional()  # the CV_DIR packaged (absolute path on the packaging machine)
    probe_tolerance: float  # largest absolute difference of a probability allowed on the probe
    members: Mapping[str, PackageMember]  # {member name: size and SHA-256} of every member but this one

    def __post_init__(self) -> None:
        # what predict joins to the package's folder must be one of the members the hashes pin
        if self.checkpoint not in CHECKPOINTS:
            raise PackageError(f"checkpoint {self.checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
        if self.postprocessing not in (None, POSTPROCESSING_NAME) or (
            self.postprocessing is not None and self.postprocessing not in self.members
        ):
            raise PackageError(
                f"postprocessing {self.postprocessing!r} is not the listed member {POSTPROCESSING_NAME!r}"
            )
        if PROBE_NAME not in self.members:
            raise PackageError(f"members do not list {PROBE_NAME}")


def package_record_bytes(record: PackageRecord) -> bytes:
    """The bytes of ``package.json`` (the package's hash is their SHA-256)."""
    return (json.dumps(record_to_dict(record), indent=2) + "\n").encode("utf-8")


def is_package_record(data: bytes) -> bool:
    """Whether ``data`` is a package.json of ours, of any format version (one a later version may replace)."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(parsed, dict) and parsed.get("format") == FORMAT


def read_package_record(data: bytes, where: str) -> PackageRecord:
    """``package.json``'s record from its bytes; ``PackageError`` with one line naming ``where``
    (a newer format version is refused naming both versions)."""
    if not is_package_record(data):
        raise PackageError(f"{where}: {PACKAGE_NAME} is not a `pancreas package` record (no format {FORMAT!r})")
    return record_from_dict(PackageRecord, json.loads(data), f"{where}: {PACKAGE_NAME}")


__all__ = [
    "FORMAT",
    "MODEL_CARD_NAME",
    "MODEL_DIR",
    "PACKAGE_NAME",
    "PROBE_NAME",
    "REPORT_DIR",
    "PackageError",
    "PackageMember",
    "PackageModel",
    "PackageRecord",
    "is_package_record",
    "package_record_bytes",
    "read_package_record",
]
