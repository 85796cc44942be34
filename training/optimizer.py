"""The optimizer and the precision policy of a training run, on any Keras backend (no TensorFlow import).

``bench/gpu.py`` trains with them where JAX is installed and TensorFlow is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from training.config import TrainConfig


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """Adam, or SGD with Nesterov momentum (nnU-Net's); ``weight_decay`` is decoupled in both."""
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=config.momentum, nesterov=True, weight_decay=decay)
    return keras.optimizers.Adam(config.learning_rate, weight_decay=decay)


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[None]:
    """Keras' global mixed-precision policy set to ``name`` for the block, then restored."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
