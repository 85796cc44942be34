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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from dataset.index import balance
from dataset.index.augment import AUGMENT_VERSION, AugmentEntry, build_augmented_shard, shard_fingerprint_matches
from dataset.index.classify import class_counts, is_foreground
from dataset.index.config import IndexConfig
from dataset.common.configio import to_dict
from dataset.common.files import fingerprint_json, remove_stale_temporaries, write_json_atomic
from dataset.index.grid import grid_starts
from dataset.contract.manifest import AUGMENTED_DIR, INDEX_DIR, index_fingerprint, parse_variant, write_manifest
from dataset.common.seeds import derive_seed
from dataset.index.split import split_cases, usable_cases
from dataset.contract.store import StoreError, read_catalog, shard_path

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when the index's content changes for the same inputs
SUMMARY_NAME = "summary.json"


@dataclass
class IndexSummary:
    """What ``build_index`` did; also the content of ``summary.json``."""

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


def store_fingerprint(catalog: dict[str, Any]) -> str:
    """Fingerprint of what the index depends on in the store: ids, status, inputs, config."""
    cases = catalog.get("cases") or {}
    parts = [(cid, r.get("status"), bool(r.get("has_label")), r.get("input_fingerprint"),
              r.get("config_fingerprint")) for cid, r in sorted(cases.items())]
    return fingerprint_json([catalog.get("config_fingerprint"), parts])


def config_fingerprint(config: IndexConfig) -> str:
    return fingerprint_json([INDEX_VERSION, AUGMENT_VERSION, to_dict(config)])


def read_label(store: Path, case_id: str, record: dict[str, Any]) -> np.ndarray:
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
    expected = record.get("shape_zyx")
    if expected is not None and list(label.shape) != list(expected):
        raise StoreError(f"case {case_id}: shard {path} has shape {label.shape} but the catalog says {expected}")
    return label


def grid_rows(case_id: str, label: np.ndarray, patch_zyx, config: IndexConfig) -> list[dict[str, Any]]:
    """One classified row per grid patch of a case."""
    starts = grid_starts(label.shape, patch_zyx, config.overlap)
    n_p, n_t = class_counts(label, starts, patch_zyx)
    fg = is_foreground(n_p, n_t, config.min_foreground_voxels, config.require_tumour)
    return balance.patch_rows(case_id, label.shape, starts, patch_zyx, n_p, n_t, fg)


def _previous_summary(index_dir: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((index_dir / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_current(prev: dict[str, Any] | None, store_fp: str, config_fp: str, index_dir: Path) -> bool:
    if not prev or prev.get("store_fingerprint") != store_fp or prev.get("config_fingerprint") != config_fp:
        return False
    needed = ["split.json", "train.csv", "val.csv"] + list(prev.get("augmented_shards", []))
    return all((index_dir / name).is_file() for name in needed)


def build_index(store: str | Path, config: IndexConfig | None = None, workers: int | None = None,
                scheduler: str | None = None, progress: bool = True) -> IndexSummary:
    """Build (or confirm) the patch index of ``store``.

    ``workers``: Dask worker processes for the augmentation (default all cores); 0
    computes in this process without Dask. ``scheduler`` connects to a running cluster.
    """
    t0 = time.perf_counter()
    store = Path(store)
    config = config or IndexConfig()
    catalog = read_catalog(store)
    index_dir = store / INDEX_DIR
    for folder in (index_dir, index_dir / AUGMENTED_DIR):
        for path in remove_stale_temporaries(folder):
            log.info("removed %s left by an interrupted run", path)
    usable, failed = usable_cases(catalog)
    if not usable:
        raise StoreError(f"{store}: no labelled, preprocessed case in the catalog; nothing to index")
    train_ids, val_ids = split_cases(usable, config.val_fraction, config.seed, config.max_cases)
    summary = IndexSummary(store=str(store), index_dir=str(index_dir), skipped_cases=dict(failed),
                           store_fingerprint=store_fingerprint(catalog), config_fingerprint=config_fingerprint(config),
                           config=to_dict(config))
    prev = _previous_summary(index_dir)
    if _is_current(prev, summary.store_fingerprint, summary.config_fingerprint, index_dir):
        done = IndexSummary(**{k: v for k, v in prev.items() if k in IndexSummary.__dataclass_fields__})
        done.unchanged, done.augmented_built = True, 0
        done.augmented_reused, done.seconds = len(done.augmented_shards), time.perf_counter() - t0
        log.info("index of %s is up to date; nothing to do", store)
        return done

    records = catalog["cases"]
    # The index is committed by summary.json, written last: remove it before anything
    # changes, so a run killed half-way leaves an index the trainer refuses, never old
    # manifests whose variants point into new augmented shards.
    (index_dir / SUMMARY_NAME).unlink(missing_ok=True)
    train_rows, val_rows, jobs, classify_s = _classify_all(store, records, train_ids, val_ids, config, summary, progress)
    summary.classify_seconds_per_case = classify_s / max(1, len(train_ids) + len(val_ids))
    _run_augmentation(store, index_dir, jobs, config, summary, workers, scheduler, progress)

    write_json_atomic(index_dir / "split.json", {"seed": config.seed, "val_fraction": config.val_fraction,
                                                 "max_cases": config.max_cases, "train": train_ids,
                                                 "val": val_ids, "skipped": dict(failed)})
    write_manifest(index_dir / "train.csv", train_rows)
    write_manifest(index_dir / "val.csv", val_rows)
    summary.index_fingerprint = index_fingerprint(store)
    summary.seconds = time.perf_counter() - t0
    write_json_atomic(index_dir / SUMMARY_NAME, summary.to_dict())
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
    fingerprint = fingerprint_json([AUGMENT_VERSION, record.get("input_fingerprint"), record.get("config_fingerprint"),
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
    todo = [cid for cid in sorted(jobs) if not shard_fingerprint_matches(wanted[cid], jobs[cid][1])]
    summary.augmented_reused = len(jobs) - len(todo)
    if not todo:
        return
    args = [(str(store), cid, jobs[cid][0], config.elastic, str(wanted[cid]), jobs[cid][1]) for cid in todo]
    bar = tqdm(total=len(todo), desc="augment", unit="case", disable=not progress)
    try:
        if workers == 0 and not scheduler:
            for a in args:
                build_augmented_shard(*a)
                bar.update()
        else:
            _augment_with_dask(args, workers, scheduler, bar)
    finally:
        bar.close()
    summary.augmented_built = len(todo)


def _augment_with_dask(args, workers, scheduler, bar) -> None:
    from distributed import as_completed

    from dataset.common.runner import dask_client

    errors = []
    with dask_client(workers=workers, scheduler=scheduler) as client:
        futures = [client.submit(build_augmented_shard, *a, pure=False) for a in args]
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - finish the other cases, then report
                errors.append(err)
            bar.update()
    if errors:
        raise errors[0]
