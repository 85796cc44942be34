"""Batch renormalisation (``training.model.BatchRenormalization``) against NumPy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.config import ModelConfig, TrainConfig
from training.distribute import build_compiled_model
from training.model import BatchRenormalization

EPS = 1e-3


def _layer(
    x: np.ndarray, warmup_steps: int = 0, r_max: float = 3.0, d_max: float = 5.0, steps: float = 1e6
) -> BatchRenormalization:
    """A built layer; ``steps`` so far (1e6: its bias correction is 1, the moving statistics as set)."""
    layer = BatchRenormalization(momentum=0.9, epsilon=EPS, r_max=r_max, d_max=d_max, warmup_steps=warmup_steps)
    layer.build(x.shape)
    layer.steps.assign(steps)
    layer.moving_variance.assign(np.ones(x.shape[-1], np.float32))
    rng = np.random.default_rng(1)
    channels = x.shape[-1]
    layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
    layer.beta.assign(rng.uniform(-0.5, 0.5, channels).astype(np.float32))
    return layer


def _batch(seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Batch of 2 patches of 3 channels with per-channel means and spreads of their own."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 3, 4, 5, 3)) * np.array([1.0, 2.0, 0.5]) + np.array([0.3, -1.0, 2.0])
    return (x * scale + shift).astype(np.float32)


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=(0, 1, 2, 3)), x.var(axis=(0, 1, 2, 3))


def test_inference_uses_the_moving_statistics():
    x = _batch()
    layer = _layer(x)
    mm, mv = np.array([0.1, -0.2, 0.3], np.float32), np.array([0.5, 2.0, 1.5], np.float32)
    layer.moving_mean.assign(mm)
    layer.moving_variance.assign(mv)
    got = np.asarray(layer(x, training=False))
    want = (x - mm) / np.sqrt(mv + EPS) * np.asarray(layer.gamma) + np.asarray(layer.beta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(layer.steps) == 1e6  # inference changes nothing


def test_training_within_the_bounds_normalises_with_the_moving_statistics():
    """The defining property: unclipped, the training forward pass is the inference one."""
    x = _batch()
    layer = _layer(x)
    mean, var = _moments(x)
    mm, mv = (mean + 0.2).astype(np.float32), (var * 1.5).astype(np.float32)  # r and d well inside the bounds
    layer.moving_mean.assign(mm)
    layer.moving_variance.assign(mv)
    got = np.asarray(layer(x, training=True))
    want = (x - mm) / np.sqrt(mv + EPS) * np.asarray(layer.gamma) + np.asarray(layer.beta)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), 0.9 * mm + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), 0.9 * mv + 0.1 * var, rtol=1e-5)
    assert float(layer.steps) == 1e6 + 1


def test_the_moving_statistics_are_bias_corrected():
    """An untrained layer normalises with 0 and 1; after one step with the batch's own statistics."""
    x = _batch(shift=3.0)
    layer = BatchRenormalization(momentum=0.9, epsilon=EPS, warmup_steps=0)
    np.testing.assert_allclose(np.asarray(layer(x, training=False)), x / np.sqrt(1 + EPS), rtol=1e-5)
    mean, var = _moments(x)
    layer(x, training=True)
    got_mean, got_std = (np.asarray(v) for v in layer.moving_statistics())
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_std, np.sqrt(var + EPS), rtol=1e-5)


def test_clipping_bounds_the_correction():
    x = _batch(scale=10.0)  # batch spread 10x the moving statistics' (1): r clipped at r_max
    layer = _layer(x, r_max=2.0, d_max=0.5)
    mean, var = _moments(x)
    std = np.sqrt(var + EPS)
    r = np.clip(std / np.sqrt(1.0 + EPS), 0.5, 2.0)
    d = np.clip(mean / np.sqrt(1.0 + EPS), -0.5, 0.5)
    assert (r == 2.0).all() and (np.abs(d) == 0.5).any()  # the case this test is about
    got = np.asarray(layer(x, training=True))
    want = ((x - mean) / std * r + d) * np.asarray(layer.gamma) + np.asarray(layer.beta)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_warmup_is_batch_norm():
    """A fresh layer: plain batch norm for ``warmup_steps``, then corrected towards the moving
    statistics (a batch unlike the earlier ones moves far from its own batch norm)."""
    x = _batch(scale=10.0, shift=3.0)
    layer = BatchRenormalization(momentum=0.9, epsilon=EPS, warmup_steps=2)

    def batch_norm(v: np.ndarray) -> np.ndarray:  # gamma 1, beta 0: a fresh layer
        mean, var = _moments(v)
        return (v - mean) / np.sqrt(var + EPS)

    for _ in range(2):
        np.testing.assert_allclose(np.asarray(layer(x, training=True)), batch_norm(x), rtol=1e-4, atol=1e-4)
    other = _batch(seed=5, scale=0.5)  # spread 20x smaller, mean 3 lower than the moving statistics
    after = np.asarray(layer(other, training=True))
    assert np.abs(after - batch_norm(other)).max() > 1.0


