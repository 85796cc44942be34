"""A small learnable synthetic store with manifests, for trainer tests and benchmarks (no TensorFlow).

See docs/explanation/internals.md#test-scaffolding-pancreastesting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from dataset.contract.index import Fold, Split, manifest_path, write_split
from dataset.contract.manifest import INDEX_DIR, write_manifest
from dataset.index.balance import make_row
from dataset.index.grid import grid_boxes, grid_starts, is_padded
from pancreas.testing.store import blob_label, write_case, write_catalog_for


def synthetic_case(shape_zyx: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image levels, uint8 label) with one pancreas ellipsoid and a tumour inside."""
    rng = np.random.default_rng(seed)
    shape = np.array(shape_zyx)
    radii = np.maximum(shape * rng.uniform(0.15, 0.25, 3), 2.0)
    centre = rng.uniform(radii + 1, shape - radii - 1)
    label = blob_label(
        cast("tuple[int, int, int]", tuple(shape_zyx)),
        tuple(centre),
        tuple(radii),
        tumour_radius=float(radii.min() * 0.5),
    )
    means = np.array([60.0, 150.0, 220.0])[label]
    image = np.clip(means + rng.normal(0, 15, label.shape), 0, 255).astype(np.uint8)
    return image, label


def _row(case_id: str, start, size, label: np.ndarray, seed: int, kind: str) -> dict[str, Any]:
    """A manifest row built by the indexer's own row builder, with exact counts."""
    sl = tuple(slice(max(s, 0), max(s + d, 0)) for s, d in zip(start, size))
    box = label[sl]
    n_p, n_t = int((box == 1).sum()), int((box == 2).sum())
    row = make_row(
        case_id,
        tuple(start),
        tuple(size),
        n_p,
        n_t,
        n_p + n_t > 0,
        is_padded(tuple(start), tuple(size), label.shape),
        kind=kind,
    )
    row["seed"] = seed
    return row


def make_synthetic_store(
    store: str | Path,
    n_cases: int = 4,
    shape_zyx: tuple[int, int, int] = (24, 48, 48),
    train_patch_zyx: tuple[int, int, int] = (16, 32, 32),
    val_patch_zyx: tuple[int, int, int] = (16, 32, 32),
    n_val_cases: int = 1,
    patches_per_case: int = 8,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write cases, catalog, ``index/split.json`` (one fold) and ``index/fold_0/{train,val}.csv``;
    return the rows.

    Training rows: half centred on a random foreground voxel, half anywhere. Validation
    rows: a grid over each validation case.
    """
    rng = np.random.default_rng(seed)
    records, train, val = {}, [], []
    for i in range(n_cases):
        case_id = f"synth_{i:03d}"
        image, label = synthetic_case(shape_zyx, seed * 1000 + i)
        records[case_id] = write_case(store, case_id, label, seed=i, image=image)
        if i >= n_cases - n_val_cases:
            val += [
                _row(case_id, s, val_patch_zyx, label, 0, "grid")
                for s in grid_boxes(grid_starts(label.shape, val_patch_zyx))
            ]
            continue
        fg = np.argwhere(label > 0)
        for k in range(patches_per_case):
            if k % 2 == 0:
                centre = fg[rng.integers(len(fg))]
                start = [int(c - d // 2) for c, d in zip(centre, train_patch_zyx)]
            else:
                start = [
                    int(rng.integers(min(0, e - d), max(e - d, 0) + 1)) for e, d in zip(shape_zyx, train_patch_zyx)
                ]
            train.append(_row(case_id, start, train_patch_zyx, label, int(rng.integers(2**31)), "grid"))
    write_catalog_for(store, records)
    ids = sorted(records)
    write_split(
        store,
        Split(
            seed=seed,
            val_fraction=n_val_cases / n_cases,
            max_cases=None,
            folds=(Fold(tuple(ids[: n_cases - n_val_cases]), tuple(ids[n_cases - n_val_cases :])),),
        ),
    )
    write_manifest(manifest_path(store, "train", 0), train)
    write_manifest(manifest_path(store, "val", 0), val)
    write_index_summary(store)
    return train, val


def write_index_summary(store: str | Path) -> None:
    """Commit the index with the contract's own ``summary.json`` writer (what ``pancreas index`` writes last)."""
    from dataset.contract.catalog import read_catalog
    from dataset.contract.fingerprints import store_fingerprint
    from dataset.contract.index import IndexSummary, commit_index
    from dataset.contract.manifest import index_fingerprint

    catalog = read_catalog(store)
    commit_index(
        store,
        IndexSummary(
            store=str(store),
            index_dir=str(Path(store) / INDEX_DIR),
            folds=1,
            cases=sum(r.has_label for r in catalog.cases.values()),
            store_fingerprint=store_fingerprint(catalog),
            index_fingerprint=index_fingerprint(store),
        ),
    )
