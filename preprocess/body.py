"""The patient's body box: threshold + largest connected component, never the label.

Found on a 2x-subsampled copy (every second voxel along each long axis): labelling
5 M instead of 42 M voxels is about 8x faster, and the box is widened by the subsampling
step so nothing of the body is lost; the crop margin (mm) is added on top.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

MIN_AXIS_FOR_STRIDE = 16  # axes shorter than this are not subsampled


def body_box(hu: np.ndarray, threshold_hu: float) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(start_zyx, stop_zyx) of the largest component of ``hu > threshold_hu``; None if empty."""
    strides = tuple(2 if n >= MIN_AXIS_FOR_STRIDE else 1 for n in hu.shape)
    small = hu[tuple(slice(None, None, s) for s in strides)] > threshold_hu
    labels, count = ndimage.label(small)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    box = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    start = tuple(max(0, b.start * s - (s - 1)) for b, s in zip(box, strides))
    stop = tuple(min(n, b.stop * s) for b, s, n in zip(box, strides, hu.shape))
    return start, stop


def expand_box(
    start: tuple[int, ...],
    stop: tuple[int, ...],
    margin_mm: float,
    spacing_zyx: tuple[float, ...],
    shape: tuple[int, ...],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Widen a box by ``margin_mm`` on every side (whole voxels, rounded up), inside ``shape``."""
    margin = [math.ceil(margin_mm / s - 1e-9) for s in spacing_zyx]
    new_start = tuple(max(0, a - m) for a, m in zip(start, margin))
    new_stop = tuple(min(n, b + m) for b, m, n in zip(stop, margin, shape))
    return new_start, new_stop
