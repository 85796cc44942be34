"""tf.data pipeline: shapes, dtypes, ranges, alignment of augmented image and label, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from dataset.common.errors import UsageError
from dataset.contract.manifest import manifest_path, write_manifest
from dataset.contract.reader import PatchReader
from pancreas.testing.runs import make_synthetic_store
from pancreas.testing.store import write_case, write_catalog_for
from training.config import AugmentConfig, TrainConfig
from training.pipeline import (
    apply_augment,
    draw_augment_params,
    index_stream,
    load_rows,
    tile_corners,
    tile_starts,
    training_dataset,
    validation_dataset,
    validation_tiles,
)

PATCH = (8, 16, 16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_synthetic_store(
        root, n_cases=3, shape_zyx=(12, 24, 24), train_patch_zyx=PATCH, val_patch_zyx=(8, 24, 24), patches_per_case=4
    )
    return root


@pytest.fixture(scope="module")
def threshold_store(tmp_path_factory):
    """Label = thresholds of the image levels, on an asymmetric image: flips must keep them equal."""
    root = tmp_path_factory.mktemp("thr")
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in PATCH], indexing="ij")
    image = ((xx * 13 + yy * 5 + zz * 3) % 256).astype(np.uint8)
    label = np.where(image >= 200, 2, np.where(image >= 100, 1, 0)).astype(np.uint8)
    write_catalog_for(root, {"c": write_case(root, "c", label, image=image)})
    rows = [
        {
            "case_id": "c",
            "z0": 0,
            "y0": 0,
            "x0": 0,
            "dz": PATCH[0],
            "dy": PATCH[1],
            "dx": PATCH[2],
            "n_pancreas": int((label == 1).sum()),
            "n_tumour": int((label == 2).sum()),
            "foreground": 1,
            "padded": 0,
            "seed": s,
        }
        for s in range(6)
    ]
    write_manifest(manifest_path(root, "train", 0), rows)
    return root, image, label


def test_training_batches_shapes_dtypes_ranges(store):
    rows = load_rows(store, "train")
    ds = training_dataset(store, rows, TrainConfig(batch_size=2))
    for image, label in ds.take(3):
        assert image.shape == (2, *PATCH, 1) and image.dtype == tf.float32
        assert label.shape == (2, *PATCH) and label.dtype == tf.uint8
        x = image.numpy()
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert set(np.unique(label.numpy())) <= {0, 1, 2}


def test_validation_finite_in_order_and_unaugmented(store):
    rows = load_rows(store, "val")
    batches = list(validation_dataset(store, rows, batch_size=1))
    assert len(batches) == len(rows)
    reader = PatchReader(store)
    for (image, label), row in zip(batches, rows):
        want_image, want_label = reader.read(row)
        np.testing.assert_allclose(image.numpy()[0, ..., 0], want_image, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(label.numpy()[0], want_label)


def test_validation_tiles_are_the_patch_cut_to_the_training_window(store):
    rows = load_rows(store, "val")  # (8, 24, 24) patches, tiled by (8, 16, 16): y, x starts 0 and 8
    assert tile_corners((8, 24, 24), PATCH) == [(0, 0, 0), (0, 0, 8), (0, 8, 0), (0, 8, 8)]
    assert validation_tiles((8, 24, 24), PATCH) == 4 and validation_tiles((8, 24, 24), None) == 1
    batches = list(validation_dataset(store, rows, batch_size=4, tile_zyx=PATCH))
    assert len(batches) == len(rows)
    reader = PatchReader(store)
    for (image, label), row in zip(batches, rows):
        want_image, want_label = reader.read(row)
        assert image.shape == (4, *PATCH, 1)
        for k, (z, y, x) in enumerate(tile_corners((8, 24, 24), PATCH)):
            cut = np.s_[z : z + PATCH[0], y : y + PATCH[1], x : x + PATCH[2]]
            np.testing.assert_allclose(image.numpy()[k, ..., 0], want_image[cut], rtol=0, atol=1e-7)
            np.testing.assert_array_equal(label.numpy()[k], want_label[cut])


def test_image_summaries_predict_on_the_training_window_tiles():
    """A per-sample-normalised model's TensorBoard pictures: tiles of its training patch, averaged."""
    import keras

    from training.callbacks import tiled_probabilities

    seen = []

    class Probe(keras.layers.Layer):  # probabilities that depend on the tile's own mean, as a norm does
        def call(self, x):
            seen.append(tuple(x.shape[1:4]))
            p = keras.ops.sigmoid(x - keras.ops.mean(x, axis=(1, 2, 3), keepdims=True))
            return keras.ops.concatenate([p, 1.0 - p], axis=-1)

    inputs = keras.Input((None, None, None, 1))
    model = keras.Model(inputs, Probe()(inputs))
    seen.clear()  # the symbolic call that built the model
    image = np.random.default_rng(0).random((8, 24, 24)).astype(np.float32)
    probs = tiled_probabilities(model, image, PATCH)
    assert seen == [PATCH] * 4 and probs.shape == (8, 24, 24, 2)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)

    # Voxels only the first tile covers get its probabilities; where tiles 1 and 2 overlap, their mean.
    def one(z, y, x):
        crop = image[z : z + 8, y : y + 16, x : x + 16]
        return 1.0 / (1.0 + np.exp(-(crop - crop.mean())))

    np.testing.assert_allclose(probs[:, :8, :8, 0], one(0, 0, 0)[:, :8, :8], atol=1e-6)
    overlap = (one(0, 0, 0)[:, :8, 8:] + one(0, 0, 8)[:, :8, :8]) / 2
    np.testing.assert_allclose(probs[:, :8, 8:16, 0], overlap, atol=1e-6)
    seen.clear()
    assert tiled_probabilities(model, image, None).shape == (8, 24, 24, 2) and seen == [(8, 24, 24)]


