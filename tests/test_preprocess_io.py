"""Reading and validating inputs (NIfTI scaling, DICOM series, bad files) and dataset.json parsing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from preprocess.config import PreprocessConfig
from preprocess.io import InputError, read_case, read_image
from preprocess.pipeline import preprocess_file
from sources import nifti
from sources.msd import MsdDatasetError, case_id_of, load_msd_dataset

ALLOWED = (0, 1, 2)


def write(array_zyx, path: Path, spacing=(0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0)) -> Path:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return path


def body(shape=(6, 20, 24)) -> np.ndarray:
    hu = np.full(shape, -1000, np.int16)
    hu[1:5, 4:16, 5:20] = 40
    return hu


def test_nifti_scaling_is_applied_and_dtype_recorded(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = write(raw, tmp_path / "scaled.nii")
    data = bytearray(path.read_bytes())
    struct.pack_into("<ff", data, 112, 0.5, -1024.0)  # scl_slope, scl_inter
    path.write_bytes(bytes(data))
    image, dtype = read_image(path)
    assert dtype == "int16" and image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), raw * 0.5 - 1024.0)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.uint8])
def test_dtype_on_disk_is_recorded(tmp_path, dtype):
    path = write(body().astype(dtype) if dtype != np.uint8 else np.zeros((3, 4, 5), dtype), tmp_path / "a.nii.gz")
    assert read_image(path)[1] == np.dtype(dtype).name


def test_dicom_series_folder_is_read(tmp_path):
    hu = body()
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    volume = sitk.GetImageFromArray(hu)
    volume.SetSpacing((0.7, 0.7, 3.0))
    volume.SetOrigin((-10.0, 20.0, -300.0))
    for k in range(hu.shape[0]):
        slice_ = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.3.{k + 1}",
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0018|0050": "3.0",
        }.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)
    image, dtype = read_image(folder)
    assert dtype == "int16"
    assert image.GetSize() == (24, 20, 6)
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.7, 3.0), atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, 20.0, -300.0), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    case = preprocess_file(folder, None, PreprocessConfig())
    assert case.attrs["source_image"] == str(folder.resolve()) and case.levels.max() > 0


def test_4d_image_is_refused(tmp_path):
    vol = sitk.GetImageFromArray(body().astype(np.float32))
    path = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(path))
    with pytest.raises(InputError, match=r"four\.nii\.gz: image is 4D"):
        read_image(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["nan.nii.gz", "nan.nii", "nan.mha"])
def test_non_finite_values_are_refused(tmp_path, bad, name):
    """ITK's NIfTI reader turns NaN into 0 silently: the stored bytes are checked."""
    hu = body().astype(np.float32)
    hu[2, 3, 4] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        read_image(write(hu, tmp_path / name))


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x00\x05\x16\x07 not an image")
    with pytest.raises(InputError, match="junk.nii.gz: cannot read"):
        read_image(junk)
    with pytest.raises(InputError, match="gone.nii.gz: file not found"):
        read_image(tmp_path / "gone.nii.gz")


@pytest.mark.parametrize(
    ("label_kwargs", "fragment"),
    [
        ({"origin": (5.0, 0.0, 0.0)}, "origin"),
        ({"spacing": (0.8, 0.8, 3.0)}, "spacing"),
        ({"shape": (5, 20, 24)}, "size"),
    ],
)
def test_label_on_another_grid_is_refused(tmp_path, label_kwargs, fragment):
    image = write(body(), tmp_path / "img.nii.gz")
    shape = label_kwargs.pop("shape", (6, 20, 24))
    label = write(np.zeros(shape, np.uint8), tmp_path / "lab.nii.gz", **label_kwargs)
    with pytest.raises(InputError, match=f"lab.nii.gz: label is on another grid.*{fragment}"):
        read_case(image, label, ALLOWED)


