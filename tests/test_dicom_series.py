"""DICOM as it arrives: several series in one folder or one folder per series, each its own case
with a stable name, read by SeriesInstanceUID; a folder without a series is a one-line error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import write_contract_run

from pancreas.cli import main
from prediction.cases import CaseInput, PredictError, discover_inputs
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from preprocess.dicom import find_series, uid_suffix
from preprocess.io import InputError, read_image, read_label

STUDY = "1.2.826.0.1.3680043.2.1125.200"
UID_A, UID_B = "1.2.826.0.1.3680043.2.1125.201", "1.2.826.0.1.3680043.2.1125.202"
SUFFIX_A, SUFFIX_B = "ca236cd3", "bc356cd3"  # SHA-1 of the UIDs, by hand: names must not change between versions


def volume(n_slices: int, spacing: tuple[float, float, float], offset: int) -> sitk.Image:
    """A body of soft tissue in air, HU distinct per series (``offset``) and per slice."""
    hu = np.full((n_slices, 20, 24), -1000, np.int16)
    hu[:, 4:16, 5:20] = 40 + offset + np.arange(n_slices, dtype=np.int16)[:, None, None]
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 20.0, -300.0))
    return image


def write_series(
    image: sitk.Image,
    folder: Path,
    uid: str,
    prefix: str,
    number: str = "",
    description: str = "",
    slices: range | None = None,
    reverse_names: bool = False,
) -> None:
    """One slice per file with the tags GDCM groups and sorts by (SimpleITK's series-writing example);
    ``reverse_names``: file names in the opposite order to the slices, so only positions sort them."""
    n_slices = image.GetSize()[2]
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in slices if slices is not None else range(n_slices):
        slice_ = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0020|000d": STUDY,
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0018|0050": f"{image.GetSpacing()[2]:g}",
            "0020|0011": number,
            "0008|103e": description,
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{n_slices - 1 - k if reverse_names else k:04d}.dcm"))
        writer.Execute(slice_)


SERIES = {UID_A: volume(5, (0.8, 0.8, 2.5), 0), UID_B: volume(4, (0.7, 0.7, 3.0), 100)}


def assert_reads_as(case: CaseInput, uid: str) -> None:
    image, dtype = read_image(case.path, case.series_uid)
    want = SERIES[uid]
    assert dtype == "int16" and image.GetSize() == want.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), want.GetSpacing(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(want))


@pytest.fixture
def one_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "patient7"
    write_series(SERIES[UID_A], folder, UID_A, "IM_A", "3", "Venous 1.0")
    write_series(SERIES[UID_B], folder, UID_B, "IM_B", "4", "Arterial", reverse_names=True)
    (folder / "DICOMDIR.txt").write_text("not DICOM: ignored")
    return folder


def test_two_series_in_one_folder_are_two_cases_with_stable_names(one_folder: Path, caplog):
    with caplog.at_level(logging.INFO, logger="prediction.cases"):
        cases = discover_inputs(one_folder)
    assert cases == [
        CaseInput(f"patient7_{SUFFIX_A}", one_folder, UID_A),
        CaseInput(f"patient7_{SUFFIX_B}", one_folder, UID_B),
    ]
    assert uid_suffix(UID_A) == SUFFIX_A
    assert_reads_as(cases[0], UID_A)
    assert_reads_as(cases[1], UID_B)
    assert cases[0].source == f"{one_folder} (DICOM series {UID_A})"
    listed = [r.getMessage() for r in caplog.records]
    assert listed[0] == f'case patient7_{SUFFIX_A}: DICOM series 3 "Venous 1.0" (5 files) UID {UID_A} in {one_folder}'
    assert listed[1].startswith(f'case patient7_{SUFFIX_B}: DICOM series 4 "Arterial" (4 files)')


def test_one_sub_folder_per_series(tmp_path: Path):
    root = tmp_path / "export"
    write_series(SERIES[UID_A], root / "SE000001", UID_A, "IM")
    write_series(SERIES[UID_B], root / "SE000002", UID_B, "IM")
    cases = discover_inputs(root)
    assert cases == [
        CaseInput(f"SE000001_{SUFFIX_A}", root / "SE000001", UID_A),
        CaseInput(f"SE000002_{SUFFIX_B}", root / "SE000002", UID_B),
    ]
    assert_reads_as(cases[0], UID_A)
    assert_reads_as(cases[1], UID_B)
    assert discover_inputs(root) == cases  # the same names on every run


def test_one_series_below_the_folder_given_is_named_after_it(tmp_path: Path):
    root = tmp_path / "patient9"
    write_series(SERIES[UID_B], root / "PA0" / "ST0" / "SE0", UID_B, "IM")
    (case,) = discover_inputs(root)
    assert case == CaseInput("patient9", root / "PA0" / "ST0" / "SE0", UID_B)
    assert_reads_as(case, UID_B)


def test_a_series_spread_over_two_folders_is_one_case_with_every_slice(tmp_path: Path):
    root = tmp_path / "cd"
    write_series(SERIES[UID_A], root / "part1", UID_A, "IM", slices=range(0, 3))
    write_series(SERIES[UID_A], root / "part2", UID_A, "IM", slices=range(3, 5))
    write_series(SERIES[UID_B], root / "other", UID_B, "IM")
    series = {s.uid: s for s in find_series(root)}
    assert series[UID_A].folder == root and len(series[UID_A].files) == 5
    cases = discover_inputs(root)
    assert [c.case_id for c in cases] == [f"other_{SUFFIX_B}", f"cd_{SUFFIX_A}"]
    assert_reads_as(cases[1], UID_A)


def test_several_series_without_a_uid_or_a_wrong_uid_are_one_line_errors(one_folder: Path, tmp_path: Path):
    with pytest.raises(InputError, match=rf"patient7: folder holds 2 DICOM series \({UID_A}, {UID_B}\); give one"):
        read_image(one_folder)
    with pytest.raises(InputError, match=r"patient7: holds no DICOM series 1\.2\.3$"):
        read_image(one_folder, "1.2.3")
    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(SERIES[UID_A], str(nifti))
    with pytest.raises(InputError, match=r"ct\.nii\.gz: DICOM series 1\.2\.3 was asked for, but this is not a folder"):
        read_image(nifti, "1.2.3")


@pytest.mark.parametrize("content", [{}, {"notes.txt": b"hello", "IM0001": b"\x00" * 200, "sub/readme": b"x"}])
def test_folder_without_a_series_is_a_one_line_error(tmp_path: Path, content: dict, capsys):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name, data in content.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with pytest.raises(PredictError, match=r"incoming: no NIfTI file, dataset.json or readable DICOM series"):
        discover_inputs(folder)
    run = write_contract_run(tmp_path / "run")
    assert main(["predict", "--model", str(run), "--input", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pancreas predict: error: ") and "readable DICOM series" in err and "\n" not in err


def bright_is_pancreas(batch: np.ndarray) -> np.ndarray:
    x = batch[..., 0]
    return np.stack([1 - x, x, np.zeros_like(x)], axis=-1).astype(np.float32)


def test_predict_writes_each_series_on_its_own_grid_and_records_it(one_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = predict_cases(
        write_contract_run(tmp_path / "run"),
        one_folder,
        out,
        PredictConfig(mirror_axes=()),
        predict_fn=bright_is_pancreas,
        progress=False,
    )
    assert not summary.failed, summary.table()
    for uid, suffix in ((UID_A, SUFFIX_A), (UID_B, SUFFIX_B)):
        written = read_label(out / f"patient7_{suffix}.nii.gz")
        assert written.GetSize() == SERIES[uid].GetSize()
        np.testing.assert_allclose(written.GetSpacing(), SERIES[uid].GetSpacing(), atol=1e-4)
    record = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["cases"]
    assert record[f"patient7_{SUFFIX_B}"]["input"] == f"{one_folder} (DICOM series {UID_B})"
