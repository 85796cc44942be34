"""``CV_DIR/postprocessing.json``: which connected-component clean-up ``pancreas predict`` applies.

``pancreas evaluate --cv`` chooses it on out-of-fold predictions and writes it; ``pancreas
predict --postprocessing FILE`` applies it (``prediction.postprocess.apply_postprocessing``).
Fields: ``PostprocessingDecision`` and docs/reference/contract.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dataset.common.records import ContractError, optional, read_record, write_record

POSTPROCESSING_NAME = "postprocessing.json"
REGIONS = ("pancreas", "tumour")  # pancreas: labels 1 and 2 (the whole gland); tumour: label 2


class PostprocessingError(ContractError):
    """A postprocessing file that cannot be used; the message names it."""


@dataclass(frozen=True)
class PostprocessingDecision:
    """Which regions keep only their largest connected component, chosen on one store."""

    KIND: ClassVar[str] = "postprocessing decision"
    ERROR: ClassVar[type[Exception]] = PostprocessingError

    version: int = field(default=1, kw_only=True)  # format version of this file
    # {region: bool} for both regions: keep only the region's largest 26-connected component
    # ("pancreas": labels 1 and 2 together, "tumour": label 2)
    largest_component: Mapping[str, bool]
    # the store the decision was chosen on; predict refuses it with runs of another store
    store_fingerprint: str
    chosen_on: str | None = optional()  # what the decision was measured on (e.g. "out-of-fold predictions of 5 folds")
    scores: Mapping[str, Any] | None = optional()  # what evaluate --cv measured to decide (free-form)

    def __post_init__(self) -> None:
        keys = set(self.largest_component)
        if keys != set(REGIONS) or not all(isinstance(v, bool) for v in self.largest_component.values()):
            raise PostprocessingError(
                f"largest_component must map exactly {', '.join(REGIONS)} to true/false, "
                f"got {dict(self.largest_component)!r}"
            )
        if not isinstance(self.store_fingerprint, str) or not self.store_fingerprint:
            raise PostprocessingError(f"store_fingerprint must be a non-empty string, got {self.store_fingerprint!r}")

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions cleaned, in the order they are applied (pancreas first)."""
        return tuple(r for r in REGIONS if self.largest_component[r])


def postprocessing_path(folder: str | Path) -> Path:
    return Path(folder) / POSTPROCESSING_NAME


def write_postprocessing(folder: str | Path, decision: PostprocessingDecision) -> Path:
    """Write ``folder/postprocessing.json`` atomically (crash point ``postprocessing``); returns its path.

    Call with the folder's lock held (``dataset.common.locks.exclusive_lock``), as every writer.
    """
    path = postprocessing_path(folder)
    write_record(path, decision, point="postprocessing")
    return path


def read_postprocessing(path: str | Path) -> PostprocessingDecision:
    """The decision in ``path`` (the file, or the folder holding ``postprocessing.json``);
    ``PostprocessingError`` with one line naming the file when it is missing or wrong."""
    path = Path(path)
    if path.is_dir():
        path = postprocessing_path(path)
    return read_record(path, PostprocessingDecision, "postprocessing decision", "`pancreas evaluate --cv` writes it")


__all__ = [
    "POSTPROCESSING_NAME",
    "REGIONS",
    "PostprocessingDecision",
    "PostprocessingError",
    "postprocessing_path",
    "read_postprocessing",
    "write_postprocessing",
]
