"""Callbacks of a training run: resumable scheduler counters, TensorBoard images, timing.

``RunCheckpoint``, the only writer of ``checkpoints/`` and ``state.json``, lives with its
commit protocol in ``training.checkpoints`` (re-exported here). It runs last, after the
other callbacks have updated their counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.checkpoints import BEST_MONITOR, RunCheckpoint, save_model_atomic
from training.model import top_output
from training.pipeline import tile_corners
from training.progress import write_progress
from training.summaries import write_image, write_scalar

log = logging.getLogger(__name__)


class _Resumable:
    """Mixin: restore ``wait``/``best``-style counters after Keras resets them."""

    STATE_KEYS: tuple[str, ...] = ()

    def _init_state(self, initial_state: Mapping[str, Any] | None) -> None:
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

    def __init__(self, initial_state: Mapping[str, Any] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_state(initial_state)


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    STATE_KEYS = ("wait", "best", "best_epoch")

    def __init__(self, initial_state: Mapping[str, Any] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_state(initial_state)


POLY_EXPONENT = 0.9  # nnU-Net's


def poly_learning_rate(initial: float, epoch: int, epochs: int, exponent: float = POLY_EXPONENT) -> float:
    """``initial * (1 - epoch / epochs) ** exponent``: the rate of epoch ``epoch`` (0-based)."""
    return initial * (1.0 - min(epoch, epochs) / epochs) ** exponent


class PolyLearningRate(keras.callbacks.Callback):
    """Sets the rate at the start of every epoch from the epoch number alone, so a resumed
    run follows the same curve as an unbroken one (nothing to keep in ``state.json``)."""

    def __init__(self, initial: float, epochs: int) -> None:
        super().__init__()
        self.initial = initial
        self.epochs = epochs

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.model.optimizer.learning_rate.assign(poly_learning_rate(self.initial, epoch, self.epochs))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is not None:  # history.csv's column, as ReduceLROnPlateau writes it
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


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


def tiled_probabilities(model: keras.Model, image: np.ndarray, tile_zyx: Sequence[int] | None) -> np.ndarray:
    """The top head's class probabilities ``(z, y, x, C)`` of one image ``(z, y, x)``.

    ``tile_zyx`` (a per-sample-normalised model's training patch): the image is cut into the
    tiles that validation uses (``tile_corners``) and their probabilities averaged where they
    overlap, so the picture shows what the validation Dice scored, not the model on a window
    size it never trained on. ``None``: one pass over the whole image.
    """
    if tile_zyx is None:
        return keras.ops.convert_to_numpy(top_output(model(image[None, ..., None], training=False)))[0]
    total: np.ndarray | None = None
    count = np.zeros(image.shape, np.float32)
    dz, dy, dx = (int(t) for t in tile_zyx)
    for z, y, x in tile_corners(image.shape, tile_zyx):
        crop = image[z : z + dz, y : y + dy, x : x + dx]
        probs = keras.ops.convert_to_numpy(top_output(model(crop[None, ..., None], training=False)))[0]
        if total is None:
            total = np.zeros((*image.shape, probs.shape[-1]), np.float32)
        total[z : z + dz, y : y + dy, x : x + dx] += probs
        count[z : z + dz, y : y + dy, x : x + dx] += 1
    assert total is not None  # tile_corners returns at least one corner
    return total / count[..., None]


class ImageSummaries(keras.callbacks.Callback):
    """Every epoch: fixed patches (chosen once) drawn to TensorBoard at ``step=epoch``.

    ``window_zyx``: predict them tile by tile with this window (``tiled_probabilities``).
    """

    def __init__(
        self,
        log_dir: Path,
        samples: dict[str, list[tuple[str, np.ndarray, np.ndarray]]],
        window_zyx: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.samples = samples  # split -> [(name, image (z, y, x) float, label (z, y, x))]
        self.window_zyx = None if window_zyx is None else tuple(int(v) for v in window_zyx)
        self._writer: Any = None  # a tf.summary file writer, made on the first epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not any(self.samples.values()):
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir / "images"))
        with self._writer.as_default():
            for split, items in self.samples.items():
                for name, image, label in items:
                    probs = tiled_probabilities(self.model, image, self.window_zyx)
                    z = foreground_slice(label)
                    pred = probs[z].argmax(-1)
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


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (training plus validation wall time) to each epoch's logs.

    Runs first, so ``history.csv`` (Keras' CSVLogger) and TensorBoard record it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._start, 3)


class ProgressPicture(keras.callbacks.Callback):
    """Redraws ``RUN_DIR/progress.png`` from ``history.csv`` after each epoch (runs after CSVLogger).

    A picture that cannot be drawn is logged and skipped: it must never stop a training run.
    A full disk still stops the run at the next checkpoint, which says so.
    """

    def __init__(self, history_csv: Path, out: Path, title: str = "") -> None:
        super().__init__()
        self.history_csv, self.out, self.title = history_csv, out, title

    def on_epoch_end(self, epoch, logs=None) -> None:
        try:
            write_progress(self.history_csv, self.out, self.title)
        except (OSError, ValueError) as err:
            log.warning("%s: not redrawn (%s)", self.out, err)


__all__ = [
    "BEST_MONITOR",
    "EpochScalars",
    "EpochTimer",
    "ImageSummaries",
    "PolyLearningRate",
    "ProgressPicture",
    "ResumableEarlyStopping",
    "ResumableReduceLROnPlateau",
    "RunCheckpoint",
    "StepTimer",
    "foreground_slice",
    "save_model_atomic",
    "summary_panel",
]
