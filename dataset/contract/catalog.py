"""``STORE/catalog.json``: the store's table of contents and commit record (``pancreas preprocess``).

A shard counts only once its record says ``done``; the catalog is rewritten after every
finished case. Fields: the dataclasses below and docs/reference/contract.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dataset.common.records import read_record, write_record
from dataset.contract.store import CASES_DIR, StoreError

CATALOG_NAME = "catalog.json"
STATUSES = ("done", "failed", "pending")


@dataclass(frozen=True)
class CatalogRecord:
    """One case of the catalog."""

    split: str  # "training" | "test" (from dataset.json; training cases have labels)
    shard: str  # "cases/<case_id>.h5", relative to STORE
    status: str = "failed"  # "done" | "failed" | "pending" (planned, not finished: a killed run)
    error: str | None = None  # null | one-line reason
    shape_zyx: tuple[int, int, int] | None = None  # [z, y, x] of the stored arrays | null
    has_label: bool = False  # whether the case has a label
    label_counts: tuple[int, ...] | None = None  # [n0, n1, n2] voxels per class in the stored label | null
    input_fingerprint: str = ""  # of the inputs the shard was made from (taken when planned)
    config_fingerprint: str = ""  # of the preprocessing config
    seconds: float = 0.0  # time the case took

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise StoreError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def done(self) -> bool:
        return self.status == "done"

    @classmethod
    def new(cls, case_id: str, split: str, has_label: bool, **fields: Any) -> CatalogRecord:
        return cls(split=split, shard=f"{CASES_DIR}/{case_id}.h5", has_label=has_label, **fields)


@dataclass(frozen=True)
class Catalog:
    """The whole ``catalog.json``."""

    KIND: ClassVar[str] = "catalog"
    ERROR: ClassVar[type[Exception]] = StoreError

    version: int = field(default=1, kw_only=True)  # format version of this file
    dataset: Mapping[str, Any]  # {"root": the MSD task folder (absolute), "name", "labels": {"0": "background", ...}}
    config: Mapping[str, Any]  # the resolved preprocessing config
    config_fingerprint: str  # fingerprint of that config
    cases: Mapping[str, CatalogRecord] = field(default_factory=dict)  # {case id: record}, in the dataset's order

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


def catalog_path(store: str | Path) -> Path:
    return Path(store) / CATALOG_NAME


def read_catalog(store: str | Path) -> Catalog:
    """The store's catalog; one clear line when the store or catalog is missing or damaged."""
    path = catalog_path(store)
    if not path.is_file():
        raise StoreError(f"{store}: not a preprocessed store (no {CATALOG_NAME}); run `pancreas preprocess`")
    return read_record(path, Catalog, "catalog")


def write_catalog(store: str | Path, catalog: Catalog) -> None:
    """Atomically and durably replace the catalog (crash point ``catalog``)."""
    write_record(catalog_path(store), catalog, point="catalog")
