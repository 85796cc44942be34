"""``pancreas train --init-from``: a new run that starts from another run's (or model's) weights,
with a fresh optimiser, refused when the preprocessing or the model's shape differ."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import tiny_train_store

from dataset.common.configio import to_dict
from dataset.common.crashpoints import ENOSPC_ENV
from dataset.contract.catalog import read_catalog, write_catalog
from dataset.contract.run import RunError, checkpoint_path, read_fingerprints, read_state
from preprocess.config import PreprocessConfig
from training.config import LossConfig, ModelConfig, TrainConfig

STEPS = 3
SOURCE = TrainConfig(
    epochs=2,
    steps_per_epoch=STEPS,
    batch_size=2,
    learning_rate=0.01,
    image_patches=0,
    strategy="none",
    model=ModelConfig(depth=2, base_filters=2),
    loss=LossConfig(name="dice_cross_entropy"),
)
# a learning rate so small that one epoch of Adam moves no weight by more than ~STEPS * 1e-7
STILL = dataclasses.replace(SOURCE, epochs=1, learning_rate=1e-7, min_learning_rate=0.0)
PREPROCESS = to_dict(PreprocessConfig())


def _store(root: Path, seed: int, preprocess: dict) -> Path:
    tiny_train_store(root, seed)
    # a real store's catalog records its preprocessing config (the synthetic writer records {})
    write_catalog(root, dataclasses.replace(read_catalog(root), config=preprocess))
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny run trained for two epochs on store A."""
    from training.run import train

    store = _store(tmp_path_factory.mktemp("store_a"), 0, PREPROCESS)
    run_dir = tmp_path_factory.mktemp("source") / "run"
    train(store, run_dir, SOURCE)
    assert read_state(run_dir).iterations == 2 * STEPS
    return run_dir


@pytest.fixture(scope="module")
def store_b(tmp_path_factory):
    """Other cases, the same preprocessing."""
    return _store(tmp_path_factory.mktemp("store_b"), 1, PREPROCESS)


def _model(path: Path):
    import keras

    return keras.saving.load_model(path, compile=False)


def _trainable(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in _model(path).trainable_weights]


def _listing(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# ---------------------------------------------------------------- fine-tuning works
def test_fine_tuning_starts_from_the_source_weights_with_a_fresh_optimizer(source, store_b, tmp_path):
    from training.run import train

    run_dir = tmp_path / "tuned"
    summary = train(store_b, run_dir, STILL, init_from=source)
    state = read_state(run_dir)
    assert (summary.initial_epoch, state.epoch) == (0, 1)
    assert state.iterations == STEPS  # a fresh optimizer: the source's 2 * STEPS steps are not carried over
    assert state.learning_rate == pytest.approx(STILL.learning_rate)  # the config's, not the source's schedule
    for tuned, start in zip(_trainable(checkpoint_path(run_dir, "last")), _trainable(checkpoint_path(source, "last"))):
        np.testing.assert_allclose(tuned, start, atol=1e-5)  # ~STEPS * lr away from the source's weights
    fresh = dataclasses.replace(STILL, seed=1)
    train(store_b, tmp_path / "fresh", fresh)  # from random weights instead: far from the source's
    assert (
        max(
            np.abs(a - b).max()
            for a, b in zip(
                _trainable(checkpoint_path(tmp_path / "fresh", "last")), _trainable(checkpoint_path(source, "last"))
            )
        )
        > 0.05
    )

    record = read_fingerprints(run_dir).init_from
    assert record["path"] == str(checkpoint_path(source, "last").resolve())
    assert record["run_dir"] == str(source.resolve()) and record["checkpoint"] == "last"
    assert (
        record["store_fingerprint"]
        == json.loads((source / "input_contract.json").read_text(encoding="utf-8"))["store_fingerprint"]
    )
    assert summary.extra["init_from"] == record
    assert "init_from" not in json.loads((tmp_path / "fresh" / "fingerprints.json").read_text(encoding="utf-8"))


def test_the_initial_model_holds_exactly_the_source_weights_at_optimizer_step_0(source, store_b):
    import keras

    from training.distribute import build_compiled_model
    from training.finetune import apply_init_weights, load_init_weights
    from training.preflight import read_run_inputs

    init = load_init_weights(checkpoint_path(source, "best"), SOURCE, read_run_inputs(store_b, SOURCE))
    assert (init.source.checkpoint, init.source.run_dir) == ("best", source.resolve())
    model = build_compiled_model(SOURCE)
    apply_init_weights(model, init)
    for mine, theirs in zip(model.weights, _model(checkpoint_path(source, "best")).weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def test_a_bare_model_is_checked_for_shape_and_warned_about_preprocessing(source, store_b, tmp_path, caplog):
    from training.finetune import load_init_weights
    from training.preflight import read_run_inputs

    bare = tmp_path / "model.keras"
    shutil.copyfile(checkpoint_path(source, "last"), bare)
    with caplog.at_level(logging.WARNING, logger="training.finetune"):
        init = load_init_weights(bare, SOURCE, read_run_inputs(store_b, SOURCE))
    assert "preprocessing could not be checked" in caplog.text
    assert init.record["run_dir"] is None and init.record["checkpoint"] is None
    assert init.record["store_fingerprint"] is None and init.record["path"] == str(bare.resolve())
    with pytest.raises(
        RunError, match=r"model\.depth differs \(the source model has 2, the training config builds 3\)"
    ):
        load_init_weights(
            bare,
            dataclasses.replace(SOURCE, model=ModelConfig(depth=3, base_filters=2)),
            read_run_inputs(store_b, SOURCE),
        )


def test_resolving_the_source(source, tmp_path):
    from training.finetune import resolve_init_source

    assert resolve_init_source(source).model_path == checkpoint_path(source, "last").resolve()
    assert resolve_init_source(checkpoint_path(source, "best")).checkpoint == "best"
    for path, message in [
        (tmp_path / "nothing", "no such run folder or .keras model"),
        (tmp_path, "not a training run folder"),
        (source / "config.json", "no such run folder or .keras model"),
    ]:
        with pytest.raises(RunError, match=message):
            resolve_init_source(path)


# ---------------------------------------------------------------- refusals, with nothing written
def test_another_preprocessing_is_refused_naming_the_key_and_both_values(source, tmp_path_factory, tmp_path):
    from training.run import train

    other = {**PREPROCESS, "window_hu": [-100.0, 240.0]}
    store_c = _store(tmp_path_factory.mktemp("store_c"), 1, other)
    with pytest.raises(
        RunError,
        match=r"differ in preprocess\.window_hu \(\[-135\.0, 250\.0\] in .*input_contract"
        r"\.json vs \[-100\.0, 240\.0\] in .*catalog\.json\)",
    ):
        train(store_c, tmp_path / "tuned", SOURCE, init_from=source)
    assert _listing(tmp_path) == []


def test_limits_alone_may_differ():
    from training.finetune import preprocess_differences

    looser = {**PREPROCESS, "limits": {**PREPROCESS["limits"], "max_spacing_mm": 30.0}}
    assert preprocess_differences(PREPROCESS, looser) == []
    assert preprocess_differences(PREPROCESS, {**PREPROCESS, "target_spacing_mm": [1.0, 1.0, 2.0]}) == [
        ("preprocess.target_spacing_mm", [1.0, 1.0, 1.0], [1.0, 1.0, 2.0])
    ]
    assert preprocess_differences({}, {"equalize": True}) == [("preprocess.equalize", "(not recorded)", True)]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            ModelConfig(depth=3, base_filters=2),
            r"model\.depth differs \(the source model has 2, the training config "
            r"builds 3\); set model\.depth: 2 in the training config",
        ),
        (
            ModelConfig(depth=2, base_filters=4),
            r"model\.base_filters differs \(the source model has 2, the training "
            r"config builds 4\)",
        ),
    ],
)
def test_another_model_shape_is_refused(source, store_b, tmp_path, model, message):
    from training.run import train

    with pytest.raises(RunError, match=message):
        train(store_b, tmp_path / "tuned", dataclasses.replace(SOURCE, model=model), init_from=source)
    assert _listing(tmp_path) == []


