"""NSD against DeepMind's surface-distance (the MSD's scorer) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import surface_distance
from scipy import ndimage
from surface_distance import lookup_tables

from evaluation.surface import _CORNERS, cube_codes, surface_dice, surfel_area_table

ISO, CT, THICK = (1.0, 1.0, 1.0), (2.5, 0.8, 0.8), (3.0, 0.8, 0.8)
ODD = (0.7, 1.3, 2.9)  # (z, y, x): a different spacing on every axis catches a swapped axis
MATCH = 1e-3  # the required bound; the measured difference is below 1e-15
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")  # the library's scipy imports


@pytest.fixture(autouse=True)
def numpy2_shim(monkeypatch):
    """surface-distance 0.1 writes ``np.Inf`` for an empty mask, which NumPy 2 removed."""
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)


def library_nsd(pred, truth, spacing, tolerance):
    distances = surface_distance.compute_surface_distances(truth, pred, spacing)
    return surface_distance.compute_surface_dice_at_tolerance(distances, tolerance)


def ball(shape, centre, radii):
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii)) <= 1.0


def box(shape, start, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return m


def blobs(seed, shape=(14, 18, 16), n=4):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, bool)
    for _ in range(n):
        m |= ball(shape, rng.integers(2, np.array(shape) - 2), rng.uniform(1.5, 4.0, 3))
    return m


def noise(seed, shape=(9, 10, 11), fraction=0.4):
    """Every one of the 256 cube configurations occurs in a few such volumes."""
    return np.random.default_rng(seed).random(shape) < fraction


S = (20, 24, 22)
CASES = {
    "spheres_shifted_iso": (ball(S, (10, 12, 11), (6, 6, 6)), ball(S, (11, 13, 11), (6, 6, 6)), ISO),
    "spheres_smaller_ct": (ball(S, (10, 12, 11), (4, 7, 7)), ball(S, (10, 12, 11), (3, 6, 5)), CT),
    "ellipsoids_3mm": (ball(S, (9, 12, 11), (3, 8, 6)), ball(S, (10, 11, 12), (3, 7, 7)), THICK),
    "ellipsoids_odd": (ball(S, (9, 12, 11), (5, 8, 6)), ball(S, (10, 11, 12), (6, 7, 7)), ODD),
    "cubes_offset_3mm": (box(S, (4, 5, 6), (8, 8, 8)), box(S, (6, 6, 6), (8, 8, 8)), THICK),
    "cube_in_cube_ct": (box(S, (4, 5, 6), (10, 10, 10)), box(S, (6, 7, 8), (6, 6, 6)), CT),
    "one_slice_plates": (box(S, (8, 4, 4), (1, 12, 12)), box(S, (9, 5, 4), (1, 12, 12)), THICK),
    "one_voxel_lines": (box(S, (3, 10, 10), (12, 1, 1)), box(S, (3, 10, 11), (12, 1, 1)), CT),
    "single_voxels": (box(S, (5, 5, 5), (1, 1, 1)), box(S, (5, 6, 6), (1, 1, 1)), ODD),
    "touching_every_edge": (box(S, (0, 0, 0), S), box(S, (0, 2, 0), (20, 22, 20)), CT),
    "touching_low_edges": (ball(S, (0, 0, 0), (6, 8, 7)), ball(S, (1, 0, 2), (6, 8, 7)), THICK),
    "far_apart": (box(S, (1, 1, 1), (3, 3, 3)), box(S, (15, 18, 17), (3, 3, 3)), CT),
    "small_far_false_positive": (
        ball(S, (10, 12, 11), (5, 6, 6)) | box(S, (0, 0, 19), (2, 2, 2)),
        ball(S, (10, 12, 12), (5, 6, 6)),
        THICK,
    ),
    "blobs_0": (blobs(0), blobs(10), CT),
    "blobs_1": (blobs(1), blobs(11), THICK),
    "blobs_2": (blobs(2), blobs(12), ODD),
    "noise_0": (noise(0), noise(100), ISO),
    "noise_1": (noise(1, fraction=0.6), noise(101, fraction=0.3), ODD),
    "noise_2": (noise(2, fraction=0.2), noise(102, fraction=0.7), THICK),
    "prediction_empty": (np.zeros(S, bool), ball(S, (10, 12, 11), (5, 5, 5)), CT),
    "truth_empty": (ball(S, (10, 12, 11), (5, 5, 5)), np.zeros(S, bool), CT),
}
TOLERANCES = (0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 5.0, 10.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_deepmind_surface_distance(name):
    pred, truth, spacing = CASES[name]
    for tolerance in TOLERANCES:
        ours = surface_dice(pred, truth, spacing, tolerance)
        assert ours == pytest.approx(library_nsd(pred, truth, spacing, tolerance), abs=MATCH), (name, tolerance)


def test_the_cases_tell_metrics_apart():
    """The library cases are not all trivially 0 or 1: NSD varies with the tolerance."""
    values = {round(surface_dice(*CASES[n][:3], t), 3) for n in ("blobs_0", "ellipsoids_3mm") for t in TOLERANCES}
    assert len(values) > 8


@pytest.mark.parametrize("spacing", [ISO, CT, THICK, ODD, (0.5, 4.0, 1.7)])
def test_surfel_area_table_equals_the_librarys(spacing):
    """All 256 2x2x2 configurations: our areas are the library's, whatever the spacing."""
    kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL  # library weight of each voxel of the cube
    library_code = [sum(int(kernel[c]) for i, c in enumerate(_CORNERS) if code >> i & 1) for code in range(256)]
    reference = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)[library_code]
    np.testing.assert_allclose(surfel_area_table(spacing), reference, rtol=0, atol=1e-12)


