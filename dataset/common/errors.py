"""The one base of every error this project raises on purpose (docs/reference/cli.md).

``pancreas`` prints a ``PancreasError`` (and an ``OSError``: a missing file, a full
disk) as one line naming the command, and exits with 2. Any other exception is a bug
and keeps its traceback, so it can be reported and fixed.

The specific classes keep a built-in base beside this one (``ConfigError`` is also a
``ValueError``, ``LockedError`` a ``RuntimeError``), so library callers that catch the
built-in type keep working; the CLI decides by ``PancreasError`` alone.
"""

from __future__ import annotations


class PancreasError(Exception):
    """An input, file or setting this project refuses; the message names it."""


class UsageError(PancreasError, ValueError):
    """A value given by the user (an option, a count, a case) that cannot be used."""
