"""What ``pancreas evaluate`` adds to the scores of one case: tumour detection, volumes, a picture.

``review_case`` is pure (arrays in, a dict out): tumour-level detection of the prediction
against the truth (``review.detection``) and the statistics of both label maps
(``review.statistics``), measured on the scan's own grid; HU figures need the CT on the
same grid. ``write_pair_picture`` draws the truth-against-prediction case sheet
(``review.sheet``) after turning every map to LPS (``review.orient``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from prediction.config import DetectionConfig
from review.detection import detect_tumours
from review.orient import array_on, display_arrays
from review.sheet import SOFT_TISSUE_WINDOW_HU, write_case_sheet
from review.statistics import case_statistics

log = logging.getLogger(__name__)


def review_case(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    hu: np.ndarray | None = None,
    detection: DetectionConfig = DetectionConfig(),
) -> dict[str, Any]:
    """``tumour_detection`` and ``statistics`` (truth and prediction) of one case."""
    found = detect_tumours(truth, pred, spacing_zyx, min_iou=detection.min_iou, min_voxels=detection.min_tumour_voxels)
    stats = {
        side: case_statistics(labels, spacing_zyx, hu, min_tumour_voxels=detection.min_tumour_voxels)
        for side, labels in (("truth", truth), ("prediction", pred))
    }
    return {"tumour_detection": found, "statistics": stats}


def read_ct_on(path: Path | None, like: sitk.Image, case_id: str) -> sitk.Image | None:
    """The CT at ``path`` when it lies on ``like``'s grid, else None (logged: HU figures are left out)."""
    if path is None:
        return None
    from preprocess.io import InputError, grid_mismatch, read_image

    try:
        image, _ = read_image(path)
    except (InputError, OSError, RuntimeError) as err:
        log.warning("%s: no HU figures or CT in its picture: %s", case_id, err)
        return None
    mismatch = grid_mismatch(like, image)
    if mismatch:
        log.warning("%s: CT %s is not on the truth's grid (%s): no HU figures", case_id, path, mismatch)
        return None
    return image


def hu_array(ct: sitk.Image | None) -> np.ndarray | None:
    return None if ct is None else sitk.GetArrayFromImage(ct).astype(np.float32, copy=False)


def write_pair_picture(
    path: Path,
    case_id: str,
    truth: np.ndarray,
    pred: np.ndarray,
    grid: sitk.Image,
    ct: sitk.Image | None,
    detection: DetectionConfig = DetectionConfig(),
) -> Path:
    """The truth-against-prediction sheet of one case, in LPS; without a CT the outlines lie on black."""
    images = [array_on(truth.astype(np.uint8), grid), array_on(pred.astype(np.uint8), grid)]
    (truth_lps, pred_lps, *rest), spacing = display_arrays([*images, *([ct] if ct is not None else [])])
    background = rest[0].astype(np.float32) if rest else np.zeros(truth_lps.shape, np.float32)
    return write_case_sheet(
        path,
        background,
        spacing,
        case_id,
        label=truth_lps,
        prediction=pred_lps,
        window=SOFT_TISSUE_WINDOW_HU if ct is not None else None,
        min_iou=detection.min_iou,
    )
