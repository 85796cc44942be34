"""Intensity steps (window, LUT equalisation, normalisation), body crop and the config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataset.common.configio import ConfigError, from_dict
from preprocess.body import body_box, expand_box
from preprocess.config import PreprocessConfig, config_fingerprint, load_preprocess_config
from preprocess.intensity import (
    bin_of_values,
    equalization_lut,
    hu_to_levels,
    integer_window,
    linear_lut,
    to_levels,
    value_counts,
    window_to_int16,
)

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (-135.0, 250.0)


def brute_force_levels(hu: np.ndarray, window, bins: int, body_threshold=None) -> np.ndarray:
    """The documented definition, computed voxel by voxel with numpy.histogram's bins."""
    v = np.clip(np.rint(hu), np.ceil(window[0]), np.floor(window[1]))
    counted = v[hu > body_threshold] if body_threshold is not None else v.ravel()
    hist, edges = np.histogram(counted, bins=bins, range=window)
    cdf = np.cumsum(hist) / hist.sum()
    voxel_bin = np.digitize(v, edges[1:-1], right=False)
    cdf_min = cdf[np.nonzero(hist)[0][0]]
    x = np.clip((cdf[voxel_bin] - cdf_min) / (1 - cdf_min), 0, 1)
    return np.rint(255 * x).astype(np.uint8)


def test_window_clips_and_rounds_to_whole_hu():
    hu = np.array([-1000.0, -135.4, -134.6, 0.49, 249.5, 250.0, 3000.0], dtype=np.float32)
    out = window_to_int16(hu, WINDOW)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, [-135, -135, -135, 0, 250, 250, 250])
    assert integer_window((-135.5, 250.7)) == (-135, 250)


def test_bins_match_numpy_histogram():
    values = np.arange(-135, 251)
    bins = bin_of_values(values, WINDOW, 256)
    hist, _ = np.histogram(values, bins=256, range=WINDOW)
    np.testing.assert_array_equal(np.bincount(bins, minlength=256), hist)
    assert bins[0] == 0 and bins[-1] == 255


def test_lut_on_hand_computed_volume():
    # 4 bins over [0, 8): values 0,1 -> bin 0; 2,3 -> 1; 4,5 -> 2; 6,7,8 -> 3
    hu = np.array([0, 1, 1, 2, 5, 8, 8, 8], dtype=np.float32).reshape(2, 2, 2)
    counts = value_counts(hu, (0.0, 8.0))
    np.testing.assert_array_equal(counts, [1, 2, 1, 0, 0, 1, 0, 0, 3])
    x = equalization_lut(counts, (0.0, 8.0), 4)
    # cdf per bin = 3/8, 4/8, 5/8, 8/8; cdf_min = 3/8 -> x = (cdf - 3/8) / (5/8)
    expected_bin_x = [0.0, 0.2, 0.4, 1.0]
    np.testing.assert_allclose(x, [expected_bin_x[b] for b in (0, 0, 1, 1, 2, 2, 3, 3, 3)])
    levels = hu_to_levels(hu, (0.0, 8.0), bins=4)
    np.testing.assert_array_equal(levels.ravel(), [0, 0, 0, 51, 102, 255, 255, 255])


@pytest.mark.parametrize("bins", [2, 17, 256])
@pytest.mark.parametrize("body_only", [False, True])
def test_lut_equalisation_equals_brute_force(bins, body_only):
    rng = np.random.default_rng(3)
    hu = rng.normal(40, 200, size=(9, 13, 11)).astype(np.float32)
    hu[:, :2] = -1000.0  # air around the body
    threshold = -500.0 if body_only else None
    levels = hu_to_levels(hu, WINDOW, bins=bins, body_threshold_hu=threshold)
    np.testing.assert_array_equal(levels, brute_force_levels(hu, WINDOW, bins, threshold))
    assert levels.min() == 0 and levels.max() == 255


def test_lut_is_whole_volume_not_per_slab(monkeypatch):
    """Processing in slabs must give the same answer as one slab."""
    import preprocess.intensity as intensity

    rng = np.random.default_rng(5)
    hu = rng.normal(0, 150, size=(12, 8, 8)).astype(np.float32)
    whole = hu_to_levels(hu, WINDOW)
    monkeypatch.setattr(intensity, "SLAB_VOXELS", 64)  # one slice per slab
    np.testing.assert_array_equal(intensity.hu_to_levels(hu, WINDOW), whole)


