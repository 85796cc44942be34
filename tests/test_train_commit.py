"""The run folder's commit protocol: a checkpoint and its state are one commit, the run
holds RUN_DIR's lock, and ``--resume`` on a folder without a run is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dataset.common.configio import to_dict
from dataset.common.crashpoints import CRASH_ENV
from dataset.common.locks import LOCK_NAME
from dataset.contract.run import RunError, RunState, checkpoint_path, generation_path, read_state
from training.config import LossConfig, ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
QUICK = TrainConfig(
    epochs=3,
    steps_per_epoch=STEPS,
    batch_size=2,
    learning_rate=0.01,
    image_patches=0,
    strategy="none",
    model=ModelConfig(depth=2, base_filters=2),
    loss=LossConfig(name="dice_cross_entropy"),
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "train.yaml"
    path.write_text(yaml.safe_dump(to_dict(QUICK)))
    return path


def _cli(store: Path, config: Path, run_dir: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pancreas.cli",
        "train",
        "--store",
        str(store),
        "--config",
        str(config),
        "--out",
        str(run_dir),
        *extra,
    ]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


def _load(path: Path):
    import keras

    import training.losses
    import training.metrics  # noqa: F401

    return keras.models.load_model(path)


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    model = _load(path)
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _optimizer_steps(path: Path) -> int:
    import keras

    return int(keras.ops.convert_to_numpy(_load(path).optimizer.iterations))


@pytest.fixture(scope="module")
def uninterrupted(train_store, config_file, tmp_path_factory):
    """The reference: the same run, never killed (in a subprocess, like the killed ones)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = _cli(train_store, config_file, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# ---------------------------------------------------------------- C: one commit per epoch
@pytest.mark.parametrize(
    "point",
    [
        "checkpoint-last:renamed#2",  # epoch 2's checkpoint in place, its state not yet written
        pytest.param("checkpoint-best:renamed#1", marks=pytest.mark.slow),  # a best checkpoint, no state yet
        pytest.param("state:renamed#2", marks=pytest.mark.slow),  # epoch 2 committed, nothing published
        pytest.param("checkpoint-best:published#1", marks=pytest.mark.slow),  # best published, last not
    ],
)
def test_a_kill_at_any_commit_step_resumes_as_if_never_killed(point, train_store, config_file, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    crashed = _cli(train_store, config_file, run_dir, **{CRASH_ENV: point})
    assert crashed.returncode == -9, crashed.stderr[-3000:]  # SIGKILLed at the point
    committed = read_state(run_dir)

    resumed = _cli(train_store, config_file, run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"epochs: {committed.epoch if committed else 0} -> 3" in resumed.stdout

    reference, state = read_state(uninterrupted), read_state(run_dir)
    assert (state.epoch, state.iterations, state.generation) == (3, 3 * STEPS, 3)
    assert (state.best_epoch, state.best_value) == (reference.best_epoch, reference.best_value)
    assert state.last_logs == pytest.approx(reference.last_logs)
    for kind in ("last", "best"):
        assert _optimizer_steps(checkpoint_path(run_dir, kind)) == (
            state.iterations if kind == "last" else state.best_epoch * STEPS
        )
        for mine, theirs in zip(
            _weights(checkpoint_path(run_dir, kind)), _weights(checkpoint_path(uninterrupted, kind))
        ):
            np.testing.assert_array_equal(mine, theirs)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.keras", "last.keras"]
    history = (run_dir / "history.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2"]


def test_commit_points_of_an_epoch_in_order(train_store, config_file, tmp_path):
    log = tmp_path / "points.log"
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump({**to_dict(QUICK), "epochs": 1}))
    assert _cli(train_store, config, tmp_path / "run", PANCREAS_CRASH_LOG=str(log)).returncode == 0
    points = [line.split("#")[0] for line in log.read_text(encoding="utf-8").split()]
    assert points == [
        "run-fingerprints:written",  # first: a resumable run (config.json) always knows its weights' source
        "run-fingerprints:renamed",
        "run-config:written",
        "run-config:renamed",
        "input-contract:written",
        "input-contract:renamed",
        "run-environment:written",
        "run-environment:renamed",
        "progress:written",  # progress.png, redrawn before the epoch's commit
        "progress:renamed",
        "checkpoint-best:written",
        "checkpoint-best:renamed",
        "checkpoint-last:written",
        "checkpoint-last:renamed",
        "state:written",
        "state:renamed",
        "checkpoint-best:published",
        "checkpoint-last:published",
    ]


def _model_at_step(steps: int):
    from training.distribute import build_compiled_model

    model = build_compiled_model(QUICK)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(steps)
    return model


def test_settle_publishes_committed_generations_and_removes_uncommitted_ones(tmp_path):
    from training.checkpoints import settle_checkpoints

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name, text in [
        ("last.keras", "last 3"),
        ("best.keras", "best 2"),
        ("last.4.keras", "last 4"),
        ("best.4.keras", "best 4"),
        ("last.5.keras", "last 5 (never committed)"),
    ]:
        (folder / name).write_text(text)
    settle_checkpoints(tmp_path, RunState(epoch=4, best_epoch=4, generation=4))
    assert {p.name: p.read_text(encoding="utf-8") for p in folder.iterdir()} == {
        "last.keras": "last 4",
        "best.keras": "best 4",
    }
    (folder / "best.5.keras").write_text("best 5 (never committed)")
    settle_checkpoints(tmp_path, RunState(epoch=4, best_epoch=4, generation=4))
    assert sorted(p.name for p in folder.iterdir()) == ["best.keras", "last.keras"]


def test_a_checkpoint_that_disagrees_with_the_state_is_refused(tmp_path):
    """A run folder from before the protocol, killed between last.keras and state.json."""
    from training.checkpoints import load_for_resume, save_model_atomic

    save_model_atomic(_model_at_step(2 * STEPS), checkpoint_path(tmp_path, "last"))
    state = RunState(epoch=1, learning_rate=0.01, iterations=STEPS)
    with pytest.raises(RunError, match=rf"optimizer step {2 * STEPS} but state.json committed epoch 1 at step {STEPS}"):
        load_for_resume(tmp_path, state)
    assert (
        int(load_for_resume(tmp_path, RunState(epoch=2, learning_rate=0.01, iterations=2 * STEPS)).optimizer.iterations)
        == 2 * STEPS
    )


def test_state_json_keeps_its_keys_and_order(tmp_path):
    from dataset.contract.run import write_state

    state = RunState(
        epoch=2,
        best_value=0.5,
        best_epoch=1,
        best_logs={"loss": 1.0},
        learning_rate=0.01,
        iterations=6,
        last_logs={"loss": 0.5},
        callbacks={"reduce_lr": {"wait": 1}},
        generation=2,
    )
    write_state(tmp_path, state)
    data = json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))
    assert list(data) == [
        "version",
        "epoch",
        "best_value",
        "best_epoch",
        "best_logs",
        "learning_rate",
        "iterations",
        "last_logs",
        "callbacks",
        "generation",
    ]
    assert read_state(tmp_path) == state
    assert generation_path(tmp_path, "last", 2) == tmp_path / "checkpoints" / "last.2.keras"


