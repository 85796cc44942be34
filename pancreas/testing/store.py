"""Tiny synthetic stores for tests and benchmarks, written with the store contract itself.

Not a substitute for ``pancreas synth`` + ``pancreas preprocess``: it writes shards and
a catalog directly from given label volumes, so indexer tests need neither SimpleITK
nor the preprocessing stage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataset.common.fingerprints import fingerprint_json
from dataset.contract.catalog import Catalog, CatalogRecord, write_catalog
from dataset.contract.store import shard_path, write_shard


def blob_label(shape_zyx: tuple[int, int, int], centre_zyx, radii_zyx, tumour_radius: float = 0.0) -> np.ndarray:
    """An ellipsoid of pancreas (1) with an optional spherical tumour (2) at its centre."""
    zz, yy, xx = np.ogrid[tuple(slice(0, s) for s in shape_zyx)]
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre_zyx, radii_zyx))
    label = (r2 <= 1.0).astype(np.uint8)
    if tumour_radius > 0:
        d2 = sum((g - c) ** 2 for g, c in zip((zz, yy, xx), centre_zyx))
        label[d2 <= tumour_radius**2] = 2
    return label


def image_for(label: np.ndarray, seed: int) -> np.ndarray:
    """A uint8 image loosely related to the label (brighter organ), deterministic."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 120, size=label.shape, dtype=np.uint8)
    image[label > 0] += 100
    return image


def write_case(
    store: str | Path,
    case_id: str,
    label: np.ndarray,
    seed: int = 0,
    image: np.ndarray | None = None,
    attrs: dict | None = None,
) -> CatalogRecord:
    """Write one labelled shard (``attrs``: more root attributes, e.g. ``spacing``); return its catalog record."""
    image = image_for(label, seed) if image is None else image
    counts = [int((label == k).sum()) for k in range(3)]
    fp = fingerprint_json([case_id, seed, list(label.shape), counts])
    write_shard(
        shard_path(store, case_id),
        image,
        label,
        {
            "case_id": case_id,
            "input_fingerprint": fp,
            "config_fingerprint": "synthetic",
            "label_counts": np.asarray(counts, np.int64),
            **(attrs or {}),
        },
    )
    return CatalogRecord.new(
        case_id,
        "training",
        True,
        status="done",
        shape_zyx=tuple(label.shape),
        label_counts=tuple(counts),
        input_fingerprint=fp,
        config_fingerprint="synthetic",
    )


def failed_record(case_id: str, error: str = "synthetic failure") -> CatalogRecord:
    return CatalogRecord.new(
        case_id, "training", True, status="failed", error=error, input_fingerprint="x", config_fingerprint="synthetic"
    )


def write_catalog_for(store: str | Path, records: dict[str, CatalogRecord]) -> None:
    """The catalog of a synthetic store, written by the contract's own writer."""
    write_catalog(
        store,
        Catalog(
            dataset={
                "root": "synthetic",
                "name": "synthetic",
                "labels": {"0": "background", "1": "pancreas", "2": "tumour"},
            },
            config={},
            config_fingerprint="synthetic",
            cases=dict(records),
        ),
    )


def make_store(store: str | Path, labels: dict[str, np.ndarray]) -> dict[str, CatalogRecord]:
    """A store with one labelled case per entry of ``labels`` (sorted ids, seeds 0, 1, ...)."""
    records = {cid: write_case(store, cid, labels[cid], seed=i) for i, cid in enumerate(sorted(labels))}
    write_catalog_for(store, records)
    return records
