"""`pancreas evaluate --cv`: run checks, pooled out-of-fold report, CSV, postprocessing chosen on data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import preprocessed_store

from dataset.contract.fingerprints import store_fingerprint
from dataset.contract.index import Fold, IndexSummary, Split, commit_index, manifest_path, write_split
from dataset.contract.manifest import index_fingerprint, write_manifest
from dataset.contract.postprocessing import read_postprocessing
from dataset.contract.store import StoreError
from evaluation.crossval import CrossValidationError, choose_postprocessing, evaluate_cv, variant_dice
from pancreas.cli import main
from sources.synthetic.msd import make_dataset


# ----------------------------------------------------------------------------- the decision, pure
def gland_with(stray_pancreas: bool = False, stray_tumour: bool = False) -> np.ndarray:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[4:10, 4:10, 4:10] = 1
    labels[5:8, 5:8, 5:8] = 2
    if stray_pancreas:
        labels[15:18, 15:18, 15:18] = 1  # far from the gland
    if stray_tumour:
        labels[9, 9, 9] = 2  # inside the gland, apart from the tumour
    return labels


def test_a_stray_blob_is_removed_because_it_lowers_dice():
    truth = gland_with()
    per_case = [variant_dice(gland_with(stray_pancreas=True, stray_tumour=True), truth)]
    choice, scores = choose_postprocessing(per_case)
    assert choice == {"pancreas": True, "tumour": True}
    assert scores["pancreas"]["mean_dice_with"] == pytest.approx(1.0)
    assert scores["pancreas"]["mean_dice_without"] == pytest.approx(2 * 216 / (216 + 216 + 27))
    assert scores["tumour"]["mean_dice_with"] == pytest.approx(1.0)
    assert scores["tumour"]["mean_dice_without"] == pytest.approx(2 * 27 / (27 + 28))


def test_the_gland_step_is_not_kept_when_it_costs_tumour_dice():
    """A true tumour in a second gland island: keeping the largest gland component raises
    the gland's Dice (a stray blob goes) but deletes that tumour."""
    truth = gland_with()
    truth[14:18, 14:18, 14:18] = 2  # a separate tumour island
    pred = truth.copy()
    pred[0:5, 14:19, 0:5] = 1  # a stray pancreas blob (125 voxels), apart from both
    choice, scores = choose_postprocessing([variant_dice(pred, truth)])
    assert scores["pancreas"]["mean_dice_with"] > scores["pancreas"]["mean_dice_without"]  # the gland alone would gain
    gland = scores["pancreas"]["other_regions"]["tumour"]
    assert gland["mean_dice_with"] < gland["mean_dice_without"]
    assert choice["pancreas"] is False


def test_clean_up_is_not_kept_when_it_removes_true_structure():
    truth = gland_with(stray_pancreas=True)  # the truth itself has two gland components
    choice, scores = choose_postprocessing([variant_dice(truth.copy(), truth)])
    assert choice == {"pancreas": False, "tumour": False}
    assert scores["pancreas"]["mean_dice_with"] < scores["pancreas"]["mean_dice_without"] == 1.0
    # a tie (nothing to remove) keeps it off too
    assert choose_postprocessing([variant_dice(gland_with(), gland_with())])[0] == {"pancreas": False, "tumour": False}


# ----------------------------------------------------------------------------- the protocol, with test doubles
def everything_is_pancreas(batch):
    out = np.zeros((*batch.shape[:4], 3), np.float32)
    out[..., 1] = 1
    return out


def nothing(batch):
    out = np.zeros((*batch.shape[:4], 3), np.float32)
    out[..., 0] = 1
    return out


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory):
    """(dataset, store, [run_0, run_1], folds): 4 preprocessed cases, a committed 2-fold index."""
    root = tmp_path_factory.mktemp("cv")
    data = make_dataset(root / "msd", 4, seed=2, n_test=0, progress=False)
    store = root / "store"
    catalog, names, preprocess = preprocessed_store(data, store, 4, seed=2)
    folds = (Fold(tuple(names[2:]), tuple(names[:2])), Fold(tuple(names[:2]), tuple(names[2:])))
    write_split(store, Split(seed=0, val_fraction=0.2, max_cases=None, folds=folds))
    for k in range(2):
        for split in ("train", "val"):
            write_manifest(manifest_path(store, split, k), [])
    commit_index(
        store,
        IndexSummary(
            str(store),
            str(store / "index"),
            store_fingerprint=store_fingerprint(catalog),
            index_fingerprint=index_fingerprint(store),
            folds=2,
        ),
    )
    runs = []
    for k in range(2):
        run = root / f"fold_{k}"
        run.mkdir()
        (run / "input_contract.json").write_text(
            json.dumps(
                {
                    "version": 1,
                    "val_patch_size_zyx": [32, 64, 64],
                    "n_classes": 3,
                    "model_depth": 2,
                    "preprocess": preprocess,
                    "store_fingerprint": store_fingerprint(catalog),
                    "flip_augment": {"flip_axes": [], "flip_probability": 0.0},
                    "fold": k,
                    "n_folds": 2,
                }
            )
        )
        runs.append(run)
    return data, store, runs, folds


