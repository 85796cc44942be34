"""What varies between synthetic MSD cases: ``CaseParams`` and the draws that make them (pure numpy).

The helpers draw from one generator in a fixed order: reordering them changes every case. See
docs/explanation/internals.md#synthetic-datasets-sourcessynthetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np

from dataset.common.errors import UsageError
from sources.synthetic.phantom import Anatomy
from sources.synthetic.task07 import draw_msd_extent, draw_tumour_semi_axes

SIZES = ("small", "full", "msd")
TUMOURS = ("profile", "task07")  # the profile's own tumour sizes, or Task07's at the phantom's scale
DTYPES = ("int16", "int16_scaled", "float32", "int32")
# storage direction matrices (row-major), all describing the same physical patient
ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "RAS": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "LPI": (1, 0, 0, 0, 1, 0, 0, 0, -1),  # slices stored top to bottom
    "PLS": (0, 1, 0, 1, 0, 0, 0, 0, 1),  # first array axis runs along y
}
ORIENTATION_CYCLE = ("LPS", "RAS", "LPI", "PLS")
THIN_CASE_INDEX = 3
THIN_SLICES, THIN_THICKNESS_MM = 20, 2.0
REFERENCE_FOV_MM = 410.0  # a 512 x 0.8 mm field of view: the phantom's native scale
# (slope, intercept) choices for scaled int16 storage: HU = slope * stored + intercept
SCALINGS = ((0.5, -1024.0), (2.0, -1000.0), (1.0, -1024.0))


@dataclass(frozen=True)
class CaseParams:
    """Everything drawn for one case; ``sources.synthetic.msd.make_case`` renders it deterministically.

    Grid fields are in ITK order (per stored array axis i, j, k); ``direction`` is the
    row-major direction matrix. ``scl_slope``/``scl_inter`` apply only to
    ``dtype == "int16_scaled"`` (1/0 otherwise).
    """

    index: int
    name: str
    size: str
    orientation: str
    direction: tuple[float, ...]
    grid_size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    dtype: str
    scl_slope: float
    scl_inter: float
    compressed: bool
    noise_sd_hu: float
    noise_seed: int
    anatomy: Anatomy = field(default_factory=Anatomy)

    @property
    def filename(self) -> str:
        return self.name + (".nii.gz" if self.compressed else ".nii")


def case_name(index: int) -> str:
    """MSD-style name: case index 0 is ``pancreas_001``."""
    return f"pancreas_{index + 1:03d}"


def _grid(
    direction: tuple[float, ...], phys_size: np.ndarray, phys_spacing: np.ndarray, centre: np.ndarray
) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[float, float, float]]:
    """Stored size, spacing and origin of a grid with physical extents centred on ``centre``."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    phys_axis = np.abs(d).argmax(axis=0)  # physical axis each stored axis runs along
    size = phys_size[phys_axis].astype(int)
    spacing = phys_spacing[phys_axis]
    origin = centre - d @ (spacing * (size - 1) / 2.0)
    return (
        cast("tuple[int, int, int]", tuple(int(v) for v in size)),
        cast("tuple[float, float, float]", tuple(float(v) for v in spacing)),
        cast("tuple[float, float, float]", tuple(float(v) for v in origin)),
    )


def _draw_extent(rng: np.random.Generator, size: str, thin: bool) -> tuple[float, int, float, int]:
    """In-plane spacing (mm), in-plane voxels, slice thickness (mm) and slice count."""
    inplane = float(rng.uniform(0.6, 1.0) if size == "small" else rng.uniform(0.7, 0.9))
    if size == "small":
        n_xy = int(np.clip(round(rng.uniform(90.0, 115.0) / inplane), 64, 128))
        thickness = float(rng.uniform(1.5, 5.0))
        n_z = int(np.clip(round(rng.uniform(60.0, 120.0) / thickness), 20, 60))
    else:
        n_xy = 512
        thickness = float(rng.uniform(2.0, 3.0))
        n_z = int(rng.integers(90, 111))
    if thin:
        thickness, n_z = THIN_THICKNESS_MM, THIN_SLICES
    return inplane, n_xy, thickness, n_z


