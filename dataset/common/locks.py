"""Folder locks: one run per output folder, released by the OS when the holder dies.

A stage holds ``exclusive_lock(folder)`` on its output folder for the whole run: a second
run on the same STORE, RUN_DIR or output folder fails at once, naming the holder's pid and
host. The lock is an ``fcntl.flock`` on ``<folder>/.pancreas.lock``, so a kill or a power
cut never leaves a stale lock. See docs/explanation/commit-protocol.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dataset.common.errors import PancreasError

LOCK_NAME = ".pancreas.lock"


class LockedError(PancreasError, RuntimeError):
    """Another live process holds the folder's lock; the message names it."""


def file_mode() -> int:
    """The mode a new file gets under the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_held: dict[Path, tuple[int, int]] = {}  # resolved folder -> (fd, depth): re-entrant per process


def _holder_text(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command', '?')}`, since {since})"


def _open_lock_file(folder: str | Path, lock_file: Path) -> int:
    """The lock file's descriptor (O_NOFOLLOW: a lock "file" that is a link must never truncate its target)."""
    try:
        return os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())
    except OSError as err:
        raise LockedError(
            f"{folder}: cannot open its lock file {LOCK_NAME} ({err.strerror or err}); remove it if it is a link"
        ) from None


@contextlib.contextmanager
def exclusive_lock(folder: str | Path, create: bool = True) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; ``LockedError`` at once if another process has it.

    Re-entrant within one process (the demo runs every stage in one process). The lock
    file records the holder's pid, host and command line for the message a second run
    prints.
    """
    import fcntl

    folder = Path(folder)
    created = _missing_folders(folder) if create else []
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
    lock_was_there = lock_file.exists() or lock_file.is_symlink()
    fd = _open_lock_file(folder, lock_file)
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
    except PancreasError:  # a refusal leaves the folder as it was: no lock file, no folder of its own
        if not lock_was_there:
            lock_file.unlink(missing_ok=True)  # still held: no other process can be inside
        for made in reversed(created):
            with contextlib.suppress(OSError):  # not empty: something else is there now
                made.rmdir()
        raise
    finally:
        fd, depth = _held.pop(key)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the holder's line is stale once released (a reader writes none)
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def shared_lock(folder: str | Path) -> Iterator[Path]:
    """Hold a shared lock on an existing ``folder`` that this process reads for the block: any
    number of readers at once, but no ``exclusive_lock`` writer (training folds read one store
    while ``index`` may not rebuild it; ``export`` reads a run that ``train`` may not change).

    ``LockedError`` at once while a writer holds it. Creates the lock file if missing, and
    nothing else; a process already holding the folder's lock (either kind) is let through.
    """
    import fcntl

    key = Path(folder).resolve()
    if key in _held or holds_lock(key) or not key.is_dir():  # not a folder: its reader says what is wrong
        yield key
        return
    lock_file = key / LOCK_NAME
    fd = _open_lock_file(folder, lock_file)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(f"{folder}: being written by {_holder_text(lock_file)}; wait for it to finish") from None
    except OSError as err:
        os.close(fd)
        raise LockedError(
            f"{folder}: this filesystem cannot lock files ({err.strerror or err}); use a lock-capable filesystem"
        ) from None
    _held[key] = (fd, 1)
    try:
        yield key
    finally:
        fd, _ = _held.pop(key)
        os.close(fd)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist yet, outermost first (what ``mkdir`` will create)."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing[::-1]


def holds_lock(folder: str | Path) -> bool:
    """Whether this process holds the lock of ``folder`` or of a folder above it."""
    path = Path(folder).resolve()
    return any(path == held or held in path.parents for held in _held)
