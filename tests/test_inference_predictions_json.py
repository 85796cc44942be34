"""``PRED_DIR/predictions.json`` (dataset.contract.predictions): the bytes of the format
before it was typed, the round trip, ownership and damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset.common.records import record_to_dict
from dataset.contract.predictions import (
    PredictionRecord,
    Predictions,
    PredictionsError,
    label_name,
    output_names,
    probabilities_name,
    read_predictions,
    seg_name,
    write_predictions,
)

CONFIG = {
    "window_zyx": [32, 64, 64],
    "overlap": 0.5,
    "batch_size": 2,
    "gaussian_sigma_scale": 0.125,
    "mirror_axes": [],
    "largest_component": "off",
    "save_probabilities": False,
    "checkpoint": "best",
}


ROI = {
    "mode": "auto",
    "margin_mm": 30.0,
    "result": "found",
    "boxes": [{"start_zyx": [1, 2, 3], "stop_zyx": [30, 60, 90]}],
    "windows": 2,
    "windows_whole": 12,
    "first_pass_windows": 4,
}


def legacy_bytes() -> bytes:
    """What predict wrote before the typed contract, built the way it built it (plus the format version and,
    since issue 18, each output's SHA-256, since issue 21, the DICOM SEG's path and SHA-256 and the model
    package read, and since issue 20 what roi: auto did and the threads its timings were measured with)."""
    manifest = {"version": 1, "cases": {}}
    manifest.update(run="/runs/r1", settings_fingerprint="s1", config=CONFIG, package=None, package_sha256=None)
    manifest["cases"]["pancreas_010"] = {
        "input": "data/imagesTs/pancreas_010.nii.gz",
        "input_fingerprint": "f10",
        "settings_fingerprint": "s1",
        "status": "done",
        "error": None,
        "output": "out/pancreas_010.nii.gz",
        "shape_zyx": [40, 96, 96],
        "output_sha256": None,
        "dicom_seg": None,
        "dicom_seg_sha256": None,
        "seconds": {
            k: round(v, 3) for k, v in {"preprocess": 0.12345, "model": 1.0, "stitch": 0.0004, "export": 2.5}.items()
        },
        "roi": ROI,
        "threads": None,
    }
    manifest["cases"]["broken"] = {
        "input": "data/imagesTs/broken.nii.gz",
        "input_fingerprint": None,
        "settings_fingerprint": "s1",
        "status": "failed",
        "error": "data/imagesTs/broken.nii.gz: cannot read",
        "output": None,
        "shape_zyx": None,
        "output_sha256": None,
        "dicom_seg": None,
        "dicom_seg_sha256": None,
        "seconds": {},
        "roi": None,
        "threads": None,
    }
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()


def typed() -> Predictions:
    record = Predictions(run="/runs/r1", settings_fingerprint="s1", config=CONFIG)
    record = record.with_case(
        "pancreas_010",
        PredictionRecord(
            "data/imagesTs/pancreas_010.nii.gz",
            "f10",
            "s1",
            "done",
            None,
            "out/pancreas_010.nii.gz",
            (40, 96, 96),
            seconds={"preprocess": 0.12345, "model": 1.0, "stitch": 0.0004, "export": 2.5},
            roi=ROI,
        ),
    )
    return record.with_case(
        "broken",
        PredictionRecord(
            "data/imagesTs/broken.nii.gz", None, "s1", "failed", "data/imagesTs/broken.nii.gz: cannot read"
        ),
    )


def test_same_bytes_as_before_and_round_trip(tmp_path: Path):
    write_predictions(tmp_path, typed())
    assert (tmp_path / "predictions.json").read_bytes() == legacy_bytes()
    back = read_predictions(tmp_path)
    assert record_to_dict(back) == record_to_dict(typed())
    assert back.cases["pancreas_010"].shape_zyx == (40, 96, 96) and back.cases["pancreas_010"].done
    write_predictions(tmp_path, back)  # read and written again: the same file
    assert (tmp_path / "predictions.json").read_bytes() == legacy_bytes()


def test_a_case_keeps_its_place_when_redone():
    record = typed().with_case("pancreas_010", PredictionRecord("x.nii.gz", "f11", "s2"))
    assert list(record.cases) == ["pancreas_010", "broken"] and record.cases["pancreas_010"].status == "pending"


def test_owns_the_files_of_listed_cases_only():
    record = typed()
    assert record.owns(label_name("broken")) and record.owns(probabilities_name("pancreas_010"))
    assert record.owns(seg_name("broken")) and not record.owns(seg_name("pancreas_011"))
    assert not record.owns("pancreas_011.nii.gz") and not record.owns("predictions.json")


@pytest.mark.parametrize(
    ("output_format", "names"),
    [("nifti", ["a.nii.gz"]), ("dicom-seg", ["a_seg.dcm"]), ("both", ["a.nii.gz", "a_seg.dcm"])],
)
def test_each_output_format_names_its_files(output_format: str, names: list[str]):
    assert output_names("a", output_format) == names


def test_no_record_is_none(tmp_path: Path):
    assert read_predictions(tmp_path) is None


def with_case(**fields) -> str:
    """A predictions.json text whose one case ``a`` has ``fields`` on top of a good record."""
    case = {"input": "a.nii.gz", "input_fingerprint": None, "settings_fingerprint": "s", "status": "done", **fields}
    return json.dumps({"version": 1, "cases": {"a": case}, "run": "r", "settings_fingerprint": "s", "config": {}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "unreadable predictions record"),
        ('{"name": "Pancreas"}', r"older pancreas-seg \(no format version; this one reads 1\)"),
        ('{"version": 2, "cases": {}}', r"newer pancreas-seg \(format version 2; this one reads 1\)"),
        ('{"version": 1, "name": "Pancreas"}', r"unknown key\(s\) name"),
        (with_case(status="weird"), "cases.a: status 'weird'"),
        (with_case(colour=1), r"cases.a: unknown key\(s\) colour"),
    ],
)
def test_damaged_record_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str):
    (tmp_path / "predictions.json").write_text(text)
    with pytest.raises(PredictionsError, match=message) as info:
        read_predictions(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "predictions.json")) and "\n" not in str(info.value)
