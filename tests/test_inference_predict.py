"""Prediction with fake models: the stitching maths, the round trip to the original grid
for every orientation and dtype the generator makes, discovery, failures and resuming."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import write_contract_run, write_dicom_series
from lockholder import lock_held_elsewhere

from dataset.common.atomic import TMP_SUFFIX
from dataset.common.crashpoints import CRASH_ENV
from dataset.common.locks import LockedError
from dataset.common.paths import OutputInsideInputError
from dataset.contract.run import InputContract, RunError
from dataset.contract.store import levels_to_intensity
from evaluation.metrics import dice
from prediction.config import PredictConfig
from prediction.predict import (
    CaseInput,
    PredictError,
    discover_inputs,
    keep_largest_component,
    predict_cases,
    predict_volume,
    resolve_config,
)
from prediction.sliding import batches, extract_windows, pad_to_window, window_grid
from preprocess.config import PreprocessConfig
from preprocess.io import read_label
from preprocess.pipeline import preprocess_file
from sources.synthetic.msd import dataset_params, make_dataset

N_TRAIN = 4  # indices 0..3: orientations LPS, RAS, LPI, PLS; dtypes int16, scaled int16, float32, int32; #3 thin


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("msd"), N_TRAIN, seed=0, size="small", n_test=1, progress=False)


def pointwise_model(batch: np.ndarray) -> np.ndarray:
    """A 'model' whose output at a voxel depends on that voxel only: stitching must give it back."""
    x = batch[..., 0]
    logits = np.stack([np.zeros_like(x), 4 * x, 8 * (x - 0.5)], axis=-1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "window", "mirror"),
    [
        ((20, 40, 36), (8, 16, 16), ()),
        ((20, 40, 36), (8, 16, 16), (0, 1, 2)),
        ((5, 12, 40), (8, 16, 16), (2,)),  # smaller than the window along z and y: padded
    ],
)
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

    plain = predict_volume(
        levels, first_slice_model, PredictConfig(window_zyx=(16, 8, 8), mirror_axes=()), progress=False
    )
    mirrored = predict_volume(
        levels, first_slice_model, PredictConfig(window_zyx=(16, 8, 8), mirror_axes=(0,)), progress=False
    )
    assert np.allclose(plain[0], 0.0)
    assert np.allclose(mirrored[0], 150 / 255 / 2, atol=1e-6)


def test_stitching_memory_stays_within_a_few_volumes():
    levels = np.zeros((48, 96, 96), np.uint8)
    config = PredictConfig(window_zyx=(16, 32, 32), batch_size=2, mirror_axes=())
    tracemalloc.start()
    predict_volume(levels, pointwise_model, config, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # (C + 1) float32 volumes = 16 bytes per voxel; allow 25 for temporaries of a few windows
    assert peak < 25 * levels.size


def test_model_with_wrong_output_shape_is_reported():
    with pytest.raises(PredictError, match="model returned shape"):
        predict_volume(
            np.zeros((8, 8, 8), np.uint8),
            lambda b: b[:, :4],
            PredictConfig(window_zyx=(8, 8, 8), mirror_axes=()),
            progress=False,
        )


def test_resolve_config_checks_divisibility():
    contract = InputContract(val_patch_size_zyx=(32, 64, 64), n_classes=3, model_depth=2, preprocess={})
    assert resolve_config(PredictConfig(), contract).window_zyx == (32, 64, 64)
    with pytest.raises(PredictError, match="multiple of 4"):
        resolve_config(PredictConfig(window_zyx=(30, 64, 64)), contract)


@pytest.mark.parametrize(
    ("norm", "window", "multiple"),
    [
        ("batch", (32, 64, 64), 4),
        (None, (32, 64, 64), 4),
        ("instance", (16, 32, 32), None),
        ("group", (16, 32, 32), None),
    ],
)
def test_a_per_sample_norm_predicts_on_its_training_patch(norm, window, multiple):
    """Instance and group norm take statistics over the window: the default window is the training patch,
    and the ROI first pass does not widen it."""
    from prediction.predict import first_pass_multiple

    contract = InputContract(
        patch_size_zyx=(16, 32, 32),
        val_patch_size_zyx=(32, 64, 64),
        n_classes=3,
        model_depth=2,
        model_norm=norm,
        preprocess={},
    )
    assert contract.default_window_zyx == window
    assert resolve_config(PredictConfig(), contract).window_zyx == window
    assert resolve_config(PredictConfig(window_zyx=(8, 8, 8)), contract).window_zyx == (8, 8, 8)
    assert first_pass_multiple(contract) == multiple


def test_keep_largest_component_modes():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:5, 1:5, 1:5] = 1  # 64 voxels
    labels[2:4, 2:4, 5:7] = 2  # tumour touching the gland
    labels[8:10, 8:10, 8:10] = 1  # a far 8-voxel island
    fg = keep_largest_component(labels, "foreground")
    assert fg[8:, 8:, 8:].sum() == 0 and (fg == 2).sum() == 8 and (fg == 1).sum() == 64
    labels[8, 0, 0] = 2  # a lone tumour voxel
    per = keep_largest_component(labels, "per_class")
    assert per[8, 0, 0] == 0 and (per == 2).sum() == 8 and per[8:, 8:, 8:].sum() == 0
    assert keep_largest_component(labels, "off") is labels


class LabelLookup:
    """A fake model that answers each window with the one-hot of the preprocessed truth there.

    It knows which windows a batch holds from ``predict_volume``'s documented order (the
    windows of ``window_grid``, ``batch_size`` at a time; no mirroring here), and checks
    that the batch really is those windows of the preprocessed image.
    """

    def __init__(self, levels_zyx: np.ndarray, label_zyx: np.ndarray, window, config: PredictConfig):
        assert not config.mirror_axes, "this double answers unflipped windows only"
        self.levels, _ = pad_to_window(levels_zyx, window, 0)
        self.label, _ = pad_to_window(label_zyx, window)
        self.window = window
        self.pending = batches(window_grid(self.label.shape, window, config.overlap), config.batch_size)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        starts = next(self.pending)
        expected = levels_to_intensity(extract_windows(self.levels, starts, self.window))[..., None]
        assert np.array_equal(batch, expected), f"the model was not given the windows at {starts}"
        return np.eye(3, dtype=np.float32)[extract_windows(self.label, starts, self.window)]


@pytest.mark.parametrize("index", range(N_TRAIN))
@pytest.mark.parametrize("window", [(32, 64, 64), (128, 128, 128)])  # the second exceeds every volume
def test_round_trip_to_original_grid(msd: Path, tmp_path: Path, index: int, window):
    params = dataset_params(N_TRAIN, seed=0, n_test=1)[index]
    image_path = msd / "imagesTr" / params.filename
    truth_path = msd / "labelsTr" / params.filename
    run = write_contract_run(tmp_path / "run", window=window)
    stored = preprocess_file(image_path, truth_path, PreprocessConfig())
    config = PredictConfig(roi="whole")  # the double answers the whole grid in order (roi: tests/test_predict_roi.py)
    model = LabelLookup(stored.levels, stored.label, window, config)
    summary = predict_cases(
        run, [CaseInput(params.name, image_path)], tmp_path / "out", config, predict_fn=model, progress=False
    )
    assert not summary.failed, summary.table()
    assert next(model.pending, None) is None  # every window was asked for
    written = read_label(tmp_path / "out" / f"{params.name}.nii.gz")
    truth = read_label(truth_path)
    assert written.GetPixelIDTypeAsString() == "8-bit unsigned integer"
    assert written.GetSize() == truth.GetSize()
    assert written.GetSpacing() == truth.GetSpacing()
    assert written.GetOrigin() == truth.GetOrigin()
    assert written.GetDirection() == truth.GetDirection()
    from preprocess.output import image_array

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
    with pytest.raises(PredictError, match="no NIfTI file, dataset.json or readable DICOM series"):
        discover_inputs(dicom)  # tests/test_dicom_series.py: real series
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
    run = write_contract_run(tmp_path / "run", window=(32, 64, 64))
    out = tmp_path / "out"
    summary = predict_cases(
        run, folder, out, PredictConfig(save_probabilities=True), predict_fn=pointwise_model, progress=False
    )
    assert [r.case_id for r in summary.results] == ["broken", good.name]
    assert len(summary.failed) == 1 and "broken.nii.gz" in summary.failed[0].error
    assert (out / f"{good.name}.nii.gz").is_file() and not (out / "broken.nii.gz").exists()
    assert (out / f"{good.name}_probabilities.nii.gz").is_file()
    assert not [p for p in out.iterdir() if TMP_SUFFIX in p.name]  # no temporaries left
    assert "1 failed" in summary.table()
    manifest = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert manifest["cases"]["broken"]["status"] == "failed"
    # the file format of before the typed contract: keys and their order
    assert list(manifest) == ["version", "cases", "run", "settings_fingerprint", "config", "package", "package_sha256"]
    assert list(manifest["cases"]) == ["broken", good.name]
    assert list(manifest["cases"][good.name]) == [
        "input",
        "input_fingerprint",
        "settings_fingerprint",
        "status",
        "error",
        "output",
        "shape_zyx",
        "output_sha256",  # issue 18: an edited label map is noticed
        "dicom_seg",  # issue 21: the DICOM SEG (--format dicom-seg or both), its path and SHA-256
        "dicom_seg_sha256",
        "seconds",
        "roi",  # issue 20: what roi: auto did
        "threads",  # issue 20: TensorFlow's threads the seconds were measured with
    ]

    again = predict_cases(
        run, folder, out, PredictConfig(save_probabilities=True), predict_fn=pointwise_model, progress=False
    )
    assert again.n_skipped == 1 and len(again.failed) == 1  # the good case is up to date

    # predicted again without probabilities: the earlier ones (ours) no longer match and go
    (folder / "broken.nii.gz").unlink()
    (out / "notes_probabilities.nii.gz").write_bytes(b"a user's file of a case not in the record")
    without = predict_cases(run, folder, out, PredictConfig(), predict_fn=pointwise_model, progress=False)
    assert without.n_skipped == 0 and not without.failed
    assert not (out / f"{good.name}_probabilities.nii.gz").exists() and (out / f"{good.name}.nii.gz").is_file()
    assert (out / "notes_probabilities.nii.gz").is_file()


def test_an_evaluation_only_setting_keeps_predictions_up_to_date(msd: Path, tmp_path: Path):
    """The NSD tolerance changes the score, not the label maps: no case is predicted again."""
    folder = tmp_path / "in"
    folder.mkdir()
    case = dataset_params(N_TRAIN, seed=0, n_test=1)[0]
    (folder / case.filename).write_bytes((msd / "imagesTr" / case.filename).read_bytes())
    run, out = write_contract_run(tmp_path / "run", window=(32, 64, 64)), tmp_path / "out"
    assert predict_cases(run, folder, out, PredictConfig(), predict_fn=pointwise_model, progress=False).n_skipped == 0
    looser = PredictConfig(nsd_tolerance_mm={"pancreas": 9.0, "pancreas_label1": 9.0, "tumour": 4.0})
    assert predict_cases(run, folder, out, looser, predict_fn=pointwise_model, progress=False).n_skipped == 1
    other = PredictConfig(overlap=0.25)  # a prediction setting still predicts again
    assert predict_cases(run, folder, out, other, predict_fn=pointwise_model, progress=False).n_skipped == 0


def test_missing_contract_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RunError, match=r"input_contract.json: no input contract"):
        predict_cases(tmp_path, tmp_path, tmp_path / "out", predict_fn=pointwise_model)


def test_cli_predict_without_run_is_a_one_line_error(tmp_path: Path, capsys):
    from pancreas.cli import main

    assert main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "input_contract.json" in capsys.readouterr().err


def test_argmax_labels_matches_numpy_including_ties():
    from prediction.predict import argmax_labels

    rng = np.random.default_rng(3)
    probs = rng.random((3, 37, 5, 6)).astype(np.float32)
    probs[:, :4] = 0.5  # exact ties: the lowest class wins, as np.argmax
    probs[1, 4:8] = probs[2, 4:8] = 0.9
    labels = argmax_labels(probs)
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.argmax(probs, axis=0))


def test_dicom_series_is_predicted_on_its_own_grid(msd: Path, tmp_path: Path):
    import SimpleITK as sitk

    from preprocess.io import read_image

    params = dataset_params(N_TRAIN, seed=0, n_test=1)[0]  # LPS, so slices stack along +z
    image, _ = read_image(msd / "imagesTr" / params.filename)
    write_dicom_series(sitk.Cast(image, sitk.sitkInt16), tmp_path / "series_1", "1.2.826.0.1.3680043.2.1125.8")
    summary = predict_cases(
        write_contract_run(tmp_path / "run"),
        tmp_path / "series_1",
        tmp_path / "out",
        PredictConfig(),
        predict_fn=pointwise_model,
        progress=False,
    )
    assert not summary.failed, summary.table()
    written = read_label(tmp_path / "out" / "series_1.nii.gz")
    series, _ = read_image(tmp_path / "series_1")
    assert written.GetSize() == series.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):  # NIfTI stores float32 headers
        assert np.allclose(getattr(written, get)(), getattr(series, get)(), atol=1e-4), get


@pytest.mark.parametrize(("given", "workdir"), [(".", "series_7"), ("..", "series_7/sub")])
def test_dicom_folder_given_as_dot_is_named_by_its_own_name(tmp_path: Path, monkeypatch, given, workdir):
    import SimpleITK as sitk

    dicom = tmp_path / "series_7"
    write_dicom_series(sitk.Image([4, 3, 2], sitk.sitkInt16), dicom, "1.2.826.0.1.3680043.2.1125.8")
    (dicom / "sub").mkdir()
    monkeypatch.chdir(tmp_path / workdir)
    assert discover_inputs(given) == [CaseInput("series_7", Path(given))]


# ----------------------------------------------------------------------------- safe to point at real data


def copy_of(msd: Path, folder: Path) -> Path:
    """A private copy of the shared dataset, for tests that try to write into it."""
    return Path(shutil.copytree(msd, folder, ignore=shutil.ignore_patterns(".pancreas*")))


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_out_equal_to_the_input_folder_is_refused(msd: Path, tmp_path: Path):
    """Reproduced: `--out` equal to `--input` replaced the CTs with label maps."""
    images = copy_of(msd, tmp_path / "data") / "imagesTr"
    link = tmp_path / "link_to_images"
    link.symlink_to(images)
    before = contents(images)
    run = write_contract_run(tmp_path / "run")
    for out in (images, link):
        with pytest.raises(
            OutputInsideInputError, match=rf"^--out {out} is the input folder {images}: .*choose a --out"
        ):
            predict_cases(run, images, out, predict_fn=pointwise_model, progress=False)
    assert contents(images) == before


def test_out_inside_the_dataset_is_refused(msd: Path, tmp_path: Path):
    """Reproduced: `--out labelsTs` next to the MSD input's imagesTs replaced the ground truth."""
    data = copy_of(msd, tmp_path / "data")
    before = contents(data)
    run = write_contract_run(tmp_path / "run")
    with pytest.raises(
        OutputInsideInputError, match=rf"^--out {data / 'labelsTs'} lies inside the input folder {data}:"
    ):
        predict_cases(run, data, data / "labelsTs", predict_fn=pointwise_model, progress=False)
    assert contents(data) == before


