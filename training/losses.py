"""Segmentation losses: pure functions plus thin registered, serialisable Loss classes.

Generalized Dice (absent classes as in MONAI), cross-entropy and their compound, all in float32.
The definitions: docs/explanation/internals.md#the-loss-traininglossespy.
"""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "pancreas"
_EPS = 1e-7


def as_one_hot(y_true, n_classes: int):
    """Class indices (one axis fewer than the prediction) -> one-hot; one-hot passes through.

    The pipeline feeds uint8 indices: 1 byte per voxel to the device instead of 12.
    """
    return ops.one_hot(ops.cast(y_true, "int32"), n_classes, dtype="float32")


def _prepare(y_true, y_pred, exclude_background: bool):
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = as_one_hot(y_true, y_pred.shape[-1])
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    if exclude_background:
        y_true, y_pred = y_true[..., 1:], y_pred[..., 1:]
    return y_true, y_pred


def class_weights(ground_counts):
    """``1/count^2`` per class (last axis); absent classes get the largest finite weight."""
    present = ground_counts > 0
    safe = ops.where(present, ground_counts, ops.ones_like(ground_counts))
    w = ops.where(present, 1.0 / ops.square(safe), ops.zeros_like(safe))
    largest = ops.max(w, axis=-1, keepdims=True)
    w = ops.where(present, w, largest)
    # nothing present at all: weight every class equally
    w = ops.where(largest > 0, w, ops.ones_like(w))
    return w / ops.sum(w, axis=-1, keepdims=True)


def generalized_dice_loss(
    y_true,
    y_pred,
    reduction: str = "batch",
    exclude_background: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
):
    """GDL of ``y_true`` (one-hot ``(N, ..., C)`` or class indices ``(N, ...)``) and softmax
    ``y_pred`` ``(N, ..., C)``.

    ``reduction="batch"``: one Dice over all voxels of the batch, returned with shape (1,);
    ``"sample"``: one value per sample, shape (N,).
    """
    if reduction not in ("batch", "sample"):
        raise ValueError(f"reduction must be 'batch' or 'sample', got {reduction!r}")
    y_true, y_pred = _prepare(y_true, y_pred, exclude_background)
    rank = len(y_true.shape)
    axes = tuple(range(1, rank - 1)) if reduction == "sample" else tuple(range(rank - 1))
    intersection = ops.sum(y_true * y_pred, axis=axes)
    ground = ops.sum(y_true, axis=axes)
    predicted = ops.sum(y_pred, axis=axes)
    w = ops.stop_gradient(class_weights(ground))
    numer = 2.0 * ops.sum(w * intersection, axis=-1) + smooth_nr
    denom = ops.sum(w * (ground + predicted), axis=-1) + smooth_dr
    loss = 1.0 - numer / denom
    return ops.reshape(loss, (-1,))


def cross_entropy_loss(y_true, y_pred):
    """Categorical cross-entropy averaged over voxels, one value per sample (N,)."""
    y_true, y_pred = _prepare(y_true, y_pred, False)
    per_voxel = -ops.sum(y_true * ops.log(ops.clip(y_pred, _EPS, 1.0)), axis=-1)
    return ops.mean(ops.reshape(per_voxel, (ops.shape(per_voxel)[0], -1)), axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GeneralizedDiceLoss(keras.losses.Loss):
    """Keras wrapper of :func:`generalized_dice_loss` (registered, so .keras files reload)."""

    def __init__(
        self,
        reduction_mode: str = "batch",
        exclude_background: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        name: str = "generalized_dice",
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if reduction_mode not in ("batch", "sample"):
            raise ValueError(f"reduction_mode must be 'batch' or 'sample', got {reduction_mode!r}")
        self.reduction_mode = reduction_mode
        self.exclude_background = bool(exclude_background)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def call(self, y_true, y_pred):
        return generalized_dice_loss(
            y_true, y_pred, self.reduction_mode, self.exclude_background, self.smooth_nr, self.smooth_dr
        )

    def get_config(self):
        return {
            **super().get_config(),
            "reduction_mode": self.reduction_mode,
            "exclude_background": self.exclude_background,
            "smooth_nr": self.smooth_nr,
            "smooth_dr": self.smooth_dr,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class CrossEntropyLoss(keras.losses.Loss):
    """Categorical cross-entropy over the softmax classes (float32)."""

    def __init__(self, name: str = "cross_entropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return cross_entropy_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceCrossEntropyLoss(GeneralizedDiceLoss):
    """GDL + ``ce_weight`` * cross-entropy."""

    def __init__(self, ce_weight: float = 1.0, name: str = "dice_cross_entropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.ce_weight = float(ce_weight)

    def call(self, y_true, y_pred):
        dice = ops.mean(super().call(y_true, y_pred))
        return dice + self.ce_weight * cross_entropy_loss(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "ce_weight": self.ce_weight}


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Loss weights of the full-resolution head and ``n_outputs - 1`` coarser ones: halving per
    level and summing to 1 (nnU-Net's rule; its lowest level, weight 0 there, is not built here)."""
    raw = [0.5**level for level in range(n_outputs)]
    return [w / sum(raw) for w in raw]


def downsample_labels(y_true, level: int):
    """Class indices ``(N, z, y, x)`` at ``1 / 2**level`` of the resolution, by nearest neighbour:
    the first voxel of every ``2**level`` block (a stride), so no new class can appear."""
    step = 2**level
    return y_true[:, ::step, ::step, ::step] if step > 1 else y_true


def deep_supervision_loss(loss_fn, y_true, outputs):
    """``sum_i w_i * loss_fn(labels at level i, outputs[i])``: ``outputs[0]`` is the full-resolution
    softmax, ``outputs[i]`` the head at ``1 / 2**i``; weights from :func:`deep_supervision_weights`."""
    weights = deep_supervision_weights(len(outputs))
    total = 0.0
    for level, (weight, probs) in enumerate(zip(weights, outputs, strict=True)):
        total = total + weight * ops.mean(loss_fn(downsample_labels(y_true, level), probs))
    return total


def make_loss(config) -> keras.losses.Loss:
    """The loss a ``training.config.LossConfig`` names."""
    dice_kwargs = {
        "reduction_mode": config.reduction,
        "exclude_background": config.exclude_background,
        "smooth_nr": config.smooth_nr,
        "smooth_dr": config.smooth_dr,
    }
    if config.name == "generalized_dice":
        return GeneralizedDiceLoss(**dice_kwargs)
    if config.name == "cross_entropy":
        return CrossEntropyLoss()
    if config.name == "dice_cross_entropy":
        return DiceCrossEntropyLoss(ce_weight=config.ce_weight, **dice_kwargs)
    raise ValueError(f"unknown loss {config.name!r}")
