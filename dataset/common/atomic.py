"""Atomic, durable writes and one-line reads of JSON hand-over files.

Every output is written under a temporary name in its own folder
(``.<name>.<random>.pancreas-tmp``), fsynced, renamed into place and its folder fsynced:
a killed run leaves the old file or the new one, never half of one, and after a power cut
a renamed file has its bytes. ``PANCREAS_NO_FSYNC=1`` turns fsync off for throw-away work.
See docs/explanation/commit-protocol.md.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dataset.common.crashpoints import commit_point
from dataset.common.errors import PancreasError
from dataset.common.locks import file_mode, holds_lock
from dataset.common.verify import naming_full_disk, short_write

TMP_SUFFIX = ".pancreas-tmp"
NO_FSYNC_ENV = "PANCREAS_NO_FSYNC"


class ReadError(PancreasError, ValueError):
    """A JSON hand-over file that is missing or unreadable; the message names it."""


def _fsync_enabled() -> bool:
    return os.environ.get(NO_FSYNC_ENV, "") in ("", "0")


def fsync_path(path: str | Path) -> None:
    """fsync a file's (or a folder's) contents and metadata."""
    if not _fsync_enabled():
        return
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkstemp_like(path: Path, ending: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX + ending, dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(
    path: str | Path, keep_identical: bool = False, ending: str = "", point: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; commit it to ``path`` if the block succeeds.

    Commit = fsync the temporary, rename it over ``path``, fsync the folder.
    ``keep_identical``: when ``path`` already holds exactly the new bytes, leave it alone
    (its modification time, and so every fingerprint of it, stays the same).
    ``ending``: appended after the temporary suffix for writers that pick the format from
    the file name (SimpleITK: ``.nii.gz``; Keras: ``.keras``).
    ``point``: the crash-point name of this file's role (default: its name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_full_disk(path):
        tmp_path = _mkstemp_like(path, ending)
    point = point or path.name
    try:
        with naming_full_disk(path):
            yield tmp_path
            if keep_identical and path.is_file() and filecmp.cmp(tmp_path, path, shallow=False):
                return
            if tmp_path.exists():  # mkstemp creates 0600; give the file ordinary permissions
                os.chmod(tmp_path, file_mode())
                fsync_path(tmp_path)
            commit_point(f"{point}:written")
            os.replace(tmp_path, path)
            fsync_path(path.parent)
            commit_point(f"{point}:renamed")
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: str | Path, data: Any, keep_identical: bool = False, point: str | None = None) -> None:
    """Write ``data`` as indented JSON, atomically and durably."""
    with atomic_path(path, keep_identical, point=point) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_bytes_atomic(path: str | Path, data: bytes, point: str | None = None, keep_identical: bool = False) -> None:
    """Write ``data`` atomically and durably, checking every byte reached the file before the rename.

    A full disk can make a library's writer stop short without raising; this writer goes
    through a Python file object (which raises) and compares the file's size with
    ``len(data)``, so a short file is an ``OSError`` naming it, never a final name.
    ``keep_identical``: as ``atomic_path``'s.
    """
    with atomic_path(path, keep_identical, point=point) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
        size = tmp.stat().st_size
        if size != len(data):
            raise short_write(path, size, len(data))


def read_json(path: str | Path, what: str, hint: str = "") -> Any:
    """A JSON file's content, or ``ReadError`` with one line: the path, what it is, what is wrong.

    ``what`` names the file's role ("index summary"); ``hint`` says what to do
    ("rerun `pancreas index`").
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReadError(f"{path}: no {what}{tail}") from None
    except OSError as err:
        raise ReadError(f"{path}: cannot read the {what} ({err.strerror or err}){tail}") from None
    except UnicodeDecodeError as err:
        raise ReadError(f"{path}: the {what} is not UTF-8 text (byte {err.start}: {err.reason}){tail}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ReadError(f"{path}: unreadable {what} ({err}){tail}") from None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete this project's temporaries a killed run left in ``folder``; return them.

    Only the lock holder may sweep (a second run must never delete the first one's
    in-flight files), and only names ``atomic_path`` makes.
    """
    folder = Path(folder)
    if not holds_lock(folder):
        raise RuntimeError(f"{folder}: temporaries may only be swept while holding the folder's lock")
    removed = []
    if folder.is_dir():
        for p in [*folder.glob(f".*{TMP_SUFFIX}"), *folder.glob(f".*{TMP_SUFFIX}.*")]:
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
