"""Checkpoints and ``state.json`` committed together, once per epoch (``RunCheckpoint``).

A resume runs ``settle_checkpoints`` before loading anything. The protocol, step by step with its
crash points: docs/explanation/internals.md#the-per-epoch-commit-trainingcheckpointspy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from dataset.common.atomic import atomic_path, fsync_path
from dataset.common.crashpoints import commit_point
from dataset.common.verify import verify_zip
from dataset.contract.run import (
    CHECKPOINTS_DIR,
    STATE_NAME,
    RunError,
    RunState,
    checkpoint_path,
    generation_files,
    generation_path,
    write_state,
)

log = logging.getLogger(__name__)

BEST_MONITOR = "val_dice_pancreas"


def save_model_atomic(model: keras.Model, path: Path, point: str | None = None) -> None:
    """``model.save`` to a temporary ``.keras`` name next to ``path``, then rename (durably).

    The ``.keras`` zip is read back (``verify_zip``) before the rename, so a disk that filled
    during the save can never leave a torn checkpoint under its final name.
    """
    with atomic_path(path, ending=".keras", point=point) as tmp:
        model.save(tmp)
        verify_zip(tmp, path)


def _committed_generation(kind: str, state: RunState | None) -> int | None:
    if state is None:
        return None
    return state.generation if kind == "last" else state.best_epoch


def settle_checkpoints(run_dir: Path, state: RunState | None) -> None:
    """Publish the generation files ``state`` committed; delete those it did not (see the module docstring)."""
    for kind, generation, path in generation_files(run_dir):
        if generation == _committed_generation(kind, state):
            os.replace(path, checkpoint_path(run_dir, kind))
            fsync_path(path.parent)
            commit_point(f"checkpoint-{kind}:published")
        else:
            log.info("%s: removing %s, written for an epoch that was never committed", run_dir, path.name)
            path.unlink()
            fsync_path(path.parent)
            commit_point("checkpoint-stale:removed")


def check_resumable(run_dir: Path, state: RunState | None) -> None:
    """The checkpoints a committed state names must be there (after ``settle_checkpoints``)."""
    if state is None or state.epoch == 0:
        return
    for kind, epoch in (("last", state.epoch), ("best", state.best_epoch)):
        if epoch is not None and not checkpoint_path(run_dir, kind).is_file():
            raise RunError(
                f"{run_dir}: {STATE_NAME} records the {kind} checkpoint of epoch {epoch} but there is "
                f"no {CHECKPOINTS_DIR}/{kind}.keras; cannot resume"
            )


def load_for_resume(run_dir: Path, state: RunState) -> keras.Model:
    """``last.keras`` with its optimizer, checked to be the epoch ``state`` committed."""
    path = checkpoint_path(run_dir, "last")
    model = keras.models.load_model(path)
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if steps != state.iterations:
        raise RunError(
            f"{path}: holds the model after optimizer step {steps} but {STATE_NAME} committed epoch "
            f"{state.epoch} at step {state.iterations}; the checkpoint and state disagree, so the run cannot "
            "be resumed exactly: start a new run"
        )
    if state.learning_rate is None:
        raise RunError(f"{run_dir}: {STATE_NAME} records no learning rate for epoch {state.epoch}; cannot resume")
    model.optimizer.learning_rate = float(state.learning_rate)
    log.info("resuming %s at epoch %d (lr %g, optimizer step %d)", run_dir, state.epoch, state.learning_rate, steps)
    return model


def _finite(logs: dict[str, Any], keys: Sequence[str]) -> bool:
    return all(math.isfinite(float(logs[k])) for k in keys if k in logs and logs[k] is not None)


# wall-clock figures of an epoch: in history.csv and progress.png, never in state.json,
# which stays bit-identical between an uninterrupted run and a killed-and-resumed one
TIMING_KEYS = frozenset({"epoch_seconds"})


def _floats(logs: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items() if k not in TIMING_KEYS}


class RunCheckpoint(keras.callbacks.Callback):
    """The only writer of ``checkpoints/`` and ``state.json``: one commit per epoch."""

    def __init__(self, run_dir: Path, state: RunState, stateful_callbacks: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.state = state
        self.stateful_callbacks = stateful_callbacks or {}  # name -> callback with .state()
        self.stopped_on_nan = False

    @property
    def best_path(self) -> Path:
        return checkpoint_path(self.run_dir, "best")

    @property
    def last_path(self) -> Path:
        return checkpoint_path(self.run_dir, "last")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = dict(logs or {})
        if not _finite(logs, ("loss", "val_loss")):
            self.stopped_on_nan = True
            self.model.stop_training = True
            log.error(
                "epoch %d: loss is not finite; stopping, keeping the checkpoint of epoch %s",
                epoch + 1,
                self.state.epoch,
            )
            return
        generation, state = epoch + 1, self.state
        current = logs.get(BEST_MONITOR)
        if current is not None and (state.best_value is None or float(current) > state.best_value):
            save_model_atomic(self.model, generation_path(self.run_dir, "best", generation), "checkpoint-best")
            state = dataclasses.replace(
                state, best_value=float(current), best_epoch=generation, best_logs=_floats(logs)
            )
        save_model_atomic(self.model, generation_path(self.run_dir, "last", generation), "checkpoint-last")
        optimizer = self.model.optimizer
        state = dataclasses.replace(
            state,
            epoch=generation,
            learning_rate=float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            iterations=int(keras.ops.convert_to_numpy(optimizer.iterations)),
            last_logs=_floats(logs),
            callbacks={name: cb.state() for name, cb in self.stateful_callbacks.items()},
            generation=generation,
        )
        write_state(self.run_dir, state)  # the commit
        self.state = state
        settle_checkpoints(self.run_dir, state)
