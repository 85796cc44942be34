"""Image files in and out: reading and validating one case's files (NIfTI, compressed or
not, or a DICOM series folder), and writing label maps atomically for prediction.

Every problem raises ``InputError`` with one line naming the file and what is wrong, so
the driver can report it and carry on with the other cases. SimpleITK's (x, y, z) order
appears here and in ``geometry``; everything handed on is either an ``sitk.Image`` or a
numpy (z, y, x) array.
"""
from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from dataset.common.files import atomic_path

# NIfTI header "datatype" codes -> numpy names (the type stored on disk, before scl_slope)
NIFTI_DATATYPES = {
    "2": "uint8", "4": "int16", "8": "int32", "16": "float32", "64": "float64",
    "256": "int8", "512": "uint16", "768": "uint32", "1024": "int64", "1280": "uint64",
}
PIXEL_NAMES = {
    sitk.sitkUInt8: "uint8", sitk.sitkInt8: "int8", sitk.sitkUInt16: "uint16",
    sitk.sitkInt16: "int16", sitk.sitkUInt32: "uint32", sitk.sitkInt32: "int32",
    sitk.sitkUInt64: "uint64", sitk.sitkInt64: "int64", sitk.sitkFloat32: "float32",
    sitk.sitkFloat64: "float64",
}
# Two grids are "the same" when they differ by less than these (header float rounding).
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-2
DIRECTION_ATOL = 1e-4
SLAB_VOXELS = 1 << 22


class InputError(ValueError):
    """An input case that cannot be used; the message is one line naming the file."""


def itk_message(err: Exception) -> str:
    """ITK's multi-line exception text reduced to its last, meaningful line."""
    text = str(err)
    if "ITK ERROR" in text:
        text = text.rsplit("ITK ERROR", 1)[1].split(":", 1)[-1]
    text = re.sub(r"\s+", " ", text).strip()
    return text[:240] or type(err).__name__


