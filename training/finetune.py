"""Fine-tuning: start a new run from the weights of another run or of a bare ``.keras`` model.

``pancreas train --init-from SOURCE``: docs/how-to/train.md#fine-tuning-on-your-own-data and
docs/explanation/internals.md#fine-tuning-trainingfinetunepy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from dataset.common.configio import flatten_mapping
from dataset.common.fingerprints import fingerprint_file
from dataset.common.modelfiles import keras_file_problem, unet_architecture
from dataset.contract.catalog import catalog_path
from dataset.contract.run import (
    CHECKPOINTS_DIR,
    FINGERPRINTS_NAME,
    INPUT_CONTRACT_NAME,
    MODEL_INPUT,
    InputContract,
    RunError,
    checkpoint_path,
    holds_run,
    read_fingerprints,
    read_input_contract,
)
from training.config import TrainConfig
from training.model import N_CLASSES, is_aux_head_layer
from training.preflight import RunInputs

log = logging.getLogger(__name__)

INIT_WITH_RESUME = (
    "--init-from starts a new run from other weights and --resume continues RUN_DIR's own "
    "checkpoint: pass only one of them"
)
UNCHECKED_PREPROCESS = "limits"  # decides which cases are accepted, never what an accepted case stores


@dataclass(frozen=True)
class InitSource:
    """Where the weights come from: the ``.keras`` file, and its run when it has one."""

    model_path: Path
    run_dir: Path | None = None  # None: a bare model, its preprocessing unknown
    checkpoint: str | None = None  # "last" | "best" for a run's checkpoint


@dataclass(frozen=True)
class InitWeights:
    """The source's weights by layer name, checked against the config and store, and its record."""

    source: InitSource
    weights: dict[str, list[np.ndarray]]
    record: dict[str, Any]  # fingerprints.json's init_from


# ----------------------------------------------------------------------------- pure checks
def resolve_init_source(path: str | Path) -> InitSource:
    """RUN_DIR -> its last checkpoint; a run's ``checkpoints/<kind>.keras`` keeps its run; else a bare model."""
    path = Path(path)
    if path.is_dir():
        if not holds_run(path):
            raise RunError(f"--init-from {path}: not a training run folder (no run config) and not a .keras model")
        model = checkpoint_path(path, "last")
        if not model.is_file():
            raise RunError(
                f"--init-from {path}: the run has no {CHECKPOINTS_DIR}/{model.name} yet (no epoch "
                "completed); wait for one, or name a .keras file"
            )
        return InitSource(model.resolve(), path.resolve(), "last")
    problem = keras_file_problem(path) if path.is_file() else None
    if problem:
        raise RunError(f"--init-from {path}: {problem}")
    if path.suffix != ".keras" or not path.is_file():
        raise RunError(f"--init-from {path}: no such run folder or .keras model")
    run_dir = path.resolve().parent.parent
    if path.parent.name == CHECKPOINTS_DIR and path.stem in ("best", "last") and holds_run(run_dir):
        return InitSource(path.resolve(), run_dir, path.stem)
    return InitSource(path.resolve())


def preprocess_differences(source: Mapping[str, Any], store: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, source value, store value)`` for every preprocessing key that changes the model's input."""
    mine = {k: v for k, v in source.items() if k != UNCHECKED_PREPROCESS}
    theirs = {k: v for k, v in store.items() if k != UNCHECKED_PREPROCESS}
    a, b = flatten_mapping(mine, "preprocess"), flatten_mapping(theirs, "preprocess")
    missing = "(not recorded)"
    return [
        (k, a.get(k, missing), b.get(k, missing))
        for k in [*a, *(k for k in b if k not in a)]
        if a.get(k, missing) != b.get(k, missing)
    ]


def check_preprocess(source: InitSource, contract: InputContract, inputs: RunInputs) -> None:
    """The source run's preprocessing and input must be the new store's (module docstring)."""
    assert source.run_dir is not None, "checked only for a model in its run folder"
    where = source.run_dir / INPUT_CONTRACT_NAME
    if contract.input and contract.input != MODEL_INPUT:
        raise RunError(
            f"--init-from {source.run_dir}: its model takes input {contract.input!r} ({where}) but "
            f"this code feeds {MODEL_INPUT!r}; cannot fine-tune it"
        )
    differences = preprocess_differences(contract.preprocess, inputs.catalog.config)
    if differences:
        key, theirs, ours = differences[0]
        raise RunError(
            f"--init-from {source.run_dir}: the input contracts differ in {key} ({theirs!r} in {where} "
            f"vs {ours!r} in {catalog_path(inputs.store)}); fine-tuning needs a store preprocessed "
            "with the source run's preprocessing config"
        )


