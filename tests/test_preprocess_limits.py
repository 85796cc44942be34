"""Absurd geometry and cases too big for the worker are refused before memory is spent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import preprocess.pipeline as pipeline
from dataset.contract.catalog import read_catalog
from dataset.contract.store import shard_path
from preprocess.config import GeometryLimits, PreprocessConfig, config_fingerprint
from preprocess.driver import run_preprocess
from preprocess.geometry import edge_aligned_grid
from preprocess.io import InputError
from preprocess.limits import STREAM_SLAB_VOXELS, case_bytes, geometry_problem, resampled_size
from preprocess.pipeline import preprocess_file, preprocess_image

NIFTI_UNITS = {"metres": 1, "millimetres": 2, "micrometres": 3}  # xyzt_units codes, header byte 123


def body(shape_zyx=(6, 20, 24)) -> np.ndarray:
    hu = np.full(shape_zyx, -1000, np.int16)
    hu[1:-1, 2:-2, 2:-2] = 40
    return hu


def write(array_zyx: np.ndarray, path: Path, spacing=(0.8, 0.8, 2.5), units: str | None = None) -> Path:
    """A NIfTI written by SimpleITK; ``units`` rewrites the header's unit code (``.nii`` only)."""
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    if units:
        data = bytearray(path.read_bytes())
        data[123] = (data[123] & 0x38) | NIFTI_UNITS[units]  # spatial units: the low 3 bits
        path.write_bytes(bytes(data))
    return path


