"""Refuse absurd geometry and cases too big for the worker, before memory is spent.

Works on header numbers (ITK's x, y, z, mm) and returns why a case is refused, or None; the caller
names the file. See docs/explanation/internals.md#header-limits-and-the-memory-estimate-preprocesslimitspy;
the measured peaks: docs/how-to/preprocess.md#what-it-costs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import cast

import numpy as np

from preprocess.config import GeometryLimits

FLOAT32_BYTES = 4
# Per resampled voxel: float32 image 4, uint8 label 1, stored levels 1 and label copy 1
# (at most: the crop only shrinks them), body mask on the 2x-subsampled grid about 0.6.
RESAMPLED_BYTES_WITH_LABEL = 8
RESAMPLED_BYTES = 6
DASK_TERMINATE = 0.95  # fraction of its memory limit at which Dask's nanny kills a worker (default)
AXES = "xyz"
# A NIfTI file with more voxels than this is read in z-slabs of at most this many
# (``preprocess.io.read_file``): 512x512x128, 128 MiB as float32.
STREAM_SLAB_VOXELS = 1 << 25


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def resampled_size(
    size: Sequence[int], spacing: Sequence[float], direction: Sequence[float], target_spacing_mm: Sequence[float]
) -> tuple[int, int, int]:
    """Voxels of ``geometry.edge_aligned_grid`` computed from header numbers alone.

    The box around the scan's outer edges is ``sum_j |D_ij| * n_j * s_j`` wide along
    physical axis i; the grid has ``max(1, round-half-up(width / target))`` voxels. (The
    pipeline builds the real grid with ITK; the two can differ by one voxel at an exact
    .5, which does not matter for a limit.)
    """
    d = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    width = d @ (np.asarray(size, dtype=np.float64) * np.asarray(spacing, dtype=np.float64))
    return cast(
        "tuple[int, int, int]", tuple(int(max(1, math.floor(w / t + 0.5))) for w, t in zip(width, target_spacing_mm))
    )


DIRECTION_TOLERANCE = 1e-3  # |D^T D - I| per entry: ITK's own orthonormality check is 1e-4 on float32 headers


def direction_problem(direction: Sequence[float]) -> str | None:
    """Why a 3x3 direction matrix (row-major) is not a rotation or reflection: not finite, or its
    columns not orthonormal (a NaN or sheared qform/sform in a NIfTI header)."""
    d = np.asarray(direction, dtype=np.float64)
    shown = _fmt(d.ravel().tolist())
    if d.size != 9 or not np.isfinite(d).all():
        return f"direction matrix {shown} is not finite; the header's orientation (qform/sform) is broken"
    d = d.reshape(3, 3)
    if np.abs(d.T @ d - np.eye(3)).max() > DIRECTION_TOLERANCE:
        return f"direction matrix {shown} is not orthonormal; the header's orientation (qform/sform) is broken"
    return None


def geometry_problem(
    size: Sequence[int],
    spacing: Sequence[float],
    direction: Sequence[float],
    target_spacing_mm: Sequence[float],
    limits: GeometryLimits,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> str | None:
    """Why a scan's header geometry is not a sane CT (one line naming the number and the limit)."""
    if not all(math.isfinite(v) for v in origin):
        return f"origin {_fmt(origin)} is not finite; the header's position (qoffset/srow) is broken"
    for axis, s in zip(AXES, spacing):
        if not (math.isfinite(s) and s >= limits.min_spacing_mm):
            return (
                f"voxel spacing {s:g} mm along {axis} is below limits.min_spacing_mm {limits.min_spacing_mm:g} "
                f"(spacing {_fmt(spacing)} mm; header units micrometres?)"
            )
        if s > limits.max_spacing_mm:
            return (
                f"voxel spacing {s:g} mm along {axis} is above limits.max_spacing_mm {limits.max_spacing_mm:g} "
                f"(spacing {_fmt(spacing)} mm; header units metres?)"
            )
    for axis, n, s in zip(AXES, size, spacing):
        if n * s > limits.max_extent_mm:
            return (
                f"scan extent {n * s:g} mm along {axis} ({n} voxels x {s:g} mm) is above "
                f"limits.max_extent_mm {limits.max_extent_mm:g}"
            )
    problem = direction_problem(direction)
    if problem:
        return problem
    grid = resampled_size(size, spacing, direction, target_spacing_mm)
    count = math.prod(grid)
    if count > limits.max_resampled_voxels:
        return (
            f"resampled grid {'x'.join(map(str, grid))} = {count:,} voxels at {_fmt(target_spacing_mm)} mm "
            f"is above limits.max_resampled_voxels {limits.max_resampled_voxels:,}"
        )
    return None


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 8  # a type numpy does not name: assume the widest


