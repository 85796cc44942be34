"""Elastic deformation of foreground patches, computed once and cached per case.

``make_params`` draws, ``apply`` is deterministic given the draw; ``build_augmented_shard`` is one
Dask task (it opens the shard itself). See docs/explanation/internals.md#the-elastic-cache-datasetindexaugmentpy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import h5py
import numpy as np

from dataset.common.imports import import_elasticdeform
from dataset.contract.augmented import write_augmented_shard
from dataset.contract.reader import read_box
from dataset.contract.store import IMAGE_LEVELS, StoreError, shard_path
from dataset.index.config import ElasticConfig
from dataset.index.grid import Zyx

AUGMENT_VERSION = 1  # bump when the deformation code changes its output

elasticdeform = import_elasticdeform()  # one line with the fix if its wheel was built against NumPy 1


@dataclass(frozen=True)
class ElasticParams:
    """Displacements in voxels, shape (3, points, points, points), axes (z, y, x)."""

    displacement: np.ndarray


@dataclass(frozen=True)
class AugmentEntry:
    """One augmented patch to compute: where it is and its seed."""

    start_zyx: Zyx
    size_zyx: Zyx
    seed: int


def make_params(rng: np.random.Generator, config: ElasticConfig) -> ElasticParams:
    points = config.control_points
    return ElasticParams(rng.normal(0.0, config.sigma_voxels, size=(3, points, points, points)))


def apply(
    image_levels: np.ndarray, label: np.ndarray, params: ElasticParams, config: ElasticConfig, margin: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deform image and label together; crop ``margin`` voxels per side; back to uint8 levels."""
    crop = [slice(margin, n - margin) for n in image_levels.shape] if margin else None
    image, deformed_label = elasticdeform.deform_grid(
        [image_levels.astype(np.float32), label],
        params.displacement,
        order=[config.image_order, 0],
        mode=config.mode,
        cval=0.0,
        crop=crop,
        prefilter=config.image_order > 1,
    )
    image = np.clip(np.rint(image), 0, IMAGE_LEVELS).astype(np.uint8)
    return image, deformed_label.astype(np.uint8)


def augment_patch(
    image_ds: h5py.Dataset, label_ds: h5py.Dataset, entry: AugmentEntry, config: ElasticConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Read the entry's region (plus margin), deform it with its own seed."""
    m = config.margin_voxels
    start = tuple(s - m for s in entry.start_zyx)
    size = tuple(n + 2 * m for n in entry.size_zyx)
    params = make_params(np.random.default_rng(entry.seed), config)
    return apply(read_box(image_ds, start, size), read_box(label_ds, start, size), params, config, margin=m)


def build_augmented_shard(
    store: str, case_id: str, entries: Sequence[AugmentEntry], config: ElasticConfig, out_path: str, fingerprint: str
) -> dict[str, Any]:
    """Compute and write one case's augmented shard (runs inside a worker process)."""
    source = shard_path(store, case_id)
    try:
        with h5py.File(source, "r") as f:
            patches = [augment_patch(f["image"], f["label"], e, config) for e in entries]
    except (OSError, KeyError) as err:
        raise StoreError(f"{source}: cannot read case {case_id} for augmentation ({err})") from None
    size = entries[0].size_zyx if entries else (1, 1, 1)
    images = np.stack([p[0] for p in patches]) if patches else np.zeros((0, *size), np.uint8)
    labels = np.stack([p[1] for p in patches]) if patches else np.zeros((0, *size), np.uint8)
    write_augmented_shard(
        out_path,
        images,
        labels,
        {
            "case_id": case_id,
            "fingerprint": fingerprint,
            "starts_zyx": np.asarray([e.start_zyx for e in entries], np.int64).reshape(-1, 3),
            "seeds": np.asarray([e.seed for e in entries], np.int64),
            "config": json.dumps(asdict(config)),
            "augment_version": AUGMENT_VERSION,
        },
    )
    return {"case_id": case_id, "entries": len(entries)}
