"""Configs of ``pancreas predict`` / ``evaluate`` and ``pancreas download``.

Field defaults are the documented defaults; ``configs/predict.yaml`` and
``configs/download.yaml`` repeat them with comments (a test keeps them equal).
Preprocessing parameters are deliberately absent: prediction reads them from the
run's ``input_contract.json`` so training and inference cannot drift apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

LARGEST_COMPONENT_MODES = ("off", "foreground", "per_class")
CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class PredictConfig:
    """Sliding-window inference settings (see configs/predict.yaml for the why of each)."""

    window_zyx: tuple[int, int, int] | None = None  # None: the contract's val_patch_size_zyx
    overlap: float = 0.5
    batch_size: int = 2
    gaussian_sigma_scale: float = 0.125
    mirror_axes: tuple[int, ...] = ()
    largest_component: str = "off"
    save_probabilities: bool = False
    checkpoint: str = "best"

    def __post_init__(self) -> None:
        if self.window_zyx is not None and any(int(w) < 1 for w in self.window_zyx):
            raise ValueError(f"window_zyx must be positive, got {self.window_zyx}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.gaussian_sigma_scale <= 1.0:
            raise ValueError(f"gaussian_sigma_scale must be in (0, 1], got {self.gaussian_sigma_scale}")
        bad = [a for a in self.mirror_axes if a not in (0, 1, 2)]
        if bad or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ValueError(f"mirror_axes must be distinct values of 0 (z), 1 (y), 2 (x), got {self.mirror_axes}")
        if self.largest_component not in LARGEST_COMPONENT_MODES:
            raise ValueError(
                f"largest_component must be one of {LARGEST_COMPONENT_MODES}, got {self.largest_component!r}"
            )
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {self.checkpoint!r}")


@dataclass(frozen=True)
class DownloadConfig:
    """Where the MSD Task07 archive comes from and how it is checked."""

    url: str = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task07_Pancreas.tar"
    md5: str = "4f7080cfca169fa8066d17ce6eb061e4"
    out_dir: str = "data"
    keep_archive: bool = True
    chunk_bytes: int = 1048576
    timeout_s: float = 60.0
    retries: int = 3
    retry_wait_s: float = 1.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{32}", self.md5):
            raise ValueError(f"md5 must be 32 lowercase hex digits, got {self.md5!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must be http(s), got {self.url!r}")
        if self.chunk_bytes < 1024:
            raise ValueError(f"chunk_bytes must be >= 1024, got {self.chunk_bytes}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.retry_wait_s < 0:
            raise ValueError(f"retry_wait_s must be >= 0, got {self.retry_wait_s}")
