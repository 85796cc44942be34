"""3D U-Net (Keras functional API) built from small named block builders.

Input ``(batch, z, y, x, 1)`` float32 in [0, 1], channels last, edges divisible by ``2**depth``;
output float32 softmax. Parameter counts: docs/explanation/internals.md#the-model-trainingmodelpy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
from keras import layers

from training.config import ACTIVATIONS, NORMS
from training.losses import PACKAGE, deep_supervision_loss

N_CLASSES = 3
# Moving-statistics momentum of batch norm: 0.9 (PyTorch's 0.1) rather than Keras' 0.99,
# so validation (inference-mode statistics) is meaningful after tens of steps, not
# hundreds; with batch 2 the per-batch statistics are noisy either way.
BN_MOMENTUM = 0.9
LEAKY_SLOPE = 0.01  # nnU-Net's LeakyReLU negative slope
NORM_EPSILON = 1e-5  # instance/group norm, PyTorch's and nnU-Net's value


# Batch renormalisation (Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch
# Dependence in Batch-Normalized Models"): the paper's clipping bounds and its slower moving
# statistics (they enter the training forward pass), bias-corrected as Adam's moments are (the
# paper instead ramps r_max and d_max over thousands of steps; the demo trains 1,200), and a
# warm-up as plain batch norm. Without the correction, 100 steps at momentum 0.99 leave 37% of
# the moving statistics at their initial 0 and 1: on the demo the training loss rose when the
# correction began (one-off run, 2026-12-07).
RENORM_MOMENTUM = 0.99
RENORM_R_MAX = 3.0
RENORM_D_MAX = 5.0
RENORM_WARMUP_STEPS = 100
BN_EPSILON = 1e-3  # Keras' BatchNormalization default


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchRenormalization(layers.Layer):
    """Batch norm whose training forward pass is corrected towards the moving statistics.

    In training, ``x_hat = (x - mean_B) / std_B * r + d`` with ``r = std_B / std_moving`` and
    ``d = (mean_B - mean_moving) / std_moving`` clipped to ``[1/r_max, r_max]`` and
    ``[-d_max, d_max]`` and held constant for the gradient. Unclipped, that is exactly the
    inference normalisation ``(x - mean_moving) / std_moving``, so a model trained on batches of 2
    is validated and used with the statistics it trained with; batch norm's gradient through
    the batch statistics is kept. The first ``warmup_steps`` training steps use ``r = 1, d = 0``
    (batch norm). Statistics per channel over the batch and spatial axes, in float32. The moving
    statistics are exponential averages from zero, divided by ``1 - momentum**steps`` where
    they are used (an untrained layer normalises with mean 0 and variance 1).
    """

    def __init__(
        self,
        momentum: float = RENORM_MOMENTUM,
        epsilon: float = BN_EPSILON,
        r_max: float = RENORM_R_MAX,
        d_max: float = RENORM_D_MAX,
        warmup_steps: int = RENORM_WARMUP_STEPS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.r_max, self.d_max, self.warmup_steps = float(r_max), float(d_max), int(warmup_steps)

    def build(self, input_shape) -> None:
        channels = (int(input_shape[-1]),)

        # float32 under a mixed-precision policy too (autocast=False: a bfloat16 step counter would
        # stop at 256). Under a distribution strategy the replicas' updates of the moving statistics
        # are averaged and the first replica's step count kept, so every replica trains with the
        # same statistics (they enter the training pass here, unlike in batch norm).
        def weight(name: str, shape: tuple[int, ...], initializer: str, aggregation: str, trainable: bool = False):
            return self.add_weight(
                shape, initializer, trainable=trainable, autocast=False, aggregation=aggregation, name=name
            )

        self.gamma = weight("gamma", channels, "ones", "none", trainable=True)
        self.beta = weight("beta", channels, "zeros", "none", trainable=True)
        self.moving_mean = weight("moving_mean", channels, "zeros", "mean")
        self.moving_variance = weight("moving_variance", channels, "zeros", "mean")
        self.steps = weight("steps", (), "zeros", "only_first_replica")

    def call(self, x, training=None):
        dtype = x.dtype
        x = keras.ops.cast(x, "float32")
        moving_mean, moving_std = self.moving_statistics()
        if not training or not self.trainable:  # a frozen layer normalises as in inference, as Keras' batch norm
            x_hat = (x - moving_mean) / moving_std
        else:
            mean, variance = keras.ops.moments(x, axes=list(range(len(x.shape) - 1)))
            std = keras.ops.sqrt(variance + self.epsilon)
            warm = keras.ops.cast(self.steps >= self.warmup_steps, "float32")
            r = keras.ops.clip(std / moving_std, 1.0 / self.r_max, self.r_max)
            d = keras.ops.clip((mean - moving_mean) / moving_std, -self.d_max, self.d_max)
            r = keras.ops.stop_gradient(warm * r + (1.0 - warm))
            d = keras.ops.stop_gradient(warm * d)
            x_hat = (x - mean) / std * r + d
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            self.steps.assign(self.steps + 1.0)
        return keras.ops.cast(x_hat * self.gamma + self.beta, dtype)

    def moving_statistics(self):
        """(mean, standard deviation) the layer normalises with in inference: bias-corrected."""
        started = keras.ops.cast(self.steps > 0, "float32")
        debias = keras.ops.maximum(1.0 - keras.ops.power(self.momentum, self.steps), 1e-12)
        mean = started * self.moving_mean / debias
        variance = started * self.moving_variance / debias + (1.0 - started)
        return mean, keras.ops.sqrt(variance + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "r_max": self.r_max,
            "d_max": self.d_max,
            "warmup_steps": self.warmup_steps,
        }


def norm_layer(norm: str, filters: int, groups: int, name: str) -> layers.Layer:
    """Batch norm, batch renormalisation (``BatchRenormalization``), or a per-sample norm:
    ``instance`` is one group per channel, ``group`` ``groups`` groups (``filters`` must divide
    by it). Per-sample norms use the same statistics in training and inference, so small
    batches do not shift the validation."""
    if norm == "batch":
        return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)
    if norm == "batch_renorm":
        return BatchRenormalization(warmup_steps=RENORM_WARMUP_STEPS, name=name)  # read here: tests shorten it
    n_groups = filters if norm == "instance" else groups
    if filters % n_groups:
        raise ValueError(f"model.norm_groups={groups} does not divide the {filters} filters of {name}")
    return layers.GroupNormalization(groups=n_groups, epsilon=NORM_EPSILON, name=name)


def activation_layer(activation: str, name: str) -> layers.Layer:
    if activation == "leaky_relu":
        return layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name)
    return layers.Activation("relu", name=name)


def conv_block(x, filters: int, name: str, norm: str = "batch", activation: str = "relu", groups: int = 8):
    """Two 3x3x3 convolutions, each followed by a norm and the activation."""
    for i in (1, 2):
        x = layers.Conv3D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = norm_layer(norm, filters, groups, f"{name}_{'bn' if norm.startswith('batch') else 'norm'}{i}")(x)
        x = activation_layer(activation, f"{name}_{'relu' if activation == 'relu' else 'lrelu'}{i}")(x)
    return x


def down_block(x, name: str):
    """Halve every spatial edge."""
    return layers.MaxPool3D(pool_size=2, name=f"{name}_pool")(x)


def up_block(x, skip, filters: int, name: str, block: Callable[..., Any] = conv_block):
    """Double every edge with a stride-2 transposed convolution, then join the skip."""
    x = layers.Conv3DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_upconv")(x)
    x = layers.Concatenate(axis=-1, name=f"{name}_concat")([x, skip])
    return block(x, filters, name)


def aux_head_name(level: int) -> str:
    """Layer-name prefix of the deep-supervision head on decoder level ``level``."""
    return f"ds{level}"


def is_aux_head_layer(name: str) -> bool:
    """Whether a layer belongs to a deep-supervision head (not to the network that predicts)."""
    return name.startswith("ds") and name[2:3].isdigit()


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepSupervisionUNet(keras.Model):
    """A functional U-Net whose outputs are ``[full-resolution softmax, coarser heads...]``.

    Training sums the compiled loss over the heads (``training.losses.deep_supervision_loss``,
    labels downsampled on the device); metrics see the full-resolution head only, so the
    logged Dice means what it means without deep supervision. Loaders for prediction take
    ``outputs[0]`` (``dataset.common.modelfiles.load_keras_model``).
    """

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, (list, tuple)):
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        total = deep_supervision_loss(self.loss, y, list(y_pred))
        for extra in self.losses:  # regularisers, as Keras' own compute_loss adds them
            total = total + keras.ops.sum(extra)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, top_output(y_pred), sample_weight)


def top_output(outputs):
    """The full-resolution softmax of a model's outputs (the only one without deep supervision)."""
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def build_unet(
    depth: int = 4,
    base_filters: int = 16,
    n_classes: int = N_CLASSES,
    name: str = "unet",
    norm: str = "batch",
    activation: str = "relu",
    norm_groups: int = 8,
    deep_supervision: bool = False,
) -> keras.Model:
    """A U-Net with ``depth`` poolings and ``base_filters * 2**level`` filters per level.

    ``deep_supervision``: a :class:`DeepSupervisionUNet` with a 1x1x1 softmax head on each
    decoder level 1..depth-2 as well (nnU-Net drops the lowest level; depth >= 3)."""
    if norm not in NORMS or activation not in ACTIVATIONS:
        raise ValueError(
            f"norm must be one of {NORMS} and activation one of {ACTIVATIONS}, got {norm!r}, {activation!r}"
        )
    block = functools.partial(conv_block, norm=norm, activation=activation, groups=norm_groups)
    inputs = keras.Input(shape=(None, None, None, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2**level, f"enc{level}")
        skips.append(x)
        x = down_block(x, f"enc{level}")
    x = block(x, base_filters * 2**depth, "bottleneck")
    aux = {}
    for level in reversed(range(depth)):
        x = up_block(x, skips[level], base_filters * 2**level, f"dec{level}", block)
        if deep_supervision and 1 <= level <= depth - 2:
            aux[level] = softmax_head(x, n_classes, aux_head_name(level))
    probs = softmax_head(x, n_classes, "head")
    if not deep_supervision:
        return keras.Model(inputs, probs, name=name)
    if not aux:
        raise ValueError(f"deep_supervision needs depth >= 3, got {depth}")
    return DeepSupervisionUNet(inputs, [probs, *(aux[level] for level in sorted(aux))], name=name)


def unet_of(config) -> keras.Model:
    """The U-Net a ``training.config.ModelConfig`` describes (three classes)."""
    options = {k: getattr(config, k) for k in ("norm", "activation", "norm_groups", "deep_supervision")}
    return build_unet(config.depth, config.base_filters, N_CLASSES, **options)


def softmax_head(x, n_classes: int, name: str):
    """A 1x1x1 convolution to class logits and a float32 softmax (even under mixed precision)."""
    logits = layers.Conv3D(n_classes, 1, name=f"{name}_conv")(x)
    return layers.Activation("softmax", dtype="float32", name=f"{name}_softmax")(logits)
