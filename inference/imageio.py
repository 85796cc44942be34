"""The few SimpleITK calls inference needs beyond ``preprocess``: arrays out of images,
images written atomically, geometry compared and copied.

Reading (with validation) and the way back to the scan's grid are reused from
``preprocess.io`` and ``preprocess.geometry``; this module only adds the output side that
``preprocess`` has no use for. SimpleITK's (x, y, z) order stays in here: callers see
numpy (z, y, x) arrays and spacings.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from dataset.files import TMP_SUFFIX


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


def nifti_case_name(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def write_image_atomic(image: sitk.Image, path: str | Path) -> None:
    """Write via a temporary file in the same folder, then rename.

    SimpleITK picks the file format from the extension, so the temporary name keeps the
    target's ``.nii.gz`` ending (``.<name>.<random>.tmp.nii.gz``); a killed run leaves only
    such hidden temporaries, never a half-written ``<case>.nii.gz``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{nifti_case_name(path)}.", suffix=f"{TMP_SUFFIX}{ending}", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_image_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporaries a killed prediction left behind."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_SUFFIX}.nii*"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
