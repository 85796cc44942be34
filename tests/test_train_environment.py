"""Devices, XLA, determinism and the environment record: the device line of ``pancreas train``,
its warnings and ``--require-gpu`` under a forced no-GPU condition, ``pancreas env``, and
``RUN_DIR/environment.json``.

"No GPU" is forced by replacing ``training.environment.visible_gpus`` (in process) or by
``CUDA_VISIBLE_DEVICES=`` (in a subprocess); "GPUs" are played by the same replacement, so
the plan's GPU branches are checked on this CPU-only machine too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
import yaml
from helpers import tiny_train_store
from tensorflow.python.framework import config as tf_framework_config

import training.environment as environment
from dataset.common.configio import ConfigError, from_dict, to_dict
from dataset.contract.run import EnvironmentRecord, RunError, read_environment, write_environment
from training.config import LossConfig, ModelConfig, TrainConfig
from training.distribute import (
    build_compiled_model,
    execution_line,
    execution_settings,
    plan_execution,
    plan_warnings,
    resolve_jit_compile,
)
from training.environment import Gpu

ROOT = Path(__file__).resolve().parent.parent
H100 = "NVIDIA H100 80GB HBM3"
SMALL = TrainConfig(model=ModelConfig(depth=2, base_filters=2))


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(environment, "visible_gpus", lambda: [])


def gpus(n: int):
    return lambda: [Gpu(f"GPU:{i}", H100, (9, 0)) for i in range(n)]


# ---------------------------------------------------------------------------- the device line
def test_the_line_and_the_warnings_on_a_machine_without_gpu(no_gpu, caplog):
    from training.distribute import log_plan_warnings

    plan = plan_execution(TrainConfig(precision="mixed_bfloat16", strategy="mirrored"))
    assert execution_line(plan) == (
        "devices CPU only (no GPU visible); precision mixed_bfloat16; strategy mirrored: "
        "MirroredStrategy, 1 replica(s); XLA off (jit_compile auto); deterministic off"
    )
    with caplog.at_level(logging.WARNING):
        log_plan_warnings(plan)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "training.distribute"]
    assert [r.getMessage().split(":")[0] for r in warnings] == [
        "precision mixed_bfloat16 but no GPU is visible",
        "strategy mirrored asks for several GPUs but none is visible",
    ]


@pytest.mark.parametrize(
    ("precision", "strategy", "expected"),
    [
        ("float32", "auto", []),
        ("float32", "none", []),
        ("mixed_bfloat16", "none", ["precision mixed_bfloat16 but no GPU is visible"]),
        ("float32", "mirrored", ["strategy mirrored asks for several GPUs but none is visible"]),
    ],
)
def test_warnings_name_what_a_cpu_cannot_give(no_gpu, precision, strategy, expected):
    found = plan_warnings(plan_execution(TrainConfig(precision=precision, strategy=strategy)))
    assert [w.split(":")[0] for w in found] == expected


@pytest.mark.parametrize(
    ("n_gpus", "strategy", "line_end"),
    [
        (1, "auto", "default strategy, 1 replica(s); XLA on (jit_compile auto); deterministic off"),
        (2, "auto", "MirroredStrategy, 2 replica(s); XLA off (jit_compile auto); deterministic off"),
        (2, "none", "default strategy, 1 replica(s); XLA on (jit_compile auto); deterministic off"),
    ],
)
def test_the_line_on_gpu_machines_names_each_gpu(monkeypatch, n_gpus, strategy, line_end):
    monkeypatch.setattr(environment, "visible_gpus", gpus(n_gpus))
    plan = plan_execution(TrainConfig(precision="mixed_bfloat16", strategy=strategy))
    devices = ", ".join(f"GPU:{i} ({H100})" for i in range(n_gpus))
    assert execution_line(plan) == f"devices {devices}; precision mixed_bfloat16; strategy {strategy}: {line_end}"
    assert plan_warnings(plan) == []


# ---------------------------------------------------------------------------- XLA
@pytest.mark.parametrize(
    ("setting", "n_gpus", "strategy", "deterministic", "expected"),
    [
        ("auto", 0, None, False, False),  # CPU only
        ("auto", 1, None, False, True),  # one GPU
        ("auto", 1, None, True, False),  # no deterministic XLA max-pool gradient
        ("auto", 2, "MirroredStrategy", False, False),  # XLA fails under tf.distribute
        (True, 0, None, False, True),  # asked for: XLA on the CPU
        (False, 1, None, False, False),
    ],
)
def test_jit_compile_resolution(setting, n_gpus, strategy, deterministic, expected):
    assert resolve_jit_compile(setting, n_gpus, strategy, deterministic) is expected


def test_jit_compile_true_under_a_strategy_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(environment, "visible_gpus", gpus(2))
    with pytest.raises(ConfigError, match="jit_compile: true cannot run under MirroredStrategy"):
        plan_execution(TrainConfig(jit_compile=True))


@pytest.mark.parametrize(("fake_gpus", "expected"), [(0, False), (1, True)])
def test_the_resolved_setting_reaches_model_compile(monkeypatch, fake_gpus, expected):
    monkeypatch.setattr(environment, "visible_gpus", gpus(fake_gpus))
    assert build_compiled_model(SMALL).jit_compile is expected  # compiling is lazy: no GPU needed to check


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"jit_compile": "maybe"}, "jit_compile must be auto, true or false, got 'maybe'"),
        ({"jit_compile": 1}, "expected bool or str, got 1"),
        ({"deterministic": "yes"}, "expected bool, got 'yes'"),
        ({"jit_compile": True, "deterministic": True}, "jit_compile: true cannot be combined with deterministic: true"),
    ],
)
def test_config_rejects_bad_xla_and_determinism_values(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, data)
    assert message in str(info.value)


@pytest.mark.parametrize("value", ["auto", True, False])
def test_config_takes_each_jit_compile_value_and_writes_it_back(value):
    config = from_dict(TrainConfig, {"jit_compile": value})
    assert config.jit_compile == value and from_dict(TrainConfig, to_dict(config)) == config


# ---------------------------------------------------------------------------- determinism
def test_deterministic_calls_enable_op_determinism_after_the_seeds(monkeypatch):
    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism", lambda: calls.append("determinism"))
    monkeypatch.setattr("keras.utils.set_random_seed", lambda seed: calls.append(f"seed {seed}"))
    with execution_settings(TrainConfig(deterministic=True, seed=7)):
        assert calls == ["seed 7", "determinism"]
    with execution_settings(TrainConfig()):
        pass
    assert calls == ["seed 7", "determinism"]


def test_op_determinism_is_on_for_the_run_only():
    assert not tf_framework_config.is_op_determinism_enabled()
    with execution_settings(TrainConfig(deterministic=True, precision="mixed_bfloat16")):
        import keras

        assert tf_framework_config.is_op_determinism_enabled()
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert not tf_framework_config.is_op_determinism_enabled()


def test_jit_compile_and_deterministic_may_change_on_resume():
    from training.rundir import RESUMABLE_CHANGES

    assert {"jit_compile", "deterministic"} <= RESUMABLE_CHANGES


# ---------------------------------------------------------------------------- pancreas train
def _yaml(tmp_path: Path, **values) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    ("precision", "extra", "message"),
    [
        ("float32", ["--require-gpu"], "--require-gpu: TensorFlow sees no GPU"),
        # no float16 CPU kernel for MaxPool3D: the first step would fail
        ("mixed_float16", [], "precision mixed_float16 needs a GPU and none is visible"),
    ],
)
def test_refused_in_one_line_with_nothing_written(no_gpu, tmp_path, capsys, precision, extra, message):
    from pancreas.cli import main

    store, out = tmp_path / "store", tmp_path / "run"  # the store does not exist: the check comes before any read
    config = _yaml(tmp_path, precision=precision)
    assert main(["train", "--store", str(store), "--out", str(out), "--config", str(config), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"pancreas train: error: {message}"), captured.err
    assert captured.out == "" and [p.name for p in tmp_path.iterdir()] == ["train.yaml"]


def test_the_library_refuses_float16_on_a_cpu_before_writing(no_gpu, tmp_path):
    from training.run import train

    with pytest.raises(ConfigError, match="precision mixed_float16 needs a GPU"):
        train(tmp_path / "store", tmp_path / "run", TrainConfig(precision="mixed_float16"))
    assert list(tmp_path.iterdir()) == []


def test_pancreas_train_prints_the_line_first_and_warns_through_logging(tmp_path):
    """A real subprocess with CUDA_VISIBLE_DEVICES= (no GPU, even on a GPU machine) and TF's C++ log
    silenced: the warning is Python logging, so TF_CPP_MIN_LOG_LEVEL does not hide it."""
    config = _yaml(tmp_path, precision="mixed_bfloat16")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pancreas.cli",
            "train",
            "--store",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(config),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2  # the store does not exist: the line came before that error
    assert result.stdout.splitlines()[0] == (
        "pancreas train: devices CPU only (no GPU visible); precision mixed_bfloat16; strategy auto: default "
        "strategy, 1 replica(s); XLA off (jit_compile auto); deterministic off"
    ), result.stdout
    assert "WARNING training.distribute: precision mixed_bfloat16 but no GPU is visible" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- pancreas env
ENV_ITEMS = (
    "python",
    "tensorflow",
    "keras",
    "numpy",
    "SimpleITK",
    "h5py",
    "hdf5",
    "hdf5plugin",
    "dask",
    "elasticdeform",
    "devices",
    "cuda (TF build)",
    "cudnn (TF build)",
    "cpu threads",
    "git commit",
    "check packages",
    "check blosc",
    "check elasticdeform",
)


def test_pancreas_env_reports_every_item_and_passes_here(capsys):
    from pancreas.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    items = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert set(ENV_ITEMS) <= set(items), out
    assert items["tensorflow"] == tf.__version__ and items["cpu threads"] == str(environment.cpu_threads())
    assert items["check blosc"] == items["check elasticdeform"] == items["check packages"] == "ok"
    assert items["cuda (TF build)"] == (
        tf.sysconfig.get_build_info().get("cuda_version") or "none (not a CUDA build of TensorFlow)"
    )


def test_pancreas_env_exits_1_with_the_fix_when_elasticdeform_is_broken(monkeypatch, capsys):
    from pancreas.cli import main

    monkeypatch.setitem(sys.modules, "elasticdeform", None)  # "import elasticdeform" fails
    assert main(["env"]) == 1
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("check elasticdeform"))
    assert "failed: elasticdeform is not installed" in line and "--no-binary elasticdeform" in line, line


def test_the_blosc_check_reports_a_codec_that_fails(monkeypatch):
    import dataset.contract.store as store

    assert environment.check_blosc() == "ok"
    monkeypatch.setattr(store, "compression", lambda: {"compression": 32999})  # no such HDF5 filter here
    assert environment.check_blosc().startswith("failed: ")


def test_git_commit_only_for_the_checkout_the_code_runs_from(tmp_path):
    commit = environment.git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    assert environment.git_commit(tmp_path) is None  # not a checkout
    if commit is not None:
        assert environment.git_commit(ROOT / "training") is None  # inside a checkout, not its top


def test_git_dirty_says_whether_tracked_files_were_edited(tmp_path):
    import subprocess

    assert environment.git_dirty(tmp_path) is None  # not a checkout
    repo = tmp_path / "repo"
    repo.mkdir()
    run = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    (repo / "code.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "code.py"], **run)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"], **run)
    (repo / "untracked.txt").write_text("a note")  # untracked files do not make the code differ
    assert environment.git_dirty(repo) is False
    (repo / "code.py").write_text("x = 2\n")
    assert environment.git_dirty(repo) is True


# ---------------------------------------------------------------------------- environment.json
def test_environment_records_round_trip_and_bad_files_are_refused(no_gpu, tmp_path):
    first = environment.collect_environment(0, {"jit_compile": False})
    later = dataclasses.replace(
        first, epoch=3, gpus=[{"name": "GPU:0", "description": H100, "compute_capability": [9, 0]}]
    )
    assert read_environment(tmp_path) == []
    write_environment(tmp_path, [first, later])
    assert read_environment(tmp_path) == [first, later]
    data = json.loads((tmp_path / "environment.json").read_text(encoding="utf-8"))
    assert [s["epoch"] for s in data["starts"]] == [0, 3] and data["starts"][0]["gpus"] == []
    (tmp_path / "environment.json").write_text(json.dumps({"version": 1, "starts": [{"epoch": 0}]}))
    with pytest.raises(RunError, match="missing key"):
        read_environment(tmp_path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_train_store(tmp_path_factory.mktemp("store"))


def test_a_deterministic_run_records_each_start_and_resumes_without_it(store, tmp_path):
    """The U-Net trains under op determinism on a CPU (no op lacks a deterministic kernel),
    and a resume may turn it off; environment.json then lists both starts."""
    from training.run import train

    quick = TrainConfig(
        epochs=1,
        steps_per_epoch=2,
        batch_size=2,
        image_patches=0,
        strategy="none",
        deterministic=True,
        model=ModelConfig(depth=2, base_filters=2),
        loss=LossConfig(name="dice_cross_entropy"),
    )
    run_dir = tmp_path / "run"
    assert train(store, run_dir, quick).epochs_completed == 1
    assert not tf_framework_config.is_op_determinism_enabled()
    assert (
        train(store, run_dir, dataclasses.replace(quick, epochs=2, deterministic=False), resume=True).epochs_completed
        == 2
    )
    starts = read_environment(run_dir)
    assert [(s.epoch, s.execution["deterministic"]) for s in starts] == [(0, True), (1, False)]
    assert all(isinstance(s, EnvironmentRecord) and s.checks["blosc"] == "ok" for s in starts)
    assert starts[0].packages["tensorflow"] == tf.__version__ and starts[0].git_commit == environment.git_commit()
    assert starts[0].execution["jit_compile"] is False and starts[0].execution["replicas"] == 1
