"""What `pancreas evaluate` writes beside its report: detection, statistics, CSV, page, pictures.

The answers are known by construction: a truth with three tumours of which the prediction
finds two and adds one of its own; volumes of boxes of known size on an anisotropic grid.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from test_evaluate import SPACING_XYZ, write_labels
from test_report_html import Page

from evaluation.evaluate import evaluate_dirs
from evaluation.report_files import CSV_COLUMNS, ReportFileError, ReportFiles, check_report_files
from pancreas.cli import main

VOXEL_ML = float(np.prod(SPACING_XYZ)) / 1000.0


def _three_tumours() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((20, 40, 40), np.uint8)
    truth[2:18, 4:36, 4:36] = 1
    truth[3:6, 6:10, 6:10] = 2  # found
    truth[8:11, 20:26, 20:26] = 2  # found
    truth[14:16, 30:33, 6:9] = 2  # missed
    pred = truth.copy()
    pred[14:16, 30:33, 6:9] = 1  # the third tumour called gland
    pred[14:17, 8:12, 28:32] = 2  # a tumour that is not there
    return truth, pred


@pytest.fixture
def case_folders(tmp_path):
    truth, pred = _three_tumours()
    ct = np.where(truth > 0, 100.0, -50.0).astype(np.float32)
    ct[truth == 2] = 30.0
    write_labels(tmp_path / "truth" / "p1.nii.gz", truth)
    write_labels(tmp_path / "pred" / "p1.nii.gz", pred)
    write_labels(tmp_path / "images" / "p1_0000.nii.gz", ct.astype(np.int16))  # nnU-Net's channel suffix
    empty = np.zeros_like(truth)
    write_labels(tmp_path / "truth" / "p2.nii.gz", truth)
    write_labels(tmp_path / "pred" / "p2.nii.gz", empty)  # nothing predicted
    return tmp_path


def test_detection_statistics_and_hu_by_construction(case_folders):
    d = case_folders
    report = evaluate_dirs(d / "pred", d / "truth", progress=False, images_dir=d / "images")
    found = report["cases"]["p1"]["tumour_detection"]
    assert (found["truth"], found["detected"], found["missed"], found["false"]) == (3, 2, 1, 1)
    stats = report["cases"]["p1"]["statistics"]
    assert stats["truth"]["pancreas_ml"] == pytest.approx(16 * 32 * 32 * VOXEL_ML)
    assert stats["truth"]["tumour_ml"] == pytest.approx((3 * 4 * 4 + 3 * 6 * 6 + 2 * 3 * 3) * VOXEL_ML)
    assert stats["truth"]["tumour_mean_hu"] == pytest.approx(30.0)
    assert stats["prediction"]["tumours"] == 3
    nothing = report["cases"]["p2"]["tumour_detection"]
    assert (nothing["detected"], nothing["missed"], nothing["false"]) == (0, 3, 0)
    summary = report["summary"]["tumour_detection"]
    assert summary["sensitivity"] == pytest.approx(2 / 6) and summary["false_per_case"] == pytest.approx(0.5)
    assert report["detection"] == {"min_iou": 0.1, "min_tumour_voxels": 1}


def test_cli_writes_csv_page_plot_and_pictures_that_resolve(case_folders):
    d = case_folders
    out = d / "eval" / "report.json"
    argv = ["evaluate", "--pred", str(d / "pred"), "--truth", str(d / "truth"), "--images", str(d / "images")]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    with open(d / "eval" / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 2 * 3
    p1 = next(r for r in rows if r["case_id"] == "p1")
    assert (p1["truth_tumours"], p1["detected_tumours"], p1["missed_tumours"], p1["false_tumours"]) == (
        "3",
        "2",
        "1",
        "1",
    )
    page = (d / "eval" / "report.html").read_text(encoding="utf-8")
    links = Page(page).links()
    assert "pictures/p1.png" in links and "pictures/p2.png" in links
    for link in links:
        if not link.startswith("#"):
            assert (d / "eval" / link).is_file(), link
    for name in ("p1", "p2"):
        picture = imread(d / "eval" / "pictures" / f"{name}.png")
        assert picture[..., :3].std() > 0.05
    # a rerun replaces its own files
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0


def test_no_pictures_and_a_foreign_file_beside_the_report(case_folders):
    d = case_folders
    out = d / "eval" / "report.json"
    base = ["evaluate", "--pred", str(d / "pred"), "--truth", str(d / "truth"), "--out", str(out), "--no-progress"]
    assert main([*base, "--no-pictures"]) == 0
    assert not (d / "eval" / "pictures").exists() and (d / "eval" / "report.html").is_file()
    (d / "eval" / "report.html").write_text("<p>my notes</p>")
    assert main(base) == 2  # refused before any work
    assert (d / "eval" / "report.html").read_text(encoding="utf-8") == "<p>my notes</p>"
    (d / "eval" / "report.html").unlink()
    (d / "eval" / "pictures").mkdir()
    (d / "eval" / "pictures" / "p1.png").write_bytes(b"someone's picture")
    with pytest.raises(ReportFileError, match=r"pictures/p1.png exists and was not written by `pancreas evaluate`"):
        check_report_files(ReportFiles.beside(out))
    assert main(base) == 2 and (d / "eval" / "pictures" / "p1.png").read_bytes() == b"someone's picture"


def test_a_case_id_with_html_is_text_and_gets_no_picture_path(tmp_path):
    evil = "<img src=x onerror=alert(1)>"
    truth, pred = _three_tumours()
    write_labels(tmp_path / "truth" / f"{evil}.nii.gz", truth)
    write_labels(tmp_path / "pred" / f"{evil}.nii.gz", pred)
    out = tmp_path / "eval" / "report.json"
    assert (
        main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"), "--out", str(out)]) == 0
    )
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert evil not in page and html.escape(evil) in page
    assert not (tmp_path / "eval" / "pictures").exists() or not list((tmp_path / "eval" / "pictures").iterdir())
    assert json.loads(out.read_text(encoding="utf-8"))["cases"][evil]["tumour_detection"]["detected"] == 2


def test_report_files_beside_any_name(tmp_path):
    files = ReportFiles.beside(tmp_path / "cv" / "fold0.json")
    assert (files.csv.name, files.html.name, files.plot.name) == ("fold0.csv", "fold0.html", "fold0_metrics.png")
    assert files.pictures == tmp_path / "cv" / "pictures"
    assert files.picture("../x") is None and files.picture(".hidden") is None
    assert files.picture("pancreas_001") == Path(tmp_path / "cv" / "pictures" / "pancreas_001.png")


def test_empty_truth_one_slice_scan_and_another_grid_each_get_a_sheet_or_one_error(tmp_path):
    truth, pred = _three_tumours()
    write_labels(tmp_path / "truth" / "empty_truth.nii.gz", np.zeros_like(truth))
    write_labels(tmp_path / "pred" / "empty_truth.nii.gz", pred)  # every predicted tumour is false
    write_labels(tmp_path / "truth" / "one_slice.nii.gz", truth[10:11])
    write_labels(tmp_path / "pred" / "one_slice.nii.gz", pred[10:11])
    write_labels(tmp_path / "truth" / "other_grid.nii.gz", truth)
    write_labels(tmp_path / "pred" / "other_grid.nii.gz", pred[:, :30])
    files = ReportFiles.beside(tmp_path / "eval" / "report.json")
    report = evaluate_dirs(tmp_path / "pred", tmp_path / "truth", progress=False, files=files)
    assert report["cases"]["empty_truth"]["tumour_detection"]["false"] == 3
    assert report["cases"]["one_slice"]["statistics"]["truth"]["pancreas_ml"] > 0
    assert list(report["errors"]) == ["other_grid"] and "grid" in report["errors"]["other_grid"]
    assert sorted(p.name for p in files.pictures.iterdir()) == ["empty_truth.png", "one_slice.png"]
    assert report["summary"]["tumour_detection"]["case_specificity"] == 0.0  # the tumour-free case got tumours
