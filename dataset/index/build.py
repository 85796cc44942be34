"""``pancreas index``: K-fold split, patch grid, balanced manifests and cached augmentation (``build_index``).

Validates and classifies in memory before the first write; ``summary.json`` is written last. The files:
docs/reference/contract.md#the-index-index; how it works:
docs/explanation/internals.md#building-the-index-datasetindexbuildpy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from dataset.common.atomic import fsync_path, remove_stale_temporaries
from dataset.common.configio import to_dict
from dataset.common.fingerprints import fingerprint_json
from dataset.common.locks import exclusive_lock
from dataset.common.runner import run_cases
from dataset.common.seeds import derive_seed
from dataset.contract.augmented import augmented_shard_matches
from dataset.contract.catalog import CatalogRecord, read_catalog
from dataset.contract.fingerprints import store_fingerprint
from dataset.contract.index import (
    FoldCounts,
    IndexSummary,
    Split,
    commit_index,
    manifest_path,
    previous_summary,
    uncommit_index,
    write_split,
)
from dataset.contract.manifest import (
    AUGMENTED_DIR,
    FOLD_PREFIX,
    INDEX_DIR,
    MANIFEST_NAMES,
    index_fingerprint,
    parse_variant,
    write_manifest,
)
from dataset.contract.store import StoreError, shard_path
from dataset.index import balance
from dataset.index.augment import AUGMENT_VERSION, AugmentEntry, build_augmented_shard
from dataset.index.classify import class_counts, is_foreground
from dataset.index.config import IndexConfig
from dataset.index.grid import grid_starts
from dataset.index.split import has_tumour, make_folds, usable_cases

log = logging.getLogger(__name__)

INDEX_VERSION = 2  # bump when the index's content changes for the same inputs (2: K-fold manifests)
Rows = list[dict[str, Any]]


def config_fingerprint(config: IndexConfig) -> str:
    return fingerprint_json([INDEX_VERSION, AUGMENT_VERSION, to_dict(config)])


def read_label(store: Path, case_id: str, record: CatalogRecord) -> np.ndarray:
    """A case's whole label volume; a clear error naming the case when it cannot be used."""
    path = shard_path(store, case_id)
    if not path.is_file():
        raise StoreError(f"case {case_id}: shard {path} is missing (catalog says done); rerun `pancreas preprocess`")
    try:
        with h5py.File(path, "r") as f:
            if "label" not in f:
                raise StoreError(f"case {case_id}: shard {path} has no label although the catalog says it has")
            label = f["label"][...]
    except (OSError, KeyError) as err:
        raise StoreError(f"case {case_id}: shard {path} is unreadable ({err}); rerun `pancreas preprocess`") from None
    expected = record.shape_zyx
    if expected is not None and tuple(label.shape) != tuple(expected):
        raise StoreError(f"case {case_id}: shard {path} has shape {label.shape} but the catalog says {expected}")
    return label


def grid_rows(case_id: str, label: np.ndarray, patch_zyx, config: IndexConfig) -> list[dict[str, Any]]:
    """One classified row per grid patch of a case."""
    starts = grid_starts(label.shape, patch_zyx, config.overlap)
    n_p, n_t = class_counts(label, starts, patch_zyx)
    fg = is_foreground(n_p, n_t, config.min_foreground_voxels, config.require_tumour)
    return balance.patch_rows(case_id, label.shape, starts, patch_zyx, n_p, n_t, fg)


