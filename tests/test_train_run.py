"""Training runs: learning on a synthetic store, resume after SIGKILL, bad input, two replicas."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

from dataset.common.configio import ConfigError, to_dict
from dataset.contract.manifest import manifest_path, write_manifest
from dataset.contract.store import StoreError
from pancreas.testing.runs import make_synthetic_store
from training.config import LossConfig, ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = TrainConfig(
    epochs=6,
    steps_per_epoch=10,
    batch_size=2,
    learning_rate=0.01,
    image_patches=1,
    model=ModelConfig(depth=2, base_filters=4),
    # the default Generalized Dice needs ~100 steps to leave its all-foreground
    # start on this toy; Dice + CE shows learning within 60 (GDL is unit-tested)
    loss=LossConfig(name="dice_cross_entropy"),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_synthetic_store(
        root,
        n_cases=4,
        shape_zyx=(16, 48, 48),
        train_patch_zyx=(16, 32, 32),
        val_patch_zyx=(16, 48, 48),
        patches_per_case=8,
    )
    return root


def history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_tiny_unet_learns_and_writes_the_run_folder(store, tmp_path):
    from training.run import train

    run_dir = tmp_path / "run"
    summary = train(store, run_dir, TINY)
    dice = [row["val_dice_pancreas"] for row in history(run_dir)]
    assert len(dice) == 6 and summary.epochs_completed == 6 and summary.stopped == "completed"
    assert max(dice[2:]) > dice[0] + 0.2 and dice[-1] > 0.6, dice
    assert summary.best_val_dice["pancreas"] == pytest.approx(max(dice), rel=1e-6)
    for name in (
        "config.json",
        "fingerprints.json",
        "input_contract.json",
        "state.json",
        "checkpoints/best.keras",
        "checkpoints/last.keras",
    ):
        assert (run_dir / name).is_file(), name
    contract = json.loads((run_dir / "input_contract.json").read_text(encoding="utf-8"))
    assert contract["patch_size_zyx"] == [16, 32, 32] and contract["val_patch_size_zyx"] == [16, 48, 48]
    assert contract["n_classes"] == 3 and contract["label_names"] == ["background", "pancreas", "tumour"]
    assert contract["model_depth"] == 2 and contract["preprocess"] == {}
    assert json.loads((run_dir / "config.json").read_text(encoding="utf-8")) == to_dict(TINY)
    assert json.loads((run_dir / "state.json").read_text(encoding="utf-8"))["epoch"] == 6
    for split in ("train", "validation", "images"):
        assert list((run_dir / "logs" / split).glob("events.out.tfevents.*")), split
    _check_tensorboard_events(run_dir / "logs")
    assert not list(run_dir.rglob("*.tmp"))
    assert all(row["epoch_seconds"] > 0 for row in history(run_dir))
    picture = matplotlib.image.imread(run_dir / "progress.png")
    assert picture.shape[0] > 400 and picture.std() > 0.05  # drawn, not blank


def _check_tensorboard_events(log_dir: Path) -> None:
    import tensorflow as tf

    tags, steps = set(), set()
    for path in log_dir.rglob("events.out.tfevents.*"):
        for raw in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                tags.add(f"{path.parent.name}/{value.tag}")
                if path.parent.name == "images":
                    steps.add(event.step)
                    png = tf.make_ndarray(value.tensor)[2]
                    image = tf.io.decode_png(png).numpy()
                    side = 32 if value.tag.startswith("train/") else 48
                    assert image.shape == (side, 3 * side, 1)  # CT | truth | prediction
                    assert image[:, :side].max() > 200  # CT at full brightness, not halved
                    assert set(np.unique(image[:, side : 2 * side])) <= {0, 128, 255}  # labels 0, 1, 2
    assert {
        "train/epoch_loss",
        "train/epoch_dice_pancreas",
        "train/epoch_learning_rate",
        "validation/epoch_dice_tumour",
    } <= tags
    assert steps == set(range(6))


def test_bad_inputs_leave_the_run_untouched(store, tmp_path):
    from training.run import train

    with pytest.raises(StoreError, match="store not found"):
        train(tmp_path / "missing", tmp_path / "r0", TINY)
    (tmp_path / "nocatalog").mkdir()
    with pytest.raises(StoreError, match="no catalog.json"):
        train(tmp_path / "nocatalog", tmp_path / "r0", TINY)
    assert not (tmp_path / "r0").exists()
    with pytest.raises(ValueError, match=r"\(16, 32, 32\).*depth 5"):
        train(store, tmp_path / "r1", TrainConfig(model=ModelConfig(depth=5)))
    assert not (tmp_path / "r1").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds another run.*--resume"):
        train(store, occupied, TINY)
    assert (occupied / "config.json").read_text(encoding="utf-8") == "{}"

    saved = occupied / "config.json"
    saved.write_text(json.dumps(to_dict(TINY)))
    with pytest.raises(ConfigError, match="batch_size"):
        train(store, occupied, TrainConfig(**{**TINY.__dict__, "batch_size": 1}), resume=True)

    empty = tmp_path / "empty_index"
    make_synthetic_store(empty, n_cases=2, shape_zyx=(16, 32, 32), patches_per_case=2)
    write_manifest(manifest_path(empty, "val", 0), [])
    with pytest.raises(ValueError, match="val manifest has no rows"):
        train(empty, tmp_path / "r2", TINY)
    assert not (tmp_path / "r2").exists()


def test_with_the_real_indexer_and_stale_index(tmp_path):
    """Manifests from dataset.index.build (augmented variants included) train; a store changed
    after indexing is refused."""
    from dataset.index.build import build_index
    from dataset.index.config import IndexConfig
    from pancreas.testing.runs import synthetic_case
    from pancreas.testing.store import write_case, write_catalog_for
    from training.run import train

    store = tmp_path / "store"
    records = {}
    for i in range(4):
        image, label = synthetic_case((24, 48, 48), i)
        records[f"c{i}"] = write_case(store, f"c{i}", label, seed=i, image=image)
    write_catalog_for(store, records)
    index = build_index(
        store,
        IndexConfig(train_patch_xyz=(32, 32, 16), val_patch_xyz=(48, 48, 16), val_fraction=0.3, folds=2),
        workers=0,
        progress=False,
    )
    assert index.per_fold[0].train_augmented_entries > 0  # trains on fold 0
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "steps_per_epoch": 2})
    summary = train(store, tmp_path / "run", config)
    assert summary.epochs_completed == 1
    contract = json.loads((tmp_path / "run" / "input_contract.json").read_text(encoding="utf-8"))
    assert contract["store_fingerprint"] == index.store_fingerprint

    records["c0"] = dataclasses.replace(records["c0"], input_fingerprint="changed")
    write_catalog_for(store, records)
    with pytest.raises(StoreError, match="rerun `pancreas index`"):
        train(store, tmp_path / "run2", config)
    assert not (tmp_path / "run2").exists()


def test_cli_one_line_error(store, tmp_path, capsys):
    from pancreas.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 1, "batchsize": 2}))
    assert main(["train", "--store", str(store), "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batchsize" in err[0]


def test_run_checkpoint_skips_non_finite_epochs(tmp_path):
    from dataset.contract.run import RunState
    from training.callbacks import RunCheckpoint
    from training.run import build_compiled_model

    model = build_compiled_model(TINY)
    cb = RunCheckpoint(tmp_path, RunState(epoch=3, best_value=0.5))
    cb.set_model(model)
    cb.on_epoch_end(3, {"loss": float("nan"), "val_loss": 0.3, "val_dice_pancreas": 0.9})
    assert cb.stopped_on_nan and model.stop_training
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "state.json").exists()
    cb.on_epoch_end(3, {"loss": 0.4, "val_loss": 0.3, "val_dice_pancreas": 0.6})
    state = json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))
    assert state["epoch"] == 4 and state["best_value"] == pytest.approx(0.6) and state["best_epoch"] == 4
    assert (tmp_path / "checkpoints" / "best.keras").is_file()


def test_loss_turning_nan_mid_run_stops_it_and_keeps_the_finite_checkpoints(store, tmp_path, monkeypatch):
    """The whole run, not just the callback: a loss that becomes NaN at step 15 (epoch 2)."""
    import keras

    import training.distribute as distribute
    import training.run as run_module
    from training.losses import make_loss

    class GoesNan(keras.losses.Loss):
        def __init__(self, inner):
            super().__init__(name="goes_nan")
            self.inner = inner
            self.calls = keras.Variable(0, dtype="int32", trainable=False)

        def call(self, y_true, y_pred):
            self.calls.assign_add(1)
            value = self.inner(y_true, y_pred)
            return keras.ops.where(self.calls > 15, keras.ops.divide(0.0, 0.0), value)

    monkeypatch.setattr(distribute, "make_loss", lambda cfg: GoesNan(make_loss(cfg)))
    run_dir = tmp_path / "run"
    summary = run_module.train(store, run_dir, TINY)
    assert summary.stopped == "nan" and summary.epochs_completed == 1
    state = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
    assert state["epoch"] == 1 and state["best_epoch"] == 1
    model = keras.saving.load_model(run_dir / "checkpoints" / "last.keras", compile=False)
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_resume_after_sigkill(store, tmp_path):
    config = TrainConfig(**{**TINY.__dict__, "epochs": 3, "steps_per_epoch": 40, "image_patches": 0})
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(config)))
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pancreas.cli",
        "train",
        "--store",
        str(store),
        "--config",
        str(cfg_path),
        "--out",
        str(run_dir),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_path = run_dir / "state.json"
    deadline = time.monotonic() + 240
    try:
        while not state_path.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # into epoch 2
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads(state_path.read_text(encoding="utf-8"))
    killed_after = state["epoch"]  # 1 normally; 2 on a machine fast enough to finish epoch 2 in 0.3 s
    assert 1 <= killed_after < 3 and state["iterations"] == 40 * killed_after

    # a second start without --resume refuses and changes nothing
    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert json.loads(state_path.read_text(encoding="utf-8")) == state

    import keras

    from training.run import train

    summary = train(store, run_dir, config, resume=True)
    assert summary.initial_epoch == killed_after and summary.epochs_completed == 3
    rows = history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert rows[killed_after]["learning_rate"] == pytest.approx(state["learning_rate"], rel=1e-6)
    last = keras.models.load_model(run_dir / "checkpoints" / "last.keras")
    assert int(last.optimizer.iterations) == 120  # 40 per epoch restored + the rest new, not restarted


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(store, tmp_path):
    config = TrainConfig(**{**TINY.__dict__, "epochs": 1, "steps_per_epoch": 3, "strategy": "mirrored"})
    script = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from dataset.common.configio import from_dict
        from training.config import TrainConfig
        from training.run import train
        config = from_dict(TrainConfig, json.loads({json.dumps(json.dumps(to_dict(config)))}))
        summary = train({str(store)!r}, {str(tmp_path / "run")!r}, config)
        print("RESULT", json.dumps({{"replicas": summary.replicas, "epochs": summary.epochs_completed}}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT", 1)[1])
    assert result == {"replicas": 2, "epochs": 1}
    state = json.loads((tmp_path / "run" / "state.json").read_text(encoding="utf-8"))
    assert state["iterations"] == 3 and math.isfinite(state["last_logs"]["loss"])
    assert np.isfinite(state["last_logs"]["val_dice_pancreas"])


def test_cli_profile_modes_and_training_summary(store, tmp_path, capsys):
    from pancreas.cli import main

    cfg = tmp_path / "tiny.yaml"
    data = {**to_dict(TINY), "epochs": 1, "steps_per_epoch": 2, "image_patches": 0, "precision": "mixed_bfloat16"}
    cfg.write_text(yaml.safe_dump(data))
    base = ["train", "--store", str(store), "--config", str(cfg)]
    assert main([*base, "--profile-input", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "augmented patches/s" in out and "(16, 32, 32)" in out
    assert main([*base, "--synthetic-input", "--steps", "2"]) == 0
    assert "s/step" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
    assert main([*base, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "best val Dice (epoch 1)" in out and "tensorboard --logdir" in out
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run


def test_incomplete_or_edited_index_is_refused(tmp_path):
    """summary.json commits an index: without it (a killed `pancreas index`) or with
    manifests changed behind its back, training refuses before writing anything."""
    from dataset.contract.manifest import read_manifest
    from training.run import train

    store = tmp_path / "store"
    make_synthetic_store(store, n_cases=2, shape_zyx=(16, 32, 32), patches_per_case=2)
    rows = read_manifest(manifest_path(store, "train", 0))
    write_manifest(manifest_path(store, "train", 0), rows[:-1])
    with pytest.raises(StoreError, match="was built on index fingerprint .* the manifests were edited"):
        train(store, tmp_path / "r1", TINY)
    (store / "index" / "summary.json").unlink()
    with pytest.raises(StoreError, match="incomplete index"):
        train(store, tmp_path / "r2", TINY)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_nnunet_like_recipe_trains_and_its_poly_rate_survives_a_resume(store, tmp_path, monkeypatch):
    """Instance norm, leaky ReLU, deep supervision, SGD and the poly schedule in a real run; an
    interrupted run resumes (the deep-supervision checkpoint reloads with its loss) on the same
    learning-rate curve (the rate is a function of the epoch alone), and its checkpoint predicts
    with the full-resolution head alone."""
    from training.callbacks import PolyLearningRate, poly_learning_rate
    from training.run import train

    model = ModelConfig(depth=3, base_filters=4, norm="instance", activation="leaky_relu", deep_supervision=True)
    config = dataclasses.replace(
        TINY, epochs=3, steps_per_epoch=4, optimizer="sgd", weight_decay=3e-5, schedule="poly", model=model
    )
    expected = [poly_learning_rate(config.learning_rate, e, 3) for e in range(3)]

    original = PolyLearningRate.on_epoch_begin

    def stop_before_the_second_epoch(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt  # as a user's Ctrl-C between epochs
        original(self, epoch, logs)

    monkeypatch.setattr(PolyLearningRate, "on_epoch_begin", stop_before_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(store, tmp_path / "run", config)
    assert len(history(tmp_path / "run")) == 1
    monkeypatch.setattr(PolyLearningRate, "on_epoch_begin", original)
    summary = train(store, tmp_path / "run", config, resume=True)
    rows = history(tmp_path / "run")
    assert summary.epochs_completed == 3 and [int(r["epoch"]) for r in rows] == [0, 1, 2]
    np.testing.assert_allclose([r["learning_rate"] for r in rows], expected, rtol=1e-6)
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert "val_dice_pancreas" in rows[-1]  # the top head's Dice, under its usual name
    from prediction.runs import load_predict_fn

    probs = load_predict_fn(tmp_path / "run", "last")(np.zeros((1, 16, 32, 32, 1), np.float32))
    assert probs.shape == (1, 16, 32, 32, 3)
    from dataset.contract.run import read_input_contract

    contract = read_input_contract(tmp_path / "run")  # instance norm: predict's window is the training patch
    assert contract.model_norm == "instance" and contract.default_window_zyx == contract.patch_size_zyx


def test_batch_renorm_run_resumes_bit_for_bit(store, tmp_path, monkeypatch):
    """Batch renormalisation's state (moving statistics, its step counter for the warm-up and the
    bias correction) is in the checkpoint: 1 epoch then a resume to 2 gives the weights of 2 at once,
    the correction on from step 3 (warm-up shortened from 100 to 2)."""
    import keras

    from training.model import BatchRenormalization
    from training.run import train

    monkeypatch.setattr("training.model.RENORM_WARMUP_STEPS", 2)

    model = ModelConfig(depth=2, base_filters=4, norm="batch_renorm")
    config = dataclasses.replace(TINY, epochs=2, steps_per_epoch=3, image_patches=0, model=model)
    train(store, tmp_path / "whole", config)
    train(store, tmp_path / "resumed", dataclasses.replace(config, epochs=1))
    train(store, tmp_path / "resumed", config, resume=True)
    whole, resumed = (
        keras.saving.load_model(tmp_path / r / "checkpoints" / "last.keras") for r in ("whole", "resumed")
    )
    for a, b in zip(whole.weights, resumed.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    renorms = [layer for layer in resumed.layers if isinstance(layer, BatchRenormalization)]
    assert renorms and {float(layer.steps) for layer in renorms} == {6.0}
    assert {layer.warmup_steps for layer in renorms} == {2}
