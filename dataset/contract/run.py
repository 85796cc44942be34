"""``RUN_DIR/``: what ``pancreas train`` hands to itself (resume), ``predict`` and ``evaluate --run``.

Imports no TensorFlow: inference and evaluation read a run folder through this module.
``state.json`` is the run's commit record: it names the checkpoint generation it commits
(the steps are in ``training.checkpoints``). Files and fields: the dataclasses below and
docs/reference/contract.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dataset.common.atomic import ReadError, read_json, write_json_atomic
from dataset.common.records import (
    ContractError,
    optional,
    plain,
    read_record,
    write_record,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")

CONFIG_NAME = "config.json"
FINGERPRINTS_NAME = "fingerprints.json"
INPUT_CONTRACT_NAME = "input_contract.json"
STATE_NAME = "state.json"
HISTORY_NAME = "history.csv"
ENVIRONMENT_NAME = "environment.json"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
RUN_FILES = (
    CONFIG_NAME,
    STATE_NAME,
    INPUT_CONTRACT_NAME,
    FINGERPRINTS_NAME,
    HISTORY_NAME,
    CHECKPOINTS_DIR,
    LOGS_DIR,
    ENVIRONMENT_NAME,
)
MODEL_INPUT = "(N, z, y, x, 1) float32 in [0, 1] = stored uint8 level / 255"
MODEL_OUTPUT = "(N, z, y, x, 3) float32 softmax"
_GENERATION_FILE = re.compile(r"^(best|last)\.(\d+)\.keras$")


class RunError(ContractError):
    """A run folder, or one of its files, that cannot be used; the message names it."""


# ---------------------------------------------------------------------------- paths
def checkpoint_path(run_dir: str | Path, kind: str) -> Path:
    """The published ``checkpoints/best.keras`` or ``last.keras``."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"{kind}.keras"


def generation_path(run_dir: str | Path, kind: str, generation: int) -> Path:
    """``checkpoints/<kind>.<generation>.keras``: written before ``state.json`` commits it."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"{kind}.{int(generation)}.keras"


def generation_files(run_dir: str | Path) -> list[tuple[str, int, Path]]:
    """Every ``(kind, generation, path)`` under ``checkpoints/``, sorted."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _GENERATION_FILE.match(path.name)
            if match and path.is_file():
                found.append((match.group(1), int(match.group(2)), path))
    return sorted(found)


def run_files_present(run_dir: str | Path) -> list[str]:
    """Which of ``RUN_FILES`` the folder holds (none if it is not a folder)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if (run_dir / name).exists()] if run_dir.is_dir() else []


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run ``train --resume`` can continue (its ``config.json``)."""
    return (Path(run_dir) / CONFIG_NAME).is_file()


# ---------------------------------------------------------------------------- reading
_HINT = "not a complete `pancreas train` run folder"


def _read(run_dir: str | Path, name: str, cls: type[R], what: str) -> R:
    return read_record(Path(run_dir) / name, cls, what, _HINT)


# ---------------------------------------------------------------------------- config.json
def write_run_config(run_dir: str | Path, config: Mapping[str, Any]) -> None:
    """The resolved training config, a ``TrainConfig`` as a mapping (crash point ``run-config``)."""
    write_json_atomic(Path(run_dir) / CONFIG_NAME, plain(config), point="run-config")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_NAME
    try:
        data = read_json(path, "training config", _HINT)
    except ReadError as err:
        raise RunError(str(err)) from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: the training config must be a JSON object")
    return data


