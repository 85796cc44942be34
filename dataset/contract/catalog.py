"""``STORE/catalog.json``: one record per case, written by ``pancreas preprocess``.

The catalog is the store's table of contents and its commit record: a shard counts
only once its record says ``done`` with the shard's fingerprints. ``pancreas
preprocess`` rewrites it (atomically, durably) after every finished case, so a kill
loses at most the case in flight. Layout::

    {"schema_version": 1,
     "dataset": {"root": "/abs/Task07_Pancreas", "name": "...", "labels": {"0": "background", ...}},
     "config": {...resolved preprocess config...}, "config_fingerprint": "...",
     "cases": {"<case_id>": {...CatalogRecord...}}}

Record fields (``CatalogRecord``, in this order):

==================  =============================================================
split               "training" | "test" (from dataset.json; training cases have labels)
shard               "cases/<case_id>.h5", relative to STORE
status              "done" | "failed" | "pending" (planned, not finished: a killed run)
error               null | one-line reason
shape_zyx           [z, y, x] of the stored arrays | null
has_label           bool
label_counts        [n0, n1, n2] voxels per class in the stored label | null
input_fingerprint   fingerprint of the inputs the shard was made from (taken when planned)
config_fingerprint  fingerprint of the preprocessing config
seconds             float, time the case took
==================  =============================================================

Readers: ``pancreas index`` (which cases to index), ``pancreas train`` (the run's
contract), ``pancreas evaluate --run`` (source files of validation cases).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset.common.atomic import read_json, write_json_atomic
from dataset.contract.store import CASES_DIR, SCHEMA_VERSION, StoreError

CATALOG_NAME = "catalog.json"
STATUSES = ("done", "failed", "pending")


@dataclass(frozen=True)
class CatalogRecord:
    """One case of the catalog (see the module docstring)."""

    split: str
    shard: str
    status: str = "failed"
    error: str | None = None
    shape_zyx: tuple[int, int, int] | None = None
    has_label: bool = False
    label_counts: tuple[int, ...] | None = None
    input_fingerprint: str = ""
    config_fingerprint: str = ""
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return self.status == "done"

    @classmethod
    def new(cls, case_id: str, split: str, has_label: bool, **fields: Any) -> CatalogRecord:
        return cls(split=split, shard=f"{CASES_DIR}/{case_id}.h5", has_label=has_label, **fields)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("shape_zyx", "label_counts"):
            if data[key] is not None:
                data[key] = [int(v) for v in data[key]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> CatalogRecord:
        if not isinstance(data, Mapping):
            raise StoreError(f"{where}: a catalog record must be a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown or "split" not in data or "shard" not in data:
            raise StoreError(f"{where}: not a catalog record (keys {sorted(data)})")
        values = dict(data)
        if values.get("status") not in STATUSES:
            raise StoreError(f"{where}: status {values.get('status')!r} is not one of {', '.join(STATUSES)}")
        for key in ("shape_zyx", "label_counts"):
            if values.get(key) is not None:
                values[key] = tuple(int(v) for v in values[key])
        return cls(**values)


@dataclass(frozen=True)
class Catalog:
    """The whole ``catalog.json``."""

    dataset: Mapping[str, Any]  # root, name, labels
    config: Mapping[str, Any]  # the resolved preprocessing config
    config_fingerprint: str
    cases: Mapping[str, CatalogRecord] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def new(
        cls, root: str | Path, name: str, labels: Mapping[str, str], config: Mapping[str, Any], config_fingerprint: str
    ) -> Catalog:
        """An empty catalog for the dataset at ``root`` (``pancreas preprocess`` starts every run with one)."""
        return cls(
            dataset={"root": str(root), "name": name, "labels": dict(labels)},
            config=config,
            config_fingerprint=config_fingerprint,
        )

    def with_case(self, case_id: str, record: CatalogRecord) -> Catalog:
        return dataclasses.replace(self, cases={**self.cases, case_id: record})

    def ordered(self, case_ids: list[str]) -> Catalog:
        """Only ``case_ids`` (in that order): the dataset's own order, cases no longer listed dropped."""
        return dataclasses.replace(self, cases={c: self.cases[c] for c in case_ids if c in self.cases})

    def done_with_label(self) -> list[str]:
        return sorted(c for c, r in self.cases.items() if r.done and r.has_label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "dataset": dict(self.dataset),
            "config": dict(self.config),
            "config_fingerprint": self.config_fingerprint,
            "cases": {c: r.to_dict() for c, r in self.cases.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Catalog:
        if not isinstance(data, dict):
            raise StoreError(f"{where}: not a catalog (a JSON object is expected)")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{where}: schema version {data.get('schema_version')} but this code reads {SCHEMA_VERSION}"
            )
        cases = data.get("cases")
        if not isinstance(cases, dict):
            raise StoreError(f"{where}: no 'cases' mapping")
        return cls(
            dataset=data.get("dataset") or {},
            config=data.get("config") or {},
            config_fingerprint=str(data.get("config_fingerprint") or ""),
            cases={c: CatalogRecord.from_dict(r, f"{where}: case {c}") for c, r in cases.items()},
        )


def catalog_path(store: str | Path) -> Path:
    return Path(store) / CATALOG_NAME


def read_catalog(store: str | Path) -> Catalog:
    """The store's catalog; one clear line when the store or catalog is missing or damaged."""
    path = catalog_path(store)
    if not path.is_file():
        raise StoreError(f"{store}: not a preprocessed store (no {CATALOG_NAME}); run `pancreas preprocess`")
    return Catalog.from_dict(read_json(path, "catalog", error=StoreError), str(path))


def write_catalog(store: str | Path, catalog: Catalog) -> None:
    """Atomically and durably replace the catalog (crash point ``catalog``)."""
    write_json_atomic(catalog_path(store), catalog.to_dict(), point="catalog")
