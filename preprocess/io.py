"""Images in: reading and validating one case's files with SimpleITK (NIfTI, or a DICOM series folder).

Every problem raises ``InputError`` with one line naming the file, so the driver carries on with the
other cases. See docs/explanation/internals.md#reading-a-case-preprocessiopy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dataset.common.errors import PancreasError
from dataset.common.links import broken_link
from dataset.common.slabs import z_slabs
from preprocess.dicom import irregular_slices, series_files, series_ids
from preprocess.limits import STREAM_SLAB_VOXELS
from sources import nifti

PIXEL_NAMES = {
    sitk.sitkUInt8: "uint8",
    sitk.sitkInt8: "int8",
    sitk.sitkUInt16: "uint16",
    sitk.sitkInt16: "int16",
    sitk.sitkUInt32: "uint32",
    sitk.sitkInt32: "int32",
    sitk.sitkUInt64: "uint64",
    sitk.sitkInt64: "int64",
    sitk.sitkFloat32: "float32",
    sitk.sitkFloat64: "float64",
}
# Two grids are "the same" when they differ by less than these (header float rounding).
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-4
SLAB_VOXELS = 1 << 22


class InputError(PancreasError, ValueError):
    """An input case that cannot be used; the message is one line naming the file."""


def itk_message(err: Exception) -> str:
    """ITK's multi-line exception text reduced to its last, meaningful line."""
    text = str(err)
    if "ITK ERROR" in text:
        text = text.rsplit("ITK ERROR", 1)[1].split(":", 1)[-1]
    text = re.sub(r"\s+", " ", text).strip()
    return text[:240] or type(err).__name__


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, before any voxel is read (ITK's x, y, z order, mm)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int
    dtype: str  # voxel type on disk (NIfTI: before scl_slope scaling)


def read_image_info(path: str | Path) -> ImageInfo:
    """The header of one image file (not a DICOM folder); ``RuntimeError`` from ITK if unreadable,
    ``InputError`` for NIfTI geometry numbers that ITK must not be given (``nifti.geometry_problem``)."""
    path = Path(path)
    problem = nifti.file_geometry_problem(path) if nifti.is_nifti(path) else None
    if problem:
        raise InputError(f"{path}: {problem}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    dtype = PIXEL_NAMES.get(reader.GetPixelID(), sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    if nifti.is_nifti(path):
        try:
            header = nifti.read_header(path)
        except nifti.READ_ERRORS:
            header = None
        if header is not None and header.dtype:
            dtype = header.dtype
    return ImageInfo(
        tuple(reader.GetSize()),
        tuple(reader.GetSpacing()),
        tuple(reader.GetOrigin()),
        tuple(reader.GetDirection()),
        reader.GetNumberOfComponents(),
        dtype,
    )


def dicom_series_files(folder: Path, series_uid: str | None = None) -> list[str]:
    """The files of the folder's one series, or of series ``series_uid`` in it or below it, in the
    order ``read_image`` reads them (its z index k is file k; a DICOM SEG references them so).

    A given series is looked for below the folder too when it has sub-folders (a series
    spread over several folders is read from their common one, ``preprocess.dicom``).
    """
    if series_uid is not None:
        below = any(child.is_dir() and not child.name.startswith(".") for child in folder.iterdir())
        files = series_files(folder, series_uid, recursive=below)
        if not files:
            raise InputError(f"{folder}: holds no DICOM series {series_uid}")
        return list(files)
    ids = series_ids(folder)
    if not ids:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(ids) > 1:
        raise InputError(
            f"{folder}: folder holds {len(ids)} DICOM series ({', '.join(sorted(ids))}); give one "
            "series per folder (`pancreas predict` reads each series of a folder as its own case)"
        )
    return list(series_files(folder, ids[0]))


def _read(path: Path, pixel_type: int, series_uid: str | None = None) -> tuple[sitk.Image, str]:
    """Read a file or DICOM folder after checking it is a scalar 3D image."""
    link = broken_link(path)
    if link:
        raise InputError(link)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if series_uid is not None and not path.is_dir():
        raise InputError(f"{path}: DICOM series {series_uid} was asked for, but this is not a folder")
    where = f"{path} (series {series_uid})" if series_uid is not None else str(path)
    try:
        files = dicom_series_files(path, series_uid) if path.is_dir() else [str(path)]
        info = read_image_info(files[0])
        dimension = 3 if path.is_dir() else len(info.size)
        if dimension != 3:
            raise InputError(f"{where}: image is {dimension}D; expected a 3D volume")
        if info.components != 1:
            raise InputError(f"{where}: {info.components} components per voxel; expected a scalar image")
        truncated = nifti.truncation(path)
        if truncated:
            raise InputError(f"{where}: {truncated}")
        irregular = irregular_slices(files) if len(files) > 1 else None
        if irregular:
            raise InputError(f"{where}: DICOM series refused, {irregular}; fix the export (it is not resampled)")
        image = sitk.ReadImage(files, pixel_type) if len(files) > 1 else read_file(files[0], pixel_type)
    except RuntimeError as err:
        raise InputError(f"{where}: cannot read ({itk_message(err)})") from None
    if image.GetDimension() != 3:
        raise InputError(f"{where}: image is {image.GetDimension()}D; expected a 3D volume")
    return image, info.dtype


def read_file(path: str, pixel_type: int, slab_voxels: int | None = None) -> sitk.Image:
    """One image file as ``pixel_type`` (``sitkUnknown``: as stored), a large NIfTI in z-slabs.

    ITK's NIfTI reader holds a whole image twice (its own buffer, then the output's; a
    third copy when it casts), so a 512x512x751 float32 scan peaked at 1.71 GB just being
    read. Above ``slab_voxels`` the image is allocated once and filled in place with
    streamed reads of at most ``slab_voxels`` (``ImageFileReader`` extract regions, which
    the NIfTI reader serves without the rest of the volume), so the transient is one
    slab's (``slab_voxels`` default: ``STREAM_SLAB_VOXELS``). Same voxels and geometry as
    one read. The price: a ``.nii.gz`` cannot seek,
    so every slab decompresses the file from its start (k slabs cost about (k + 1) / 2
    reads; 3.1 s -> 6.7 s for the 751-slice scan in 4 slabs). Other formats, whose
    readers may not stream, are read whole.
    """
    slab_voxels = slab_voxels or STREAM_SLAB_VOXELS
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetOutputPixelType(pixel_type)
    reader.ReadImageInformation()
    size = reader.GetSize()
    if not nifti.is_nifti(Path(path)) or len(size) != 3 or math.prod(size) <= slab_voxels:
        return reader.Execute()
    step = max(1, slab_voxels // (size[0] * size[1]))
    image = None
    for z in range(0, size[2], step):
        n = min(step, size[2] - z)
        reader.SetExtractIndex((0, 0, z))
        reader.SetExtractSize((size[0], size[1], n))
        slab = reader.Execute()
        if image is None:  # the pixel type the reader gives (a scaled integer NIfTI comes out float)
            image = sitk.Image(size, slab.GetPixelID())
            image.SetOrigin(reader.GetOrigin())
            image.SetSpacing(reader.GetSpacing())
            image.SetDirection(reader.GetDirection())
        image[:, :, z : z + n] = slab  # SimpleITK pastes in place
        del slab
    assert image is not None  # the volume has at least one slab (an empty one was read whole)
    return image


def all_finite(values: np.ndarray) -> bool:
    """``np.isfinite(values).all()`` without a whole-volume boolean temporary."""
    return all(np.isfinite(values[z]).all() for z in z_slabs(values.shape, SLAB_VOXELS))


def read_image(path: str | Path, series_uid: str | None = None) -> tuple[sitk.Image, str]:
    """CT as float32 HU (NIfTI scl_slope/scl_inter and DICOM rescale applied) + dtype on disk.

    ``series_uid``: for a DICOM folder, the series to read (required when it holds several).
    """
    path = Path(path)
    image, dtype = _read(path, sitk.sitkFloat32, series_uid)
    values = sitk.GetArrayViewFromImage(image)
    if not all_finite(values) or (nifti.may_hide_non_finite(values, path, dtype) and nifti.has_non_finite(path, dtype)):
        raise InputError(f"{path}: image contains NaN or infinite values")
    return image, dtype


def read_label(path: str | Path) -> sitk.Image:
    """Label in its stored pixel type (values are checked before any cast)."""
    image, _ = _read(Path(path), sitk.sitkUnknown)
    return image


def grid_mismatch(a: sitk.Image, b: sitk.Image) -> str | None:
    """Why two images are not on the same voxel grid, or None if they are."""
    if a.GetSize() != b.GetSize():
        return f"size {b.GetSize()} != image size {a.GetSize()}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=SPACING_RTOL, atol=0):
        return f"spacing {b.GetSpacing()} != image spacing {a.GetSpacing()}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=ORIGIN_ATOL_MM):
        return f"origin {b.GetOrigin()} != image origin {a.GetOrigin()}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        return f"direction {b.GetDirection()} != image direction {a.GetDirection()}"
    return None


def label_value_counts(values: np.ndarray) -> np.ndarray | None:
    """Voxels of each value 0..255, or None if some value is not an integer in 0..255."""
    if values.size == 0:
        return np.zeros(256, dtype=np.int64)
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        return None
    counts = np.zeros(256, dtype=np.int64)
    flat = values.reshape(-1)
    for start in range(0, flat.size, SLAB_VOXELS):
        part = flat[start : start + SLAB_VOXELS]
        if part.dtype.kind == "f" and not np.array_equal(part, np.rint(part)):
            return None
        counts += np.bincount(part.astype(np.intp), minlength=256)[:256]
    return counts


def validated_label(label: sitk.Image, image: sitk.Image, allowed: tuple[int, ...], where: str) -> sitk.Image:
    """The label as uint8 on exactly the image's grid; InputError if it does not fit."""
    mismatch = grid_mismatch(image, label)
    if mismatch:
        raise InputError(f"{where}: label is on another grid than its image: {mismatch}")
    values = sitk.GetArrayViewFromImage(label)
    if values.dtype.kind in "iu" and values.size:
        low, high = int(values.min()), int(values.max())
        if low >= 0 and all(v in allowed for v in range(low, high + 1)):  # common case: no counting
            return _as_uint8_on(label, image)
    counts = label_value_counts(values)
    if counts is None:
        raise InputError(
            f"{where}: label values must be integers in {sorted(allowed)}, found range [{values.min()}, {values.max()}]"
        )
    unexpected = [v for v in np.flatnonzero(counts) if v not in allowed]
    if unexpected:
        found = ", ".join(f"{v} ({counts[v]} voxels)" for v in unexpected[:5])
        raise InputError(f"{where}: label values not in the declared labels {sorted(allowed)}: {found}")
    return _as_uint8_on(label, image)


def _as_uint8_on(label: sitk.Image, image: sitk.Image) -> sitk.Image:
    """A checked label as uint8 carrying exactly the image's geometry."""
    if label.GetPixelID() != sitk.sitkUInt8:
        label = sitk.Cast(label, sitk.sitkUInt8)
    label.CopyInformation(image)
    return label


def read_case(
    image_path: str | Path,
    label_path: str | Path | None,
    allowed_labels: tuple[int, ...],
    series_uid: str | None = None,
) -> tuple[sitk.Image, str, sitk.Image | None]:
    """Read and validate one case: (float32 HU image, dtype on disk, uint8 label or None).

    ``series_uid``: the image's DICOM series, when its folder holds several.
    """
    image, dtype = read_image(image_path, series_uid)
    if label_path is None:
        return image, dtype, None
    label = validated_label(read_label(label_path), image, allowed_labels, str(label_path))
    return image, dtype, label
