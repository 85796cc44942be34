"""Distribution strategy, mixed precision and the compiled model they wrap."""
from __future__ import annotations

import contextlib
from typing import Iterator

import keras
import tensorflow as tf

from dataset.common.configio import ConfigError
from training.config import TrainConfig
from training.losses import make_loss
from training.metrics import dice_metrics
from training.model import N_CLASSES, build_unet


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: mirrored over all GPUs when there are several; mirrored on a CPU-only host uses
    every logical CPU device (tests); multiworker reads TF_CONFIG."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    if name in ("auto", "mirrored"):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown strategy {name!r}")


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras' global mixed-precision policy set to ``name`` for the block, then restored."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_compiled_model(config: TrainConfig) -> keras.Model:
    """A fresh U-Net compiled with the run's optimizer, loss and Dice metrics."""
    model = build_unet(config.model.depth, config.model.base_filters, N_CLASSES)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=make_loss(config.loss),
        metrics=dice_metrics(),
        jit_compile=False,
    )
    return model
