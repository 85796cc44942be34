"""``STORE/index/``: what ``pancreas index`` hands to ``pancreas train`` and ``evaluate --run``.

::

    STORE/index/split.json                   the K folds: which cases train and validate in each (``Split``)
    STORE/index/fold_<k>/train.csv, val.csv  patch manifests of fold k (``dataset.contract.manifest``)
    STORE/index/augmented/<case>.h5          elastically deformed foreground copies (``dataset.index.augment``),
                                             one per case, shared by every fold that trains on the case
    STORE/index/summary.json                 counts per fold and fingerprints (``IndexSummary``), written LAST

``summary.json`` commits the index: the indexer removes it before it changes anything and
writes it after everything else is in place, so a killed run leaves an index that
``check_index`` refuses, never manifests that point into half-rebuilt shards.

``split.json`` fields: ``seed`` (int), ``val_fraction`` (float; used only when there is
one fold), ``max_cases`` (int | null), ``folds`` (a list of K ``{"train": [...], "val":
[...]}``, sorted case ids; every indexed case is in exactly one fold's ``val``; K = 1 is
one seeded ``val_fraction`` split), ``skipped`` ({case id: reason} of cases the catalog
lists as failed or pending).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dataset.common.atomic import read_json, write_json_atomic
from dataset.contract.catalog import Catalog
from dataset.contract.fingerprints import check_fingerprint, store_fingerprint
from dataset.contract.manifest import (
    AUGMENTED_DIR,
    FOLD_PREFIX,
    INDEX_DIR,
    MANIFEST_NAMES,
    fold_dir,
    index_fingerprint,
    manifest_path,
)
from dataset.contract.store import StoreError

SPLIT_NAME = "split.json"
SUMMARY_NAME = "summary.json"
LEGACY_MANIFEST_NAMES = ("train.csv", "val.csv")  # STORE/index/ itself, before folds: removed on commit
REINDEX = "rerun `pancreas index`"


def index_dir(store: str | Path) -> Path:
    return Path(store) / INDEX_DIR


@dataclass(frozen=True)
class Fold:
    """One fold of a split: sorted case ids that train, and that validate."""

    train: tuple[str, ...]
    val: tuple[str, ...]

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val)}


@dataclass(frozen=True)
class Split:
    """``split.json``: a case-level K-fold split, seeded (the same on every machine)."""

    seed: int
    val_fraction: float
    max_cases: int | None
    folds: tuple[Fold, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)

    def fold(self, k: int) -> Fold:
        """Fold ``k`` (0..K-1); a clear error for a fold the split does not have."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self.folds):
            raise StoreError(
                f"fold {k!r} is not in the split: it has {len(self.folds)} fold(s), 0..{len(self.folds) - 1}"
            )
        return self.folds[k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "max_cases": self.max_cases,
            "folds": [f.to_dict() for f in self.folds],
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Split:
        if isinstance(data, dict) and "folds" not in data and "train" in data:
            raise StoreError(f"{where}: a split from before cross-validation folds (no 'folds'); {REINDEX}")
        if not isinstance(data, dict) or not isinstance(data.get("folds"), list) or not data["folds"]:
            raise StoreError(f"{where}: not a split (needs 'folds': a list of {{'train': [...], 'val': [...]}})")
        folds = tuple(_fold_from_dict(f, f"{where}: fold {k}") for k, f in enumerate(data["folds"]))
        seen: dict[str, int] = {}
        for k, fold in enumerate(folds):
            for case_id in fold.val:
                if case_id in seen:
                    raise StoreError(f"{where}: case {case_id} validates in folds {seen[case_id]} and {k}")
                seen[case_id] = k
        return cls(
            seed=int(data.get("seed", 0)),
            val_fraction=float(data.get("val_fraction", 0.0)),
            max_cases=data.get("max_cases"),
            folds=folds,
            skipped=dict(data.get("skipped") or {}),
        )


def _fold_from_dict(data: Any, where: str) -> Fold:
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("val"), list):
        raise StoreError(f"{where}: not a fold (needs 'train' and 'val' lists of case ids)")
    if not data["val"]:
        raise StoreError(f"{where}: no validation cases listed under 'val'")
    both = sorted(set(data["train"]) & set(data["val"]))
    if both:
        raise StoreError(f"{where}: case(s) {', '.join(both)} both train and validate")
    return Fold(train=tuple(data["train"]), val=tuple(data["val"]))


def read_split(store: str | Path) -> Split:
    path = index_dir(store) / SPLIT_NAME
    return Split.from_dict(read_json(path, "split", hint="run `pancreas index` first", error=StoreError), str(path))


def write_split(store: str | Path, split: Split) -> None:
    write_json_atomic(index_dir(store) / SPLIT_NAME, split.to_dict(), point="split")


@dataclass
class FoldCounts:
    """What one fold's manifests hold (``IndexSummary.per_fold[k]``)."""

    train_cases: int = 0
    val_cases: int = 0
    val_tumour_cases: int = 0  # validation cases whose label has tumour (the split stratifies on it)
    train_entries: int = 0
    train_foreground_entries: int = 0
    train_background_entries: int = 0
    train_augmented_entries: int = 0
    train_with_replacement: int = 0
    train_centred_entries: int = 0
    val_entries: int = 0
    val_foreground_entries: int = 0
    val_background_entries: int = 0


