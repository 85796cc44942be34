"""Per-case measurements of a label map: gland and tumour volume, tumour count and size, HU, edge contact.

Regions: "pancreas" is labels {1, 2} (the whole gland, tumour included), "tumour" is label 2. Arrays are
(z, y, x) and spacing is (z, y, x) in mm. All values are plain Python numbers, bools or None so that a row
serialises to JSON or CSV as it is.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

PANCREAS_LABELS = (1, 2)
TUMOUR_LABEL = 2
# 26-connectivity: voxels that share a face, an edge or only a corner are one component. A tumour that
# touches itself only diagonally from one slice to the next is one lesion, as in lesion-wise evaluations
# (autoPET's false-positive / false-negative component volumes, BraTS 2023 lesion-wise scores).
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)

STATISTICS_COLUMNS = (
    "case",
    "pancreas_ml",
    "tumour_ml",
    "tumours",
    "largest_tumour_ml",
    "largest_tumour_diameter_mm",
    "pancreas_mean_hu",
    "pancreas_median_hu",
    "tumour_mean_hu",
    "tumour_median_hu",
    "touches_edge",
    "pancreas_touches_edge",
    "tumour_touches_edge",
    "pancreas_voxels",
    "tumour_voxels",
)


def check_spacing(spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
    """The spacing as three positive finite floats, or a ValueError that quotes it."""
    values = tuple(float(s) for s in spacing_zyx)
    if len(values) != 3 or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing_zyx must be three positive millimetre values, got {tuple(spacing_zyx)}")
    return values[0], values[1], values[2]


def check_volume(array: np.ndarray, name: str) -> np.ndarray:
    """The array if it is 3-D (z, y, x), else a ValueError naming it and its shape."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (z, y, x) array, got shape {array.shape}")
    return array


def voxel_ml(spacing_zyx: Sequence[float]) -> float:
    """Volume of one voxel in millilitres (mm^3 / 1000)."""
    return float(np.prod(check_spacing(spacing_zyx))) / 1000.0


def pancreas_mask(label: np.ndarray) -> np.ndarray:
    """The whole gland: labels 1 and 2 (two comparisons: several times faster than ``np.isin`` on a scan)."""
    label = np.asarray(label)
    return (label == PANCREAS_LABELS[0]) | (label == PANCREAS_LABELS[1])


def tumour_mask(label: np.ndarray) -> np.ndarray:
    """The tumour: label 2."""
    return np.asarray(label) == TUMOUR_LABEL


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel, grown by ``margin`` and clipped to the array; None if empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def components(mask: np.ndarray, min_voxels: int = 1) -> tuple[np.ndarray, int]:
    """26-connected components of ``mask``, numbered 1..n from the largest down (ties: scan order).

    Components smaller than ``min_voxels`` are dropped (set to 0); the default 1 drops nothing.
    Returns the int32 component map (0 = background) and n.
    """
    if min_voxels < 1:
        raise ValueError(f"min_voxels must be at least 1, got {min_voxels}")
    mask = np.asarray(mask, dtype=bool)
    result = np.zeros(mask.shape, dtype=np.int32)
    box = bounding_box(mask)
    if box is None:
        return result, 0
    numbered, count = ndimage.label(mask[box], structure=CONNECTIVITY)  # labelling only the box is faster
    sizes = np.bincount(numbered.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")  # old ids - 1, largest first
    kept = order[sizes[order] >= min_voxels]
    new_id = np.zeros(count + 1, dtype=np.int32)
    new_id[kept + 1] = np.arange(1, kept.size + 1, dtype=np.int32)
    result[box] = new_id[numbered]
    return result, int(kept.size)


def tumour_components(label: np.ndarray, min_voxels: int = 1) -> tuple[np.ndarray, int]:
    """Tumours of a label map: 26-connected components of label 2, largest first (see ``components``)."""
    return components(tumour_mask(label), min_voxels)


def _slice_extreme_points(plane: np.ndarray) -> np.ndarray:
    """(row, col) of the first and last True pixel of every row: a superset of the convex hull's vertices."""
    rows = np.flatnonzero(plane.any(axis=1))
    first = np.argmax(plane[rows], axis=1)
    last = plane.shape[1] - 1 - np.argmax(plane[rows, ::-1], axis=1)
    return np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)])


