"""Crash points: named steps of a commit where the crash tests kill or fill the disk (``commit_point``).

The ``PANCREAS_CRASH_AT``, ``PANCREAS_CRASH_LOG`` and ``PANCREAS_ENOSPC_AT`` variables:
docs/explanation/commit-protocol.md#crash-points.
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
