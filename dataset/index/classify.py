"""Exact pancreas and tumour voxel counts of every grid patch, from the label only (separable box sums).

See docs/explanation/internals.md#patch-counts-datasetindexclassifypy.
"""

from __future__ import annotations

import numpy as np

from dataset.index.grid import Zyx


def _segments(starts: list[int], patch: int, extent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elementary segment starts and, per patch, its first and one-past-last segment index."""
    lo = np.clip(np.asarray(starts), 0, extent)
    hi = np.clip(np.asarray(starts) + patch, 0, extent)
    cuts = np.unique(np.concatenate([[0, extent], lo, hi]))  # sorted, includes 0 and extent
    return cuts[:-1], np.searchsorted(cuts, lo), np.searchsorted(cuts, hi)


def _segment_sums(array: np.ndarray, seg_starts: np.ndarray, axis: int) -> np.ndarray:
    """Sums of ``array`` over consecutive segments along ``axis`` (segments run to the end).

    A loop of slab sums: measured 40x faster than ``np.add.reduceat`` along axis 0 on
    a 250x410x410 mask (3 ms vs 135 ms), because each sum is a vectorised add of
    whole contiguous slabs. Bool masks are summed in uint8/uint16 while no segment is
    long enough to overflow, which keeps the first (full-volume) pass narrow.
    """
    ends = np.append(seg_starts[1:], array.shape[axis])
    longest = int((ends - seg_starts).max())
    if array.dtype == bool:
        array = array.view(np.uint8)
        dtype = np.uint8 if longest < 2**8 else np.uint16 if longest < 2**16 else np.int64
    else:
        dtype = np.int64
    index = [slice(None)] * array.ndim
    parts = []
    for a, b in zip(seg_starts, ends):
        index[axis] = slice(int(a), int(b))
        parts.append(array[tuple(index)].sum(axis=axis, dtype=dtype).astype(np.int64))
    return np.stack(parts, axis=axis)


def box_sums(volume: np.ndarray, starts: tuple[list[int], list[int], list[int]], patch_zyx: Zyx) -> np.ndarray:
    """Sum of a bool (or integer) volume over every grid box, shape (len(z), len(y), len(x)), int64."""
    reduced = volume
    pieces = []
    for axis, (axis_starts, patch) in enumerate(zip(starts, patch_zyx)):
        seg_starts, first, last = _segments(axis_starts, patch, volume.shape[axis])
        pieces.append((first, last))
        reduced = _segment_sums(reduced, seg_starts, axis)
    out = reduced
    for axis, (first, last) in enumerate(pieces):
        cum = np.cumsum(out, axis=axis)
        cum = np.concatenate([np.zeros_like(np.take(cum, [0], axis=axis)), cum], axis=axis)
        out = np.take(cum, last, axis=axis) - np.take(cum, first, axis=axis)
    return out


def class_counts(
    label: np.ndarray, starts: tuple[list[int], list[int], list[int]], patch_zyx: Zyx
) -> tuple[np.ndarray, np.ndarray]:
    """(n_pancreas, n_tumour) per grid box, each (len(z), len(y), len(x)) int64."""
    n_tumour = box_sums(label == 2, starts, patch_zyx)
    n_pancreas = box_sums(label == 1, starts, patch_zyx)
    return n_pancreas, n_tumour


def is_foreground(n_pancreas: np.ndarray, n_tumour: np.ndarray, min_voxels: int, require_tumour: bool) -> np.ndarray:
    """The indexer's foreground rule, vectorised."""
    fg = (n_pancreas + n_tumour) >= min_voxels
    return fg & (n_tumour > 0) if require_tumour else fg
