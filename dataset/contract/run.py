"""``RUN_DIR/``: what ``pancreas train`` hands to itself (resume), ``predict`` and ``evaluate --run``.

Imports no TensorFlow: inference and evaluation read a run folder through this module.

==================== =========================================================== ============== ======================
file                 fields (in this order)                                      writer         readers
==================== =========================================================== ============== ======================
config.json          ``TrainConfig`` as a mapping (``dataset.common.configio``)  train (start)  train --resume
fingerprints.json    ``RunFingerprints``: store_fingerprint, index_fingerprint,  train (first   train --resume
                     preprocess_fingerprint, [index_config_fingerprint],         start only)
                     [init_from]
input_contract.json  ``InputContract``: patch_size_zyx, val_patch_size_zyx,      train (start)  predict, evaluate --run
                     n_classes, label_names, model_depth, input, output,
                     preprocess, preprocess_fingerprint, store_fingerprint,
                     index_fingerprint, [flip_augment], [fold, n_folds]
state.json           ``RunState``: epoch, best_value, best_epoch, best_logs,     train (every   train --resume
                     learning_rate, iterations, last_logs, callbacks, generation epoch, last)
checkpoints/         best.keras (best validation pancreas Dice), last.keras      train (every   predict, train --resume
                     (last committed epoch, with optimizer state)                epoch)
history.csv, logs/   one row per epoch (cut back to state.json on resume);       train          people, TensorBoard
                     TensorBoard events
environment.json     ``{"starts": [EnvironmentRecord, ...]}``, one per start:    train (every   people
                     epoch, started_utc, git_commit, platform, packages, gpus,   start, after
                     cuda_build, cpu_threads, checks, execution                  config.json)
==================== =========================================================== ============== ======================

``InputContract``'s optional fields (all but ``val_patch_size_zyx``, ``n_classes``,
``model_depth``, ``preprocess``) are left out of the file when unknown, so a contract
read and written again is the same JSON.

``flip_augment`` (``{"flip_axes": [1, 2], "flip_probability": 0.5}``: the training
config's ``augment.flip_axes`` and ``augment.flip_probability``) says along which axes
the model saw mirrored patches; flips were on when the axes are non-empty and the
probability is above 0. Predict mirrors along those axes by default
(``InputContract.mirror_axes``). Runs trained before it was recorded lack it.

``init_from`` (``pancreas train --init-from``, ``training.finetune``): where a fine-tuning
run's weights came from, ``{"path": the .keras file (absolute), "run_dir": its run or null,
"checkpoint": "last" | "best" | null (a bare model), "store_fingerprint": the store the
source was trained on or null, "model_fingerprint": the file's}``; absent for a run that
started from random weights. A resume before the first committed epoch starts from it again.

``fold`` and ``n_folds``: the index fold the run trained on (``pancreas train --fold``)
and how many the index had; ``evaluate --run`` scores that fold's validation cases and
``evaluate --cv`` checks that the k-th run given is fold k. Runs trained before folds
existed lack them and count as fold 0.

``environment.json`` lists every start of the run (a new run, then each ``--resume``), so
a run moved from one machine to another says so: ``epoch`` is the epoch that start began
at; ``packages`` maps python, tensorflow, keras, numpy, SimpleITK, h5py, hdf5, hdf5plugin,
dask, elasticdeform (and nvidia-cudnn-cu12, the pip CUDA libraries) to versions (``null``:
not installed); ``gpus`` lists ``{name, description, compute_capability}`` (empty: CPU
only); ``cuda_build`` is ``{cuda, cudnn}`` as TensorFlow reports its build; ``checks`` maps
packages, blosc and elasticdeform to ``"ok"`` or what failed; ``execution`` is what the
trainer resolved on that machine (precision, strategy, replicas, jit_compile, deterministic);
``git_commit`` is ``null`` when the code was not run from a git checkout. Nothing reads it
back to decide anything: a resume on other hardware or software is allowed (see
``training.rundir.RESUMABLE_CHANGES``), and this file is how one finds out afterwards.

**Checkpoint commit** (steps and crash points: ``training.checkpoints``). At the end of
epoch ``g`` the trainer writes ``checkpoints/best.<g>.keras`` (when the best value
improved) and ``checkpoints/last.<g>.keras``, then ``state.json`` with ``generation = g``
(the commit), then renames the generation files onto ``best.keras`` and ``last.keras``.
On resume a generation file ``state.json`` names (``generation`` for last,
``best_epoch`` for best) is an unfinished publish and is renamed; any other is an
unfinished commit and is deleted. So after a kill at any point ``state.json``,
``last.keras`` and ``best.keras`` describe the same epoch. A ``state.json`` without
``generation`` predates this protocol; its ``last.keras`` is checked against ``iterations``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset.common.atomic import read_json, write_json_atomic
from dataset.common.errors import PancreasError

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


class RunError(PancreasError, ValueError):
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


# ---------------------------------------------------------------------------- shared helpers
def _read(run_dir: str | Path, name: str, what: str, error: type[Exception]) -> tuple[Path, Any]:
    path = Path(run_dir) / name
    data = read_json(path, what, hint="not a complete `pancreas train` run folder", error=error)
    if not isinstance(data, dict):
        raise error(f"{path}: the {what} must be a JSON object")
    return path, data


def _check_keys(
    path: Path,
    data: Mapping[str, Any],
    known: tuple[str, ...],
    required: tuple[str, ...],
    what: str,
    error: type[Exception],
) -> None:
    unknown = sorted(set(data) - set(known))
    missing = [k for k in required if k not in data]
    if unknown or missing:
        detail = "; ".join(
            part
            for part in (
                f"missing key(s) {', '.join(missing)}" if missing else "",
                f"unknown key(s) {', '.join(unknown)}" if unknown else "",
            )
            if part
        )
        raise error(f"{path}: not the {what} this code reads ({detail})")


def _plain(value: Any) -> Any:
    """Tuples and mappings back to the lists and dicts JSON holds."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------- config.json
