"""What prediction takes from a training run: its input contract, preprocessing and model.

``load_run`` reads ``RUN_DIR/input_contract.json`` (``dataset.contract.run``), rebuilds the
preprocessing config it records (so inference runs the very preprocessing of training),
resolves the sliding window against the model's depth and fingerprints contract, config
and model file together: ``predictions.json`` records that fingerprint per case, and a
case predicted with other settings is predicted again.

TensorFlow is imported only in ``load_predict_fn``, so discovery, evaluation and the
tests with a fake model start without it.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataset.common.configio import ConfigError, check_patch_fits_depth, from_dict, to_dict
from dataset.common.files import fingerprint_file, fingerprint_json
from dataset.contract.run import INPUT_CONTRACT_NAME, InputContract, checkpoint_path, read_input_contract
from inference.config import PredictConfig
from inference.inputs import PredictError
from inference.volume import PredictFn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """What prediction takes from a run: its contract, preprocessing and the resolved settings."""

    run_dir: Path
    contract: InputContract
    preprocess: Any  # preprocess.config.PreprocessConfig
    config: PredictConfig
    fingerprint: str  # of contract + config + model: recorded per case in predictions.json


def load_run(run_dir: str | Path, config: PredictConfig, predict_fn: PredictFn | None) -> RunSettings:
    """Read the run's contract, check the window against it and fingerprint the settings."""
    from preprocess.config import PreprocessConfig, config_fingerprint

    run_dir = Path(run_dir)
    contract = read_input_contract(run_dir, error=PredictError)
    where = f"{run_dir / INPUT_CONTRACT_NAME}: preprocess"
    preprocess_config = from_dict(PreprocessConfig, dict(contract.preprocess), where=where)
    recorded = contract.preprocess_fingerprint
    if recorded and recorded != config_fingerprint(preprocess_config):
        log.warning("%s: preprocessing fingerprint %s differs from this code's reading of the same config (%s); "
                    "the preprocessing code may have changed since training", run_dir, recorded,
                    config_fingerprint(preprocess_config))
    config = resolve_config(config, contract)
    model = model_fingerprint(run_dir, config, predict_fn)
    fingerprint = fingerprint_json({"contract": contract.to_dict(), "config": to_dict(config), "model": model})
    return RunSettings(run_dir, contract, preprocess_config, config, fingerprint)


def resolve_config(config: PredictConfig, contract: InputContract) -> PredictConfig:
    """Fill the window from the contract and check the model can take it."""
    window = tuple(int(w) for w in (config.window_zyx or contract.val_patch_size_zyx))
    try:
        check_patch_fits_depth(window, int(contract.model_depth), "sliding-window")
    except ConfigError as err:
        raise PredictError(str(err)) from None
    return dataclasses.replace(config, window_zyx=window)


def model_fingerprint(run_dir: Path, config: PredictConfig, predict_fn: PredictFn | None) -> str:
    """The checkpoint file's fingerprint, or the name of a model callable given instead."""
    if predict_fn is not None:
        return "custom:" + getattr(predict_fn, "__qualname__", type(predict_fn).__name__)
    ckpt = checkpoint_path(run_dir, config.checkpoint)
    return fingerprint_file(ckpt) if ckpt.is_file() else "missing"


def load_predict_fn(run_dir: str | Path, checkpoint: str = "best") -> PredictFn:
    """Load the Keras model (lazily importing TensorFlow) and wrap it as a numpy callable."""
    path = checkpoint_path(run_dir, checkpoint)
    if not path.is_file():
        raise PredictError(f"{run_dir}: no checkpoint {path.name} in checkpoints/")
    import keras  # noqa: PLC0415 - lazy: only prediction with a real model pays for TensorFlow

    for module in ("training.losses", "training.metrics"):  # register the custom objects
        try:
            __import__(module)
        except ImportError:  # loading with compile=False does not need them
            log.debug("could not import %s", module)
    model = keras.saving.load_model(path, compile=False)

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(batch), dtype=np.float32)

    return predict_fn