def architecture_of(model: keras.Model, where: str | Path) -> dict[str, int]:
    """``model.depth``, ``model.base_filters``, ``n_classes``, input channels of a ``build_unet`` model."""
    found = unet_architecture(model)
    if found is None:
        raise RunError(
            f"--init-from {where}: not a U-Net built by this project (no layer enc0_conv1/head_conv); "
            "cannot copy its weights"
        )
    return found


def expected_architecture(config: TrainConfig) -> dict[str, int]:
    """What the configured run builds (``training.model.build_unet``)."""
    return {
        "model.depth": config.model.depth,
        "model.base_filters": config.model.base_filters,
        "n_classes": N_CLASSES,
        "input channels": 1,
    }


def check_architecture(found: Mapping[str, int], config: TrainConfig, where: str | Path) -> None:
    """One line naming the first key on which the source model and the config differ."""
    for key, wanted in expected_architecture(config).items():
        if found[key] != wanted:
            fix = (
                f"set {key}: {found[key]} in the training config"
                if key.startswith("model.")
                else "start from a model of this project's U-Net"
            )
            raise RunError(
                f"--init-from {where}: {key} differs (the source model has {found[key]}, the training "
                f"config builds {wanted}); {fix}"
            )


# ----------------------------------------------------------------------------- loading
def init_record(source: InitSource, contract: InputContract | None) -> dict[str, Any]:
    """``fingerprints.json``'s ``init_from``: the file, its run, and what it was trained on."""
    return {
        "path": str(source.model_path),
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "checkpoint": source.checkpoint,
        "store_fingerprint": contract.store_fingerprint if contract else None,
        "model_fingerprint": fingerprint_file(source.model_path),
    }


def _load_weights(source: InitSource, config: TrainConfig) -> dict[str, list[np.ndarray]]:
    try:
        model = keras.saving.load_model(source.model_path, compile=False)
    except Exception as err:
        raise RunError(
            f"--init-from {source.model_path}: not a readable Keras model ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    check_architecture(architecture_of(model, source.model_path), config, source.model_path)
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


def load_init_weights(path: str | Path, config: TrainConfig, inputs: RunInputs) -> InitWeights:
    """Resolve ``--init-from``, check it against the store and config, read its weights; writes nothing."""
    source = resolve_init_source(path)
    contract = None
    if source.run_dir is not None:
        contract = read_input_contract(source.run_dir)
        check_preprocess(source, contract, inputs)
    else:
        log.warning(
            "--init-from %s: a bare model without its run folder: its preprocessing could not be "
            "checked; make sure %s was preprocessed like the model's training data",
            path,
            inputs.store,
        )
    weights = _load_weights(source, config)
    return InitWeights(source, weights, init_record(source, contract))


def recorded_init_weights(run_dir: Path, config: TrainConfig, inputs: RunInputs) -> InitWeights | None:
    """The weights a fine-tuning run started from, for a resume before its first committed epoch."""
    if not (run_dir / FINGERPRINTS_NAME).is_file():
        return None  # a plain run (or one killed before it wrote its fingerprints: see the module docstring)
    record = read_fingerprints(run_dir).init_from
    if not record:
        return None
    path = Path(record["path"])
    now = fingerprint_file(path) if path.is_file() else "missing"
    if now != record.get("model_fingerprint"):
        raise RunError(
            f"{run_dir}: started from {path}, which has changed or is gone since (fingerprint "
            f"{record.get('model_fingerprint')} then, {now} now); start a new run with --init-from "
            "into another --out"
        )
    return load_init_weights(path, config, inputs)


def apply_init_weights(model: keras.Model, init: InitWeights) -> None:
    """Copy the source's weights into the freshly built model, layer by layer (names and shapes checked).

    Deep-supervision heads the source lacks start fresh; the source's own heads are not copied
    into a model without them (only the network up to the full-resolution head carries over).
    """
    fresh = []
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = init.weights.get(layer.name)
        if weights is None and is_aux_head_layer(layer.name):
            fresh.append(layer.name)
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if weights is None or [w.shape for w in weights] != shapes:
            found = None if weights is None else [w.shape for w in weights]
            raise RunError(
                f"--init-from {init.source.model_path}: layer {layer.name} has weights {found} in the "
                f"source but {shapes} in the configured model"
            )
        layer.set_weights(weights)
    if fresh:
        log.info("deep-supervision heads not in the source start fresh: %s", ", ".join(fresh))
    log.info(
        "starting from the weights of %s (%s): fresh optimizer at step 0",
        init.source.model_path,
        init.source.checkpoint or "bare model",
    )


__all__ = [
    "INIT_WITH_RESUME",
    "InitSource",
    "InitWeights",
    "apply_init_weights",
    "architecture_of",
    "check_architecture",
    "check_preprocess",
    "expected_architecture",
    "init_record",
    "load_init_weights",
    "preprocess_differences",
    "recorded_init_weights",
    "resolve_init_source",
]
