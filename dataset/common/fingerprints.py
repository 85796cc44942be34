"""Cheap, stable fingerprints of JSON data and of input files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def fingerprint_json(data: Any) -> str:
    """A short stable hash of JSON-serialisable data (key order does not matter)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint_file(path: str | Path) -> str:
    """Hash of a file's size, mtime and name: cheap for multi-GB inputs.

    Hashing the content of 282 CTs (about 27 GB) on every run would cost minutes;
    size plus modification time catches re-downloads and edits, which is what
    resuming needs to notice.
    """
    path = Path(path)
    if path.is_dir():  # a DICOM series: fingerprint its files
        parts = [fingerprint_file(p) for p in sorted(path.iterdir()) if p.is_file()]
        return fingerprint_json([path.name, parts])
    st = path.stat()
    return fingerprint_json([path.name, st.st_size, st.st_mtime_ns])
