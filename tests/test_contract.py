"""The contract package documents every hand-over file, and no other module opens one by name."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from dataset.common.records import ContractError
from dataset.contract.fieldtables import PAGE, RECORDS, render

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
    "package.json",
}


def table_rows() -> list[tuple[str, str]]:
    """(files, module) of each row of the overview table in docs/reference/contract.md."""
    row = r"^\| (`(?:STORE|RUN_DIR|PRED_DIR|CV_DIR|MODEL\.zip)/.+?) \| `(\w+)` \|"
    return re.findall(row, PAGE.read_text(encoding="utf-8"), flags=re.M)


def test_every_row_names_a_contract_module_that_defines_the_file():
    rows = table_rows()
    assert len(rows) == 14
    for path, module_name in rows:
        module = importlib.import_module(f"dataset.contract.{module_name}")
        source = Path(module.__file__).read_text(encoding="utf-8")
        for name in re.findall(r"[\w.]+\.(?:json|csv)", path):
            assert f'"{name}"' in source or (
                name in ("train.csv", "val.csv")
                and '"train.csv"'
                in Path(importlib.import_module("dataset.contract.index").__file__).read_text(encoding="utf-8")
            ), (path, module_name)
    documented = {n for path, _ in table_rows() for n in re.findall(r"[\w.]+\.(?:json|csv)", path)}
    assert documented >= HANDOVER_NAMES


def _documented_fields() -> dict[str, list[str]]:
    """{record: the field names of its table} for every ``<!-- fields: Name -->`` block of the page."""
    blocks = re.findall(
        r"<!-- fields: (\w+) -->\n(.*?)<!-- end fields -->", PAGE.read_text(encoding="utf-8"), flags=re.S
    )
    return {name: re.findall(r"^\| `(\w+)` \|", table, flags=re.M) for name, table in blocks}


def test_every_field_of_every_record_is_in_its_files_table_and_no_other():
    documented = _documented_fields()
    assert sorted(documented) == sorted(RECORDS)
    for name, cls in RECORDS.items():
        assert documented[name] == [f.name for f in dataclasses.fields(cls)], name


def test_the_field_tables_are_made_from_the_field_comments():
    """Run ``python -m dataset.contract.fieldtables`` after changing a record's fields or comments."""
    assert render(PAGE.read_text(encoding="utf-8")) == PAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_file_record_has_a_version_kind_and_error(name):
    cls = RECORDS[name]
    if "version" not in {f.name for f in dataclasses.fields(cls)}:  # a part of a file's record
        assert not hasattr(cls, "KIND"), name
        return
    assert next(f.name for f in dataclasses.fields(cls)) == "version"
    assert isinstance(cls.KIND, str) and issubclass(cls.ERROR, ContractError)


def test_contract_module_docstrings_are_short_and_link_the_page():
    for path in sorted((ROOT / "dataset" / "contract").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert len(doc.splitlines()) <= 12, path.name


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
            for line, value in _string_constants(ast.parse(path.read_text(encoding="utf-8"))):
                if value in HANDOVER_NAMES or any(value.endswith("/" + n) for n in HANDOVER_NAMES):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert offenders == []
