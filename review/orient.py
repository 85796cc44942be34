"""SimpleITK images to the arrays a case sheet draws: every map turned to LPS first.

``review.sheet`` shows axial slices as radiological views of an LPS grid; a scan stored
in another orientation (Task07's NIfTI files are mostly RAS-like) would otherwise appear
mirrored or upside down. ``DICOMOrient`` only permutes and flips axes: no resampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

DISPLAY_ORIENTATION = "LPS"


def display_arrays(images: Sequence[sitk.Image]) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    """(z, y, x) arrays of ``images`` (one grid) in LPS order, and their spacing (z, y, x) in mm."""
    oriented = [sitk.DICOMOrient(image, DISPLAY_ORIENTATION) for image in images]
    x, y, z = oriented[0].GetSpacing()
    return [sitk.GetArrayFromImage(image) for image in oriented], (float(z), float(y), float(x))


def array_on(values: np.ndarray, like: sitk.Image) -> sitk.Image:
    """``values`` (z, y, x) as an image on ``like``'s grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(values))
    image.CopyInformation(like)
    return image