def test_init_from_with_resume_is_refused(source, store_b, tmp_path, capsys):
    from pancreas.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(to_dict(SOURCE)))
    code = main(
        [
            "train",
            "--store",
            str(store_b),
            "--config",
            str(config),
            "--out",
            str(source),
            "--resume",
            "--init-from",
            str(source),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--init-from starts a new run" in err[0] and "--resume" in err[0], err
    assert read_state(source).epoch == 2  # the run is untouched


# ---------------------------------------------------------------- a resume before the first epoch
def test_a_fine_tuning_run_killed_before_its_first_epoch_resumes_from_the_source(
    source, store_b, tmp_path, monkeypatch
):
    from training.run import train

    run_dir = tmp_path / "tuned"
    monkeypatch.setenv(ENOSPC_ENV, "checkpoint-last:written")  # the first epoch never commits
    with pytest.raises(OSError, match="No space left"):
        train(store_b, run_dir, STILL, init_from=source)
    monkeypatch.delenv(ENOSPC_ENV)
    assert read_state(run_dir) is None and read_fingerprints(run_dir).init_from["checkpoint"] == "last"

    train(store_b, run_dir, STILL, resume=True)
    assert read_state(run_dir).iterations == STEPS
    for tuned, start in zip(_trainable(checkpoint_path(run_dir, "last")), _trainable(checkpoint_path(source, "last"))):
        np.testing.assert_allclose(tuned, start, atol=1e-5)

    copy, again = shutil.copytree(source, tmp_path / "source_copy"), tmp_path / "again"
    monkeypatch.setenv(ENOSPC_ENV, "checkpoint-last:written")
    with pytest.raises(OSError, match="No space left"):
        train(store_b, again, STILL, init_from=copy)
    monkeypatch.delenv(ENOSPC_ENV)
    last = checkpoint_path(copy, "last")
    os.utime(last, ns=(last.stat().st_atime_ns, last.stat().st_mtime_ns + 10**9))  # the source moved on
    with pytest.raises(RunError, match="has changed or is gone since"):
        train(store_b, again, STILL, resume=True)


def test_a_fine_tune_killed_before_its_config_is_started_again_not_resumed_from_random_weights(
    source, store_b, tmp_path, monkeypatch
):
    """fingerprints.json (the source) is written before config.json: a kill between the two
    leaves no resumable run, and the same command again fine-tunes from the source."""
    from dataset.contract.run import holds_run
    from training.run import train

    run_dir = tmp_path / "tuned"
    monkeypatch.setenv(ENOSPC_ENV, "run-config:written")
    with pytest.raises(OSError, match="No space left"):
        train(store_b, run_dir, STILL, init_from=source)
    monkeypatch.delenv(ENOSPC_ENV)
    assert not holds_run(run_dir) and read_fingerprints(run_dir).init_from["checkpoint"] == "last"
    with pytest.raises(RunError, match="no config.json"):
        train(store_b, run_dir, STILL, resume=True)
    train(store_b, run_dir, STILL, init_from=source)  # the same command again
    for tuned, start in zip(_trainable(checkpoint_path(run_dir, "last")), _trainable(checkpoint_path(source, "last"))):
        np.testing.assert_allclose(tuned, start, atol=1e-5)
