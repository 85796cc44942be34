"""The store's fingerprint and the one comparison of a recorded fingerprint with the current one,
so every mismatch is worded the same way (docs/reference/contract.md)."""

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


def fingerprint_mismatch(
    what: str, recorded: str | None, current: str, made: str | Path, now: str | Path, remedy: str
) -> str | None:
    """The one-line message when ``recorded`` (what ``made`` was built on) differs from ``current``, else None.

    ``what``: the fingerprint's name ("store fingerprint"); ``now``: where the current value
    comes from; ``remedy``: what to do. An empty record (not known) is no mismatch.
    """
    if recorded and recorded != current:
        return f"{made}: was built on {what} {recorded} but {now} now has {current}; {remedy}"
    return None


def check_fingerprint(
    what: str, recorded: str | None, current: str, made: str | Path, now: str | Path, remedy: str
) -> None:
    """``StoreError`` with ``fingerprint_mismatch``'s line when the fingerprints differ."""
    message = fingerprint_mismatch(what, recorded, current, made, now, remedy)
    if message:
        raise StoreError(message)
