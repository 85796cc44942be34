"""The CLI's error rule: a PancreasError or OSError is one line and exit 2; anything else is a bug
and keeps its traceback."""

from __future__ import annotations

import errno
import importlib

import pytest

from dataset.common.configio import ConfigError
from dataset.common.errors import PancreasError, UsageError
from dataset.common.locks import LockedError
from dataset.contract.store import StoreError
from pancreas.cli import main


def _failing_env(monkeypatch, error: BaseException) -> None:
    """`pancreas env` whose run raises ``error``."""
    module = importlib.import_module("pancreas.cli_env")

    def run(args):
        raise error

    monkeypatch.setattr(module, "run", run)


@pytest.mark.parametrize(
    "error",
    [
        PancreasError("case pancreas_001: refused"),
        UsageError("--workers must be >= 0, got -1"),
        ConfigError("c.yaml.model.depth: expected int, got 'x'"),
        StoreError("/s: not a preprocessed store"),
        LockedError("/s: in use by pid 1"),
        OSError(errno.ENOSPC, "No space left on device", "/out/case.nii.gz"),
    ],
)
def test_refusals_and_file_errors_are_one_line(error, monkeypatch, capsys):
    _failing_env(monkeypatch, error)
    assert main(["env"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pancreas env: error: "), err
    assert "Traceback" not in err[0]


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("missing"), TypeError("bad call"), RuntimeError("x")])
def test_any_other_exception_keeps_its_traceback(error, monkeypatch):
    _failing_env(monkeypatch, error)
    with pytest.raises(type(error)):
        main(["env"])


def test_every_error_class_of_the_project_has_the_one_base():
    """Every exception class defined in the library derives from PancreasError."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for package in ("dataset", "sources", "review", "preprocess", "training", "prediction", "evaluation", "pancreas"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                    bases = [getattr(b, "id", getattr(b, "attr", "")) for b in node.bases]
                    found.append((f"{path.relative_to(root)}:{node.name}", bases))
    assert len(found) >= 18
    rogue = [
        name
        for name, bases in found
        if name.split(":")[1] != "PancreasError"
        and "PancreasError" not in bases
        and not any(b in {"UsageError", "ContractError"} for b in bases)
    ]
    assert rogue == []
