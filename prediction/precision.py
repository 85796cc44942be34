"""The float precision a model predicts in: ``precision`` of the predict config, resolved per machine.

``auto`` is bfloat16 on a GPU with fast bfloat16 and float32 on CPUs, where bfloat16 is off unless asked:
on this project's 2-core AMD EPYC with AVX-512 BF16 it ran the default U-Net 1.6x faster, but moved the
demo's tumour label maps below the 0.99 Dice allowed against float32 (0.980 and 0.987; measured
2026-12-03, docs/how-to/predict.md#speed-precision-and-threads). Keras is imported only inside the
functions that need it; TensorFlow only to list GPUs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")
# NVIDIA Ampere (A100) and later run bfloat16 on their tensor cores
FAST_BF16_CAPABILITY = (8, 0)
# /proc/cpuinfo flags of x86 CPUs with bfloat16 instructions (AVX-512 BF16, AMX)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
# the layers that stay float32 under bfloat16: the softmax heads (``training.model.softmax_head``)
FLOAT32_SUFFIX = "_softmax"


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (empty where there is no ``/proc/cpuinfo``: not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_supports_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (``CPU_BF16_FLAGS``); without them bfloat16 is emulated."""
    return bool(cpu_flags() & set(CPU_BF16_FLAGS))


def nvidia_driver_loaded() -> bool:
    """Whether an NVIDIA driver is loaded (Linux): without one TensorFlow sees no GPU, so it is not imported."""
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def gpu_capabilities() -> list[tuple[int, int] | None]:
    """The compute capability of every GPU TensorFlow sees; empty without a GPU or TensorFlow."""
    if not nvidia_driver_loaded():
        return []
    try:
        from dataset.common.devices import visible_gpus

        return [g.compute_capability for g in visible_gpus()]
    except ImportError:
        return []


def resolve_precision(requested: str) -> str:
    """``float32`` or ``bfloat16``: what ``requested`` (one of ``PRECISIONS``) means on this machine.

    ``bfloat16`` asked on a CPU-only machine whose CPU lacks bfloat16 falls back to float32 with one
    warning; ``auto`` is bfloat16 only when every GPU has compute capability >= 8.0.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "float32":
        return "float32"
    gpus = gpu_capabilities()
    if requested == "auto":
        fast = bool(gpus) and all(c is not None and c >= FAST_BF16_CAPABILITY for c in gpus)
        return "bfloat16" if fast else "float32"
    if not gpus and not cpu_supports_bf16():
        log.warning(
            "precision bfloat16: this CPU has no bfloat16 instructions (%s), predicting in float32",
            " or ".join(CPU_BF16_FLAGS),
        )
        return "float32"
    return "bfloat16"


def bfloat16_model(model: Any) -> Any:
    """A copy of the functional ``model`` computing in bfloat16 (Keras' ``mixed_bfloat16`` policy:
    float32 weights, the same values) except its float32 softmax heads, so probabilities stay float32."""
    import keras

    def clone(layer):
        config = layer.get_config()
        if not layer.name.endswith(FLOAT32_SUFFIX):
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def model_in_precision(model: Any, precision: str) -> Any:
    """``model`` itself for float32, its bfloat16 copy for bfloat16 (a resolved precision)."""
    if precision == "float32":
        return model
    if precision == "bfloat16":
        return bfloat16_model(model)
    raise ValueError(f"precision must be resolved to float32 or bfloat16, got {precision!r}")
