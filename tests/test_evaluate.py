"""`pancreas evaluate`: pairing, geometry check, report and table, and the --run path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dataset.contract.store import StoreError, write_catalog
from inference.evaluate import (
    CasePair, EvaluationError, evaluate_dirs, evaluate_pair, evaluate_run, report_ok, report_table,
)
from pancreas.cli import main
from preprocess.config import PreprocessConfig
from preprocess.pipeline import preprocess_file, write_case
from pancreas.synthetic.msd import dataset_params, make_dataset

SPACING_XYZ = (0.8, 0.8, 3.0)
DIRECTION_RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def write_labels(path: Path, labels_zyx: np.ndarray, origin=(10.0, -5.0, 100.0), spacing=SPACING_XYZ) -> Path:
    image = sitk.GetImageFromArray(labels_zyx.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION_RAS)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def gland(shift_z: int = 0, tumour: bool = True) -> np.ndarray:
    labels = np.zeros((12, 16, 16), np.uint8)
    labels[2 + shift_z:6 + shift_z, 4:8, 4:8] = 1
    if tumour:
        labels[3 + shift_z:5 + shift_z, 5:7, 5:7] = 2
    return labels


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    write_labels(truth / "a.nii.gz", gland())
    write_labels(pred / "a.nii.gz", gland())                       # perfect
    write_labels(truth / "b.nii.gz", gland())
    write_labels(pred / "b.nii.gz", gland(shift_z=2))              # 2 slices (6 mm) off
    write_labels(truth / "c.nii.gz", gland(tumour=False))
    write_labels(pred / "c.nii.gz", gland(tumour=False))           # no tumour anywhere
    return pred, truth


def test_scores_hand_checked(folders):
    pred, truth = folders
    report = evaluate_dirs(pred, truth, progress=False)
    cases = report["cases"]
    assert cases["a"]["pancreas"] == {"dice": 1.0, "hd95_mm": 0.0, "status": "both"}
    assert cases["b"]["pancreas"]["dice"] == pytest.approx(0.5)   # half of the 4 slices overlap
    assert cases["b"]["pancreas"]["hd95_mm"] == pytest.approx(6.0)  # 2 slices of 3 mm (see test_inference_metrics)
    assert cases["c"]["tumour"] == {"dice": None, "hd95_mm": None, "status": "absent"}
    tumour = report["summary"]["tumour"]["dice"]
    assert tumour["n"] == 2 and tumour["n_absent"] == 1
    assert report["summary"]["pancreas"]["dice"]["mean"] == pytest.approx(2.5 / 3)
    assert report_ok(report)
    table = report_table(report)
    assert "absent" in table and "median" in table


def test_geometry_mismatch_is_an_error_naming_the_case(folders):
    pred, truth = folders
    write_labels(truth / "d.nii.gz", gland())
    write_labels(pred / "d.nii.gz", gland(), origin=(10.0, -5.0, 103.0))
    write_labels(truth / "e.nii.gz", gland(), spacing=(0.8, 0.8, 3.0))
    write_labels(pred / "e.nii.gz", gland(), spacing=(0.8, 0.8, 2.5))
    with pytest.raises(EvaluationError, match=r"^d: .*origin"):
        evaluate_pair(CasePair("d", pred / "d.nii.gz", truth / "d.nii.gz"))
    report = evaluate_dirs(pred, truth, progress=False)
    assert set(report["errors"]) == {"d", "e"} and "spacing" in report["errors"]["e"]
    assert set(report["cases"]) == {"a", "b", "c"}
    assert not report_ok(report)


def test_cli_writes_report_and_fails_on_missing_prediction(folders, tmp_path: Path):
    pred, truth = folders
    out = tmp_path / "report.json"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert set(report["cases"]["b"]) == {"pancreas", "tumour"}
    assert set(report["summary"]["pancreas"]["hd95_mm"]) >= {"mean", "median", "n"}
    write_labels(truth / "f.nii.gz", gland())
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--no-progress"]) == 1
    assert main(["evaluate", "--pred", str(pred)]) == 2  # --truth missing: one-line usage error


def test_evaluate_run_scores_only_validation_cases(tmp_path: Path):
    data = make_dataset(tmp_path / "msd", 3, seed=0, n_test=0, progress=False)
    store = tmp_path / "store"
    params = dataset_params(3, seed=0, n_test=0)
    catalog = {"schema_version": 1, "cases": {}}
    for p in params:
        case = preprocess_file(data / "imagesTr" / p.filename, data / "labelsTr" / p.filename, PreprocessConfig())
        write_case(store / "cases" / f"{p.name}.h5", p.name, case)
        catalog["cases"][p.name] = {"split": "training", "shard": f"cases/{p.name}.h5", "status": "done",
                                    "has_label": True}
    write_catalog(store, catalog)
    (store / "index").mkdir()
    val = [params[1].name, params[2].name]
    (store / "index" / "split.json").write_text(json.dumps({"seed": 0, "train": [params[0].name], "val": val}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "input_contract.json").write_text(json.dumps({
        "val_patch_size_zyx": [32, 64, 64], "patch_size_zyx": [32, 64, 64], "n_classes": 3, "model_depth": 2,
        "preprocess": json.loads(case.attrs["config"])}))

    def everything_is_pancreas(batch):
        out = np.zeros((*batch.shape[:4], 3), np.float32)
        out[..., 1] = 1
        return out

    report = evaluate_run(run, store, predict_fn=everything_is_pancreas, progress=False)
    assert sorted(report["cases"]) == val and report_ok(report)
    assert (run / "validation_predictions" / f"{val[0]}.nii.gz").is_file()
    # the whole scan predicted as pancreas: Dice = 2|T| / (|scan| + |T|), small but > 0
    for case_id in val:
        assert 0 < report["cases"][case_id]["pancreas"]["dice"] < 0.5

    # a run trained on another store (or index) is refused: its "validation" cases could be
    # this store's training cases
    contract = json.loads((run / "input_contract.json").read_text())
    (run / "input_contract.json").write_text(json.dumps({**contract, "store_fingerprint": "elsewhere"}))
    with pytest.raises(StoreError, match="was trained on store_fingerprint elsewhere"):
        evaluate_run(run, store, predict_fn=everything_is_pancreas, progress=False)
