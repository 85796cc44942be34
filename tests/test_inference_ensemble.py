"""Ensembles and test-time mirroring: the averaging maths on hand-computed cases, the
contracts an ensemble refuses, the mirror axes a run records, and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dataset.common.configio import to_dict
from dataset.common.records import record_to_dict
from dataset.contract.run import InputContract, RunError, read_input_contract, write_input_contract
from prediction.config import PredictConfig
from prediction.predict import CaseInput, PredictError, predict_cases, predict_volume, resolve_config
from prediction.runs import load_runs
from preprocess.config import PreprocessConfig
from sources.synthetic.msd import dataset_params, make_dataset

WINDOW = (32, 64, 64)
FLIPS_Y_X = {"flip_axes": [1, 2], "flip_probability": 0.5}


def write_run(run_dir: Path, window=WINDOW, depth=2, flips=FLIPS_Y_X, **changes) -> Path:
    """A run folder with an input contract (no checkpoint: the tests pass models)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    contract = {
        "version": 1,
        "patch_size_zyx": list(window),
        "val_patch_size_zyx": list(window),
        "n_classes": 3,
        "label_names": ["background", "pancreas", "tumour"],
        "model_depth": depth,
        "preprocess": to_dict(PreprocessConfig()),
        "store_fingerprint": "store-1",
        "index_fingerprint": "y",
    }
    if flips is not None:
        contract["flip_augment"] = flips
    contract.update(changes)
    (run_dir / "input_contract.json").write_text(json.dumps(contract))
    return run_dir


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def model_a(batch: np.ndarray) -> np.ndarray:
    """Pointwise (the output at a voxel depends on that voxel only): flip-equivariant."""
    x = batch[..., 0]
    return softmax(np.stack([np.zeros_like(x), 4 * x, 8 * (x - 0.5)], axis=-1))


def model_b(batch: np.ndarray) -> np.ndarray:
    x = batch[..., 0]
    return softmax(np.stack([3 * (0.4 - x), np.zeros_like(x), 6 * (x - 0.7)], axis=-1))


def x_ramp_squared(batch: np.ndarray) -> np.ndarray:
    """Not flip-equivariant: class 1 = r**2 with r = x / (width - 1), whatever the input."""
    r = np.linspace(0.0, 1.0, batch.shape[3], dtype=np.float32) ** 2
    p = np.broadcast_to(r, batch.shape[:4])
    return np.stack([1 - p, p], axis=-1).astype(np.float32)


def constant(p1: float):
    def model(batch):
        return np.stack([np.full(batch.shape[:4], 1 - p1), np.full(batch.shape[:4], p1)], -1).astype(np.float32)

    return model


def brute_force(model, levels: np.ndarray) -> np.ndarray:
    return np.moveaxis(model((levels.astype(np.float32) / 255)[None, ..., None])[0], -1, 0)


# ----------------------------------------------------------------------------- the maths


def test_an_ensemble_of_two_is_the_mean_of_their_probabilities():
    levels = np.random.default_rng(0).integers(0, 256, (20, 40, 36), dtype=np.uint8)
    config = PredictConfig(window_zyx=(8, 16, 16), batch_size=3, mirror_axes=())
    probs = predict_volume(levels, [model_a, model_b], config, progress=False)
    expected = (brute_force(model_a, levels) + brute_force(model_b, levels)) / 2
    assert np.allclose(probs, expected, atol=1e-5)
    assert not np.allclose(probs, brute_force(model_a, levels), atol=1e-2)  # both models count


def test_an_ensemble_of_constant_models_gives_their_hand_computed_mean():
    probs = predict_volume(
        np.zeros((4, 6, 6), np.uint8),
        [constant(0.2), constant(0.6), constant(0.7)],
        PredictConfig(window_zyx=(4, 4, 4), mirror_axes=()),
        progress=False,
    )
    assert np.allclose(probs[1], 0.5) and np.allclose(probs[0], 0.5)


@pytest.mark.parametrize("axes", [(0,), (1, 2), (0, 1, 2)])
def test_mirroring_a_flip_equivariant_model_changes_nothing(axes):
    levels = np.random.default_rng(1).integers(0, 256, (12, 20, 20), dtype=np.uint8)
    plain = predict_volume(levels, model_a, PredictConfig(window_zyx=(8, 16, 16), mirror_axes=()), progress=False)
    mirrored = predict_volume(levels, model_a, PredictConfig(window_zyx=(8, 16, 16), mirror_axes=axes), progress=False)
    assert np.allclose(mirrored, plain, atol=1e-6)


