"""A DICOM series whose slices are not a regular grid (a missing, duplicated or irregularly spaced
slice) is refused in one line naming the series and the positions, never read as a uniform grid;
a series' fingerprint covers the files of its sub-folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dicom_series import UID_A, volume, write_series

from dataset.common.fingerprints import fingerprint_file, fingerprint_json
from preprocess.dicom import grid_problem
from preprocess.io import InputError, read_image

FILES = [f"IM{i}.dcm" for i in range(5)]


@pytest.mark.parametrize(
    "positions",
    [
        [0.0, 2.5, 5.0, 7.5, 10.0],
        [10.0, 7.5, 5.0, 2.5, 0.0],  # any file order: the positions sort them
        [0.0, 2.5, 5.004, 7.5, 10.0],  # 4 micrometres of DS rounding: under 0.025 mm (1% of 2.5 mm)
        [-300.0, -299.0, -298.0, -297.0, -296.0],
    ],
)
def test_a_regular_grid_has_no_problem(positions):
    assert grid_problem(positions, FILES) is None


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        (
            [0.0, 2.5, 5.0, 10.0, 12.5],
            "gap (a missing slice?) of 5.000 mm between 5.000 mm (IM2.dcm) and 10.000 mm (IM3.dcm)",
        ),
        ([0.0, 2.5, 5.0, 5.0, 7.5], "duplicate slice position: 5.000 mm (IM2.dcm) and 5.000 mm (IM3.dcm)"),
        ([0.0, 2.5, 5.0, 7.1, 10.0], "irregular step of 2.100 mm between 5.000 mm (IM2.dcm) and 7.100 mm (IM3.dcm)"),
    ],
)
def test_missing_duplicate_and_irregular_slices_are_named(positions, expected):
    problem = grid_problem(positions, FILES)
    assert problem is not None and expected in problem
    assert problem.startswith("5 slices are not a regular grid (median step 2.500 mm, tolerance 0.025 mm)")


def test_the_tolerance_is_at_least_a_hundredth_of_a_millimetre():
    # 1% of a 0.5 mm step is 0.005 mm; 0.008 mm of rounding is still accepted (floor 0.01 mm)
    assert grid_problem([0.0, 0.5, 1.008, 1.5, 2.0], FILES) is None
    assert grid_problem([0.0, 0.5, 1.02, 1.5, 2.0], FILES) is not None


def series(folder: Path, *parts: range, prefix: str = "IM") -> Path:
    for slices in parts:
        write_series(volume(6, (0.8, 0.8, 2.5), 0), folder, UID_A, prefix, slices=slices)
    return folder


def test_a_regular_series_still_reads(tmp_path):
    image, _ = read_image(series(tmp_path / "ok", range(6)))
    assert image.GetSize() == (24, 20, 6) and image.GetSpacing()[2] == pytest.approx(2.5)


def test_a_series_with_a_missing_slice_is_refused(tmp_path):
    folder = series(tmp_path / "missing", range(3), range(4, 6))
    with pytest.raises(InputError) as err:
        read_image(folder)
    text = str(err.value)
    assert text.startswith(f"{folder}: DICOM series refused, 5 slices are not a regular grid") and "\n" not in text
    assert "gap (a missing slice?) of 5.000 mm between -295.000 mm (IM0002.dcm) and -290.000 mm (IM0004.dcm)" in text
    assert text.endswith("fix the export (it is not resampled)")


def test_a_series_with_a_duplicated_slice_is_refused(tmp_path):
    folder = series(tmp_path / "duplicated", range(6))
    series(folder, range(3, 4), prefix="DUP")  # a second file at slice 3's position
    with pytest.raises(
        InputError, match=r"duplicate slice position: -292\.500 mm \((DUP|IM)0003\.dcm\) and -292\.500 mm"
    ):
        read_image(folder)


def test_a_series_fingerprint_covers_its_sub_folders(tmp_path):
    folder = tmp_path / "series"
    (folder / "b").mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"1")
    (folder / "b" / "c.dcm").write_bytes(b"2")
    first = fingerprint_file(folder)
    assert fingerprint_file(folder) == first  # deterministic
    (folder / "b" / "c.dcm").write_bytes(b"22")
    assert fingerprint_file(folder) != first
    (folder / "b" / "c.dcm").unlink()
    # files directly in the folder count as before sub-folders did (no spurious re-run)
    assert fingerprint_file(folder) == fingerprint_json(["series", [fingerprint_file(folder / "a.dcm")]])
