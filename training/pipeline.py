"""tf.data input pipeline over the index manifests.

Only the HDF5 read runs in Python; augmentation is graph ops with stateless seeds. Why each step is
where it is: docs/explanation/internals.md#the-input-pipeline-trainingpipelinepy.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf

from dataset.common.errors import UsageError
from dataset.contract.manifest import manifest_path, read_manifest
from dataset.contract.reader import PatchReader
from dataset.contract.store import IMAGE_LEVELS
from training import augment
from training.config import AugmentConfig, TrainConfig

log = logging.getLogger(__name__)

N_CLASSES = 3
AUTOTUNE = tf.data.AUTOTUNE
_EPOCH_MIX = 1_000_003


def load_rows(store: str | Path, split: str, fold: int = 0) -> list[dict[str, Any]]:
    """Rows of ``STORE/index/fold_<fold>/<split>.csv``; an empty manifest is an error."""
    path = manifest_path(store, split, fold)
    rows = read_manifest(path)
    if not rows:
        raise UsageError(f"{path}: the {split} manifest has no rows; rerun `pancreas index`")
    return rows


def patch_size_of(rows: Sequence[dict[str, Any]], what: str) -> tuple[int, int, int]:
    """The one (dz, dy, dx) every row of a manifest shares."""
    sizes = {(int(r["dz"]), int(r["dy"]), int(r["dx"])) for r in rows}
    if len(sizes) != 1:
        raise UsageError(f"{what} manifest mixes patch sizes {sorted(sizes)}; expected one")
    return sizes.pop()


class _LevelsReader:
    """The only Python in the pipeline: row index -> (uint8 levels, uint8 label)."""

    def __init__(self, reader: PatchReader, rows: Sequence[dict[str, Any]]) -> None:
        self.reader = reader
        self.rows = list(rows)
        self.lock = threading.Lock()  # h5py serialises anyway; this keeps the handle cache sane

    def __call__(self, index):
        with self.lock:
            return self.reader.read_levels(self.rows[int(index)])


def _read_map(source: _LevelsReader, patch_size: tuple[int, int, int]):
    def read(index):
        levels, label = tf.numpy_function(source, [index], [tf.uint8, tf.uint8], name="read_patch")
        levels.set_shape(patch_size)
        label.set_shape(patch_size)
        return levels, label

    return read


def to_intensity(levels):
    """uint8 levels -> float32 in [0, 1] (``dataset.contract.store.levels_to_intensity`` in TF)."""
    return tf.cast(levels, tf.float32) * (1.0 / IMAGE_LEVELS)


def _uniform_in(u, pair: tuple[float, float]):
    return pair[0] + u * (pair[1] - pair[0])


def draw_spatial_intensity_params(seed, config: AugmentConfig) -> dict[str, tf.Tensor]:
    """The draws of rotation, scaling, gamma, blur and low resolution from their own seed, so
    adding them left the flips', noise's and offset's draws (and older runs) as they were.

    A transform not drawn gets its identity value (angle 0, scale 1, gamma 1, sigma 0, zoom 1).
    """
    u = tf.random.stateless_uniform([11], seed=seed)
    angle = math.radians(config.rotation_max_degrees) * (2.0 * u[5] - 1.0)
    low, high = config.gamma_range
    gamma = tf.where(u[7] < 0.5, low + 2.0 * u[7] * (1.0 - low), 1.0 + (2.0 * u[7] - 1.0) * (high - 1.0))
    return {
        "angle": tf.where(u[0] < config.rotation_probability, angle, 0.0),
        "scale": tf.where(u[1] < config.scale_probability, _uniform_in(u[6], config.scale_range), 1.0),
        "gamma": tf.where(u[2] < config.gamma_probability, gamma, 1.0),
        "blur_sigma": tf.where(u[3] < config.blur_probability, _uniform_in(u[8], config.blur_sigma), 0.0),
        "lowres_zoom": tf.where(u[4] < config.lowres_probability, _uniform_in(u[9], config.lowres_zoom), 1.0),
    }


def draw_augment_params(seed, config: AugmentConfig) -> dict[str, tf.Tensor]:
    """All random choices of one draw from a stateless seed (shape (2,) int)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    u = tf.random.stateless_uniform([5], seed=seeds[0])
    return {
        **draw_spatial_intensity_params(seeds[3], config),
        "flip": u[:3] < config.flip_probability,  # per axis (z, y, x); only flip_axes used
        "noise": u[3] < config.noise_probability,
        "offset": tf.where(
            tf.random.stateless_uniform([], seed=seeds[1]) < config.offset_probability,
            (2.0 * u[4] - 1.0) * config.offset_max,
            0.0,
        ),
        "noise_seed": seeds[2],
    }


