"""Deep supervision: the heads, the weighted loss against a hand computation, and that a saved
model predicts exactly as its full-resolution head (what predict, export and --init-from use)."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from dataset.common.modelfiles import load_keras_model, unet_architecture
from training.config import ModelConfig, TrainConfig
from training.distribute import build_compiled_model
from training.finetune import InitWeights, apply_init_weights
from training.losses import (
    cross_entropy_loss,
    deep_supervision_loss,
    deep_supervision_weights,
    downsample_labels,
)
from training.model import DeepSupervisionUNet, build_unet

RNG = np.random.default_rng(7)


def _config(**model) -> TrainConfig:
    return TrainConfig(model=ModelConfig(depth=3, base_filters=4, deep_supervision=True, **model), jit_compile=False)


def test_weights_halve_per_level_and_sum_to_one():
    assert deep_supervision_weights(1) == [1.0]
    assert np.allclose(deep_supervision_weights(3), [4 / 7, 2 / 7, 1 / 7])


def test_heads_on_decoder_levels_one_to_depth_minus_two():
    model = build_unet(depth=4, base_filters=2, deep_supervision=True)
    assert isinstance(model, DeepSupervisionUNet)
    out = model(np.zeros((1, 32, 32, 32, 1), np.float32))
    assert [tuple(o.shape[1:4]) for o in out] == [(32, 32, 32), (16, 16, 16), (8, 8, 8)]
    for probs in out:
        assert np.allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)
    assert len(build_unet(depth=3, base_filters=2, deep_supervision=True).outputs) == 2
    with pytest.raises(ValueError, match="depth >= 3"):
        ModelConfig(depth=2, deep_supervision=True)


def test_labels_downsampled_by_stride_keep_their_classes():
    y = RNG.integers(0, 3, (2, 8, 8, 8)).astype(np.uint8)
    down = np.asarray(downsample_labels(y, 2))
    assert down.shape == (2, 2, 2, 2)
    assert np.array_equal(down, y[:, ::4, ::4, ::4])
    assert set(np.unique(down)) <= set(np.unique(y))


def _numpy_ce(y, p):
    onehot = np.eye(p.shape[-1])[y]
    return float(np.mean(-np.sum(onehot * np.log(np.clip(p, 1e-7, 1.0)), -1)))


def test_loss_is_the_hand_computed_weighted_sum():
    y = RNG.integers(0, 3, (1, 4, 4, 4))
    p0 = RNG.dirichlet(np.ones(3), (1, 4, 4, 4)).astype(np.float32)
    p1 = RNG.dirichlet(np.ones(3), (1, 2, 2, 2)).astype(np.float32)
    got = float(deep_supervision_loss(cross_entropy_loss, y, [p0, p1]))
    want = (2 / 3) * _numpy_ce(y, p0) + (1 / 3) * _numpy_ce(y[:, ::2, ::2, ::2], p1)
    assert got == pytest.approx(want, rel=1e-5)


def test_compiled_model_trains_on_every_head_and_logs_the_top_heads_dice():
    model = build_compiled_model(_config())
    x = RNG.random((2, 16, 16, 16, 1), dtype=np.float32)
    y = RNG.integers(0, 3, (2, 16, 16, 16)).astype(np.uint8)
    history = model.fit(x, y, epochs=1, batch_size=2, verbose=0, validation_data=(x, y))
    assert set(history.history) == {
        "loss",
        "dice_pancreas",
        "dice_tumour",
        "val_loss",
        "val_dice_pancreas",
        "val_dice_tumour",
    }
    outputs = model(x, training=False)
    by_hand = float(deep_supervision_loss(model.loss, y, list(outputs)))
    assert model.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(by_hand, rel=1e-4)


def test_saved_model_predicts_exactly_as_its_full_resolution_head(tmp_path):
    model = build_compiled_model(_config(norm="instance"))
    x = RNG.random((1, 16, 16, 16, 1), dtype=np.float32)
    model.fit(x, RNG.integers(0, 3, (1, 16, 16, 16)).astype(np.uint8), epochs=1, verbose=0)
    path = tmp_path / "ds.keras"
    model.save(path)
    loaded = load_keras_model(path, RuntimeError)
    assert len(loaded.outputs) == 1
    assert np.array_equal(loaded.predict_on_batch(x), np.asarray(model(x, training=False)[0]))
    assert unet_architecture(loaded) == {"model.depth": 3, "model.base_filters": 4, "n_classes": 3, "input channels": 1}
    resumed = keras.models.load_model(path)  # the resume path keeps every head and the loss
    assert isinstance(resumed, DeepSupervisionUNet) and len(resumed.outputs) == 2


def test_init_from_copies_the_network_and_leaves_new_heads_fresh():
    plain = build_unet(depth=3, base_filters=4)
    weights = {layer.name: layer.get_weights() for layer in plain.layers if layer.weights}
    init = InitWeights(SimpleNamespace(model_path="plain.keras", checkpoint=None), weights, {})
    target = build_unet(depth=3, base_filters=4, deep_supervision=True)
    apply_init_weights(target, init)
    for name in ("enc0_conv1", "head_conv", "dec0_upconv"):
        for got, want in zip(target.get_layer(name).get_weights(), weights[name], strict=True):
            assert np.array_equal(got, want)
    x = RNG.random((1, 8, 8, 8, 1), dtype=np.float32)
    assert np.allclose(np.asarray(target(x)[0]), np.asarray(plain(x)), atol=1e-6)
    # and back: a deep-supervision source into a plain model copies everything but its extra head
    source = {layer.name: layer.get_weights() for layer in target.layers if layer.weights}
    back = build_unet(depth=3, base_filters=4)
    apply_init_weights(back, InitWeights(SimpleNamespace(model_path="ds.keras", checkpoint=None), source, {}))
    assert np.allclose(np.asarray(back(x)), np.asarray(plain(x)), atol=1e-6)
