"""``STORE/index/``: what ``pancreas index`` hands to ``pancreas train`` and ``evaluate --run``.

``split.json`` (the K folds) and ``summary.json`` (counts and fingerprints, written LAST:
it commits the index, and ``check_index`` refuses an index without it). Fields: the
dataclasses below and docs/reference/contract.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dataset.common.records import read_record, write_record
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
REINDEX = "rerun `pancreas index`"


def index_dir(store: str | Path) -> Path:
    return Path(store) / INDEX_DIR


@dataclass(frozen=True)
class Fold:
    """One fold of a split."""

    train: tuple[str, ...]  # sorted case ids that train
    val: tuple[str, ...]  # sorted case ids that validate (never empty)

    def __post_init__(self) -> None:
        if not self.val:
            raise StoreError("no validation cases listed under 'val'")
        both = sorted(set(self.train) & set(self.val))
        if both:
            raise StoreError(f"case(s) {', '.join(both)} both train and validate")


@dataclass(frozen=True)
class Split:
    """``split.json``: a case-level K-fold split, seeded (the same on every machine)."""

    KIND: ClassVar[str] = "split"
    ERROR: ClassVar[type[Exception]] = StoreError

    version: int = field(default=1, kw_only=True)  # format version of this file
    seed: int  # the split's seed
    val_fraction: float  # used only when there is one fold
    max_cases: int | None  # at most this many cases indexed | null
    folds: tuple[Fold, ...]  # K folds; every indexed case is in exactly one fold's val (K = 1: one val_fraction split)
    # {case id: reason} of cases the catalog lists as failed or pending
    skipped: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.folds:
            raise StoreError("no folds listed under 'folds'")
        seen: dict[str, int] = {}
        for k, fold in enumerate(self.folds):
            for case_id in fold.val:
                if case_id in seen:
                    raise StoreError(f"case {case_id} validates in folds {seen[case_id]} and {k}")
                seen[case_id] = k

    def fold(self, k: int) -> Fold:
        """Fold ``k`` (0..K-1); a clear error for a fold the split does not have."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self.folds):
            raise StoreError(
                f"fold {k!r} is not in the split: it has {len(self.folds)} fold(s), 0..{len(self.folds) - 1}"
            )
        return self.folds[k]


def read_split(store: str | Path) -> Split:
    return read_record(index_dir(store) / SPLIT_NAME, Split, "split", hint="run `pancreas index` first")


def write_split(store: str | Path, split: Split) -> None:
    write_record(index_dir(store) / SPLIT_NAME, split, point="split")


@dataclass(frozen=True)
class FoldCounts:
    """What one fold's manifests hold (``IndexSummary.per_fold[k]``)."""

    train_cases: int = 0  # cases in train.csv
    val_cases: int = 0  # cases in val.csv
    val_tumour_cases: int = 0  # validation cases whose label has tumour (the split stratifies on it)
    train_entries: int = 0  # rows of train.csv
    train_foreground_entries: int = 0  # of them foreground
    train_background_entries: int = 0  # of them background
    train_augmented_entries: int = 0  # of them elastic variants (variant non-empty)
    train_with_replacement: int = 0  # background entries drawn again (case short of background)
    train_centred_entries: int = 0  # foreground-centred samples (kind "centred")
    val_entries: int = 0  # rows of val.csv
    val_foreground_entries: int = 0  # of them foreground
    val_background_entries: int = 0  # of them background


@dataclass
class IndexSummary:
    """``summary.json``: what ``build_index`` did, and the fingerprints that commit the index.

    The one record that is not frozen: ``dataset.index.build`` fills it in while it works,
    in several functions; it is written once, last. Counts of entries are per
    fold (``per_fold``); the rest is about the whole index.
    """

    KIND: ClassVar[str] = "index summary"
    ERROR: ClassVar[type[Exception]] = StoreError

    version: int = field(default=1, kw_only=True)  # format version of this file
    store: str  # the store indexed (absolute)
    index_dir: str  # STORE/index (absolute)
    folds: int = 1  # K: manifests fold_0 .. fold_<K-1>
    cases: int = 0  # labelled cases indexed (each validates in exactly one fold)
    tumour_cases: int = 0  # of them with tumour in their label
    per_fold: list[FoldCounts] = field(default_factory=list)  # counts of fold k's manifests
    skipped_cases: dict[str, str] = field(default_factory=dict)  # failed preprocessing: id -> reason
    cases_without_foreground: list[str] = field(default_factory=list)  # labelled cases with no foreground patch
    padded_patches: int = 0  # grid patches (training and validation grids) that extend past their volume
    augmented_shards: list[str] = field(default_factory=list)  # "augmented/<case>.h5", relative to STORE/index
    augmented_built: int = 0  # augmented shards computed by this run
    augmented_reused: int = 0  # augmented shards kept (fingerprint unchanged)
    unchanged: bool = False  # the index was already up to date: nothing rewritten
    store_fingerprint: str = ""  # of the catalog the index was built from
    config_fingerprint: str = ""  # of the resolved index config
    index_fingerprint: str = ""  # of every fold's manifests (dataset.contract.manifest.index_fingerprint)
    classify_seconds_per_case: float = 0.0  # mean time to classify one case's grid patches
    seconds: float = 0.0  # time the index took
    config: dict[str, Any] = field(default_factory=dict)  # the resolved index config
    # id -> {"val_fold": k (null: trains only), "tumour": bool, "train": {patches, balance counts},
    #        "val": {patches, foreground_patches}} ("train" / "val" where some fold uses it)
    per_case: dict[str, dict[str, Any]] = field(default_factory=dict)

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
    return read_record(path, IndexSummary, "index summary", REINDEX)


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
    write_record(summary_path(store), summary, point="summary")


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
