"""The ``msd`` synth profile: grids and tumour sizes drawn like MSD Task07_Pancreas's.

Where the numbers come from: docs/explanation/design-facts.md#the-dataset-msd-task07_pancreas; the
draws: docs/explanation/internals.md#synthetic-datasets-sourcessynthetic.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from scipy.special import ndtr, ndtri

from dataset.common.errors import UsageError

MSD_INPLANE_VOXELS = 512
MSD_INPLANE_MM = (0.6, 0.8, 1.0)  # triangular: low, mode, high
# reconstruction thicknesses (mm) and how often each is drawn: median 2.5 mm
MSD_SLICE_MM = (0.7, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
MSD_SLICE_WEIGHTS = (0.06, 0.06, 0.06, 0.06, 0.08, 0.50, 0.08, 0.10)
MSD_COVERAGE_MEDIAN_MM, MSD_COVERAGE_SIGMA = 240.0, 0.3  # scan length: log-normal
MSD_MIN_SLICES, MSD_MAX_SLICES = 37, 751
MSD_FEWEST_INDEX, MSD_FEWEST = 1, (37, 2.5)  # (slices, slice mm)
MSD_MOST_INDEX, MSD_MOST = 2, (751, 0.7)  # the memory case: 526 mm at 0.7 mm
TUMOUR_DIAMETER_MEDIAN_MM, TUMOUR_DIAMETER_SIGMA = 25.0, 0.5
TUMOUR_DIAMETER_RANGE_MM = (5.0, 60.0)
TUMOUR_ASPECT_RANGE = (0.7, 1.0)  # shorter semi-axes / the longest


def draw_msd_extent(
    rng: np.random.Generator, index: int, inplane_voxels: int | None = None
) -> tuple[float, int, float, int]:
    """In-plane spacing (mm), in-plane voxels, slice thickness (mm) and slice count.

    ``inplane_voxels`` (tests) samples the same field of view with fewer, larger pixels:
    the patient and every other draw stay the same.
    """
    inplane = float(rng.triangular(*MSD_INPLANE_MM))
    thickness = float(MSD_SLICE_MM[int(rng.choice(len(MSD_SLICE_MM), p=MSD_SLICE_WEIGHTS))])
    coverage = float(rng.lognormal(np.log(MSD_COVERAGE_MEDIAN_MM), MSD_COVERAGE_SIGMA))
    n_z = int(np.clip(round(coverage / thickness), MSD_MIN_SLICES, MSD_MAX_SLICES))
    if index == MSD_FEWEST_INDEX:
        n_z, thickness = MSD_FEWEST
    elif index == MSD_MOST_INDEX:
        n_z, thickness = MSD_MOST
    n_xy = MSD_INPLANE_VOXELS
    if inplane_voxels is not None:
        if inplane_voxels < 8:
            raise UsageError(f"inplane_voxels must be >= 8, got {inplane_voxels}")
        inplane, n_xy = inplane * MSD_INPLANE_VOXELS / inplane_voxels, int(inplane_voxels)
    return inplane, n_xy, float(thickness), n_z


def truncated_lognormal(u: float, median: float, sigma: float, lo: float, hi: float) -> float:
    """The quantile ``u`` (0..1) of a log-normal truncated to [lo, hi]: one uniform draw, no rejection loop."""
    a, b = ndtr(np.log(lo / median) / sigma), ndtr(np.log(hi / median) / sigma)
    return float(np.clip(median * np.exp(sigma * ndtri(a + u * (b - a))), lo, hi))


def draw_tumour_semi_axes(rng: np.random.Generator) -> tuple[float, float, float]:
    """Semi-axes (mm) of a tumour whose largest diameter follows the assumed log-normal."""
    diameter = truncated_lognormal(
        float(rng.random()), TUMOUR_DIAMETER_MEDIAN_MM, TUMOUR_DIAMETER_SIGMA, *TUMOUR_DIAMETER_RANGE_MM
    )
    shape = rng.uniform(*TUMOUR_ASPECT_RANGE, size=3)
    return cast("tuple[float, float, float]", tuple(float(v) for v in diameter / 2.0 * shape / shape.max()))
