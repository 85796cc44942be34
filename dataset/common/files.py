"""Durable atomic writes, folder locks, crash points and fingerprints shared by every stage.

The rules every writer in this project follows (the "commit protocol"):

* **Atomic.** Every output is written under a temporary name in its own folder
  (``.<name>.<random>.pancreas-tmp``) and renamed into place, so a killed run leaves
  either the old file or the new one, never half of one.
* **Durable.** The temporary file is fsynced before the rename and the folder after it,
  so after a power cut a renamed file has its bytes (ext4, XFS and friends otherwise
  may show a completed rename of an empty file). This covers shards, catalogs,
  manifests, summaries, state files, checkpoints and predictions alike; nothing relies
  on a later run noticing a torn file. ``PANCREAS_NO_FSYNC=1`` turns fsync off (for
  throw-away scratch work; never for data you keep).
* **Locked.** A stage holds ``exclusive_lock(folder)`` on its output folder for the whole
  run: a second run on the same STORE, RUN_DIR or output folder fails at once, naming
  the holder's pid and host. The lock is an ``fcntl.flock`` on ``<folder>/.pancreas.lock``,
  released by the operating system when the holder dies (a kill or a power cut never
  leaves a stale lock). Leftover temporaries are swept only by the lock holder, and only
  names this project writes.
* **Crash points.** ``commit_point(name)`` marks each step of a commit (temporary written,
  renamed, record updated). The crash tests set ``PANCREAS_CRASH_AT=name#n`` to SIGKILL
  the process at the n-th time it reaches ``name``, and ``PANCREAS_CRASH_LOG=file`` to
  list every point a run reaches, and ``PANCREAS_ENOSPC_AT=name#n`` to make that step
  fail as a full disk would (``OSError`` ENOSPC); in normal use all are unset and a
  point costs three environment lookups.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dataset.common.errors import PancreasError

TMP_SUFFIX = ".pancreas-tmp"
LOCK_NAME = ".pancreas.lock"
CRASH_ENV = "PANCREAS_CRASH_AT"
CRASH_LOG_ENV = "PANCREAS_CRASH_LOG"
ENOSPC_ENV = "PANCREAS_ENOSPC_AT"
NO_FSYNC_ENV = "PANCREAS_NO_FSYNC"


class LockedError(PancreasError, RuntimeError):
    """Another live process holds the folder's lock; the message names it."""


class ReadError(PancreasError, ValueError):
    """A JSON hand-over file that is missing or unreadable; the message names it."""


# ----------------------------------------------------------------------------- crash points
_crash_counts: dict[str, int] = {}


def commit_point(name: str) -> None:
    """A step of a commit; see the module docstring (test hook, free when unused)."""
    target = os.environ.get(CRASH_ENV)
    logfile = os.environ.get(CRASH_LOG_ENV)
    full = os.environ.get(ENOSPC_ENV)
    if not target and not logfile and not full:
        return
    count = _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if logfile:
        with open(logfile, "a") as fh:
            fh.write(f"{name}#{count}\n")
    if target == f"{name}#{count}" or target == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if full == f"{name}#{count}" or full == name:
        raise OSError(errno.ENOSPC, "No space left on device (simulated)", name)


# ----------------------------------------------------------------------------- durability
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
    tmp_path = _mkstemp_like(path, ending)
    point = point or path.name
    try:
        yield tmp_path
        if keep_identical and path.is_file() and filecmp.cmp(tmp_path, path, shallow=False):
            return
        if tmp_path.exists():  # mkstemp creates 0600; give the file ordinary permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
            fsync_path(tmp_path)
        commit_point(f"{point}:written")
        os.replace(tmp_path, path)
        fsync_path(path.parent)
        commit_point(f"{point}:renamed")
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any, keep_identical: bool = False, point: str | None = None) -> None:
    """Write ``data`` as indented JSON, atomically and durably."""
    with atomic_path(path, keep_identical, point=point) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str, hint: str = "", error: type[Exception] = ReadError) -> Any:
    """A JSON file's content, or ``error`` with one line: the path, what it is, what is wrong.

    ``what`` names the file's role ("index summary"); ``hint`` says what to do
    ("rerun `pancreas index`").
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: no {what}{tail}") from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror or err}){tail}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: unreadable {what} ({err}){tail}") from None


# ----------------------------------------------------------------------------- locks
_held: dict[Path, tuple[int, int]] = {}  # resolved folder -> (fd, depth): re-entrant per process


def _holder_text(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command', '?')}`, since {since})"


@contextlib.contextmanager
def exclusive_lock(folder: str | Path, create: bool = True) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; ``LockedError`` at once if another process has it.

    Re-entrant within one process (the demo runs every stage in one process). The lock
    file records the holder's pid, host and command line for the message a second run
    prints.
    """
    import fcntl

    folder = Path(folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield key
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
            if depth - 1 == 0:
                del _held[key]
                os.close(fd)
        return
    lock_file = key / LOCK_NAME
    try:  # O_NOFOLLOW: a lock "file" that is a link must never truncate the file it points to
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 & ~_umask())
    except OSError as err:
        raise LockedError(
            f"{folder}: cannot open its lock file {LOCK_NAME} ({err.strerror or err}); remove it if it is a link"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(
            f"{folder}: in use by {_holder_text(lock_file)}; wait for it to finish or choose another folder"
        ) from None
    except OSError as err:  # e.g. Lustre mounted without -o flock: refuse rather than run unguarded
        os.close(fd)
        raise LockedError(
            f"{folder}: this filesystem cannot lock files ({err.strerror or err}); "
            "use a local or lock-capable filesystem for outputs"
        ) from None
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.time(),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _held[key] = (fd, 1)
    try:
        yield key
    finally:
        fd, depth = _held.pop(key)
        os.close(fd)  # releases the flock


def holds_lock(folder: str | Path) -> bool:
    """Whether this process holds the lock of ``folder`` or of a folder above it."""
    path = Path(folder).resolve()
    return any(path == held or held in path.parents for held in _held)


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


# ----------------------------------------------------------------------------- fingerprints
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


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, after resolving links."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


__all__ = [
    "LOCK_NAME",
    "TMP_SUFFIX",
    "LockedError",
    "ReadError",
    "atomic_path",
    "commit_point",
    "exclusive_lock",
    "fingerprint_file",
    "fingerprint_json",
    "fsync_path",
    "holds_lock",
    "inside",
    "read_json",
    "remove_stale_temporaries",
    "write_json_atomic",
]
