"""The name rules every archive member must pass before anything is unpacked (tar and zip alike).

See docs/how-to/download.md#a-safe-extraction and docs/how-to/package.md#opening-a-package-from-elsewhere.
"""

from __future__ import annotations

from pathlib import PurePosixPath


def member_name_problem(name: str) -> str | None:
    """Why an archive member called ``name`` would land outside the folder it is unpacked into
    (an absolute name, a drive letter, a ``..`` part), or ``None``."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path contains '..'"
    return None