def one_case_dataset(root: Path, image: np.ndarray, **write_kwargs) -> Path:
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write(image, root / "imagesTr" / "case_1.nii", **write_kwargs)
    write(np.zeros(image.shape, np.uint8), root / "labelsTr" / "case_1.nii", **write_kwargs)
    meta = {
        "name": "limits",
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "training": [{"image": "./imagesTr/case_1.nii", "label": "./labelsTr/case_1.nii"}],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def no_pixels_read(monkeypatch):
    """The check must come before any voxel is read."""

    def refuse(*args, **kwargs):
        raise AssertionError("voxels were read")

    monkeypatch.setattr(pipeline, "read_case", refuse)


@pytest.mark.parametrize(
    ("write_kwargs", "fragment"),
    [
        ({"units": "micrometres"}, "voxel spacing 0.0008 mm along x is below limits.min_spacing_mm 0.1 "),
        ({"units": "metres"}, "voxel spacing 800 mm along x is above limits.max_spacing_mm 20 "),
        ({"spacing": (0.0008, 0.0008, 0.0025)}, "voxel spacing 0.0008 mm along x is below limits.min_spacing_mm 0.1"),
        ({"spacing": (800.0, 800.0, 2500.0)}, "voxel spacing 800 mm along x is above limits.max_spacing_mm 20"),
    ],
    ids=["units-micrometres", "units-metres", "spacing-micrometres", "spacing-metres"],
)
def test_header_in_wrong_units_fails_the_case_without_a_shard(tmp_path, write_kwargs, fragment):
    """Micrometres gave a 1x1x1 shard marked done; metres asked ITK for a terabyte grid."""
    data = one_case_dataset(tmp_path / "data", body(), **write_kwargs)
    summary = run_preprocess(data, tmp_path / "store", workers=0, progress=False)
    assert (summary.done, summary.failed) == (0, 1)
    reason = summary.failures[0][1]
    assert reason.startswith(f"{data / 'imagesTr' / 'case_1.nii'}: {fragment}") and "\n" not in reason
    assert not shard_path(tmp_path / "store", "case_1").exists()
    assert read_catalog(tmp_path / "store").cases["case_1"].status == "failed"


@pytest.mark.parametrize(
    ("shape", "spacing", "config", "fragment"),
    [
        (
            (2100, 4, 4),
            (1.0, 1.0, 1.0),
            PreprocessConfig(),
            "scan extent 2100 mm along z (2100 voxels x 1 mm) is above limits.max_extent_mm 2000",
        ),
        (
            (6, 20, 24),
            (0.8, 0.8, 2.5),
            PreprocessConfig(limits=GeometryLimits(max_resampled_voxels=1000)),
            "resampled grid 19x16x15 = 4,560 voxels at (1, 1, 1) mm is above limits.max_resampled_voxels 1,000",
        ),
        (
            (6, 20, 24),
            (0.8, 0.8, 2.5),
            PreprocessConfig(limits=GeometryLimits(min_spacing_mm=1.0)),
            "voxel spacing 0.8 mm along x is below limits.min_spacing_mm 1 ",
        ),
    ],
    ids=["extent", "resampled-voxels", "configured-min-spacing"],
)
def test_geometry_limits_are_checked_from_the_header(tmp_path, no_pixels_read, shape, spacing, config, fragment):
    path = write(body(shape), tmp_path / "ct.nii.gz", spacing=spacing)
    with pytest.raises(InputError) as err:
        preprocess_file(path, None, config)
    assert str(err.value).startswith(f"{path}: {fragment}")


def test_image_from_memory_is_checked_before_resampling(monkeypatch):
    """``pancreas predict`` and DICOM series reach ``preprocess_image`` without a header check."""

    def refuse(*args, **kwargs):
        raise AssertionError("resampled")

    monkeypatch.setattr(pipeline, "resample", refuse)
    image = sitk.GetImageFromArray(body().astype(np.float32))
    image.SetSpacing((800.0, 800.0, 2500.0))
    with pytest.raises(InputError, match=r"^voxel spacing 800 mm along x is above limits.max_spacing_mm 20 "):
        preprocess_image(image, None, PreprocessConfig())


def test_geometry_problem_names_the_axis_and_accepts_a_real_ct():
    limits = GeometryLimits()
    ct = ((512, 512, 751), (0.7, 0.7, 0.7), np.eye(3).ravel(), (1.0, 1.0, 1.0))
    assert geometry_problem(*ct, limits) is None
    assert "along z is above limits.max_spacing_mm" in geometry_problem(
        (512, 512, 40), (0.8, 0.8, 25.0), np.eye(3).ravel(), (1, 1, 1), limits
    )
    assert "below limits.min_spacing_mm" in geometry_problem(
        (4, 4, 4), (1, float("nan"), 1), np.eye(3).ravel(), (1, 1, 1), limits
    )


@pytest.mark.parametrize(
    "direction",
    [tuple(np.eye(3).ravel()), (0, 1, 0, -1, 0, 0, 0, 0, 1), (0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1)],
    ids=["identity", "swapped", "oblique"],
)
def test_resampled_size_from_the_header_matches_the_pipeline_grid(direction):
    image = sitk.Image([37, 23, 11], sitk.sitkUInt8)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetDirection(direction)
    expected = edge_aligned_grid(image, (1.0, 1.0, 1.0)).size
    assert resampled_size(image.GetSize(), image.GetSpacing(), direction, (1.0, 1.0, 1.0)) == expected


def test_case_bytes_by_hand():
    n, slab = 512 * 512 * 751, STREAM_SLAB_VOXELS
    # the longest case: read in slabs, then the float32 scan (4 bytes) is held while it is
    # resampled into float32 + uint8 (5 bytes a resampled voxel); its label is gone by then
    assert case_bytes(n, 367 * 367 * 526, "int16", "uint8") == n * 4 + 367 * 367 * 526 * 5
    # reading it: the float32 image once plus one slab read at 8 bytes a voxel
    assert case_bytes(n, 1, "float32", None) == n * 4 + slab * 8
    # a fine target grid: the resampled arrays dominate
    assert case_bytes(1000, 10**6, "int16", "uint8") == 10**6 * 8
    assert case_bytes(1000, 10**6, "float32", None) == 10**6 * 6
    # reading whole: int16 8, float32 8, int32 12, float64 20 bytes a voxel (measured with ITK 5.4)
    assert [case_bytes(10, 1, t, None) // 10 for t in ("int16", "float32", "int32", "float64")] == [8, 8, 12, 20]
    # an int16 label is read twice, then cast to uint8
    assert case_bytes(10, 1, "float32", "int16") == 10 * (4 + 4 + 1)


def test_case_over_the_memory_budget_fails_before_reading(tmp_path, monkeypatch, no_pixels_read):
    path = write(body((40, 128, 128)), tmp_path / "ct.nii.gz")
    # 655,360 float32 input voxels resampled into 102x102x100 float32 ones: 6,783,040 bytes
    monkeypatch.setattr(pipeline, "memory_budget_bytes", lambda: 6_700_000)
    with pytest.raises(InputError) as err:
        preprocess_file(path, None, PreprocessConfig())
    assert str(err.value) == (
        f"{path}: needs about 6.8 MB of memory (input 128x128x40, resampled 102x102x100 voxels) but this worker "
        "can spend 6.7 MB; run with fewer --workers or on a machine with more memory"
    )
    monkeypatch.setattr(pipeline, "memory_budget_bytes", lambda: 6_800_000)
    with pytest.raises(AssertionError, match="voxels were read"):  # it fits: reading starts
        preprocess_file(path, None, PreprocessConfig())


@pytest.mark.timeout(180)
def test_case_too_big_for_a_dask_worker_is_a_case_error_not_a_killed_worker(tmp_path, monkeypatch):
    """A 1 GiB worker and a case that needs twice that (0.08 mm target grid: 256 M voxels)."""
    import dataset.common.runner as runner

    monkeypatch.setattr(runner, "WORKER_MEMORY_LIMIT", 1 << 30)
    data = one_case_dataset(tmp_path / "data", body((32, 64, 64)), spacing=(1.0, 1.0, 1.0))
    config = PreprocessConfig(target_spacing_mm=(0.08, 0.08, 0.08))
    summary = run_preprocess(data, tmp_path / "store", config, workers=1, progress=False)
    assert (summary.done, summary.failed) == (0, 1)
    reason = summary.failures[0][1]
    assert (
        "needs about 2.05 GB of memory (input 64x64x32, resampled 800x800x400 voxels) but this worker can spend"
        in reason
        and "worker error" not in reason
    ), reason


def test_limits_are_not_part_of_the_fingerprint_but_library_versions_are(monkeypatch):
    import preprocess.config as config_module

    default = config_fingerprint(PreprocessConfig())
    assert config_fingerprint(PreprocessConfig(limits=GeometryLimits(max_extent_mm=3000.0))) == default
    real = config_module.library_versions()
    assert set(real) == {"SimpleITK", "numpy"} and real["numpy"] == np.__version__
    for name in real:
        monkeypatch.setattr(config_module, "library_versions", lambda name=name: {**real, name: "0.0.1"})
        assert config_fingerprint(PreprocessConfig()) != default, name