def test_body_only_falls_back_to_all_voxels_when_no_body():
    hu = np.full((2, 3, 4), -100.0, dtype=np.float32)
    hu[0] = -50.0
    assert np.array_equal(hu_to_levels(hu, WINDOW, body_threshold_hu=0.0), hu_to_levels(hu, WINDOW))


def test_constant_volume_maps_to_zero():
    assert not hu_to_levels(np.full((3, 3, 3), 20.0, np.float32), WINDOW).any()


def test_linear_normalisation_without_equalisation():
    hu = np.array([-500.0, -135.0, 57.5, 250.0, 900.0], dtype=np.float32).reshape(1, 1, 5)
    levels = hu_to_levels(hu, WINDOW, equalize=False)
    # (v + 135) / 385 -> 0, 0, 0.5 (v = 58 after rounding: 193/385), 1, 1
    np.testing.assert_array_equal(levels.ravel(), [0, 0, round(255 * 193 / 385), 255, 255])
    np.testing.assert_allclose(linear_lut(WINDOW)[[0, -1]], [0.0, 1.0])


def test_to_levels_rounds():
    np.testing.assert_array_equal(to_levels(np.array([0.0, 0.5 / 255, 0.499, 1.0, 1.2])), [0, 0, 127, 255, 255])


def test_body_box_picks_largest_component_and_margin():
    hu = np.full((40, 50, 60), -1000.0, dtype=np.float32)
    hu[10:31, 5:45, 20:51] = 40.0  # body
    hu[0:3, 0:3, 0:3] = 100.0  # small bright object (e.g. a marker): not the body
    start, stop = body_box(hu, -500.0)
    # subsampled by 2: the box may grow by at most one voxel on each side, never shrink
    assert all(s <= e for s, e in zip(start, (10, 5, 20)))
    assert all(s >= e - 1 for s, e in zip(start, (10, 5, 20)))
    assert all(s >= e for s, e in zip(stop, (31, 45, 51)))
    assert all(s <= e + 1 for s, e in zip(stop, (31, 45, 51)))
    assert expand_box((10, 5, 20), (31, 45, 51), 3.0, (2.5, 1.0, 1.0), hu.shape) == ((8, 2, 17), (33, 48, 54))
    assert expand_box((1, 1, 1), (39, 49, 59), 10.0, (1.0, 1.0, 1.0), hu.shape) == ((0, 0, 0), (40, 50, 60))


def test_body_box_none_when_empty():
    assert body_box(np.full((4, 4, 4), -1000.0, np.float32), -500.0) is None


def test_yaml_mirrors_defaults():
    assert load_preprocess_config(ROOT / "configs" / "preprocess.yaml") == PreprocessConfig()
    assert load_preprocess_config(None) == PreprocessConfig()
    text = (ROOT / "configs" / "preprocess.yaml").read_text(encoding="utf-8")
    assert all(
        f"  {name}: " in text for name in ("min_spacing_mm", "max_spacing_mm", "max_extent_mm", "max_resampled_voxels")
    )  # every limit written out


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"window_hu": [250, -135]}, "low < high"),
        ({"target_spacing_mm": [1, 0, 1]}, "positive"),
        ({"histogram_bins": 1}, ">= 2"),
        ({"image_interpolation": "cubic"}, "cubic"),
        ({"crop_margin_mm": -1}, ">= 0"),
        ({"label_values": [1, 2]}, "including 0"),
        ({"window_hu": [-40000, 0]}, "must lie within"),
        ({"windw_hu": [0, 1]}, "unknown key"),
        ({"limits": {"min_spacing_mm": 30.0}}, r"0 < min_spacing_mm < max_spacing_mm, got 30.0 and 20.0"),
        ({"limits": {"max_extent_mm": 0.0}}, "max_extent_mm must be > 0"),
        ({"limits": {"max_resampled_voxels": 0}}, "max_resampled_voxels must be >= 1"),
        ({"limits": {"max_voxels": 1}}, r"limits: unknown key\(s\) max_voxels"),
    ],
)
def test_config_rejects_bad_values(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_dict(PreprocessConfig, bad)


def test_config_fingerprint_changes_with_values():
    assert config_fingerprint(PreprocessConfig()) == config_fingerprint(PreprocessConfig())
    assert config_fingerprint(PreprocessConfig()) != config_fingerprint(PreprocessConfig(histogram_bins=128))
