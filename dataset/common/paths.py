"""Path relations that follow links, and the one rule that keeps every output out of its inputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dataset.common.errors import UsageError


class OutputInsideInputError(UsageError):
    """An output option names a folder the command reads, or one inside it."""


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, after resolving links."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def refuse_inside(out: str | Path, reads: Iterable[tuple[str, str | Path | None]], flag: str) -> None:
    """Refuse an output ``out`` that is, or lies inside, a folder the command reads.

    Every command applies it to every output option (tests/test_outputs_outside_inputs.py
    enumerates them). ``reads``: (role, folder) pairs, the most specific first, e.g.
    ("truth folder", labelsTs); ``None`` folders are skipped; links are resolved.
    ``flag``: the option that named ``out``, for the one-line message.
    """
    for role, folder in reads:
        if folder is None or not inside(out, folder):
            continue
        where = "is" if Path(out).resolve() == Path(folder).resolve() else "lies inside"
        raise OutputInsideInputError(
            f"{flag} {out} {where} the {role} {folder}: outputs never go into a folder the command "
            f"reads; choose a {flag} outside it"
        )