def longest_axial_diameter_mm(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """The largest in-plane distance (mm) between two voxel centres of ``mask`` in one axial slice.

    A RECIST-like long axis, measured between voxel centres: a single voxel measures 0 mm and a run of n
    voxels along x measures (n - 1) * spacing_x, so the result is at most about one pixel (0.7-0.9 mm on
    abdominal CT) shorter than an edge-to-edge caliper. The farthest pair lies on the convex hull, whose
    vertices are among the leftmost and rightmost pixels of each row; only those are compared. 0.0 if empty.
    """
    mask = check_volume(mask, "mask").astype(bool, copy=False)
    _, sy, sx = check_spacing(spacing_zyx)
    box = bounding_box(mask)
    if box is None:
        return 0.0
    crop = mask[box]
    best = 0.0
    for plane in crop:
        if not plane.any():
            continue
        points = _slice_extreme_points(plane) * np.array([sy, sx])
        gaps = points[:, None, :] - points[None, :, :]
        best = max(best, float(np.sqrt((gaps**2).sum(-1).max())))
    return best


def touches_edge(mask: np.ndarray) -> bool:
    """True when the mask reaches any face of its array: its volume is then a lower bound."""
    return any(bool(np.take(mask, 0, axis).any() or np.take(mask, -1, axis).any()) for axis in range(mask.ndim))


def centre_voxel(mask: np.ndarray) -> tuple[int, int, int]:
    """The mask's centre of mass as a voxel index, moved to the nearest mask voxel when it falls outside.

    Halves round up (not to even, which would depend on where a crop starts). A curved gland or a
    crescent tumour can have its centre of mass outside itself; a picture through that point would miss
    the structure, so the nearest voxel of the mask (in index units) is taken.
    """
    box = bounding_box(mask)
    if box is None:
        raise ValueError("centre_voxel of an empty mask")
    crop = mask[box]
    offset = np.array([s.start for s in box])
    centre = np.floor(np.array(ndimage.center_of_mass(crop)) + 0.5).astype(int)  # half up: same under any crop
    if not crop[tuple(centre)]:
        points = np.argwhere(crop)
        centre = points[np.argmin(((points - centre) ** 2).sum(1))]
    z, y, x = (int(v) for v in centre + offset)
    return z, y, x


def _hu_summary(hu: np.ndarray | None, mask: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and median HU over the mask, NaN voxels ignored; (None, None) without HU or voxels."""
    if hu is None:
        return None, None
    values = hu[mask]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    return float(values.mean(dtype=np.float64)), float(np.median(values))


def case_statistics(
    label: np.ndarray, spacing_zyx: Sequence[float], hu: np.ndarray | None = None, min_tumour_voxels: int = 1
) -> dict[str, Any]:
    """Volumes (ml), tumour count and size, HU summaries and edge contact of one label map.

    ``tumour_ml`` counts every label-2 voxel; ``tumours`` and ``largest_tumour_*`` count only tumours of at
    least ``min_tumour_voxels`` voxels (26-connected; ``largest`` is by volume, its diameter is
    ``longest_axial_diameter_mm``; None without tumours). HU values are None without ``hu`` or voxels.
    A region touching the array's faces keeps its volume, flagged by ``touches_edge`` as a lower bound.
    """
    label = check_volume(label, "label")
    spacing = check_spacing(spacing_zyx)
    if hu is not None:
        hu = np.asarray(hu)
        if hu.shape != label.shape:
            raise ValueError(f"hu has shape {hu.shape} but label has shape {label.shape}")
    gland, tumour = pancreas_mask(label), tumour_mask(label)
    ml = voxel_ml(spacing)
    numbered, count = tumour_components(label, min_tumour_voxels)
    largest_ml = largest_diameter = None
    if count:
        largest = numbered == 1
        largest_ml = int(largest.sum()) * ml
        largest_diameter = longest_axial_diameter_mm(largest, spacing)
    pancreas_mean, pancreas_median = _hu_summary(hu, gland)
    tumour_mean, tumour_median = _hu_summary(hu, tumour)
    gland_edge, tumour_edge = touches_edge(gland), touches_edge(tumour)
    return {
        "pancreas_ml": int(gland.sum()) * ml,
        "tumour_ml": int(tumour.sum()) * ml,
        "tumours": count,
        "largest_tumour_ml": largest_ml,
        "largest_tumour_diameter_mm": largest_diameter,
        "pancreas_mean_hu": pancreas_mean,
        "pancreas_median_hu": pancreas_median,
        "tumour_mean_hu": tumour_mean,
        "tumour_median_hu": tumour_median,
        "touches_edge": gland_edge or tumour_edge,
        "pancreas_touches_edge": gland_edge,
        "tumour_touches_edge": tumour_edge,
        "pancreas_voxels": int(gland.sum()),
        "tumour_voxels": int(tumour.sum()),
    }


def _csv_cell(value: Any) -> Any:
    """None as an empty cell, bools as true/false, everything else as Python writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def statistics_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """A CSV table of statistics rows (each with a ``case`` key) in ``STATISTICS_COLUMNS`` order.

    Keys outside the columns are left out; a missing value is an empty cell, as is None.
    """
    rows = list(rows)
    for number, row in enumerate(rows):
        if "case" not in row:
            raise ValueError(f"statistics row {number} has no 'case' key: {sorted(row)}")
    return table_csv(rows, STATISTICS_COLUMNS)


def table_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV text, ``columns`` in order: None an empty cell, bools true/false."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_cell(row.get(column)) for column in columns] for row in rows)
    return out.getvalue()