def test_tile_starts_cover_the_axis_and_refuse_a_larger_tile(store):
    assert tile_starts(64, 32) == [0, 32] and tile_starts(48, 32) == [0, 16] and tile_starts(32, 32) == [0]
    assert tile_starts(96, 64) == [0, 32] and tile_starts(130, 64) == [0, 64, 66]
    with pytest.raises(ValueError, match="tile 33"):
        tile_starts(32, 33)
    with pytest.raises(UsageError, match="smaller than the training patch"):
        validation_dataset(store, load_rows(store, "val"), batch_size=1, tile_zyx=(16, 16, 16))


def test_index_stream_is_a_permutation_per_epoch():
    draws = [(int(d), int(i)) for d, i in index_stream(7, seed=3).take(21)]
    assert [d for d, _ in draws] == list(range(21))
    epochs = [[i for _, i in draws[k : k + 7]] for k in (0, 7, 14)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # reshuffled
    again = [int(i) for _, i in index_stream(7, seed=3).take(21)]
    assert again == [i for _, i in draws]


@pytest.mark.parametrize("axes", [(1, 2), (0, 1, 2)])
def test_flips_keep_image_and_label_aligned(threshold_store, axes):
    root, image, _label = threshold_store
    aug = AugmentConfig(flip_axes=axes, flip_probability=0.5, noise_probability=0.0, offset_probability=0.0)
    config = TrainConfig(batch_size=1, augment=aug)
    rows = load_rows(root, "train")
    seen = set()
    for x, y in training_dataset(root, rows, config).take(24):
        levels = np.rint(x.numpy()[0, ..., 0] * 255).astype(np.uint8)
        got_label = y.numpy()[0]
        expected = np.where(levels >= 200, 2, np.where(levels >= 100, 1, 0))
        np.testing.assert_array_equal(got_label, expected)
        for combo in _flip_combos(axes):
            if np.array_equal(levels, np.flip(image, combo) if combo else image):
                seen.add(combo)
                break
        else:
            raise AssertionError("augmented image is not a flip of the stored patch")
    assert len(seen) >= 3  # several flip combinations occur


def _flip_combos(axes):
    import itertools

    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def test_noise_and_offset_change_image_not_label():
    levels = tf.fill(PATCH, tf.constant(128, tf.uint8))
    label = tf.ones(PATCH, tf.uint8)
    aug = AugmentConfig(
        flip_probability=0.0, noise_probability=1.0, noise_std=0.05, offset_probability=1.0, offset_max=0.1
    )
    params = draw_augment_params(tf.constant([4, 2], tf.int64), aug)
    x, y = apply_augment(levels, label, params, aug)
    x = x.numpy()
    assert abs(x.mean() - 128 / 255 - float(params["offset"])) < 0.01 and 0.03 < x.std() < 0.07
    assert 0 < abs(float(params["offset"])) <= 0.1 and x.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), 1)
    x2, _ = apply_augment(levels, label, draw_augment_params(tf.constant([4, 2], tf.int64), aug), aug)
    np.testing.assert_array_equal(x, x2.numpy())  # stateless: same seed, same draw
    off = AugmentConfig(flip_probability=0.0, noise_probability=0.0, offset_probability=0.0)
    x3, _ = apply_augment(levels, label, draw_augment_params(tf.constant([4, 2], tf.int64), off), off)
    np.testing.assert_array_equal(x3.numpy(), np.float32(128) * np.float32(1 / 255))


def test_deterministic_for_a_seed(store):
    rows = load_rows(store, "train")
    config = TrainConfig(batch_size=2, seed=5)

    def first(cfg):
        return [b[0].numpy() for b in training_dataset(store, rows, cfg).take(4)]

    a, b = first(config), first(config)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = first(dataclasses.replace(config, seed=6))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
