"""Callbacks of a training run: checkpoints + resumable state, TensorBoard images, timing.

``RunCheckpoint`` is the only writer of ``checkpoints/`` and ``state.json``. At each
epoch end (after the other callbacks have updated their counters) it saves
``best.keras`` when the validation pancreas Dice improved, then ``last.keras`` and
``state.json``, each to a temporary name renamed into place, so a run killed at any
moment leaves a consistent last checkpoint and state. An epoch whose loss is not finite
saves nothing: the last good checkpoint stays.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from dataset.common.files import atomic_path, write_json_atomic
from training.summaries import write_image, write_scalar

log = logging.getLogger(__name__)

BEST_MONITOR = "val_dice_pancreas"


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """``model.save`` to a temporary ``.keras`` name next to ``path``, then rename."""
    with atomic_path(path) as tmp:
        keras_tmp = tmp.with_name(tmp.name + ".keras")  # Keras insists on the suffix
        try:
            model.save(keras_tmp)
            keras_tmp.replace(tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)


class _Resumable:
    """Mixin: restore ``wait``/``best``-style counters after Keras resets them."""

    STATE_KEYS: tuple[str, ...] = ()

    def _init_state(self, initial_state: dict[str, Any] | None) -> None:
        self.initial_state = dict(initial_state or {})

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key, value in self.initial_state.items():
            if key in self.STATE_KEYS:
                setattr(self, key, value)

    def state(self) -> dict[str, Any]:
        out = {}
        for key in self.STATE_KEYS:
            value = getattr(self, key, None)
            out[key] = float(value) if isinstance(value, (np.floating, float)) else value
        return out


class ResumableReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    STATE_KEYS = ("wait", "best", "cooldown_counter")

    def __init__(self, initial_state: dict[str, Any] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_state(initial_state)


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    STATE_KEYS = ("wait", "best", "best_epoch")

    def __init__(self, initial_state: dict[str, Any] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_state(initial_state)


def _finite(logs: dict[str, Any], keys: Sequence[str]) -> bool:
    return all(math.isfinite(float(logs[k])) for k in keys if k in logs and logs[k] is not None)


class RunCheckpoint(keras.callbacks.Callback):
    """best.keras / last.keras / state.json, atomically, every epoch."""

    def __init__(
        self,
        run_dir: Path,
        state: dict[str, Any],
        stateful_callbacks: dict[str, _Resumable] | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.state = dict(state)  # epoch, learning_rate, best_value, best_epoch, ...
        self.stateful_callbacks = stateful_callbacks or {}
        self.stopped_on_nan = False

    @property
    def best_path(self) -> Path:
        return self.run_dir / "checkpoints" / "best.keras"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.keras"

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = dict(logs or {})
        if not _finite(logs, ("loss", "val_loss")):
            self.stopped_on_nan = True
            self.model.stop_training = True
            log.error("epoch %d: loss is not finite; stopping, keeping the checkpoint of epoch %s",
                      epoch + 1, self.state.get("epoch"))
            return
        current = logs.get(BEST_MONITOR)
        best = self.state.get("best_value")
        if current is not None and (best is None or float(current) > best):
            save_model_atomic(self.model, self.best_path)
            self.state.update(best_value=float(current), best_epoch=epoch + 1,
                              best_logs={k: float(v) for k, v in logs.items()})
        save_model_atomic(self.model, self.last_path)
        self.state.update(
            epoch=epoch + 1,
            learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            iterations=int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            last_logs={k: float(v) for k, v in logs.items()},
            callbacks={name: cb.state() for name, cb in self.stateful_callbacks.items()},
        )
        write_json_atomic(self.run_dir / "state.json", self.state)


def foreground_slice(label: np.ndarray) -> int:
    """The z index of the slice with most foreground voxels."""
    return int(np.argmax((label > 0).sum(axis=(1, 2))))


def summary_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """CT | ground truth | prediction side by side, float (y, 3x) in [0, 1].

    The image is written with [0, 1] mapped to the full 0..255 range, so the CT slice is
    passed as is (not halved); labels are drawn at 0, 0.5, 1 for classes 0, 1, 2.
    """
    panel = np.concatenate([np.clip(image, 0, 1), label / 2.0, pred / 2.0], axis=1)
    return panel.astype(np.float32)


class ImageSummaries(keras.callbacks.Callback):
    """Every epoch: fixed patches (chosen once) drawn to TensorBoard at ``step=epoch``."""

    def __init__(self, log_dir: Path, samples: dict[str, list[tuple[str, np.ndarray, np.ndarray]]]) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.samples = samples  # split -> [(name, image (z, y, x) float, label (z, y, x))]
        self._writer = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not any(self.samples.values()):
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir / "images"))
        with self._writer.as_default():
            for split, items in self.samples.items():
                for name, image, label in items:
                    probs = keras.ops.convert_to_numpy(self.model(image[None, ..., None], training=False))
                    z = foreground_slice(label)
                    pred = probs[0, z].argmax(-1)
                    write_image(f"{split}/{name}", summary_panel(image[z], label[z], pred), step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None) -> None:
        if self._writer is not None:
            self._writer.close()


class EpochScalars(keras.callbacks.Callback):
    """Epoch scalars the way Keras' TensorBoard callback lays them out (``train/`` and
    ``validation/`` runs, tags ``epoch_<name>``), without needing ``tensorboard``."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self, split: str):
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.log_dir / split))
        return self._writers[split]

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = dict(logs or {})
        logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        for split, items in (
            ("train", {k: v for k, v in logs.items() if not k.startswith("val_")}),
            ("validation", {k[4:]: v for k, v in logs.items() if k.startswith("val_")}),
        ):
            if not items:
                continue
            with self._writer(split).as_default():
                for key, value in items.items():
                    write_scalar(f"epoch_{key}", float(value), step=epoch)
            self._writer(split).flush()

    def on_train_end(self, logs=None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class StepTimer(keras.callbacks.Callback):
    """Wall time between consecutive training-step ends: model plus any wait for input.

    The first step of each epoch (tracing, pipeline warm-up) is not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self._last: float | None = None

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._last = None

    def on_train_batch_end(self, batch, logs=None) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    def median(self) -> float:
        return float(np.median(self.times)) if self.times else float("nan")
