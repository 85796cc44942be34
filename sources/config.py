"""The config of ``pancreas download``: where the MSD Task07 archive comes from and how it is checked.

Field defaults are the documented defaults; ``configs/download.yaml`` repeats them with comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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
