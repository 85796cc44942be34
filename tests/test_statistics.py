"""Tests of evaluation.statistics: volumes, long axes, HU, edge contact and components against hand counts."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from review.statistics import (
    STATISTICS_COLUMNS,
    case_statistics,
    centre_voxel,
    components,
    longest_axial_diameter_mm,
    statistics_csv,
    touches_edge,
    tumour_components,
)

SPACING = (3.0, 0.7, 0.9)  # anisotropic on purpose: z, y, x in mm
VOXEL_ML = 3.0 * 0.7 * 0.9 / 1000


def brute_force_diameter(mask: np.ndarray, spacing) -> float:
    """Every pair of voxel centres in every axial slice."""
    best = 0.0
    for plane in mask:
        points = np.argwhere(plane) * np.array(spacing[1:])
        if len(points):
            best = max(best, max(math.dist(p, q) for p in points for q in points))
    return best


def labelled_box(shape=(8, 20, 24), box=(slice(2, 6), slice(3, 13), slice(4, 19)), value=1) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[box] = value
    return label


def test_box_volumes_and_diameter_by_hand():
    label = labelled_box()  # 4 x 10 x 15 voxels of pancreas
    label[3:5, 5:8, 6:10] = 2  # 2 x 3 x 4 voxels of tumour inside it
    stats = case_statistics(label, SPACING)
    assert stats["pancreas_ml"] == pytest.approx(4 * 10 * 15 * VOXEL_ML)
    assert stats["tumour_ml"] == pytest.approx(2 * 3 * 4 * VOXEL_ML)
    assert stats["largest_tumour_ml"] == pytest.approx(2 * 3 * 4 * VOXEL_ML)
    assert stats["tumours"] == 1
    assert stats["largest_tumour_diameter_mm"] == pytest.approx(math.hypot(2 * 0.7, 3 * 0.9))
    assert (stats["pancreas_voxels"], stats["tumour_voxels"]) == (600, 24)


def test_single_voxel_tumour():
    label = np.zeros((3, 3, 3), np.uint8)
    label[1, 1, 1] = 2
    stats = case_statistics(label, SPACING)
    assert stats["pancreas_ml"] == stats["tumour_ml"] == stats["largest_tumour_ml"] == pytest.approx(VOXEL_ML)
    assert stats["tumours"] == 1 and stats["largest_tumour_diameter_mm"] == 0.0  # centre to centre
    assert not stats["touches_edge"]


@pytest.mark.parametrize(
    ("box", "expected_mm"),
    [
        ((slice(0, 1), slice(0, 1), slice(0, 1)), 0.0),  # one voxel: centre to centre is 0
        ((slice(0, 5), slice(0, 1), slice(0, 1)), 0.0),  # a column along z has no axial extent
        ((slice(0, 1), slice(0, 6), slice(0, 1)), 5 * 0.7),  # six voxels along y
        ((slice(0, 1), slice(0, 1), slice(0, 6)), 5 * 0.9),  # six voxels along x
        ((slice(0, 3), slice(0, 4), slice(0, 5)), math.hypot(3 * 0.7, 4 * 0.9)),  # the box's in-plane diagonal
    ],
)
def test_longest_axial_diameter_of_boxes(box, expected_mm):
    mask = np.zeros((6, 8, 8), bool)
    mask[box] = True
    assert longest_axial_diameter_mm(mask, SPACING) == pytest.approx(expected_mm)


def test_disc_diameter_matches_brute_force_and_geometry():
    radius_mm = 6.0
    yy, xx = np.mgrid[-12:13, -12:13]
    disc = (yy * 0.7) ** 2 + (xx * 0.9) ** 2 <= radius_mm**2
    mask = np.zeros((3, 25, 25), bool)
    mask[1] = disc
    diameter = longest_axial_diameter_mm(mask, SPACING)
    assert diameter == pytest.approx(brute_force_diameter(mask, SPACING))
    assert 2 * radius_mm - 2 * 0.9 < diameter <= 2 * radius_mm


def test_diameter_of_irregular_shape_matches_brute_force():
    mask = np.zeros((4, 12, 12), bool)
    mask[0, 2:10, 3] = True  # a bar
    mask[0, 9, 3:11] = True  # and its foot: an L
    mask[2, [1, 5, 10], [10, 2, 7]] = True  # scattered pixels: an odd hull
    mask[3, 4:7, 4:7] = True
    mask[3, 5, 5] = False  # a ring
    assert longest_axial_diameter_mm(mask, SPACING) == pytest.approx(brute_force_diameter(mask, SPACING))


def test_diameter_is_per_slice_not_across_slices():
    mask = np.zeros((2, 10, 10), bool)
    mask[0, 0, 0] = mask[1, 9, 9] = True  # far apart, but in different slices
    assert longest_axial_diameter_mm(mask, SPACING) == 0.0


def test_diameter_of_empty_mask_is_zero():
    assert longest_axial_diameter_mm(np.zeros((2, 3, 3), bool), SPACING) == 0.0


def test_hu_mean_and_median():
    label = labelled_box()
    label[3:5, 5:8, 6:10] = 2
    hu = np.full(label.shape, -1000.0)
    hu[label == 1] = 40.0
    hu[label == 2] = 100.0
    hu[3, 5, 6] = 130.0  # one tumour voxel brighter: the mean moves, the median does not
    stats = case_statistics(label, SPACING, hu)
    n_gland, n_tumour = 600, 24
    assert stats["tumour_mean_hu"] == pytest.approx((23 * 100.0 + 130.0) / n_tumour)
    assert stats["tumour_median_hu"] == 100.0
    assert stats["pancreas_mean_hu"] == pytest.approx((576 * 40.0 + 23 * 100.0 + 130.0) / n_gland)
    assert stats["pancreas_median_hu"] == 40.0


def test_hu_ignores_nan_and_is_none_without_hu_or_voxels():
    label = labelled_box()
    hu = np.full(label.shape, 50.0)
    hu[2, 3, 4:10] = np.nan  # six gland voxels without a value
    stats = case_statistics(label, SPACING, hu)
    assert stats["pancreas_mean_hu"] == 50.0
    assert stats["tumour_mean_hu"] is None and stats["tumour_median_hu"] is None
    assert case_statistics(label, SPACING)["pancreas_mean_hu"] is None


def test_no_tumour_gives_none_and_zero():
    stats = case_statistics(labelled_box(), SPACING)
    assert stats["tumours"] == 0 and stats["tumour_ml"] == 0.0
    assert stats["largest_tumour_ml"] is None and stats["largest_tumour_diameter_mm"] is None


@pytest.mark.parametrize(
    "face",
    [
        (slice(0, 2), slice(5, 8), slice(5, 8)),
        (slice(6, 8), slice(5, 8), slice(5, 8)),
        (slice(3, 5), slice(0, 2), slice(5, 8)),
        (slice(3, 5), slice(18, 20), slice(5, 8)),
        (slice(3, 5), slice(5, 8), slice(0, 2)),
        (slice(3, 5), slice(5, 8), slice(22, 24)),
    ],
)
def test_touching_any_face_is_flagged_and_volume_kept(face):
    label = labelled_box(box=face, value=2)
    stats = case_statistics(label, SPACING)
    assert stats["touches_edge"] and stats["tumour_touches_edge"] and stats["pancreas_touches_edge"]
    assert stats["tumour_ml"] == pytest.approx(label.astype(bool).sum() * VOXEL_ML)
    assert stats["tumour_ml"] > 0


def test_interior_region_does_not_touch_edge():
    stats = case_statistics(labelled_box(), SPACING)
    assert not stats["touches_edge"] and not stats["pancreas_touches_edge"] and not stats["tumour_touches_edge"]
    assert touches_edge(np.ones((1, 1, 1), bool))


def test_diagonal_blobs_across_slices_are_one_tumour():
    label = np.zeros((6, 10, 10), np.uint8)
    label[0:2, 0:2, 0:2] = 2
    label[2:4, 2:4, 2:4] = 2  # meets the first blob only at the corner (1,1,1)-(2,2,2)
    assert tumour_components(label)[1] == 1
    label[5, 8, 8] = 2  # a gap of one slice: a second tumour
    numbered, count = tumour_components(label)
    assert count == 2
    assert (numbered == 1).sum() == 16 and (numbered == 2).sum() == 1  # largest first
    assert case_statistics(label, SPACING)["tumours"] == 2


def test_min_voxels_drops_small_components_from_the_count_only():
    label = np.zeros((6, 10, 10), np.uint8)
    label[0:2, 0:2, 0:2] = 2
    label[5, 8, 8] = 2
    assert components(label == 2, min_voxels=2)[1] == 1
    stats = case_statistics(label, SPACING, min_tumour_voxels=2)
    assert stats["tumours"] == 1 and stats["tumour_voxels"] == 9
    with pytest.raises(ValueError, match="at least 1"):
        components(label == 2, min_voxels=0)


def test_centre_voxel_moves_onto_a_crescent():
    mask = np.zeros((1, 11, 11), bool)
    mask[0, 0, :] = mask[0, :, 0] = mask[0, :, 10] = True  # a U: its centre of mass lies in the hollow
    z, y, x = centre_voxel(mask)
    assert mask[z, y, x]


def test_values_are_plain_python_and_serialise():
    label = labelled_box()
    label[3, 5, 6] = 2
    stats = case_statistics(label, SPACING, np.zeros(label.shape, np.int16))
    json.dumps(stats)
    assert all(v is None or type(v) in (int, float, bool) for v in stats.values())
    assert set(stats) == set(STATISTICS_COLUMNS) - {"case"}


def test_statistics_csv_columns_and_cells():
    row = {"case": "a,b", **case_statistics(labelled_box(), SPACING), "extra": 1}
    table = list(csv.reader(io.StringIO(statistics_csv([row]))))
    assert table[0] == list(STATISTICS_COLUMNS) and table[0][0] == "case"
    cells = dict(zip(table[0], table[1]))
    assert cells["case"] == "a,b"
    assert cells["tumour_mean_hu"] == "" and cells["touches_edge"] == "false"
    assert float(cells["pancreas_ml"]) == pytest.approx(row["pancreas_ml"])
    with pytest.raises(ValueError, match="no 'case' key"):
        statistics_csv([{"pancreas_ml": 1.0}])


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, float("nan"), 1.0)])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing_zyx"):
        case_statistics(labelled_box(), spacing)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="hu has shape"):
        case_statistics(labelled_box(), SPACING, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="3-D"):
        case_statistics(np.zeros((4, 4), np.uint8), SPACING)
