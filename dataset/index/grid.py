"""Patch-grid arithmetic: pure functions on integers, no arrays read.

Per axis, patches start at 0 and step by ``stride``; when the last one would stop short
of the volume's end, one more patch is placed flush with the end (so every voxel is
covered and no patch sticks out). An axis shorter than the patch gets a single patch
centred on the volume: its start is negative and the reader pads both sides.
"""

from __future__ import annotations

import itertools

Zyx = tuple[int, int, int]


def stride_for(patch: int, overlap: float) -> int:
    """Step between neighbouring patches for an overlap fraction in [0, 1)."""
    return max(1, patch - round(patch * overlap))


def axis_starts(extent: int, patch: int, stride: int) -> list[int]:
    """Start positions of the patches along one axis of ``extent`` voxels."""
    if extent <= patch:
        return [(extent - patch) // 2]
    starts = list(range(0, extent - patch + 1, stride))
    if starts[-1] + patch < extent:
        starts.append(extent - patch)
    return starts


def grid_starts(shape_zyx: Zyx, patch_zyx: Zyx, overlap: float = 0.0) -> tuple[list[int], list[int], list[int]]:
    """Per-axis start positions (z, y, x) of a volume's patch grid."""
    return tuple(axis_starts(n, p, stride_for(p, overlap)) for n, p in zip(shape_zyx, patch_zyx))  # type: ignore[return-value]


def grid_boxes(starts: tuple[list[int], list[int], list[int]]) -> list[Zyx]:
    """All patch starts (z, y, x) of a grid, z slowest (C order, matching count arrays)."""
    return list(itertools.product(*starts))


def is_padded(start_zyx: Zyx, patch_zyx: Zyx, shape_zyx: Zyx) -> bool:
    """Whether a box reaches outside the volume on some axis."""
    return any(s < 0 or s + p > n for s, p, n in zip(start_zyx, patch_zyx, shape_zyx))


def centred_start(centre_zyx: Zyx, patch_zyx: Zyx) -> Zyx:
    """Start of the box of ``patch_zyx`` whose centre voxel is ``centre_zyx``."""
    return tuple(int(c) - p // 2 for c, p in zip(centre_zyx, patch_zyx))  # type: ignore[return-value]
