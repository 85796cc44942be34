"""Crash test of ``pancreas train`` at EVERY commit point (tests/test_crash.py does preprocess
and index; tests/test_train_commit.py checks a few points in detail, fast).

A 2-epoch run lists its commit points (run start: fingerprints, config, input contract;
every epoch: best and last checkpoints written, renamed, state committed, published).
For each point in turn a fresh run is SIGKILLed there and then rerun as a user would:
``--resume`` when the folder holds a run, else the same command again. The result must
equal the uninterrupted run's: epochs, optimizer steps, best epoch, the weights of both
checkpoints bit for bit (CPU, fixed seed), the history, and nothing left over.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from test_train_commit import QUICK, STEPS, _cli, _weights

from dataset.common.atomic import TMP_SUFFIX
from dataset.common.configio import to_dict
from dataset.common.crashpoints import CRASH_ENV, CRASH_LOG_ENV
from dataset.contract.run import checkpoint_path, holds_run, read_state
from training.progress import PROGRESS_NAME, PROGRESS_POINT

pytestmark = pytest.mark.slow
EPOCHS = 2


def _history_without_timing(run_dir):
    """history.csv without its epoch_seconds column (wall time differs between runs)."""
    rows = list(csv.reader((run_dir / "history.csv").read_text(encoding="utf-8").splitlines()))
    drop = rows[0].index("epoch_seconds")
    assert all(float(row[drop]) > 0 for row in rows[1:])
    return [row[:drop] + row[drop + 1 :] for row in rows]


def test_train_survives_a_kill_at_every_commit_point(train_store, tmp_path):
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump({**to_dict(QUICK), "epochs": EPOCHS}))
    reference = tmp_path / "reference"
    log = tmp_path / "points.log"
    assert _cli(train_store, config, reference, **{CRASH_LOG_ENV: str(log)}).returncode == 0
    points = log.read_text(encoding="utf-8").split()
    names = {p.split("#")[0] for p in points}
    assert {
        "checkpoint-best:renamed",
        "checkpoint-last:renamed",
        "state:renamed",
        "checkpoint-last:published",
        "checkpoint-best:published",
        "input-contract:renamed",
    } <= names
    assert len(points) >= 6 + 6 * EPOCHS  # an epoch that does not improve writes no best checkpoint
    ref_state = read_state(reference)
    ref_weights = {kind: _weights(checkpoint_path(reference, kind)) for kind in ("best", "last")}
    ref_history = _history_without_timing(reference)
    # progress.png is redrawn after every epoch: kill it on its first redraw only (it is
    # derived from history.csv, written like every other file; each extra kill costs a run)
    points = [p for p in points if not p.startswith(PROGRESS_POINT + ":") or p.endswith("#1")]

    for i, point in enumerate(points):
        run_dir = tmp_path / f"kill_{i}"
        crashed = _cli(train_store, config, run_dir, **{CRASH_ENV: point})
        assert crashed.returncode == -9, f"{point}: {crashed.stderr[-2000:]}"
        again = _cli(train_store, config, run_dir, *(["--resume"] if holds_run(run_dir) else []))
        assert again.returncode == 0, f"rerun after a kill at {point}: {again.stderr[-2000:]}"
        state = read_state(run_dir)
        assert (state.epoch, state.iterations, state.best_epoch) == (EPOCHS, EPOCHS * STEPS, ref_state.best_epoch), (
            point
        )
        for kind in ("best", "last"):
            for mine, theirs in zip(_weights(checkpoint_path(run_dir, kind)), ref_weights[kind]):
                np.testing.assert_array_equal(mine, theirs, err_msg=f"{kind} after a kill at {point}")
        assert _history_without_timing(run_dir) == ref_history, point
        assert (run_dir / PROGRESS_NAME).is_file(), point
        assert not list(run_dir.rglob(f"*{TMP_SUFFIX}*")), point
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.keras", "last.keras"], point
    print(f"train: {len(points)} commit points killed")