def write_run_config(run_dir: str | Path, config: Mapping[str, Any]) -> None:
    """The resolved training config (crash point ``run-config``)."""
    write_json_atomic(Path(run_dir) / CONFIG_NAME, _plain(config), point="run-config")


def read_run_config(run_dir: str | Path, error: type[Exception] = RunError) -> dict[str, Any]:
    return _read(run_dir, CONFIG_NAME, "training config", error)[1]


# ---------------------------------------------------------------------------- fingerprints.json
@dataclass(frozen=True)
class RunFingerprints:
    """What the run was started on; a resume on another store or index is refused."""

    store_fingerprint: str
    index_fingerprint: str
    preprocess_fingerprint: str = ""
    index_config_fingerprint: str = ""  # left out of the file when empty
    init_from: Mapping[str, Any] | None = None  # fine-tuning: the weights it started from; left out when None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not data["index_config_fingerprint"]:
            del data["index_config_fingerprint"]
        if data["init_from"] is None:
            del data["init_from"]
        return data


def write_fingerprints(run_dir: str | Path, fingerprints: RunFingerprints) -> None:
    """Written once, when the run starts (crash point ``run-fingerprints``)."""
    write_json_atomic(Path(run_dir) / FINGERPRINTS_NAME, fingerprints.to_dict(), point="run-fingerprints")


def read_fingerprints(run_dir: str | Path, error: type[Exception] = RunError) -> RunFingerprints:
    path, data = _read(run_dir, FINGERPRINTS_NAME, "run fingerprints record", error)
    names = tuple(f.name for f in dataclasses.fields(RunFingerprints))
    _check_keys(path, data, names, names[:2], "run fingerprints record", error)
    init_from = data.get("init_from")
    if init_from is not None and not (isinstance(init_from, Mapping) and isinstance(init_from.get("path"), str)):
        raise error(f"{path}: 'init_from' must be a mapping with the 'path' the run started from, got {init_from!r}")
    fields: dict[str, Any] = {k: v if k == "init_from" else str(v) for k, v in data.items()}
    return RunFingerprints(**fields)