def _draw_placement(
    rng: np.random.Generator, fov_mm: float, n_z: int, thickness_mm: float, thin: bool
) -> tuple[np.ndarray, np.ndarray]:
    """LPS body centre (the table position: somewhere plausible in scanner coordinates)
    and the field-of-view centre, shifted a little from it."""
    centre = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-900, -300)])
    shift_xy = rng.uniform(-0.04, 0.04, size=2) * fov_mm
    shift_z = rng.uniform(-3.0, 3.0) if thin else rng.uniform(-0.1, 0.1) * n_z * thickness_mm
    return centre, centre + np.array([shift_xy[0], shift_xy[1], shift_z])


def _draw_anatomy(rng: np.random.Generator, centre: np.ndarray, scale: float, size: str) -> Anatomy:
    """The patient: body shape, tissue HU, pancreas course and tumour.

    "msd" then redraws the tumour's size (centimetres, widening the gland where it must);
    drawn after the rest, so the other profiles' draws are unchanged.
    """
    anatomy = _draw_base_anatomy(rng, centre, scale, size)
    if size == "msd":
        anatomy = replace(anatomy, tumour_semi_axes_mm=draw_tumour_semi_axes(rng), tumour_widens_gland=True)
    return anatomy


def _task07_tumour(rng: np.random.Generator, anatomy: Anatomy) -> Anatomy:
    """``tumours="task07"``: Task07's tumour size at the phantom's gland scale, widening the gland."""
    factor = gland_scale(anatomy)
    semi = cast("tuple[float, float, float]", tuple(v * factor for v in draw_tumour_semi_axes(rng)))
    return replace(anatomy, tumour_semi_axes_mm=semi, tumour_widens_gland=True)


def gland_scale(anatomy: Anatomy) -> float:
    """The phantom's gland body radius over the unscaled one (``phantom.pancreas_centreline``)."""
    body = anatomy.pancreas_radii_mm[1]
    return max(body * anatomy.inplane_scale, anatomy.min_pancreas_radius_mm) / body


def _draw_base_anatomy(rng: np.random.Generator, centre: np.ndarray, scale: float, size: str) -> Anatomy:
    """Every profile's anatomy draws, in their fixed order."""
    body = (rng.uniform(180, 195), rng.uniform(132, 148))
    has_tumour = bool(rng.random() < 0.8)
    return Anatomy(
        centre_mm=cast("tuple[float, float, float]", tuple(float(v) for v in centre)),
        inplane_scale=scale,
        body_semi_axes_mm=cast("tuple[float, float]", tuple(float(v) for v in body)),
        fat_thickness_mm=float(rng.uniform(12, 25)),
        muscle_thickness_mm=float(rng.uniform(8, 12)),
        visceral_hu=float(rng.uniform(-60, -20)),
        fat_hu=float(rng.uniform(-110, -90)),
        muscle_hu=float(rng.uniform(40, 60)),
        liver_hu=float(rng.uniform(55, 70)),
        spleen_hu=float(rng.uniform(50, 65)),
        kidney_cortex_hu=float(rng.uniform(150, 180)),
        kidney_medulla_hu=float(rng.uniform(100, 130)),
        bone_hu=float(rng.uniform(450, 600)),
        aorta_hu=float(rng.uniform(180, 250)),
        ivc_hu=float(rng.uniform(130, 170)),
        duodenum_hu=float(rng.uniform(0, 30)),
        pancreas_hu=float(rng.uniform(100, 130)),
        pancreas_x_range_mm=(float(rng.uniform(-62, -48)), float(rng.uniform(78, 92))),
        pancreas_body_y_mm=float(rng.uniform(-8, -2)),
        pancreas_tail_rise_mm=float(rng.uniform(20, 35)),
        pancreas_z_tilt=float(rng.uniform(0.05, 0.2)),
        pancreas_yz_shear=float(rng.uniform(-0.3, 0.3)),
        pancreas_radii_mm=(float(rng.uniform(11, 14)), float(rng.uniform(8, 10)), float(rng.uniform(7, 9))),
        min_pancreas_radius_mm=7.0 if size == "small" else 6.5,
        has_tumour=has_tumour,
        tumour_position=float(rng.uniform(0.1, 0.85)),
        tumour_offset=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2))),
        tumour_semi_axes_mm=cast("tuple[float, float, float]", tuple(float(v) for v in rng.uniform(2.0, 5.5, size=3))),
        tumour_hu=float(rng.uniform(20, 50)),
    )