# x = 0..3, r = x / 3: r**2 = [0, 1/9, 4/9, 1]; flipped along x and back: (1 - r)**2 = [1, 4/9, 1/9, 0]
@pytest.mark.parametrize(
    ("axes", "expected"),
    [
        ((), [0, 1 / 9, 4 / 9, 1]),
        ((1,), [0, 1 / 9, 4 / 9, 1]),  # a y-flip does not move an x-ramp
        ((2,), [1 / 2, 5 / 18, 5 / 18, 1 / 2]),  # (r**2 + (1 - r)**2) / 2
        ((1, 2), [1 / 2, 5 / 18, 5 / 18, 1 / 2]),  # 4 passes, two of them x-flipped
        ((0, 1, 2), [1 / 2, 5 / 18, 5 / 18, 1 / 2]),  # 8 passes, four of them x-flipped
    ],
)
def test_mirroring_an_asymmetric_model_averages_as_hand_computed(axes, expected):
    config = PredictConfig(window_zyx=(2, 2, 4), mirror_axes=axes)  # one window: no stitching weights
    probs = predict_volume(np.zeros((2, 2, 4), np.uint8), x_ramp_squared, config, progress=False)
    assert np.allclose(probs[1], np.broadcast_to(expected, (2, 2, 4)), atol=1e-6)


def test_each_model_of_an_ensemble_mirrors_along_its_own_axes():
    calls = {"ramp": 0, "flat": 0}

    def ramp(batch):
        calls["ramp"] += 1
        return x_ramp_squared(batch)

    def flat(batch):
        calls["flat"] += 1
        return constant(0.3)(batch)

    probs = predict_volume(
        np.zeros((2, 2, 4), np.uint8),
        [ramp, flat],
        PredictConfig(window_zyx=(2, 2, 4)),
        mirror_axes=[(2,), ()],
        progress=False,
    )
    assert np.allclose(probs[1], (np.array([1 / 2, 5 / 18, 5 / 18, 1 / 2]) + 0.3) / 2, atol=1e-6)
    assert calls == {"ramp": 2, "flat": 1}


def test_unresolved_mirror_axes_are_refused_by_the_pure_function():
    with pytest.raises(PredictError, match="mirror_axes is None"):
        predict_volume(np.zeros((4, 4, 4), np.uint8), model_a, PredictConfig(window_zyx=(4, 4, 4)), progress=False)


# ----------------------------------------------------------------------------- mirror axes from the run


@pytest.mark.parametrize(
    ("flips", "config_axes", "expected"),
    [
        (FLIPS_Y_X, None, (1, 2)),  # default: the trainer's flips
        ({"flip_axes": [0, 1, 2], "flip_probability": 0.2}, None, (0, 1, 2)),
        ({"flip_axes": [1, 2], "flip_probability": 0.0}, None, ()),  # flips were off
        ({"flip_axes": [], "flip_probability": 0.5}, None, ()),
        (FLIPS_Y_X, (0,), (0,)),  # an explicit list overrides
        (FLIPS_Y_X, (), ()),  # [] / --no-mirror: off
    ],
)
def test_mirror_axes_come_from_the_run_unless_the_config_names_them(flips, config_axes, expected):
    contract = InputContract(val_patch_size_zyx=WINDOW, n_classes=3, model_depth=2, preprocess={}, flip_augment=flips)
    assert resolve_config(PredictConfig(mirror_axes=config_axes), contract).mirror_axes == expected


