"""Atomic writes and fingerprints shared by every stage.

Every output is written under a temporary name in the same folder and renamed into
place, so a killed run leaves either the old file or the new one, never half of one.
Temporary names end in ``.tmp`` (plus a random part) so stages can recognise and
delete leftovers from a killed run.
"""
from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path, keep_identical: bool = False, ending: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    ``keep_identical``: when ``path`` already holds exactly the new bytes, leave it alone
    (its modification time, and so every fingerprint of it, stays the same).
    ``ending``: appended after ``.tmp`` for writers that pick the format from the file
    name (SimpleITK: ``.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX + ending, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if keep_identical and path.is_file() and filecmp.cmp(tmp_path, path, shallow=False):
            return
        if tmp_path.exists():  # mkstemp creates 0600; give the file ordinary permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any, keep_identical: bool = False) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path, keep_identical) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed run left in ``folder``; return what was removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in [*folder.glob(f".*{TMP_SUFFIX}"), *folder.glob(f".*{TMP_SUFFIX}.*")]:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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
