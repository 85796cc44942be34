"""The contract package documents every hand-over file, and no other module opens one by name."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import dataset.contract as contract

ROOT = Path(__file__).resolve().parents[1]
HANDOVER_NAMES = {
    "catalog.json",
    "split.json",
    "summary.json",
    "train.csv",
    "val.csv",
    "input_contract.json",
    "state.json",
    "fingerprints.json",
    "predictions.json",
    "postprocessing.json",
    "environment.json",
}


def table_rows() -> list[tuple[str, str]]:
    return re.findall(
        r"^((?:STORE|RUN_DIR|PRED_DIR|CV_DIR)/\S+(?:, \S+)?)\s{2,}(\w+)\s{2,}", contract.__doc__, flags=re.M
    )


def test_every_row_names_a_contract_module_that_defines_the_file():
    rows = table_rows()
    assert len(rows) == 14
    for path, module_name in rows:
        module = importlib.import_module(f"dataset.contract.{module_name}")
        source = Path(module.__file__).read_text()
        for name in re.findall(r"[\w.]+\.(?:json|csv)", path):
            assert f'"{name}"' in source or (
                name in ("train.csv", "val.csv")
                and '"train.csv"' in Path(importlib.import_module("dataset.contract.index").__file__).read_text()
            ), (path, module_name)
    documented = {n for path, _ in table_rows() for n in re.findall(r"[\w.]+\.(?:json|csv)", path)}
    assert documented >= HANDOVER_NAMES


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_no_module_outside_the_contract_names_a_handover_file():
    offenders = []
    for package in ("dataset", "sources", "review", "preprocess", "training", "prediction", "evaluation", "pancreas"):
        for path in (ROOT / package).rglob("*.py"):
            if "contract" in path.relative_to(ROOT).parts:
                continue
            for line, value in _string_constants(ast.parse(path.read_text())):
                if value in HANDOVER_NAMES or any(value.endswith("/" + n) for n in HANDOVER_NAMES):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert offenders == []
