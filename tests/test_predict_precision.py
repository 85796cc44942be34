"""``precision`` of the predict config: bfloat16 predicts close to float32, falls back on a CPU
without bfloat16, ``auto`` follows the GPU, and the precision used enters the fingerprint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import write_contract_run

from prediction import precision
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from prediction.runs import load_runs
from sources.synthetic.msd import make_dataset


def confident_unet(seed: int = 0):
    """A tiny U-Net whose head is scaled up, so its softmax is as confident as a trained network's
    (an untrained one's near-uniform probabilities turn every rounding into a label change)."""
    import keras

    from training.model import build_unet

    keras.utils.set_random_seed(seed)
    model = build_unet(depth=2, base_filters=4)
    head = model.get_layer("head_conv")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 30.0, bias])
    return model


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory) -> Path:
    run = write_contract_run(tmp_path_factory.mktemp("run") / "run", window=(32, 64, 64), depth=2)
    (run / "checkpoints").mkdir()
    confident_unet().save(run / "checkpoints" / "best.keras")
    return run


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("msd") / "msd", 1, seed=0, n_test=1, progress=False)


def _labels(summary) -> np.ndarray:
    from preprocess.io import read_label
    from preprocess.output import image_array

    assert not summary.failed and summary.n_done == 1, summary.table()
    return image_array(read_label(summary.results[0].output))


def _record(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text(encoding="utf-8"))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_bfloat16_copy_computes_in_bfloat16_with_the_same_weights():
    model = confident_unet()
    copy = precision.bfloat16_model(model)
    assert copy.get_layer("enc0_conv1").compute_dtype == "bfloat16"
    assert copy.get_layer("head_softmax").compute_dtype == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), copy.get_weights(), strict=True))
    x = np.random.default_rng(0).random((1, 16, 32, 32, 1), dtype=np.float32)
    p32, p16 = model.predict_on_batch(x), copy.predict_on_batch(x)
    assert p16.dtype == np.float32
    difference = np.abs(p32 - p16)
    assert 0 < difference.max() < 0.1  # bfloat16 really ran (not bit-identical), and stayed close
    assert (p32.argmax(-1) == p16.argmax(-1)).mean() > 0.99


def test_bfloat16_label_maps_are_close_to_float32(keras_run, case, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)  # any CPU runs it (emulated without)
    f32 = predict_cases(keras_run, case, tmp_path / "f32", PredictConfig(precision="float32"), progress=False)
    b16 = predict_cases(keras_run, case, tmp_path / "b16", PredictConfig(precision="bfloat16"), progress=False)
    a, b = _labels(f32), _labels(b16)
    assert a.any()
    assert _dice(a > 0, b > 0) >= 0.99
    assert _record(tmp_path / "b16")["config"]["precision"] == "bfloat16"
    assert _record(tmp_path / "b16")["settings_fingerprint"] != _record(tmp_path / "f32")["settings_fingerprint"]


def test_bfloat16_on_a_cpu_without_it_is_float32_and_says_so(keras_run, case, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(precision, "gpu_capabilities", list)
    f32 = predict_cases(keras_run, case, tmp_path / "f32", PredictConfig(precision="float32"), progress=False)
    with caplog.at_level(logging.WARNING, logger="prediction.precision"):
        asked = predict_cases(keras_run, case, tmp_path / "b16", PredictConfig(precision="bfloat16"), progress=False)
    fallbacks = [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(fallbacks) == 1 and "predicting in float32" in fallbacks[0]
    assert np.array_equal(_labels(f32), _labels(asked))
    assert _record(tmp_path / "b16")["config"]["precision"] == "float32"
    assert _record(tmp_path / "b16")["settings_fingerprint"] == _record(tmp_path / "f32")["settings_fingerprint"]


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ([], "float32"),  # a CPU: bfloat16 only when asked
        ([(8, 0)], "bfloat16"),  # A100
        ([(9, 0), (9, 0)], "bfloat16"),
        ([(7, 5)], "float32"),  # T4: no fast bfloat16
        ([(9, 0), (7, 0)], "float32"),  # one slow GPU decides
        ([None], "float32"),  # capability unknown
    ],
)
def test_auto_follows_the_gpus(monkeypatch, gpus, expected):
    monkeypatch.setattr(precision, "gpu_capabilities", lambda: gpus)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)  # the CPU does not decide auto
    assert precision.resolve_precision("auto") == expected


def test_auto_is_recorded_as_what_it_resolved_to(tmp_path, monkeypatch):
    run = write_contract_run(tmp_path / "run")
    monkeypatch.setattr(precision, "gpu_capabilities", list)
    assert load_runs(run, PredictConfig(), np.ones_like).config.precision == "float32"
    monkeypatch.setattr(precision, "gpu_capabilities", lambda: [(9, 0)])
    assert load_runs(run, PredictConfig(), np.ones_like).config.precision == "bfloat16"


def test_float32_keeps_the_fingerprint_of_before_precision_was_a_setting(tmp_path):
    import dataclasses

    from dataset.common.configio import to_dict
    from dataset.common.fingerprints import fingerprint_json
    from dataset.common.records import record_to_dict

    run = write_contract_run(tmp_path / "run")
    settings = load_runs(run, PredictConfig(precision="float32"), np.ones_like)
    config = {k: v for k, v in to_dict(settings.config).items() if k not in ("nsd_tolerance_mm", "detection")}
    del config["output_format"], config["precision"]
    config["postprocessing"] = None
    member = settings.members[0]
    legacy = {"contract": record_to_dict(member.contract), "config": config, "model": member.model}
    assert settings.fingerprint == fingerprint_json(legacy)
    bf16 = dataclasses.replace(settings.config, precision="bfloat16")
    from prediction.runs import _fingerprint

    assert _fingerprint(settings.members, bf16, None) != settings.fingerprint


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 sse\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert precision.cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16", "sse"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'float32', 'bfloat16'\), got 'fp16'"):
        PredictConfig(precision="fp16")
