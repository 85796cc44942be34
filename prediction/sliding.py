"""Sliding-window arithmetic and stitching (nnU-Net's Gaussian weighting): pure numpy, no model, no files.

See docs/explanation/internals.md#the-sliding-window-predictionslidingpy-predictionvolumepy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import cast

import numpy as np

ZYX = tuple[int, int, int]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """First voxel of each window along one axis (size >= window).

    Steps of at most ``window * (1 - overlap)``, spread evenly so the first window starts at 0
    and the last ends exactly at ``size``.
    """
    if window < 1 or size < window:
        raise ValueError(f"window {window} must be in [1, size {size}]")
    if size == window:
        return [0]
    target_step = max(1.0, window * (1.0 - overlap))
    n_steps = math.ceil((size - window) / target_step) + 1
    step = (size - window) / (n_steps - 1)
    return [round(step * i) for i in range(n_steps)]


def window_grid(shape_zyx: Sequence[int], window_zyx: Sequence[int], overlap: float) -> list[ZYX]:
    """All window start corners (z, y, x) over a volume at least one window large."""
    per_axis = [window_starts(s, w, overlap) for s, w in zip(shape_zyx, window_zyx)]
    return [cast(ZYX, tuple(int(v) for v in c)) for c in itertools.product(*per_axis)]


def gaussian_weights(window_zyx: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian importance map, max 1, strictly positive everywhere.

    sigma = ``sigma_scale`` * window per axis. The floor at the smallest positive value
    (as nnU-Net does) keeps corner voxels of a lone window from a 0/0 division.
    """
    weights = np.ones(tuple(int(w) for w in window_zyx), dtype=np.float64)
    for axis, n in enumerate(window_zyx):
        sigma = max(sigma_scale * n, 1e-6)
        coords = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        profile = np.exp(-0.5 * (coords / sigma) ** 2)
        shape = [1, 1, 1]
        shape[axis] = n
        weights = weights * profile.reshape(shape)
    weights /= weights.max()
    positive = weights[weights > 0]
    floor = positive.min() if positive.size else 1.0
    return np.maximum(weights, floor).astype(np.float32)


def pad_to_window(volume_zyx: np.ndarray, window_zyx: Sequence[int], value: float = 0) -> tuple[np.ndarray, ZYX]:
    """Pad at the end of each axis so every axis is at least one window long.

    Returns the padded array and the original shape (to crop back). Padding only at the end
    keeps window coordinates equal in the padded and unpadded volume.
    """
    shape = volume_zyx.shape[-3:]
    pads = [max(0, int(w) - s) for s, w in zip(shape, window_zyx)]
    if not any(pads):
        return volume_zyx, tuple(shape)
    widths = [(0, 0)] * (volume_zyx.ndim - 3) + [(0, p) for p in pads]
    return np.pad(volume_zyx, widths, mode="constant", constant_values=value), tuple(shape)


def batches(items: Sequence[ZYX], batch_size: int) -> Iterator[list[ZYX]]:
    for i in range(0, len(items), batch_size):
        yield list(items[i : i + batch_size])


def extract_windows(volume_zyx: np.ndarray, starts: Sequence[ZYX], window_zyx: Sequence[int]) -> np.ndarray:
    """Stack the windows at ``starts`` into (N, z, y, x)."""
    wz, wy, wx = (int(w) for w in window_zyx)
    return np.stack([volume_zyx[z : z + wz, y : y + wy, x : x + wx] for z, y, x in starts])


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes (identity first): nnU-Net's test-time mirroring."""
    axes = tuple(axes)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class Stitcher:
    """Accumulates Gaussian-weighted window probabilities into one (C, z, y, x) volume."""

    def __init__(self, n_classes: int, shape_zyx: Sequence[int], window_zyx: Sequence[int], sigma_scale: float):
        self.window_zyx = tuple(int(w) for w in window_zyx)
        self.weights = gaussian_weights(self.window_zyx, sigma_scale)
        self.sum = np.zeros((n_classes, *shape_zyx), dtype=np.float32)
        self.norm = np.zeros(tuple(shape_zyx), dtype=np.float32)

    def add(self, probs_czyx: np.ndarray, start: ZYX) -> None:
        """Add one window's class probabilities (C, z, y, x) at ``start``."""
        z, y, x = start
        wz, wy, wx = self.window_zyx
        region = (slice(z, z + wz), slice(y, y + wy), slice(x, x + wx))
        self.sum[(slice(None), *region)] += probs_czyx * self.weights
        self.norm[region] += self.weights

    def result(self, uncovered_ok: bool = False) -> np.ndarray:
        """Weighted mean probabilities; reuses the sum buffer (the stitcher is spent after).

        A voxel no window covered is an error, unless ``uncovered_ok`` (``roi: auto``, whose
        caller overwrites everything outside its boxes): such voxels are then 0 in every class.
        """
        if not uncovered_ok and not np.all(self.norm > 0):
            raise ValueError("some voxels were covered by no window")
        if uncovered_ok:
            np.maximum(self.norm, np.float32(1.0), out=self.norm, where=self.norm <= 0)
        self.sum /= self.norm
        return self.sum
