"""Path relations that follow links."""

from __future__ import annotations

from pathlib import Path


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, after resolving links."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents
