"""The cross-validation protocol end to end, as the README's real-data section runs it, on
tiny synthetic data: index with 2 folds, train each fold briefly, evaluate --cv, then
predict the test cases with the 2-fold ensemble and the chosen postprocessing."""

from __future__ import annotations

import csv
import json

import pytest

from pancreas.cli import main

pytestmark = pytest.mark.slow


def test_two_fold_protocol(tmp_path, capsys):
    data, store, cv, preds = tmp_path / "data", tmp_path / "store", tmp_path / "cv", tmp_path / "test_predictions"
    index_yaml, train_yaml = tmp_path / "index.yaml", tmp_path / "train.yaml"
    index_yaml.write_text("train_patch_xyz: [64, 64, 32]\nval_patch_xyz: [64, 64, 32]\n")
    train_yaml.write_text(
        "epochs: 1\nsteps_per_epoch: 4\nimage_patches: 0\nstrategy: none\n"
        "model:\n  depth: 2\n  base_filters: 4\nloss:\n  name: dice_cross_entropy\n"
    )
    assert main(["synth", "--out", str(data), "--cases", "6", "--test", "1", "--seed", "3"]) == 0
    assert main(["preprocess", "--data", str(data), "--out", str(store), "--workers", "0", "--no-progress"]) == 0
    assert (
        main(
            [
                "index",
                "--store",
                str(store),
                "--config",
                str(index_yaml),
                "--folds",
                "2",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    split = json.loads((store / "index" / "split.json").read_text(encoding="utf-8"))
    assert len(split["folds"]) == 2
    runs = [tmp_path / "runs" / f"fold_{k}" for k in range(2)]
    for k, run in enumerate(runs):
        assert (
            main(["train", "--store", str(store), "--fold", str(k), "--config", str(train_yaml), "--out", str(run)])
            == 0
        )
        assert json.loads((run / "input_contract.json").read_text(encoding="utf-8"))["fold"] == k
    capsys.readouterr()

    code = main(["evaluate", "--cv", *map(str, runs), "--store", str(store), "--out", str(cv), "--no-progress"])
    printed = capsys.readouterr().out
    assert code in (0, 1)  # 1 only if a case could not be scored; the report says which
    report = json.loads((cv / "report.json").read_text(encoding="utf-8"))
    labelled = sorted(c for fold in split["folds"] for c in fold["val"])
    assert sorted(report["cases"]) == labelled and report["checkpoint"] == "last"
    assert "postprocessing, largest component of pancreas" in printed
    with open(cv / "report.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(labelled) * 3
    decision = json.loads((cv / "postprocessing.json").read_text(encoding="utf-8"))
    assert set(decision["largest_component"]) == {"pancreas", "tumour"}

    assert (
        main(
            [
                "predict",
                "--model",
                *map(str, runs),
                "--input",
                str(data),
                "--out",
                str(preds),
                "--postprocessing",
                str(cv / "postprocessing.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    record = json.loads((preds / "predictions.json").read_text(encoding="utf-8"))
    assert [c for c, r in record["cases"].items() if r["status"] == "done"] == ["pancreas_007"]
    assert (preds / "pancreas_007.nii.gz").is_file()
