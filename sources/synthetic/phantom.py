"""A contrast-enhanced abdominal CT phantom as continuous functions of patient position (``render_phantom``).

Pure numpy, physical LPS millimetres. See docs/explanation/internals.md#synthetic-datasets-sourcessynthetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR_HU = -1000.0


@dataclass(frozen=True)
class Anatomy:
    """Everything that varies between phantom patients (mm and HU).

    ``centre_mm`` is the LPS point of the body centre at pancreas level; all other
    positions are relative to it and (in-plane) multiplied by ``inplane_scale``.
    """

    centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    inplane_scale: float = 1.0
    body_semi_axes_mm: tuple[float, float] = (185.0, 140.0)  # lateral, antero-posterior
    fat_thickness_mm: float = 18.0
    muscle_thickness_mm: float = 10.0
    visceral_hu: float = -40.0
    fat_hu: float = -100.0
    muscle_hu: float = 50.0
    liver_hu: float = 60.0
    spleen_hu: float = 55.0
    kidney_cortex_hu: float = 165.0
    kidney_medulla_hu: float = 120.0
    bone_hu: float = 550.0
    aorta_hu: float = 220.0
    ivc_hu: float = 150.0
    duodenum_hu: float = 15.0
    pancreas_hu: float = 115.0
    # pancreas centre line: x from head (patient right) to tail (left), reference mm
    pancreas_x_range_mm: tuple[float, float] = (-55.0, 85.0)
    pancreas_body_y_mm: float = -4.0  # y of the body, anterior to the aorta
    pancreas_tail_rise_mm: float = 30.0  # how far posterior the tail curves
    pancreas_z_tilt: float = 0.15  # mm of z per mm of x (tail superior)
    pancreas_yz_shear: float = 0.2  # mm of y per mm of z (tube leans with z)
    pancreas_radii_mm: tuple[float, float, float] = (12.0, 9.0, 8.0)  # head, body, tail
    min_pancreas_radius_mm: float = 6.5
    has_tumour: bool = True
    tumour_position: float = 0.5  # 0 head .. 1 tail along the centre line
    tumour_offset: tuple[float, float] = (0.0, 0.0)  # (y, z) in units of the local radius
    tumour_semi_axes_mm: tuple[float, float, float] = (5.0, 4.0, 4.0)
    tumour_hu: float = 35.0
    # False: tumour only where its ellipsoid lies inside the pancreas tube (no wider than the
    # gland); True: the whole ellipsoid inside the abdominal cavity, a mass that widens the
    # gland locally (centimetre tumours of the "msd" profile)
    tumour_widens_gland: bool = False


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def _ellipsoid(x, y, z, c: tuple[float, float, float], a: tuple[float, float, float]) -> np.ndarray:
    return ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2 <= 1.0


def _paint(hu: np.ndarray, mask: np.ndarray, value: float) -> None:
    """Set ``hu`` to ``value`` where the (broadcastable) mask is true."""
    np.copyto(hu, np.float32(value), where=np.broadcast_to(mask, hu.shape))


def _box(coords: tuple[np.ndarray, np.ndarray, np.ndarray], lo, hi) -> tuple[slice, ...]:
    """Numpy index slices covering the physical box [lo, hi] (coordinates axis-aligned).

    Each coordinate array must vary along at most one numpy axis (an axis-aligned grid);
    cropping the expensive 3D organs to their box keeps a 512x512x100 case fast.
    """
    ndim = max(c.ndim for c in coords)
    slices = [slice(None)] * ndim
    for c, low, h in zip(coords, lo, hi):
        axes = [a for a in range(c.ndim) if c.shape[a] > 1]
        if len(axes) != 1:
            continue
        v = c.reshape(-1)
        idx = np.nonzero((v >= low) & (v <= h))[0]
        a = axes[0]
        slices[a] = slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)
    return tuple(slices)


def _sub(c: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    return c[tuple(s if c.shape[a] > 1 else slice(None) for a, s in enumerate(box))]


def pancreas_centreline(x: np.ndarray | float, z: np.ndarray | float, anat: Anatomy):
    """Centre (y, z) and radius of the pancreas tube at relative in-plane x (scaled mm).

    The tube runs along x (head on the patient's right, tail on the left), bends
    posteriorly towards the spleen, rises towards the tail and leans with z.
    Returns (y_centre, z_centre, radius, x_clipped).
    """
    s = anat.inplane_scale
    x0, x1 = (v * s for v in anat.pancreas_x_range_mm)
    xc = np.clip(x, x0, x1)
    xb = x0 + 0.35 * (x1 - x0)  # the neck/body, where the bend is most anterior
    bend = anat.pancreas_tail_rise_mm * s / (x1 - xb) ** 2
    zc = anat.pancreas_z_tilt * (xc - xb)
    yc = anat.pancreas_body_y_mm * s + bend * (xc - xb) ** 2 + anat.pancreas_yz_shear * (z - zc)
    t = (xc - x0) / (x1 - x0)
    r_ref = np.interp(
        t,
        [0.0, 0.25, 0.6, 1.0],
        [anat.pancreas_radii_mm[0], anat.pancreas_radii_mm[1], anat.pancreas_radii_mm[1], anat.pancreas_radii_mm[2]],
    )
    r = np.maximum(r_ref * s, anat.min_pancreas_radius_mm)
    return yc, zc, r, xc


def _pancreas_mask(x, y, z, anat: Anatomy) -> np.ndarray:
    yc, zc, r, xc = pancreas_centreline(x, z, anat)
    return ((y - yc) / r) ** 2 + ((z - zc) / r) ** 2 + ((x - xc) / r) ** 2 <= 1.0


def tumour_centre(anat: Anatomy) -> tuple[tuple[float, float, float], float]:
    """Relative (x, y, z) centre of the tumour and the local pancreas radius there."""
    s = anat.inplane_scale
    x0, x1 = (v * s for v in anat.pancreas_x_range_mm)
    xt = x0 + anat.tumour_position * (x1 - x0)
    _, zc, r, _ = pancreas_centreline(np.float64(xt), np.float64(0.0), anat)
    zc, r = float(zc), float(r)
    z = zc + anat.tumour_offset[1] * r
    yc, _, _, _ = pancreas_centreline(np.float64(xt), np.float64(z), anat)
    return (float(xt), float(yc) + anat.tumour_offset[0] * r, z), r


def _paint_body(hu: np.ndarray, x, y, z, anat: Anatomy) -> None:
    """Subcutaneous fat, the muscle wall and the visceral fill inside it."""
    s = anat.inplane_scale
    ax, ay = (v * s for v in anat.body_semi_axes_mm)
    wobble = 1.0 + 0.03 * np.sin(z / 70.0)  # the waist changes a little along z
    fat_t = max(anat.fat_thickness_mm * s, 2.0)
    mus_t = max(anat.muscle_thickness_mm * s, 2.0)
    _paint(hu, _ellipse(x, y, 0.0, 0.0, ax * wobble, ay * wobble), anat.fat_hu)
    _paint(hu, _ellipse(x, y, 0.0, 0.0, ax - fat_t, ay - fat_t), anat.muscle_hu)
    _paint(hu, _ellipse(x, y, 0.0, 0.0, ax - fat_t - mus_t, ay - fat_t - mus_t), anat.visceral_hu)


def _paint_spine(hu: np.ndarray, x, y, anat: Anatomy) -> None:
    """Posterior midline: paraspinal muscles, vertebral body with a dense rim, spinous process."""
    s = anat.inplane_scale
    for side in (-1.0, 1.0):
        _paint(hu, _ellipse(x, y, side * 30 * s, 80 * s, 22 * s, 17 * s), anat.muscle_hu)
    _paint(hu, _ellipse(x, y, 0.0, 48 * s, 19 * s, 16 * s), anat.bone_hu + 150.0)
    _paint(hu, _ellipse(x, y, 0.0, 48 * s, 15 * s, 12 * s), anat.bone_hu - 100.0)
    _paint(hu, _ellipse(x, y, 0.0, 78 * s, 5 * s, 16 * s), anat.bone_hu)


def _paint_organ(
    hu: np.ndarray,
    coords,
    s: float,
    centre,
    semi,
    value: float,
    inner: float | None = None,
    inner_value: float | None = None,
) -> None:
    """An ellipsoid organ (in-plane reference mm scaled by ``s``), cropped to its box;
    ``inner`` paints a core of that relative size (the kidney medulla)."""
    c = (centre[0] * s, centre[1] * s, centre[2])
    a = (semi[0] * s, semi[1] * s, semi[2])
    box = _box(coords, [c[i] - a[i] for i in range(3)], [c[i] + a[i] for i in range(3)])
    sx, sy, sz = (_sub(v, box) for v in coords)
    sub = hu[box]
    _paint(sub, _ellipsoid(sx, sy, sz, c, a), value)
    if inner is not None:
        assert inner_value is not None, "inner needs inner_value"
        _paint(sub, _ellipsoid(sx, sy, sz, c, tuple(v * inner for v in a)), inner_value)


def _paint_organs(hu: np.ndarray, coords, anat: Anatomy) -> None:
    """Liver, spleen and kidneys (3D), then the in-plane vessels and the duodenum."""
    x, y, _ = coords
    s = anat.inplane_scale
    _paint_organ(hu, coords, s, (-85.0, -5.0, 40.0), (75.0, 85.0, 130.0), anat.liver_hu)  # liver, patient right
    _paint_organ(hu, coords, s, (100.0, 40.0, 50.0), (32.0, 48.0, 70.0), anat.spleen_hu)  # spleen, left posterior
    for side in (-1.0, 1.0):  # kidneys
        _paint_organ(
            hu,
            coords,
            s,
            (side * 68.0, 55.0, -20.0),
            (24.0, 30.0, 55.0),
            anat.kidney_cortex_hu,
            inner=0.65,
            inner_value=anat.kidney_medulla_hu,
        )
    _paint(hu, _ellipse(x, y, 14 * s, 26 * s, 11 * s, 11 * s), anat.aorta_hu)  # anterior-left of spine
    _paint(hu, _ellipse(x, y, -24 * s, 26 * s, 12 * s, 10 * s), anat.ivc_hu)
    _paint(hu, _ellipse(x, y, -72 * s, 0.0, 11 * s, 13 * s), anat.duodenum_hu)  # beside the head


def _pancreas_box(coords, anat: Anatomy) -> tuple[slice, ...]:
    """Index box that holds the whole pancreas tube (its bend, tilt and lean included)."""
    s = anat.inplane_scale
    x0, x1 = (v * s for v in anat.pancreas_x_range_mm)
    r_max = max(max(anat.pancreas_radii_mm) * s, anat.min_pancreas_radius_mm)
    zt = abs(anat.pancreas_z_tilt) * (x1 - x0)  # bounds |z centre| along the tube
    z_lo, z_hi = -zt - r_max, zt + r_max
    lean = abs(anat.pancreas_yz_shear) * (2 * zt + r_max)
    y_lo = anat.pancreas_body_y_mm * s - r_max - lean
    y_hi = (anat.pancreas_body_y_mm + max(anat.pancreas_tail_rise_mm, 0.0)) * s + r_max + lean
    return _box(coords, [x0 - r_max, y_lo, z_lo], [x1 + r_max, y_hi, z_hi])


def _paint_tumour(hu: np.ndarray, label: np.ndarray, coords, panc: np.ndarray, anat: Anatomy) -> None:
    """The tumour ellipsoid, only where it lies inside the pancreas mask ``panc``.

    ``hu``, ``label``, ``coords`` and ``panc`` are all cropped to the pancreas box.
    """
    (tx, ty, tz), _ = tumour_centre(anat)
    a = anat.tumour_semi_axes_mm
    tbox = _box(coords, [tx - a[0], ty - a[1], tz - a[2]], [tx + a[0], ty + a[1], tz + a[2]])
    tx_, ty_, tz_ = (_sub(v, tbox) for v in coords)
    tum = np.broadcast_to(_ellipsoid(tx_, ty_, tz_, (tx, ty, tz), a), panc[tbox].shape) & panc[tbox]
    _paint(hu[tbox], tum, anat.tumour_hu)
    label[tbox][tum] = 2


def _paint_mass(hu: np.ndarray, label: np.ndarray, coords, anat: Anatomy) -> None:
    """The whole tumour ellipsoid (label 2), cropped to its own box and to the abdominal
    cavity inside the muscle wall: where it is wider than the gland, it widens it."""
    (tx, ty, tz), _ = tumour_centre(anat)
    a = anat.tumour_semi_axes_mm
    tbox = _box(coords, [tx - a[0], ty - a[1], tz - a[2]], [tx + a[0], ty + a[1], tz + a[2]])
    sx, sy, sz = (_sub(v, tbox) for v in coords)
    s = anat.inplane_scale
    wall = max(anat.fat_thickness_mm * s, 2.0) + max(anat.muscle_thickness_mm * s, 2.0)
    cavity = _ellipse(sx, sy, 0.0, 0.0, *(v * s - wall for v in anat.body_semi_axes_mm))
    tum = np.broadcast_to(_ellipsoid(sx, sy, sz, (tx, ty, tz), a) & cavity, hu[tbox].shape)
    _paint(hu[tbox], tum, anat.tumour_hu)
    label[tbox][tum] = 2


def _paint_pancreas(hu: np.ndarray, label: np.ndarray, coords, anat: Anatomy) -> None:
    """Pancreas (label 1), cropped to its box, then the tumour (label 2): inside it, or
    widening it (``Anatomy.tumour_widens_gland``)."""
    box = _pancreas_box(coords, anat)
    sx, sy, sz = (_sub(v, box) for v in coords)
    panc = np.broadcast_to(_pancreas_mask(sx, sy, sz, anat), hu[box].shape)
    _paint(hu[box], panc, anat.pancreas_hu)
    label[box][panc] = 1
    if anat.has_tumour and anat.tumour_widens_gland:
        _paint_mass(hu, label, coords, anat)
    elif anat.has_tumour:
        _paint_tumour(hu[box], label[box], (sx, sy, sz), panc, anat)


def render_phantom(
    x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray, anat: Anatomy
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (float32) and label (uint8: 0, 1 pancreas, 2 tumour) at LPS points.

    ``x_mm``, ``y_mm``, ``z_mm`` broadcast to the output shape; for an axis-aligned grid
    each varies along one axis only (see ``sources.synthetic.params.grid_coordinates``), which
    keeps in-plane organs two-dimensional and lets 3D organs be cropped to their box.
    Later blocks paint over earlier ones, so their order is the anatomy's layering.
    """
    cx, cy, cz = anat.centre_mm
    x, y, z = x_mm - cx, y_mm - cy, z_mm - cz
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    _paint_body(hu, x, y, z, anat)
    _paint_spine(hu, x, y, anat)
    _paint_organs(hu, (x, y, z), anat)
    _paint_pancreas(hu, label, (x, y, z), anat)
    return hu, label
