"""``STORE/index/augmented/<case_id>.h5``: a case's elastically deformed foreground patches.

Written by ``pancreas index`` (``dataset.index.augment`` computes the deformations), read
by ``dataset.contract.reader.PatchReader`` for manifest rows whose ``variant`` is
``augmented/<case_id>.h5:<i>``. Layout:

* ``image``, ``label``: uint8 (n_entries, dz, dy, dx), one chunk per patch, Blosc-LZ4;
  entry ``i`` is what the manifest's variant ``augmented/<case_id>.h5:i`` names.
* attributes: ``case_id``, ``fingerprint`` (of the case's inputs, the entries and the
  elastic config: a shard whose fingerprint matches is reused), ``starts_zyx`` (n, 3),
  ``seeds`` (n,), ``config`` (JSON of the elastic config), ``augment_version``.

Each shard is committed by its own atomic, durable rename (crash point ``augmented``);
the index's ``summary.json`` commits the set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dataset.common.atomic import atomic_path
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
