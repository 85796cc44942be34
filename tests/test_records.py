"""The one record codec: round trips, refused versions, migrations, and messages naming the key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from dataset.common import records
from dataset.common.records import (
    ContractError,
    optional,
    read_record,
    record_from_dict,
    write_record,
)


class ToyError(ContractError):
    """The toy record's one error class."""


@dataclass(frozen=True)
class Part:
    name: str  # a name
    size_zyx: tuple[int, int, int] | None = None  # a box


@dataclass(frozen=True)
class Toy:
    KIND: ClassVar[str] = "toy record"
    ERROR: ClassVar[type[Exception]] = ToyError

    version: int = field(default=1, kw_only=True)
    parts: list[Part]
    by_name: Mapping[str, Part] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)
    pairs: tuple[tuple[int, int], ...] = ()
    note: str | None = optional()


TOY = Toy([Part("a", (1, 2, 3))], {"b": Part("b")}, {"dice": 1.0}, ((1, 2), (3, 4)))


def test_round_trip_through_the_file_keeps_types_order_and_bytes(tmp_path: Path):
    write_record(tmp_path / "toy.json", TOY, point="toy")
    text = (tmp_path / "toy.json").read_text(encoding="utf-8")
    assert list(json.loads(text)) == ["version", "parts", "by_name", "scores", "pairs"]  # note: unknown, left out
    back = read_record(tmp_path / "toy.json", Toy, "toy record")
    assert back == TOY and back.parts[0].size_zyx == (1, 2, 3) and back.scores == {"dice": 1.0}
    write_record(tmp_path / "toy.json", back, point="toy")
    assert (tmp_path / "toy.json").read_text(encoding="utf-8") == text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"parts": []}, r"^f.json: written by an older pancreas-seg \(no format version; this one reads 1\)$"),
        (
            {"version": 0, "parts": []},
            r"^f.json: written by an older pancreas-seg \(format version 0; this one reads 1\)$",
        ),
        (
            {"version": 7, "parts": []},
            r"^f.json: written by a newer pancreas-seg \(format version 7; this one reads 1\)$",
        ),
        ({"version": 1}, r"^f.json: missing key\(s\) parts$"),
        ({"version": 1, "parts": [], "colour": 1}, r"^f.json: unknown key\(s\) colour; allowed: "),
        ({"version": 1, "parts": [{"name": 3}]}, r"^f.json.parts\[0\].name: expected str, got 3$"),
        ({"version": 1, "parts": [], "by_name": {"b": {"size_zyx": [1, 2]}}}, r"^f.json.by_name.b: missing key"),
        ({"version": 1, "parts": [], "pairs": [[1, 2, 3]]}, r"^f.json.pairs\[0\]: expected 2 values"),
        ([], r"^f.json: not a toy record \(expected a JSON object, got list\)$"),
    ],
)
def test_a_wrong_file_is_one_line_naming_the_key(data, message):
    with pytest.raises(ToyError, match=message):
        record_from_dict(Toy, data, "f.json")


def test_a_missing_file_raises_the_records_own_error(tmp_path: Path):
    with pytest.raises(ToyError, match=r"toy.json: no toy record; make one"):
        read_record(tmp_path / "toy.json", Toy, "toy record", "make one")


def test_a_version_bump_is_a_migration(monkeypatch):
    """How a format change is done: raise the version field's default, and register a function
    from the old file's dict to the new one's under ``(KIND, old version)``."""

    def v0_to_v1(data: dict) -> dict:  # version 0 called the parts "pieces"
        out = {k: v for k, v in data.items() if k != "pieces"}
        return {**out, "parts": data["pieces"], "version": 1}

    monkeypatch.setitem(records.MIGRATIONS, ("toy record", 0), v0_to_v1)
    old = {"version": 0, "pieces": [{"name": "a", "size_zyx": [1, 2, 3]}]}
    assert record_from_dict(Toy, old, "f.json") == Toy([Part("a", (1, 2, 3))])
    with pytest.raises(ToyError, match="newer pancreas-seg"):
        record_from_dict(Toy, {"version": 2, "parts": []}, "f.json")


def test_no_migration_is_registered_before_a_release():
    assert records.MIGRATIONS == {}
