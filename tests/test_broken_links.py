"""A dangling or looping symbolic link among the inputs is a failed case that names it, never
silently skipped: in predict's table and record, and in preprocess's catalog."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import SimpleITK as sitk
from helpers import write_contract_run
from test_dicom_series import bright_is_pancreas, volume

from dataset.common.links import broken_link
from dataset.contract.catalog import read_catalog
from pancreas.cli import main
from prediction.cases import discover_inputs
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from sources.msd import load_msd_dataset
from sources.synthetic.msd import make_dataset

DANGLING = "symbolic link to /mnt/unmounted/b.nii.gz, which does not exist (a dangling link)"
LOOP = "symbolic link loop (c.nii.gz -> c.nii.gz)"


def add_broken_links(folder: Path) -> None:
    os.symlink("/mnt/unmounted/b.nii.gz", folder / "b.nii.gz")
    os.symlink("c.nii.gz", folder / "c.nii.gz")


def test_broken_link_names_dangling_and_looping_links_only(tmp_path):
    add_broken_links(tmp_path)
    (tmp_path / "real.nii.gz").write_bytes(b"x")
    os.symlink("real.nii.gz", tmp_path / "good.nii.gz")
    assert broken_link(tmp_path / "b.nii.gz") == f"{tmp_path / 'b.nii.gz'}: {DANGLING}"
    assert broken_link(tmp_path / "c.nii.gz") == f"{tmp_path / 'c.nii.gz'}: {LOOP}"
    assert broken_link(tmp_path / "good.nii.gz") is None and broken_link(tmp_path / "real.nii.gz") is None
    assert broken_link(tmp_path / "absent.nii.gz") is None  # not a link: callers say "not found"


def test_predict_reports_broken_links_as_failed_cases(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(volume(5, (0.8, 0.8, 2.5), 0), str(inputs / "a.nii.gz"))
    add_broken_links(inputs)
    assert [c.case_id for c in discover_inputs(inputs)] == ["a", "b", "c"]
    out = tmp_path / "out"
    summary = predict_cases(
        write_contract_run(tmp_path / "run"),
        inputs,
        out,
        PredictConfig(mirror_axes=()),
        predict_fn=bright_is_pancreas,
        progress=False,
    )
    assert summary.n_done == 1
    errors = {r.case_id: r.error for r in summary.failed}
    assert errors == {"b": f"{inputs / 'b.nii.gz'}: {DANGLING}", "c": f"{inputs / 'c.nii.gz'}: {LOOP}"}
    record = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["cases"]
    assert {k: v["status"] for k, v in record.items()} == {"a": "done", "b": "failed", "c": "failed"}
    assert record["c"]["error"] == errors["c"]
    table = summary.table()
    assert "1 predicted, 0 up to date, 2 failed" in table and f"    error: {errors['b']}" in table.splitlines()


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", 2, seed=3, size="small", n_test=0, progress=False)


def scanned_only(data: Path) -> None:
    """dataset.json without its lists, so preprocess scans imagesTr/labelsTr."""
    meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    del meta["training"], meta["test"]
    (data / "dataset.json").write_text(json.dumps(meta))


def test_preprocess_scan_keeps_broken_links_as_failed_cases(data, tmp_path, capsys):
    scanned_only(data)
    for folder in ("imagesTr", "labelsTr"):
        add_broken_links(data / folder)
    cases = {c.case_id: c for c in load_msd_dataset(data).cases}
    assert sorted(cases) == ["b", "c", "pancreas_001", "pancreas_002"]
    assert cases["c"].image == data / "imagesTr" / "c.nii.gz"  # kept as given: a loop cannot be resolved
    store = tmp_path / "store"
    assert main(["preprocess", "--data", str(data), "--out", str(store), "--workers", "0", "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "2 done, 0 skipped (up to date), 2 failed" in printed
    catalog = read_catalog(store)
    assert DANGLING in catalog.cases["b"].error and LOOP in catalog.cases["c"].error
    assert "\n" not in catalog.cases["c"].error
    assert any("FAILED c:" in line and LOOP in line for line in printed.splitlines())