def test_label_origin_within_tolerance_is_accepted(tmp_path):
    image = write(body(), tmp_path / "img.nii.gz")
    label = write(np.ones((6, 20, 24), np.int16), tmp_path / "lab.nii.gz", origin=(1e-4, 0.0, 0.0))
    _, _, out = read_case(image, label, ALLOWED)
    assert out.GetPixelID() == sitk.sitkUInt8 and out.GetOrigin() == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("values", "dtype", "fragment"),
    [
        ((0, 1, 3), np.uint8, r"not in the declared labels \[0, 1, 2\]: 3 \(1 voxels\)"),
        ((0, -1), np.int16, "integers in"),
        ((0, 1.5), np.float32, "integers in"),
        ((0, 300), np.int16, "integers in"),
    ],
)
def test_unexpected_label_values_are_refused(tmp_path, values, dtype, fragment):
    image = write(body(), tmp_path / "img.nii.gz")
    label = np.zeros((6, 20, 24), dtype)
    label.flat[: len(values)] = values
    with pytest.raises(InputError, match=fragment):
        read_case(image, write(label, tmp_path / "lab.nii.gz"), ALLOWED)


def test_float_label_with_integer_values_is_accepted(tmp_path):
    image = write(body(), tmp_path / "img.nii.gz")
    label = np.zeros((6, 20, 24), np.float32)
    label[2, 5:9, 6:10] = 2.0
    _, _, out = read_case(image, write(label, tmp_path / "lab.nii.gz"), ALLOWED)
    assert sitk.GetArrayViewFromImage(out).sum() == 2 * 16


# ---- dataset.json -------------------------------------------------------------------------


def msd_folder(tmp_path: Path, meta: dict) -> Path:
    for name in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return tmp_path


def test_case_ids_and_splits(tmp_path):
    root = msd_folder(
        tmp_path,
        {
            "name": "Pancreas",
            "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
            "training": [
                {"image": "./imagesTr/pancreas_001.nii.gz", "label": "./labelsTr/pancreas_001.nii.gz"},
                {"image": "./imagesTr/._pancreas_001.nii.gz", "label": "./labelsTr/._pancreas_001.nii.gz"},
            ],
            "test": ["./imagesTs/pancreas_002.nii"],
        },
    )
    (root / "imagesTs" / "pancreas_002.nii").write_bytes(b"")
    ds = load_msd_dataset(root)
    assert [(c.case_id, c.split, c.label is not None) for c in ds.cases] == [
        ("pancreas_001", "training", True),
        ("pancreas_002", "test", False),
    ]
    assert ds.cases[0].image == root.resolve() / "imagesTr" / "pancreas_001.nii.gz"
    assert ds.label_values == (0, 1, 2) and ds.name == "Pancreas"
    assert case_id_of("/x/series_7") == "series_7"


@pytest.mark.parametrize("entry", ["../outside.nii.gz", "/etc/passwd", "./imagesTr/../../x.nii.gz"])
def test_entries_outside_the_dataset_are_refused(tmp_path, entry):
    (tmp_path / "ds").mkdir()
    root = msd_folder(tmp_path / "ds", {"training": [], "test": [entry]})
    with pytest.raises(MsdDatasetError, match="resolves outside the dataset folder"):
        load_msd_dataset(root)


def test_folders_are_scanned_without_lists_ignoring_junk(tmp_path):
    root = msd_folder(tmp_path, {"labels": {"0": "background", "1": "pancreas"}})
    for name in ("pancreas_004.nii.gz", "._pancreas_004.nii.gz", "notes.txt", "pancreas_005.nii"):
        (root / "imagesTr" / name).write_bytes(b"x")
    (root / "imagesTs" / "pancreas_009.nii.gz").write_bytes(b"x")
    ds = load_msd_dataset(root)
    assert [(c.case_id, c.split) for c in ds.cases] == [
        ("pancreas_004", "training"),
        ("pancreas_005", "training"),
        ("pancreas_009", "test"),
    ]
    assert ds.cases[0].label == root.resolve() / "labelsTr" / "pancreas_004.nii.gz"


def test_listed_non_nifti_file_is_ignored(tmp_path):
    root = msd_folder(tmp_path, {"test": ["./imagesTs/readme.txt", "./imagesTs/pancreas_003.nii.gz"]})
    (root / "imagesTs" / "readme.txt").write_text("x")
    assert [c.case_id for c in load_msd_dataset(root).cases] == ["pancreas_003"]


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"training": [{"image": "./imagesTr/a.nii.gz"}]}, r"training\[0\] must have"),
        ({"test": ["./imagesTs/a.nii.gz", "./imagesTr/a.nii.gz"]}, "appears twice"),
        ({"labels": {"x": "bad"}, "channel_names": {"0": "CT"}}, "'labels' must map"),
    ],
)
def test_bad_dataset_json(tmp_path, meta, fragment):
    with pytest.raises(MsdDatasetError, match=fragment):
        load_msd_dataset(msd_folder(tmp_path, meta))