def test_axis_order_is_z_y_x_throughout():
    """Transposing the arrays and their spacing together changes nothing; spacing alone does."""
    pred, truth, spacing = CASES["ellipsoids_odd"]
    value = surface_dice(pred, truth, spacing, 2.0)
    assert surface_dice(pred.T, truth.T, spacing[::-1], 2.0) == pytest.approx(value, abs=1e-12)
    assert library_nsd(pred.T, truth.T, spacing[::-1], 2.0) == pytest.approx(value, abs=MATCH)
    assert surface_dice(pred, truth, spacing[::-1], 2.0) != pytest.approx(value, abs=1e-3)


def test_cube_codes_mark_the_surface_only():
    m = box((5, 5, 5), (1, 1, 1), (3, 3, 3))
    codes = cube_codes(m)
    assert codes.shape == (6, 6, 6)
    on_surface = (codes != 0) & (codes != 255)
    assert on_surface.sum() == 4**3 - 2**3  # the shell of the 4x4x4 corner lattice
    assert (codes == 255).sum() == 2**3


# ----------------------------------------------------------------------------- hand-computed


def test_perfect_match_is_one_and_a_miss_is_zero():
    m = ball(S, (10, 12, 11), (5, 6, 4))
    empty = np.zeros_like(m)
    assert surface_dice(m, m, CT, 0.0) == 1.0
    assert surface_dice(empty, m, CT, 5.0) == 0.0  # missed
    assert surface_dice(m, empty, CT, 5.0) == 0.0  # false positive
    assert surface_dice(empty, empty, CT, 5.0) is None  # absent: no defined score


def cube_surface_areas(n, spacing):
    """Marching-cubes surface of an n^3 voxel cube: (one z-face layer of elements, all of it), mm^2.

    The elements sit on the (n+1)^3 corner lattice. In a z-face layer: (n-1)^2 flat squares
    sy*sx, 4(n-1) edge strips (length of the edge times the diagonal of the half-voxels
    across it), 4 corner triangles (vertices at half-voxel offsets on the three axes). Each of
    the n-1 layers between: 4(n-1) wall squares (sz times the in-plane side) and 4 vertical
    edge strips.
    """
    sz, sy, sx = spacing
    corner = math.sqrt((sy * sx) ** 2 + (sz * sx) ** 2 + (sz * sy) ** 2) / 8
    z_layer = (
        (n - 1) ** 2 * sy * sx
        + 2 * (n - 1) * (sx * math.hypot(sz / 2, sy / 2) + sy * math.hypot(sz / 2, sx / 2))
        + 4 * corner
    )
    middle = 2 * (n - 1) * (sz * sy + sz * sx) + 4 * sz * math.hypot(sy / 2, sx / 2)
    return z_layer, 2 * z_layer + (n - 1) * middle