# ---------------------------------------------------------------------------- input_contract.json
@dataclass(frozen=True, kw_only=True)
class InputContract:
    """What a model of this run takes and gives; inference preprocesses and checks with it."""

    patch_size_zyx: tuple[int, int, int] | None = None
    val_patch_size_zyx: tuple[int, int, int]
    n_classes: int
    label_names: Any = None  # [name of class 0, 1, ...]
    model_depth: int
    input: str | None = None
    output: str | None = None
    preprocess: Mapping[str, Any]  # the resolved preprocessing config of the store
    preprocess_fingerprint: str | None = None
    store_fingerprint: str | None = None
    index_fingerprint: str | None = None
    flip_augment: Mapping[str, Any] | None = None  # {"flip_axes": [...], "flip_probability": p}
    fold: int | None = None  # the index fold the run trained on (its validation cases are that fold's)
    n_folds: int | None = None  # how many folds the index had

    REQUIRED = ("val_patch_size_zyx", "n_classes", "model_depth", "preprocess")

    @property
    def fingerprints(self) -> dict[str, str]:
        """The recorded store, index and preprocess fingerprints (those that are known)."""
        keys = ("store_fingerprint", "index_fingerprint", "preprocess_fingerprint")
        return {k: getattr(self, k) for k in keys if getattr(self, k)}

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        """The axes the trainer flipped (``()``: flips were off); ``None``: not recorded."""
        if self.flip_augment is None:
            return None
        if float(self.flip_augment["flip_probability"]) <= 0:
            return ()
        return tuple(int(a) for a in self.flip_augment["flip_axes"])

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON: every known field in the table's order, unknown optional ones left out."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: _plain(v) for k, v in data.items() if v is not None or k in self.REQUIRED}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path, error: type[Exception] = RunError) -> InputContract:
        names = tuple(f.name for f in dataclasses.fields(cls))
        _check_keys(Path(where), data, names, cls.REQUIRED, "input contract", error)
        if not isinstance(data["preprocess"], Mapping):
            raise error(f"{where}: 'preprocess' must be a mapping (the preprocessing config)")
        try:
            values = dict(data)
            for key in ("patch_size_zyx", "val_patch_size_zyx"):
                if values.get(key) is not None:
                    values[key] = tuple(int(v) for v in values[key])
            values["n_classes"], values["model_depth"] = int(values["n_classes"]), int(values["model_depth"])
        except (TypeError, ValueError) as err:
            raise error(f"{where}: unreadable input contract ({err})") from None
        if values.get("flip_augment") is not None:
            values["flip_augment"] = _flip_augment(values["flip_augment"], where, error)
        return cls(**values)


def _flip_augment(value: Any, where: str | Path, error: type[Exception]) -> dict[str, Any]:
    """``flip_augment`` checked: distinct axes among 0, 1, 2 and a probability in [0, 1]."""
    wrong = f'{where}: \'flip_augment\' must be {{"flip_axes": [axes among 0, 1, 2], "flip_probability": p}}'
    if not isinstance(value, Mapping) or set(value) != {"flip_axes", "flip_probability"}:
        raise error(f"{wrong}, got {value!r}")
    axes, probability = value["flip_axes"], value["flip_probability"]
    if (
        not isinstance(axes, (list, tuple))
        or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes)
        or len(set(axes)) != len(axes)
        or isinstance(probability, bool)
        or not isinstance(probability, (int, float))
        or not 0 <= probability <= 1
    ):
        raise error(f"{wrong}, got {dict(value)!r}")
    return {"flip_axes": [int(a) for a in axes], "flip_probability": float(probability)}


def write_input_contract(run_dir: str | Path, contract: InputContract) -> None:
    """Crash point ``input-contract``."""
    write_json_atomic(Path(run_dir) / INPUT_CONTRACT_NAME, contract.to_dict(), point="input-contract")


