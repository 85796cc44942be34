"""What this machine computes on: the CPU cores this process may use and the GPUs TensorFlow sees.

Shared by training (``training.environment``) and prediction (``prediction.precision``,
``prediction.threads``), which must not import each other (tests/test_layout.py).
TensorFlow is imported only inside ``visible_gpus``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    """One GPU as TensorFlow sees it: ``GPU:0`` and what the driver calls it."""

    name: str
    description: str = ""
    compute_capability: tuple[int, int] | None = None

    def label(self) -> str:
        return f"{self.name} ({self.description})" if self.description else self.name


def visible_gpus() -> list[Gpu]:
    """The GPUs TensorFlow can use (after ``CUDA_VISIBLE_DEVICES``); empty on a CPU-only machine."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        gpus.append(
            Gpu(
                device.name.replace("/physical_device:", ""),
                str(details.get("device_name", "")),
                tuple(capability) if capability else None,
            )
        )
    return gpus


def cpu_threads() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