# ---------------------------------------------------------------------------- fingerprints.json
@dataclass(frozen=True)
class RunFingerprints:
    """``fingerprints.json``: what the run was started on; a resume on another store or index is refused."""

    KIND: ClassVar[str] = "run fingerprints record"
    ERROR: ClassVar[type[Exception]] = RunError

    version: int = field(default=1, kw_only=True)  # format version of this file
    store_fingerprint: str  # of the store's catalog (dataset.contract.fingerprints.store_fingerprint)
    index_fingerprint: str  # of the index's manifests
    preprocess_fingerprint: str = ""  # of the store's preprocessing config
    index_config_fingerprint: str = optional("")  # of the resolved index config
    # fine-tuning (pancreas train --init-from): {"path": the .keras file (absolute), "run_dir": its run | null,
    # "checkpoint": "last" | "best" | null, "store_fingerprint": the source's store | null, "model_fingerprint"}
    init_from: Mapping[str, Any] | None = optional()

    def __post_init__(self) -> None:
        if self.init_from is not None and not isinstance(self.init_from.get("path"), str):
            raise RunError(f"init_from must be a mapping with the 'path' the run started from, got {self.init_from!r}")


def write_fingerprints(run_dir: str | Path, fingerprints: RunFingerprints) -> None:
    """Written once, when the run starts (crash point ``run-fingerprints``)."""
    write_record(Path(run_dir) / FINGERPRINTS_NAME, fingerprints, point="run-fingerprints")


def read_fingerprints(run_dir: str | Path) -> RunFingerprints:
    return _read(run_dir, FINGERPRINTS_NAME, RunFingerprints, "run fingerprints record")


# ---------------------------------------------------------------------------- input_contract.json
PER_SAMPLE_NORMS = ("instance", "group")  # model norms with per-window statistics (training.config.NORMS)


@dataclass(frozen=True, kw_only=True)
class InputContract:
    """``input_contract.json``: what a model of this run takes and gives; inference preprocesses and checks with it."""

    KIND: ClassVar[str] = "input contract"
    ERROR: ClassVar[type[Exception]] = RunError

    version: int = field(default=1, kw_only=True)  # format version of this file
    patch_size_zyx: tuple[int, int, int] | None = optional()  # training patch size (z, y, x)
    val_patch_size_zyx: tuple[int, int, int]  # validation patch size (z, y, x): predict's default window for batch norm
    n_classes: int  # classes the model outputs (3: background, pancreas, tumour)
    label_names: Sequence[str] | Mapping[str, str] | None = optional()  # [name of class 0, 1, ...]
    model_depth: int  # the U-Net's depth (a window must be a multiple of 2**depth)
    # the model's normalisation (batch | instance | group); instance and group take their statistics
    # over the window, so predict's default window is then the training patch (default_window_zyx)
    model_norm: str | None = optional()
    input: str | None = optional()  # what the model takes (MODEL_INPUT)
    output: str | None = optional()  # what the model gives (MODEL_OUTPUT)
    preprocess: Mapping[str, Any]  # the store's resolved preprocessing config: predict prepares a CT with it
    preprocess_fingerprint: str | None = optional()  # of that config
    store_fingerprint: str | None = optional()  # of the store the run trained on
    index_fingerprint: str | None = optional()  # of the index the run trained on
    # {"flip_axes": [axes among 0, 1, 2], "flip_probability": p}: the axes the trainer mirrored
    # patches along (off when empty or p = 0); predict mirrors along them by default
    flip_augment: Mapping[str, Any] | None = optional()
    fold: int | None = optional()  # the index fold the run trained on (its validation cases are that fold's)
    n_folds: int | None = optional()  # how many folds the index had

    def __post_init__(self) -> None:
        if self.flip_augment is not None:
            object.__setattr__(self, "flip_augment", _flip_augment(self.flip_augment))

    @property
    def fingerprints(self) -> dict[str, str]:
        """The recorded store, index and preprocess fingerprints (those that are known)."""
        keys = ("store_fingerprint", "index_fingerprint", "preprocess_fingerprint")
        return {k: getattr(self, k) for k in keys if getattr(self, k)}

    @property
    def default_window_zyx(self) -> tuple[int, int, int]:
        """Predict's sliding window when the config names none: the training patch for a model
        normalised per sample (instance or group norm: statistics over the window, which must be
        the size it trained on, as nnU-Net predicts), else the validation patch (batch norm uses
        fixed statistics, and a larger window means fewer, cheaper-to-stitch windows)."""
        if self.model_norm in PER_SAMPLE_NORMS and self.patch_size_zyx is not None:
            return self.patch_size_zyx
        return self.val_patch_size_zyx

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        """The axes the trainer flipped (``()``: flips were off); ``None``: not recorded."""
        if self.flip_augment is None:
            return None
        if float(self.flip_augment["flip_probability"]) <= 0:
            return ()
        return tuple(int(a) for a in self.flip_augment["flip_axes"])


