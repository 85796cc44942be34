"""``STORE/index/augmented/<case_id>.h5``: a case's elastically deformed foreground patches.

Written by ``pancreas index`` (``dataset.index.augment`` computes the deformations), read by
``dataset.contract.reader.PatchReader`` for manifest rows whose ``variant`` names an entry.
Each shard is committed by its own atomic rename (crash point ``augmented``); the index's
``summary.json`` commits the set. Layout and attributes: docs/reference/contract.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dataset.common.atomic import atomic_path
from dataset.common.verify import verify_hdf5
from dataset.contract.store import compression, create_h5


def write_augmented_shard(path: str | Path, images: np.ndarray, labels: np.ndarray, attrs: dict[str, Any]) -> None:
    """Write ``images``/``labels`` (n, dz, dy, dx) uint8 and ``attrs``, atomically and durably."""
    chunks = (1, *images.shape[1:]) if len(images) else None
    with atomic_path(path, point="augmented") as tmp:
        with create_h5(tmp) as f:
            f.create_dataset("image", data=images, chunks=chunks, **compression())
            f.create_dataset("label", data=labels, chunks=chunks, **compression())
            for key, value in attrs.items():
                f.attrs[key] = value
        verify_hdf5(tmp, path, ["image", "label"])


def augmented_shard_matches(path: str | Path, fingerprint: str) -> bool:
    """Whether an existing augmented shard was built from the same inputs (then it is reused)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("fingerprint") == fingerprint and "image" in f and "label" in f
    except OSError:
        return False


__all__ = ["augmented_shard_matches", "write_augmented_shard"]
