"""A training run: ``train(store, run_dir, config, resume) -> TrainSummary``.

RUN_DIR layout::

    config.json            resolved training config
    fingerprints.json      store and index fingerprints the run was started on
    input_contract.json    what a model of this run expects (inference checks it)
    state.json             completed epochs, learning rate, best value, callback counters
    history.csv            one row per epoch (CSVLogger; cut back and appended on resume)
    checkpoints/best.keras best validation pancreas Dice
    checkpoints/last.keras end of the last completed epoch (with optimiser state)
    logs/                  TensorBoard: train/ validation/ scalars, images/

Every check (store, index, patch sizes, run folder) happens before anything is written,
so a bad call leaves an existing run untouched.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dataset.common.configio import ConfigError, to_dict
from dataset.common.files import atomic_path, remove_stale_temporaries, write_json_atomic
from dataset.index.build import store_fingerprint
from dataset.contract.manifest import INDEX_DIR, index_fingerprint
from dataset.contract.reader import PatchReader
from dataset.contract.store import LABEL_NAMES, StoreError, read_catalog
from training.callbacks import (
    BEST_MONITOR,
    EpochScalars,
    ImageSummaries,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    RunCheckpoint,
    StepTimer,
)
from training.config import TrainConfig, check_patch_size
from training.losses import make_loss
from training.metrics import dice_metrics
from training.model import N_CLASSES, build_unet
from training.pipeline import (
    load_rows,
    manifest_path,
    measure_patches_per_second,
    patch_size_of,
    training_dataset,
    validation_dataset,
)

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "state.json", "input_contract.json", "fingerprints.json", "history.csv",
             "checkpoints", "logs")


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
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInputs:
    """Everything read and checked from the store before a run starts."""

    store: Path
    catalog: dict[str, Any]
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    patch_size_zyx: tuple[int, int, int]
    val_patch_size_zyx: tuple[int, int, int]
    fingerprints: dict[str, str]


# ---------------------------------------------------------------- inputs and checks
def _index_summary(store: Path) -> dict[str, Any]:
    path = store / INDEX_DIR / "summary.json"
    if not path.is_file():
        raise StoreError(f"{path.parent}: incomplete index (no summary.json: `pancreas index` did not finish); "
                         "rerun `pancreas index`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: unreadable index summary ({err})") from None


def _check_cases(rows: list[dict[str, Any]], catalog: dict[str, Any], what: str) -> None:
    cases = catalog.get("cases", {})
    for case_id in sorted({r["case_id"] for r in rows}):
        rec = cases.get(case_id)
        if rec is None or rec.get("status") != "done" or not rec.get("has_label", True):
            reason = "is not in the store's catalog" if rec is None else f"is {rec.get('status')} / unlabelled"
            raise StoreError(f"{what} manifest names case {case_id}, which {reason}; rerun `pancreas index`")


def read_run_inputs(store: str | Path, config: TrainConfig) -> RunInputs:
    """Catalog, manifests and patch sizes, checked against each other and the model."""
    store = Path(store)
    if not store.is_dir():
        raise StoreError(f"{store}: store not found")
    catalog = read_catalog(store)
    train_rows, val_rows = load_rows(store, "train"), load_rows(store, "val")
    _check_cases(train_rows, catalog, "training")
    _check_cases(val_rows, catalog, "validation")
    patch = patch_size_of(train_rows, "training")
    val_patch = patch_size_of(val_rows, "validation")
    check_patch_size(patch, config.model.depth, "training")
    check_patch_size(val_patch, config.model.depth, "validation")
    fingerprints = {
        "store_fingerprint": store_fingerprint(catalog),
        "index_fingerprint": index_fingerprint(store),
        "preprocess_fingerprint": str(catalog.get("config_fingerprint", "")),
    }
    summary = _index_summary(store)
    indexed_on = summary.get("store_fingerprint")
    if indexed_on and indexed_on != fingerprints["store_fingerprint"]:
        raise StoreError(
            f"{store / INDEX_DIR}: the index was built on store fingerprint {indexed_on} but the store is now "
            f"{fingerprints['store_fingerprint']} (cases redone or added); rerun `pancreas index`"
        )
    recorded = summary.get("index_fingerprint")
    if recorded and recorded != fingerprints["index_fingerprint"]:
        raise StoreError(
            f"{store / INDEX_DIR}: train.csv/val.csv changed since `pancreas index` wrote them "
            f"({fingerprints['index_fingerprint']} vs {recorded}); rerun `pancreas index`"
        )
    if "config_fingerprint" in summary:
        fingerprints["index_config_fingerprint"] = str(summary["config_fingerprint"])
    return RunInputs(store, catalog, train_rows, val_rows, patch, val_patch, fingerprints)


def input_contract(inputs: RunInputs, config: TrainConfig) -> dict[str, Any]:
    """What a model of this run takes and gives; inference checks a store against it."""
    return {
        "patch_size_zyx": list(inputs.patch_size_zyx),
        "val_patch_size_zyx": list(inputs.val_patch_size_zyx),
        "n_classes": N_CLASSES,
        "label_names": [LABEL_NAMES[k] for k in range(N_CLASSES)],
        "model_depth": config.model.depth,
        "input": "(N, z, y, x, 1) float32 in [0, 1] = stored uint8 level / 255",
        "output": "(N, z, y, x, 3) float32 softmax",
        "preprocess": inputs.catalog.get("config", {}),
        "preprocess_fingerprint": inputs.fingerprints["preprocess_fingerprint"],
        "store_fingerprint": inputs.fingerprints["store_fingerprint"],
        "index_fingerprint": inputs.fingerprints["index_fingerprint"],
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err}); the run folder is damaged") from None


RESUMABLE_CHANGES = frozenset({"epochs", "early_stopping_patience", "image_patches"})


def check_run_dir(run_dir: Path, config: TrainConfig, inputs: RunInputs, resume: bool) -> dict[str, Any] | None:
    """The saved state to resume from (``None``: fresh start); raise if the folder is unusable."""
    existing = [name for name in RUN_FILES if (run_dir / name).exists()] if run_dir.is_dir() else []
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir}: exists and is not a folder")
    if not resume:
        if existing:
            raise ValueError(
                f"{run_dir}: holds another run ({', '.join(existing)}); pass --resume to continue it "
                "or choose another --out"
            )
        if run_dir.is_dir() and any(run_dir.iterdir()):  # e.g. the store itself
            raise ValueError(f"{run_dir}: exists and is not empty; choose a new --out for the run")
        return None
    if not (run_dir / "config.json").is_file():
        if existing:
            raise ValueError(f"{run_dir}: has {', '.join(existing)} but no config.json; cannot resume")
        log.info("%s: nothing to resume; starting a new run", run_dir)
        return None
    saved = _read_json(run_dir / "config.json")
    now = to_dict(config)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{run_dir}: cannot resume with a different config ({', '.join(changed)} changed; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
        )
    if (run_dir / "fingerprints.json").is_file():
        old = _read_json(run_dir / "fingerprints.json")
        for key in ("store_fingerprint", "index_fingerprint"):
            if old.get(key) != inputs.fingerprints[key]:
                raise StoreError(
                    f"{run_dir}: was trained on {key} {old.get(key)} but {inputs.store} now has "
                    f"{inputs.fingerprints[key]}; resume on the same store and index or start a new run"
                )
    state_path = run_dir / "state.json"
    state = _read_json(state_path) if state_path.is_file() else {}
    if state and not (run_dir / "checkpoints" / "last.keras").is_file():
        raise ValueError(f"{run_dir}: state.json but no checkpoints/last.keras; cannot resume")
    return state


# ---------------------------------------------------------------- distribution and precision
def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: mirrored over all GPUs when there are several; mirrored on a CPU-only host uses
    every logical CPU device (tests); multiworker reads TF_CONFIG."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    if name in ("auto", "mirrored"):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown strategy {name!r}")


def build_compiled_model(config: TrainConfig) -> keras.Model:
    model = build_unet(config.model.depth, config.model.base_filters, N_CLASSES)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=make_loss(config.loss),
        metrics=dice_metrics(),
        jit_compile=False,
    )
    return model


# ---------------------------------------------------------------- run folder files
def _truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the history rows of completed epochs only (a kill may leave one more)."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    col = header.index("epoch") if "epoch" in header else 0
    kept = [r for r in body if r and int(float(r[col])) < epochs_done]
    if len(kept) != len(body):
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows([header, *kept])


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


def _dice_of(logs: dict[str, Any] | None) -> dict[str, float]:
    logs = logs or {}
    return {name: float(logs[f"val_dice_{name}"]) for name in ("pancreas", "tumour") if f"val_dice_{name}" in logs}


# ---------------------------------------------------------------- the run
def train(store: str | Path, run_dir: str | Path, config: TrainConfig, resume: bool = False) -> TrainSummary:
    """Train (or continue) a U-Net on a store's index; see the module docstring for outputs."""
    run_dir = Path(run_dir)
    inputs = read_run_inputs(store, config)
    state = check_run_dir(run_dir, config, inputs, resume)

    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    remove_stale_temporaries(run_dir / "checkpoints")
    write_json_atomic(run_dir / "config.json", to_dict(config))
    if not (run_dir / "fingerprints.json").is_file():
        write_json_atomic(run_dir / "fingerprints.json", inputs.fingerprints)
    write_json_atomic(run_dir / "input_contract.json", input_contract(inputs, config))

    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        return _fit(run_dir, config, inputs, state or {})
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _fit(run_dir: Path, config: TrainConfig, inputs: RunInputs, state: dict[str, Any]) -> TrainSummary:
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    last_path = run_dir / "checkpoints" / "last.keras"
    initial_epoch = int(state.get("epoch", 0))
    with strategy.scope():
        if initial_epoch > 0:
            model = keras.models.load_model(last_path)
            model.optimizer.learning_rate = float(state["learning_rate"])
            log.info("resuming %s at epoch %d (lr %g, optimizer step %d)", run_dir, initial_epoch,
                     state["learning_rate"], int(model.optimizer.iterations))
        else:
            model = build_compiled_model(config)
    _truncate_history(run_dir / "history.csv", initial_epoch)

    train_ds = training_dataset(inputs.store, inputs.train_rows, config, config.batch_size * replicas,
                                skip_batches=initial_epoch * config.steps_per_epoch)
    val_rows = pad_for_replicas(inputs.val_rows, config.val_batch_size, replicas)
    val_ds = validation_dataset(inputs.store, val_rows, config.val_batch_size * replicas, config.input_threads)
    validation_steps = math.ceil(len(val_rows) / (config.val_batch_size * replicas))

    saved_cbs = state.get("callbacks", {})
    reduce_lr = ResumableReduceLROnPlateau(
        initial_state=saved_cbs.get("reduce_lr"), monitor="val_loss", mode="min", factor=config.lr_factor,
        patience=config.lr_patience, min_lr=config.min_learning_rate, verbose=1,
    )
    stateful: dict[str, Any] = {"reduce_lr": reduce_lr}
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), reduce_lr]
    if config.early_stopping_patience > 0:
        stateful["early_stopping"] = ResumableEarlyStopping(
            initial_state=saved_cbs.get("early_stopping"), monitor=BEST_MONITOR, mode="max",
            patience=config.early_stopping_patience, verbose=1,
        )
        callbacks.append(stateful["early_stopping"])
    samples = {
        "train": choose_image_samples(inputs.store, inputs.train_rows, config.image_patches, config.seed),
        "validation": choose_image_samples(inputs.store, inputs.val_rows, config.image_patches, config.seed),
    }
    checkpoint = RunCheckpoint(run_dir, state or {"epoch": 0, "best_value": None, "best_epoch": None}, stateful)
    callbacks += [
        ImageSummaries(run_dir / "logs", samples),
        EpochScalars(run_dir / "logs"),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=initial_epoch > 0),
        checkpoint,
    ]
    history = model.fit(
        train_ds,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=val_ds,
        validation_steps=validation_steps,
        callbacks=callbacks,
        shuffle=False,  # the stream is shuffled by the pipeline
        verbose=1 if sys.stderr.isatty() else 2,
    )
    final = checkpoint.state
    early = stateful.get("early_stopping")
    stopped = "nan" if checkpoint.stopped_on_nan or model.stop_training and _nan_in(history) else (
        "early_stopping" if early is not None and early.stopped_epoch > 0 else "completed")
    return TrainSummary(
        run_dir=run_dir,
        initial_epoch=initial_epoch,
        epochs_completed=int(final.get("epoch", 0)),
        best_epoch=final.get("best_epoch"),
        best_val_dice=_dice_of(final.get("best_logs")),
        last_val_dice=_dice_of(final.get("last_logs")),
        stopped=stopped,
        learning_rate=float(final.get("learning_rate", config.learning_rate)),
        best_checkpoint=checkpoint.best_path,
        last_checkpoint=checkpoint.last_path,
        log_dir=run_dir / "logs",
        replicas=replicas,
    )


