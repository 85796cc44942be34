"""Normalised Surface Distance (surface Dice at a tolerance), as the MSD challenge computed it.

DeepMind's ``surface-distance`` number with numpy and scipy only. The definition:
docs/explanation/internals.md#nsd-evaluationsurfacepy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache
from typing import cast

import numpy as np
from scipy import ndimage

# (dz, dy, dx) of the 8 voxels of a cube; a cube's code has bit i set when voxel _CORNERS[i] is inside.
_CORNERS = cast("tuple[tuple[int, int, int], ...]", tuple(itertools.product((0, 1), repeat=3)))


def _faces() -> list[list[tuple[int, int, int]]]:
    """The 6 faces of the unit cube, each as its 4 corners in cyclic order."""
    faces: list[list[tuple[int, int, int]]] = []
    for axis, side in itertools.product(range(3), (0, 1)):
        a, b = (d for d in range(3) if d != axis)
        cycle: list[tuple[int, int, int]] = []
        for u, v in ((0, 0), (0, 1), (1, 1), (1, 0)):
            corner = [0, 0, 0]
            corner[axis], corner[a], corner[b] = side, u, v
            cycle.append((corner[0], corner[1], corner[2]))
        faces.append(cycle)
    return faces


_FACES = _faces()


def _edge(p: tuple[int, ...], q: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (p, q) if p < q else (q, p)


def _face_segments(inside: set, cut_off_inside: bool) -> list[tuple]:
    """Pairs of cut cube edges joined across each face (marching squares on the 6 faces)."""
    segments = []
    for cycle in _FACES:
        flags = [c in inside for c in cycle]
        edges = [_edge(cycle[i], cycle[(i + 1) % 4]) for i in range(4)]
        cut = [e for e, f, g in zip(edges, flags, flags[1:] + flags[:1]) if f != g]
        if len(cut) == 2:
            segments.append(tuple(cut))
        elif len(cut) == 4:  # two diagonal inside corners: cut off each corner of one kind
            segments += [(edges[i - 1], edges[i]) for i in range(4) if flags[i] == cut_off_inside]
    return segments


def _polygons(code: int) -> list[np.ndarray]:
    """Closed polygons (vertices in voxel units) of one cube's surface."""
    inside = {c for i, c in enumerate(_CORNERS) if code >> i & 1}
    neighbours: dict = {}
    for a, b in _face_segments(inside, cut_off_inside=len(inside) <= 4):
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    polygons, seen = [], set()
    for start in neighbours:
        if start in seen:
            continue
        loop, current = [start], start
        seen.add(start)
        while True:
            step = [n for n in neighbours[current] if n not in seen]
            if not step:
                break
            current = step[0]
            loop.append(current)
            seen.add(current)
        polygons.append(np.array([np.add(p, q) / 2.0 for p, q in loop]))
    return polygons


def _largest_fan(polygon: np.ndarray) -> np.ndarray:
    """Area vectors (n-2, 3) of the fan triangulation with the largest area (voxel units)."""
    best, best_area = np.zeros((0, 3)), -1.0
    for start in range(len(polygon)):
        p = np.roll(polygon, -start, axis=0)
        vectors = np.cross(p[1:-1] - p[0], p[2:] - p[0]) / 2.0
        area = float(np.linalg.norm(vectors, axis=1).sum())
        if area > best_area + 1e-12:
            best, best_area = vectors, area
    return best


@lru_cache(maxsize=1)
def surfel_area_vectors() -> np.ndarray:
    """(256, 12, 3): the triangles' area vectors (voxel units) of each cube code, zero-padded."""
    table = np.zeros((256, 12, 3))
    for code in range(1, 255):
        vectors = np.concatenate([_largest_fan(p) for p in _polygons(code)])
        table[code, : len(vectors)] = vectors
    table.flags.writeable = False  # cached and shared
    return table