@dataclass
class IndexSummary:
    """``summary.json``: what ``build_index`` did, and the fingerprints that commit the index.

    Mutable while the indexer fills it in; written once, last. Counts of entries are per
    fold (``per_fold``); the rest is about the whole index.
    """

    store: str
    index_dir: str
    folds: int = 1  # K: manifests fold_0 .. fold_<K-1>
    cases: int = 0  # labelled cases indexed (each validates in exactly one fold)
    tumour_cases: int = 0
    per_fold: list[FoldCounts] = field(default_factory=list)
    skipped_cases: dict[str, str] = field(default_factory=dict)  # failed preprocessing: id -> reason
    cases_without_foreground: list[str] = field(default_factory=list)
    padded_patches: int = 0  # grid patches (training and validation grids) that extend past their volume
    augmented_shards: list[str] = field(default_factory=list)
    augmented_built: int = 0
    augmented_reused: int = 0
    unchanged: bool = False
    store_fingerprint: str = ""
    config_fingerprint: str = ""
    index_fingerprint: str = ""  # of every fold's manifests (dataset.contract.manifest.index_fingerprint)
    classify_seconds_per_case: float = 0.0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    # id -> {"val_fold": k (null: trains only), "tumour": bool, "train": {patches, balance counts},
    #        "val": {patches, foreground_patches}} ("train" / "val" where some fold uses it)
    per_case: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> IndexSummary:
        if not isinstance(data, dict) or "store_fingerprint" not in data:
            raise StoreError(f"{where}: not an index summary; {REINDEX}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        count_names = {f.name for f in dataclasses.fields(FoldCounts)}
        try:
            values["per_fold"] = [
                FoldCounts(**{k: v for k, v in c.items() if k in count_names}) for c in values.get("per_fold") or []
            ]
        except (AttributeError, TypeError):
            raise StoreError(f"{where}: 'per_fold' is not a list of fold counts; {REINDEX}") from None
        return cls(**values)

    def files_present(self, folder: Path) -> bool:
        needed = [
            SPLIT_NAME,
            *self.augmented_shards,
            *(f"{FOLD_PREFIX}{k}/{name}" for k in range(self.folds) for name in MANIFEST_NAMES),
        ]
        return all((folder / name).is_file() for name in needed)


def summary_path(store: str | Path) -> Path:
    return index_dir(store) / SUMMARY_NAME


def read_index_summary(store: str | Path) -> IndexSummary:
    """The committed index's summary; a clear error when the index is incomplete."""
    path = summary_path(store)
    if not path.is_file():
        raise StoreError(
            f"{path.parent}: incomplete index (no {SUMMARY_NAME}: `pancreas index` did not finish); {REINDEX}"
        )
    return IndexSummary.from_dict(read_json(path, "index summary", REINDEX, StoreError), str(path))


def previous_summary(store: str | Path) -> IndexSummary | None:
    """The summary of the last complete index, or None (absent or unreadable: rebuild)."""
    try:
        return read_index_summary(store)
    except StoreError:
        return None


def uncommit_index(store: str | Path) -> None:
    """Remove ``summary.json`` before changing anything in the index (see the module docstring)."""
    from dataset.common.atomic import fsync_path

    path = summary_path(store)
    if path.exists():
        path.unlink()
        fsync_path(path.parent)


def commit_index(store: str | Path, summary: IndexSummary) -> None:
    write_json_atomic(summary_path(store), summary.to_dict(), point="summary")


def check_index(store: str | Path, catalog: Catalog, fold: int | None = None) -> IndexSummary:
    """The index's summary after checking it is complete and still matches the store and manifests.

    ``fold``: also refuse a fold the index does not have (a reader about to use one).
    """
    store = Path(store)
    summary = read_index_summary(store)
    check_fingerprint(
        "store fingerprint",
        summary.store_fingerprint,
        store_fingerprint(catalog),
        index_dir(store),
        store,
        f"cases were redone or added; {REINDEX}",
    )
    check_fingerprint(
        "index fingerprint",
        summary.index_fingerprint,
        index_fingerprint(store),
        index_dir(store),
        f"{FOLD_PREFIX}<k>/train.csv, val.csv",
        f"the manifests were edited; {REINDEX}",
    )
    if fold is not None and not 0 <= fold < summary.folds:
        raise StoreError(
            f"{index_dir(store)}: no fold {fold}: the index has {summary.folds} fold(s), "
            f"0..{summary.folds - 1}; pass --fold 0..{summary.folds - 1} or rerun "
            f"`pancreas index --folds K` with K > {fold}"
        )
    return summary


__all__ = [
    "AUGMENTED_DIR",
    "INDEX_DIR",
    "LEGACY_MANIFEST_NAMES",
    "Fold",
    "FoldCounts",
    "IndexSummary",
    "Split",
    "check_index",
    "commit_index",
    "fold_dir",
    "index_dir",
    "manifest_path",
    "previous_summary",
    "read_index_summary",
    "read_split",
    "uncommit_index",
    "write_split",
]