def _nan_in(history: keras.callbacks.History) -> bool:
    losses = history.history.get("loss", [])
    return bool(losses) and not math.isfinite(float(losses[-1]))


# ---------------------------------------------------------------- which side limits a run
def profile_input(store: str | Path, config: TrainConfig, batches: int = 20) -> dict[str, float]:
    """The training pipeline alone (no model): augmented patches per second."""
    inputs = read_run_inputs(store, config)
    ds = training_dataset(inputs.store, inputs.train_rows, config)
    result = measure_patches_per_second(ds, batches)
    result["patch_size_zyx"] = list(inputs.patch_size_zyx)
    return result


def synthetic_step_time(
    config: TrainConfig, patch_size_zyx: tuple[int, int, int], steps: int = 5, seed: int = 0
) -> dict[str, float]:
    """The model alone on one random batch held in memory: seconds per training step."""
    check_patch_size(patch_size_zyx, config.model.depth, "synthetic")
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        keras.utils.set_random_seed(seed)
        model = build_compiled_model(config)
        rng = np.random.default_rng(seed)
        shape = (config.batch_size, *patch_size_zyx)
        x = rng.random((*shape, 1), dtype=np.float32)
        y = rng.integers(0, N_CLASSES, shape).astype(np.uint8)
        ds = tf.data.Dataset.from_tensors((x, y)).repeat()
        timer = StepTimer()
        model.fit(ds, epochs=1, steps_per_epoch=steps + 1, callbacks=[timer], verbose=0, shuffle=False)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    seconds = timer.median()
    return {"steps": steps, "seconds_per_step": seconds, "patches_per_s": config.batch_size / seconds}


def run_dir_summary_lines(summary: TrainSummary) -> list[str]:
    """Human-readable lines for the CLI."""
    def fmt(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in d.items()) or "n/a"

    return [
        f"epochs: {summary.initial_epoch} -> {summary.epochs_completed} ({summary.stopped}) on {summary.replicas} replica(s)",
        f"best val Dice (epoch {summary.best_epoch}): {fmt(summary.best_val_dice)}",
        f"last val Dice: {fmt(summary.last_val_dice)}; learning rate {summary.learning_rate:g}",
        f"checkpoints: {summary.best_checkpoint} (best), {summary.last_checkpoint} (last)",
        f"logs: {summary.log_dir}; history {summary.run_dir / 'history.csv'}",
        f"tensorboard --logdir {summary.log_dir}",
    ]


__all__ = [
    "TrainSummary", "train", "profile_input", "synthetic_step_time", "read_run_inputs", "input_contract",
    "make_strategy", "check_run_dir", "run_dir_summary_lines",
]
