"""The regions `pancreas evaluate` scores and their default NSD tolerances.

Plain constants, free of numpy and scipy, so that the configs (``prediction.config``, which
``pancreas download`` also loads) can validate against them without importing the metrics.
"""

from __future__ import annotations

# Regions scored by `pancreas evaluate`: name -> labels that make up the region.
# "pancreas" is the whole gland including the tumour (the MSD challenge's convention for
# the organ score): a tumour voxel is pancreas, and a voxel labelled tumour in one map and
# pancreas in the other is a tumour error, not also an organ error. "pancreas_label1" is
# label 1 alone, the per-label score of nnU-Net's published tables (its 0.82 on Task07).
REGIONS: dict[str, tuple[int, ...]] = {"pancreas": (1, 2), "pancreas_label1": (1,), "tumour": (2,)}

# NSD tolerance (mm) per region: the defaults of PredictConfig.nsd_tolerance_mm and
# configs/predict.yaml, whose comment and the README say where they come from.
NSD_TOLERANCE_MM: dict[str, float] = {"pancreas": 5.0, "pancreas_label1": 5.0, "tumour": 2.0}
