"""The whole journey, as `make demo` runs it: synth -> preprocess -> index -> train -> predict -> evaluate.

The demo runs as a user runs it, the installed ``pancreas`` command in a process of its own: in
the test process, after a thousand other tests, the same 48 epochs ran 6x slower in CI (81 s
against 10 s per epoch, 2026-12-03), and a fresh process is what the user has anyway.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PANCREAS = Path(sys.executable).with_name("pancreas")  # the console script beside this venv's python


def _demo(out: Path) -> str:
    done = subprocess.run(
        [str(PANCREAS), "demo", "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=1700
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    printed = _demo(out)
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
    _demo(out)
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["summary"] == report["summary"]

    # roi: auto (the demo's predictions) against the whole grid (issue 20): the same gland and tumours. Not the
    # bench's 0.995 goal: this small model's own label maps move by up to 2% of the gland when only its windows
    # move (docs/benchmarks.md, `shifted`), and a box's own windows sit elsewhere than the whole grid's. Measured
    # 2026-12-03: 011 and 012 identical, 013 pancreas 0.980 and tumour 0.952 (12 of 132 tumour voxels)
    whole = tmp_path / "whole"
    done = subprocess.run(
        [str(PANCREAS), "predict", "--model", str(out / "run"), "--input", str(out / "data" / "imagesTs"),
         "--out", str(whole), "--roi", "whole", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    import SimpleITK as sitk

    def dice(a, b):
        return 1.0 if not (a.any() or b.any()) else 2 * int((a & b).sum()) / int(a.sum() + b.sum())

    rois = json.loads((out / "predictions" / "predictions.json").read_text(encoding="utf-8"))["cases"]
    for case in sorted(report["cases"]):
        auto = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / f"{case}.nii.gz")))
        full = sitk.GetArrayFromImage(sitk.ReadImage(str(whole / f"{case}.nii.gz")))
        assert (
            rois[case]["roi"]["mode"] == "auto" and rois[case]["roi"]["windows"] <= rois[case]["roi"]["windows_whole"]
        )
        assert dice(auto > 0, full > 0) >= 0.97, case
        assert dice(auto == 2, full == 2) >= 0.9, case