def draw_case_params(
    index: int, seed: int = 0, size: str = "small", inplane_voxels: int | None = None, tumours: str = "profile"
) -> CaseParams:
    """Draw one case's parameters from ``default_rng([seed, index])``.

    ``inplane_voxels`` ("msd" only, for tests) renders the same patient and field of view
    on a coarser in-plane grid instead of 512 x 512.
    ``tumours``: "profile" (the size's own tumours) or "task07" (see the module docstring).
    """
    if size not in SIZES:
        raise UsageError(f"size {size!r} is not one of {SIZES}")
    if index < 0 or seed < 0:
        raise UsageError(f"case index {index} and seed {seed} must be >= 0")
    if inplane_voxels is not None and size != "msd":
        raise UsageError(f"inplane_voxels applies to size 'msd' only, not {size!r}")
    if tumours not in TUMOURS:
        raise UsageError(f"tumours {tumours!r} is not one of {TUMOURS}")
    rng = np.random.default_rng([seed, index])
    thin = index == THIN_CASE_INDEX and size != "msd"
    if size == "msd":
        inplane, n_xy, thickness, n_z = draw_msd_extent(rng, index, inplane_voxels)
    else:
        inplane, n_xy, thickness, n_z = _draw_extent(rng, size, thin)
    fov = n_xy * inplane
    centre, fov_centre = _draw_placement(rng, fov, n_z, thickness, thin)
    orientation = ORIENTATION_CYCLE[index % len(ORIENTATION_CYCLE)]
    direction = tuple(float(v) for v in ORIENTATIONS[orientation])
    grid_size, spacing, origin = _grid(
        direction, np.array([n_xy, n_xy, n_z]), np.array([inplane, inplane, thickness]), fov_centre
    )
    dtype = DTYPES[(index + index // len(DTYPES)) % len(DTYPES)]
    slope, inter = SCALINGS[int(rng.integers(len(SCALINGS)))] if dtype == "int16_scaled" else (1.0, 0.0)
    anatomy = _draw_anatomy(rng, centre, fov / REFERENCE_FOV_MM, size)
    params = CaseParams(
        index=index,
        name=case_name(index),
        size=size,
        orientation=orientation,
        direction=direction,
        grid_size=grid_size,
        spacing_mm=spacing,
        origin_mm=origin,
        dtype=dtype,
        scl_slope=slope,
        scl_inter=inter,
        compressed=index % 6 != 5,
        noise_sd_hu=float(rng.uniform(10, 20)),
        noise_seed=int(rng.integers(2**31)),
        anatomy=anatomy,
    )
    if tumours == "task07" and size != "msd":  # drawn last: every other draw stays as the profile's
        params = replace(params, anatomy=_task07_tumour(rng, params.anatomy))
    return params


def reoriented(params: CaseParams, orientation: str) -> CaseParams:
    """The same patient and field of view stored with another direction matrix."""
    if orientation not in ORIENTATIONS:
        raise UsageError(f"orientation {orientation!r} is not one of {tuple(ORIENTATIONS)}")
    old = np.asarray(params.direction).reshape(3, 3)
    phys_axis = np.abs(old).argmax(axis=0)
    phys_size, phys_spacing = np.zeros(3, int), np.zeros(3)
    phys_size[phys_axis] = params.grid_size
    phys_spacing[phys_axis] = params.spacing_mm
    centre = np.asarray(params.origin_mm) + old @ (
        np.asarray(params.spacing_mm) * (np.asarray(params.grid_size) - 1) / 2
    )
    direction = tuple(float(v) for v in ORIENTATIONS[orientation])
    size, spacing, origin = _grid(direction, phys_size, phys_spacing, centre)
    return replace(
        params, orientation=orientation, direction=direction, grid_size=size, spacing_mm=spacing, origin_mm=origin
    )


def grid_coordinates(params: CaseParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS x, y, z (mm) of every voxel centre as arrays broadcastable to (z, y, x) order.

    Physical point = origin + direction @ (spacing * index); with an axis-aligned
    direction each physical coordinate varies along a single array axis.
    """
    d = np.asarray(params.direction, dtype=float).reshape(3, 3)
    coords = []
    for p in range(3):
        total = np.full((1, 1, 1), params.origin_mm[p])
        for a in range(3):  # stored ITK axis a is numpy axis 2 - a
            if d[p, a] != 0.0:
                shape = [1, 1, 1]
                shape[2 - a] = params.grid_size[a]
                idx = np.arange(params.grid_size[a], dtype=float).reshape(shape)
                total = total + d[p, a] * params.spacing_mm[a] * idx
        coords.append(total)
    return coords[0], coords[1], coords[2]
