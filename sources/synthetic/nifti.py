"""How a synthetic case is stored: dtype, NIfTI scaling and reproducible bytes.

The writing side only (``sources.nifti`` reads headers back). The same case always
gives the same bytes: gzip runs with mtime 0 and writes go through ``atomic_path`` with
``keep_identical``, so a rerun leaves identical files untouched.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dataset.common.atomic import atomic_path
from dataset.common.verify import verify_size
from sources.nifti import parse_header
from sources.synthetic.params import CaseParams


def to_image(array: np.ndarray, params: CaseParams) -> sitk.Image:
    """``array`` (stored (z, y, x) order) on the case's grid: spacing, origin, direction."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(params.spacing_mm)
    img.SetOrigin(params.origin_mm)
    img.SetDirection(params.direction)
    return img


def stored_array(hu: np.ndarray, params: CaseParams) -> np.ndarray:
    """The values written to disk for ``params.dtype`` (HU = slope * stored + intercept)."""
    if params.dtype == "float32":
        return hu.astype(np.float32)
    raw = np.rint((hu - params.scl_inter) / params.scl_slope)
    info = np.iinfo(np.int32 if params.dtype == "int32" else np.int16)
    return np.clip(raw, info.min, info.max).astype(info.dtype)


def _nifti_bytes(img: sitk.Image, slope: float = 1.0, inter: float = 0.0) -> bytes:
    """Uncompressed NIfTI-1 bytes from SimpleITK, with scl_slope/scl_inter patched in.

    SimpleITK's writer always records slope 1 / intercept 0, so scaling is written by
    editing the header's float32 fields at byte offsets 112 and 116.
    """
    with tempfile.TemporaryDirectory(prefix="synth") as tmp:
        path = Path(tmp) / "case.nii"
        sitk.WriteImage(img, str(path), useCompression=False)
        voxel_bytes = img.GetNumberOfComponentsPerPixel() * img.GetSizeOfPixelComponent()
        verify_size(path, path, 348 + img.GetNumberOfPixels() * voxel_bytes)  # a full disk: a short file, silently
        data = bytearray(path.read_bytes())
    header = parse_header(bytes(data))
    assert header is not None, "SimpleITK wrote a NIfTI-1 header"
    endian = header.endian
    if (slope, inter) != (1.0, 0.0):
        struct.pack_into(endian + "ff", data, 112, slope, inter)
    return bytes(data)


def write_nifti(path: Path, img: sitk.Image, slope: float = 1.0, inter: float = 0.0) -> None:
    """Write atomically; ``.gz`` names are gzipped with mtime 0 so bytes are reproducible."""
    data = _nifti_bytes(img, slope, inter)
    with atomic_path(path, keep_identical=True) as tmp:
        if path.name.endswith(".gz"):
            with (
                open(tmp, "wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz,
            ):
                gz.write(data)
        else:
            tmp.write_bytes(data)
