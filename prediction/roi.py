"""Where the full-quality pass looks (``roi: auto``): pure numpy, no model, no files.

A cheap first pass (the first model, unmirrored, on windows that do not overlap) gives a
foreground mask of the stored grid. Each 26-connected component of that mask becomes a box,
widened by ``roi_margin_mm`` along every axis (in voxels of that axis' spacing: the stored grid
need not be isotropic) and clipped to the volume; boxes that touch are merged. The full pass
then covers each box with windows (per axis: the whole grid's windows that reach into the box
when they are no more than a grid of the box's own, else that grid: ``axis_starts``) and every
voxel outside all boxes is background. Where the whole grid's windows are used along every
axis, a voxel inside a box gets exactly the probabilities ``roi: whole`` gives it.
Nothing found: ``None``, and the caller predicts the whole volume (the shortcut never decides
that a scan has no pancreas). See docs/how-to/predict.md#looking-only-where-the-pancreas-is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prediction.sliding import ZYX, window_starts

FOREGROUND_PROBABILITY = 0.5  # a first-pass voxel is foreground when P(not background) >= this
FIRST_PASS_MAX_WINDOWS = 2  # a first-pass window is at most this many prediction windows wide in y and in x


@dataclass(frozen=True)
class Box:
    """A half-open box of the stored grid: ``start`` inclusive, ``stop`` exclusive, (z, y, x)."""

    start: ZYX
    stop: ZYX

    @property
    def shape(self) -> ZYX:
        return (self.stop[0] - self.start[0], self.stop[1] - self.start[1], self.stop[2] - self.start[2])

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def touches(self, other: Box) -> bool:
        return all(a0 <= b1 and b0 <= a1 for a0, a1, b0, b1 in zip(self.start, self.stop, other.start, other.stop))

    def union(self, other: Box) -> Box:
        return Box(
            tuple(min(a, b) for a, b in zip(self.start, other.start)),  # type: ignore[arg-type]
            tuple(max(a, b) for a, b in zip(self.stop, other.stop)),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, list[int]]:
        return {"start_zyx": list(self.start), "stop_zyx": list(self.stop)}


def foreground_mask(probs_nzyxc: np.ndarray) -> np.ndarray:
    """(N, z, y, x) bool: voxels whose probability of not being background reaches the threshold."""
    return (1.0 - probs_nzyxc[..., 0]) >= FOREGROUND_PROBABILITY


def first_pass_window(shape_zyx: Sequence[int], window_zyx: Sequence[int], multiple: int | None) -> ZYX:
    """The first pass's window: the prediction window's depth, and in-plane the whole (padded) extent
    rounded up to ``multiple`` (2**model depth), at most ``FIRST_PASS_MAX_WINDOWS`` windows wide.

    A fully convolutional U-Net takes any size divisible by 2**depth; one wide window per slab costs
    fewer voxels than tiles of the prediction window, which overhang the body crop (a 329x424 crop
    needs 2x2 tiles of 256x256: 512x512). Measured on a 2-core AMD EPYC (2026-12-03, one-off, a busy
    machine): the default U-Net ran 64x336x432 at 1.2x the voxels per second of 64x256x256.
    ``multiple`` None: the prediction window itself (no wider windows).
    """
    if multiple is None:
        return tuple(int(w) for w in window_zyx)  # type: ignore[return-value]
    out = [int(window_zyx[0])]
    for n, w in zip(shape_zyx[1:], window_zyx[1:]):
        wide = -(-int(n) // multiple) * multiple
        out.append(max(int(w), min(wide, FIRST_PASS_MAX_WINDOWS * int(w))))
    return tuple(out)  # type: ignore[return-value]


def margin_voxels(margin_mm: float, spacing_zyx: Sequence[float]) -> ZYX:
    """The margin in whole voxels per axis (rounded up: never less than ``margin_mm``)."""
    return tuple(math.ceil(margin_mm / s - 1e-9) for s in spacing_zyx)  # type: ignore[return-value]


def component_boxes(mask_zyx: np.ndarray) -> list[Box]:
    """The bounding box of each 26-connected component of ``mask_zyx``, in label order."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask_zyx, structure=np.ones((3, 3, 3), dtype=bool))
    boxes = []
    for found in ndimage.find_objects(labelled)[:n]:
        if found is not None:
            boxes.append(Box(tuple(s.start for s in found), tuple(s.stop for s in found)))
    return boxes


