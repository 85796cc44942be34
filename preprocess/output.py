"""Images out: numpy copies, geometry for reports, and label maps written atomically.

Prediction and evaluation use these to put results back on a scan's grid; SimpleITK's
(x, y, z) order stays inside ``preprocess``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import SimpleITK as sitk

from dataset.common.atomic import atomic_path
from dataset.common.verify import verify_gzip, verify_size

NIFTI_HEADER_BYTES = 348


def image_array(image: sitk.Image) -> np.ndarray:
    """(z, y, x) numpy copy of the voxels."""
    return sitk.GetArrayFromImage(image)


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    return cast("tuple[float, float, float]", tuple(float(s) for s in image.GetSpacing()[::-1]))


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
    """Write through ``atomic_path``: durable, renamed into place (crash points ``<name>:written/renamed``).

    SimpleITK picks the file format from the extension, so the temporary name keeps the
    target's ending; a killed run leaves only such temporaries (the lock holder sweeps
    them), never a half-written ``<case>.nii.gz``.
    """
    path = Path(path)
    ending = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, ending=ending) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        verify_nifti(tmp, path, image)


def nifti_min_bytes(image: sitk.Image) -> int:
    """The fewest bytes a NIfTI-1 file of ``image`` holds uncompressed: header plus voxels."""
    voxel_bytes = image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    return NIFTI_HEADER_BYTES + image.GetNumberOfPixels() * voxel_bytes


def verify_nifti(tmp: Path, path: Path, image: sitk.Image) -> None:
    """SimpleITK's writer meets a full disk silently (or only prints ``** ERROR: NWAD``): check
    the file before it is renamed into place (``dataset.common.verify``)."""
    if path.name.endswith(".gz"):
        verify_gzip(tmp, path, nifti_min_bytes(image))
    elif path.name.endswith(".nii"):
        verify_size(tmp, path, nifti_min_bytes(image))
