"""Dice, NSD and HD95 per region against hand-computed small cases and brute force.

NSD itself is checked against DeepMind's library in test_inference_surface.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dataset.common.configio import ConfigError, from_dict
from evaluation.metrics import (
    NSD_TOLERANCE_MM,
    REGIONS,
    dice,
    hd95,
    region_status,
    score_case,
    summarise,
    surface,
)
from prediction.config import PredictConfig


def cube(shape, start, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def test_dice_hand_computed():
    a = cube((10, 10, 10), (2, 2, 2), 4)  # 64 voxels
    b = cube((10, 10, 10), (4, 2, 2), 4)  # shifted 2 along z: overlap 2*4*4 = 32
    assert dice(a, b) == pytest.approx(2 * 32 / 128)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) is None


def test_surface_of_a_cube_is_its_shell():
    s = surface(cube((8, 8, 8), (2, 2, 2), 4))
    assert s.sum() == 4**3 - 2**3


def brute_hd95(a, b, spacing):
    sa, sb = np.argwhere(surface(a)) * spacing, np.argwhere(surface(b)) * spacing
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


def test_hd95_cubes_offset_by_two_voxels_anisotropic():
    # Two 4^3 cubes offset by 2 slices along z with 3 mm slices. Each surface has 56 voxels:
    # its far z-face (16) is 2 slices = 6 mm from the other surface, the next wall ring (12)
    # 3 mm, the rest 0 or 0.8 mm. 32 of the 112 pooled distances (29% > 5%) are 6 mm,
    # so HD95 = 6 mm exactly.
    spacing = (3.0, 0.8, 0.8)
    a = cube((12, 10, 10), (2, 3, 3), 4)
    b = cube((12, 10, 10), (4, 3, 3), 4)
    value = hd95(a, b, spacing)
    assert value == pytest.approx(brute_hd95(a, b, np.array(spacing)))
    assert value == pytest.approx(6.0)


def test_hd95_offset_along_x_uses_in_plane_spacing():
    a = cube((10, 12, 12), (3, 3, 2), 4)
    b = cube((10, 12, 12), (3, 3, 4), 4)
    assert hd95(a, b, (3.0, 0.8, 0.8)) == pytest.approx(1.6)


def test_hd95_identical_is_zero_and_symmetric():
    a = cube((9, 9, 9), (1, 1, 1), 5)
    b = cube((9, 9, 9), (2, 3, 1), 3)
    assert hd95(a, a, (1, 1, 1)) == 0.0
    assert hd95(a, b, (2.0, 1.0, 0.5)) == pytest.approx(hd95(b, a, (2.0, 1.0, 0.5)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force_on_blobs(seed):
    rng = np.random.default_rng(seed)
    a = np.zeros((14, 16, 15), bool)
    b = np.zeros_like(a)
    for m in (a, b):
        for _ in range(3):
            c = rng.integers(2, 12, 3)
            r = rng.integers(2, 4)
            zz, yy, xx = np.ogrid[:14, :16, :15]
            m |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    spacing = np.array([2.5, 0.7, 0.9])
    assert hd95(a, b, spacing) == pytest.approx(brute_hd95(a, b, spacing), rel=1e-9)


def test_hd95_touching_volume_edge_is_exact():
    a = cube((6, 6, 6), (0, 0, 0), 3)
    b = cube((6, 6, 6), (0, 0, 1), 3)
    assert hd95(a, b, (1, 1, 1)) == pytest.approx(brute_hd95(a, b, np.ones(3)))


def test_hd95_undefined_when_a_mask_is_empty():
    a = cube((6, 6, 6), (1, 1, 1), 2)
    empty = np.zeros_like(a)
    assert hd95(a, empty, (1, 1, 1)) is None
    assert hd95(empty, a, (1, 1, 1)) is None
    assert hd95(empty, empty, (1, 1, 1)) is None


def test_hd95_rejects_bad_spacing():
    a = cube((6, 6, 6), (1, 1, 1), 2)
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1, 0, 1))


def test_score_case_regions_and_statuses():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[3:5, 3:5, 3:5] = 2  # tumour inside the pancreas
    pred = truth.copy()
    pred[pred == 2] = 1  # tumour missed, whole gland right
    scores = score_case(pred, truth, (1, 1, 1))
    assert scores["pancreas"] == {"dice": 1.0, "nsd": 1.0, "hd95_mm": 0.0, "status": "both"}
    assert scores["tumour"] == {"dice": 0.0, "nsd": 0.0, "hd95_mm": None, "status": "missed"}
    no_tumour = score_case(pred, pred, (1, 1, 1))["tumour"]
    assert no_tumour == {"dice": None, "nsd": None, "hd95_mm": None, "status": "absent"}
    assert region_status(pred == 2, truth == 0) == "missed"


def test_three_regions_on_a_case_with_both_labels():
    """Truth: a 4x4x4 gland (label 1) holding a 2x2x2 tumour (label 2). The prediction gets
    the gland right but calls half the tumour pancreas and adds one tumour voxel outside.

    pancreas (1+2): prediction and truth cover the same 64 voxels: Dice 1.
    pancreas_label1: truth 56 voxels; prediction 56 + 4 (tumour called pancreas) - 1 (the
    corner now tumour) = 59; overlap 55: Dice 110/115.
    tumour: truth 8, prediction 4 + 1 = 5, overlap 4: Dice 8/13.
    """
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[3:5, 3:5, 3:5] = 2
    pred = truth.copy()
    pred[3, 3:5, 3:5] = 1  # half the tumour called pancreas
    pred[2, 2, 2] = 2  # a tumour voxel in the gland's corner
    scores = score_case(pred, truth, (2.5, 0.8, 0.8))
    assert list(scores) == ["pancreas", "pancreas_label1", "tumour"]
    assert scores["pancreas"]["dice"] == 1.0 and scores["pancreas"]["nsd"] == 1.0
    assert scores["pancreas"]["hd95_mm"] == 0.0
    assert scores["pancreas_label1"]["dice"] == pytest.approx(110 / 115)
    assert scores["tumour"]["dice"] == pytest.approx(8 / 13)
    # NSD at the default tolerances: every label-1 error lies within 5 mm of the truth's
    # surface; the true tumour's lower face is a 2.5 mm slice from the predicted one (> 2 mm).
    assert scores["pancreas_label1"]["nsd"] == 1.0
    assert 0.0 < scores["tumour"]["nsd"] < 1.0
    assert {s["status"] for s in scores.values()} == {"both"}
    assert REGIONS == {"pancreas": (1, 2), "pancreas_label1": (1,), "tumour": (2,)}


def test_each_region_uses_its_own_tolerance():
    truth = np.zeros((12, 10, 10), np.uint8)
    truth[2:6, 3:7, 3:7] = 2
    pred = np.zeros_like(truth)
    pred[4:8, 3:7, 3:7] = 2  # tumour 2 slices of 3 mm off
    tight = {**NSD_TOLERANCE_MM, "tumour": 1.0}
    loose = {**NSD_TOLERANCE_MM, "tumour": 6.0}
    spacing = (3.0, 0.8, 0.8)
    assert score_case(pred, truth, spacing, nsd_tolerance_mm=tight)["tumour"]["nsd"] < 1.0
    assert score_case(pred, truth, spacing, nsd_tolerance_mm=loose)["tumour"]["nsd"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no NSD tolerance for region"):
        score_case(pred, truth, spacing, nsd_tolerance_mm={"tumour": 2.0})


def test_summarise_excludes_absent_and_counts_them():
    cases = {
        "a": {"tumour": {"dice": 0.5, "nsd": 0.6, "hd95_mm": 4.0, "status": "both"}},
        "b": {"tumour": {"dice": None, "nsd": None, "hd95_mm": None, "status": "absent"}},
        "c": {"tumour": {"dice": 0.0, "nsd": 0.0, "hd95_mm": None, "status": "missed"}},
        "d": {"tumour": {"dice": 1.0, "nsd": 0.9, "hd95_mm": 2.0, "status": "both"}},
    }
    s = summarise(cases, ["tumour"])["tumour"]
    assert list(s) == ["dice", "nsd", "hd95_mm"]
    assert s["dice"] == {"mean": 0.5, "median": 0.5, "n": 3, "n_absent": 1, "n_undefined": 0}
    assert s["nsd"] == {"mean": pytest.approx(0.5), "median": 0.6, "n": 3, "n_absent": 1, "n_undefined": 0}
    assert s["hd95_mm"] == {"mean": 3.0, "median": 3.0, "n": 2, "n_absent": 1, "n_undefined": 1}
    empty = summarise({"b": cases["b"]}, ["tumour"])["tumour"]["dice"]
    assert empty == {"mean": None, "median": None, "n": 0, "n_absent": 1, "n_undefined": 0}


def test_summarise_every_region_of_scored_cases():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[3:5, 3:5, 3:5] = 2
    no_tumour = np.where(truth == 2, 1, truth).astype(np.uint8)
    cases = {"perfect": score_case(truth, truth, (1, 1, 1)), "tumour_missed": score_case(no_tumour, truth, (1, 1, 1))}
    summary = summarise(cases)
    assert list(summary) == list(REGIONS)
    assert summary["pancreas"]["nsd"] == {"mean": 1.0, "median": 1.0, "n": 2, "n_absent": 0, "n_undefined": 0}
    assert summary["tumour"]["nsd"] == {"mean": 0.5, "median": 0.5, "n": 2, "n_absent": 0, "n_undefined": 0}
    assert summary["tumour"]["hd95_mm"]["n_undefined"] == 1
    assert summary["pancreas_label1"]["dice"]["n"] == 2


def test_summarise_reads_a_report_written_before_nsd():
    old = {"a": {"tumour": {"dice": 0.5, "hd95_mm": 4.0, "status": "both"}}}
    assert summarise(old, ["tumour"])["tumour"]["nsd"] == {
        "mean": None,
        "median": None,
        "n": 0,
        "n_absent": 0,
        "n_undefined": 1,
    }


def test_nsd_tolerance_config_default_and_checks():
    assert PredictConfig().nsd_tolerance_mm == NSD_TOLERANCE_MM
    assert set(NSD_TOLERANCE_MM) == set(REGIONS)
    config = from_dict(PredictConfig, {"nsd_tolerance_mm": {"pancreas": 2, "pancreas_label1": 2, "tumour": 1}})
    assert config.nsd_tolerance_mm == {"pancreas": 2.0, "pancreas_label1": 2.0, "tumour": 1.0}
    assert all(isinstance(v, float) for v in config.nsd_tolerance_mm.values())


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"pancreas": 5.0, "tumour": 2.0}, "every region"),
        ({**NSD_TOLERANCE_MM, "liver": 5.0}, "every region"),
        ({**NSD_TOLERANCE_MM, "tumour": -1.0}, ">= 0"),
        ({**NSD_TOLERANCE_MM, "tumour": True}, "nsd_tolerance_mm.tumour: expected float, got True"),
        ({**NSD_TOLERANCE_MM, "tumour": "2 mm"}, "nsd_tolerance_mm.tumour: expected float, got '2 mm'"),
        (2.0, "mapping"),
    ],
)
def test_bad_nsd_tolerances_are_refused(value, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(PredictConfig, {"nsd_tolerance_mm": value})
