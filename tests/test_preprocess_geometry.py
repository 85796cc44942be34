"""Edge-aligned resampling, reorientation and the way back onto the original grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from preprocess.config import PreprocessConfig
from preprocess.geometry import (
    IDENTITY_DIRECTION,
    edge_aligned_grid,
    physical_bounds,
    resample,
    restore_to_original,
    stored_grid_image,
    to_canonical,
)
from preprocess.pipeline import preprocess_file, preprocess_image
from sources.msd import load_msd_dataset
from sources.synthetic.msd import make_dataset
from sources.synthetic.params import draw_case_params

RAS = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)


def image(array_zyx, spacing, origin=(0.0, 0.0, 0.0), direction=IDENTITY_DIRECTION):
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def test_edge_aligned_grid_formula():
    img = image(np.zeros((20, 7, 9), np.float32), (0.8, 0.7, 2.5), origin=(10.0, -5.0, 100.0))
    grid = edge_aligned_grid(img, (1.0, 1.0, 1.0))
    # size = round(old size * old spacing / new spacing): 9*0.8=7.2 -> 7, 7*0.7=4.9 -> 5, 50
    assert grid.size == (7, 5, 50)
    # origin = old origin - old spacing / 2 + new spacing / 2
    np.testing.assert_allclose(grid.origin, (10.0 - 0.4 + 0.5, -5.0 - 0.35 + 0.5, 100.0 - 1.25 + 0.5))
    assert edge_aligned_grid(image(np.zeros((1, 1, 1), np.float32), (0.2, 0.2, 0.2)), (1, 1, 1)).size == (1, 1, 1)


def test_flipped_scan_covers_same_extent():
    lps = image(np.zeros((20, 6, 8), np.float32), (0.8, 0.8, 2.0), origin=(0.0, 0.0, 0.0))
    # the same box stored RAS: first voxel centre at the opposite x/y corner
    ras = image(np.zeros((20, 6, 8), np.float32), (0.8, 0.8, 2.0), origin=(7 * 0.8, 5 * 0.8, 0.0), direction=RAS)
    for a, b in zip(physical_bounds(lps), physical_bounds(ras)):
        np.testing.assert_allclose(a, b, atol=1e-9)
    a, b = edge_aligned_grid(lps, (1, 1, 1)), edge_aligned_grid(ras, (1, 1, 1))
    assert a.size == b.size
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-9)


@pytest.mark.parametrize("direction", [IDENTITY_DIRECTION, RAS, (1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0)])
def test_block_touching_first_slice_keeps_its_volume(direction):
    """A structure in the first 4 of 20 slices of 2.5 mm: centre alignment would lose 1.25 mm (12%)."""
    label = np.zeros((20, 24, 24), np.uint8)
    label[:4, 5:15, 5:20] = 1  # 10 x 8 x 12 mm
    img = image(label, (0.8, 0.8, 2.5), direction=direction)
    grid = edge_aligned_grid(img, (1.0, 1.0, 1.0))
    out = sitk.GetArrayFromImage(resample(img, grid, "nearest"))
    volume_in = label.sum() * 0.8 * 0.8 * 2.5
    assert abs(out.sum() * 1.0 - volume_in) / volume_in < 0.05
    assert grid.size[2] * 1.0 == pytest.approx(20 * 2.5)


def test_edge_points_are_interpolated_not_default():
    hu = np.full((4, 4, 4), 100.0, np.float32)
    img = image(hu, (1.0, 1.0, 2.0))
    out = sitk.GetArrayFromImage(resample(img, edge_aligned_grid(img, (0.5, 0.5, 0.5)), "linear", -1024.0))
    assert out.min() == pytest.approx(100.0)  # the outermost half-voxels too


def test_preprocess_image_without_label_and_stored_grid():
    rng = np.random.default_rng(0)
    hu = np.full((12, 40, 40), -1000.0, np.float32)
    hu[2:10, 8:32, 10:30] = rng.normal(40, 30, size=(8, 24, 20))
    case = preprocess_image(image(hu.astype(np.int16), (0.9, 0.9, 2.0), direction=RAS), None, PreprocessConfig())
    assert case.label is None and case.levels.dtype == np.uint8
    assert "label_counts" not in case.attrs and case.attrs["original_dtype"] == "int16"
    stored = stored_grid_image(case.levels, case.attrs)
    assert stored.GetSize() == case.levels.shape[::-1]
    np.testing.assert_allclose(stored.GetDirection(), IDENTITY_DIRECTION)
    start = np.asarray(case.attrs["crop_start_zyx"])[::-1]
    np.testing.assert_allclose(stored.GetOrigin(), case.attrs["resampled_origin"] + start * case.attrs["spacing"])


def test_label_on_another_grid_is_refused():
    img = image(np.zeros((4, 5, 6), np.float32), (1.0, 1.0, 1.0))
    label = image(np.zeros((4, 5, 6), np.uint8), (1.0, 1.0, 1.0), origin=(3.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="origin"):
        preprocess_image(img, label, PreprocessConfig())


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("synth"), 4, seed=0, size="small", n_test=0, progress=False)
    return load_msd_dataset(root)


def test_synthetic_set_covers_orientations_and_dtypes():
    params = [draw_case_params(i, 0, "small") for i in range(4)]
    assert {p.orientation for p in params} == {"LPS", "RAS", "LPI", "PLS"}
    assert {p.dtype for p in params} == {"int16", "int16_scaled", "float32", "int32"}
    assert params[3].grid_size[2] == 20  # the thin scan


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_round_trip_to_original_grid(synthetic, index):
    case = synthetic.cases[index]
    out = preprocess_file(case.image, case.label, PreprocessConfig())
    original = sitk.ReadImage(str(case.label))
    back = restore_to_original(out.label, out.attrs)
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(original, getter)(), atol=1e-6)
    truth = sitk.GetArrayViewFromImage(original) > 0
    mapped = sitk.GetArrayViewFromImage(back) > 0
    dice = 2 * (truth & mapped).sum() / (truth.sum() + mapped.sum())
    assert dice >= 0.95, f"{case.case_id}: Dice {dice:.3f}"
    ml_original = truth.sum() * np.prod(original.GetSpacing()) / 1000
    ml_stored = (out.label > 0).sum() * np.prod(out.attrs["spacing"]) / 1000
    assert abs(ml_stored - ml_original) / ml_original < 0.05, (ml_original, ml_stored)
    # the stored image is canonical: identity direction, x increasing to the patient's left
    np.testing.assert_allclose(out.attrs["direction"], IDENTITY_DIRECTION)
    np.testing.assert_allclose(out.attrs["original_direction"], original.GetDirection())


def test_restore_linear_of_probabilities(synthetic):
    case = synthetic.cases[1]
    out = preprocess_file(case.image, case.label, PreprocessConfig())
    prob = (out.label > 0).astype(np.float32)
    back = restore_to_original(prob, out.attrs, interpolation="linear")
    assert back.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayViewFromImage(back)
    assert values.min() >= 0.0 and values.max() <= 1.0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) > 0
    dice = 2 * (truth & (values > 0.5)).sum() / (truth.sum() + (values > 0.5).sum())
    assert dice >= 0.95


def test_no_body_keeps_whole_volume_with_a_warning(caplog):
    air = image(np.full((5, 8, 9), -1000, np.int16), (1.0, 1.0, 2.0))
    with caplog.at_level("WARNING"):
        case = preprocess_image(air, None, PreprocessConfig())
    assert case.levels.shape == (10, 8, 9)
    np.testing.assert_array_equal(case.attrs["crop_start_zyx"], (0, 0, 0))
    np.testing.assert_array_equal(case.attrs["crop_stop_zyx"], (10, 8, 9))
    assert "keeping the whole volume" in caplog.text


def test_bspline_option_interpolates_smoothly():
    hu = np.full((6, 16, 16), -1000.0, np.float32)
    hu[1:5, 3:13, 3:13] = np.linspace(-100, 200, 10)[None, None, :]
    img = image(hu, (1.5, 1.5, 3.0))
    linear = preprocess_image(img, None, PreprocessConfig(equalize=False))
    bspline = preprocess_image(img, None, PreprocessConfig(equalize=False, image_interpolation="bspline"))
    assert linear.levels.shape == bspline.levels.shape
    assert not np.array_equal(linear.levels, bspline.levels)
    assert np.abs(linear.levels.astype(int) - bspline.levels).mean() < 10


@pytest.mark.parametrize("direction", [RAS, (0.0, 1.0, 0, 1.0, 0, 0, 0, 0, 1.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0)])
def test_resampling_folds_in_the_reorientation(direction):
    """One Resample onto the identity grid == DICOMOrient("LPS") then Resample (the pipeline's shortcut)."""
    rng = np.random.default_rng(1)
    # 2.4 mm: no new voxel centre falls exactly on the scan's edge, where ITK's inside/outside
    # test depends on the storage order
    img = image(rng.normal(0, 100, (7, 9, 11)).astype(np.float32), (0.7, 0.9, 2.4), (3.0, -4.0, 5.0), direction)
    grid = edge_aligned_grid(img, (1.0, 1.0, 1.0))
    canonical = to_canonical(img)
    np.testing.assert_allclose(canonical.GetDirection(), IDENTITY_DIRECTION)
    assert edge_aligned_grid(canonical, (1.0, 1.0, 1.0)).size == grid.size
    direct = sitk.GetArrayFromImage(resample(img, grid, "linear"))
    two_step = sitk.GetArrayFromImage(resample(canonical, grid, "linear"))
    np.testing.assert_allclose(direct, two_step, atol=1e-3)


def test_oblique_scan_is_not_smeared_over_the_box():
    """A gantry-tilted scan does not fill the axis-aligned 1 mm box: points outside it are
    air / background, and a labelled block keeps its volume (no edge extrapolation)."""
    angle = np.deg2rad(25.0)
    c, s = np.cos(angle), np.sin(angle)
    tilted = (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)  # rotation about x
    hu = np.full((10, 40, 40), 40.0, dtype=np.float32)  # all body
    lab = np.zeros((10, 40, 40), dtype=np.uint8)
    lab[2:8, 10:30, 10:30] = 1
    spacing = (1.0, 1.0, 2.0)
    ct = image(hu, spacing, direction=tilted)
    label = image(lab, spacing, direction=tilted)
    config = PreprocessConfig(crop_to_body=False)
    case = preprocess_image(ct, label, config)

    volume_in = lab.sum() * np.prod(spacing)
    volume_out = (case.label == 1).sum() * np.prod(config.target_spacing_mm)
    assert abs(volume_out - volume_in) / volume_in < 0.05
    assert (case.levels == 0).any()  # air (below the window) outside the tilted slab
    assert (case.label == 0).sum() > 0.3 * case.label.size


@pytest.mark.parametrize(
    ("direction", "aligned"),
    [
        (IDENTITY_DIRECTION, True),
        ((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), True),
        ((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0), True),
        ((1.0, 0.0, 0.0, 0.0, 0.8, -0.6, 0.0, 0.6, 0.8), False),
    ],
)
def test_is_axis_aligned(direction, aligned):
    from preprocess.geometry import is_axis_aligned

    assert is_axis_aligned(direction) is aligned
