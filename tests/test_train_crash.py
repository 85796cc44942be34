"""Crash test of ``pancreas train`` at EVERY commit point (tests/test_crash.py does preprocess
and index; tests/test_train_commit.py checks a few points in detail, fast).

A 2-epoch run lists its commit points (run start: config, fingerprints, input contract;
every epoch: best and last checkpoints written, renamed, state committed, published).
For each point in turn a fresh run is SIGKILLed there and then rerun as a user would:
``--resume`` when the folder holds a run, else the same command again. The result must
equal the uninterrupted run's: epochs, optimizer steps, best epoch, the weights of both
checkpoints bit for bit (CPU, fixed seed), the history, and nothing left over.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from test_train_commit import QUICK, STEPS, _cli, _weights

from dataset.common.configio import to_dict
from dataset.common.files import CRASH_ENV, CRASH_LOG_ENV, TMP_SUFFIX
from dataset.contract.run import checkpoint_path, holds_run, read_state

pytestmark = pytest.mark.slow
EPOCHS = 2


def test_train_survives_a_kill_at_every_commit_point(train_store, tmp_path):
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump({**to_dict(QUICK), "epochs": EPOCHS}))
    reference = tmp_path / "reference"
    log = tmp_path / "points.log"
    assert _cli(train_store, config, reference, **{CRASH_LOG_ENV: str(log)}).returncode == 0
    points = log.read_text().split()
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
    ref_history = (reference / "history.csv").read_text()

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
        assert (run_dir / "history.csv").read_text() == ref_history, point
        assert not list(run_dir.rglob(f"*{TMP_SUFFIX}*")), point
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.keras", "last.keras"], point
    print(f"train: {len(points)} commit points killed")
