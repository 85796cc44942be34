"""Cheap, stable fingerprints of JSON data and of input files."""

from __future__ import annotations

import hashlib
import json
import os
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
    if path.is_dir():  # a DICOM series: its files, also those in sub-folders (a series spread over several)
        parts = [_part(path, p) for p in _files(path)]
        return fingerprint_json([path.name, parts])
    st = path.stat()
    return fingerprint_json([path.name, st.st_size, st.st_mtime_ns])


def _part(folder: Path, file: Path) -> str:
    """A file's share of its folder's fingerprint; one in a sub-folder also by its relative path
    (the files directly in the folder are hashed as before sub-folders counted)."""
    if file.parent == folder:
        return fingerprint_file(file)
    return fingerprint_json([str(file.relative_to(folder)), fingerprint_file(file)])


def _files(folder: Path) -> list[Path]:
    """Every file in ``folder`` and below, in a fixed order (sorted relative paths); links to
    folders are not followed (a link loop must not hang), hidden folders skipped as the DICOM scan does."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / name for name in files if (Path(here) / name).is_file()]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def content_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (for small outputs whose edits must be noticed, e.g. label maps)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
