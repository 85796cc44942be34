"""`pancreas evaluate`: pairing, geometry check, report and table, and the --run path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import preprocessed_store
from lockholder import lock_held_elsewhere

from dataset.common.locks import LockedError
from dataset.common.paths import OutputInsideInputError
from dataset.contract.fingerprints import store_fingerprint
from dataset.contract.index import Fold, IndexSummary, Split, commit_index, manifest_path, write_split
from dataset.contract.manifest import index_fingerprint, write_manifest
from dataset.contract.store import StoreError
from evaluation.evaluate import (
    CasePair,
    EvaluationError,
    evaluate_dirs,
    evaluate_pair,
    evaluate_run,
    report_ok,
    report_table,
)
from pancreas.cli import main
from prediction.predict import PredictError
from sources.synthetic.msd import make_dataset

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
    labels[2 + shift_z : 6 + shift_z, 4:8, 4:8] = 1
    if tumour:
        labels[3 + shift_z : 5 + shift_z, 5:7, 5:7] = 2
    return labels


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    write_labels(truth / "a.nii.gz", gland())
    write_labels(pred / "a.nii.gz", gland())  # perfect
    write_labels(truth / "b.nii.gz", gland())
    write_labels(pred / "b.nii.gz", gland(shift_z=2))  # 2 slices (6 mm) off
    write_labels(truth / "c.nii.gz", gland(tumour=False))
    write_labels(pred / "c.nii.gz", gland(tumour=False))  # no tumour anywhere
    return pred, truth


def test_scores_hand_checked(folders):
    pred, truth = folders
    report = evaluate_dirs(pred, truth, progress=False)
    cases = report["cases"]
    assert cases["a"]["pancreas"] == {"dice": 1.0, "nsd": 1.0, "hd95_mm": 0.0, "status": "both"}
    assert cases["b"]["pancreas"]["dice"] == pytest.approx(0.5)  # half of the 4 slices overlap
    assert cases["b"]["pancreas"]["hd95_mm"] == pytest.approx(6.0)  # 2 slices of 3 mm (see test_inference_metrics)
    assert cases["c"]["tumour"] == {"dice": None, "nsd": None, "hd95_mm": None, "status": "absent"}
    assert report["nsd_tolerance_mm"] == {"pancreas": 5.0, "pancreas_label1": 5.0, "tumour": 2.0}
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
    report = json.loads(out.read_text(encoding="utf-8"))
    regions = {"pancreas", "pancreas_label1", "tumour"}
    assert set(report["cases"]["b"]) == regions | {"tumour_detection", "statistics"}
    assert set(report["summary"]["pancreas"]["hd95_mm"]) >= {"mean", "median", "n"}
    assert set(report["summary"]) == regions | {"tumour_detection"}
    beside = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("report", "pictures")))
    assert beside == ["pictures", "report.csv", "report.html", "report.json", "report_metrics.png"]
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["a.png", "b.png", "c.png"]
    write_labels(truth / "f.nii.gz", gland())
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--no-progress"]) == 1
    assert main(["evaluate", "--pred", str(pred)]) == 2  # --truth missing: one-line usage error


def everything_is_pancreas(batch):
    out = np.zeros((*batch.shape[:4], 3), np.float32)
    out[..., 1] = 1
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path, list[str]]:
    """(dataset, store, run, validation case ids): a store of 3 cases, 2 of them validation."""
    root = tmp_path_factory.mktemp("evaluate_run")
    data = make_dataset(root / "msd", 3, seed=0, n_test=0, progress=False)
    store = root / "store"
    catalog, names, preprocess = preprocessed_store(data, store, 3, seed=0)
    val = names[1:]
    write_split(store, Split(seed=0, val_fraction=0.5, max_cases=None, folds=(Fold((names[0],), tuple(val)),)))
    for split in ("train", "val"):
        write_manifest(manifest_path(store, split, 0), [])
    commit_index(
        store,
        IndexSummary(
            str(store),
            str(store / "index"),
            store_fingerprint=store_fingerprint(catalog),
            index_fingerprint=index_fingerprint(store),
        ),
    )
    run = root / "run"
    run.mkdir()
    (run / "input_contract.json").write_text(
        json.dumps(
            {
                "version": 1,
                "patch_size_zyx": [32, 64, 64],
                "val_patch_size_zyx": [32, 64, 64],
                "n_classes": 3,
                "model_depth": 2,
                "preprocess": preprocess,
            }
        )
    )
    return data, store, run, val


def test_evaluate_run_scores_only_validation_cases(trained, tmp_path: Path):
    _data, store, run, val = trained
    pred_out = tmp_path / "validation_predictions"
    report = evaluate_run(run, store, pred_dir=pred_out, predict_fn=everything_is_pancreas, progress=False)
    assert sorted(report["cases"]) == val and report_ok(report)
    assert (pred_out / f"{val[0]}.nii.gz").is_file()
    # the whole scan predicted as pancreas: Dice = 2|T| / (|scan| + |T|), small but > 0
    for case_id in val:
        assert 0 < report["cases"][case_id]["pancreas"]["dice"] < 0.5


def test_evaluate_run_refuses_a_run_of_another_store(trained, tmp_path: Path):
    """Its "validation" cases could be this store's training cases."""
    _data, store, run, _val = trained
    other = Path(shutil.copytree(run, tmp_path / "run"))
    contract = json.loads((other / "input_contract.json").read_text(encoding="utf-8"))
    (other / "input_contract.json").write_text(json.dumps({**contract, "store_fingerprint": "elsewhere"}))
    with pytest.raises(StoreError, match=rf"^{other}: was built on store fingerprint elsewhere but {store} now has"):
        evaluate_run(other, store, predict_fn=everything_is_pancreas, progress=False)


