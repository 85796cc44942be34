"""Generalized Dice / cross-entropy vs hand-computed and brute-force values."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.losses import (
    CrossEntropyLoss,
    DiceCrossEntropyLoss,
    GeneralizedDiceLoss,
    cross_entropy_loss,
    generalized_dice_loss,
)

# 4 voxels, 3 classes (one sample), shape (1, 4, 3)
PROBS = np.array([[[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.2, 0.7, 0.1], [0.1, 0.5, 0.4]]], np.float32)


def one_hot(labels, n=3):
    return np.eye(n, dtype=np.float32)[np.asarray(labels)]


def gdl(y, p, **kw):
    return np.asarray(generalized_dice_loss(y, p, smooth_nr=0.0, smooth_dr=0.0, **kw))


def brute_gdl(y, p, per_sample, exclude_background=False):
    """Straight loops over the formula, MONAI's absent-class rule, normalised weights."""
    if exclude_background:
        y, p = y[..., 1:], p[..., 1:]
    groups = [(y[i : i + 1], p[i : i + 1]) for i in range(len(y))] if per_sample else [(y, p)]
    out = []
    for yy, pp in groups:
        c = yy.shape[-1]
        r = yy.reshape(-1, c).astype(np.float64)
        q = pp.reshape(-1, c).astype(np.float64)
        counts = r.sum(0)
        w = np.array([1 / n**2 if n > 0 else np.inf for n in counts])
        finite = w[np.isfinite(w)]
        w[~np.isfinite(w)] = finite.max() if finite.size else 1.0
        num = 2 * sum(w[k] * (r[:, k] * q[:, k]).sum() for k in range(c))
        den = sum(w[k] * (r[:, k].sum() + q[:, k].sum()) for k in range(c))
        out.append(1 - num / den)
    return np.array(out)


def test_hand_computed_with_absent_tumour():
    # ground counts (3, 1, 0): raw weights (1/9, 1, inf -> 1), normalised (1, 9, 9) / 19
    # intersections (1.6, 0.5, 0); predicted sums (1.7, 1.5, 0.8)
    y = one_hot([[0, 0, 0, 1]])
    expected = 1 - (2 * (1.6 + 9 * 0.5) / 19) / ((4.7 + 9 * 2.5 + 9 * 0.8) / 19)
    assert gdl(y, PROBS)[0] == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(1 - 12.2 / 34.4)


def test_hand_computed_equal_weights():
    # ground counts (2, 2, 0): all weights 1/4 -> loss = 1 - 2 * 2.6 / 8
    y = one_hot([[0, 0, 1, 1]])
    assert gdl(y, PROBS)[0] == pytest.approx(1 - 5.2 / 8, rel=1e-5)


def test_perfect_prediction_is_zero():
    labels = np.array([[0, 0, 1, 2, 1, 0]])
    y = one_hot(labels)
    assert np.asarray(generalized_dice_loss(y, y))[0] == pytest.approx(0.0, abs=1e-6)
    assert np.asarray(generalized_dice_loss(y, y, reduction="sample"))[0] == pytest.approx(0.0, abs=1e-6)


def test_background_only_patch_is_not_swamped():
    # The seed's fixed 1e6 weight for absent classes made this loss ~1; here it is small.
    y = one_hot(np.zeros((1, 1000), int))
    p = np.tile(np.array([0.98, 0.01, 0.01], np.float32), (1, 1000, 1))
    loss = float(np.asarray(generalized_dice_loss(y, p))[0])
    assert 0 < loss < 0.05


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("exclude_background", [False, True])
def test_matches_brute_force(per_sample, exclude_background):
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=(3, 4, 5, 6), p=[0.8, 0.15, 0.05])
    labels[1] = 0  # a background-only sample
    logits = rng.normal(size=(3, 4, 5, 6, 3))
    p = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    y = one_hot(labels)
    got = gdl(y, p, reduction="sample" if per_sample else "batch", exclude_background=exclude_background)
    np.testing.assert_allclose(got, brute_gdl(y, p, per_sample, exclude_background), rtol=1e-5)
    assert got.shape == ((3,) if per_sample else (1,))


def test_class_indices_equal_one_hot():
    labels = np.array([[0, 0, 0, 1]], np.uint8)
    np.testing.assert_allclose(
        np.asarray(generalized_dice_loss(labels, PROBS)),
        np.asarray(generalized_dice_loss(one_hot(labels), PROBS)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(cross_entropy_loss(labels, PROBS)), np.asarray(cross_entropy_loss(one_hot(labels), PROBS)), rtol=1e-6
    )
    assert float(GeneralizedDiceLoss()(labels, PROBS)) == pytest.approx(
        float(GeneralizedDiceLoss()(one_hot(labels), PROBS))
    )


def test_nothing_present_costs_false_positives():
    # exclude_background on a background-only sample: weights fall back to 1
    y = one_hot([[0, 0, 0, 0]])
    assert gdl(y, PROBS, exclude_background=True)[0] == pytest.approx(1.0)


def test_cross_entropy_hand_computed():
    y = one_hot([[0, 0, 1, 1]])
    expected = -(np.log(0.8) + np.log(0.6) + np.log(0.7) + np.log(0.5)) / 4
    assert np.asarray(cross_entropy_loss(y, PROBS))[0] == pytest.approx(expected, rel=1e-5)


def test_loss_classes_reduce_and_round_trip():
    y = one_hot([[0, 0, 0, 1]])
    for loss in (
        GeneralizedDiceLoss(reduction_mode="sample", smooth_nr=0, smooth_dr=0),
        CrossEntropyLoss(),
        DiceCrossEntropyLoss(ce_weight=0.5),
    ):
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
        assert float(clone(y, PROBS)) == pytest.approx(float(loss(y, PROBS)), rel=1e-6)
    dce = DiceCrossEntropyLoss(ce_weight=0.5, smooth_nr=0, smooth_dr=0)
    expected = gdl(y, PROBS)[0] + 0.5 * np.asarray(cross_entropy_loss(y, PROBS))[0]
    assert float(dce(y, PROBS)) == pytest.approx(expected, rel=1e-5)
