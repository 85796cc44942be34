"""Tumour-level detection between a truth and a predicted label map: found, missed and false tumours.

A tumour is a 26-connected component of label 2; matching is many-to-many by IoU >= ``min_iou``
(default 0.1). The rule and why: docs/how-to/evaluate.md#tumour-detection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from review.statistics import (
    bounding_box,
    centre_voxel,
    check_spacing,
    check_volume,
    longest_axial_diameter_mm,
    tumour_components,
    tumour_mask,
    voxel_ml,
)

DEFAULT_MIN_IOU = 0.1
# truth tumour long axis (mm) bins: (name, low inclusive, high exclusive)
DIAMETER_BINS_MM = (("<10", 0.0, 10.0), ("10-20", 10.0, 20.0), ("20-30", 20.0, 30.0), (">=30", 30.0, float("inf")))


def overlap_counts(truth_ids: np.ndarray, pred_ids: np.ndarray, n_truth: int, n_pred: int) -> np.ndarray:
    """Joint voxel counts: entry [i, j] is the number of voxels in truth component i and predicted j (0 = none)."""
    joint = truth_ids.astype(np.int64).ravel() * (n_pred + 1) + pred_ids.ravel()
    return np.bincount(joint, minlength=(n_truth + 1) * (n_pred + 1)).reshape(n_truth + 1, n_pred + 1)


def iou_matrix(counts: np.ndarray) -> np.ndarray:
    """Intersection over union of every [truth, pred] component pair, from ``overlap_counts``."""
    inter = counts[1:, 1:]
    truth_size = counts[1:, :].sum(1)[:, None]
    pred_size = counts[:, 1:].sum(0)[None, :]
    return inter / np.maximum(truth_size + pred_size - inter, 1)


def _component_record(ids: np.ndarray, number: int, offset: np.ndarray, spacing: Sequence[float]) -> dict:
    """Volume, long axis and centre (whole-array voxel index) of component ``number``."""
    mask = ids == number
    centre = np.array(centre_voxel(mask)) + offset
    return {
        "volume_ml": int(mask.sum()) * voxel_ml(spacing),
        "diameter_mm": longest_axial_diameter_mm(mask, spacing),
        "centre_zyx": [int(v) for v in centre],
    }


def detect_tumours(
    truth: np.ndarray,
    pred: np.ndarray,
    spacing_zyx: Sequence[float],
    min_iou: float = DEFAULT_MIN_IOU,
    min_voxels: int = 1,
) -> dict[str, Any]:
    """Found, missed and false tumours of one case (rule and default in the module docstring).

    Returns counts (``truth``, ``predicted``, ``detected``, ``missed``, ``false``), one record per truth
    tumour (largest first: ``volume_ml``, ``diameter_mm``, ``detected``, ``dice`` against the union of the
    predicted tumours that matched it, 0.0 if missed, ``iou`` the best single match, ``centre_zyx``) and one
    per false tumour. Components under ``min_voxels`` are ignored on both sides.
    """
    truth, pred = check_volume(truth, "truth"), check_volume(pred, "pred")
    if truth.shape != pred.shape:
        raise ValueError(f"truth has shape {truth.shape} but pred has shape {pred.shape}")
    if not 0.0 <= min_iou <= 1.0:
        raise ValueError(f"min_iou must lie in [0, 1], got {min_iou}")
    spacing = check_spacing(spacing_zyx)
    box = bounding_box(tumour_mask(truth) | tumour_mask(pred))
    if box is None:
        return {"truth": 0, "predicted": 0, "detected": 0, "missed": 0, "false": 0, "tumours": [], "false_tumours": []}
    offset = np.array([s.start for s in box])
    truth_ids, n_truth = tumour_components(truth[box], min_voxels)
    pred_ids, n_pred = tumour_components(pred[box], min_voxels)
    counts = overlap_counts(truth_ids, pred_ids, n_truth, n_pred)
    inter, iou = counts[1:, 1:], iou_matrix(counts)
    matched = (inter > 0) & (iou >= min_iou)
    truth_size, pred_size = counts[1:, :].sum(1), counts[:, 1:].sum(0)
    tumours = []
    for i in range(n_truth):
        hits = matched[i]
        dice = 2.0 * inter[i, hits].sum() / (truth_size[i] + pred_size[hits].sum()) if hits.any() else 0.0
        record = _component_record(truth_ids, i + 1, offset, spacing)
        record.update(detected=bool(hits.any()), dice=float(dice), iou=float(iou[i].max(initial=0.0)))
        tumours.append(record)
    false_tumours = [
        _component_record(pred_ids, j + 1, offset, spacing) for j in range(n_pred) if not matched[:, j].any()
    ]
    detected = sum(t["detected"] for t in tumours)
    return {
        "truth": n_truth,
        "predicted": n_pred,
        "detected": detected,
        "missed": n_truth - detected,
        "false": len(false_tumours),
        "tumours": tumours,
        "false_tumours": false_tumours,
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, None when there is nothing to divide by."""
    return numerator / denominator if denominator else None


def detection_summary(per_case: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Tumour-level and case-level detection over cases (each a ``detect_tumours`` result).

    Tumour level: ``sensitivity`` = detected / truth tumours, ``false_per_case`` = false tumours / cases,
    and ``by_diameter_mm``: sensitivity per truth long-axis bin (<10, 10-20, 20-30, >=30 mm, lower bound
    inclusive). Case level: a case is positive when it has a truth tumour and predicted positive when it
    has any predicted tumour, found or false (the screening view: "this scan needs a look");
    ``case_sensitivity`` = predicted positive / positive cases, ``case_specificity`` = predicted negative /
    negative cases. A ratio without cases to count is None.
    """
    cases = list(per_case.values())
    truth = sum(c["truth"] for c in cases)
    detected = sum(c["detected"] for c in cases)
    false = sum(c["false"] for c in cases)
    positive = [c for c in cases if c["truth"] > 0]
    negative = [c for c in cases if c["truth"] == 0]
    bins = {}
    for name, low, high in DIAMETER_BINS_MM:
        found = [t["detected"] for c in cases for t in c["tumours"] if low <= t["diameter_mm"] < high]
        bins[name] = {"truth": len(found), "detected": sum(found), "sensitivity": _ratio(sum(found), len(found))}
    return {
        "cases": len(cases),
        "tumours": truth,
        "detected": detected,
        "false": false,
        "sensitivity": _ratio(detected, truth),
        "false_per_case": _ratio(false, len(cases)),
        "positive_cases": len(positive),
        "negative_cases": len(negative),
        "case_sensitivity": _ratio(sum(c["predicted"] > 0 for c in positive), len(positive)),
        "case_specificity": _ratio(sum(c["predicted"] == 0 for c in negative), len(negative)),
        "by_diameter_mm": bins,
    }
