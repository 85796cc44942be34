"""Online spatial and intensity augmentation (training.augment, drawn in training.pipeline):
image and label moved together, classes kept, each transform reproducible from its seed."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_train_store

from training import augment
from training.config import AugmentConfig, TrainConfig
from training.pipeline import apply_augment, draw_augment_params, load_rows, training_dataset

RNG = np.random.default_rng(3)
ALL_ON = AugmentConfig(
    rotation_probability=1.0,
    scale_probability=1.0,
    gamma_probability=1.0,
    blur_probability=1.0,
    lowres_probability=1.0,
)


def _cube_label(shape=(4, 32, 32)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[:, 4:14, 18:28] = 1
    label[:, 8:11, 21:25] = 2
    return label


def test_a_quarter_turn_moves_image_and_label_to_the_known_place():
    label = _cube_label()
    image = label.astype(np.float32) / 2
    rotated_image, rotated_label = augment.rotate_scale(tf.constant(image), tf.constant(label), math.pi / 2, 1.0)
    np.testing.assert_array_equal(rotated_label.numpy(), np.rot90(label, 1, axes=(1, 2)))
    np.testing.assert_allclose(rotated_image.numpy(), np.rot90(image, 1, axes=(1, 2)), atol=1e-6)


def test_any_rotation_and_scale_keeps_the_classes_and_the_label_on_the_image():
    label = _cube_label()
    image = label.astype(np.float32) / 2
    for angle, scale in ((0.2, 0.85), (-0.26, 1.25), (0.1, 1.0)):
        out_image, out_label = augment.rotate_scale(tf.constant(image), tf.constant(label), angle, scale)
        out_label = out_label.numpy()
        assert out_label.dtype == np.uint8 and set(np.unique(out_label)) <= {0, 1, 2}
        # bilinear image and nearest label agree wherever the image is not between two classes
        agree = np.abs(out_image.numpy() * 2 - out_label) < 0.25
        assert agree.mean() > 0.95
        assert abs(int((out_label > 0).sum()) - int((label > 0).sum()) * scale**2) < 0.15 * (label > 0).sum() * scale**2


def test_magnification_grows_the_object_by_the_square_of_the_scale():
    label = np.zeros((2, 64, 64), np.uint8)
    label[:, 24:40, 24:40] = 1  # 16 x 16 about the centre
    _, out = augment.rotate_scale(tf.zeros((2, 64, 64)), tf.constant(label), 0.0, 1.25)
    assert int((out.numpy()[0] == 1).sum()) == pytest.approx(16 * 16 * 1.25**2, rel=0.1)


def test_blur_keeps_a_constant_and_smooths_noise():
    flat = tf.fill((8, 16, 16), 0.4)
    np.testing.assert_allclose(augment.gaussian_blur(flat, 0.8, 3).numpy(), 0.4, atol=1e-6)
    noise = tf.constant(RNG.random((8, 16, 16), dtype=np.float32))
    blurred = augment.gaussian_blur(noise, 1.0, 3).numpy()
    assert blurred.shape == (8, 16, 16) and blurred.std() < 0.5 * noise.numpy().std()
    np.testing.assert_allclose(augment.gaussian_kernel(1.0, 3).numpy().sum(), 1.0, rtol=1e-6)


def test_low_resolution_keeps_the_shape_and_a_constant_and_loses_detail():
    flat = tf.fill((8, 16, 16), 0.7)
    np.testing.assert_allclose(augment.simulate_low_resolution(flat, 0.5).numpy(), 0.7, atol=1e-5)
    checker = np.indices((8, 16, 16)).sum(0) % 2
    low = augment.simulate_low_resolution(tf.constant(checker.astype(np.float32)), 0.5).numpy()
    assert low.shape == (8, 16, 16)
    assert np.abs(low - checker).mean() > 0.2  # the one-voxel pattern cannot survive halving


def test_gamma_is_a_power_on_the_unit_interval():
    x = tf.constant([0.0, 0.25, 1.0, 1.02])
    np.testing.assert_allclose(augment.gamma(x, 2.0).numpy(), [0.0, 0.0625, 1.0, 1.0], rtol=1e-6)


def test_new_draws_leave_the_flip_noise_and_offset_draws_as_they_were():
    seed = tf.constant([11, 4], tf.int64)
    old = draw_augment_params(seed, AugmentConfig())
    new = draw_augment_params(seed, ALL_ON)
    for key in ("flip", "noise", "offset", "noise_seed"):
        np.testing.assert_array_equal(old[key].numpy(), new[key].numpy())
    assert (float(old["angle"]), float(old["scale"]), float(old["gamma"])) == (0.0, 1.0, 1.0)
    assert (float(old["blur_sigma"]), float(old["lowres_zoom"])) == (0.0, 1.0)
    assert abs(float(new["angle"])) <= math.radians(15) and 0.85 <= float(new["scale"]) <= 1.25
    assert 0.7 <= float(new["gamma"]) <= 1.5 and 0.5 <= float(new["blur_sigma"]) <= 1.0
    assert 0.5 <= float(new["lowres_zoom"]) <= 1.0


def test_each_transform_is_reproducible_from_its_seed_and_keeps_classes():
    levels = tf.constant(RNG.integers(0, 256, (8, 32, 32)).astype(np.uint8))
    label = tf.constant(_cube_label((8, 32, 32)))
    for key in ("rotation", "scale", "gamma", "blur", "lowres"):
        config = AugmentConfig(flip_axes=(), **{f"{key}_probability": 1.0})
        runs = [
            apply_augment(levels, label, draw_augment_params(tf.constant([s, 0], tf.int64), config), config)
            for s in (1, 1, 2)
        ]
        np.testing.assert_array_equal(runs[0][0].numpy(), runs[1][0].numpy())
        np.testing.assert_array_equal(runs[0][1].numpy(), runs[1][1].numpy())
        assert not np.array_equal(runs[0][0].numpy(), runs[2][0].numpy()), key
        image = runs[0][0].numpy()
        assert image.min() >= 0.0 and image.max() <= 1.0, key
        assert set(np.unique(runs[0][1].numpy())) <= {0, 1, 2}
        if key not in ("rotation", "scale"):  # intensity transforms never touch the label
            np.testing.assert_array_equal(runs[0][1].numpy(), label.numpy())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scale_range", (1.2, 0.9)),
        ("gamma_range", (1.1, 1.5)),
        ("lowres_zoom", (0.5, 1.5)),
        ("blur_sigma", (0.0, 1.0)),
        ("rotation_max_degrees", 200.0),
        ("blur_probability", 1.5),
    ],
)
def test_bad_ranges_are_refused(field, value):
    with pytest.raises(ValueError, match=f"augment.{field}"):
        AugmentConfig(**{field: value})


def test_the_stream_with_every_transform_is_reproducible_and_resumable(tmp_path):
    store = tiny_train_store(tmp_path / "store")
    rows = load_rows(store, "train")
    config = TrainConfig(batch_size=2, seed=3, augment=ALL_ON)
    first = [(x.numpy(), y.numpy()) for x, y in training_dataset(store, rows, config).take(4)]
    again = [(x.numpy(), y.numpy()) for x, y in training_dataset(store, rows, config).take(4)]
    resumed = [(x.numpy(), y.numpy()) for x, y in training_dataset(store, rows, config, skip_batches=2).take(2)]
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    for (x, y), (x2, y2) in zip(first[2:], resumed, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    plain = [
        x.numpy()
        for x, _ in training_dataset(store, rows, dataclasses.replace(config, augment=AugmentConfig())).take(4)
    ]
    assert any(not np.array_equal(a, b) for (a, _), b in zip(first, plain, strict=True))


def test_a_blur_wider_than_the_patch_is_refused_in_one_line():
    from dataset.common.errors import UsageError
    from training.preflight import check_blur_fits

    check_blur_fits(TrainConfig(augment=AugmentConfig(blur_probability=0.2)), (8, 16, 16))
    wide = TrainConfig(augment=AugmentConfig(blur_probability=0.2, blur_sigma=(0.5, 3.0)))
    check_blur_fits(dataclasses.replace(wide, augment=AugmentConfig(blur_sigma=(0.5, 3.0))), (8, 16, 16))  # off
    with pytest.raises(UsageError, match=r"half-width 9 voxels, not below the training patch's smallest edge 8"):
        check_blur_fits(wide, (8, 16, 16))