def apply_augment(levels, label, params: dict[str, tf.Tensor], config: AugmentConfig):
    """Deterministic application to uint8 ``levels``: -> (float image in [0, 1], label).

    Order: flips (on the uint8 levels and the label together, a quarter of the bytes of
    float32), rotation and scaling (image and label together), noise, blur, offset, low
    resolution, gamma, then the clip to [0, 1]. Each runs only when drawn; a transform whose
    probability is 0 is not even in the graph.
    """
    for axis in config.flip_axes:
        levels, label = tf.cond(
            params["flip"][axis],
            lambda i=levels, y=label, a=axis: (tf.reverse(i, [a]), tf.reverse(y, [a])),
            lambda i=levels, y=label: (i, y),
        )
    image = to_intensity(levels)
    if config.rotation_probability > 0 or config.scale_probability > 0:
        image, label = tf.cond(
            tf.not_equal(params["angle"], 0.0) | tf.not_equal(params["scale"], 1.0),
            lambda: augment.rotate_scale(image, label, params["angle"], params["scale"]),
            lambda: (image, label),
        )
    image = _apply_noise_and_offset(image, params, config)
    if config.lowres_probability > 0:
        zoom = params["lowres_zoom"]
        image = tf.cond(zoom < 1.0, lambda: augment.simulate_low_resolution(image, zoom), lambda: image)
    if config.gamma_probability > 0:
        image = tf.cond(
            tf.not_equal(params["gamma"], 1.0), lambda: augment.gamma(image, params["gamma"]), lambda: image
        )
    if config.lowres_probability > 0 or config.gamma_probability > 0:
        image = tf.clip_by_value(image, 0.0, 1.0)  # cubic upsampling overshoots a little
    return image, label


def _apply_noise_and_offset(image, params: dict[str, tf.Tensor], config: AugmentConfig):
    """Gaussian noise, blur, the global offset and the clip to [0, 1], each only when drawn."""
    if config.noise_probability > 0 and config.noise_std > 0:
        noisy = params["noise"]
        image = tf.cond(
            noisy,
            lambda: image + config.noise_std * tf.random.stateless_normal(tf.shape(image), params["noise_seed"]),
            lambda: image,
        )
    else:
        noisy = tf.constant(False)
    if config.blur_probability > 0:
        radius = augment.blur_radius(config.blur_sigma[1])
        image = tf.cond(
            params["blur_sigma"] > 0, lambda: augment.gaussian_blur(image, params["blur_sigma"], radius), lambda: image
        )
    return tf.cond(
        noisy | tf.not_equal(params["offset"], 0.0),
        lambda: tf.clip_by_value(image + params["offset"], 0.0, 1.0),
        lambda: image,
    )


def to_model_inputs(image, label):
    """(z, y, x) float image, uint8 label -> ((z, y, x, 1) float32, (z, y, x) uint8 classes).

    The label stays uint8 class indices; the loss and metrics one-hot it on the device.
    A float32 one-hot here cost 3.6 ms per 128x128x64 patch on the CPU (a quarter of the
    pipeline's time) and 12x the bytes through batching and the host-to-device copy.
    """
    return image[..., None], label


def index_stream(n_rows: int, seed: int) -> tf.data.Dataset:
    """Infinite (draw number, row index): each block of ``n_rows`` draws is a permutation."""
    ds = tf.data.Dataset.range(n_rows).shuffle(n_rows, seed=seed, reshuffle_each_iteration=True)
    return ds.repeat().enumerate()