def test_old_contract_without_flips_mirrors_nothing_with_one_log_line(tmp_path: Path, caplog):
    run = write_run(tmp_path / "old", flips=None)
    with caplog.at_level(logging.WARNING, logger="prediction.runs"):
        settings = load_runs(run, PredictConfig(), model_a)
    assert settings.config.mirror_axes == () and settings.mirror_axes == [()]
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "no test-time mirroring" in notes[0] and str(run / "input_contract.json") in notes[0]
    assert "\n" not in notes[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prediction.runs"):
        assert load_runs(run, PredictConfig(mirror_axes=(2,)), model_a).config.mirror_axes == (2,)
    assert not caplog.records  # the config chose: nothing to note


def test_contract_flip_augment_round_trip_and_checks(tmp_path: Path):
    contract = InputContract(
        val_patch_size_zyx=WINDOW,
        n_classes=3,
        model_depth=2,
        preprocess={},
        flip_augment={"flip_axes": [2], "flip_probability": 0.5},
    )
    write_input_contract(tmp_path, contract)
    back = read_input_contract(tmp_path)
    assert back == contract and back.mirror_axes == (2,)
    assert list(json.loads((tmp_path / "input_contract.json").read_text(encoding="utf-8")))[-1] == "flip_augment"
    old = InputContract(val_patch_size_zyx=WINDOW, n_classes=3, model_depth=2, preprocess={})
    assert "flip_augment" not in record_to_dict(old) and old.mirror_axes is None
    for bad in (
        {"flip_axes": [3], "flip_probability": 0.5},
        {"flip_axes": [1]},
        [1, 2],
        {"flip_axes": [1, 1], "flip_probability": 0.5},
        {"flip_axes": [1], "flip_probability": 2},
    ):
        (tmp_path / "input_contract.json").write_text(json.dumps({**record_to_dict(contract), "flip_augment": bad}))
        with pytest.raises(RunError, match=r"input_contract.json(: |\.)flip_augment"):
            read_input_contract(tmp_path)


# ----------------------------------------------------------------------------- contracts an ensemble refuses


def _contract(run: Path) -> dict:
    return json.loads((run / "input_contract.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"n_classes": 4}, "n_classes"),
        ({"val_patch_size_zyx": [32, 64, 128]}, "the sliding window (default_window_zyx)"),
        ({"preprocess": to_dict(PreprocessConfig(target_spacing_mm=(0.8, 0.8, 2.5)))}, "preprocess.target_spacing_mm"),
        ({"preprocess": to_dict(PreprocessConfig(window_hu=(-100.0, 240.0)))}, "preprocess.window_hu"),
        ({"preprocess": to_dict(PreprocessConfig(equalize=False))}, "preprocess.equalize"),
        ({"label_names": ["background", "gland", "tumour"]}, "label_names"),
        ({"output": "(N, z, y, x, 3) float32 logits"}, "output"),
    ],
)
def test_contracts_that_disagree_are_refused_naming_both_runs_and_the_key(tmp_path: Path, changes, key):
    first = write_run(tmp_path / "r1", output="(N, z, y, x, 3) float32 softmax")
    second = write_run(tmp_path / "r2", **{"output": "(N, z, y, x, 3) float32 softmax", **changes})
    out = tmp_path / "out"
    with pytest.raises(PredictError) as info:
        predict_cases([first, second], tmp_path, out, predict_fn=[model_a, model_b], progress=False)
    message = str(info.value)
    assert message.startswith(f"runs {first} and {second} cannot be ensembled: their input contracts differ in {key} (")
    assert "\n" not in message
    assert not out.exists()  # nothing written, not even the lock file


def test_a_window_too_small_for_one_models_depth_is_refused_naming_that_run(tmp_path: Path):
    first, deep = write_run(tmp_path / "r1", depth=2), write_run(tmp_path / "r2", depth=6)  # 2**6 = 64 > 32
    with pytest.raises(PredictError, match=rf"^{deep}: sliding-window patch size \(32, 64, 64\)"):
        load_runs([first, deep], PredictConfig(), [model_a, model_b])


def test_what_changes_neither_input_nor_output_may_differ(tmp_path: Path):
    first = write_run(tmp_path / "r1")
    second = write_run(
        tmp_path / "r2",
        depth=3,
        patch_size_zyx=[16, 32, 32],
        flips={"flip_axes": [2], "flip_probability": 0.5},
        store_fingerprint="store-2",
        index_fingerprint="z",
        label_names={"0": "background", "1": "pancreas", "2": "tumour"},
    )
    settings = load_runs([first, second], PredictConfig(), [model_a, model_b])
    assert settings.mirror_axes == [(1, 2), (2,)] and settings.config.mirror_axes is None  # each its own
    assert settings.config.window_zyx == WINDOW


def test_runs_and_models_must_pair_up(tmp_path: Path):
    first, second = write_run(tmp_path / "r1"), write_run(tmp_path / "r2")
    with pytest.raises(PredictError, match="2 runs but 1 models"):
        load_runs([first, second], PredictConfig(), [model_a])
    with pytest.raises(PredictError, match=f"run {first} is given twice"):
        load_runs([first, first], PredictConfig(), [model_a, model_b])
    with pytest.raises(PredictError, match="no training run"):
        load_runs([], PredictConfig(), None)


# ----------------------------------------------------------------------------- predict_cases and the CLI


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("msd"), 1, seed=0, size="small", n_test=1, progress=False)