def grow(box: Box, margin: Sequence[int], shape_zyx: Sequence[int]) -> Box:
    """``box`` widened by ``margin`` voxels on both sides of each axis, clipped to the volume."""
    return Box(
        tuple(max(0, a - m) for a, m in zip(box.start, margin)),  # type: ignore[arg-type]
        tuple(min(int(n), b + m) for b, m, n in zip(box.stop, margin, shape_zyx)),  # type: ignore[arg-type]
    )


def merge_touching(boxes: Sequence[Box]) -> list[Box]:
    """Merge boxes that overlap or touch until none do; sorted by start (a deterministic order)."""
    merged = list(boxes)
    changed = True
    while changed:
        changed = False
        out: list[Box] = []
        for box in merged:
            for i, kept in enumerate(out):
                if kept.touches(box):
                    out[i] = kept.union(box)
                    changed = True
                    break
            else:
                out.append(box)
        merged = out
    return sorted(merged, key=lambda b: (b.start, b.stop))


def roi_boxes(mask_zyx: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> list[Box] | None:
    """The boxes the full pass covers, or ``None`` when the mask is empty (predict everything)."""
    boxes = component_boxes(mask_zyx)
    if not boxes:
        return None
    margin = margin_voxels(margin_mm, spacing_zyx)
    return merge_touching([grow(b, margin, mask_zyx.shape) for b in boxes])


def axis_starts(lo: int, hi: int, size: int, window: int, overlap: float) -> list[int]:
    """Window starts along one axis covering [lo, hi) of an axis of ``size`` (>= window).

    The whole grid's starts that reach into [lo, hi) when they are no more than a grid of the
    range's own (the range grown, centred, to at least one window and moved inside the axis);
    otherwise that grid. The whole grid's windows predict a voxel exactly as ``roi: whole``
    does, so they win ties.
    """
    whole = window_starts(size, window, overlap)
    reaching = [s for s in whole if s < hi and s + window > lo]
    extent = max(hi - lo, window)
    first = min(max(0, lo - (extent - (hi - lo)) // 2), size - extent)
    own = [first + s for s in window_starts(extent, window, overlap)]
    return reaching if len(reaching) <= len(own) else own


def box_windows(box: Box, shape_zyx: Sequence[int], window_zyx: Sequence[int], overlap: float) -> list[ZYX]:
    """Window corners covering ``box`` (``shape_zyx`` is at least one window per axis): per axis,
    ``axis_starts``; every combination of them."""
    per_axis = [
        axis_starts(a, b, int(n), int(w), overlap) for a, b, n, w in zip(box.start, box.stop, shape_zyx, window_zyx)
    ]
    return [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]


def roi_windows(boxes: Sequence[Box], shape_zyx: Sequence[int], window_zyx: Sequence[int], overlap: float) -> list[ZYX]:
    """Every box's windows, each corner once, in box order."""
    seen: dict[ZYX, None] = {}
    for box in boxes:
        for start in box_windows(box, shape_zyx, window_zyx, overlap):
            seen.setdefault(start, None)
    return list(seen)


def inside_mask(boxes: Sequence[Box], shape_zyx: Sequence[int]) -> np.ndarray:
    """(z, y, x) bool: voxels inside at least one box."""
    mask = np.zeros(tuple(int(s) for s in shape_zyx), dtype=bool)
    for box in boxes:
        mask[box.slices()] = True
    return mask