@pytest.mark.parametrize("spacing", [(2.0, 1.0, 1.0), (3.0, 0.8, 0.8)])
def test_two_cubes_a_known_distance_apart(spacing):
    """Two 4^3 cubes stacked along z with 6 voxels between their facing faces (6 sz mm).

    Within a tolerance below 6 sz no element is matched: NSD 0. At exactly 6 sz each facing
    z-face layer is matched by the other, straight across, and nothing else is (the next
    layer is 7 sz away): NSD = one face layer's area / the whole surface of one cube.
    """
    shape = (16, 8, 8)
    a, b = box(shape, (0, 2, 2), (4, 4, 4)), box(shape, (10, 2, 2), (4, 4, 4))
    gap_mm = 6 * spacing[0]
    face, total = cube_surface_areas(4, spacing)
    assert surface_dice(a, b, spacing, gap_mm - 0.1) == 0.0
    assert surface_dice(a, b, spacing, gap_mm) == pytest.approx(face / total, rel=1e-12)
    assert surface_dice(a, b, spacing, gap_mm + 0.5 * spacing[0]) == pytest.approx(face / total, rel=1e-12)
    assert library_nsd(a, b, spacing, gap_mm) == pytest.approx(face / total, abs=MATCH)


def test_cube_surface_area_formula_is_the_librarys():
    spacing = (3.0, 0.8, 0.8)
    m = box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    areas = surface_distance.compute_surface_distances(m, m, spacing)["surfel_areas_gt"]
    assert areas.sum() == pytest.approx(cube_surface_areas(4, spacing)[1], rel=1e-12)


@pytest.mark.parametrize("shift_zyx", [(1, 0, 0), (0, 2, 0), (1, 1, 1)])
def test_a_shifted_copy_is_fully_matched_within_the_shift(shift_zyx):
    """Every element of a translated copy has its twin at the length of the shift."""
    spacing = THICK
    a = ball(S, (9, 11, 10), (5, 6, 6))
    b = np.roll(a, shift_zyx, axis=(0, 1, 2))
    shift_mm = math.sqrt(sum((k * s) ** 2 for k, s in zip(shift_zyx, spacing)))
    assert surface_dice(a, b, spacing, shift_mm) == pytest.approx(1.0)
    assert surface_dice(a, b, spacing, shift_mm * 0.99) < 1.0


def test_nsd_is_symmetric():
    pred, truth, spacing = CASES["blobs_1"]
    assert surface_dice(pred, truth, spacing, 2.0) == pytest.approx(surface_dice(truth, pred, spacing, 2.0), abs=1e-12)


def test_a_far_false_positive_costs_its_area_only():
    """The windowed distance transform gives the same answer as a whole-volume one."""
    shape = (60, 80, 80)
    organ = ball(shape, (40, 50, 50), (8, 12, 12))
    stray = box(shape, (0, 0, 0), (2, 3, 3))
    spacing = CT
    with_stray = surface_dice(organ | stray, organ, spacing, 2.0)
    assert with_stray == pytest.approx(library_nsd(organ | stray, organ, spacing, 2.0), abs=MATCH)
    organ_area = surfel_area_table(spacing)[cube_codes(organ)].sum()
    stray_area = surfel_area_table(spacing)[cube_codes(stray)].sum()
    assert with_stray == pytest.approx(2 * organ_area / (2 * organ_area + stray_area), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing_zyx": (1.0, 0.0, 1.0)}, "spacing"),
        ({"spacing_zyx": (1.0, 1.0)}, "spacing"),
        ({"tolerance_mm": -1.0}, "tolerance"),
    ],
)
def test_bad_inputs_are_refused(kwargs, match):
    args = {
        "pred": box(S, (2, 2, 2), (3, 3, 3)),
        "truth": box(S, (2, 2, 2), (3, 3, 3)),
        "spacing_zyx": ISO,
        "tolerance_mm": 1.0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        surface_dice(**args)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shapes differ"):
        surface_dice(np.ones((3, 3, 3), bool), np.ones((3, 3, 4), bool), ISO, 1.0)


def test_boundary_voxel_counting_would_differ():
    """Why area weighting matters: on 3 mm slices a voxel count gives another number."""
    pred, truth, spacing = CASES["ellipsoids_3mm"]
    shell_p = pred & ~ndimage.binary_erosion(pred)
    shell_t = truth & ~ndimage.binary_erosion(truth)
    d_p = ndimage.distance_transform_edt(~shell_t, sampling=spacing)[shell_p]
    d_t = ndimage.distance_transform_edt(~shell_p, sampling=spacing)[shell_t]
    counted = ((d_p <= 1.0).sum() + (d_t <= 1.0).sum()) / (len(d_p) + len(d_t))
    assert abs(counted - surface_dice(pred, truth, spacing, 1.0)) > 0.01
