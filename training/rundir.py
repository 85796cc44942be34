"""The run folder's lifecycle: lock it, check it can take this run, prepare it, find the state to resume.

``open_run_dir`` holds ``exclusive_lock(RUN_DIR)`` for the whole run, so a second
``pancreas train`` on the same RUN_DIR fails at once naming the first. Everything that
can refuse a run happens before anything is written, and only the lock holder sweeps
leftovers (temporaries, uncommitted checkpoint generations).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dataset.common.atomic import TMP_SUFFIX, atomic_path, remove_stale_temporaries
from dataset.common.configio import ConfigError, to_dict
from dataset.common.locks import LOCK_NAME, exclusive_lock
from dataset.contract.fingerprints import check_fingerprint
from dataset.contract.run import (
    CHECKPOINTS_DIR,
    CONFIG_NAME,
    FINGERPRINTS_NAME,
    HISTORY_NAME,
    INPUT_CONTRACT_NAME,
    RunError,
    RunState,
    holds_run,
    read_environment,
    read_fingerprints,
    read_input_contract,
    read_run_config,
    read_state,
    run_files_present,
    write_environment,
    write_fingerprints,
    write_input_contract,
    write_run_config,
)
from training.checkpoints import check_resumable, settle_checkpoints
from training.config import TrainConfig
from training.distribute import plan_execution
from training.environment import collect_environment
from training.preflight import RunInputs, input_contract

log = logging.getLogger(__name__)

# jit_compile and deterministic choose how the same steps execute (XLA fusion, kernel algorithms), not
# what is trained: model, optimizer, data order and augmentation draws stay the same. A resume may
# move a run to another machine anyway (CPU -> GPU, where auto resolves differently), which the
# config cannot pin; environment.json records every start, so the change stays visible.
RESUMABLE_CHANGES = frozenset({"epochs", "early_stopping_patience", "image_patches", "jit_compile", "deterministic"})
NEW_RUN = "resume on the same store and index or start a new run"


def _nothing_to_resume(run_dir: Path) -> RunError:
    return RunError(f"{run_dir}: holds no run to resume (no {CONFIG_NAME}); drop --resume to start a new run here")


def _foreign_files(run_dir: Path) -> bool:
    """Whether the folder holds anything but our lock file and what a start killed before its
    ``config.json`` leaves (temporaries, ``fingerprints.json``)."""
    ours = (LOCK_NAME, FINGERPRINTS_NAME)
    return any(p.name not in ours and TMP_SUFFIX not in p.name for p in run_dir.iterdir())


@contextlib.contextmanager
def open_run_dir(run_dir: Path, resume: bool) -> Iterator[Path]:
    """Hold RUN_DIR's lock for the block, creating the folder only for a new run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir}: exists and is not a folder")
    if resume and not run_dir.is_dir():
        raise _nothing_to_resume(run_dir)
    if not resume and run_dir.is_dir() and not run_files_present(run_dir) and _foreign_files(run_dir):
        # refused before the lock file is made: a wrong --out (e.g. ~/Documents) is left as it was
        raise RunError(f"{run_dir}: exists and is not empty; choose a new --out for the run")
    with exclusive_lock(run_dir) as locked:
        yield locked


def check_run_dir(run_dir: Path, config: TrainConfig, inputs: RunInputs, resume: bool) -> RunState | None:
    """The committed state to resume from (``None``: start at epoch 0); raise if the folder is unusable."""
    existing = run_files_present(run_dir)
    if not resume:
        if existing == [FINGERPRINTS_NAME]:  # a start killed before config.json, if the file is ours
            read_fingerprints(run_dir)  # another tool's fingerprints.json is refused, never replaced
        elif existing:
            raise RunError(
                f"{run_dir}: holds another run ({', '.join(existing)}); pass --resume to continue it "
                "or choose another --out"
            )
        if run_dir.is_dir() and _foreign_files(run_dir):  # e.g. the store itself
            raise RunError(f"{run_dir}: exists and is not empty; choose a new --out for the run")
        return None
    if not holds_run(run_dir):
        if existing:
            raise RunError(f"{run_dir}: has {', '.join(existing)} but no {CONFIG_NAME}; cannot resume")
        raise _nothing_to_resume(run_dir)
    _check_same_config(run_dir, config)
    _check_same_fold(run_dir, inputs.fold)
    if (run_dir / FINGERPRINTS_NAME).is_file():
        old, now = read_fingerprints(run_dir), inputs.fingerprints
        for key in ("store_fingerprint", "index_fingerprint"):
            check_fingerprint(
                key.replace("_", " "), getattr(old, key), getattr(now, key), run_dir, inputs.store, NEW_RUN
            )
    read_environment(run_dir)  # appended to at the start: an unreadable one is refused before anything is written
    return read_state(run_dir)


def _check_same_config(run_dir: Path, config: TrainConfig) -> None:
    saved, now = read_run_config(run_dir), to_dict(config)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{run_dir}: cannot resume with a different config ({', '.join(changed)} changed; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change)"
        )


def _check_same_fold(run_dir: Path, fold: int) -> None:
    """A run continues on the fold it started on (a run from before folds counts as fold 0).

    The index fingerprint covers every fold's manifests, so only the recorded fold tells
    another fold's resume apart; a run killed before its contract was written trained nothing.
    """
    if not (run_dir / INPUT_CONTRACT_NAME).is_file():
        return
    recorded = read_input_contract(run_dir).fold or 0
    if recorded != fold:
        raise RunError(
            f"{run_dir}: the run trains fold {recorded}; cannot resume it with --fold {fold} "
            f"(pass --fold {recorded}, or train fold {fold} into another --out)"
        )


def prepare_run_dir(
    run_dir: Path,
    config: TrainConfig,
    inputs: RunInputs,
    state: RunState | None,
    init_from: Mapping[str, Any] | None = None,
) -> None:
    """Sweep what a killed run left, settle its checkpoints, write the run's hand-over files.

    Call with the lock held and after ``check_run_dir``. ``init_from``: a fine-tuning run's
    source (``training.finetune``), recorded in the fingerprints the first start writes.
    """
    remove_stale_temporaries(run_dir)
    remove_stale_temporaries(run_dir / CHECKPOINTS_DIR)
    settle_checkpoints(run_dir, state)
    check_resumable(run_dir, state)
    truncate_history(run_dir / HISTORY_NAME, state.epoch if state else 0)
    # fingerprints.json (with a fine-tune's source) before config.json, which makes the folder a
    # run: every resumable run knows where its weights came from. A new start rewrites the
    # fingerprints a start killed before its config.json left; a resume keeps the first start's.
    if not holds_run(run_dir) or not (run_dir / FINGERPRINTS_NAME).is_file():
        write_fingerprints(run_dir, dataclasses.replace(inputs.fingerprints, init_from=init_from))
    write_run_config(run_dir, to_dict(config))
    write_input_contract(run_dir, input_contract(inputs, config))
    record_start(run_dir, config, state.epoch if state else 0)


def record_start(run_dir: Path, config: TrainConfig, epoch: int) -> None:
    """Append this start's software, hardware and resolved execution to ``environment.json``.

    Written after ``config.json``, so a kill before it still leaves a run ``--resume`` continues.
    """
    start = collect_environment(epoch, plan_execution(config).to_dict())
    write_environment(run_dir, [*read_environment(run_dir), start])


def truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the history rows of committed epochs only (a kill may leave one more)."""
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
        with atomic_path(path, point="history") as tmp:
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows([header, *kept])
