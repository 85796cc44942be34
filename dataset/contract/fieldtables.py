"""The field tables of docs/reference/contract.md, made from the records' own field comments.

Each field of a hand-over record is described once, by the comment on (or just above) its
line in the dataclass; ``python -m dataset.contract.fieldtables`` rewrites the tables
between ``<!-- fields: Name -->`` and ``<!-- end fields -->`` in the page, and
tests/test_contract.py checks the page is up to date.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path

from dataset.common.records import OMIT_EMPTY
from dataset.contract.catalog import Catalog, CatalogRecord
from dataset.contract.index import Fold, FoldCounts, IndexSummary, Split
from dataset.contract.package import PackageMember, PackageModel, PackageRecord
from dataset.contract.postprocessing import PostprocessingDecision
from dataset.contract.predictions import PredictionRecord, Predictions
from dataset.contract.run import Environment, EnvironmentRecord, InputContract, RunFingerprints, RunState

RECORDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Catalog,
        CatalogRecord,
        Split,
        Fold,
        IndexSummary,
        FoldCounts,
        Predictions,
        PredictionRecord,
        PostprocessingDecision,
        RunFingerprints,
        InputContract,
        Environment,
        EnvironmentRecord,
        RunState,
        PackageRecord,
        PackageModel,
        PackageMember,
    )
}
PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "contract.md"
_BLOCK = re.compile(r"(<!-- fields: (\w+) -->\n).*?(<!-- end fields -->)", re.S)
_FIELD = re.compile(r"^    (\w+): [^#]*?(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^    #\s?(.*)$")


def field_comments(cls: type) -> dict[str, str]:
    """``{field: its comment}``: the comment on the field's line, after the ones just above it."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        comment, field = _COMMENT.match(line), _FIELD.match(line)
        if comment:
            above.append(comment.group(1).strip())
        elif field:
            out[field.group(1)] = " ".join([*above, field.group(2) or ""]).strip()
            above = []
        else:
            above = []
    return out


def field_table(cls: type) -> str:
    """The markdown table of ``cls``'s fields, in file order; every field must have its comment."""
    comments = field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        text = comments.get(f.name, "")
        if not text:
            raise ValueError(f"{cls.__name__}.{f.name} has no comment describing it")
        if f.metadata.get(OMIT_EMPTY):
            text += " (left out while unknown)"
        text = text.replace("|", "&#124;").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{f.name}` | {text} |")
    return "\n".join(["| field | what |", "|---|---|", *rows]) + "\n"


def render(page: str) -> str:
    """``page`` with every field table regenerated."""
    return _BLOCK.sub(lambda m: m.group(1) + field_table(RECORDS[m.group(2)]) + m.group(3), page)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE
    path.write_text(render(path.read_text(encoding="utf-8")))
