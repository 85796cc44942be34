"""Slabs along the first axis: how every voxel-bounded loop walks a large volume."""

from __future__ import annotations

import numpy as np


def z_slabs(shape: tuple[int, ...], voxels: int) -> list[slice]:
    """Slices along the first axis covering ``shape`` with at most ``voxels`` each (one slice at least)."""
    per_slice = max(1, int(np.prod(shape[1:])))
    step = max(1, voxels // per_slice)
    return [slice(z, min(z + step, shape[0])) for z in range(0, shape[0], step)]
