"""Fingerprints that tie each stage's output to the inputs it was made from, and the one
function that compares them.

A fingerprint is a short hash (``dataset.common.fingerprints.fingerprint_json``). Outputs record
the fingerprints of what they were made from (shards: input files and config; the index:
the store; a run: the store and the index; predictions: the model and settings), and a
later stage compares what was recorded with what is there now through
``check_fingerprint``, so every mismatch is worded the same way.
"""

from __future__ import annotations

from pathlib import Path

from dataset.common.fingerprints import fingerprint_json
from dataset.contract.catalog import Catalog
from dataset.contract.store import StoreError


def store_fingerprint(catalog: Catalog) -> str:
    """What the index depends on in the store: case ids, status, labels, inputs, config."""
    parts = [
        (cid, r.status, bool(r.has_label), r.input_fingerprint, r.config_fingerprint)
        for cid, r in sorted(catalog.cases.items())
    ]
    return fingerprint_json([catalog.config_fingerprint, parts])


def check_fingerprint(
    what: str,
    recorded: str | None,
    current: str,
    made: str | Path,
    now: str | Path,
    remedy: str,
    error: type[Exception] = StoreError,
) -> None:
    """Raise ``error`` when ``recorded`` (what ``made`` was built on) differs from ``current``.

    ``what``: the fingerprint's name ("store fingerprint"); ``made``: the output that
    recorded it; ``now``: where the current value comes from; ``remedy``: what to do.
    A missing record (older outputs) is accepted.
    """
    if recorded and recorded != current:
        raise error(f"{made}: was built on {what} {recorded} but {now} now has {current}; {remedy}")
