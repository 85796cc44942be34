"""``pancreas index``: split, patch grid, balanced manifests and cached augmentation.

Reads the store's catalog and label volumes (never the images, except for the
augmented patches), writes under ``STORE/index/``::

    split.json            {"seed", "train": [...], "val": [...], "skipped": {...}}
    train.csv, val.csv    patch manifests (dataset.contract.manifest)
    augmented/<case>.h5   elastically deformed foreground copies (dataset.index.augment)
    summary.json          counts, fingerprints of the store and config (written last)

Everything is validated and classified in memory before the first write, so bad
input leaves nothing partial; every file is written atomically. A rerun with the
same store and config is a no-op; a changed one rebuilds the manifests and only the
augmented shards whose inputs changed.
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

from dataset.index import balance
from dataset.contract.augmented import augmented_shard_matches
from dataset.index.augment import AUGMENT_VERSION, AugmentEntry, build_augmented_shard
from dataset.index.classify import class_counts, is_foreground
from dataset.index.config import IndexConfig
from dataset.common.configio import to_dict
from dataset.common.runner import run_cases
from dataset.common.files import exclusive_lock, fingerprint_json, remove_stale_temporaries
from dataset.index.grid import grid_starts
from dataset.contract.catalog import CatalogRecord, read_catalog
from dataset.contract.fingerprints import store_fingerprint
from dataset.contract.index import (
    IndexSummary,
    Split,
    commit_index,
    manifest_path,
    previous_summary,
    uncommit_index,
    write_split,
)
from dataset.contract.manifest import AUGMENTED_DIR, INDEX_DIR, index_fingerprint, parse_variant, write_manifest
from dataset.common.seeds import derive_seed
from dataset.index.split import split_cases, usable_cases
from dataset.contract.store import StoreError, shard_path

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when the index's content changes for the same inputs


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


def build_index(store: str | Path, config: IndexConfig | None = None, workers: int | None = None,
                scheduler: str | None = None, progress: bool = True) -> IndexSummary:
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
        for folder in (index_dir, index_dir / AUGMENTED_DIR):
            for path in remove_stale_temporaries(folder):
                log.info("removed %s left by an interrupted run", path)
        return _build(store, index_dir, catalog, config, workers, scheduler, progress, t0)


def _build(store, index_dir, catalog, config, workers, scheduler, progress, t0) -> IndexSummary:
    usable, failed = usable_cases(catalog)
    if not usable:
        raise StoreError(f"{store}: no labelled, preprocessed case in the catalog; nothing to index")
    train_ids, val_ids = split_cases(usable, config.val_fraction, config.seed, config.max_cases)
    summary = IndexSummary(store=str(store), index_dir=str(index_dir), skipped_cases=dict(failed),
                           store_fingerprint=store_fingerprint(catalog), config_fingerprint=config_fingerprint(config),
                           config=to_dict(config))
    prev = previous_summary(store)
    if (prev and prev.store_fingerprint == summary.store_fingerprint
            and prev.config_fingerprint == summary.config_fingerprint and prev.files_present(index_dir)):
        prev.unchanged, prev.augmented_built = True, 0
        prev.augmented_reused, prev.seconds = len(prev.augmented_shards), time.perf_counter() - t0
        log.info("index of %s is up to date; nothing to do", store)
        return prev

    records = catalog.cases
    # Classify everything in memory first: a bad label volume fails here, before the
    # committed index is touched.
    train_rows, val_rows, jobs, classify_s = _classify_all(store, records, train_ids, val_ids, config, summary, progress)
    summary.classify_seconds_per_case = classify_s / max(1, len(train_ids) + len(val_ids))
    # The index is committed by summary.json, written last: remove it before anything
    # changes, so a run killed half-way leaves an index the trainer refuses, never old
    # manifests whose variants point into new augmented shards.
    uncommit_index(store)
    _run_augmentation(store, index_dir, jobs, config, summary, workers, scheduler, progress)

    write_split(store, Split(seed=config.seed, val_fraction=config.val_fraction, max_cases=config.max_cases,
                             train=tuple(train_ids), val=tuple(val_ids), skipped=dict(failed)))
    write_manifest(manifest_path(store, "train"), train_rows)
    write_manifest(manifest_path(store, "val"), val_rows)
    summary.index_fingerprint = index_fingerprint(store)
    summary.seconds = time.perf_counter() - t0
    commit_index(store, summary)
    _remove_unused_shards(index_dir, summary.augmented_shards)
    return summary


def _remove_unused_shards(index_dir: Path, used: list[str]) -> None:
    """Delete augmented shards the new manifest no longer names (after it is in place)."""
    keep = {index_dir / rel for rel in used}
    for stale in sorted(set((index_dir / AUGMENTED_DIR).glob("*.h5")) - keep):
        log.info("removing augmented shard %s (no longer in the index)", stale)
        stale.unlink()


def _classify_all(store, records, train_ids, val_ids, config, summary, progress):
    """Rows of both splits plus the augmentation jobs; reads labels only."""
    train_rows: list[dict[str, Any]] = []
    val_rows: list[dict[str, Any]] = []
    jobs: dict[str, tuple[list[AugmentEntry], str]] = {}
    seconds = 0.0
    cases = [(c, "train") for c in train_ids] + [(c, "val") for c in val_ids]
    for case_id, split in tqdm(cases, desc="classify", unit="case", disable=not progress):
        label = read_label(store, case_id, records[case_id])
        t = time.perf_counter()
        if split == "val":
            rows = grid_rows(case_id, label, config.val_patch_zyx, config)
            seconds += time.perf_counter() - t
            balance.assign_seeds(rows, config.seed)
            val_rows.extend(rows)
            n_fg = sum(r["foreground"] for r in rows)
            summary.per_case[case_id] = {"split": "val", "patches": len(rows), "foreground_patches": n_fg}
            if n_fg == 0:
                summary.cases_without_foreground.append(case_id)
                log.warning("validation case %s has no foreground patch", case_id)
            continue
        rows = grid_rows(case_id, label, config.train_patch_zyx, config)
        seconds += time.perf_counter() - t
        entries, stats = balance.balance_case(case_id, rows, config)
        entries.extend(balance.centred_rows(case_id, label, config.train_patch_zyx, config))
        balance.assign_seeds(entries, config.seed)
        train_rows.extend(entries)
        if stats.foreground_patches == 0:
            summary.cases_without_foreground.append(case_id)
            log.warning("case %s has no foreground patch: %d background entries only",
                        case_id, stats.background_entries)
        if stats.background_short:
            log.warning("case %s has no background patch: %d background entries missing",
                        case_id, stats.background_short)
        summary.per_case[case_id] = {"split": "train", "patches": len(rows), **asdict(stats)}
        augmented = [r for r in entries if r["variant"]]
        if augmented:
            jobs[case_id] = _augment_job(case_id, augmented, records[case_id], config)
    _count(summary, train_rows, val_rows, len(train_ids), len(val_ids))
    return train_rows, val_rows, jobs, seconds


def _augment_job(case_id, augmented, record, config) -> tuple[list[AugmentEntry], str]:
    augmented = sorted(augmented, key=lambda r: parse_variant(r["variant"])[1])
    entries = [AugmentEntry((r["z0"], r["y0"], r["x0"]), (r["dz"], r["dy"], r["dx"]),
                            derive_seed(config.seed, "elastic", case_id, (r["z0"], r["y0"], r["x0"]), r["copy"]))
               for r in augmented]
    fingerprint = fingerprint_json([AUGMENT_VERSION, record.input_fingerprint, record.config_fingerprint,
                                    to_dict(config.elastic), [asdict(e) for e in entries]])
    return entries, fingerprint


def _count(summary: IndexSummary, train_rows, val_rows, n_train: int, n_val: int) -> None:
    summary.train_cases, summary.val_cases = n_train, n_val
    summary.train_entries = len(train_rows)
    summary.train_foreground_entries = sum(r["foreground"] for r in train_rows)
    summary.train_background_entries = summary.train_entries - summary.train_foreground_entries
    summary.train_augmented_entries = sum(bool(r["variant"]) for r in train_rows)
    summary.train_with_replacement = sum(r["with_replacement"] for r in train_rows)
    summary.train_centred_entries = sum(r["kind"] == "centred" for r in train_rows)
    summary.val_entries = len(val_rows)
    summary.val_foreground_entries = sum(r["foreground"] for r in val_rows)
    summary.val_background_entries = summary.val_entries - summary.val_foreground_entries
    grid = [r for r in train_rows if r["copy"] == 0 and r["kind"] == "grid"] + val_rows
    summary.padded_patches = sum(r["padded"] for r in grid)


def _run_augmentation(store: Path, index_dir: Path, jobs, config: IndexConfig, summary: IndexSummary,
                      workers: int | None, scheduler: str | None, progress: bool) -> None:
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
        for case_id, _result, error in run_cases(_augment_case, todo, (str(store), jobs, config.elastic, str(aug_dir)),
                                                 name="augment", workers=workers, scheduler=scheduler):
            if error:
                log.error("case %s: augmentation failed: %s", case_id, error)
                errors.append(f"{case_id}: {error}")
            bar.update()
    summary.augmented_built = len(todo) - len(errors)
    if errors:  # the manifests name every augmented shard: the index cannot be committed without them
        raise StoreError(f"augmentation failed for {len(errors)} case(s), index not committed (the others are kept "
                         f"for the rerun): {'; '.join(errors)}")


def _augment_case(case_id: str, store: str, jobs, elastic, aug_dir: str) -> dict[str, Any]:
    """One case's augmented shard (runs in a Dask worker)."""
    entries, fingerprint = jobs[case_id]
    return build_augmented_shard(store, case_id, entries, elastic, str(Path(aug_dir) / f"{case_id}.h5"), fingerprint)
