"""The whole journey, as `make demo` runs it: synth -> preprocess -> index -> train -> predict -> evaluate."""

import json

import pytest

from pancreas.cli import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pancreas Dice" in printed and str(out / "report.json") in printed

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert sorted(report["cases"]) == ["pancreas_011", "pancreas_012", "pancreas_013"]
    # an untrained network scores about 0 here; the demo's few minutes of training must learn the gland
    assert report["summary"]["pancreas"]["dice"]["mean"] > 0.4
    # ... and, with Task07-proportioned tumours, find them (0.83 measured; 0 with 8 mm tumours)
    assert report["summary"]["tumour"]["dice"]["mean"] > 0.3
    history = (out / "run" / "history.csv").read_text(encoding="utf-8").splitlines()
    assert len(history) == 1 + 48  # header + one row per epoch
    for stage_output in (
        "store/catalog.json",
        "store/index/summary.json",
        "run/checkpoints/best.keras",
        "run/input_contract.json",
        "predictions/pancreas_011.nii.gz",
        "configs/train.yaml",
        "report.html",
        "report.csv",
        "report_metrics.png",
        "run/progress.png",
        "predictions/statistics.csv",
    ):
        assert (out / stage_output).exists(), stage_output
    # what a person opens: the page the demo names, with every held-out case's picture
    assert str((out / "report.html").resolve()) in printed
    assert sorted(p.name for p in (out / "pictures").iterdir()) == [f"{c}.png" for c in sorted(report["cases"])]
    assert report["summary"]["tumour_detection"]["tumours"] >= 1

    # rerunning reuses every stage's outputs (all stages are resumable)
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["summary"] == report["summary"]
