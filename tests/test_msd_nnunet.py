"""nnU-Net v2 raw datasets: dataset.json v2, the ``_0000`` channel suffix, one CT channel, and the
same shards, predictions and evaluation pairs as the MSD layout of the same cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import write_contract_run

from dataset.contract.store import read_shard, shard_path
from pancreas.cli import main
from prediction.cases import CaseInput, PredictError, discover_inputs
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from preprocess.config import PreprocessConfig
from preprocess.driver import run_preprocess
from sources.msd import MsdDatasetError, load_msd_dataset
from sources.nnunet import labels_by_value, split_channel, stripped_case_ids
from sources.synthetic.msd import make_dataset

V2_META = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "pancreas": 1, "tumour": 2},
    "numTraining": 2,
    "file_ending": ".nii.gz",
}


def v2_folder(root: Path, meta: dict | None = None, images_tr=("a_0000", "b_0000"), images_ts=("c_0000",)) -> Path:
    """A v2 raw dataset of stand-in files (loading reads names, not voxels)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stem in images_tr:
        (root / "imagesTr" / f"{stem}.nii.gz").write_bytes(b"x")
        (root / "labelsTr" / f"{stem.rsplit('_', 1)[0]}.nii.gz").write_bytes(b"x")
    for stem in images_ts:
        (root / "imagesTs" / f"{stem}.nii.gz").write_bytes(b"x")
    (root / "imagesTr" / "._a_0000.nii.gz").write_bytes(b"mac")
    (root / "dataset.json").write_text(json.dumps(V2_META if meta is None else meta))
    return root


# ----------------------------------------------------------------------------- reading dataset.json v2


def test_v2_cases_drop_the_channel_suffix_and_pair_with_their_labels(tmp_path: Path):
    root = v2_folder(tmp_path / "Dataset007_Pancreas")
    ds = load_msd_dataset(root)
    assert ds.layout == "nnunet" and ds.name == "Dataset007_Pancreas"
    assert ds.labels == {"0": "background", "1": "pancreas", "2": "tumour"} and ds.label_values == (0, 1, 2)
    got = [(c.case_id, c.split, c.image.name, c.label.name if c.label else None) for c in ds.cases]
    assert got == [
        ("a", "training", "a_0000.nii.gz", "a.nii.gz"),
        ("b", "training", "b_0000.nii.gz", "b.nii.gz"),
        ("c", "test", "c_0000.nii.gz", None),
    ]


def test_msd_dataset_json_is_read_as_before(tmp_path: Path):
    """An MSD file named like a channel keeps its name: the suffix is dropped only in the v2 layout."""
    root = tmp_path / "Task07"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background"}, "test": ["./imagesTr/scan_0000.nii.gz"]})
    )
    ds = load_msd_dataset(root)
    assert ds.layout == "msd" and [c.case_id for c in ds.cases] == ["scan_0000"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"channel_names": {"0": "CT", "1": "CT_arterial"}}, r"'channel_names' declares 2 channels"),
        ({"channel_names": {"0": "MRI"}}, r"'channel_names' declares channel 0 as 'MRI'.*named CT"),
        ({"channel_names": {"0": "T2"}}, r"windows CT in Hounsfield units"),
        ({"numTraining": 3}, r"'numTraining' is 3 but .*imagesTr holds 2 case\(s\)"),
        ({"file_ending": ".png"}, r"'file_ending' '\.png' is not one of"),
        ({"dataset": {"a": {"images": ["x"], "label": "y"}}}, r"'dataset' \(nnU-Net's explicit file list\)"),
        ({"labels": {"background": 0, "whole": [1, 2], "tumour": 2}}, r"names to one integer value.*'whole': \[1, 2\]"),
        (
            {"labels": {"background": 0, "tumour": 1, "pancreas": 2}},
            r"declares 'tumour' as 1; .*label 1 is the pancreas",
        ),
        ({"labels": {"background": 0, "pancreas": 1, "other": 1}}, r"gives value 1 to both 'pancreas' and 'other'"),
    ],
)
def test_bad_v2_dataset_json_is_one_line_naming_the_key(tmp_path: Path, change: dict, fragment: str):
    root = v2_folder(tmp_path / "ds", {**V2_META, **change})
    with pytest.raises(MsdDatasetError, match=fragment) as info:
        load_msd_dataset(root)
    assert "\n" not in str(info.value) and str(root / "dataset.json") in str(info.value)


def test_msd_modality_other_than_ct_is_refused_too(tmp_path: Path):
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "bg"}}))
    with pytest.raises(MsdDatasetError, match=r"'modality' declares 2 channels"):
        load_msd_dataset(tmp_path)


