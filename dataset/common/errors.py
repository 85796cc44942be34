"""The one base of every error this project raises on purpose (docs/reference/cli.md).

Each specific class keeps a built-in base beside it (``ConfigError`` is also a ``ValueError``); the CLI
decides by ``PancreasError`` alone. See docs/explanation/internals.md#errors-datasetcommonerrorspy.
"""

from __future__ import annotations


class PancreasError(Exception):
    """An input, file or setting this project refuses; the message names it."""


class UsageError(PancreasError, ValueError):
    """A value given by the user (an option, a count, a case) that cannot be used."""
