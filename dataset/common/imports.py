"""Imports of compiled dependencies that a plain ``pip install .`` can leave broken.

``import_elasticdeform`` turns NumPy's page-long failure into a ``DependencyError`` naming the one
command that fixes it (docs/explanation/design-facts.md#libraries-and-their-versions).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from types import ModuleType

from dataset.common.errors import PancreasError


class DependencyError(PancreasError, ImportError):
    """A dependency that is missing or cannot be imported; the message says how to fix it."""


def elasticdeform_fix_command(python: str | None = None) -> str:
    """The command that compiles elasticdeform against this environment's NumPy.

    ``setuptools wheel`` first: without build isolation they must be installed here (a
    Python 3.12 venv has neither). ``--force-reinstall --no-deps``: an installed (broken)
    wheel would otherwise count as "already satisfied" and nothing would be rebuilt.
    ``--no-build-isolation``: its setup.py imports numpy, which must be the NumPy here.
    """
    pip = f"{python or sys.executable} -m pip install"
    return (
        f"{pip} setuptools wheel && {pip} --force-reinstall --no-deps --no-binary elasticdeform "
        "--no-build-isolation elasticdeform==0.5.1"
    )


def import_elasticdeform() -> ModuleType:
    """``import elasticdeform``, or ``DependencyError`` in one line with the command that fixes it."""
    noise = io.StringIO()
    try:
        with contextlib.redirect_stderr(noise):  # NumPy's "compiled using NumPy 1.x" page
            return importlib.import_module("elasticdeform")
    except ImportError as err:
        import numpy

        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        what = (
            "is not installed"
            if isinstance(err, ModuleNotFoundError) and err.name == "elasticdeform"
            else f"cannot be imported beside NumPy {numpy.__version__} ({first}; its PyPI wheel is built "
            "against NumPy 1)"
        )
        raise DependencyError(
            f"elasticdeform {what}; compile it against this NumPy (needs a C compiler and Python's headers): "
            f"{elasticdeform_fix_command()}"
        ) from None
