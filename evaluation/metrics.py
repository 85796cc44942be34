"""Segmentation metrics on numpy masks: Dice, NSD and the 95th-percentile Hausdorff distance.

Conventions (absent regions, undefined HD95, NSD tolerances): docs/how-to/evaluate.md#the-metrics and
docs/explanation/internals.md#metric-conventions-evaluationmetricspy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from dataset.common.regions import NSD_TOLERANCE_MM, REGIONS
from evaluation.surface import check_spacing, surface_dice

METRICS = ("dice", "nsd", "hd95_mm")

_FACES = ndimage.generate_binary_structure(3, 1)


def region_mask(labels: np.ndarray, region_labels: Sequence[int]) -> np.ndarray:
    return np.isin(labels, np.asarray(region_labels, dtype=labels.dtype))


def region_status(pred: np.ndarray, truth: np.ndarray) -> str:
    """'both', 'absent', 'missed' (only in truth) or 'false_positive' (only in prediction)."""
    p, t = bool(pred.any()), bool(truth.any())
    return {(True, True): "both", (False, False): "absent", (False, True): "missed", (True, False): "false_positive"}[
        (p, t)
    ]


def dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """2|P & T| / (|P| + |T|); None when both masks are empty."""
    pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    coords = np.nonzero(mask)
    return tuple(
        slice(max(0, int(c.min()) - margin), min(n, int(c.max()) + 1 + margin)) for c, n in zip(coords, mask.shape)
    )


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside it (the volume edge counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_FACES, border_value=0)


def surface_distances(from_mask: np.ndarray, to_mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Distance (mm) from each surface voxel of ``from_mask`` to the surface of ``to_mask``."""
    to_surface = surface(to_mask)
    distance_to = ndimage.distance_transform_edt(~to_surface, sampling=tuple(float(s) for s in spacing_zyx))
    return distance_to[surface(from_mask)]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> float | None:
    """Symmetric 95th-percentile Hausdorff distance in mm; None unless both masks are non-empty.

    Works on the bounding box of both masks plus one voxel: every surface voxel and every
    nearest surface voxel lies inside it, so the distances are exact while the distance
    transform runs on a small array instead of the whole scan.
    """
    pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, truth {truth.shape}")
    check_spacing(spacing_zyx)
    if not pred.any() or not truth.any():
        return None
    box = _bounding_box(pred | truth, margin=1)
    p, t = pred[box], truth[box]
    pooled = np.concatenate([surface_distances(p, t, spacing_zyx), surface_distances(t, p, spacing_zyx)])
    return float(np.percentile(pooled, 95))


def score_case(
    pred_labels: np.ndarray,
    truth_labels: np.ndarray,
    spacing_zyx: Sequence[float],
    regions: Mapping[str, tuple[int, ...]] = REGIONS,
    nsd_tolerance_mm: Mapping[str, float] = NSD_TOLERANCE_MM,
) -> dict[str, dict[str, object]]:
    """{region: {"dice", "nsd", "hd95_mm", "status"}} for one case's label maps."""
    if pred_labels.shape != truth_labels.shape:
        raise ValueError(f"shapes differ: prediction {pred_labels.shape}, truth {truth_labels.shape}")
    missing = [name for name in regions if name not in nsd_tolerance_mm]
    if missing:
        raise ValueError(f"no NSD tolerance for region(s) {missing}; nsd_tolerance_mm has {dict(nsd_tolerance_mm)}")
    out: dict[str, dict[str, object]] = {}
    for name, labels in regions.items():
        p, t = region_mask(pred_labels, labels), region_mask(truth_labels, labels)
        out[name] = {
            "dice": dice(p, t),
            "nsd": surface_dice(p, t, spacing_zyx, nsd_tolerance_mm[name]),
            "hd95_mm": hd95(p, t, spacing_zyx),
            "status": region_status(p, t),
        }
    return out


def summarise(cases: dict[str, dict[str, dict[str, Any]]], regions: Sequence[str] = tuple(REGIONS)) -> dict:
    """Mean and median of each metric per region over cases where it is defined.

    ``n`` counts the cases in the statistic; ``n_absent`` the cases where the region is in
    neither map; ``n_undefined`` the cases whose metric is None for another reason
    (HD95 of a missed or false-positive region). A metric a case lacks (a report written
    before it existed) counts as undefined.
    """
    summary: dict[str, dict] = {}
    for region in regions:
        rows = [c[region] for c in cases.values() if region in c]
        n_absent = sum(1 for r in rows if r["status"] == "absent")
        summary[region] = {}
        for metric in METRICS:
            values = [float(r[metric]) for r in rows if r.get(metric) is not None]
            summary[region][metric] = {
                "mean": float(np.mean(values)) if values else None,
                "median": float(np.median(values)) if values else None,
                "n": len(values),
                "n_absent": n_absent,
                "n_undefined": len(rows) - n_absent - len(values),
            }
    return summary