def test_missing_dataset_json(tmp_path):
    with pytest.raises(MsdDatasetError, match="no dataset.json"):
        load_msd_dataset(tmp_path)


def _scaled_float_nifti(hu: np.ndarray, path, slope: float, inter: float):
    """A float32 NIfTI whose header scales raw values: HU = raw * slope + inter."""
    import struct

    raw = np.where(np.isfinite(hu), (hu - inter) / slope, hu).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(raw), str(path))
    data = bytearray(path.read_bytes())
    data[112:120] = struct.pack("<ff", slope, inter)
    path.write_bytes(bytes(data))
    return path


def test_non_finite_in_scaled_float_nifti_is_refused(tmp_path):
    """ITK turns NaN into 0 *then* scales it: the stand-in value is scl_inter, not 0."""
    hu = body().astype(np.float32) + 0.5  # no voxel is exactly 0
    hu[2, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        read_image(_scaled_float_nifti(hu, tmp_path / "scaled.nii", 2.0, -1000.0))


def test_raw_scan_skipped_when_no_voxel_could_stand_for_nan(tmp_path, monkeypatch):
    import sources.nifti as nifti

    scans = []
    real = nifti.has_non_finite
    monkeypatch.setattr(nifti, "has_non_finite", lambda p, d: scans.append(p) or real(p, d))
    hu = body().astype(np.float32) + 0.5  # float CT without a single 0.0 voxel
    _image, dtype = read_image(write(hu, tmp_path / "clean.nii.gz"))
    assert dtype == "float32" and scans == []
    hu[0, 0, 0] = 0.0  # a genuine 0 HU could be a NaN stand-in: the bytes are checked
    read_image(write(hu, tmp_path / "zero.nii.gz"))
    assert [p.name for p in scans] == ["zero.nii.gz"]


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_nifti_is_refused(tmp_path, name):
    """ITK reads a half-copied file and zero-fills the rest: the header's size is checked."""
    noise = np.random.default_rng(0).integers(-1000, 1000, size=(40, 64, 64), dtype=np.int16)
    path = write(noise, tmp_path / name)  # noise: the gzip stream is as long as the data
    read_image(path)  # the whole file is fine
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"{name}: truncated"):
        read_image(path)


# ---- NIfTI headers --------------------------------------------------------------------------


def _header(endian: str, sizeof_hdr: int = 348) -> bytes:
    """A NIfTI-1 header by hand: 4x3x2 int16 voxels at offset 352, scaled by 2 and -1000."""
    data = bytearray(348)
    struct.pack_into(endian + "i", data, 0, sizeof_hdr)
    struct.pack_into(endian + "8h", data, 40, 3, 4, 3, 2, 1, 1, 1, 1)
    struct.pack_into(endian + "hh", data, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into(endian + "fff", data, 108, 352.0, 2.0, -1000.0)  # vox_offset, scl_slope, scl_inter
    return bytes(data)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_nifti_header_fields_by_hand(endian):
    header = nifti.parse_header(_header(endian))
    assert header == nifti.NiftiHeader(endian, (4, 3, 2), 4, 16, 352, 2.0, -1000.0)
    assert (header.dtype, header.data_bytes, header.intercept) == ("int16", 48, -1000.0)


def test_not_a_nifti1_header_is_none():
    assert nifti.parse_header(_header("<", sizeof_hdr=540)) is None  # NIfTI-2
    assert nifti.parse_header(_header("<")[:200]) is None


def test_simpleitk_header_is_read_from_gzip_and_plain_files(tmp_path):
    raw = np.zeros((2, 3, 4), np.float32)
    for name in ("a.nii", "a.nii.gz"):
        header = nifti.read_header(write(raw, tmp_path / name))
        assert (header.endian, header.dims, header.dtype, header.data_bytes) == ("<", (4, 3, 2), "float32", 96)
        assert header.intercept == 0.0
