"""Post-processing decisions: ``apply_postprocessing`` on a constructed case, the
``postprocessing.json`` contract, and ``predict --postprocessing``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataset.common.configio import to_dict
from dataset.contract.postprocessing import (
    PostprocessingDecision,
    PostprocessingError,
    read_postprocessing,
    write_postprocessing,
)
from prediction.config import PredictConfig
from prediction.postprocess import apply_postprocessing, keep_largest_component
from prediction.predict import PredictError, predict_cases
from preprocess.config import PreprocessConfig
from sources.synthetic.msd import make_dataset


def decision(pancreas: bool, tumour: bool, store: str = "store-1") -> PostprocessingDecision:
    return PostprocessingDecision({"pancreas": pancreas, "tumour": tumour}, store)


def constructed_case() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A gland with a large tumour and a second small one inside it, an island of gland with a
    tumour voxel, a lone tumour voxel, and a gland voxel touching the gland by a corner only.

    Returns the labels and the hand-made answer for each decision (z, y, x; 12 x 12 x 12).
    """
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:7, 1:7, 1:7] = 1  # the gland: 216 voxels
    labels[2:5, 2:5, 4:7] = 2  # its large tumour T (27 voxels), touching gland tissue
    labels[5, 2, 2] = 2  # a second, 1-voxel tumour inside the gland, apart from T
    labels[7, 7, 7] = 1  # touches the gland's corner (6, 6, 6) only: 26-connected
    labels[9:12, 9:12, 9:12] = 1  # an island of gland (27 voxels) ...
    labels[10, 10, 10] = 2  # ... holding a tumour voxel
    labels[10, 1, 10] = 2  # a lone tumour voxel, far from any gland

    gland = labels.copy()  # pancreas: the island and the lone voxel go
    gland[9:12, 9:12, 9:12] = 0
    gland[10, 1, 10] = 0

    tumour = labels.copy()  # tumour: small tumours in gland tissue -> 1, the lone one -> 0
    tumour[5, 2, 2] = 1
    tumour[10, 10, 10] = 1
    tumour[10, 1, 10] = 0

    both = gland.copy()  # pancreas first, then tumour
    both[5, 2, 2] = 1
    return labels, {"none": labels.copy(), "pancreas": gland, "tumour": tumour, "both": both}


@pytest.mark.parametrize(
    ("name", "pancreas", "tumour"),
    [
        ("none", False, False),
        ("pancreas", True, False),
        ("tumour", False, True),
        ("both", True, True),
    ],
)
def test_postprocessing_on_a_constructed_case(name, pancreas, tumour):
    labels, expected = constructed_case()
    before = labels.copy()
    out = apply_postprocessing(labels, decision(pancreas, tumour))
    assert out.dtype == np.uint8 and np.array_equal(out, expected[name])
    assert np.array_equal(labels, before) and out is not labels  # pure: the input is untouched
    assert np.count_nonzero(out) <= np.count_nonzero(labels)  # never adds foreground


def test_pancreas_step_is_the_foreground_mode_of_keep_largest_component():
    labels, _ = constructed_case()
    assert np.array_equal(
        apply_postprocessing(labels, decision(True, False)), keep_largest_component(labels, "foreground")
    )


def test_a_tumour_alone_in_a_gland_island_without_label_1_becomes_background():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 2  # largest tumour: kept
    labels[4, 4, 4] = 2  # a tumour-only island: nothing to be gland of -> 0
    out = apply_postprocessing(labels, decision(False, True))
    assert (out == 2).sum() == 8 and out[4, 4, 4] == 0


def test_of_two_equally_large_components_the_first_in_zyx_order_is_kept():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[3, 0, 0] = labels[0, 4, 4] = 1
    out = apply_postprocessing(labels, decision(True, False))
    assert out[0, 4, 4] == 1 and out[3, 0, 0] == 0


def test_empty_map_passes_unchanged():
    labels = np.zeros((4, 4, 4), np.uint8)
    assert np.array_equal(apply_postprocessing(labels, decision(True, True)), labels)


# ----------------------------------------------------------------------------- the contract


def test_decision_round_trip_same_bytes(tmp_path: Path):
    chosen = PostprocessingDecision(
        {"pancreas": True, "tumour": False},
        "store-1",
        chosen_on="out-of-fold predictions of 5 folds, 10 cases",
        scores={"pancreas": {"dice_without": 0.8, "dice_with": 0.81}},
    )
    path = write_postprocessing(tmp_path, chosen)
    assert path == tmp_path / "postprocessing.json"
    first = path.read_bytes()
    assert list(json.loads(first)) == ["version", "largest_component", "store_fingerprint", "chosen_on", "scores"]
    back = read_postprocessing(path)
    assert back == chosen and back.regions == ("pancreas",)
    assert read_postprocessing(tmp_path) == chosen  # the folder holding it works too
    write_postprocessing(tmp_path, back)
    assert path.read_bytes() == first
    write_postprocessing(tmp_path, decision(False, True))
    assert list(json.loads(path.read_text(encoding="utf-8"))) == [
        "version",
        "largest_component",
        "store_fingerprint",
    ]  # optional left out