def surfel_area_table(spacing_zyx: Sequence[float]) -> np.ndarray:
    """Area in mm^2 of the surface element of each of the 256 cube codes."""
    sz, sy, sx = (float(s) for s in spacing_zyx)
    scale = np.array([sy * sx, sz * sx, sz * sy])
    return np.linalg.norm(surfel_area_vectors() * scale, axis=2).sum(axis=1)


def cube_codes(mask: np.ndarray) -> np.ndarray:
    """uint8 code of every cube of the mask padded by one background voxel: shape + 1 per axis."""
    padded = np.pad(mask.astype(bool, copy=False), 1)
    out_shape = tuple(n - 1 for n in padded.shape)
    codes = np.zeros(out_shape, np.uint8)
    for bit, (dz, dy, dx) in enumerate(_CORNERS):
        codes |= padded[dz : dz + out_shape[0], dy : dy + out_shape[1], dx : dx + out_shape[2]] * np.uint8(1 << bit)
    return codes


def surfel_areas(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Surface-element area (mm^2) at every cube of ``mask``; 0 where the cube is off the surface."""
    return surfel_area_table(spacing_zyx)[cube_codes(mask)]


def _reach_box(surface: np.ndarray, reach: Sequence[int]) -> list[tuple[int, int]] | None:
    """[start, stop) per axis of ``surface``'s cubes widened by ``reach``; None when it has none."""
    coords = np.nonzero(surface)
    if not coords[0].size:
        return None
    return [(max(0, int(c.min()) - r), min(n, int(c.max()) + 1 + r)) for c, r, n in zip(coords, reach, surface.shape)]


def _within_tolerance(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing_zyx: Sequence[float], tolerance_mm: float
) -> np.ndarray:
    """Cubes of ``from_surface`` within ``tolerance_mm`` of ``to_surface`` (both on one cube grid).

    The distance transform runs only where both surfaces, widened by the tolerance, overlap:
    an element outside that window is farther than the tolerance from every target element,
    and a target element outside it is farther than the tolerance from every element inside.
    """
    out = np.zeros_like(from_surface)
    reach = [int(np.floor(tolerance_mm / float(s))) + 1 for s in spacing_zyx]
    from_box, to_box = _reach_box(from_surface, reach), _reach_box(to_surface, reach)
    if from_box is None or to_box is None:
        return out
    window = tuple(slice(max(a[0], b[0]), min(a[1], b[1])) for a, b in zip(from_box, to_box))
    if any(w.start >= w.stop for w in window) or not to_surface[window].any():
        return out
    distance_mm = ndimage.distance_transform_edt(~to_surface[window], sampling=[float(s) for s in spacing_zyx])
    out[window] = from_surface[window] & (distance_mm <= tolerance_mm)
    return out


def check_spacing(spacing_zyx: Sequence[float]) -> None:
    if len(spacing_zyx) != 3 or any(not float(s) > 0 for s in spacing_zyx):
        raise ValueError(f"spacing must be 3 positive values (z, y, x), got {tuple(spacing_zyx)}")


def surface_dice(
    pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float], tolerance_mm: float
) -> float | None:
    """NSD of two boolean masks at ``tolerance_mm``: None when both are empty, 0 when one is."""
    pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, truth {truth.shape}")
    check_spacing(spacing_zyx)
    if not float(tolerance_mm) >= 0:
        raise ValueError(f"NSD tolerance must be >= 0 mm, got {tolerance_mm}")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not (has_pred or has_truth):
        return None
    if not (has_pred and has_truth):
        return 0.0
    coords = np.nonzero(pred | truth)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    area_pred, area_truth = surfel_areas(pred[box], spacing_zyx), surfel_areas(truth[box], spacing_zyx)
    on_pred, on_truth = area_pred > 0, area_truth > 0
    close = (
        area_pred[_within_tolerance(on_pred, on_truth, spacing_zyx, float(tolerance_mm))].sum()
        + area_truth[_within_tolerance(on_truth, on_pred, spacing_zyx, float(tolerance_mm))].sum()
    )
    return float(close / (area_pred.sum() + area_truth.sum()))
