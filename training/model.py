"""3D U-Net (Keras functional API) built from small named block builders.

Input ``(batch, z, y, x, 1)`` float32 in [0, 1], channels last, edges divisible by ``2**depth``;
output float32 softmax. Parameter counts: docs/explanation/internals.md#the-model-trainingmodelpy.
"""

from __future__ import annotations

import keras
from keras import layers

N_CLASSES = 3
# Moving-statistics momentum of batch norm: 0.9 (PyTorch's 0.1) rather than Keras' 0.99,
# so validation (inference-mode statistics) is meaningful after tens of steps, not
# hundreds; with batch 2 the per-batch statistics are noisy either way.
BN_MOMENTUM = 0.9


def conv_block(x, filters: int, name: str):
    """Two 3x3x3 convolutions, each followed by batch norm and ReLU."""
    for i in (1, 2):
        x = layers.Conv3D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def down_block(x, name: str):
    """Halve every spatial edge."""
    return layers.MaxPool3D(pool_size=2, name=f"{name}_pool")(x)


def up_block(x, skip, filters: int, name: str):
    """Double every edge with a stride-2 transposed convolution, then join the skip."""
    x = layers.Conv3DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_upconv")(x)
    x = layers.Concatenate(axis=-1, name=f"{name}_concat")([x, skip])
    return conv_block(x, filters, name)


def build_unet(depth: int = 4, base_filters: int = 16, n_classes: int = N_CLASSES, name: str = "unet") -> keras.Model:
    """A U-Net with ``depth`` poolings and ``base_filters * 2**level`` filters per level."""
    inputs = keras.Input(shape=(None, None, None, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, f"enc{level}")
        skips.append(x)
        x = down_block(x, f"enc{level}")
    x = conv_block(x, base_filters * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        x = up_block(x, skips[level], base_filters * 2**level, f"dec{level}")
    logits = layers.Conv3D(n_classes, 1, name="head_conv")(x)
    # float32 softmax even under a mixed precision policy
    probs = layers.Activation("softmax", dtype="float32", name="head_softmax")(logits)
    return keras.Model(inputs, probs, name=name)
