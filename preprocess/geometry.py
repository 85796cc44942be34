"""Orientation, resampling and the way back to the original scan's grid.

Grids here are SimpleITK's (x, y, z); callers get numpy (z, y, x) arrays. The resampled grid aligns
voxel *edges*, not centres: see docs/explanation/internals.md#grids-and-resampling-preprocessgeometrypy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import SimpleITK as sitk

IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
CANONICAL_ORIENTATION = "LPS"  # sitk.DICOMOrient code of the identity direction
INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
}


@dataclass(frozen=True)
class Grid:
    """A voxel grid with the identity direction, in SimpleITK's (x, y, z) order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]


def set_itk_threads(threads: int) -> None:
    """Threads SimpleITK filters use in this process (1 per worker when several workers run)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Permute/flip axes so the direction is (as close as possible to) the identity; no interpolation.

    The pipeline does not call it: ``resample`` onto the identity grid gives the same voxels
    without this extra full-size copy (a test checks the two agree).
    """
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) corners of the box around the scan's outer voxel edges, (x, y, z) mm."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([-0.5 if bit == 0 else n - 0.5 for bit, n in zip(c, size)])
        for c in np.ndindex(2, 2, 2)
    ]
    points = np.array(corners, dtype=np.float64)
    return points.min(axis=0), points.max(axis=0)


def edge_aligned_grid(image: sitk.Image, spacing: tuple[float, float, float]) -> Grid:
    """Identity-direction grid of ``spacing`` covering the scan edge to edge.

    For an identity-direction input this is exactly: origin = old origin - old spacing/2 +
    new spacing/2, size = max(1, round(old size * old spacing / new spacing)). An oblique
    scan gets the axis-aligned box around its edges.
    """
    low, high = physical_bounds(image)
    new_spacing = np.asarray(spacing, dtype=np.float64)
    size = np.maximum(1, np.floor((high - low) / new_spacing + 0.5)).astype(int)  # half rounds up
    origin = low + new_spacing / 2
    return Grid(
        cast("tuple[int, int, int]", tuple(int(s) for s in size)),
        cast("tuple[float, float, float]", tuple(map(float, new_spacing))),
        cast("tuple[float, float, float]", tuple(map(float, origin))),
    )


def is_axis_aligned(direction: tuple[float, ...], tol: float = 1e-6) -> bool:
    """Whether a direction matrix only permutes and flips axes (no tilt)."""
    m = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    return bool(np.all((m < tol) | (np.abs(m - 1.0) < tol)) and np.all(m.sum(axis=0) > 0.5))


def resample(
    image: sitk.Image,
    grid: Grid,
    interpolation: str,
    default_value: float = 0.0,
    direction: tuple[float, ...] = IDENTITY_DIRECTION,
) -> sitk.Image:
    """``image`` on ``grid`` (same pixel type).

    The edge-aligned grid puts its outermost voxel centres within half an old voxel of
    the scan's edge, where ITK may count a point as outside its buffer of voxel centres;
    such points must take the edge voxel's value, not ``default_value``. For an
    axis-aligned scan (almost every CT) the grid lies inside the scan's extent, so
    nearest-neighbour extrapolation does exactly that and nothing more. A tilted (oblique)
    scan's extent does not fill the axis-aligned box: there, extrapolation would smear
    the edge voxels over the whole box, so the scan is padded by one replicated voxel
    instead and every point beyond it gets ``default_value`` (air, background).
    """
    aligned = is_axis_aligned(image.GetDirection())
    source = image if aligned else sitk.ZeroFluxNeumannPad(image, [1, 1, 1], [1, 1, 1])
    return sitk.Resample(
        source,
        grid.size,
        sitk.Transform(),
        INTERPOLATORS[interpolation],
        grid.origin,
        grid.spacing,
        direction,
        float(default_value),
        image.GetPixelID(),
        aligned,
    )


def _vec(attrs: dict[str, Any], key: str, dtype: type = float) -> tuple:
    return tuple(dtype(v) for v in np.asarray(attrs[key]).ravel())


def stored_grid_image(array_zyx: np.ndarray, attrs: dict[str, Any]) -> sitk.Image:
    """An array on the stored (cropped, resampled, canonical) grid as a physical image."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(_vec(attrs, "spacing"))
    image.SetOrigin(_vec(attrs, "origin"))
    image.SetDirection(_vec(attrs, "direction"))
    return image


def uncrop(array_zyx: np.ndarray, attrs: dict[str, Any], default_value: float = 0) -> np.ndarray:
    """Place a stored-grid array back into the full resampled grid (before the body crop)."""
    size_zyx = _vec(attrs, "resampled_size", int)[::-1]
    start = _vec(attrs, "crop_start_zyx", int)
    stop = _vec(attrs, "crop_stop_zyx", int)
    expected = tuple(b - a for a, b in zip(start, stop))
    if array_zyx.shape != expected:
        raise ValueError(f"array shape {array_zyx.shape} != stored crop shape {expected}")
    full = np.full(size_zyx, default_value, dtype=array_zyx.dtype)
    full[tuple(slice(a, b) for a, b in zip(start, stop))] = array_zyx
    return full


def restore_to_original(
    array_zyx: np.ndarray, attrs: dict[str, Any], interpolation: str = "nearest", default_value=0
) -> sitk.Image:
    """Put a stored-grid array onto the original scan's grid (undo crop, resample, reorientation).

    Nearest neighbour for labels, linear for probabilities. Outside the crop box the result is
    ``default_value``; within half a voxel of the scan's edge it takes the edge voxel's value.
    """
    full = sitk.GetImageFromArray(uncrop(array_zyx, attrs, default_value))
    full.SetSpacing(_vec(attrs, "spacing"))
    full.SetOrigin(_vec(attrs, "resampled_origin"))
    full.SetDirection(_vec(attrs, "direction"))
    return sitk.Resample(
        full,
        _vec(attrs, "original_size", int),
        sitk.Transform(),
        INTERPOLATORS[interpolation],
        _vec(attrs, "original_origin"),
        _vec(attrs, "original_spacing"),
        _vec(attrs, "original_direction"),
        float(default_value),
        full.GetPixelID(),
        True,
    )