V1 = '"version": 1'
BOTH = '"largest_component": {"pancreas": true, "tumour": false}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "unreadable postprocessing decision"),
        (f"{{{BOTH}}}", "older pancreas-seg (no format version"),
        (f"{{{V1}, {BOTH}}}", "missing key(s) store_fingerprint"),
        (f'{{{V1}, {BOTH}, "store_fingerprint": "s", "x": 1}}', "unknown key(s) x"),
        (f'{{{V1}, "largest_component": {{"pancreas": true}}, "store_fingerprint": "s"}}', "must map exactly pancreas"),
        (
            f'{{{V1}, "largest_component": {{"pancreas": 1, "tumour": false}}, "store_fingerprint": "s"}}',
            "largest_component.pancreas: expected bool, got 1",
        ),
        (f'{{{V1}, "largest_component": [], "store_fingerprint": "s"}}', "largest_component: expected a mapping"),
        (f'{{{V1}, {BOTH}, "store_fingerprint": ""}}', "non-empty string"),
    ],
)
def test_a_bad_decision_file_is_one_line_naming_it(tmp_path: Path, text, message):
    path = tmp_path / "postprocessing.json"
    path.write_text(text)
    with pytest.raises(PostprocessingError) as info:
        read_postprocessing(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_decision_file_names_it(tmp_path: Path):
    with pytest.raises(PostprocessingError, match=rf"^{tmp_path / 'nope.json'}: no postprocessing decision"):
        read_postprocessing(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- predict --postprocessing


def write_run(run_dir: Path, store: str | None = "store-1") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    contract = {
        "version": 1,
        "patch_size_zyx": [32, 64, 64],
        "val_patch_size_zyx": [32, 64, 64],
        "n_classes": 3,
        "model_depth": 2,
        "preprocess": to_dict(PreprocessConfig()),
        "index_fingerprint": "y",
        "flip_augment": {"flip_axes": [], "flip_probability": 0.0},
    }
    if store:
        contract["store_fingerprint"] = store
    (run_dir / "input_contract.json").write_text(json.dumps(contract))
    return run_dir


def speckled_model(batch: np.ndarray) -> np.ndarray:
    """Pointwise and noisy on purpose: many small components for the clean-up to remove."""
    x = batch[..., 0]
    return np.stack([1.2 - x, np.abs(x - 0.5), x - 0.1], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("msd"), 1, seed=0, size="small", n_test=1, progress=False)


def test_predict_applies_the_decision_on_the_scan_grid(msd: Path, tmp_path: Path):
    from preprocess.io import read_label
    from preprocess.output import image_array

    run = write_run(tmp_path / "run")
    chosen = decision(True, True)
    write_postprocessing(tmp_path / "cv", chosen)
    plain = predict_cases(run, msd, tmp_path / "plain", predict_fn=speckled_model, progress=False)
    config = PredictConfig(postprocessing=str(tmp_path / "cv" / "postprocessing.json"))
    cleaned = predict_cases(run, msd, tmp_path / "cleaned", config, predict_fn=speckled_model, progress=False)
    assert not plain.failed and not cleaned.failed, cleaned.table()
    (name,) = [Path(r.output).name for r in cleaned.results]
    raw = image_array(read_label(tmp_path / "plain" / name))
    got = image_array(read_label(tmp_path / "cleaned" / name))
    assert np.array_equal(got, apply_postprocessing(raw, chosen)) and not np.array_equal(got, raw)
    record = json.loads((tmp_path / "cleaned" / "predictions.json").read_text(encoding="utf-8"))
    assert record["config"]["postprocessing"] == str((tmp_path / "cv" / "postprocessing.json").resolve())
    plain_record = json.loads((tmp_path / "plain" / "predictions.json").read_text(encoding="utf-8"))
    assert record["settings_fingerprint"] != plain_record["settings_fingerprint"]


def test_a_decision_from_another_store_is_refused_naming_the_file(msd: Path, tmp_path: Path, capsys):
    from pancreas.cli import main

    run = write_run(tmp_path / "run", store="store-1")
    path = write_postprocessing(tmp_path / "cv", decision(True, False, store="store-2"))
    out = tmp_path / "out"
    with pytest.raises(
        PredictError,
        match=rf"^{path}: was built on store fingerprint store-2 but "
        rf"{run / 'input_contract.json'} now has store-1; ",
    ):
        predict_cases(run, msd, out, PredictConfig(postprocessing=str(path)), predict_fn=speckled_model, progress=False)
    assert (
        main(["predict", "--model", str(run), "--input", str(msd), "--out", str(out), "--postprocessing", str(path)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"pancreas predict: error: {path}: was built on"), err
    assert not out.exists()


def test_a_run_without_a_store_fingerprint_cannot_be_checked_and_is_noted(tmp_path: Path, caplog):
    from prediction.runs import load_runs

    path = write_postprocessing(tmp_path, decision(True, False))
    settings = load_runs(
        write_run(tmp_path / "run", store=None), PredictConfig(postprocessing=str(path)), speckled_model
    )
    assert settings.postprocessing == decision(True, False)
    assert any("cannot check" in r.getMessage() for r in caplog.records)


def test_largest_component_and_a_decision_are_exclusive():
    with pytest.raises(ValueError, match="both clean components"):
        PredictConfig(largest_component="foreground", postprocessing="postprocessing.json")
