"""``CV_DIR/postprocessing.json``: which connected-component clean-up predict applies.

``pancreas evaluate --cv`` chooses it on out-of-fold predictions (each case predicted by
the fold model that did not train on it) and writes it; ``pancreas predict
--postprocessing FILE`` reads it and applies it to every label map
(``prediction.postprocess.apply_postprocessing``). Layout::

    {"largest_component": {"pancreas": true, "tumour": false},
     "store_fingerprint": "...", "chosen_on": "...", "scores": {...}}

Fields (``PostprocessingDecision``, in this order):

==================  ===========================================================================
largest_component   {region: bool} for both regions: keep only the region's largest
                    26-connected component. "pancreas" = the whole gland (labels 1 and 2
                    together), "tumour" = label 2; the exact rule is in
                    ``prediction.postprocess.apply_postprocessing``
store_fingerprint   the store whose cases the decision was chosen on; predict refuses the file
                    with runs whose ``input_contract.json`` records another store fingerprint
chosen_on           optional: one line saying what the decision was measured on
                    (e.g. "out-of-fold predictions of 5 folds, 225 cases")
scores              optional: what ``evaluate --cv`` measured to decide (free-form mapping,
                    e.g. {region: {"dice_without": ..., "dice_with": ..., "n_cases": ...}})
==================  ===========================================================================

Optional fields are left out of the file when unknown, so a decision read and written
again is the same JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.common.atomic import read_json, write_json_atomic
from dataset.common.errors import PancreasError

POSTPROCESSING_NAME = "postprocessing.json"
REGIONS = ("pancreas", "tumour")  # pancreas: labels 1 and 2 (the whole gland); tumour: label 2
_FIELDS = ("largest_component", "store_fingerprint", "chosen_on", "scores")
_HINT = "not a postprocessing decision written by `pancreas evaluate --cv`"


class PostprocessingError(PancreasError, ValueError):
    """A postprocessing file that cannot be used; the message names it."""


@dataclass(frozen=True)
class PostprocessingDecision:
    """Which regions keep only their largest connected component, chosen on one store."""

    largest_component: Mapping[str, bool]
    store_fingerprint: str
    chosen_on: str | None = None
    scores: Mapping[str, Any] | None = None

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

    def to_dict(self) -> dict[str, Any]:
        data = {
            "largest_component": {r: bool(self.largest_component[r]) for r in REGIONS},
            "store_fingerprint": self.store_fingerprint,
            "chosen_on": self.chosen_on,
            "scores": dict(self.scores) if self.scores is not None else None,
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, where: str | Path) -> PostprocessingDecision:
        if not isinstance(data, Mapping):
            raise PostprocessingError(f"{where}: {_HINT} (expected a JSON object)")
        unknown = sorted(set(data) - set(_FIELDS))
        missing = [k for k in _FIELDS[:2] if k not in data]
        if unknown or missing:
            detail = "; ".join(
                p
                for p in (
                    f"missing key(s) {', '.join(missing)}" if missing else "",
                    f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                )
                if p
            )
            raise PostprocessingError(f"{where}: {_HINT} ({detail})")
        if not isinstance(data["largest_component"], Mapping):
            raise PostprocessingError(
                f"{where}: 'largest_component' must be a mapping, got {data['largest_component']!r}"
            )
        try:
            return cls(
                largest_component=dict(data["largest_component"]),
                store_fingerprint=data["store_fingerprint"],
                chosen_on=data.get("chosen_on"),
                scores=data.get("scores"),
            )
        except PostprocessingError as err:
            raise PostprocessingError(f"{where}: {err}") from None


def postprocessing_path(folder: str | Path) -> Path:
    return Path(folder) / POSTPROCESSING_NAME


def write_postprocessing(folder: str | Path, decision: PostprocessingDecision) -> Path:
    """Write ``folder/postprocessing.json`` atomically (crash point ``postprocessing``); returns its path.

    Call with the folder's lock held (``dataset.common.locks.exclusive_lock``), as every writer.
    """
    path = postprocessing_path(folder)
    write_json_atomic(path, decision.to_dict(), point="postprocessing")
    return path


def read_postprocessing(path: str | Path) -> PostprocessingDecision:
    """The decision in ``path`` (the file, or the folder holding ``postprocessing.json``);
    ``PostprocessingError`` with one line naming the file when it is missing or wrong."""
    path = Path(path)
    if path.is_dir():
        path = postprocessing_path(path)
    data = read_json(
        path, "postprocessing decision", hint="`pancreas evaluate --cv` writes it", error=PostprocessingError
    )
    return PostprocessingDecision.from_dict(data, path)


__all__ = [
    "POSTPROCESSING_NAME",
    "REGIONS",
    "PostprocessingDecision",
    "PostprocessingError",
    "postprocessing_path",
    "read_postprocessing",
    "write_postprocessing",
]
