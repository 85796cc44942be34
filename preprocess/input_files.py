"""What a shard is made from: its input files' fingerprints, taken when the case is planned.

The worker checks them again right after reading, so a file replaced in between fails its case.
See docs/explanation/internals.md#input-fingerprints-preprocessinput_filespy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dataset.common.fingerprints import fingerprint_file, fingerprint_json


@dataclass(frozen=True)
class CaseInputs:
    """A case's files with their fingerprints (``dataset.common.fingerprints.fingerprint_file``)."""

    image: str
    label: str | None
    image_fingerprint: str
    label_fingerprint: str  # "" without a label
    declared_labels: tuple[int, ...]

    @property
    def fingerprint(self) -> str:
        """The shard's ``input_fingerprint``."""
        parts: list = [self.image_fingerprint, self.label_fingerprint]
        if self.label is not None:
            parts.append(list(self.declared_labels))
        return fingerprint_json(parts)


def take_inputs(image: str | Path, label: str | Path | None, declared_labels: tuple[int, ...]) -> CaseInputs:
    """Fingerprint a case's files now; OSError when one is missing or unreadable."""
    label_fp = fingerprint_file(label) if label is not None else ""
    return CaseInputs(
        str(image),
        str(label) if label is not None else None,
        fingerprint_file(image),
        label_fp,
        tuple(int(v) for v in declared_labels),
    )


def changed_file(inputs: CaseInputs) -> str | None:
    """The first input file that is no longer what was fingerprinted (None: all unchanged)."""
    for path, planned in ((inputs.image, inputs.image_fingerprint), (inputs.label, inputs.label_fingerprint)):
        if path is None:
            continue
        try:
            now = fingerprint_file(path)
        except OSError:
            return path
        if now != planned:
            return path
    return None