def test_mixed_precision_keeps_float32_statistics():
    x = _batch()
    layer = BatchRenormalization(warmup_steps=0, dtype="mixed_bfloat16")
    out = layer(keras.ops.cast(x, "bfloat16"), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    mean, _ = _moments(x)
    np.testing.assert_allclose(np.asarray(layer.moving_statistics()[0]), mean, rtol=0.02, atol=0.02)
    small = keras.ops.cast(x[:1, :1, :2, :2], "bfloat16")
    for _ in range(299):
        layer(small, training=True)
    assert float(layer.steps) == 300.0  # a bfloat16 counter stops at 256


def test_the_correction_is_constant_for_the_gradient():
    """The gradient flows through the batch statistics with r and d held fixed (stop_gradient)."""
    import tensorflow as tf

    x = tf.constant(_batch())
    layer = _layer(x.numpy())
    mean, var = _moments(x.numpy())
    mm, mv = (mean + 0.2).astype(np.float32), (var * 1.5).astype(np.float32)
    layer.moving_mean.assign(mm)
    layer.moving_variance.assign(mv)
    r = np.sqrt(var + EPS) / np.sqrt(mv + EPS)
    d = (mean - mm) / np.sqrt(mv + EPS)
    weights = tf.constant(np.random.default_rng(3).normal(size=x.shape).astype(np.float32))
    gamma, beta = np.asarray(layer.gamma), np.asarray(layer.beta)

    def reference(v):  # r and d as constants
        m, s2 = tf.nn.moments(v, axes=[0, 1, 2, 3])
        return ((v - m) / tf.sqrt(s2 + EPS) * r + d) * gamma + beta

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = tf.reduce_sum(layer(x, training=True) * weights)
        want = tf.reduce_sum(reference(x) * weights)
    np.testing.assert_allclose(tape.gradient(got, x).numpy(), tape.gradient(want, x).numpy(), rtol=1e-3, atol=1e-5)


def test_the_lower_clip_bound():
    x = _batch(scale=0.01)  # batch spread a hundredth of the moving statistics' (1): r at 1/r_max
    layer = _layer(x, r_max=2.0)
    mean, var = _moments(x)
    got = np.asarray(layer(x, training=True))
    want = ((x - mean) / np.sqrt(var + EPS) * 0.5 + mean / np.sqrt(1.0 + EPS)) * np.asarray(layer.gamma)
    np.testing.assert_allclose(got, want + np.asarray(layer.beta), rtol=1e-4, atol=1e-4)


def test_a_frozen_layer_normalises_as_in_inference():
    x = _batch()
    layer = _layer(x)
    layer.trainable = False
    np.testing.assert_array_equal(np.asarray(layer(x, training=True)), np.asarray(layer(x, training=False)))
    assert float(layer.steps) == 1e6


def test_config_round_trip():
    layer = BatchRenormalization(momentum=0.95, epsilon=1e-4, r_max=2.5, d_max=4.0, warmup_steps=7, name="n")
    again = BatchRenormalization.from_config(layer.get_config())
    assert (again.momentum, again.epsilon, again.r_max, again.d_max, again.warmup_steps) == (0.95, 1e-4, 2.5, 4.0, 7)


@pytest.mark.slow
def test_replicas_share_the_moving_statistics():
    """Under MirroredStrategy (two logical CPUs) the replicas' updates are averaged."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent("""
        import json
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from training.model import BatchRenormalization
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            layer = BatchRenormalization(momentum=0.5, warmup_steps=0)
            layer.build((None, 2, 2, 2, 1))
        x = np.stack([np.zeros((2, 2, 2, 1)), np.full((2, 2, 2, 1), 10.0)]).astype(np.float32)
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: x[ctx.replica_id_in_sync_group : ctx.replica_id_in_sync_group + 1]
        )
        strategy.run(tf.function(lambda v: layer(v, training=True)), args=(values,))
        local = lambda v: [float(t.numpy().ravel()[0]) for t in strategy.experimental_local_results(v.value)]
        print("RESULT", json.dumps({"mean": local(layer.moving_mean), "steps": local(layer.steps)}))
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.split("RESULT", 1)[1])
    assert result == {"mean": [2.5, 2.5], "steps": [1.0, 1.0]}  # 0.5 * mean(0, 10), on both replicas


def test_a_renorm_model_trains_saves_and_predicts_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr("training.model.RENORM_WARMUP_STEPS", 1)  # the correction on from step 2 of 3
    config = TrainConfig(model=ModelConfig(depth=2, base_filters=4, norm="batch_renorm"), batch_size=2)
    keras.utils.set_random_seed(0)
    model = build_compiled_model(config)
    assert sum(isinstance(layer, BatchRenormalization) for layer in model.layers) == 2 * 3 + 2 * 2  # 2 per block
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 16, 16, 1), dtype=np.float32)
    y = rng.integers(0, 3, (2, 16, 16, 16)).astype(np.uint8)
    model.fit(x, y, batch_size=2, epochs=3, verbose=0)
    path = tmp_path / "renorm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded.predict(x, verbose=0)), np.asarray(model.predict(x, verbose=0)))
    steps = [float(layer.steps) for layer in loaded.layers if isinstance(layer, BatchRenormalization)]
    assert steps == pytest.approx([3.0] * len(steps))
