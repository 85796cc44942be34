"""``STORE/index/``: what ``pancreas index`` hands to ``pancreas train`` and ``evaluate --run``.

::

    STORE/index/split.json           which labelled cases train and which validate (``Split``)
    STORE/index/train.csv, val.csv   patch manifests (``dataset.contract.manifest``)
    STORE/index/augmented/<case>.h5  elastically deformed foreground copies (``dataset.index.augment``)
    STORE/index/summary.json         counts and fingerprints (``IndexSummary``), written LAST

``summary.json`` commits the index: the indexer removes it before it changes anything and
writes it after everything else is in place, so a killed run leaves an index that
``check_index`` refuses, never manifests that point into half-rebuilt shards.

``split.json`` fields: ``seed`` (int), ``val_fraction`` (float), ``max_cases`` (int |
null), ``train`` and ``val`` (sorted case ids), ``skipped`` ({case id: reason} of cases
the catalog lists as failed or pending).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dataset.common.files import read_json, write_json_atomic
from dataset.contract.catalog import Catalog
from dataset.contract.fingerprints import check_fingerprint, store_fingerprint
from dataset.contract.manifest import AUGMENTED_DIR, INDEX_DIR, index_fingerprint
from dataset.contract.store import StoreError

SPLIT_NAME = "split.json"
SUMMARY_NAME = "summary.json"
MANIFEST_NAMES = ("train.csv", "val.csv")
REINDEX = "rerun `pancreas index`"


def index_dir(store: str | Path) -> Path:
    return Path(store) / INDEX_DIR


def manifest_path(store: str | Path, split: str) -> Path:
    """``STORE/index/<split>.csv`` for split "train" or "val"."""
    if f"{split}.csv" not in MANIFEST_NAMES:
        raise ValueError(f"unknown manifest {split!r}; expected one of {', '.join(MANIFEST_NAMES)}")
    return index_dir(store) / f"{split}.csv"


@dataclass(frozen=True)
class Split:
    """``split.json``: a case-level split, seeded (the same on every machine)."""

    seed: int
    val_fraction: float
    max_cases: int | None
    train: tuple[str, ...]
    val: tuple[str, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "val_fraction": self.val_fraction, "max_cases": self.max_cases,
                "train": list(self.train), "val": list(self.val), "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Split":
        if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("val"), list):
            raise StoreError(f"{where}: not a split (needs 'train' and 'val' lists of case ids)")
        if not data["val"]:
            raise StoreError(f"{where}: no validation cases listed under 'val'")
        return cls(seed=int(data.get("seed", 0)), val_fraction=float(data.get("val_fraction", 0.0)),
                   max_cases=data.get("max_cases"), train=tuple(data["train"]), val=tuple(data["val"]),
                   skipped=dict(data.get("skipped") or {}))


def read_split(store: str | Path) -> Split:
    path = index_dir(store) / SPLIT_NAME
    return Split.from_dict(read_json(path, "split", hint="run `pancreas index` first", error=StoreError), str(path))


def write_split(store: str | Path, split: Split) -> None:
    write_json_atomic(index_dir(store) / SPLIT_NAME, split.to_dict(), point="split")


@dataclass
class IndexSummary:
    """``summary.json``: what ``build_index`` did, and the fingerprints that commit the index.

    Mutable while the indexer fills it in; written once, last.
    """

    store: str
    index_dir: str
    train_cases: int = 0
    val_cases: int = 0
    skipped_cases: dict[str, str] = field(default_factory=dict)  # failed preprocessing: id -> reason
    cases_without_foreground: list[str] = field(default_factory=list)
    train_entries: int = 0
    train_foreground_entries: int = 0
    train_background_entries: int = 0
    train_augmented_entries: int = 0
    train_with_replacement: int = 0
    train_centred_entries: int = 0
    val_entries: int = 0
    val_foreground_entries: int = 0
    val_background_entries: int = 0
    padded_patches: int = 0
    augmented_shards: list[str] = field(default_factory=list)
    augmented_built: int = 0
    augmented_reused: int = 0
    unchanged: bool = False
    store_fingerprint: str = ""
    config_fingerprint: str = ""
    index_fingerprint: str = ""  # of train.csv + val.csv (dataset.contract.manifest.index_fingerprint)
    classify_seconds_per_case: float = 0.0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    per_case: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "IndexSummary":
        if not isinstance(data, dict) or "store_fingerprint" not in data:
            raise StoreError(f"{where}: not an index summary; {REINDEX}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def files_present(self, folder: Path) -> bool:
        needed = [SPLIT_NAME, *MANIFEST_NAMES, *self.augmented_shards]
        return all((folder / name).is_file() for name in needed)


def summary_path(store: str | Path) -> Path:
    return index_dir(store) / SUMMARY_NAME


def read_index_summary(store: str | Path) -> IndexSummary:
    """The committed index's summary; a clear error when the index is incomplete."""
    path = summary_path(store)
    if not path.is_file():
        raise StoreError(f"{path.parent}: incomplete index (no {SUMMARY_NAME}: `pancreas index` did not finish); "
                         f"{REINDEX}")
    return IndexSummary.from_dict(read_json(path, "index summary", REINDEX, StoreError), str(path))


def previous_summary(store: str | Path) -> IndexSummary | None:
    """The summary of the last complete index, or None (absent or unreadable: rebuild)."""
    try:
        return read_index_summary(store)
    except StoreError:
        return None


def uncommit_index(store: str | Path) -> None:
    """Remove ``summary.json`` before changing anything in the index (see the module docstring)."""
    from dataset.common.files import fsync_path

    path = summary_path(store)
    if path.exists():
        path.unlink()
        fsync_path(path.parent)


def commit_index(store: str | Path, summary: IndexSummary) -> None:
    write_json_atomic(summary_path(store), summary.to_dict(), point="summary")


def check_index(store: str | Path, catalog: Catalog) -> IndexSummary:
    """The index's summary after checking it is complete and still matches the store and manifests."""
    store = Path(store)
    summary = read_index_summary(store)
    check_fingerprint("store fingerprint", summary.store_fingerprint, store_fingerprint(catalog),
                      index_dir(store), store, f"cases were redone or added; {REINDEX}")
    check_fingerprint("index fingerprint", summary.index_fingerprint, index_fingerprint(store),
                      index_dir(store), "train.csv/val.csv", f"the manifests were edited; {REINDEX}")
    return summary


__all__ = ["AUGMENTED_DIR", "INDEX_DIR", "IndexSummary", "Split", "check_index", "commit_index", "index_dir",
           "manifest_path",
           "previous_summary", "read_index_summary", "read_split", "uncommit_index", "write_split"]
