"""Tests of evaluation.detection on constructed cases whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from review.detection import DEFAULT_MIN_IOU, detect_tumours, detection_summary

SPACING = (2.0, 1.0, 1.0)
SHAPE = (12, 40, 40)


def volume(*boxes: tuple[slice, slice, slice], value: int = 2) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    for box in boxes:
        label[box] = value
    return label


A = (slice(1, 3), slice(2, 6), slice(2, 6))  # 2 x 4 x 4 = 32 voxels
B = (slice(5, 7), slice(20, 26), slice(20, 26))  # 2 x 6 x 6 = 72 voxels
C = (slice(9, 11), slice(30, 34), slice(5, 9))  # 32 voxels
FAR = (slice(9, 11), slice(2, 5), slice(30, 33))  # 18 voxels, away from every truth tumour


def test_three_truth_two_found_one_false():
    truth = volume(A, B, C)
    pred = volume(A, B, FAR)
    found = detect_tumours(truth, pred, SPACING)
    assert {k: found[k] for k in ("truth", "predicted", "detected", "missed", "false")} == {
        "truth": 3,
        "predicted": 3,
        "detected": 2,
        "missed": 1,
        "false": 1,
    }
    big = found["tumours"][0]  # largest first: B
    assert big["volume_ml"] == pytest.approx(72 * 2.0 / 1000) and big["detected"] and big["dice"] == 1.0
    missed = [t for t in found["tumours"] if not t["detected"]]
    assert len(missed) == 1 and missed[0]["centre_zyx"] == [10, 32, 7] and missed[0]["dice"] == 0.0
    (false,) = found["false_tumours"]
    assert false["volume_ml"] == pytest.approx(18 * 2.0 / 1000)
    assert false["diameter_mm"] == pytest.approx(math.hypot(2, 2))
    assert false["centre_zyx"] == [10, 3, 31]


def test_dice_by_hand():
    truth = volume(A)  # 32 voxels
    pred = volume((slice(1, 3), slice(2, 6), slice(2, 5)))  # 24 of them
    (tumour,) = detect_tumours(truth, pred, SPACING)["tumours"]
    assert tumour["dice"] == pytest.approx(2 * 24 / (32 + 24))
    assert tumour["iou"] == pytest.approx(24 / 32)
    assert tumour["diameter_mm"] == pytest.approx(math.hypot(3, 3))


def test_touching_truth_tumours_are_one_tumour():
    truth = volume((slice(1, 3), slice(2, 6), slice(2, 6)), (slice(3, 5), slice(6, 9), slice(6, 9)))  # corner contact
    found = detect_tumours(truth, volume(), SPACING)
    assert found["truth"] == 1 and found["missed"] == 1


def test_one_prediction_covering_two_tumours_detects_both_and_is_not_false():
    left = (slice(2, 4), slice(10, 14), slice(10, 14))
    right = (slice(2, 4), slice(10, 14), slice(16, 20))
    truth = volume(left, right)  # 32 + 32 voxels, two columns apart
    pred = volume((slice(2, 4), slice(10, 14), slice(10, 20)))  # one 80-voxel block over both
    found = detect_tumours(truth, pred, SPACING)
    assert found["truth"] == 2 and found["predicted"] == 1
    assert found["detected"] == 2 and found["false"] == 0
    for tumour in found["tumours"]:
        assert tumour["iou"] == pytest.approx(32 / 80)
        assert tumour["dice"] == pytest.approx(2 * 32 / (32 + 80))


def test_split_prediction_detects_and_dice_uses_the_union_of_its_pieces():
    truth = volume((slice(2, 4), slice(10, 14), slice(10, 20)))  # 80 voxels
    pred = volume((slice(2, 4), slice(10, 14), slice(10, 14)), (slice(2, 4), slice(10, 14), slice(16, 20)))
    found = detect_tumours(truth, pred, SPACING)
    assert found["detected"] == 1 and found["false"] == 0
    assert found["tumours"][0]["dice"] == pytest.approx(2 * 64 / (80 + 64))


def test_grazing_prediction_is_a_miss_and_a_false_tumour():
    truth = volume((slice(2, 6), slice(10, 20), slice(10, 20)))  # 400 voxels
    pred = volume((slice(2, 6), slice(19, 25), slice(10, 20)))  # 240 voxels, 40 of them in the tumour
    iou = 40 / (400 + 240 - 40)
    assert iou < DEFAULT_MIN_IOU
    grazed = detect_tumours(truth, pred, SPACING)
    assert (grazed["detected"], grazed["missed"], grazed["false"]) == (0, 1, 1)
    assert grazed["tumours"][0]["iou"] == pytest.approx(iou) and grazed["tumours"][0]["dice"] == 0.0
    any_overlap = detect_tumours(truth, pred, SPACING, min_iou=0.0)
    assert (any_overlap["detected"], any_overlap["false"]) == (1, 0)


def test_iou_exactly_at_the_threshold_counts():
    truth = volume(A)
    pred = volume((slice(1, 3), slice(2, 6), slice(2, 4)))  # 16 of 32 voxels: IoU 0.5
    assert detect_tumours(truth, pred, SPACING, min_iou=0.5)["detected"] == 1
    assert detect_tumours(truth, pred, SPACING, min_iou=0.51)["detected"] == 0


def test_empty_truth_makes_every_prediction_false():
    found = detect_tumours(volume(), volume(A, FAR), SPACING)
    assert (found["truth"], found["detected"], found["false"], found["tumours"]) == (0, 0, 2, [])


def test_empty_prediction_misses_everything():
    found = detect_tumours(volume(A, B), volume(), SPACING)
    assert (found["truth"], found["detected"], found["missed"], found["false"]) == (2, 0, 2, 0)
    assert all(t["dice"] == 0.0 and not t["detected"] for t in found["tumours"])


def test_both_empty_and_pancreas_only():
    found = detect_tumours(volume(A, value=1), volume(B, value=1), SPACING)
    assert (found["truth"], found["predicted"], found["tumours"], found["false_tumours"]) == (0, 0, [], [])


def test_min_voxels_ignores_specks_on_both_sides():
    speck = (slice(0, 1), slice(38, 39), slice(38, 39))
    found = detect_tumours(
        volume(A, speck), volume(A, (slice(11, 12), slice(0, 1), slice(0, 1))), SPACING, min_voxels=2
    )
    assert (found["truth"], found["detected"], found["false"]) == (1, 1, 0)


def test_refuses_mismatched_grids_and_bad_threshold():
    with pytest.raises(ValueError, match=r"truth has shape \(12, 40, 40\) but pred has shape \(1, 40, 40\)"):
        detect_tumours(volume(), np.zeros((1, 40, 40), np.uint8), SPACING)
    with pytest.raises(ValueError, match="min_iou"):
        detect_tumours(volume(), volume(), SPACING, min_iou=1.5)


def bar(length_voxels: int, z: int, y: int) -> tuple[slice, slice, slice]:
    """A one-voxel-thick run along x: its long axis is (length - 1) mm at 1 mm spacing."""
    return slice(z, z + 1), slice(y, y + 1), slice(1, 1 + length_voxels)


def test_summary_counts_cases_and_size_bins():
    wide = np.zeros((4, 10, 50), np.uint8)
    truth, pred = wide.copy(), wide.copy()
    for box in (bar(6, 0, 0), bar(16, 0, 3), bar(26, 0, 6), bar(41, 2, 0)):  # 5, 15, 25 and 40 mm
        truth[box] = 2
    for box in (bar(16, 0, 3), bar(41, 2, 0)):  # finds the 15 and the 40 mm ones
        pred[box] = 2
    empty = np.zeros_like(wide)
    speck = empty.copy()
    speck[3, 9, 49] = 2
    per_case = {
        "four": detect_tumours(truth, pred, SPACING),
        "healthy-clean": detect_tumours(empty, empty, SPACING),
        "healthy-false": detect_tumours(empty, speck, SPACING),
        "tumour-missed": detect_tumours(speck, empty, SPACING),
    }
    summary = detection_summary(per_case)
    assert (summary["cases"], summary["tumours"], summary["detected"], summary["false"]) == (4, 5, 2, 1)
    assert summary["sensitivity"] == pytest.approx(2 / 5)
    assert summary["false_per_case"] == pytest.approx(1 / 4)
    assert summary["case_sensitivity"] == pytest.approx(1 / 2)  # "four" flagged, "tumour-missed" not
    assert summary["case_specificity"] == pytest.approx(1 / 2)  # "healthy-clean" clear, "healthy-false" flagged
    assert summary["by_diameter_mm"] == {
        "<10": {"truth": 2, "detected": 0, "sensitivity": 0.0},  # the 5 mm bar and the 0 mm speck
        "10-20": {"truth": 1, "detected": 1, "sensitivity": 1.0},
        "20-30": {"truth": 1, "detected": 0, "sensitivity": 0.0},
        ">=30": {"truth": 1, "detected": 1, "sensitivity": 1.0},
    }


def test_bin_edges_are_lower_inclusive():
    truth = np.zeros((1, 2, 40), np.uint8)
    truth[0, 0, 0:11] = 2  # exactly 10 mm
    found = detect_tumours(truth, truth, (1.0, 1.0, 1.0))
    bins = detection_summary({"edge": found})["by_diameter_mm"]
    assert bins["10-20"]["truth"] == 1 and bins["<10"]["truth"] == 0


def test_summary_without_truth_tumours_or_cases_is_none():
    clean = detect_tumours(volume(), volume(), SPACING)
    summary = detection_summary({"a": clean})
    assert summary["sensitivity"] is None and summary["case_sensitivity"] is None
    assert summary["case_specificity"] == 1.0 and summary["false_per_case"] == 0.0
    assert summary["by_diameter_mm"]["<10"] == {"truth": 0, "detected": 0, "sensitivity": None}
    assert detection_summary({})["false_per_case"] is None
