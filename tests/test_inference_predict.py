"""Prediction with fake models: the stitching maths, the round trip to the original grid
for every orientation and dtype the generator makes, discovery, failures and resuming."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from dataset.common.configio import to_dict
from inference.config import PredictConfig
from inference.metrics import dice
from inference.predict import (
    CaseInput, PredictError, discover_inputs, keep_largest_component, predict_cases, predict_volume,
    resolve_config,
)
from inference.sliding import pad_to_window
from preprocess.config import PreprocessConfig
from preprocess.io import read_label
from preprocess.pipeline import preprocess_file
from pancreas.synthetic.msd import dataset_params, make_dataset

N_TRAIN = 4  # indices 0..3: orientations LPS, RAS, LPI, PLS; dtypes int16, scaled int16, float32, int32; #3 thin


def write_run(run_dir: Path, window=(32, 64, 64), depth=2) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    contract = {"patch_size_zyx": list(window), "val_patch_size_zyx": list(window), "n_classes": 3,
                "label_names": {"0": "background", "1": "pancreas", "2": "tumour"}, "model_depth": depth,
                "preprocess": to_dict(PreprocessConfig()), "store_fingerprint": "x", "index_fingerprint": "y"}
    (run_dir / "input_contract.json").write_text(json.dumps(contract))
    return run_dir


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("msd"), N_TRAIN, seed=0, size="small", n_test=1, progress=False)


def pointwise_model(batch: np.ndarray) -> np.ndarray:
    """A 'model' whose output at a voxel depends on that voxel only: stitching must give it back."""
    x = batch[..., 0]
    logits = np.stack([np.zeros_like(x), 4 * x, 8 * (x - 0.5)], axis=-1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("shape,window,mirror", [
    ((20, 40, 36), (8, 16, 16), ()),
    ((20, 40, 36), (8, 16, 16), (0, 1, 2)),
    ((5, 12, 40), (8, 16, 16), (2,)),       # smaller than the window along z and y: padded
])
def test_pointwise_model_is_reproduced_exactly(shape, window, mirror):
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, shape, dtype=np.uint8)
    config = PredictConfig(window_zyx=window, batch_size=3, mirror_axes=mirror)
    probs = predict_volume(levels, pointwise_model, config, progress=False)
    expected = np.moveaxis(pointwise_model((levels.astype(np.float32) / 255)[None, ..., None])[0], -1, 0)
    assert probs.shape == (3, *shape) and probs.dtype == np.float32
    assert np.allclose(probs, expected, atol=1e-5)


def test_flips_reach_the_model_and_are_undone():
    """A model that only looks at its window's first z-slice is not flip-equivariant: with
    z-mirroring half the passes see the last slice, so the average must differ."""
    levels = np.arange(16, dtype=np.uint8).repeat(64).reshape(16, 8, 8) * 10

    def first_slice_model(batch):
        first = batch[:, :1, :, :, 0]
        p = np.broadcast_to(first[..., None], (*batch.shape[:4], 1))
        return np.concatenate([p, 1 - p], axis=-1)

    plain = predict_volume(levels, first_slice_model, PredictConfig(window_zyx=(16, 8, 8)), progress=False)
    mirrored = predict_volume(levels, first_slice_model, PredictConfig(window_zyx=(16, 8, 8), mirror_axes=(0,)), progress=False)
    assert np.allclose(plain[0], 0.0)
    assert np.allclose(mirrored[0], 150 / 255 / 2, atol=1e-6)


def test_stitching_memory_stays_within_a_few_volumes():
    levels = np.zeros((48, 96, 96), np.uint8)
    config = PredictConfig(window_zyx=(16, 32, 32), batch_size=2)
    tracemalloc.start()
    predict_volume(levels, pointwise_model, config, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # (C + 1) float32 volumes = 16 bytes per voxel; allow 25 for temporaries of a few windows
    assert peak < 25 * levels.size


def test_model_with_wrong_output_shape_is_reported():
    with pytest.raises(PredictError, match="model returned shape"):
        predict_volume(np.zeros((8, 8, 8), np.uint8), lambda b: b[:, :4], PredictConfig(window_zyx=(8, 8, 8)), progress=False)


def test_resolve_config_checks_divisibility():
    contract = {"val_patch_size_zyx": [32, 64, 64], "model_depth": 2}
    assert resolve_config(PredictConfig(), contract).window_zyx == (32, 64, 64)
    with pytest.raises(PredictError, match="multiple of 4"):
        resolve_config(PredictConfig(window_zyx=(30, 64, 64)), contract)


def test_keep_largest_component_modes():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:5, 1:5, 1:5] = 1       # 64 voxels
    labels[2:4, 2:4, 5:7] = 2       # tumour touching the gland
    labels[8:10, 8:10, 8:10] = 1    # a far 8-voxel island
    fg = keep_largest_component(labels, "foreground")
    assert fg[8:, 8:, 8:].sum() == 0 and (fg == 2).sum() == 8 and (fg == 1).sum() == 64
    labels[8, 0, 0] = 2             # a lone tumour voxel
    per = keep_largest_component(labels, "per_class")
    assert per[8, 0, 0] == 0 and (per == 2).sum() == 8 and per[8:, 8:, 8:].sum() == 0
    assert keep_largest_component(labels, "off") is labels


class LabelLookup:
    """A positional fake model: the one-hot of the preprocessed truth at each window."""

    def __init__(self, label_zyx: np.ndarray, window):
        self.label, _ = pad_to_window(label_zyx, window)
        self.window = window

    def __call__(self, batch, starts):
        wz, wy, wx = self.window
        windows = np.stack([self.label[z:z + wz, y:y + wy, x:x + wx] for z, y, x in starts])
        return np.eye(3, dtype=np.float32)[windows]


@pytest.mark.parametrize("index", range(N_TRAIN))
@pytest.mark.parametrize("window", [(32, 64, 64), (128, 128, 128)])  # the second exceeds every volume
def test_round_trip_to_original_grid(msd: Path, tmp_path: Path, index: int, window):
    params = dataset_params(N_TRAIN, seed=0, n_test=1)[index]
    image_path = msd / "imagesTr" / params.filename
    truth_path = msd / "labelsTr" / params.filename
    run = write_run(tmp_path / "run", window=window)
    stored = preprocess_file(image_path, truth_path, PreprocessConfig())
    summary = predict_cases(run, [CaseInput(params.name, image_path)], tmp_path / "out", PredictConfig(),
                            predict_fn=LabelLookup(stored.label, window), positional=True, progress=False)
    assert not summary.failed, summary.table()
    written = read_label(tmp_path / "out" / f"{params.name}.nii.gz")
    truth = read_label(truth_path)
    assert written.GetPixelIDTypeAsString() == "8-bit unsigned integer"
    assert written.GetSize() == truth.GetSize()
    assert written.GetSpacing() == truth.GetSpacing()
    assert written.GetOrigin() == truth.GetOrigin()
    assert written.GetDirection() == truth.GetDirection()
    from preprocess.io import image_array

    got, want = image_array(written), image_array(truth)
    assert dice(got > 0, want > 0) >= 0.95, params.orientation
    if (want == 2).any():
        assert dice(got == 2, want == 2) >= 0.8, params.orientation
    # probabilities are optional and off by default
    assert not (tmp_path / "out" / f"{params.name}_probabilities.nii.gz").exists()


def test_discover_inputs(msd: Path, tmp_path: Path):
    test_case = dataset_params(N_TRAIN, seed=0, n_test=1)[N_TRAIN]
    assert discover_inputs(msd) == [CaseInput(test_case.name, (msd / "imagesTs" / test_case.filename).resolve())]
    found = discover_inputs(msd / "imagesTr")  # holds a ._ resource file: ignored
    assert [c.case_id for c in found] == [p.name for p in dataset_params(N_TRAIN, seed=0, n_test=1)[:N_TRAIN]]
    single = msd / "imagesTr" / found[0].path.name
    assert discover_inputs(single) == [CaseInput(found[0].case_id, single)]
    dicom = tmp_path / "series_7"
    dicom.mkdir()
    (dicom / "IM0001").write_bytes(b"not really dicom")
    assert discover_inputs(dicom) == [CaseInput("series_7", dicom)]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        discover_inputs(tmp_path / "nothing_here")
    with pytest.raises(PredictError, match="not a NIfTI"):
        discover_inputs(dicom / "IM0001")


def test_bad_case_is_reported_others_written_and_rerun_skips(msd: Path, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = dataset_params(N_TRAIN, seed=0, n_test=1)[0]
    (folder / good.filename).write_bytes((msd / "imagesTr" / good.filename).read_bytes())
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    (folder / "._broken.nii.gz").write_bytes(b"mac")
    (folder / "notes.txt").write_text("ignored")
    run = write_run(tmp_path / "run", window=(32, 64, 64))
    out = tmp_path / "out"
    summary = predict_cases(run, folder, out, PredictConfig(save_probabilities=True),
                            predict_fn=pointwise_model, progress=False)
    assert [r.case_id for r in summary.results] == ["broken", good.name]
    assert len(summary.failed) == 1 and "broken.nii.gz" in summary.failed[0].error
    assert (out / f"{good.name}.nii.gz").is_file() and not (out / "broken.nii.gz").exists()
    assert (out / f"{good.name}_probabilities.nii.gz").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert "1 failed" in summary.table()
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["cases"]["broken"]["status"] == "failed"

    again = predict_cases(run, folder, out, PredictConfig(save_probabilities=True),
                          predict_fn=pointwise_model, progress=False)
    assert again.n_skipped == 1 and len(again.failed) == 1  # the good case is up to date


def test_missing_contract_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PredictError, match="input_contract.json"):
        predict_cases(tmp_path, tmp_path, tmp_path / "out", predict_fn=pointwise_model)


def test_cli_predict_without_run_is_a_one_line_error(tmp_path: Path, capsys):
    from pancreas.cli import main

    assert main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "input_contract.json" in capsys.readouterr().err


def test_argmax_labels_matches_numpy_including_ties():
    from inference.predict import argmax_labels

    rng = np.random.default_rng(3)
    probs = rng.random((3, 37, 5, 6)).astype(np.float32)
    probs[:, :4] = 0.5                      # exact ties: the lowest class wins, as np.argmax
    probs[1, 4:8] = probs[2, 4:8] = 0.9
    labels = argmax_labels(probs)
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.argmax(probs, axis=0))


def write_dicom_series(volume, folder: Path) -> None:
    """One CT slice per file with the tags GDCM needs to sort a series."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetSize()[2]):
        slice_ = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
                "0020|000e": "1.2.826.0.1.3680043.2.1125.8", "0008|0018": f"1.2.826.0.1.3680043.2.1125.9.{k + 1}",
                "0020|0032": "\\".join(f"{v:g}" for v in position), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0013": str(k + 1), "0018|0050": f"{volume.GetSpacing()[2]:g}"}
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_is_predicted_on_its_own_grid(msd: Path, tmp_path: Path):
    import SimpleITK as sitk

    from preprocess.io import read_image

    params = dataset_params(N_TRAIN, seed=0, n_test=1)[0]  # LPS, so slices stack along +z
    image, _ = read_image(msd / "imagesTr" / params.filename)
    write_dicom_series(sitk.Cast(image, sitk.sitkInt16), tmp_path / "series_1")
    summary = predict_cases(write_run(tmp_path / "run"), tmp_path / "series_1", tmp_path / "out", PredictConfig(),
                            predict_fn=pointwise_model, progress=False)
    assert not summary.failed, summary.table()
    written = read_label(tmp_path / "out" / "series_1.nii.gz")
    series, _ = read_image(tmp_path / "series_1")
    assert written.GetSize() == series.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):  # NIfTI stores float32 headers
        assert np.allclose(getattr(written, get)(), getattr(series, get)(), atol=1e-4), get