def _flip_augment(value: Mapping[str, Any]) -> dict[str, Any]:
    """``flip_augment`` checked: distinct axes among 0, 1, 2 and a probability in [0, 1]."""
    wrong = 'flip_augment must be {"flip_axes": [axes among 0, 1, 2], "flip_probability": p}'
    if set(value) != {"flip_axes", "flip_probability"}:
        raise RunError(f"{wrong}, got {dict(value)!r}")
    axes, probability = value["flip_axes"], value["flip_probability"]
    if (
        not isinstance(axes, (list, tuple))
        or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes)
        or len(set(axes)) != len(axes)
        or isinstance(probability, bool)
        or not isinstance(probability, (int, float))
        or not 0 <= probability <= 1
    ):
        raise RunError(f"{wrong}, got {dict(value)!r}")
    return {"flip_axes": [int(a) for a in axes], "flip_probability": float(probability)}


def write_input_contract(run_dir: str | Path, contract: InputContract) -> None:
    """Crash point ``input-contract``."""
    write_record(Path(run_dir) / INPUT_CONTRACT_NAME, contract, point="input-contract")


def read_input_contract(run_dir: str | Path) -> InputContract:
    """The run's contract; ``RunError`` with one line naming the file when it is missing or wrong."""
    return _read(run_dir, INPUT_CONTRACT_NAME, InputContract, "input contract")


def model_mismatch(
    found: Mapping[str, int] | None, contract: InputContract, run_config: Mapping[str, Any] | None = None
) -> str | None:
    """How a loaded model (``dataset.common.modelfiles.unet_architecture``) differs from the run's
    ``input_contract.json`` (depth, classes, one input channel) and ``config.json`` (base filters),
    or ``None``. A checkpoint copied in from another run would otherwise predict, or be exported,
    with the wrong window multiple or class meaning."""
    if found is None:
        return "not a U-Net built by this project (no layer enc0_conv1/head_conv)"
    expected: dict[str, Any] = {
        "model.depth": contract.model_depth,
        "n_classes": contract.n_classes,
        "input channels": 1,
    }
    filters = ((run_config or {}).get("model") or {}).get("base_filters")
    if filters is not None:
        expected["model.base_filters"] = filters
    for key, wanted in expected.items():
        if found[key] != wanted:
            where = CONFIG_NAME if key == "model.base_filters" else INPUT_CONTRACT_NAME
            return f"the model has {key} {found[key]} but the run's {where} says {wanted}: it is not this run's model"
    return None


def run_model_mismatch(found: Mapping[str, int] | None, run_dir: str | Path) -> str | None:
    """``model_mismatch`` against ``run_dir``'s contract and, when it has one, its ``config.json``."""
    run_config = read_run_config(run_dir) if (Path(run_dir) / CONFIG_NAME).is_file() else None
    return model_mismatch(found, read_input_contract(run_dir), run_config)


