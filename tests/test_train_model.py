"""U-Net shapes, naming, dtype under mixed precision, and .keras round trip."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from training.config import check_patch_size
from training.model import build_unet


@pytest.mark.parametrize("shape", [(16, 32, 32), (8, 16, 24)])
def test_output_shape_and_softmax(shape):
    model = build_unet(depth=2, base_filters=4)
    x = np.random.default_rng(0).random((2, *shape, 1), dtype=np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, *shape, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


def test_every_layer_named_and_levels():
    model = build_unet(depth=3, base_filters=2)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert sum(n.endswith("_pool") for n in names) == 3
    assert sum(n.endswith("_upconv") for n in names) == 3
    assert model.get_layer("enc2_conv1").filters == 8 and model.get_layer("bottleneck_conv2").filters == 16
    assert model.input_shape == (None, None, None, None, 1)


def test_mixed_precision_output_is_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(depth=1, base_filters=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    y = model(np.zeros((1, 4, 4, 4, 1), np.float32))
    assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert keras.backend.standardize_dtype(y.dtype) == "float32"


def test_keras_round_trip_identical_predictions(tmp_path):
    from training.losses import GeneralizedDiceLoss
    from training.metrics import dice_metrics

    model = build_unet(depth=2, base_filters=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=GeneralizedDiceLoss(), metrics=dice_metrics())
    rng = np.random.default_rng(1)
    x = rng.random((1, 8, 16, 16, 1), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (1, 8, 16, 16))]
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(model.predict(x, verbose=0)), np.asarray(loaded.predict(x, verbose=0)))
    assert isinstance(loaded.loss, GeneralizedDiceLoss)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 1


def test_patch_size_check():
    check_patch_size((64, 128, 128), 4, "training")
    with pytest.raises(ValueError, match=r"\(20, 32, 32\).*2\*\*3 = 8"):
        check_patch_size((20, 32, 32), 3, "training")


# ---------------------------------------------------------------------------- norm, activation
def _numpy_group_norm(x: np.ndarray, groups: int, eps: float) -> np.ndarray:
    """Per sample and group of channels: zero mean, unit variance over (z, y, x, channels of the group)."""
    n, *spatial, c = x.shape
    g = x.reshape(n, *spatial, groups, c // groups)
    axes = (1, 2, 3, 5)
    mean = g.mean(axis=axes, keepdims=True)
    var = g.var(axis=axes, keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


@pytest.mark.parametrize(("norm", "groups"), [("instance", 4), ("group", 2)])
def test_per_sample_norms_match_numpy(norm, groups):
    from training.model import NORM_EPSILON, norm_layer

    rng = np.random.default_rng(3)
    # two samples of very different scale: a per-sample norm must not mix them (batch norm would)
    x = np.concatenate([rng.normal(0, 1, (1, 4, 6, 5, 4)), rng.normal(50, 9, (1, 4, 6, 5, 4))]).astype(np.float32)
    layer = norm_layer(norm, 4, groups, "n")
    for training in (True, False):  # the same statistics in training and inference
        got = np.asarray(layer(x, training=training))
        np.testing.assert_allclose(
            got, _numpy_group_norm(x, 4 if norm == "instance" else groups, NORM_EPSILON), atol=2e-4
        )


def test_norm_and_activation_options_build_and_round_trip(tmp_path):
    model = build_unet(depth=2, base_filters=4, norm="instance", activation="leaky_relu")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"GroupNormalization", "LeakyReLU"} <= kinds and "BatchNormalization" not in kinds
    assert model.get_layer("enc1_norm2").groups == 8  # instance: one group per channel (4 * 2 filters)
    x = np.random.default_rng(0).random((1, 8, 8, 8, 1), dtype=np.float32)
    model.save(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(keras.models.load_model(tmp_path / "m.keras")(x)))


def test_group_count_must_divide_the_filters():
    from training.config import ModelConfig

    with pytest.raises(ValueError, match="norm_groups must divide base_filters=12"):
        ModelConfig(base_filters=12, norm="group", norm_groups=8)
    with pytest.raises(ValueError, match="model.norm must be one of"):
        ModelConfig(norm="layer")


# ---------------------------------------------------------------------------- optimizer, poly schedule
def test_poly_learning_rate_values():
    from training.callbacks import poly_learning_rate

    assert poly_learning_rate(0.01, 0, 10) == 0.01
    assert poly_learning_rate(0.01, 5, 10) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_learning_rate(0.01, 9, 10) == pytest.approx(0.01 * 0.1**0.9)
    rates = [poly_learning_rate(1.0, e, 100) for e in range(100)]
    assert all(a > b > 0 for a, b in itertools.pairwise(rates))


def test_sgd_is_nesterov_with_the_configured_momentum_and_decay():
    from training.config import TrainConfig
    from training.optimizer import make_optimizer

    opt = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.01, momentum=0.9, weight_decay=3e-5))
    assert isinstance(opt, keras.optimizers.SGD) and opt.nesterov and opt.momentum == 0.9
    assert opt.weight_decay == pytest.approx(3e-5)
    assert isinstance(make_optimizer(TrainConfig()), keras.optimizers.Adam)
