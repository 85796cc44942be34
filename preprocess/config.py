"""Preprocessing parameters: one frozen dataclass whose defaults are the documented defaults.

``configs/preprocess.yaml`` repeats these defaults with comments (a test keeps the two
equal). The resolved config is written into every shard and the catalog, and its
fingerprint decides whether a stored case must be redone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset.common.configio import load_config, to_dict
from dataset.common.fingerprints import fingerprint_json

INTERPOLATIONS = ("linear", "bspline")
INT16_RANGE = (-32768, 32767)
RESULT_LIBRARIES = ("SimpleITK", "numpy")  # libraries whose version changes what a shard stores


@dataclass(frozen=True)
class GeometryLimits:
    """What a CT's header may say before a case is refused (``preprocess.limits``).

    Checked from the header before any voxel is read: a NIfTI whose units say micrometres
    or metres (0.0008 or 800 mm voxels) would otherwise become a 1x1x1 shard or ask ITK
    for a terabyte grid.
    """

    min_spacing_mm: float = 0.1  # CT voxels: about 0.2-1 mm in-plane, 0.5-10 mm between slices
    max_spacing_mm: float = 20.0
    max_extent_mm: float = 2000.0  # scan size along any axis: a whole-body CT is under 2 m
    max_resampled_voxels: int = 1_000_000_000  # resampled grid before the crop (4 GB as float32)

    def __post_init__(self) -> None:
        if not (0 < self.min_spacing_mm < self.max_spacing_mm and math.isfinite(self.max_spacing_mm)):
            raise ValueError(
                f"limits need 0 < min_spacing_mm < max_spacing_mm, got {self.min_spacing_mm} and {self.max_spacing_mm}"
            )
        if not (math.isfinite(self.max_extent_mm) and self.max_extent_mm > 0):
            raise ValueError(f"limits.max_extent_mm must be > 0, got {self.max_extent_mm}")
        if self.max_resampled_voxels < 1:
            raise ValueError(f"limits.max_resampled_voxels must be >= 1, got {self.max_resampled_voxels}")


@dataclass(frozen=True)
class PreprocessConfig:
    """How one CT becomes a stored case (see ``preprocess.pipeline.preprocess_image``)."""

    target_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (x, y, z)
    image_interpolation: str = "linear"  # linear | bspline (bspline is about 15x slower)
    window_hu: tuple[float, float] = (-135.0, 250.0)
    equalize: bool = True
    histogram_bins: int = 256
    equalize_body_only: bool = False
    body_threshold_hu: float = -500.0
    crop_margin_mm: float = 10.0
    crop_to_body: bool = True
    label_values: tuple[int, ...] = (0, 1, 2)
    limits: GeometryLimits = field(default_factory=GeometryLimits)  # not in the fingerprint

    def __post_init__(self) -> None:
        if len(self.target_spacing_mm) != 3 or not all(math.isfinite(s) and s > 0 for s in self.target_spacing_mm):
            raise ValueError(f"target_spacing_mm must be 3 positive numbers (x, y, z), got {self.target_spacing_mm}")
        if self.image_interpolation not in INTERPOLATIONS:
            raise ValueError(f"image_interpolation must be one of {INTERPOLATIONS}, got {self.image_interpolation!r}")
        low, high = self.window_hu
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"window_hu must be (low, high) with low < high, got {self.window_hu}")
        if math.floor(high) - math.ceil(low) < 1:
            raise ValueError(f"window_hu must contain at least two integer HU values, got {self.window_hu}")
        if low < INT16_RANGE[0] or high > INT16_RANGE[1]:
            raise ValueError(f"window_hu must lie within {INT16_RANGE} HU, got {self.window_hu}")
        if self.histogram_bins < 2:
            raise ValueError(f"histogram_bins must be >= 2, got {self.histogram_bins}")
        if not math.isfinite(self.body_threshold_hu):
            raise ValueError(f"body_threshold_hu must be finite, got {self.body_threshold_hu}")
        if not (math.isfinite(self.crop_margin_mm) and self.crop_margin_mm >= 0):
            raise ValueError(f"crop_margin_mm must be >= 0, got {self.crop_margin_mm}")
        values = self.label_values
        if (
            not values
            or 0 not in values
            or len(set(values)) != len(values)
            or not all(isinstance(v, int) and 0 <= v <= 255 for v in values)
        ):
            raise ValueError(f"label_values must be distinct integers in 0..255 including 0, got {values}")


def load_preprocess_config(path: str | Path | None) -> PreprocessConfig:
    """The config in ``path`` (YAML), or the defaults for ``None``."""
    return load_config(PreprocessConfig, path)


def config_to_dict(config: PreprocessConfig) -> dict[str, Any]:
    return to_dict(config)


# Bump when the preprocessing code changes what it stores for the same input and config:
# every stored case then has another fingerprint and is redone on the next run.
PREPROCESS_VERSION = 2


def library_versions() -> dict[str, str]:
    """Versions of the imported libraries that compute the stored voxels (resampling, rounding).

    Read from the modules themselves, not the installed package metadata: that is the code
    that runs, and a build without dist-info (a conda or HPC-module SimpleITK) has no metadata.
    """
    import numpy
    import SimpleITK

    return {"SimpleITK": str(SimpleITK.__version__), "numpy": str(numpy.__version__)}


def config_fingerprint(config: PreprocessConfig) -> str:
    """How a shard is made: the resolved config, the code version, the store schema and the
    versions of SimpleITK and NumPy; a stored case with another one is redone.

    The library versions belong here, not in the input fingerprint: they describe the
    processing, as ``PREPROCESS_VERSION`` does, while the input fingerprint says which
    files were read and is re-checked after reading ("changed while reading"), where a
    version would only blur which file moved. It is computed where the shard is made (the
    worker), so a shard records the versions that really made it, and ``pancreas
    predict`` warns when the run's recorded one differs from its own. ``limits`` are left
    out: they decide which cases are accepted, never what an accepted case stores, so
    relaxing one redoes only the cases it had refused (failed cases are always redone).
    """
    from dataset.contract.store import SCHEMA_VERSION

    settings = {k: v for k, v in to_dict(config).items() if k != "limits"}
    return fingerprint_json([settings, PREPROCESS_VERSION, SCHEMA_VERSION, library_versions()])


def config_from_dict(data: dict[str, Any]) -> PreprocessConfig:
    """Rebuild a config from its JSON form (as stored in a shard or sent to a worker)."""
    from dataset.common.configio import from_dict

    return from_dict(PreprocessConfig, data, where="preprocess config")