def test_pooled_out_of_fold_report_csv_and_decision(two_folds, tmp_path):
    _data, store, runs, folds = two_folds
    cv = tmp_path / "cv"
    report = evaluate_cv(runs, store, cv, predict_fns=[everything_is_pancreas, nothing], progress=False)
    fold0_val, fold1_val = folds[0].val, folds[1].val
    assert sorted(report["cases"]) == sorted(fold0_val + fold1_val)  # every case once, by the model that never saw it
    assert report["case_folds"] == {**dict.fromkeys(fold0_val, 0), **dict.fromkeys(fold1_val, 1)}
    assert report["checkpoint"] == "last" and [f["fold"] for f in report["folds"]] == [0, 1]
    for c in fold0_val:
        assert 0 < report["cases"][c]["pancreas"]["dice"] < 0.5  # the whole scan called pancreas
        assert (cv / "predictions" / "fold_0" / f"{c}.nii.gz").is_file()
    for c in fold1_val:
        assert report["cases"][c]["pancreas"] == {"dice": 0.0, "nsd": 0.0, "hd95_mm": None, "status": "missed"}
    assert report["summary"]["pancreas"]["dice"]["n"] == 4
    on_disk = json.loads((cv / "report.json").read_text(encoding="utf-8"))
    assert on_disk["summary"] == report["summary"] and on_disk["nsd_tolerance_mm"] == report["nsd_tolerance_mm"]
    with open(cv / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 3 and {r["region"] for r in rows} == {"pancreas", "pancreas_label1", "tumour"}
    first = next(r for r in rows if r["case_id"] == fold0_val[0] and r["region"] == "pancreas")
    assert float(first["dice"]) == pytest.approx(report["cases"][fold0_val[0]]["pancreas"]["dice"], rel=1e-5)
    assert first["fold"] == "0"
    # the page, its plot and one truth-against-prediction picture per pooled case
    assert (
        'content="pancreas-seg"' in (cv / "report.html").read_text(encoding="utf-8")
        and (cv / "report_metrics.png").is_file()
    )
    assert sorted(p.stem for p in (cv / "pictures").iterdir()) == sorted(report["cases"])
    assert report["summary"]["tumour_detection"]["cases"] == 4
    decision = read_postprocessing(cv / "postprocessing.json")
    assert decision.store_fingerprint == store_fingerprint_of(store)
    assert set(decision.largest_component) == {"pancreas", "tumour"}
    # resumable: a second run predicts nothing again
    before = {p: p.stat().st_mtime_ns for p in (cv / "predictions").rglob("*.nii.gz")}
    evaluate_cv(runs, store, cv, predict_fns=[everything_is_pancreas, nothing], progress=False)
    assert {p: p.stat().st_mtime_ns for p in (cv / "predictions").rglob("*.nii.gz")} == before


def store_fingerprint_of(store: Path) -> str:
    from dataset.contract.catalog import read_catalog

    return store_fingerprint(read_catalog(store))


def test_runs_out_of_order_the_wrong_count_or_another_store_are_refused(two_folds, tmp_path):
    data, store, runs, _folds = two_folds
    fns = [nothing, nothing]
    with pytest.raises(CrossValidationError, match=r"fold_1: trained on fold 1, but --cv position 0 needs fold 0"):
        evaluate_cv(runs[::-1], store, tmp_path / "a", predict_fns=fns, progress=False)
    with pytest.raises(CrossValidationError, match=r"got 1 run\(s\) but .* has 2 fold\(s\)"):
        evaluate_cv(runs[:1], store, tmp_path / "b", predict_fns=fns, progress=False)
    other = Path(shutil.copytree(runs[1], tmp_path / "other"))
    contract = json.loads((other / "input_contract.json").read_text(encoding="utf-8"))
    (other / "input_contract.json").write_text(json.dumps({**contract, "store_fingerprint": "elsewhere"}))
    with pytest.raises(StoreError, match="was built on store fingerprint elsewhere"):
        evaluate_cv([runs[0], other], store, tmp_path / "c", predict_fns=fns, progress=False)
    with pytest.raises(ValueError, match="lies inside the"):
        evaluate_cv(runs, store, data / "cv", predict_fns=fns, progress=False)
    for name in ("a", "b", "c"):
        assert not (tmp_path / name).exists()  # nothing written
    assert not (data / "cv").exists()


def test_cli_needs_store_and_out(two_folds, capsys):
    _data, store, runs, _folds = two_folds
    assert main(["evaluate", "--cv", str(runs[0]), str(runs[1]), "--store", str(store)]) == 2
    assert "--cv takes --store STORE and --out CV_DIR" in capsys.readouterr().err


def test_a_postprocessing_in_the_config_does_not_touch_the_out_of_fold_maps(two_folds, tmp_path):
    from prediction.config import PredictConfig

    _data, store, runs, _folds = two_folds
    fns = [everything_is_pancreas, nothing]
    raw = evaluate_cv(runs, store, tmp_path / "raw", predict_fns=fns, progress=False)
    cleaned = evaluate_cv(
        runs, store, tmp_path / "cfg", PredictConfig(largest_component="foreground"), predict_fns=fns, progress=False
    )
    assert cleaned["cases"] == raw["cases"]


def test_a_report_the_cv_did_not_write_is_never_replaced(two_folds, tmp_path):
    _data, store, runs, _folds = two_folds
    cv = tmp_path / "mine"
    cv.mkdir()
    (cv / "report.csv").write_text("my own table\n")
    with pytest.raises(CrossValidationError, match=r"holds report.csv not written by `pancreas evaluate --cv`"):
        evaluate_cv(runs, store, cv, predict_fns=[nothing, nothing], progress=False)
    assert sorted(p.name for p in cv.iterdir()) == ["report.csv"]
    assert (cv / "report.csv").read_text(encoding="utf-8") == "my own table\n"