def test_cli_refusal_is_one_line_naming_folder_and_flag(msd: Path, tmp_path: Path, capsys):
    from pancreas.cli import main

    data = copy_of(msd, tmp_path / "data")
    run = write_contract_run(tmp_path / "run")
    assert (
        main(
            [
                "predict",
                "--model",
                str(run),
                "--input",
                str(data / "imagesTs"),
                "--out",
                str(data / "imagesTs"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {data / 'imagesTs'} is the input folder" in err, err


def test_a_file_predict_did_not_write_is_never_replaced(msd: Path, tmp_path: Path):
    case = dataset_params(N_TRAIN, seed=0, n_test=1)[N_TRAIN]  # the test case of the MSD folder
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / f"{case.name}.nii.gz"
    foreign.write_bytes(b"somebody's label map")
    run = write_contract_run(tmp_path / "run")
    with pytest.raises(
        PredictError,
        match=rf"^{foreign}: exists and was not written by `pancreas predict` "
        rf"\(not listed in {out / 'predictions.json'}\); .* another --out",
    ):
        predict_cases(run, msd, out, predict_fn=pointwise_model, progress=False)
    assert foreign.read_bytes() == b"somebody's label map"
    foreign.unlink()
    predict_cases(run, msd, out, predict_fn=pointwise_model, progress=False)  # now the file is predict's own
    again = predict_cases(run, msd, out, predict_fn=pointwise_model, overwrite=True, progress=False)
    assert again.n_done == 1 and not again.failed


def listing(folder: Path) -> list[str]:
    """Every name under ``folder``, hidden ones (the lock file) included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("probabilities", [False, True])
def test_a_refusal_for_a_foreign_file_leaves_the_folder_untouched(msd: Path, tmp_path: Path, probabilities: bool):
    """Reproduced: the refusal came after the lock was taken, leaving `.pancreas.lock` (and,
    without a record, nothing else) in somebody else's folder."""
    case = dataset_params(N_TRAIN, seed=0, n_test=1)[N_TRAIN]
    out = tmp_path / "theirs"
    out.mkdir()
    name = f"{case.name}_probabilities.nii.gz" if probabilities else f"{case.name}.nii.gz"
    (out / name).write_bytes(b"somebody's file")
    (out / "notes.txt").write_text("theirs")
    before = listing(out)
    run = write_contract_run(tmp_path / "run")
    config = PredictConfig(save_probabilities=probabilities)
    with pytest.raises(PredictError, match=rf"^{out / name}: exists and was not written by `pancreas predict`"):
        predict_cases(run, msd, out, config, predict_fn=pointwise_model, progress=False)
    assert listing(out) == before
    assert (out / name).read_bytes() == b"somebody's file"


def test_a_damaged_record_is_refused_before_the_lock(msd: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text("{not json")
    before = listing(out)
    with pytest.raises(ValueError, match="predictions.json"):
        predict_cases(write_contract_run(tmp_path / "run"), msd, out, predict_fn=pointwise_model, progress=False)
    assert listing(out) == before


def test_a_killed_run_resumes_over_its_own_files(msd: Path, tmp_path: Path):
    """Killed after the label map is in place but before the record says done: the record
    listed the case (pending) first, so the rerun may replace the file."""
    case = dataset_params(N_TRAIN, seed=0, n_test=1)[N_TRAIN]
    run, out = write_contract_run(tmp_path / "run"), tmp_path / "out"
    script = (
        "import sys\nfrom prediction.predict import predict_cases\n"
        "from tests_model import pointwise_model\n"
        "predict_cases(sys.argv[1], sys.argv[2], sys.argv[3], predict_fn=pointwise_model, progress=False)\n"
    )
    (tmp_path / "tests_model.py").write_text("import numpy as np\n\n" + _source_of(pointwise_model))
    env = {
        **os.environ,
        CRASH_ENV: f"{case.name}.nii.gz:renamed#1",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
    }
    killed = subprocess.run(
        [sys.executable, "-c", script, str(run), str(msd), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    record = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert record["cases"][case.name]["status"] == "pending" and (out / f"{case.name}.nii.gz").is_file()
    summary = predict_cases(run, msd, out, predict_fn=pointwise_model, progress=False)
    assert summary.n_done == 1 and not summary.failed, summary.table()
    assert json.loads((out / "predictions.json").read_text(encoding="utf-8"))["cases"][case.name]["status"] == "done"


def _source_of(function) -> str:
    import inspect

    return inspect.getsource(function)


def test_concurrent_predict_into_the_same_folder_fails_at_once(msd: Path, tmp_path: Path, capsys):
    from pancreas.cli import main

    run, out = write_contract_run(tmp_path / "run"), tmp_path / "out"
    (run / "checkpoints").mkdir()
    with zipfile.ZipFile(run / "checkpoints" / "best.keras", "w") as z:  # checked before the lock, never loaded
        z.writestr("config.json", "{}")
    with lock_held_elsewhere(out) as pid:
        with pytest.raises(LockedError, match=f"in use by pid {pid}"):
            predict_cases(run, msd, out, predict_fn=pointwise_model, progress=False)
        assert main(["predict", "--model", str(run), "--input", str(msd), "--out", str(out), "--no-progress"]) == 2
        assert f"pancreas predict: error: {out}: in use by pid {pid}" in capsys.readouterr().err
    assert not (out / "predictions.json").exists()
