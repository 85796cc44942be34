"""Configs of ``pancreas predict`` / ``evaluate``.

Field defaults are the documented defaults; ``configs/predict.yaml`` repeats them with
comments (a test keeps them equal).
Preprocessing parameters are deliberately absent: prediction reads them from the
run's ``input_contract.json`` so training and inference cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dataset.common.regions import NSD_TOLERANCE_MM, REGIONS
from dataset.contract.predictions import OUTPUT_FORMATS
from prediction.precision import PRECISIONS
from review.detection import DEFAULT_MIN_IOU

LARGEST_COMPONENT_MODES = ("off", "foreground", "per_class")
CHECKPOINTS = ("best", "last")
ROI_MODES = ("auto", "whole")


@dataclass(frozen=True)
class DetectionConfig:
    """How ``pancreas evaluate`` counts tumours found and missed (``review.detection``)."""

    min_iou: float = DEFAULT_MIN_IOU  # a truth tumour is found by a predicted tumour overlapping it this much
    min_tumour_voxels: int = 1  # smaller tumour components are not counted as tumours (1: every one is)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_iou <= 1.0:
            raise ValueError(f"detection.min_iou must be in [0, 1], got {self.min_iou}")
        if self.min_tumour_voxels < 1:
            raise ValueError(f"detection.min_tumour_voxels must be >= 1, got {self.min_tumour_voxels}")


@dataclass(frozen=True)
class PredictConfig:
    """Sliding-window inference settings (see configs/predict.yaml for the why of each)."""

    window_zyx: tuple[int, int, int] | None = None  # None: the contract's default_window_zyx
    overlap: float = 0.5
    batch_size: int = 2
    gaussian_sigma_scale: float = 0.125
    mirror_axes: tuple[int, ...] | None = None  # None: the axes the run's trainer flipped (its contract)
    largest_component: str = "off"
    postprocessing: str | None = None  # a postprocessing.json of `pancreas evaluate --cv`
    save_probabilities: bool = False
    checkpoint: str = "best"
    output_format: str = "nifti"  # "nifti" | "dicom-seg" | "both" (a DICOM SEG needs DICOM input)
    roi: str = "auto"  # "auto": a first pass finds the gland, the full pass covers it (prediction.roi); "whole"
    roi_margin_mm: float = 30.0  # roi: auto: the first pass's boxes widened by this on every side
    # "auto" | "float32" | "bfloat16"; resolved per machine (prediction.precision) before it is recorded
    precision: str = "auto"
    # evaluation only: NSD tolerance (mm) per region of evaluation.metrics.REGIONS
    nsd_tolerance_mm: dict[str, float] = field(default_factory=lambda: dict(NSD_TOLERANCE_MM))
    # evaluation only: tumour-level detection
    detection: DetectionConfig = DetectionConfig()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nsd_tolerance_mm", nsd_tolerances(self.nsd_tolerance_mm))
        if self.window_zyx is not None and any(int(w) < 1 for w in self.window_zyx):
            raise ValueError(f"window_zyx must be positive, got {self.window_zyx}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.gaussian_sigma_scale <= 1.0:
            raise ValueError(f"gaussian_sigma_scale must be in (0, 1], got {self.gaussian_sigma_scale}")
        axes = self.mirror_axes or ()
        if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"mirror_axes must be distinct values of 0 (z), 1 (y), 2 (x), got {self.mirror_axes}")
        if self.largest_component not in LARGEST_COMPONENT_MODES:
            raise ValueError(
                f"largest_component must be one of {LARGEST_COMPONENT_MODES}, got {self.largest_component!r}"
            )
        if self.postprocessing is not None and self.largest_component != "off":
            raise ValueError(
                f"largest_component {self.largest_component!r} and postprocessing "
                f"{self.postprocessing!r} both clean components: use one of them"
            )
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {self.checkpoint!r}")
        if self.roi not in ROI_MODES:
            raise ValueError(f"roi must be one of {ROI_MODES}, got {self.roi!r}")
        if not (math.isfinite(self.roi_margin_mm) and self.roi_margin_mm >= 0):
            raise ValueError(f"roi_margin_mm must be a number >= 0 (mm), got {self.roi_margin_mm}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def nsd_tolerances(value: Any) -> dict[str, float]:
    """A mapping with a tolerance >= 0 mm for exactly the scored regions, as floats."""
    if not isinstance(value, dict):
        raise ValueError(f"nsd_tolerance_mm must be a mapping region -> mm, got {value!r}")
    if set(value) != set(REGIONS):
        raise ValueError(f"nsd_tolerance_mm must give every region {list(REGIONS)} and no other, got {list(value)}")
    bad = {
        k: v
        for k, v in value.items()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
    }
    if bad:
        raise ValueError(f"nsd_tolerance_mm values must be numbers >= 0 (mm), got {bad}")
    return {region: float(value[region]) for region in REGIONS}
