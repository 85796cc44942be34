"""DICOM SEG out: a label map on a DICOM series' own grid as one DICOM Segmentation (highdicom).

See docs/how-to/predict.md#dicom-seg-output.
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dataset.common.atomic import write_bytes_atomic
from prediction.cases import PredictError
from preprocess.io import DIRECTION_ATOL, ORIGIN_ATOL_MM

log = logging.getLogger(__name__)

SOFTWARE = "pancreas-seg"  # the distribution's name: manufacturer, model name and algorithm name of every SEG
SEG_SERIES_NUMBER = 9000  # a number no scanner series uses, so the SEG sorts after the CT in a viewer's list
SERIES_DESCRIPTION = "pancreas-seg pancreas and tumour"


@dataclass(frozen=True)
class Segment:
    """One segment: which label value it is, and what it is in SNOMED CT (DICOM PS3.16 CIDs 7150/7151/7159)."""

    number: int  # the label value in the label map, and the SEG's segment number
    label: str
    category: Code
    type: Code
    region: Code | None = None  # where the structure lies, for a type that is no anatomy itself


# The label map's classes 1 and 2 (MSD Task07): the gland without its tumour, and the tumour. The codes
# are pydicom's dictionary of DICOM PS3.16, read from it rather than typed (docs/how-to/predict.md).
SEGMENTS = (
    Segment(1, "pancreas", codes.SCT.AnatomicalStructure, codes.SCT.Pancreas),
    Segment(2, "pancreatic tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, codes.SCT.Pancreas),
)


def software_version() -> str:
    try:
        return importlib.metadata.version(SOFTWARE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# what a SEG references (type 1: a series without one cannot be referenced), and the patient and study
# attributes it copies that DICOM lets be empty (type 2: an export that dropped one gets it empty, in memory)
REFERENCED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
MAY_BE_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def read_sources(files: Sequence[str]) -> list[pydicom.Dataset]:
    """The series' datasets without their pixels, in the order given (``read_image``'s z order)."""
    datasets: list[pydicom.Dataset] = []
    for name in files:
        try:
            dataset = pydicom.dcmread(name, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as err:
            raise PredictError(f"{name}: cannot read for the DICOM SEG ({err})") from None
        missing = [k for k in REFERENCED if not dataset.get(k)]
        if missing:
            raise PredictError(f"{name}: lacks {', '.join(missing)}, which a DICOM SEG must reference")
        for keyword in MAY_BE_EMPTY:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
        datasets.append(dataset)
    return datasets


def _numbers(dataset: pydicom.Dataset, keyword: str, count: int) -> np.ndarray | None:
    value = dataset.get(keyword)
    if value is None or len(value) != count:
        return None
    return np.asarray([float(v) for v in value], dtype=np.float64)


def grid_problem(datasets: Sequence[pydicom.Dataset], files: Sequence[str], grid: Mapping[str, Any]) -> str | None:
    """Why slice k of the label map would not lie on file k's pixels; None when every one does.

    ``grid``: the scan's size, spacing, origin and direction in ITK's (x, y, z) order
    (``preprocess.output.geometry``). Voxel (x, y, k) lies at origin + D (spacing * index);
    file k's pixel (column x, row y) at its ImagePositionPatient + x dc * row direction +
    y dr * column direction (ImageOrientationPatient, PixelSpacing [dr, dc]).
    """
    size = tuple(int(n) for n in grid["size"])
    if len(datasets) != size[2]:
        return f"{len(datasets)} files for {size[2]} slices"
    direction = np.asarray(grid["direction"], dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(grid["spacing"], dtype=np.float64)
    origin = np.asarray(grid["origin"], dtype=np.float64)
    for k, (dataset, name) in enumerate(zip(datasets, files)):
        expected = origin + direction[:, 2] * spacing[2] * k
        problem = _slice_problem(dataset, size, expected, direction[:, :2].T.ravel(), spacing[1::-1])
        if problem:
            return f"{Path(name).name} (slice {k}): {problem}"
    return None


def _slice_problem(
    dataset: pydicom.Dataset, size: tuple[int, ...], position: np.ndarray, orientation: np.ndarray, pixel: np.ndarray
) -> str | None:
    """How one file differs from the slice it should be (its expected position, orientation, spacing)."""
    found = [_numbers(dataset, k, n) for k, n in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6))]
    found.append(_numbers(dataset, "PixelSpacing", 2))
    if any(f is None for f in found):
        return "lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing"
    at, towards, step = (f for f in found if f is not None)
    rows_columns = (dataset.get("Rows"), dataset.get("Columns"))
    if rows_columns != (size[1], size[0]):
        return f"{rows_columns[0]} x {rows_columns[1]} pixels, the scan's slices {size[1]} x {size[0]}"
    if not np.allclose(at, position, rtol=0, atol=ORIGIN_ATOL_MM):
        return f"lies at {at.round(3).tolist()} mm, the scan's slice at {position.round(3).tolist()}"
    if not np.allclose(towards, orientation, rtol=0, atol=DIRECTION_ATOL):
        return f"orientation {towards.tolist()}, the scan's {orientation.round(6).tolist()}"
    if not np.allclose(step, pixel, rtol=1e-4, atol=0):
        return f"pixel spacing {step.tolist()} mm, the scan's {pixel.tolist()}"
    return None


def _description(segment: Segment, algorithm: hd.AlgorithmIdentificationSequence) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=segment.label,
        segmented_property_category=segment.category,
        segmented_property_type=segment.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[segment.region] if segment.region is not None else None,
    )


def build_segmentation(
    sources: Sequence[pydicom.Dataset],
    labels_zyx: np.ndarray,
    model_fingerprint: str,
    package_sha256: str | None = None,
) -> hd.seg.Segmentation:
    """One binary SEG of ``labels_zyx`` (slice k on ``sources[k]``'s pixels, checked by ``grid_problem``).

    ``model_fingerprint``: the settings fingerprint ``predictions.json`` records, the
    algorithm's parameter that names the models and settings the map came from;
    ``package_sha256``: the model package's hash, a second parameter when predict read one.
    """
    values = {int(v) for v in np.unique(labels_zyx)} - {0}
    known = {s.number for s in SEGMENTS}
    if not values <= known:
        raise PredictError(f"label map holds values {sorted(values - known)}; a DICOM SEG here has segments 1 and 2")
    model_fingerprint = model_fingerprint or "unknown"  # predict_case called without one
    algorithm = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE,
        family=codes.cid7162.ArtificialIntelligence,
        version=software_version(),
        parameters={
            "settings_fingerprint": model_fingerprint,
            **({"package_sha256": package_sha256} if package_sha256 else {}),
        },
    )
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=np.ascontiguousarray(labels_zyx, dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(s, algorithm) for s in SEGMENTS],
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=SOFTWARE,
        software_versions=software_version(),
        device_serial_number=model_fingerprint,
        series_description=SERIES_DESCRIPTION,
        content_label="PANCREAS",
        content_description="pancreas and pancreatic tumour, automatic",
    )


def write_segmentation(seg: hd.seg.Segmentation, path: Path) -> None:
    """Encode in memory, then write atomically (a short write is an error, never a final name)."""
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    write_bytes_atomic(path, buffer.getvalue(), point="dicom-seg")


def write_case_seg(
    files: Sequence[str],
    labels_zyx: np.ndarray,
    grid: Mapping[str, Any],
    path: Path,
    model_fingerprint: str,
    package_sha256: str | None = None,
) -> Path:
    """The SEG of one case's label map (on the grid ``read_image`` read from ``files``), written to ``path``."""
    sources = read_sources(files)
    problem = grid_problem(sources, files, grid)
    if problem:
        raise PredictError(f"{Path(files[0]).parent}: cannot place the DICOM SEG on the series: {problem}")
    write_segmentation(build_segmentation(sources, labels_zyx, model_fingerprint, package_sha256), path)
    log.info("%s: DICOM SEG of %d source instances", path.name, len(sources))
    return path
