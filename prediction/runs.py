"""What prediction takes from its training runs: contracts, preprocessing, models, post-processing.

``load_runs`` checks that an ensemble's contracts agree and fingerprints the settings; TensorFlow is
imported only in ``load_predict_fn``. See
docs/explanation/internals.md#runs-contracts-and-ensembles-predictionrunspy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from dataset.common.configio import ConfigError, check_patch_fits_depth, flatten_mapping, from_dict, to_dict
from dataset.common.fingerprints import fingerprint_file, fingerprint_json
from dataset.common.modelfiles import keras_file_problem, load_keras_model, unet_architecture
from dataset.common.records import record_to_dict
from dataset.contract.fingerprints import fingerprint_mismatch
from dataset.contract.postprocessing import PostprocessingDecision, PostprocessingError, read_postprocessing
from dataset.contract.run import (
    INPUT_CONTRACT_NAME,
    InputContract,
    checkpoint_path,
    read_input_contract,
    run_model_mismatch,
)
from prediction.cases import PredictError
from prediction.config import PredictConfig
from prediction.precision import model_in_precision, resolve_precision
from prediction.volume import PredictFn

log = logging.getLogger(__name__)

OTHER_STORE = "use the postprocessing file `pancreas evaluate --cv` chose on the store these runs were trained on"


@dataclass(frozen=True)
class Member:
    """One model of the ensemble: its run, contract, mirror axes and model fingerprint."""

    run_dir: Path
    contract: InputContract
    mirror_axes: tuple[int, ...]
    model: str


@dataclass(frozen=True)
class RunSettings:
    """What prediction takes from its runs: the models, the shared preprocessing and settings."""

    members: tuple[Member, ...]
    preprocess: Any  # preprocess.config.PreprocessConfig, the same for every member
    config: PredictConfig  # resolved: window_zyx set; mirror_axes set when every member mirrors alike
    postprocessing: PostprocessingDecision | None
    fingerprint: str  # of contracts + config + decision + models: recorded per case in predictions.json
    package: str | None = None  # the model package (zip or folder) the members came from, if any
    package_sha256: str | None = None  # its hash (SHA-256 of its package.json)

    @property
    def contract(self) -> InputContract:
        """The first run's contract (the members agree on everything prediction reads from it)."""
        return self.members[0].contract

    @property
    def run_dirs(self) -> tuple[Path, ...]:
        return tuple(m.run_dir for m in self.members)

    @property
    def mirror_axes(self) -> list[tuple[int, ...]]:
        return [m.mirror_axes for m in self.members]

    @property
    def runs_text(self) -> str:
        """The runs' absolute paths, joined by ``os.pathsep`` (``predictions.json``'s ``run``)."""
        return os.pathsep.join(str(d.resolve()) for d in self.run_dirs)


# ----------------------------------------------------------------------------- one run


def resolve_config(config: PredictConfig, contract: InputContract, run_dir: str | Path | None = None) -> PredictConfig:
    """Fill the window and the mirror axes from the contract and check the model can take the window."""
    window = cast("tuple[int, int, int]", tuple(int(w) for w in (config.window_zyx or contract.default_window_zyx)))
    try:
        check_patch_fits_depth(window, int(contract.model_depth), "sliding-window")
    except ConfigError as err:
        raise PredictError(f"{run_dir}: {err}" if run_dir is not None else str(err)) from None
    return dataclasses.replace(config, window_zyx=window, mirror_axes=mirror_axes_of(config, contract, run_dir))


def mirror_axes_of(
    config: PredictConfig, contract: InputContract, run_dir: str | Path | None = None
) -> tuple[int, ...]:
    """The config's axes if it names them, else the axes the run's trainer flipped."""
    if config.mirror_axes is not None:
        return tuple(int(a) for a in config.mirror_axes)
    if contract.mirror_axes is None:
        where = Path(run_dir) / INPUT_CONTRACT_NAME if run_dir is not None else "the input contract"
        log.warning(
            "%s records no flip augmentation (a run trained before it was recorded): no test-time "
            "mirroring; set mirror_axes in the predict config to mirror anyway",
            where,
        )
        return ()
    return contract.mirror_axes


def _preprocess_of(run_dir: Path, contract: InputContract):
    from preprocess.config import PreprocessConfig, config_fingerprint

    where = f"{run_dir / INPUT_CONTRACT_NAME}: preprocess"
    preprocess_config = from_dict(PreprocessConfig, dict(contract.preprocess), where=where)
    recorded = contract.preprocess_fingerprint
    if recorded and recorded != config_fingerprint(preprocess_config):
        log.warning(
            "%s: preprocessing fingerprint %s differs from this code's reading of the same config (%s); "
            "the preprocessing code may have changed since training",
            run_dir,
            recorded,
            config_fingerprint(preprocess_config),
        )
    return preprocess_config