@pytest.mark.parametrize(
    ("images_tr", "fragment"),
    [
        (("a_0000", "a_0001", "b_0000"), r"imagesTr/a_0001\.nii\.gz: channel 0001 of case 'a'"),
        (("a_0000", "b"), r"imagesTr/b\.nii\.gz: no channel suffix"),
    ],
)
def test_second_channel_or_missing_suffix_names_the_file(tmp_path: Path, images_tr, fragment):
    root = v2_folder(tmp_path / "ds", images_tr=images_tr)
    with pytest.raises(MsdDatasetError, match=fragment):
        load_msd_dataset(root)


def test_ct_channel_name_is_case_insensitive_like_nnunet(tmp_path: Path):
    root = v2_folder(tmp_path / "ds", {**V2_META, "channel_names": {"0": "ct"}})
    assert len(load_msd_dataset(root).cases) == 3


def test_labels_beyond_two_are_declared_and_preprocess_refuses_them_as_before(tmp_path: Path):
    meta = {**V2_META, "labels": {"background": 0, "pancreas": 1, "tumour": 2, "cyst": 3}}
    root = v2_folder(tmp_path / "ds", meta)
    assert load_msd_dataset(root).label_values == (0, 1, 2, 3)
    with pytest.raises(MsdDatasetError, match=r"declares label values \[3\] that config label_values"):
        run_preprocess(root, tmp_path / "store", workers=0, progress=False)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"0": "background", "1": "pancreas", "2": "cancer"}, {"0": "background", "1": "pancreas", "2": "cancer"}),
        ({"background": 0, "pancreas": 1, "Tumor": 2}, {"0": "background", "1": "pancreas", "2": "Tumor"}),
        ({"background": 0, "organ": 1}, {"0": "background", "1": "organ"}),
    ],
)
def test_labels_by_value_from_either_layout(labels, expected):
    assert labels_by_value(labels) == expected


@pytest.mark.parametrize(
    ("stems", "expected"),
    [
        (["a_0000", "b_0000"], {"a_0000": "a", "b_0000": "b"}),
        (["pancreas_001_0000"], {"pancreas_001_0000": "pancreas_001"}),
        (["scan_0001", "scan_0002"], None),  # a user's numbering: no _0000, names as they stand
        (["a_0000", "b"], None),
        (["pancreas_001", "pancreas_002"], None),
    ],
)
def test_stripped_case_ids(stems, expected):
    assert stripped_case_ids(stems) == expected


def test_second_channel_in_a_plain_folder_is_refused():
    with pytest.raises(ValueError, match=r"^a_0001: channel 0001 of case 'a'"):
        stripped_case_ids(["a_0000", "a_0001"])
    assert split_channel("a_b_0003") == ("a_b", 3)
    assert split_channel("x_12345") is None and split_channel("x_123") is None


# ----------------------------------------------------------------------------- predict's inputs


def test_predict_inputs_of_a_v2_folder_and_of_its_image_folders(tmp_path: Path):
    root = v2_folder(tmp_path / "ds")
    assert discover_inputs(root) == [CaseInput("c", root / "imagesTs" / "c_0000.nii.gz")]
    assert [c.case_id for c in discover_inputs(root / "imagesTr")] == ["a", "b"]
    assert discover_inputs(root / "imagesTs" / "c_0000.nii.gz")[0].case_id == "c"
    (root / "imagesTs" / "c_0001.nii.gz").write_bytes(b"x")
    assert discover_inputs(root / "imagesTs" / "c_0001.nii.gz")[0].case_id == "c_0001"  # alone: a name as any
    with pytest.raises(PredictError, match=r"imagesTs: c_0001: channel 0001 of case 'c'"):
        discover_inputs(root / "imagesTs")
    with pytest.raises(MsdDatasetError, match=r"imagesTs/c_0001\.nii\.gz: channel 0001"):
        discover_inputs(root)


def test_v2_folder_without_test_images_is_a_clear_error(tmp_path: Path):
    root = v2_folder(tmp_path / "ds", images_ts=())
    with pytest.raises(PredictError, match=r"imagesTs: nnU-Net dataset has no test images"):
        discover_inputs(root)