def test_ensemble_prediction_equals_one_model_of_their_mean(msd: Path, tmp_path: Path):
    case = dataset_params(1, seed=0, n_test=1)[1]
    cases = [CaseInput(case.name, msd / "imagesTs" / case.filename)]
    r1, r2 = write_run(tmp_path / "r1"), write_run(tmp_path / "r2")

    def mean_of_a_and_b(batch):
        return (model_a(batch) + model_b(batch)) / 2

    ensemble = predict_cases([r1, r2], cases, tmp_path / "ens", predict_fn=[model_a, model_b], progress=False)
    single = predict_cases(r1, cases, tmp_path / "one", predict_fn=mean_of_a_and_b, progress=False)
    assert not ensemble.failed and not single.failed
    from preprocess.io import read_label
    from preprocess.output import image_array

    got = image_array(read_label(tmp_path / "ens" / f"{case.name}.nii.gz"))
    want = image_array(read_label(tmp_path / "one" / f"{case.name}.nii.gz"))
    assert np.array_equal(got, want) and len(np.unique(got)) == 3
    record = json.loads((tmp_path / "ens" / "predictions.json").read_text(encoding="utf-8"))
    assert record["run"].split(":") == [str(r1.resolve()), str(r2.resolve())]
    assert record["config"]["mirror_axes"] == [1, 2]


def test_the_settings_fingerprint_covers_every_model(tmp_path: Path):
    r1, r2, r3 = write_run(tmp_path / "r1"), write_run(tmp_path / "r2"), write_run(tmp_path / "r3")
    base = load_runs([r1, r2], PredictConfig(), [model_a, model_b]).fingerprint
    assert load_runs([r1, r2], PredictConfig(), [model_a, model_b]).fingerprint == base
    assert load_runs([r1, r2], PredictConfig(), [model_a, model_a]).fingerprint != base  # second model changed
    assert load_runs(r1, PredictConfig(), model_a).fingerprint != base  # one model only
    write_run(tmp_path / "r3", store_fingerprint="store-9")
    assert load_runs([r1, r3], PredictConfig(), [model_a, model_b]).fingerprint != base  # second contract changed


class CountingLoader:
    """Stands in for ``load_predict_fns``: one pointwise model per run, counting calls."""

    def __init__(self):
        self.runs: list[Path] = []
        self.calls = 0

    def __call__(self, run_dirs, checkpoint="best", precision="float32"):
        self.runs = [Path(d) for d in run_dirs]

        def model(batch):
            self.calls += 1
            return model_a(batch)

        return [model for _ in run_dirs]


@pytest.mark.parametrize(
    ("extra", "passes_per_batch", "mirror"),
    [(["--roi", "whole"], 4, [1, 2]), (["--no-mirror", "--roi", "whole"], 1, [])],
)
def test_cli_with_two_model_runs(msd: Path, tmp_path: Path, monkeypatch, extra, passes_per_batch, mirror):
    from pancreas.cli import main

    loader = CountingLoader()
    monkeypatch.setattr("prediction.predict.load_predict_fns", loader)
    monkeypatch.setattr("prediction.predict.check_checkpoints", lambda runs, checkpoint: None)  # fake runs: no .keras
    r1, r2 = write_run(tmp_path / "r1"), write_run(tmp_path / "r2")
    out = tmp_path / "out"
    assert (
        main(["predict", "--model", str(r1), str(r2), "--input", str(msd), "--out", str(out), "--no-progress", *extra])
        == 0
    )
    assert loader.runs == [r1, r2]
    record = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert record["config"]["mirror_axes"] == mirror
    (case,) = record["cases"].values()
    from prediction.sliding import window_grid

    n_batches = -(-len(window_grid([max(s, w) for s, w in zip(case["shape_zyx"], WINDOW)], WINDOW, 0.5)) // 2)
    assert loader.calls == 2 * passes_per_batch * n_batches  # two models, each once per mirror combination


def test_cli_refuses_disagreeing_runs_in_one_line(msd: Path, tmp_path: Path, capsys):
    from pancreas.cli import main

    r1, r2 = write_run(tmp_path / "r1"), write_run(tmp_path / "r2", n_classes=2)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(r1), str(r2), "--input", str(msd), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"runs {r1} and {r2} cannot be ensembled" in err and "n_classes" in err
    assert not out.exists()


def test_a_model_with_another_class_count_is_refused_at_its_first_batch():
    calls = []

    def two_classes(batch):
        calls.append(len(batch))
        return np.full((*batch.shape[:-1], 2), 0.5, np.float32)

    levels = np.zeros((16, 64, 64), np.uint8)  # 2 x 4 x 4 windows of (8, 16, 16): many batches
    config = PredictConfig(window_zyx=(8, 16, 16), overlap=0.0, mirror_axes=(), batch_size=1)
    with pytest.raises(PredictError, match="model gives 2 classes, the run's contract says 3"):
        predict_volume(levels, two_classes, config, progress=False, n_classes=3)
    assert calls == [1]  # refused after one window, not after the whole scan