def _dicom_files(folder: Path) -> list[str]:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(ids) > 1:
        raise InputError(f"{folder}: folder holds {len(ids)} DICOM series; give one series per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def _file_info(path: Path) -> tuple[int, int, str]:
    """(dimension, components per pixel, dtype on disk) without reading the pixels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    dtype = PIXEL_NAMES.get(reader.GetPixelID(), sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    if "datatype" in reader.GetMetaDataKeys():  # NIfTI: the type before scl_slope scaling
        dtype = NIFTI_DATATYPES.get(reader.GetMetaData("datatype").strip(), dtype)
    return reader.GetDimension(), reader.GetNumberOfComponents(), dtype


def nifti_truncation(path: Path) -> str | None:
    """Why a NIfTI-1 file holds fewer voxel bytes than its header promises, else None.

    ITK reads a truncated file without complaint and fills the missing slices with 0: a
    half-copied download would become a "good" case. The check is cheap: an uncompressed
    file's size, or a gzip file's trailer (ISIZE, the uncompressed size mod 2^32); only
    when the trailer disagrees (a truncated stream, or a rare multi-member gzip) is the
    stream decompressed to the end to decide.
    """
    if not path.name.endswith((".nii", ".nii.gz")) or path.is_dir():
        return None
    gz = path.name.endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            header = f.read(348)
    except (OSError, EOFError) as err:
        return f"unreadable header ({err})"
    if len(header) < 348:
        return "file shorter than a NIfTI header"
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", header[:4])[0] != 348:
        return None  # not NIfTI-1 (e.g. NIfTI-2): left to ITK
    dims = struct.unpack(endian + "8h", header[40:56])
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    offset = int(struct.unpack(endian + "f", header[108:112])[0])
    n_voxels = int(np.prod([max(1, d) for d in dims[1:1 + max(0, min(dims[0], 7))]]))
    expected = max(offset, 348) + n_voxels * bitpix // 8
    if not gz:
        size = path.stat().st_size
        return None if size >= expected else f"truncated: header promises {expected} bytes, file has {size}"
    with open(path, "rb") as raw:
        raw.seek(-4, 2)
        isize = struct.unpack("<I", raw.read(4))[0]
    if isize == expected % (1 << 32):
        return None
    try:
        with gzip.open(path, "rb") as f:
            total = 0
            while block := f.read(1 << 24):
                total += len(block)
    except (OSError, EOFError) as err:
        return f"truncated or corrupt gzip stream ({err})"
    return None if total >= expected else f"truncated: header promises {expected} bytes, file has {total}"


def _read(path: Path, pixel_type: int) -> tuple[sitk.Image, str]:
    """Read a file or DICOM folder after checking it is a scalar 3D image."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        files = _dicom_files(path) if path.is_dir() else [str(path)]
        dimension, components, dtype = _file_info(Path(files[0]))
        if path.is_dir():
            dimension = 3
        if dimension != 3:
            raise InputError(f"{path}: image is {dimension}D; expected a 3D volume")
        if components != 1:
            raise InputError(f"{path}: {components} components per voxel; expected a scalar image")
        truncated = nifti_truncation(path)
        if truncated:
            raise InputError(f"{path}: {truncated}")
        image = sitk.ReadImage(files if len(files) > 1 else files[0], pixel_type)
    except RuntimeError as err:
        raise InputError(f"{path}: cannot read ({itk_message(err)})") from None
    if image.GetDimension() != 3:
        raise InputError(f"{path}: image is {image.GetDimension()}D; expected a 3D volume")
    return image, dtype


def nifti_has_non_finite(path: Path, dtype: str) -> bool:
    """Whether a float NIfTI file stores NaN or infinite values.

    ITK's NIfTI reader silently turns NaN and Inf into 0, so the check must look at the
    stored bytes (streamed, only for float files: integer files cannot hold NaN).
    """
    if dtype not in ("float32", "float64") or not path.name.endswith((".nii", ".nii.gz")):
        return False
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(348)
        endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        offset = int(struct.unpack(endian + "f", header[108:112])[0])
        f.read(max(0, offset - 348))
        item = np.dtype(dtype).newbyteorder(endian)
        while block := f.read(item.itemsize * (1 << 20)):
            usable = len(block) - len(block) % item.itemsize
            if not np.isfinite(np.frombuffer(block[:usable], dtype=item)).all():
                return True
    return False


def _nifti_intercept(path: Path) -> float:
    """``scl_inter`` of a NIfTI-1 header (0 when the header sets no scaling)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(348)
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    slope, inter = struct.unpack(endian + "ff", header[112:120])
    return float(inter) if slope not in (0.0,) and np.isfinite(inter) else 0.0


def may_hide_non_finite(values: np.ndarray, path: Path, dtype: str) -> bool:
    """Whether the loaded voxels could be ITK's stand-ins for NaN/Inf of a float NIfTI.

    ITK stores a non-finite value as 0 and then applies the scaling, so it shows up as
    ``scl_inter`` (0 without scaling). A volume holding neither value cannot hide one, and
    the second full decompression of the file (about 1 s for a gzipped 512x512x100 float
    case) is skipped; integer files cannot hold NaN at all.
    """
    if dtype not in ("float32", "float64") or not path.name.endswith((".nii", ".nii.gz")):
        return False
    candidates = {0.0, _nifti_intercept(path)}
    return any(bool((values == np.float32(c)).any()) for c in candidates)


def read_image(path: str | Path) -> tuple[sitk.Image, str]:
    """CT as float32 HU (NIfTI scl_slope/scl_inter and DICOM rescale applied) + dtype on disk."""
    path = Path(path)
    image, dtype = _read(path, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all() or (
        may_hide_non_finite(values, path, dtype) and nifti_has_non_finite(path, dtype)
    ):
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
            f"{where}: label values must be integers in {sorted(allowed)}, "
            f"found range [{values.min()}, {values.max()}]"
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
    image_path: str | Path, label_path: str | Path | None, allowed_labels: tuple[int, ...]
) -> tuple[sitk.Image, str, sitk.Image | None]:
    """Read and validate one case: (float32 HU image, dtype on disk, uint8 label or None)."""
    image, dtype = read_image(image_path)
    if label_path is None:
        return image, dtype, None
    label = validated_label(read_label(label_path), image, allowed_labels, str(label_path))
    return image, dtype, label


# ---------------------------------------------------------------- output side (prediction, evaluation)
def image_array(image: sitk.Image) -> np.ndarray:
    """(z, y, x) numpy copy of the voxels."""
    return sitk.GetArrayFromImage(image)


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    return tuple(float(s) for s in image.GetSpacing()[::-1])


def geometry(image: sitk.Image) -> dict[str, tuple]:
    """size, spacing, origin, direction in ITK's (x, y, z) order, for messages and reports."""
    return {
        "size": tuple(image.GetSize()),
        "spacing": tuple(image.GetSpacing()),
        "origin": tuple(image.GetOrigin()),
        "direction": tuple(image.GetDirection()),
    }


def copy_geometry(target: sitk.Image, source: sitk.Image) -> sitk.Image:
    """``target`` with exactly ``source``'s spacing, origin and direction (same size required)."""
    target.CopyInformation(source)
    return target


def labels_image(labels_zyx: np.ndarray, like: sitk.Image) -> sitk.Image:
    """A uint8 label array on ``like``'s grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_zyx, dtype=np.uint8))
    image.CopyInformation(like)
    return image


def compose(images: Sequence[sitk.Image]) -> sitk.Image:
    """One vector image (one component per class) from scalar images on one grid."""
    return sitk.Compose([sitk.Cast(im, sitk.sitkFloat32) for im in images])


def write_image_atomic(image: sitk.Image, path: str | Path) -> None:
    """Write via a hidden temporary file in the same folder, then rename.

    SimpleITK picks the file format from the extension, so the temporary name keeps the
    target's ending (``.<name>.<random>.tmp.nii.gz``); a killed run leaves only such
    temporaries (``dataset.common.files.remove_stale_temporaries`` removes them), never a
    half-written ``<case>.nii.gz``.
    """
    path = Path(path)
    ending = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, ending=ending) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