def model_fingerprint(run_dir: Path, config: PredictConfig, predict_fn: PredictFn | None) -> str:
    """The checkpoint file's fingerprint, or the name of a model callable given instead."""
    if predict_fn is not None:
        return "custom:" + getattr(predict_fn, "__qualname__", type(predict_fn).__name__)
    ckpt = checkpoint_path(run_dir, config.checkpoint)
    return fingerprint_file(ckpt) if ckpt.is_file() else "missing"


# ----------------------------------------------------------------------------- the ensemble


def _agreed_keys(
    contract: InputContract, preprocess_config, window: tuple[int, ...], explicit_window: bool
) -> dict[str, Any]:
    """What an ensemble's members must share (module docstring), as flat ``key: value``."""
    keys: dict[str, Any] = {"n_classes": contract.n_classes}
    keys.update({k: getattr(contract, k) for k in ("input", "output") if getattr(contract, k)})
    names = contract.label_names
    if isinstance(names, Mapping):  # {"0": "background", ...} as some runs record it
        names = [names[k] for k in sorted(names, key=int)]
    if names:
        keys["label_names"] = list(names)
    if not explicit_window:  # a window set in the config is the same for every member
        keys["the sliding window (default_window_zyx)"] = list(window)
    keys.update(flatten_mapping(to_dict(preprocess_config), "preprocess"))
    return keys


def check_members_agree(first: Path, first_keys: Mapping[str, Any], other: Path, other_keys: Mapping[str, Any]) -> None:
    """One line naming both runs and the first key on which they differ."""
    for key in list(first_keys) + [k for k in other_keys if k not in first_keys]:
        if key in first_keys and key in other_keys and first_keys[key] == other_keys[key]:
            continue
        if key in ("label_names", "input", "output") and (key not in first_keys or key not in other_keys):
            continue  # not recorded by one of them (an older run): nothing to compare
        mine, theirs = first_keys.get(key, "(not recorded)"), other_keys.get(key, "(not recorded)")
        raise PredictError(
            f"runs {first} and {other} cannot be ensembled: their input contracts differ in {key} "
            f"({mine!r} vs {theirs!r})"
        )


def _read_decision(path: str | Path, members: Sequence[Member]) -> PostprocessingDecision:
    """The decision file, refused when it was chosen on another store than the runs'."""
    try:
        decision = read_postprocessing(path)
    except PostprocessingError as err:
        raise PredictError(str(err)) from None
    for member in members:
        where = member.run_dir / INPUT_CONTRACT_NAME
        if not member.contract.store_fingerprint:
            log.warning("%s records no store fingerprint: cannot check that %s was chosen on its store", where, path)
            continue
        mismatch = fingerprint_mismatch(
            "store fingerprint", decision.store_fingerprint, member.contract.store_fingerprint, path, where, OTHER_STORE
        )
        if mismatch:
            raise PredictError(mismatch)
    return decision


# Settings that change the score of a label map, never the map: left out of the fingerprint,
# so changing one does not predict every case again.
EVALUATION_ONLY = ("nsd_tolerance_mm", "detection")
# which files a case is written as changes no label: a case whose files are missing is predicted again
# (``prediction.predict``), and the NIfTI and the DICOM SEG of one prediction carry one fingerprint
OUTPUT_ONLY = ("output_format",)


def _fingerprint(members: Sequence[Member], config: PredictConfig, decision: PostprocessingDecision | None) -> str:
    settings = {k: v for k, v in to_dict(config).items() if k not in EVALUATION_ONLY + OUTPUT_ONLY}
    settings["postprocessing"] = dict(decision.largest_component) if decision else None
    if settings.get("precision") == "float32":  # what every predict computed in before it was a setting:
        del settings["precision"]  # those folders' cases stay up to date
    if len(members) == 1:
        return fingerprint_json(
            {"contract": record_to_dict(members[0].contract), "config": settings, "model": members[0].model}
        )
    return fingerprint_json(
        {"config": settings, "models": [{"contract": record_to_dict(m.contract), "model": m.model} for m in members]}
    )