# ---------------------------------------------------------------------------- environment.json
@dataclass(frozen=True, kw_only=True)
class EnvironmentRecord:
    """One start of the run (a new run, then each ``--resume``): the software and hardware it ran with."""

    epoch: int  # the epoch this start began at (0: a new run)
    started_utc: str  # when it started (ISO 8601, UTC)
    git_commit: str | None  # the code's commit | null: not run from a git checkout
    git_dirty: bool | None = None  # tracked files differed from that commit | null: unknown (no checkout)
    platform: str  # the operating system and machine
    # {python, tensorflow, keras, numpy, SimpleITK, h5py, hdf5, hdf5plugin, dask, elasticdeform,
    # nvidia-cudnn-cu12: version | null (not installed)}
    packages: Mapping[str, str | None]
    gpus: list[Mapping[str, Any]]  # [{name, description, compute_capability}] (empty: CPU only)
    cuda_build: Mapping[str, str | None]  # {cuda, cudnn} as TensorFlow reports its build
    cpu_threads: int  # CPU threads available
    checks: Mapping[str, str]  # {packages, blosc, elasticdeform: "ok" | what failed}
    # what the trainer resolved on that machine: precision, strategy, replicas, jit_compile, deterministic
    execution: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Environment:
    """``environment.json``: every start of the run, oldest first. Nothing reads it to decide
    anything (a resume on other hardware is allowed): it is how one finds out afterwards."""

    KIND: ClassVar[str] = "environment record"
    ERROR: ClassVar[type[Exception]] = RunError

    version: int = field(default=1, kw_only=True)  # format version of this file
    starts: list[EnvironmentRecord] = field(default_factory=list)  # one per start, the newest last


def write_environment(run_dir: str | Path, starts: list[EnvironmentRecord]) -> None:
    """Every start so far, the newest last (crash point ``run-environment``)."""
    write_record(Path(run_dir) / ENVIRONMENT_NAME, Environment(starts=list(starts)), point="run-environment")


def read_environment(run_dir: str | Path) -> list[EnvironmentRecord]:
    """The run's starts, oldest first; empty when the run has not written the file yet."""
    if not (Path(run_dir) / ENVIRONMENT_NAME).is_file():
        return []
    return _read(run_dir, ENVIRONMENT_NAME, Environment, "environment record").starts


# ---------------------------------------------------------------------------- state.json
@dataclass(frozen=True)
class RunState:
    """``state.json``: the last completed epoch, what ``--resume`` restores; written after the
    epoch's checkpoint files and before they are published, it commits them."""

    KIND: ClassVar[str] = "run state"
    ERROR: ClassVar[type[Exception]] = RunError

    version: int = field(default=1, kw_only=True)  # format version of this file
    epoch: int = 0  # epochs completed
    best_value: float | None = None  # best validation pancreas Dice so far | null
    best_epoch: int | None = None  # the epoch of best.keras | null
    best_logs: Mapping[str, float] | None = None  # that epoch's logs | null
    learning_rate: float | None = None  # the optimizer's learning rate at the end of the epoch
    iterations: int = 0  # optimizer steps so far (last.keras is checked against it)
    last_logs: Mapping[str, float] | None = None  # the last epoch's logs | null
    callbacks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # each callback's state to restore
    generation: int | None = None  # the checkpoint generation this state commits (last.<g>; null: no epoch yet)


def write_state(run_dir: str | Path, state: RunState) -> None:
    """Commit an epoch (crash point ``state``): written after its checkpoints, before publishing them."""
    write_record(Path(run_dir) / STATE_NAME, state, point="state")


def read_state(run_dir: str | Path) -> RunState | None:
    """The committed state, or ``None`` when no epoch has completed yet."""
    if not (Path(run_dir) / STATE_NAME).is_file():
        return None
    return _read(run_dir, STATE_NAME, RunState, "run state")


__all__ = [
    "CHECKPOINTS_DIR",
    "CONFIG_NAME",
    "ENVIRONMENT_NAME",
    "FINGERPRINTS_NAME",
    "HISTORY_NAME",
    "INPUT_CONTRACT_NAME",
    "LOGS_DIR",
    "MODEL_INPUT",
    "MODEL_OUTPUT",
    "RUN_FILES",
    "STATE_NAME",
    "Environment",
    "EnvironmentRecord",
    "InputContract",
    "RunError",
    "RunFingerprints",
    "RunState",
    "checkpoint_path",
    "generation_files",
    "generation_path",
    "holds_run",
    "read_environment",
    "read_fingerprints",
    "read_input_contract",
    "read_run_config",
    "read_state",
    "run_files_present",
    "write_environment",
    "write_fingerprints",
    "write_input_contract",
    "write_run_config",
    "write_state",
]
