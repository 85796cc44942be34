"""Sliding-window helpers on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from prediction.sliding import (
    Stitcher,
    gaussian_weights,
    mirror_combinations,
    pad_to_window,
    window_grid,
    window_starts,
)


@pytest.mark.parametrize(
    ("size", "window", "overlap", "expected"),
    [
        (10, 10, 0.5, [0]),
        (12, 8, 0.5, [0, 4]),  # one step of 4 is exactly window/2
        (13, 8, 0.5, [0, 2, 5]),  # needs 3 windows; steps 2.5 -> rounded 0, 2(.5), 5
        (100, 64, 0.5, [0, 18, 36]),  # 36 > 32 = window/2: needs a middle window
        (129, 64, 0.5, [0, 22, 43, 65]),  # 65 + 64 = 129: flush with the end
        (20, 4, 0.0, [0, 4, 8, 12, 16]),
    ],
)
def test_window_starts_hand_checked(size, window, overlap, expected):
    assert window_starts(size, window, overlap) == expected


@pytest.mark.parametrize("size", range(8, 60, 7))
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_window_starts_cover_volume_with_enough_overlap(size, overlap):
    window = 8
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0 and starts[-1] + window == size
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all()
    steps = np.diff(starts)
    assert np.all(steps >= 1) and np.all(steps <= window * (1 - overlap) + 1e-9 + 0.5)


def test_window_larger_than_volume_is_an_error():
    with pytest.raises(ValueError, match="window 9"):
        window_starts(8, 9, 0.5)


def test_window_grid_is_the_product():
    grid = window_grid((12, 8, 13), (8, 8, 8), 0.5)
    assert len(grid) == 2 * 1 * 3
    assert grid[0] == (0, 0, 0) and grid[-1] == (4, 0, 5)


def test_gaussian_weights_positive_peak_and_symmetry():
    w = gaussian_weights((8, 16, 5), 0.125)
    assert w.dtype == np.float32 and w.shape == (8, 16, 5)
    assert np.all(w > 0)
    assert w.max() == pytest.approx(1.0)
    assert np.allclose(w, w[::-1, ::-1, ::-1])
    # sigma = 2 along y: the profile falls by exp(-0.5 * (d / 2)^2) from the centre (7.5)
    profile = w[3, :, 2] / w[3, :, 2].max()
    d = np.arange(16) - 7.5
    expected = np.exp(-0.5 * (d / 2.0) ** 2)
    assert np.allclose(profile, expected / expected.max(), rtol=1e-5)


def test_pad_to_window_pads_only_at_the_end():
    v = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    padded, shape = pad_to_window(v, (6, 2, 5))
    assert shape == (3, 4, 5) and padded.shape == (6, 4, 5)
    assert np.array_equal(padded[:3], v) and not padded[3:].any()
    same, _ = pad_to_window(v, (2, 2, 2))
    assert same is v


def test_stitched_weight_map_normalises_and_constant_model_is_reproduced():
    shape, window = (13, 12, 9), (8, 8, 8)
    stitcher = Stitcher(3, shape, window, 0.125)
    constant = np.array([0.2, 0.3, 0.5], np.float32).reshape(3, 1, 1, 1)
    grid = window_grid(shape, window, 0.5)
    for start in grid:
        stitcher.add(np.broadcast_to(constant, (3, *window)), start)
    # the weight map equals the brute-force sum of the Gaussian at every start
    brute = np.zeros(shape, np.float64)
    g = gaussian_weights(window, 0.125)
    for z, y, x in grid:
        brute[z : z + 8, y : y + 8, x : x + 8] += g
    assert np.allclose(stitcher.norm, brute, rtol=1e-6)
    probs = stitcher.result()
    assert np.allclose(probs, constant, atol=1e-6)
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-6)


def test_mirror_combinations():
    assert mirror_combinations(()) == [()]
    assert mirror_combinations((0, 2)) == [(), (0,), (2,), (0, 2)]
    assert len(mirror_combinations((0, 1, 2))) == 8
