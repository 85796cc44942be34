"""Crash points: named steps of a commit where the crash tests kill or fill the disk.

``commit_point(name)`` marks each step of a commit (temporary written, renamed, record
updated). ``PANCREAS_CRASH_AT=name#n`` SIGKILLs the process the n-th time it reaches
``name``, ``PANCREAS_CRASH_LOG=file`` lists every point a run reaches, and
``PANCREAS_ENOSPC_AT=name#n`` makes that step fail as a full disk would. Unset (normal
use), a point costs three environment lookups. See docs/explanation/commit-protocol.md.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

CRASH_ENV = "PANCREAS_CRASH_AT"
CRASH_LOG_ENV = "PANCREAS_CRASH_LOG"
ENOSPC_ENV = "PANCREAS_ENOSPC_AT"

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
