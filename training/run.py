"""A training run: ``train(store, run_dir, config, resume, fold) -> TrainSummary``.

Holds RUN_DIR's lock throughout and checks everything before writing. The files:
docs/reference/contract.md#the-run-train; the pieces:
docs/explanation/internals.md#the-run-trainingrunpy-and-its-pieces.
"""

from __future__ import annotations

from pathlib import Path

from dataset.common.locks import shared_lock
from dataset.common.paths import refuse_inside
from dataset.contract.run import HISTORY_NAME, RunError
from training.config import TrainConfig
from training.distribute import (
    build_compiled_model,
    check_execution,
    execution_settings,
    make_strategy,
)
from training.finetune import INIT_WITH_RESUME, load_init_weights, recorded_init_weights
from training.fit import TrainSummary, choose_image_samples, fit, pad_for_replicas
from training.optimizer import precision_policy
from training.preflight import RunInputs, input_contract, read_run_inputs
from training.profile import profile_input, synthetic_step_time
from training.rundir import RESUMABLE_CHANGES, check_run_dir, open_run_dir, prepare_run_dir


def train(
    store: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    resume: bool = False,
    fold: int = 0,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train (or continue, ``resume``; or fine-tune from ``init_from``, ``training.finetune``) a U-Net
    on fold ``fold`` of a store's index; see the module docstring."""
    run_dir = Path(run_dir)
    check_execution(config)  # a precision or XLA setting this machine cannot run: refused before anything is written
    if init_from is not None and resume:
        raise RunError(INIT_WITH_RESUME)
    refuse_inside(run_dir, [("store", store), ("run of --init-from", init_run_folder(init_from))], "--out")
    # shared: folds may train on one store at once, but preprocess and index (exclusive) may not
    # rewrite its shards or manifests under them
    with shared_lock(store):
        return _train_locked(store, run_dir, config, resume, fold, init_from, progress)


def _train_locked(
    store: str | Path,
    run_dir: Path,
    config: TrainConfig,
    resume: bool,
    fold: int,
    init_from: str | Path | None,
    progress: bool,
) -> TrainSummary:
    inputs = read_run_inputs(store, config, fold)
    init = load_init_weights(init_from, config, inputs) if init_from is not None else None
    with open_run_dir(run_dir, resume):
        state = check_run_dir(run_dir, config, inputs, resume)
        if resume and (state is None or state.epoch == 0):
            init = recorded_init_weights(run_dir, config, inputs)
        prepare_run_dir(run_dir, config, inputs, state, init.record if init else None)
        with execution_settings(config):  # precision policy and, when deterministic, op determinism
            return fit(run_dir, config, inputs, state, init, progress)


def init_run_folder(init_from: str | Path | None) -> Path | None:
    """The run folder ``--init-from`` reads (RUN_DIR, or the run of RUN_DIR/checkpoints/X.keras);
    ``None`` for a loose model file, whose folder may be anything (the working directory)."""
    path = None if init_from is None else Path(init_from)
    if path is None or path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else None


def run_dir_summary_lines(summary: TrainSummary) -> list[str]:
    """Human-readable lines for the CLI."""

    def fmt(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in d.items()) or "n/a"

    return [
        f"epochs: {summary.initial_epoch} -> {summary.epochs_completed} ({summary.stopped}) on fold {summary.fold} "
        f"(of {summary.n_folds}), {summary.replicas} replica(s)",
        f"best val Dice (epoch {summary.best_epoch}): {fmt(summary.best_val_dice)}",
        f"last val Dice: {fmt(summary.last_val_dice)}; learning rate {summary.learning_rate:g}",
        f"checkpoints: {summary.best_checkpoint} (best), {summary.last_checkpoint} (last)",
        f"logs: {summary.log_dir}; history {summary.run_dir / HISTORY_NAME}",
        f"tensorboard --logdir {summary.log_dir}",
    ]


__all__ = [
    "RESUMABLE_CHANGES",
    "RunInputs",
    "TrainSummary",
    "build_compiled_model",
    "check_run_dir",
    "choose_image_samples",
    "input_contract",
    "make_strategy",
    "pad_for_replicas",
    "precision_policy",
    "profile_input",
    "read_run_inputs",
    "run_dir_summary_lines",
    "synthetic_step_time",
    "train",
]
