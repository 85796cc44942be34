"""The preprocessed store: one HDF5 shard per case (``STORE/cases/<case_id>.h5``) plus the catalog.

A shard holds ``image`` (uint8 levels, level v = normalised intensity v / 255) and, for
labelled cases, ``label`` (0 background, 1 pancreas, 2 tumour), chunked ``CHUNK_ZYX`` and
Blosc-LZ4 compressed (readers must ``import hdf5plugin``), with the stored grid and the
crop box as attributes, so a stored label maps back onto its scan. Every attribute:
docs/reference/contract.md; the catalog is ``dataset.contract.catalog``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from dataset.common.atomic import atomic_path
from dataset.common.records import ContractError
from dataset.common.verify import verify_hdf5

SCHEMA_VERSION = 1
CHUNK_ZYX = (32, 32, 32)
LABEL_NAMES = {0: "background", 1: "pancreas", 2: "tumour"}
CASES_DIR = "cases"
IMAGE_LEVELS = 255  # uint8 level v <-> intensity v / IMAGE_LEVELS


class StoreError(ContractError, RuntimeError):
    """A store, catalog or shard that cannot be used; the message names it."""


def shard_path(store: str | Path, case_id: str) -> Path:
    return Path(store) / CASES_DIR / f"{case_id}.h5"


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, min(c, s)) for c, s in zip(CHUNK_ZYX, shape))


def compression() -> dict[str, Any]:
    """h5py create_dataset keywords of the one codec every shard uses (Blosc-LZ4; uint8 needs no shuffle)."""
    return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.NOSHUFFLE))


def create_h5(path: str | Path) -> h5py.File:
    """Open a new HDF5 file for writing so that equal contents give equal bytes.

    With HDF5's chunk cache on, compressed chunks wait in memory and are given
    file space when the cache is flushed, which follows the closing of dataset
    handles, which h5py ties to Python object lifetimes. In a Dask worker that
    timing varied: in 5 of 20 trial builds an augmented shard came out with the
    label's chunks before the image's (same data, other bytes). With no cache
    each chunk gets its space in the write call that makes it, in order. Shards
    are written once and never re-read while open, so the cache bought nothing.
    """
    return h5py.File(path, "w", rdcc_nbytes=0)


def write_shard(path: str | Path, image: np.ndarray, label: np.ndarray | None, attrs: dict[str, Any]) -> None:
    """Write one case shard atomically (temporary name, then rename)."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise StoreError(f"{path}: image must be 3D uint8, got {image.ndim}D {image.dtype}")
    if label is not None and (label.shape != image.shape or label.dtype != np.uint8):
        raise StoreError(f"{path}: label must be uint8 of shape {image.shape}, got {label.dtype} {label.shape}")
    with atomic_path(path, point="shard") as tmp:
        with create_h5(tmp) as f:
            f.create_dataset("image", data=image, chunks=_chunks(image.shape), **compression())
            if label is not None:
                f.create_dataset("label", data=label, chunks=_chunks(label.shape), **compression())
            f.attrs["schema_version"] = SCHEMA_VERSION
            for key, value in attrs.items():
                f.attrs[key] = value
        verify_hdf5(tmp, path, ["image"] if label is None else ["image", "label"])


def read_shard_attrs(path: str | Path) -> dict[str, Any]:
    """All root attributes of a shard as Python/numpy values."""
    try:
        with h5py.File(path, "r") as f:
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as err:
        raise StoreError(f"{path}: cannot read shard ({err})") from None


def read_shard(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Whole image (uint8 levels), label (or None) and attributes of a shard."""
    try:
        with h5py.File(path, "r") as f:
            image = f["image"][...]
            label = f["label"][...] if "label" in f else None
            attrs = dict(f.attrs)
    except (OSError, KeyError) as err:
        raise StoreError(f"{path}: cannot read shard ({err})") from None
    return image, label, attrs


def levels_to_intensity(levels: np.ndarray) -> np.ndarray:
    """uint8 levels -> float32 normalised intensity in [0, 1]."""
    return levels.astype(np.float32) * np.float32(1.0 / IMAGE_LEVELS)