def load_runs(
    run_dirs: str | Path | Sequence[str | Path],
    config: PredictConfig,
    predict_fns: PredictFn | Sequence[PredictFn] | None = None,
) -> RunSettings:
    """Read and check every run (an ensemble when several), the decision file, and fingerprint it all.

    ``predict_fns``: one model callable per run in place of its checkpoint (tests, other
    backends), or ``None``. Nothing is written; every refusal is one line.
    """
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    fns = [predict_fns] if callable(predict_fns) else list(predict_fns) if predict_fns is not None else None
    if not dirs:
        raise PredictError("no training run given (--model RUN_DIR)")
    if fns is not None and len(fns) != len(dirs):
        raise PredictError(f"{len(dirs)} runs but {len(fns)} models given in their place")
    seen = [d.resolve() for d in dirs]
    twice = [str(d) for i, d in enumerate(dirs) if seen[i] in seen[:i]]
    if twice:
        raise PredictError(f"run {twice[0]} is given twice: each model of an ensemble counts once")
    members, keys, preprocess_configs, windows = [], [], [], []
    for i, run_dir in enumerate(dirs):
        contract = read_input_contract(run_dir)
        preprocess_configs.append(_preprocess_of(run_dir, contract))
        resolved = resolve_config(config, contract, run_dir)
        assert resolved.window_zyx is not None and resolved.mirror_axes is not None  # resolve_config sets both
        windows.append(resolved.window_zyx)
        keys.append(_agreed_keys(contract, preprocess_configs[-1], resolved.window_zyx, config.window_zyx is not None))
        check_members_agree(dirs[0], keys[0], run_dir, keys[-1])
        model = model_fingerprint(run_dir, config, fns[i] if fns is not None else None)
        members.append(Member(run_dir, contract, tuple(resolved.mirror_axes), model))
    axes = {m.mirror_axes for m in members}
    decision = _read_decision(config.postprocessing, members) if config.postprocessing else None
    resolved = dataclasses.replace(
        config,
        window_zyx=windows[0],
        mirror_axes=axes.pop() if len(axes) == 1 else None,
        postprocessing=str(Path(config.postprocessing).resolve()) if config.postprocessing else None,
        precision=resolve_precision(config.precision),  # auto: what it means here, recorded and fingerprinted
    )
    fingerprint = _fingerprint(members, resolved, decision)
    return RunSettings(tuple(members), preprocess_configs[0], resolved, decision, fingerprint)


# ----------------------------------------------------------------------------- models


def check_model_is_the_runs(model: Any, run_dir: str | Path, path: Path) -> None:
    """Refuse a checkpoint whose depth, filters, classes or channels are not what its run recorded
    (``input_contract.json``, ``config.json``): one copied in from another run would otherwise fail
    per case inside Keras, or predict with the wrong class meaning."""
    mismatch = run_model_mismatch(unet_architecture(model), run_dir)
    if mismatch:
        raise PredictError(f"{path}: {mismatch}")


def load_predict_fn(run_dir: str | Path, checkpoint: str = "best", precision: str = "float32") -> PredictFn:
    """Load the Keras model (lazily importing TensorFlow) and wrap it as a numpy callable.

    ``precision``: ``float32`` or ``bfloat16`` (resolved, ``prediction.precision``); the output is float32."""
    path = checkpoint_path(run_dir, checkpoint)
    if not path.is_file():
        raise PredictError(f"{run_dir}: no checkpoint {path.name} in checkpoints/")
    model = load_keras_model(path, PredictError)
    check_model_is_the_runs(model, run_dir, path)
    model = model_in_precision(model, precision)

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(batch), dtype=np.float32)

    return predict_fn


def check_checkpoints(run_dirs: Sequence[str | Path], checkpoint: str = "best") -> None:
    """Refuse a run without its checkpoint file; callers run it before taking the output's lock."""
    for run_dir in run_dirs:
        if not checkpoint_path(run_dir, checkpoint).is_file():
            raise PredictError(f"{run_dir}: no checkpoint {checkpoint_path(run_dir, checkpoint).name} in checkpoints/")
        problem = keras_file_problem(checkpoint_path(run_dir, checkpoint))
        if problem:
            raise PredictError(f"{checkpoint_path(run_dir, checkpoint)}: {problem}")


def load_predict_fns(
    run_dirs: Sequence[str | Path], checkpoint: str = "best", precision: str = "float32"
) -> list[PredictFn]:
    """Every run's model, in order; a missing checkpoint stops before any is loaded."""
    check_checkpoints(run_dirs, checkpoint)
    return [load_predict_fn(d, checkpoint, precision) for d in run_dirs]