def build_index(
    store: str | Path,
    config: IndexConfig | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> IndexSummary:
    """Build (or confirm) the patch index of ``store``.

    ``workers``: Dask worker processes for the augmentation (default all cores); 0
    computes in this process without Dask. ``scheduler`` connects to a running cluster.
    """
    t0 = time.perf_counter()
    store = Path(store)
    if config is None:
        config = IndexConfig()
    elif not isinstance(config, IndexConfig):
        raise TypeError(f"config must be an IndexConfig, got {type(config).__name__}")
    catalog = read_catalog(store)  # validated (config and catalog) before anything is touched
    index_dir = store / INDEX_DIR
    with exclusive_lock(store):
        for folder in (index_dir, index_dir / AUGMENTED_DIR, *sorted(index_dir.glob(f"{FOLD_PREFIX}*"))):
            for path in remove_stale_temporaries(folder):
                log.info("removed %s left by an interrupted run", path)
        return _build(store, index_dir, catalog, config, workers, scheduler, progress, t0)


def _build(store, index_dir, catalog, config, workers, scheduler, progress, t0) -> IndexSummary:
    usable, failed = usable_cases(catalog)
    if not usable:
        raise StoreError(f"{store}: no labelled, preprocessed case in the catalog; nothing to index")
    records = catalog.cases
    tumour = {c for c in usable if has_tumour(records[c])}
    folds = make_folds(store, usable, tumour, config.folds, config.val_fraction, config.seed, config.max_cases)
    split = Split(
        seed=config.seed,
        val_fraction=config.val_fraction,
        max_cases=config.max_cases,
        folds=folds,
        skipped=dict(failed),
    )
    summary = IndexSummary(
        store=str(store),
        index_dir=str(index_dir),
        folds=len(folds),
        skipped_cases=dict(failed),
        store_fingerprint=store_fingerprint(catalog),
        config_fingerprint=config_fingerprint(config),
        config=to_dict(config),
    )
    prev = previous_summary(store)
    if (
        prev
        and prev.store_fingerprint == summary.store_fingerprint
        and prev.config_fingerprint == summary.config_fingerprint
        and prev.files_present(index_dir)
    ):
        prev.unchanged, prev.augmented_built = True, 0
        prev.augmented_reused, prev.seconds = len(prev.augmented_shards), time.perf_counter() - t0
        _tidy(index_dir, prev)
        log.info("index of %s is up to date; nothing to do", store)
        return prev

    # Classify everything in memory first: a bad label volume fails here, before the
    # committed index is touched.
    rows, jobs, classify_s = _classify_all(store, records, split, tumour, config, summary, progress)
    summary.classify_seconds_per_case = classify_s / max(1, len(rows))
    manifests = [(_fold_rows(rows, fold.train, "train"), _fold_rows(rows, fold.val, "val")) for fold in folds]
    summary.per_fold = [_count(train, val, fold, tumour) for (train, val), fold in zip(manifests, folds)]
    # The index is committed by summary.json, written last: remove it before anything
    # changes, so a run killed half-way leaves an index the trainer refuses, never old
    # manifests whose variants point into new augmented shards.
    uncommit_index(store)
    _run_augmentation(store, index_dir, jobs, config, summary, workers, scheduler, progress)

    write_split(store, split)
    _remove_folds_from(index_dir, len(folds))  # before the fingerprint: it covers every fold folder there is
    for k, (train, val) in enumerate(manifests):
        write_manifest(manifest_path(store, "train", k), train)
        write_manifest(manifest_path(store, "val", k), val)
    summary.index_fingerprint = index_fingerprint(store)
    summary.seconds = time.perf_counter() - t0
    commit_index(store, summary)
    _tidy(index_dir, summary)
    return summary


def _fold_rows(rows: dict[str, dict[str, Rows]], cases, split: str) -> Rows:
    """One fold's manifest: the rows of its cases, in case order (the same rows in every fold)."""
    return [row for case_id in cases for row in rows[case_id][split]]


def _remove_folds_from(index_dir: Path, first: int) -> None:
    """Delete the manifests of folds ``first``.. (an index built with more folds), and their
    folders when empty; only manifest names. Durably: ``index_fingerprint`` counts every
    fold folder with a manifest, so one that came back after a power cut would make the
    committed index look edited."""
    for folder in sorted(index_dir.glob(f"{FOLD_PREFIX}*")):
        number = folder.name[len(FOLD_PREFIX) :]
        if not (folder.is_dir() and number.isdigit() and int(number) >= first):
            continue
        for name in MANIFEST_NAMES:
            if (folder / name).is_file():
                log.info("removing %s (fold %s is no longer in the index)", folder / name, number)
                (folder / name).unlink()
                fsync_path(folder)
        if not any(folder.iterdir()):
            folder.rmdir()
            fsync_path(index_dir)


def _tidy(index_dir: Path, summary: IndexSummary) -> None:
    """After the commit: delete augmented shards the manifests no longer name and manifests of
    folds beyond K. Also run on a no-op, for a run killed before it tidied."""
    _remove_folds_from(index_dir, summary.folds)
    keep = {index_dir / rel for rel in summary.augmented_shards}
    for stale in sorted(set((index_dir / AUGMENTED_DIR).glob("*.h5")) - keep):
        log.info("removing augmented shard %s (no longer in the index)", stale)
        stale.unlink()


def val_rows(case_id: str, label: np.ndarray, config: IndexConfig) -> Rows:
    """A case's validation rows (every grid patch), the same in whichever fold validates it."""
    rows = grid_rows(case_id, label, config.val_patch_zyx, config)
    balance.assign_seeds(rows, config.seed)
    return rows


def train_rows(case_id: str, label: np.ndarray, config: IndexConfig) -> tuple[Rows, Rows, balance.CaseBalance]:
    """(grid rows, balanced training entries, what balancing did) of a case: the same entries,
    augmented variants included, in every fold that trains on it."""
    grid = grid_rows(case_id, label, config.train_patch_zyx, config)
    entries, stats = balance.balance_case(case_id, grid, config)
    entries.extend(balance.centred_rows(case_id, label, config.train_patch_zyx, config))
    balance.assign_seeds(entries, config.seed)
    return grid, entries, stats


def _classify_all(store, records, split: Split, tumour, config, summary, progress):
    """Each case's rows ({"train": [...], "val": [...]}, whichever some fold needs) and the
    augmentation jobs; reads labels only."""
    training = {c for fold in split.folds for c in fold.train}
    validating = {c: k for k, fold in enumerate(split.folds) for c in fold.val}
    rows: dict[str, dict[str, Rows]] = {}
    jobs: dict[str, tuple[list[AugmentEntry], str]] = {}
    seconds = 0.0
    for case_id in tqdm(sorted(training | set(validating)), desc="classify", unit="case", disable=not progress):
        label = read_label(store, case_id, records[case_id])
        info: dict[str, Any] = {"val_fold": validating.get(case_id), "tumour": case_id in tumour}
        rows[case_id] = {"train": [], "val": []}
        t = time.perf_counter()
        if case_id in validating:
            rows[case_id]["val"] = val = val_rows(case_id, label, config)
            info["val"] = {"patches": len(val), "foreground_patches": sum(r["foreground"] for r in val)}
            summary.padded_patches += sum(r["padded"] for r in val)
        if case_id in training:
            grid, rows[case_id]["train"], stats = train_rows(case_id, label, config)
            info["train"] = {"patches": len(grid), **asdict(stats)}
            summary.padded_patches += sum(r["padded"] for r in grid)
            _warn_unbalanced(case_id, stats)
            augmented = [r for r in rows[case_id]["train"] if r["variant"]]
            if augmented:
                jobs[case_id] = _augment_job(case_id, augmented, records[case_id], config)
        seconds += time.perf_counter() - t
        if any(info[part]["foreground_patches"] == 0 for part in ("train", "val") if part in info):
            summary.cases_without_foreground.append(case_id)
            log.warning("case %s has no foreground patch", case_id)
        summary.per_case[case_id] = info
    summary.cases, summary.tumour_cases = len(rows), len(tumour & set(rows))
    return rows, jobs, seconds


def _warn_unbalanced(case_id: str, stats: balance.CaseBalance) -> None:
    if stats.foreground_patches == 0:
        log.warning("case %s: %d background training entries only", case_id, stats.background_entries)
    if stats.background_short:
        log.warning("case %s has no background patch: %d background entries missing", case_id, stats.background_short)


def _augment_job(case_id, augmented, record, config) -> tuple[list[AugmentEntry], str]:
    augmented = sorted(augmented, key=lambda r: parse_variant(r["variant"])[1])
    entries = [
        AugmentEntry(
            (r["z0"], r["y0"], r["x0"]),
            (r["dz"], r["dy"], r["dx"]),
            derive_seed(config.seed, "elastic", case_id, (r["z0"], r["y0"], r["x0"]), r["copy"]),
        )
        for r in augmented
    ]
    fingerprint = fingerprint_json(
        [
            AUGMENT_VERSION,
            record.input_fingerprint,
            record.config_fingerprint,
            to_dict(config.elastic),
            [asdict(e) for e in entries],
        ]
    )
    return entries, fingerprint


def _count(train_rows: Rows, val_rows: Rows, fold, tumour: set[str]) -> FoldCounts:
    """One fold's counts for the summary."""
    fg = sum(r["foreground"] for r in train_rows)
    val_fg = sum(r["foreground"] for r in val_rows)
    return FoldCounts(
        train_cases=len(fold.train),
        val_cases=len(fold.val),
        val_tumour_cases=len(tumour & set(fold.val)),
        train_entries=len(train_rows),
        train_foreground_entries=fg,
        train_background_entries=len(train_rows) - fg,
        train_augmented_entries=sum(bool(r["variant"]) for r in train_rows),
        train_with_replacement=sum(r["with_replacement"] for r in train_rows),
        train_centred_entries=sum(r["kind"] == "centred" for r in train_rows),
        val_entries=len(val_rows),
        val_foreground_entries=val_fg,
        val_background_entries=len(val_rows) - val_fg,
    )


def _run_augmentation(
    store: Path,
    index_dir: Path,
    jobs,
    config: IndexConfig,
    summary: IndexSummary,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> None:
    """Build the augmented shards whose fingerprints changed; drop shards no longer used."""
    aug_dir = index_dir / AUGMENTED_DIR
    wanted = {case_id: aug_dir / f"{case_id}.h5" for case_id in jobs}
    summary.augmented_shards = [f"{AUGMENTED_DIR}/{cid}.h5" for cid in sorted(jobs)]
    todo = [cid for cid in sorted(jobs) if not augmented_shard_matches(wanted[cid], jobs[cid][1])]
    summary.augmented_reused = len(jobs) - len(todo)
    if not todo:
        return
    errors: list[str] = []
    with tqdm(total=len(todo), desc="augment", unit="case", disable=not progress) as bar:
        for case_id, _result, error in run_cases(
            _augment_case,
            todo,
            (str(store), jobs, config.elastic, str(aug_dir)),
            name="augment",
            workers=workers,
            scheduler=scheduler,
        ):
            if error:
                log.error("case %s: augmentation failed: %s", case_id, error)
                errors.append(f"{case_id}: {error}")
            bar.update()
    summary.augmented_built = len(todo) - len(errors)
    if errors:  # the manifests name every augmented shard: the index cannot be committed without them
        raise StoreError(
            f"augmentation failed for {len(errors)} case(s), index not committed (the others are kept "
            f"for the rerun): {'; '.join(errors)}"
        )


def _augment_case(case_id: str, store: str, jobs, elastic, aug_dir: str) -> dict[str, Any]:
    """One case's augmented shard (runs in a Dask worker)."""
    entries, fingerprint = jobs[case_id]
    return build_augmented_shard(store, case_id, entries, elastic, str(Path(aug_dir) / f"{case_id}.h5"), fingerprint)
