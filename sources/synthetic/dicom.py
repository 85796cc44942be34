"""Synthetic test cases as DICOM CT series (``pancreas synth --dicom``), and the series writer tests share.

Written with pydicom, not SimpleITK: GDCM's writer adds SpacingBetweenSlices once the process
has read a DICOM series, so its bytes depend on what ran before. See docs/how-to/synth.md#dicom-series.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dataset.common.atomic import write_bytes_atomic
from sources.synthetic.marker import DICOM_DIR, slice_file_name
from sources.synthetic.params import CaseParams

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's (pydicom.uid.PYDICOM_ROOT_UID), for UIDs it generates
STUDY_DATE, STUDY_TIME = "20260101", "120000"  # fixed, so a rerun writes the same bytes


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM's DS), 10 significant digits."""
    return f"{value:.10g}"


def write_ct_series(
    image: sitk.Image,
    folder: Path,
    series: Mapping[str, Any],
    instance_uids: Sequence[str],
    *,
    reverse_instances: bool = False,
) -> list[Path]:
    """Slice k of ``image`` (int16 HU, any direction) as ``folder/IM<n>.dcm``; the files, in slice order.

    Each file gets the attributes ``series`` names by keyword (patient, study, series) and its
    own CT Image Storage SOP class, SOPInstanceUID ``instance_uids[k]``, InstanceNumber n = k + 1,
    ImagePositionPatient, ImageOrientationPatient (the direction's first two columns),
    PixelSpacing, SliceThickness and rescale slope 1 / intercept 0. Written atomically, a file
    already holding the same bytes left alone.

    ``reverse_instances``: InstanceNumber and file names count down as k counts up (a series
    stored in reverse order: only the positions sort it).
    """
    if image.GetPixelID() != sitk.sitkInt16 or image.GetDimension() != 3:
        raise ValueError(
            f"{folder}: a CT series is written from a 3D int16 image, got {image.GetPixelIDTypeAsString()}"
        )
    pixels = sitk.GetArrayViewFromImage(image)
    d = image.GetDirection()
    geometry = {
        "ImageOrientationPatient": [_ds(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])],  # row, column directions
        "PixelSpacing": [_ds(image.GetSpacing()[1]), _ds(image.GetSpacing()[0])],  # between rows, between columns
        "SliceThickness": _ds(image.GetSpacing()[2]),
    }
    n = image.GetSize()[2]
    files = []
    for k in range(n):
        number = n - k if reverse_instances else k + 1
        position = [_ds(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        attributes = {**series, **geometry, "InstanceNumber": number, "ImagePositionPatient": position}
        buffer = io.BytesIO()  # encoded in memory: a short write is then an error, never a final name
        ct_slice(pixels[k], instance_uids[k], attributes).save_as(buffer, enforce_file_format=True)
        files.append(folder / slice_file_name(number))
        write_bytes_atomic(files[-1], buffer.getvalue(), keep_identical=True)
    return files


def ct_slice(pixels: np.ndarray, uid: str, attributes: Mapping[str, Any]) -> Any:
    """One CT Image Storage instance (a pydicom ``Dataset``, explicit VR little endian) of int16 ``pixels``."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CT_IMAGE_STORAGE, uid, "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP, ds.AcquisitionNumber, ds.PositionReferenceIndicator = "", "", ""  # type 2: present, may be empty
    for keyword, value in attributes.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM attribute keyword")
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def case_uid(params: CaseParams, seed: int, tumours: str, role: str) -> str:
    """A UID under ``UID_ROOT`` that is the same on every run for the case and its draw options."""
    from pydicom.uid import generate_uid

    sources = ["pancreas synth", str(seed), params.size, tumours, params.name, role]
    return generate_uid(prefix=UID_ROOT, entropy_srcs=sources)


def case_series_attributes(params: CaseParams, seed: int, tumours: str) -> dict[str, str]:
    """Patient, study and series of a synthetic case: PatientID is the case id, the UIDs ``case_uid``'s."""
    return {
        "PatientName": f"Synthetic^{params.name}",
        "PatientID": params.name,
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyDate": STUDY_DATE,
        "StudyTime": STUDY_TIME,
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "Manufacturer": "pancreas-seg synth",
        "StudyDescription": "Synthetic abdominal CT phantom",
        "SeriesDescription": f"pancreas synth {params.name}",
        "PatientPosition": "HFS",
        "BodyPartExamined": "ABDOMEN",
        "StudyID": "1",
        "SeriesNumber": "1",
        "StudyInstanceUID": case_uid(params, seed, tumours, "study"),
        "SeriesInstanceUID": case_uid(params, seed, tumours, "series"),
        "FrameOfReferenceUID": case_uid(params, seed, tumours, "frame of reference"),
    }


def hu_int16(stored: np.ndarray, params: CaseParams) -> np.ndarray:
    """The HU the NIfTI holds (slope * stored + intercept), rounded to int16, slice by slice."""
    out = np.empty(stored.shape, np.int16)
    info = np.iinfo(np.int16)
    for k in range(stored.shape[0]):
        hu = stored[k].astype(np.float64) * params.scl_slope + params.scl_inter
        out[k] = np.clip(np.rint(hu), info.min, info.max)
    return out


def write_case_series(out: Path, image: sitk.Image, params: CaseParams, seed: int, tumours: str) -> list[Path]:
    """A test case's image (int16 HU, on its NIfTI's grid) as ``out/dicomTs/<case>/``, rescale slope 1."""
    attributes = case_series_attributes(params, seed, tumours)
    uids = [case_uid(params, seed, tumours, f"instance {k + 1}") for k in range(image.GetSize()[2])]
    return write_ct_series(image, out / DICOM_DIR / params.name, attributes, uids)