# ----------------------------------------------------------------------------- end to end on synthetic data


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory) -> dict[str, Path]:
    """The same 3 training + 1 test synthetic cases as MSD and as nnU-Net v2 (case 3 is the thin one)."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        layout: make_dataset(root / layout, 3, seed=5, n_test=1, progress=False, layout=layout)
        for layout in ("msd", "nnunet")
    }


def test_synth_nnunet_layout_files(both_layouts):
    root = both_layouts["nnunet"]
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "pancreas": 1, "cancer": 2} and meta["numTraining"] == 3
    assert "training" not in meta and "modality" not in meta
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [
        "._pancreas_001.nii.gz",
        "pancreas_001_0000.nii.gz",
        "pancreas_002_0000.nii.gz",
        "pancreas_003_0000.nii.gz",
    ]
    assert sorted(p.name for p in (root / "labelsTs").iterdir()) == ["pancreas_004.nii.gz"]


def test_preprocess_gives_the_same_shards_from_both_layouts(both_layouts, tmp_path: Path):
    stores = {}
    for layout, data in both_layouts.items():
        stores[layout] = tmp_path / f"store_{layout}"
        summary = run_preprocess(data, stores[layout], PreprocessConfig(), workers=0, progress=False)
        assert (summary.done, summary.failed) == (4, 0), summary.failures
    cases = ["pancreas_001", "pancreas_002", "pancreas_003", "pancreas_004"]
    for case_id in cases:
        msd_image, msd_label, msd_attrs = read_shard(shard_path(stores["msd"], case_id))
        v2_image, v2_label, v2_attrs = read_shard(shard_path(stores["nnunet"], case_id))
        np.testing.assert_array_equal(v2_image, msd_image)
        assert (v2_label is None) == (msd_label is None) == (case_id == "pancreas_004")
        if msd_label is not None:
            np.testing.assert_array_equal(v2_label, msd_label)
        for key in (
            "spacing",
            "origin",
            "direction",
            "original_size",
            "original_spacing",
            "original_origin",
            "original_direction",
            "original_dtype",
            "crop_start_zyx",
            "crop_stop_zyx",
            "label_counts",
        ):
            assert (key in v2_attrs) == (key in msd_attrs), key  # label_counts: labelled cases only, in both
            if key in msd_attrs:
                np.testing.assert_array_equal(np.asarray(v2_attrs[key]), np.asarray(msd_attrs[key]), err_msg=key)
        assert v2_attrs["source_image"].endswith(f"{case_id}_0000.nii.gz")


def soft_threshold_model(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: bright voxels are 'pancreas'."""
    x = batch[..., 0]
    out = np.stack([1 - x, x, np.zeros_like(x)], axis=-1)
    return out.astype(np.float32)


def test_predictions_of_v2_images_pair_with_labelstr_in_evaluate(both_layouts, tmp_path: Path):
    root = both_layouts["nnunet"]
    run = write_contract_run(tmp_path / "run")
    config = PredictConfig(mirror_axes=())
    test_out = predict_cases(run, root, tmp_path / "test_pred", config, predict_fn=soft_threshold_model, progress=False)
    assert [r.case_id for r in test_out.results] == ["pancreas_004"] and not test_out.failed
    assert (tmp_path / "test_pred" / "pancreas_004.nii.gz").is_file()
    summary = predict_cases(
        run, root / "imagesTr", tmp_path / "pred", config, predict_fn=soft_threshold_model, progress=False
    )
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == [
        "pancreas_001.nii.gz",
        "pancreas_002.nii.gz",
        "pancreas_003.nii.gz",
    ], summary.table()
    report_path = tmp_path / "report.json"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "pred"),
                "--truth",
                str(root / "labelsTr"),
                "--out",
                str(report_path),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert sorted(report["cases"]) == ["pancreas_001", "pancreas_002", "pancreas_003"]
    assert report["missing_predictions"] == [] and report["predictions_without_truth"] == []


def test_cli_synth_layout_nnunet(tmp_path: Path, capsys):
    assert main(["synth", "--out", str(tmp_path / "ds"), "--cases", "2", "--test", "0", "--layout", "nnunet"]) == 0
    assert "pancreas_002_0000.nii.gz" in capsys.readouterr().out
    ds = load_msd_dataset(tmp_path / "ds")
    assert ds.layout == "nnunet" and [c.case_id for c in ds.cases] == ["pancreas_001", "pancreas_002"]
    # a rerun with fewer cases leaves no case of the first run behind for the folder scan to find
    assert main(["synth", "--out", str(tmp_path / "ds"), "--cases", "1", "--test", "0", "--layout", "nnunet"]) == 0
    assert [c.case_id for c in load_msd_dataset(tmp_path / "ds").cases] == ["pancreas_001"]
    assert sorted(p.name for p in (tmp_path / "ds" / "labelsTr").iterdir()) == [
        "._pancreas_001.nii.gz",
        "pancreas_001.nii.gz",
    ]
