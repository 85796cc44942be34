"""The fit itself: model (fresh, resumed or fine-tuned), datasets, callbacks, ``model.fit``, its summary.

Runs inside ``training.run.train``, which holds the run folder's lock and has prepared
the folder; ``RunCheckpoint`` (``training.checkpoints``) commits each epoch.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from dataset.common.verify import naming_full_disk
from dataset.contract.reader import PatchReader
from dataset.contract.run import HISTORY_NAME, LOGS_DIR, RunState
from training.callbacks import (
    BEST_MONITOR,
    EpochScalars,
    EpochTimer,
    ImageSummaries,
    PolyLearningRate,
    ProgressPicture,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
)
from training.checkpoints import RunCheckpoint, load_for_resume
from training.config import TrainConfig
from training.distribute import build_compiled_model, jit_compile_for, make_strategy
from training.finetune import InitWeights, apply_init_weights
from training.pipeline import training_dataset, validation_dataset, validation_tiles
from training.preflight import RunInputs
from training.progress import PROGRESS_NAME

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    initial_epoch: int
    epochs_completed: int
    best_epoch: int | None
    best_val_dice: dict[str, float]
    last_val_dice: dict[str, float]
    stopped: str  # completed | early_stopping | nan
    learning_rate: float
    best_checkpoint: Path
    last_checkpoint: Path
    log_dir: Path
    replicas: int = 1
    fold: int = 0  # the index fold trained on, of n_folds
    n_folds: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def choose_image_samples(
    store: Path, rows: list[dict[str, Any]], count: int, seed: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """A fixed set of foreground patches (stored, unaugmented) for TensorBoard images."""
    candidates = [i for i, r in enumerate(rows) if int(r.get("foreground", 0)) and not r.get("variant")]
    if not candidates or count == 0:
        return []
    picks = np.random.default_rng(seed).choice(len(candidates), size=min(count, len(candidates)), replace=False)
    reader = PatchReader(store)
    out = []
    for k in sorted(int(p) for p in picks):
        row = rows[candidates[k]]
        image, label = reader.read(row)
        out.append((f"{row['case_id']}_{row['z0']}_{row['y0']}_{row['x0']}", image, label))
    reader.close()
    return out


def pad_for_replicas(rows: list[dict[str, Any]], batch_size: int, replicas: int) -> list[dict[str, Any]]:
    """Repeat the first rows so the last validation batch is whole.

    With several replicas a partial last batch leaves some replica an empty batch, which
    Keras' distributed evaluation cannot take (AddN of shapes [1, ...] and [0, ...]). At
    most ``global_batch - 1`` patches are counted twice; on one replica nothing changes.
    """
    global_batch = batch_size * replicas
    if replicas <= 1 or len(rows) % global_batch == 0:
        return list(rows)
    extra = global_batch - len(rows) % global_batch
    log.warning("validation: %d patches repeated so %d replicas get whole batches", extra, replicas)
    return list(rows) + [rows[i % len(rows)] for i in range(extra)]


def recipe_line(config: TrainConfig) -> str:
    """The recipe in a few words, the title of ``progress.png``: runs side by side say what differs."""
    m = config.model
    norm = f"group({m.norm_groups})" if m.norm == "group" else m.norm
    schedule = "poly" if config.schedule == "poly" else "plateau"
    supervision = ", deep supervision" if m.deep_supervision else ""
    return (
        f"U-Net depth {m.depth}, {m.base_filters} filters, {norm} norm, {m.activation}{supervision}; "
        f"{config.loss.name}; {config.optimizer} lr {config.learning_rate:g} {schedule}; batch {config.batch_size}"
    )


def _scheduler_callbacks(config: TrainConfig, state: RunState) -> dict[str, keras.callbacks.Callback]:
    """Callbacks whose counters ``state.json`` keeps, restored from it."""
    saved = state.callbacks or {}
    stateful: dict[str, keras.callbacks.Callback] = {}
    if config.schedule == "plateau":
        stateful["reduce_lr"] = ResumableReduceLROnPlateau(
            initial_state=saved.get("reduce_lr"),
            monitor="val_loss",
            mode="min",
            factor=config.lr_factor,
            patience=config.lr_patience,
            min_lr=config.min_learning_rate,
            verbose=1,
        )
    if config.early_stopping_patience > 0:
        stateful["early_stopping"] = ResumableEarlyStopping(
            initial_state=saved.get("early_stopping"),
            monitor=BEST_MONITOR,
            mode="max",
            patience=config.early_stopping_patience,
            verbose=1,
        )
    return stateful


def _callbacks(
    run_dir: Path,
    config: TrainConfig,
    inputs: RunInputs,
    state: RunState,
    stateful: dict[str, keras.callbacks.Callback],
) -> list[keras.callbacks.Callback]:
    """In this order: schedulers update their counters before ``RunCheckpoint`` commits them."""
    samples = {
        "train": choose_image_samples(inputs.store, inputs.train_rows, config.image_patches, config.seed),
        "validation": choose_image_samples(inputs.store, inputs.val_rows, config.image_patches, config.seed),
    }
    schedule = [PolyLearningRate(config.learning_rate, config.epochs)] if config.schedule == "poly" else []
    return [
        EpochTimer(),
        keras.callbacks.TerminateOnNaN(),
        *schedule,
        *stateful.values(),
        ImageSummaries(run_dir / LOGS_DIR, samples, inputs.patch_size_zyx if config.model.per_sample_norm else None),
        EpochScalars(run_dir / LOGS_DIR),
        keras.callbacks.CSVLogger(str(run_dir / HISTORY_NAME), append=state.epoch > 0),
        ProgressPicture(
            run_dir / HISTORY_NAME, run_dir / PROGRESS_NAME, title=f"{run_dir.name}: {recipe_line(config)}"
        ),
        RunCheckpoint(run_dir, state, stateful),
    ]


def _datasets(inputs: RunInputs, config: TrainConfig, replicas: int, initial_epoch: int):
    """(training stream skipping the batches already seen, validation set, validation steps)."""
    train_ds = training_dataset(
        inputs.store,
        inputs.train_rows,
        config,
        config.batch_size * replicas,
        skip_batches=initial_epoch * config.steps_per_epoch,
    )
    val_rows = pad_for_replicas(inputs.val_rows, config.val_batch_size, replicas)
    tile = inputs.patch_size_zyx if config.model.per_sample_norm else None  # the window it trains on
    val_ds = validation_dataset(inputs.store, val_rows, config.val_batch_size * replicas, config.input_threads, tile)
    samples = len(val_rows) * validation_tiles(inputs.val_patch_size_zyx, tile)
    return train_ds, val_ds, math.ceil(samples / (config.val_batch_size * replicas))


def _model(run_dir: Path, config: TrainConfig, state: RunState, init: InitWeights | None) -> keras.Model:
    """The committed epoch's model (resume), else a fresh one, holding ``init``'s weights when fine-tuning.

    A fine-tuned model gets a new optimizer (step 0, the config's learning rate): only the
    weights come from the source, so the schedule starts over on the new data.
    """
    if state.epoch > 0:
        return load_for_resume(run_dir, state)
    model = build_compiled_model(config)
    if init is not None:
        apply_init_weights(model, init)
    return model


def fit(
    run_dir: Path,
    config: TrainConfig,
    inputs: RunInputs,
    state: RunState | None,
    init: InitWeights | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Build, fine-tune (``init``) or resume the model and train it from ``state``'s epoch to ``config.epochs``."""
    keras.utils.set_random_seed(config.seed)
    state = state or RunState()
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        model = _model(run_dir, config, state, init)
        model.jit_compile = jit_compile_for(config)  # this machine's XLA setting, also over a resumed checkpoint's
    train_ds, val_ds, validation_steps = _datasets(inputs, config, replicas, state.epoch)
    stateful = _scheduler_callbacks(config, state)
    callbacks = _callbacks(run_dir, config, inputs, state, stateful)
    with naming_full_disk(run_dir):  # history.csv and TensorBoard's events are written by Keras and TensorFlow
        history = model.fit(
            train_ds,
            epochs=config.epochs,
            initial_epoch=state.epoch,
            steps_per_epoch=config.steps_per_epoch,
            validation_data=val_ds,
            validation_steps=validation_steps,
            callbacks=callbacks,
            shuffle=False,  # the stream is shuffled by the pipeline
            verbose=1 if progress and sys.stderr.isatty() else 2,  # progress: Keras' bar, else a line per epoch
        )
    summary = _summary(run_dir, config, inputs, state.epoch, callbacks[-1], stateful, model, history, replicas)
    if init is not None:
        summary.extra["init_from"] = dict(init.record)
    return summary


def _summary(
    run_dir: Path,
    config: TrainConfig,
    inputs: RunInputs,
    initial_epoch: int,
    checkpoint: RunCheckpoint,
    stateful: dict[str, Any],
    model: keras.Model,
    history: keras.callbacks.History,
    replicas: int,
) -> TrainSummary:
    final = checkpoint.state
    early = stateful.get("early_stopping")
    stopped = (
        "nan"
        if checkpoint.stopped_on_nan or (model.stop_training and _nan_in(history))
        else ("early_stopping" if early is not None and early.stopped_epoch > 0 else "completed")
    )
    return TrainSummary(
        run_dir=run_dir,
        initial_epoch=initial_epoch,
        epochs_completed=final.epoch,
        best_epoch=final.best_epoch,
        best_val_dice=_dice_of(final.best_logs),
        last_val_dice=_dice_of(final.last_logs),
        stopped=stopped,
        learning_rate=float(final.learning_rate if final.learning_rate is not None else config.learning_rate),
        best_checkpoint=checkpoint.best_path,
        last_checkpoint=checkpoint.last_path,
        log_dir=run_dir / LOGS_DIR,
        replicas=replicas,
        fold=inputs.fold,
        n_folds=inputs.n_folds,
    )


def _dice_of(logs: Any) -> dict[str, float]:
    logs = logs or {}
    return {name: float(logs[f"val_dice_{name}"]) for name in ("pancreas", "tumour") if f"val_dice_{name}" in logs}


def _nan_in(history: keras.callbacks.History) -> bool:
    losses = history.history.get("loss", [])
    return bool(losses) and not math.isfinite(float(losses[-1]))


__all__ = ["TrainSummary", "choose_image_samples", "fit", "pad_for_replicas"]