# ---------------------------------------------------------------- D: the run holds RUN_DIR's lock
HOLD = (
    "import sys; from dataset.common.locks import exclusive_lock\n"
    "with exclusive_lock(sys.argv[1]):\n    print('ready', flush=True); sys.stdin.read()\n"
)


def test_a_second_train_on_a_locked_run_dir_fails_at_once(train_store, config_file, tmp_path, capsys):
    from pancreas.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        for extra in ([], ["--resume"]):
            assert (
                main(
                    ["train", "--store", str(train_store), "--config", str(config_file), "--out", str(run_dir), *extra]
                )
                == 2
            )
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"in use by pid {holder.pid}" in err[0], err
        assert sorted(os.listdir(run_dir)) == [LOCK_NAME]
    finally:
        holder.stdin.close()
        holder.wait(60)


def test_the_lock_is_held_for_the_whole_fit(train_store, tmp_path, monkeypatch):
    import training.run as run_module
    from dataset.common.locks import holds_lock

    seen = []
    monkeypatch.setattr(run_module, "fit", lambda run_dir, *args: seen.append(holds_lock(run_dir)))
    run_module.train(train_store, tmp_path / "run", QUICK)
    assert seen == [True] and not holds_lock(tmp_path / "run")


# ---------------------------------------------------------------- E: nothing to resume
@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_resume_without_a_run_is_refused(folder, train_store, config_file, tmp_path, capsys):
    from pancreas.cli import main

    run_dir = tmp_path / folder
    if folder == "empty":
        run_dir.mkdir()
    code = main(["train", "--store", str(train_store), "--config", str(config_file), "--out", str(run_dir), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "holds no run to resume" in err[0] and "drop --resume" in err[0]
    assert not (run_dir / "config.json").exists() and not (run_dir / "checkpoints").exists()
    assert run_dir.exists() == (folder == "empty")


def test_a_foreign_out_folder_is_refused_without_a_lock_file_left_in_it(train_store, tmp_path):
    from dataset.contract.run import RunError
    from training.run import train

    foreign = tmp_path / "Documents"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    with pytest.raises(RunError, match="exists and is not empty"):
        train(train_store, foreign, QUICK)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_a_folder_holding_another_tools_fingerprints_json_is_refused_not_overwritten(train_store, tmp_path):
    from dataset.contract.run import RunError
    from training.run import train

    run_dir = tmp_path / "theirs"
    run_dir.mkdir()
    (run_dir / "fingerprints.json").write_text('{"made_by": "another tool"}')
    with pytest.raises(RunError, match="fingerprints.json"):
        train(train_store, run_dir, QUICK)
    assert (run_dir / "fingerprints.json").read_text() == '{"made_by": "another tool"}'
