"""Elastic augmentation: parameters drawn apart from the deterministic application."""

from __future__ import annotations

import numpy as np

from dataset.index.augment import ElasticParams, apply, make_params
from dataset.index.config import ElasticConfig
from pancreas.testing.store import blob_label, image_for

CFG = ElasticConfig()


def patch():
    label = blob_label((16, 32, 32), (8, 16, 16), (5, 10, 10), tumour_radius=3)
    return image_for(label, 1), label


def test_zero_displacement_is_identity():
    image, label = patch()
    params = ElasticParams(np.zeros((3, 3, 3, 3)))
    out_image, out_label = apply(image, label, params, CFG)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)


def test_deformation_keeps_labels_range_and_foreground():
    image, label = patch()
    params = make_params(np.random.default_rng(3), CFG)
    assert params.displacement.shape == (3, 3, 3, 3)
    out_image, out_label = apply(image, label, params, CFG)
    assert out_image.dtype == np.uint8 and out_label.dtype == np.uint8
    assert set(np.unique(out_label)) <= {0, 1, 2} and 2 in out_label
    assert not np.array_equal(out_label, label)  # it did deform
    fg, out_fg = label > 0, out_label > 0
    assert (fg & out_fg).sum() >= 0.6 * fg.sum()  # most foreground survives
    assert 0.7 * fg.sum() <= out_fg.sum() <= 1.3 * fg.sum()
    assert image.min() <= out_image.min() and out_image.max() <= image.max()  # linear: no overshoot


def test_same_seed_same_params_and_margin_crops():
    a = make_params(np.random.default_rng(5), CFG).displacement
    np.testing.assert_array_equal(a, make_params(np.random.default_rng(5), CFG).displacement)
    image, label = patch()
    out_image, out_label = apply(image, label, ElasticParams(a), CFG, margin=2)
    assert out_image.shape == out_label.shape == (12, 28, 28)
