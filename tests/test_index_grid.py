"""Grid arithmetic and exact class counts against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dataset.index.classify import box_sums, class_counts, is_foreground
from dataset.index.grid import axis_starts, grid_boxes, grid_starts, is_padded, stride_for


@pytest.mark.parametrize(
    ("extent", "patch", "stride", "expected"),
    [
        (64, 16, 16, [0, 16, 32, 48]),  # exact tiling
        (70, 16, 16, [0, 16, 32, 48, 54]),  # last patch flush with the end
        (16, 16, 16, [0]),
        (10, 16, 16, [-3]),  # thin axis: centred, padded both sides
        (11, 16, 16, [-3]),  # odd difference: one more voxel of padding after
        (40, 16, 8, [0, 8, 16, 24]),  # 50% overlap
    ],
)
def test_axis_starts(extent, patch, stride, expected):
    assert axis_starts(extent, patch, stride) == expected


def test_stride_and_padding():
    assert stride_for(64, 0.0) == 64 and stride_for(64, 0.5) == 32 and stride_for(4, 0.99) == 1
    assert is_padded((-3, 0, 0), (16, 8, 8), (10, 8, 8)) and not is_padded((0, 0, 0), (8, 8, 8), (8, 8, 8))
    assert is_padded((0, 0, 4), (8, 8, 8), (8, 8, 11))


def brute_counts(label, starts, patch):
    shape = tuple(len(s) for s in starts)
    n_p, n_t = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for idx in itertools.product(*[range(n) for n in shape]):
        sl = tuple(slice(max(0, s[i]), max(0, s[i] + p)) for s, i, p in zip(starts, idx, patch))
        block = label[sl]
        n_p[idx], n_t[idx] = (block == 1).sum(), (block == 2).sum()
    return n_p, n_t


@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [
        ((20, 33, 40), (8, 16, 16), 0.0),
        ((20, 33, 40), (8, 16, 16), 0.5),
        ((5, 33, 16), (8, 16, 16), 0.0),  # thin z: one padded patch
        ((300, 9, 9), (8, 4, 4), 0.25),  # many short segments along z
        ((600, 6, 6), (300, 4, 4), 0.0),  # segments of 300 > 255 slices: the uint16 path
    ],
)
def test_class_counts_match_brute_force(shape, patch, overlap):
    rng = np.random.default_rng(7)
    label = rng.choice(np.array([0, 1, 2], np.uint8), size=shape, p=[0.7, 0.2, 0.1])
    starts = grid_starts(shape, patch, overlap)
    n_p, n_t = class_counts(label, starts, patch)
    bp, bt = brute_counts(label, starts, patch)
    np.testing.assert_array_equal(n_p, bp)
    np.testing.assert_array_equal(n_t, bt)
    assert len(grid_boxes(starts)) == n_p.size


def test_box_sums_of_ones_are_box_volumes():
    ones = np.ones((10, 12, 14), bool)
    starts = grid_starts(ones.shape, (4, 4, 8), 0.0)  # z [0, 4, 6], y [0, 4, 8], x [0, 6]
    assert starts == ([0, 4, 6], [0, 4, 8], [0, 6])
    sums = box_sums(ones, starts, (4, 4, 8))
    assert sums.shape == (3, 3, 2) and (sums == 4 * 4 * 8).all()
    thin = np.ones((3, 4, 4), bool)  # one padded box: counts only the voxels inside
    assert box_sums(thin, grid_starts(thin.shape, (8, 4, 4)), (8, 4, 4)).tolist() == [[[48]]]


def test_is_foreground_rule():
    n_p, n_t = np.array([0, 3, 0, 5]), np.array([0, 0, 1, 1])
    assert is_foreground(n_p, n_t, 1, False).tolist() == [False, True, True, True]
    assert is_foreground(n_p, n_t, 4, False).tolist() == [False, False, False, True]
    assert is_foreground(n_p, n_t, 1, True).tolist() == [False, False, True, True]