def _read_bytes(voxels: int, stored: str, cast_to_float32: bool, slab_voxels: int) -> int:
    """Peak bytes of ``io.read_file``: ITK's NIfTI reader holds what it reads twice as stored,
    plus the cast when the output type differs (measured whole: int16 as float32 8 bytes a
    voxel, float32 8, int32 12, float64 20); above ``slab_voxels`` the output is allocated
    once and only one slab is read at a time."""
    item = _itemsize(stored)
    per_read = 2 * item + (FLOAT32_BYTES if cast_to_float32 and stored != "float32" else 0)
    if voxels <= slab_voxels:
        return voxels * per_read
    return voxels * (FLOAT32_BYTES if cast_to_float32 else item) + slab_voxels * per_read


def case_bytes(
    input_voxels: int,
    resampled_voxels: int,
    image_dtype: str,
    label_dtype: str | None,
    slab_voxels: int = STREAM_SLAB_VOXELS,
) -> int:
    """Estimated peak bytes of one case (``label_dtype`` None: no label), the largest of:

    * reading the image (``_read_bytes``, as float32);
    * reading the label: the float32 image, the label as stored (``_read_bytes``), its
      uint8 cast;
    * resampling (``pipeline.preprocess_scan`` drops each scan-grid image once it is
      resampled): the label with the float32 image and uint8 label still held, then the
      image with the float32 image and the resampled label (1 byte) held;
    * the crop and intensity steps on the resampled grid (``RESAMPLED_BYTES*``).
    """
    read = _read_bytes(input_voxels, image_dtype, True, slab_voxels)
    if label_dtype is None:
        return max(
            read, input_voxels * FLOAT32_BYTES + resampled_voxels * FLOAT32_BYTES, resampled_voxels * RESAMPLED_BYTES
        )
    cast = 0 if label_dtype == "uint8" else input_voxels
    label = input_voxels * FLOAT32_BYTES + _read_bytes(input_voxels, label_dtype, False, slab_voxels) + cast
    resample_label = input_voxels * (FLOAT32_BYTES + 1) + resampled_voxels
    resample_image = input_voxels * FLOAT32_BYTES + resampled_voxels * (1 + FLOAT32_BYTES)
    return max(read, label, resample_label, resample_image, resampled_voxels * RESAMPLED_BYTES_WITH_LABEL)


def _dask_worker_limit() -> int | None:
    """The memory limit of the Dask worker running this task (None: not in a worker, or no limit)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    return getattr(getattr(worker, "memory_manager", None), "memory_limit", None) or None


def _terminate_fraction() -> float:
    import dask

    fraction = dask.config.get("distributed.worker.memory.terminate", DASK_TERMINATE)
    return float(fraction) if fraction else 1.0


def memory_budget_bytes() -> int | None:
    """Bytes this process can still spend on a case; None when unknown.

    In a Dask worker: its memory limit times the fraction at which the nanny kills it,
    minus what the worker holds now (imports, caches). Elsewhere (``--workers 0``,
    ``pancreas predict``): the machine's available memory.
    """
    try:
        import psutil
    except ImportError:
        return None
    limit = _dask_worker_limit()
    if limit is not None:
        return int(limit * _terminate_fraction()) - psutil.Process().memory_info().rss
    return int(psutil.virtual_memory().available)


def _bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e8 else f"{n / 1e6:.1f} MB"


def memory_problem(needed: int, budget: int | None, input_size: Sequence[int], grid: Sequence[int]) -> str | None:
    """Why a case cannot be done in ``budget`` bytes (one line with both numbers), else None."""
    if budget is None or needed <= budget:
        return None
    return (
        f"needs about {_bytes(needed)} of memory (input {'x'.join(map(str, input_size))}, resampled "
        f"{'x'.join(map(str, grid))} voxels) but this worker can spend {_bytes(max(budget, 0))}; "
        "run with fewer --workers or on a machine with more memory"
    )
