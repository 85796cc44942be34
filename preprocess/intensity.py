"""Intensity steps on numpy arrays: HU window, histogram equalisation, normalisation (``hu_to_levels``).

Volumes are processed in z-slabs (no full-size int64 or float64 temporary). The stored intensity's
definition, step by step: docs/explanation/internals.md#the-stored-intensity-preprocessintensitypy.
"""

from __future__ import annotations

import math

import numpy as np

from dataset.common.slabs import z_slabs

LEVELS = 255  # == dataset.contract.store.IMAGE_LEVELS (kept local: this module imports numpy only)
SLAB_VOXELS = 1 << 20  # voxels handled per slab


def integer_window(window_hu: tuple[float, float]) -> tuple[int, int]:
    """Smallest and largest integer HU value a windowed voxel can take."""
    return math.ceil(window_hu[0]), math.floor(window_hu[1])


def window_to_int16(hu: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """Clip to the window and round to whole HU (step 1)."""
    lo, hi = integer_window(window_hu)
    return np.clip(np.rint(hu), lo, hi).astype(np.int16)


def bin_of_values(values: np.ndarray, window_hu: tuple[float, float], bins: int) -> np.ndarray:
    """Histogram bin of each (integer) HU value, with ``numpy.histogram``'s equal-width bins."""
    edges = np.linspace(window_hu[0], window_hu[1], bins + 1)
    index = np.searchsorted(edges, values, side="right") - 1
    return np.clip(index, 0, bins - 1)


def equalization_lut(value_counts: np.ndarray, window_hu: tuple[float, float], bins: int) -> np.ndarray:
    """Normalised intensity x in [0, 1] (float64) for each integer HU value of the window.

    ``value_counts[i]`` is the number of voxels of value ``integer_window(window_hu)[0] + i``.
    """
    lo, hi = integer_window(window_hu)
    values = np.arange(lo, hi + 1)
    if value_counts.shape != values.shape:
        raise ValueError(f"expected {values.size} value counts, got {value_counts.shape}")
    value_bins = bin_of_values(values, window_hu, bins)
    bin_counts = np.bincount(value_bins, weights=value_counts, minlength=bins)
    total = bin_counts.sum()
    if total <= 0:
        return np.zeros(values.size)
    cdf = np.cumsum(bin_counts) / total
    cdf_min = cdf[np.argmax(bin_counts > 0)]
    if cdf_min >= 1.0:
        return np.zeros(values.size)
    return np.clip((cdf[value_bins] - cdf_min) / (1.0 - cdf_min), 0.0, 1.0)


def linear_lut(window_hu: tuple[float, float]) -> np.ndarray:
    """x = (v - lo) / (hi - lo) for each integer HU value of the window (no equalisation)."""
    lo, hi = integer_window(window_hu)
    values = np.arange(lo, hi + 1, dtype=np.float64)
    return np.clip((values - window_hu[0]) / (window_hu[1] - window_hu[0]), 0.0, 1.0)


def to_levels(x: np.ndarray) -> np.ndarray:
    """Normalised intensity in [0, 1] -> uint8 levels round(255 * x)."""
    return np.rint(np.clip(x, 0.0, 1.0) * LEVELS).astype(np.uint8)


def _value_index(hu_slab: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Index (v - lo) of the windowed integer value of each voxel of a slab."""
    v = np.rint(hu_slab, dtype=np.float32)
    np.clip(v, lo, hi, out=v)
    v -= lo
    return v.astype(np.intp)


def value_counts(hu: np.ndarray, window_hu: tuple[float, float], min_hu: float | None = None) -> np.ndarray:
    """Voxel count of each integer HU value of the window (only voxels with hu > min_hu)."""
    lo, hi = integer_window(window_hu)
    counts = np.zeros(hi - lo + 1, dtype=np.int64)
    for z in z_slabs(hu.shape, SLAB_VOXELS):
        index = _value_index(hu[z], lo, hi)
        if min_hu is not None:
            index = index[hu[z] > min_hu]
        counts += np.bincount(index.ravel(), minlength=counts.size)
    return counts


def apply_lut(hu: np.ndarray, window_hu: tuple[float, float], lut_levels: np.ndarray) -> np.ndarray:
    """uint8 levels of each voxel: ``lut_levels[v - lo]`` of its windowed integer value."""
    lo, hi = integer_window(window_hu)
    out = np.empty(hu.shape, dtype=np.uint8)
    for z in z_slabs(hu.shape, SLAB_VOXELS):
        out[z] = lut_levels[_value_index(hu[z], lo, hi)]
    return out


def hu_to_levels(
    hu: np.ndarray,
    window_hu: tuple[float, float],
    equalize: bool = True,
    bins: int = 256,
    body_threshold_hu: float | None = None,
) -> np.ndarray:
    """The stored uint8 image of a (cropped) HU volume, as defined in the module docstring.

    ``body_threshold_hu`` set: the equalisation histogram counts only voxels above it.
    """
    if equalize:
        counts = value_counts(hu, window_hu, body_threshold_hu)
        if body_threshold_hu is not None and counts.sum() == 0:
            counts = value_counts(hu, window_hu)
        x = equalization_lut(counts, window_hu, bins)
    else:
        x = linear_lut(window_hu)
    return apply_lut(hu, window_hu, to_levels(x))
