"""Symbolic links that lead nowhere (dangling, or a loop): named, so an input is never dropped silently."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def broken_link(path: str | Path) -> str | None:
    """Why ``path`` is a symbolic link that cannot be read (one line naming it), or None.

    ``Path.is_file()`` and ``exists()`` are False for such a link, so a folder scan that
    filters with them skips it without a word; scans call this to report it instead.
    """
    path = Path(path)
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as err:
        target = os.readlink(path)
        if err.errno == errno.ELOOP:
            return f"{path}: symbolic link loop ({path.name} -> {target})"
        return f"{path}: symbolic link to {target}, which does not exist (a dangling link)"
    return None


__all__ = ["broken_link"]