def test_evaluate_run_refuses_an_unfinished_index(trained, tmp_path: Path):
    _data, store, run, _val = trained
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    (copy / "index" / "summary.json").unlink()
    with pytest.raises(StoreError, match="incomplete index"):
        evaluate_run(run, copy, predict_fn=everything_is_pancreas, progress=False)


@pytest.mark.parametrize(
    ("where", "role"),
    [
        ("msd/labelsTr", "truth folder"),
        ("msd/imagesTr", "input folder"),
        ("msd/predictions", "dataset folder"),
        ("store/preds", "store"),
    ],
)
def test_pred_out_into_a_folder_it_reads_is_refused(trained, where: str, role: str):
    """Reproduced: `--pred-out` into the truth folder replaced the truth, and the
    predictions then scored themselves (Dice 1)."""
    data, store, run, _val = trained
    pred_out = data.parent / where
    before = {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}
    with pytest.raises(
        OutputInsideInputError, match=rf"^--pred-out {pred_out} (is|lies inside) the {role} .*--pred-out"
    ):
        evaluate_run(run, store, pred_dir=pred_out, predict_fn=everything_is_pancreas, progress=False)
    assert {p: p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()} == before
    assert not (data / "predictions").exists() and not (store / "preds").exists()


def test_pred_out_holding_a_foreign_label_map_is_refused_leaving_it_as_it_was(trained, tmp_path: Path):
    """Reproduced: evaluate --run took the folder's lock before predict refused, so the
    refusal left `.pancreas.lock` behind in a folder it never wrote."""
    _data, store, run, val = trained
    pred_out = tmp_path / "theirs"
    pred_out.mkdir()
    (pred_out / f"{val[1]}.nii.gz").write_bytes(b"somebody's label map")
    before = sorted(p.name for p in pred_out.iterdir())
    with pytest.raises(PredictError, match=rf"^{pred_out / val[1]}.nii.gz: exists and was not written .*--pred-out"):
        evaluate_run(run, store, pred_dir=pred_out, predict_fn=everything_is_pancreas, progress=False)
    assert sorted(p.name for p in pred_out.iterdir()) == before
    assert (pred_out / f"{val[1]}.nii.gz").read_bytes() == b"somebody's label map"


def test_concurrent_evaluate_run_into_the_same_folder_fails_at_once(trained, tmp_path: Path, capsys):
    _data, store, run, _val = trained
    pred_out = tmp_path / "preds"
    with lock_held_elsewhere(pred_out) as pid:
        with pytest.raises(LockedError, match=f"in use by pid {pid}"):
            evaluate_run(run, store, pred_dir=pred_out, predict_fn=everything_is_pancreas, progress=False)
        assert (
            main(["evaluate", "--run", str(run), "--store", str(store), "--pred-out", str(pred_out), "--no-progress"])
            == 2
        )
        assert f"pancreas evaluate: error: {pred_out}: in use by pid {pid}" in capsys.readouterr().err
    assert not list(pred_out.glob("*.nii.gz"))


def test_pred_equal_to_truth_is_refused(folders):
    _pred, truth = folders
    with pytest.raises(EvaluationError, match="would score themselves"):
        evaluate_dirs(truth, truth, progress=False)


def test_report_never_replaces_a_file_that_is_not_a_report(folders, tmp_path: Path):
    pred, truth = folders
    assert (
        main(
            ["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "r.json"), "--no-progress"]
        )
        == 0
    )
    assert (
        main(
            ["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "r.json"), "--no-progress"]
        )
        == 0
    )  # an earlier report: replaced
    label = truth / "a.nii.gz"
    before = label.read_bytes()
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(label), "--no-progress"]) == 2
    assert label.read_bytes() == before


def test_evaluate_reads_only_hand_over_files():
    """Evaluation goes through dataset.contract: never the index stage or training code."""
    code = (
        "import sys, evaluation.evaluate, pancreas.cli_evaluate;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'training' or m.startswith('dataset.index')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_foreign_out_file_is_refused_before_any_scoring(folders, tmp_path, monkeypatch, capsys):
    import evaluation.evaluate as evaluate_module

    pred, truth = folders
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    monkeypatch.setattr(evaluate_module, "evaluate_dirs", lambda *a, **k: pytest.fail("scored before refusing"))
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(mine), "--no-progress"]) == 2
    assert "is not a report of `pancreas evaluate`" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == '{"my": "notes"}'
