"""U-Net shapes, naming, dtype under mixed precision, and .keras round trip."""

from __future__ import annotations

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
