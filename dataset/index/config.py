"""Parameters of ``pancreas index`` (configs/index.yaml mirrors the defaults).

Patch sizes are written (x, y, z); the ``*_zyx`` properties give numpy's order, the only one the code
uses. The U-Net depth is not here (``model.depth`` in configs/train.yaml): see
docs/explanation/internals.md#index-parameters-datasetindexconfigpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ElasticConfig:
    """Elastic deformation of the cached augmented foreground copies.

    A random displacement per control point and axis, normal with ``sigma_voxels``,
    on a ``control_points``^3 grid spanning the patch, interpolated with cubic
    B-splines (elasticdeform). The defaults are mild: organ shapes stay plausible.
    """

    sigma_voxels: float = 4.0  # std of control-point displacements, voxels
    control_points: int = 3  # per axis, >= 2
    image_order: int = 1  # spline order for the image: 1 (linear, ~20% faster) or 3
    mode: str = "nearest"  # how values outside the read-out region are filled
    margin_voxels: int = 0  # read this much extra context per side, then crop

    def __post_init__(self) -> None:
        if not self.sigma_voxels >= 0:
            raise ValueError(f"elastic.sigma_voxels must be >= 0, got {self.sigma_voxels}")
        if self.control_points < 2:
            raise ValueError(f"elastic.control_points must be >= 2, got {self.control_points}")
        if self.image_order not in (0, 1, 3):
            raise ValueError(f"elastic.image_order must be 0, 1 or 3, got {self.image_order}")
        if self.mode not in ("nearest", "constant", "reflect", "mirror"):
            raise ValueError(f"elastic.mode must be nearest, constant, reflect or mirror, got {self.mode!r}")
        if self.margin_voxels < 0:
            raise ValueError(f"elastic.margin_voxels must be >= 0, got {self.margin_voxels}")


@dataclass(frozen=True)
class IndexConfig:
    """Split, patch grid, balancing and augmentation of the patch index."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "model_depth": "the U-Net depth is set only in train.yaml's model.depth, and `pancreas train` "
        "checks the index's patch sizes against it; delete model_depth from this file",
    }

    seed: int = 0
    folds: int = 5  # K-fold cross-validation by case (1: one val_fraction split)
    val_fraction: float = 0.2  # share of labelled cases for validation when folds is 1
    max_cases: int | None = None  # use only this many labelled cases (seed project: 150)
    train_patch_xyz: tuple[int, int, int] = (128, 128, 64)
    val_patch_xyz: tuple[int, int, int] = (256, 256, 64)
    overlap: float = 0.0  # fraction of a patch shared by grid neighbours
    min_foreground_voxels: int = 1  # pancreas + tumour voxels that make a patch foreground
    require_tumour: bool = False  # foreground also needs >= 1 tumour voxel
    foreground_copies: int = 2  # entries per foreground patch: stored + (copies-1) augmented
    background_ratio: float = 1.5  # background entries per foreground entry, per case
    background_without_foreground: int = 4  # background entries from a case with no foreground patch
    centred_per_case: int = 0  # extra foreground-centred entries per training case (0 = off)
    centred_tumour_probability: float = 0.5  # chance a centred entry is centred on tumour (if the case has it)
    elastic: ElasticConfig = ElasticConfig()

    def __post_init__(self) -> None:
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 1:
            raise ValueError(f"folds must be an integer >= 1, got {self.folds!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_cases is not None and self.max_cases < 2:
            raise ValueError(f"max_cases must be >= 2 (or null for all), got {self.max_cases}")
        for name in ("train_patch_xyz", "val_patch_xyz"):
            size = tuple(getattr(self, name))
            if len(size) != 3 or any(s < 1 for s in size):
                raise ValueError(f"{name} must be three positive sizes (x, y, z), got {size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.min_foreground_voxels < 1:
            raise ValueError(f"min_foreground_voxels must be >= 1, got {self.min_foreground_voxels}")
        if self.foreground_copies < 1:
            raise ValueError(f"foreground_copies must be >= 1, got {self.foreground_copies}")
        if not self.background_ratio >= 0:
            raise ValueError(f"background_ratio must be >= 0, got {self.background_ratio}")
        if self.background_without_foreground < 0:
            raise ValueError(f"background_without_foreground must be >= 0, got {self.background_without_foreground}")
        if self.centred_per_case < 0:
            raise ValueError(f"centred_per_case must be >= 0, got {self.centred_per_case}")
        if not 0.0 <= self.centred_tumour_probability <= 1.0:
            raise ValueError(f"centred_tumour_probability must be in [0, 1], got {self.centred_tumour_probability}")

    @property
    def train_patch_zyx(self) -> tuple[int, int, int]:
        x, y, z = self.train_patch_xyz
        return (z, y, x)

    @property
    def val_patch_zyx(self) -> tuple[int, int, int]:
        x, y, z = self.val_patch_xyz
        return (z, y, x)