def read_input_contract(run_dir: str | Path, error: type[Exception] = RunError) -> InputContract:
    """The run's contract; ``error`` with one line naming the file when it is missing or wrong."""
    path, data = _read(run_dir, INPUT_CONTRACT_NAME, "input contract", error)
    return InputContract.from_dict(data, path, error)


# ---------------------------------------------------------------------------- environment.json
@dataclass(frozen=True, kw_only=True)
class EnvironmentRecord:
    """One start of the run: the software and hardware it ran with (``training.environment``)."""

    epoch: int  # the epoch this start began at (0: a new run)
    started_utc: str
    git_commit: str | None
    platform: str
    packages: Mapping[str, str | None]
    gpus: list[Mapping[str, Any]]
    cuda_build: Mapping[str, str | None]
    cpu_threads: int
    checks: Mapping[str, str]
    execution: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Any, where: str | Path, error: type[Exception] = RunError) -> EnvironmentRecord:
        if not isinstance(data, Mapping):
            raise error(f"{where}: each start must be a JSON object, got {data!r}")
        names = tuple(f.name for f in dataclasses.fields(cls))
        _check_keys(Path(where), data, names, names[:-1], "environment record", error)
        try:
            return cls(**{**data, "epoch": int(data["epoch"]), "cpu_threads": int(data["cpu_threads"])})
        except (TypeError, ValueError) as err:
            raise error(f"{where}: unreadable environment record ({err})") from None


def write_environment(run_dir: str | Path, starts: list[EnvironmentRecord]) -> None:
    """Every start so far, the newest last (crash point ``run-environment``)."""
    write_json_atomic(
        Path(run_dir) / ENVIRONMENT_NAME, {"starts": [s.to_dict() for s in starts]}, point="run-environment"
    )


def read_environment(run_dir: str | Path, error: type[Exception] = RunError) -> list[EnvironmentRecord]:
    """The run's starts, oldest first; empty when the file is missing (a run from before it existed)."""
    if not (Path(run_dir) / ENVIRONMENT_NAME).is_file():
        return []
    path, data = _read(run_dir, ENVIRONMENT_NAME, "environment record", error)
    if set(data) != {"starts"} or not isinstance(data["starts"], list):
        raise error(f'{path}: not the environment record this code reads (expected {{"starts": [...]}})')
    return [EnvironmentRecord.from_dict(item, path, error) for item in data["starts"]]


# ---------------------------------------------------------------------------- state.json
@dataclass(frozen=True)
class RunState:
    """The last completed epoch: what ``--resume`` restores. ``generation`` ties it to the
    checkpoints written for it (see the module docstring); ``None``: an older run's state."""

    epoch: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    best_logs: Mapping[str, float] | None = None
    learning_rate: float | None = None
    iterations: int = 0
    last_logs: Mapping[str, float] | None = None
    callbacks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    generation: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if self.generation is None:  # an older run's state keeps its own keys
            del data["generation"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path, error: type[Exception] = RunError) -> RunState:
        names = tuple(f.name for f in dataclasses.fields(cls))
        _check_keys(Path(where), data, names, ("epoch",), "run state", error)
        try:
            return cls(**{**data, "epoch": int(data["epoch"]), "iterations": int(data.get("iterations") or 0)})
        except (TypeError, ValueError) as err:
            raise error(f"{where}: unreadable run state ({err})") from None


def write_state(run_dir: str | Path, state: RunState) -> None:
    """Commit an epoch (crash point ``state``): written after its checkpoints, before publishing them."""
    write_json_atomic(Path(run_dir) / STATE_NAME, state.to_dict(), point="state")


def read_state(run_dir: str | Path, error: type[Exception] = RunError) -> RunState | None:
    """The committed state, or ``None`` when no epoch has completed yet."""
    if not (Path(run_dir) / STATE_NAME).is_file():
        return None
    path, data = _read(run_dir, STATE_NAME, "run state", error)
    return RunState.from_dict(data, path, error)


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
