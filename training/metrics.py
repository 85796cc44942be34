"""Per-class Dice accumulated over an epoch from int64 TP/FP/FN counts, not averaged over batches.

See docs/explanation/internals.md#the-dice-metric-trainingmetricspy.
"""

from __future__ import annotations

import keras
from keras import ops

from training.losses import PACKAGE

CLASS_NAMES = {1: "pancreas", 2: "tumour"}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassDice(keras.metrics.Metric):
    """Dice of class ``class_id`` on argmax predictions, exact over everything seen.

    ``y_true`` is class indices ``(N, ...)`` (what the pipeline feeds) or one-hot.
    """

    def __init__(self, class_id: int, name: str | None = None, **kwargs) -> None:
        super().__init__(name=name or f"dice_{CLASS_NAMES.get(class_id, class_id)}", **kwargs)
        self.class_id = int(class_id)
        self.tp = self.add_variable((), initializer="zeros", dtype="int64", aggregation="sum", name="tp")
        self.fp = self.add_variable((), initializer="zeros", dtype="int64", aggregation="sum", name="fp")
        self.fn = self.add_variable((), initializer="zeros", dtype="int64", aggregation="sum", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if len(y_true.shape) == len(y_pred.shape) - 1:  # class indices
            truth = ops.cast(y_true, "int32") == self.class_id
        else:  # one-hot
            truth = ops.argmax(y_true, axis=-1) == self.class_id
        pred = ops.argmax(y_pred, axis=-1) == self.class_id
        self.tp.assign_add(ops.sum(ops.cast(truth & pred, "int64")))
        self.fp.assign_add(ops.sum(ops.cast(~truth & pred, "int64")))
        self.fn.assign_add(ops.sum(ops.cast(truth & ~pred, "int64")))

    def result(self):
        tp = ops.cast(self.tp, "float64")
        denom = 2.0 * tp + ops.cast(self.fp, "float64") + ops.cast(self.fn, "float64")
        dice = ops.where(denom > 0, 2.0 * tp / ops.maximum(denom, 1.0), 1.0)
        return ops.cast(dice, "float32")

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(ops.zeros((), dtype="int64"))

    def get_config(self):
        return {**super().get_config(), "class_id": self.class_id}


def dice_metrics() -> list[ClassDice]:
    """The epoch metrics every run reports: pancreas and tumour Dice."""
    return [ClassDice(1), ClassDice(2)]
