"""What nnU-Net v2's raw layout adds to MSD's: its ``dataset.json`` keys and channel suffixes.

Pure functions; one CT channel only; the folder scan is ``sources.msd``. See
docs/explanation/internals.md#the-msd-and-nnu-net-layouts-sourcesmsdpy-sourcesnnunetpy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from dataset.common.errors import UsageError

V2_KEYS = ("channel_names", "file_ending")
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
CT_NAME = "ct"
# label names whose value this pipeline fixes: 1 is the pancreas, 2 the tumour (MSD Task07)
KNOWN_LABELS = {"pancreas": 1, "tumour": 2, "tumor": 2, "cancer": 2}


def is_v2(meta: dict[str, Any]) -> bool:
    """An nnU-Net v2 ``dataset.json``: its own keys, or labels given as name -> value."""
    labels = meta.get("labels")
    by_name = isinstance(labels, dict) and bool(labels) and not all(str(k).isdigit() for k in labels)
    return any(k in meta for k in V2_KEYS) or by_name


def split_channel(stem: str) -> tuple[str, int] | None:
    """``("pancreas_001", 0)`` from ``pancreas_001_0000`` (the name without its ending); None without a suffix."""
    match = CHANNEL_SUFFIX.match(stem)
    return (match["case"], int(match["channel"])) if match else None


def labels_by_value(labels: Any) -> dict[str, str]:
    """``{"0": "background", ...}`` from MSD's value -> name or nnU-Net v2's name -> value.

    A value must be one non-negative integer (v2's region lists, ``"whole": [1, 2]``, are
    refused: this pipeline trains on the label values themselves). A name this pipeline
    knows (pancreas, tumour/tumor/cancer) must have its Task07 value.
    """
    if not isinstance(labels, dict):
        raise UsageError(f"'labels' must map integer values to names, got {labels!r}")
    if all(str(k).isdigit() for k in labels):
        by_value = {str(k): str(v) for k, v in labels.items()}
    else:
        by_value = {}
        for name, value in labels.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(
                    f"'labels' must map integer values to names (MSD) or names to one integer value "
                    f"(nnU-Net v2), got {name!r}: {value!r}"
                )
            if str(value) in by_value:
                raise UsageError(f"'labels' gives value {value} to both {by_value[str(value)]!r} and {name!r}")
            by_value[str(value)] = str(name)
    for value, name in by_value.items():
        wanted = KNOWN_LABELS.get(name.casefold())
        if wanted is not None and int(value) != wanted:
            raise UsageError(
                f"'labels' declares {name!r} as {value}; this pipeline's label 1 is the pancreas and 2 "
                "the tumour: relabel the files and dataset.json"
            )
    return by_value


def check_single_ct_channel(channels: Any, key: str) -> None:
    """Refuse more than one channel, or one not named CT (``key``: "channel_names" or "modality")."""
    if channels is None:
        return
    if not isinstance(channels, dict) or not channels:
        raise UsageError(f"{key!r} must map channel numbers to names, got {channels!r}")
    if len(channels) > 1:
        raise UsageError(
            f"{key!r} declares {len(channels)} channels {channels!r}; this pipeline reads a single CT channel"
        )
    ((number, name),) = channels.items()
    if not str(number).isdigit() or int(number) != 0 or str(name).casefold() != CT_NAME:
        raise UsageError(
            f"{key!r} declares channel {number} as {name!r}; this pipeline windows CT in Hounsfield "
            "units and reads a single channel named CT"
        )


def stripped_case_ids(stems: Iterable[str]) -> dict[str, str] | None:
    """Case ids of a plain folder's file stems when they are nnU-Net images (every one ``_0000``).

    ``None`` when the names are not nnU-Net's (no suffix, or some without one): they are
    case ids as they stand. ``ValueError`` naming the file when a case has a second
    channel (``x_0000`` beside ``x_0001``).
    """
    stems = list(stems)
    parts = {stem: split_channel(stem) for stem in stems}
    if not stems or any(p is None for p in parts.values()):
        return None
    split = {stem: p for stem, p in parts.items() if p is not None}  # every stem, after the check above
    first_channel = {case for case, channel in split.values() if channel == 0}
    for stem, (case, channel) in split.items():
        if channel != 0 and case in first_channel:
            raise UsageError(
                f"{stem}: channel {channel:04d} of case {case!r} (nnU-Net channel suffix); this "
                "pipeline reads a single CT channel (_0000) per case"
            )
    if len(first_channel) != len(stems):
        return None  # user numbering (scan_0001, scan_0002): names as they stand
    return {stem: case for stem, (case, _) in split.items()}