def input_thread_count(configured: int) -> int:
    """tf.data's private pool size: ``configured``, or half the usable cores (at least 1).

    With tf.data's default pool (one thread per core) the input threads compete with the
    model's intra-op threads: on 2 cores a small U-Net's fit step went from 1.15 s (same
    batches in memory) to 1.75 s; with a 1-thread input pool it stayed at 1.15 s while
    the pipeline alone still gives more than 60 augmented patches/s.
    """
    if configured > 0:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(1, cores // 2)


def _options(threads: int) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep their order: reproducible batches
    options.threading.private_threadpool_size = threads
    return options


def training_dataset(
    store: str | Path,
    rows: Sequence[dict[str, Any]],
    config: TrainConfig,
    global_batch_size: int | None = None,
    augment: bool = True,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Infinite shuffled, augmented, batched stream of (image, uint8 label).

    ``skip_batches`` drops that many batches' draws from the index stream before any
    read (cheap), so a resumed run sees the patches and augmentations an uninterrupted
    run would have seen.
    """
    patch_size = patch_size_of(rows, "training")
    source = _LevelsReader(PatchReader(store), rows)
    row_seeds = tf.constant([int(r["seed"]) for r in rows], tf.int64)
    n = len(rows)
    aug = config.augment

    def prepare(draw, levels, label, index):
        if augment:
            seed = tf.stack([row_seeds[index], config.seed * _EPOCH_MIX + draw // n])
            image, label = apply_augment(levels, label, draw_augment_params(seed, aug), aug)
        else:
            image = to_intensity(levels)
        return to_model_inputs(image, label)

    read = _read_map(source, patch_size)
    batch = global_batch_size or config.batch_size
    ds = index_stream(n, config.seed).skip(skip_batches * batch)
    ds = ds.map(lambda draw, i: (draw, *read(i), i), num_parallel_calls=AUTOTUNE)
    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True)
    return ds.prefetch(AUTOTUNE).with_options(_options(input_thread_count(config.input_threads)))


def tile_starts(size: int, tile: int) -> list[int]:
    """First voxel of each tile along one axis: every ``tile`` voxels, the last flush with the end
    (so tiles overlap only where ``size`` is not a multiple of ``tile``)."""
    if not 1 <= tile <= size:
        raise ValueError(f"tile {tile} must be in [1, size {size}]")
    return sorted({*range(0, size - tile, tile), size - tile})


def tile_corners(patch_zyx: Sequence[int], tile_zyx: Sequence[int]) -> list[tuple[int, int, int]]:
    """The corners of the tiles of ``tile_zyx`` that cover a patch of ``patch_zyx``, z-major."""
    starts = [tile_starts(int(n), int(t)) for n, t in zip(patch_zyx, tile_zyx, strict=True)]
    return [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]


def validation_tiles(patch_zyx: Sequence[int], tile_zyx: Sequence[int] | None) -> int:
    """How many validation samples one validation patch gives (1 without tiling)."""
    return 1 if tile_zyx is None else len(tile_corners(patch_zyx, tile_zyx))


def validation_dataset(
    store: str | Path,
    rows: Sequence[dict[str, Any]],
    batch_size: int,
    threads: int = 0,
    tile_zyx: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """Every validation row once, in manifest order, unaugmented.

    ``tile_zyx`` (the training patch, for a per-sample-normalised model): each patch is cut into
    tiles of that size (``tile_corners``), each a sample, so the model is validated on the window
    size it trained on. Instance and group norm take their statistics over the window, and a
    larger window shifts them (measured: docs/how-to/train.md#training-recipes).
    """
    patch_size = patch_size_of(rows, "validation")
    read = _read_map(_LevelsReader(PatchReader(store), rows), patch_size)
    ds = tf.data.Dataset.range(len(rows)).map(read, num_parallel_calls=AUTOTUNE)
    if tile_zyx is not None:
        if any(t > p for t, p in zip(tile_zyx, patch_size, strict=True)):
            raise UsageError(f"validation patches {patch_size} are smaller than the training patch {tuple(tile_zyx)}")
        corners = tile_corners(patch_size, tile_zyx)
        dz, dy, dx = (int(t) for t in tile_zyx)

        def tiles(levels: tf.Tensor, label: tf.Tensor) -> tf.data.Dataset:
            cut = [
                (levels[z : z + dz, y : y + dy, x : x + dx], label[z : z + dz, y : y + dy, x : x + dx])
                for z, y, x in corners
            ]
            return tf.data.Dataset.from_tensor_slices((tf.stack([c[0] for c in cut]), tf.stack([c[1] for c in cut])))

        ds = ds.flat_map(tiles)
    ds = ds.map(lambda levels, label: to_model_inputs(to_intensity(levels), label), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE).with_options(_options(input_thread_count(threads)))


def measure_patches_per_second(dataset: tf.data.Dataset, batches: int, warmup: int = 2) -> dict[str, float]:
    """Iterate ``batches`` batches (after ``warmup``) without a model: the pipeline's rate."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    patches = 0
    start = time.perf_counter()
    for _ in range(batches):
        image, _label = next(iterator)
        patches += int(image.shape[0])
    seconds = time.perf_counter() - start
    return {"patches": patches, "seconds": seconds, "patches_per_s": patches / max(seconds, 1e-9)}
