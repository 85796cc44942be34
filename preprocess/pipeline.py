"""One case, three layers: ``preprocess_image`` (images in, arrays out: the single code path
that training and inference share), ``preprocess_file`` (checks the headers against the
limits, reads + validates files, checks they did not change while being read, then calls
it) and ``write_case`` (the shard). The Dask driver only calls ``process_case``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dataset.contract.store import write_shard
from preprocess.body import body_box, expand_box
from preprocess.config import PreprocessConfig, config_fingerprint, config_to_dict
from preprocess.geometry import IDENTITY_DIRECTION, Grid, edge_aligned_grid, resample
from preprocess.input_files import CaseInputs, changed_file, take_inputs
from preprocess.intensity import hu_to_levels
from preprocess.io import PIXEL_NAMES, InputError, grid_mismatch, label_value_counts, read_case, read_image_info
from preprocess.limits import case_bytes, geometry_problem, memory_budget_bytes, memory_problem, resampled_size

log = logging.getLogger(__name__)

AIR_HU = -1024.0  # value of image points outside an oblique scan


@dataclass
class PreprocessedCase:
    """A case on the stored grid: what ``dataset.contract.store.write_shard`` takes."""

    levels: np.ndarray  # uint8 (z, y, x), level v = normalised intensity v / 255
    label: np.ndarray | None  # uint8 (z, y, x) or None
    attrs: dict[str, Any]  # shard attributes (see dataset/contract/store.py)
    seconds: dict[str, float] = field(default_factory=dict)  # per step, not stored


def crop_box(hu_zyx: np.ndarray, config: PreprocessConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Body bounding box plus margin on the resampled grid (z, y, x); whole volume if no body."""
    whole = (0, 0, 0), tuple(hu_zyx.shape)
    if not config.crop_to_body:
        return whole
    box = body_box(hu_zyx, config.body_threshold_hu)
    if box is None:
        log.warning("no voxel above %s HU: keeping the whole volume", config.body_threshold_hu)
        return whole
    spacing_zyx = tuple(config.target_spacing_mm[::-1])
    return expand_box(box[0], box[1], config.crop_margin_mm, spacing_zyx, hu_zyx.shape)


def _original_attrs(image: sitk.Image) -> dict:
    """The scan's own grid, as the shard records it (taken before the scan is released)."""
    return {
        "original_size": np.asarray(image.GetSize(), dtype=np.int64),
        "original_spacing": np.asarray(image.GetSpacing(), dtype=np.float64),
        "original_origin": np.asarray(image.GetOrigin(), dtype=np.float64),
        "original_direction": np.asarray(image.GetDirection(), dtype=np.float64),
        "original_dtype": PIXEL_NAMES.get(image.GetPixelID(), image.GetPixelIDTypeAsString()),
    }


def _geometry_attrs(original: dict, grid: Grid, start: tuple[int, ...], stop: tuple[int, ...]) -> dict:
    start_xyz = np.asarray(start[::-1], dtype=np.float64)
    origin = np.asarray(grid.origin) + start_xyz * np.asarray(grid.spacing)
    return {
        "spacing": np.asarray(grid.spacing, dtype=np.float64),
        "origin": origin,
        "direction": np.asarray(IDENTITY_DIRECTION, dtype=np.float64),
        **original,
        "resampled_size": np.asarray(grid.size, dtype=np.int64),
        "resampled_origin": np.asarray(grid.origin, dtype=np.float64),
        "crop_start_zyx": np.asarray(start, dtype=np.int64),
        "crop_stop_zyx": np.asarray(stop, dtype=np.int64),
    }


@dataclass
class Scan:
    """A case's images on the scan's own grid, handed over to ``preprocess_scan``.

    ``preprocess_scan`` sets each field to None as soon as it is resampled, so the
    scan-grid memory is freed mid-case (a caller's ``del`` cannot free what a callee's
    arguments still hold): for the 512x512x751 float32 case the label goes before the
    image is resampled and the image (787 MB) before the crop and intensity steps.
    """

    image: sitk.Image | None
    label: sitk.Image | None = None


def _check_image(image: sitk.Image, label: sitk.Image | None, config: PreprocessConfig) -> None:
    """The label fits the image, and the geometry is within the limits (files were checked
    from their headers already; this covers a DICOM series and ``pancreas predict``)."""
    if label is not None:
        mismatch = grid_mismatch(image, label)
        if mismatch:
            raise ValueError(f"label is on another grid than its image: {mismatch}")
    problem = geometry_problem(
        image.GetSize(),
        image.GetSpacing(),
        image.GetDirection(),
        config.target_spacing_mm,
        config.limits,
        image.GetOrigin(),
    )
    if problem:
        raise InputError(problem)


def preprocess_image(image: sitk.Image, label: sitk.Image | None, config: PreprocessConfig) -> PreprocessedCase:
    """A CT (HU, any orientation and pixel type) and optional label -> stored-grid arrays.

    Reorientation and resampling are one ``sitk.Resample`` onto the canonical (identity
    direction) edge-aligned grid: ITK maps each output voxel through the input's direction,
    so a separate ``DICOMOrient`` copy would cost time and a full-size buffer for the same
    result. Then: body crop, window, equalisation, normalisation (``preprocess.intensity``).
    ``preprocess_scan`` is the same with the images handed over (freed as it goes).
    """
    return preprocess_scan(Scan(image, label), config)


def preprocess_scan(scan: Scan, config: PreprocessConfig) -> PreprocessedCase:
    """``preprocess_image`` of a handed-over ``Scan``, whose fields it releases when resampled."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    assert scan.image is not None, "preprocess_scan: the scan's image was already handed over"
    _check_image(scan.image, scan.label, config)
    grid = edge_aligned_grid(scan.image, config.target_spacing_mm)
    original = _original_attrs(scan.image)
    resampled_label = None
    if scan.label is not None:
        label_u8 = scan.label if scan.label.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(scan.label, sitk.sitkUInt8)
        scan.label = None
        resampled_label = resample(label_u8, grid, "nearest", 0)
        del label_u8
    hu_image = scan.image if scan.image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(scan.image, sitk.sitkFloat32)
    scan.image = None
    resampled = resample(hu_image, grid, config.image_interpolation, AIR_HU)
    del hu_image
    seconds["resample"] = time.perf_counter() - t

    t = time.perf_counter()
    hu = sitk.GetArrayViewFromImage(resampled)  # (z, y, x) view; `resampled` keeps it alive
    start, stop = crop_box(hu, config)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    seconds["crop"] = time.perf_counter() - t

    t = time.perf_counter()
    threshold = config.body_threshold_hu if config.equalize_body_only else None
    levels = hu_to_levels(hu[box], config.window_hu, config.equalize, config.histogram_bins, threshold)
    seconds["intensity"] = time.perf_counter() - t
    del hu, resampled

    attrs = _geometry_attrs(original, grid, start, stop)
    attrs["window_hu"] = np.asarray(config.window_hu, dtype=np.float64)
    label_array = None
    if resampled_label is not None:
        # a copy, always: a view of `resampled_label` (np.ascontiguousarray returns the view
        # itself when the crop is the whole volume) would outlive the image's memory
        label_array = np.array(sitk.GetArrayViewFromImage(resampled_label)[box], copy=True)
        del resampled_label
        counts = label_value_counts(label_array)
        assert counts is not None  # a uint8 label always counts
        attrs["label_counts"] = np.asarray([counts[v] for v in config.label_values], dtype=np.int64)
    attrs["config"] = json.dumps(config_to_dict(config), sort_keys=True)
    attrs["config_fingerprint"] = config_fingerprint(config)
    return PreprocessedCase(levels, label_array, attrs, seconds)


def check_before_reading(image_path: str | Path, label_path: str | Path | None, config: PreprocessConfig) -> None:
    """Refuse, from the headers alone, absurd geometry and a case too big for this worker.

    Raises ``InputError`` naming the file, the number and the limit. A DICOM folder is
    checked after reading (its z extent needs every slice); a missing or unreadable file
    is left to ``read_case``, which says why.
    """
    path = Path(image_path)
    try:
        info = read_image_info(path) if path.is_file() else None
        label_info = read_image_info(label_path) if info is not None and label_path is not None else None
    except RuntimeError:
        return
    if info is None or len(info.size) != 3:
        return
    problem = geometry_problem(
        info.size, info.spacing, info.direction, config.target_spacing_mm, config.limits, info.origin
    )
    if problem:
        raise InputError(f"{path}: {problem}")
    grid = resampled_size(info.size, info.spacing, info.direction, config.target_spacing_mm)
    needed = case_bytes(
        math.prod(info.size), math.prod(grid), info.dtype, label_info.dtype if label_info is not None else None
    )
    problem = memory_problem(needed, memory_budget_bytes(), info.size, grid)
    if problem:
        raise InputError(f"{path}: {problem}")


def preprocess_file(
    image_path: str | Path,
    label_path: str | Path | None,
    config: PreprocessConfig,
    allowed_labels: tuple[int, ...] | None = None,
    inputs: CaseInputs | None = None,
) -> PreprocessedCase:
    """Check the headers, read + validate one case's files (NIfTI or DICOM folder), then
    ``preprocess_image``.

    ``allowed_labels``: the label values the dataset declares (default: config.label_values).
    ``inputs``: the files' fingerprints taken when the case was planned (default: now);
    they become the shard's ``input_fingerprint`` and must still hold after reading.
    Raises ``preprocess.io.InputError`` (one line naming the file) for unusable input.
    """
    t = time.perf_counter()
    allowed = tuple(allowed_labels) if allowed_labels is not None else config.label_values
    if inputs is None:
        try:
            inputs = take_inputs(image_path, label_path, allowed)
        except OSError:
            read_case(image_path, label_path, allowed)  # names the missing or unreadable file
            raise
    check_before_reading(image_path, label_path, config)
    image, dtype, label = read_case(image_path, label_path, allowed)
    scan = Scan(image, label)
    del image, label  # `scan` holds the only references: preprocess_scan frees them as it goes
    moved = changed_file(inputs)
    if moved:
        raise InputError(
            f"{moved}: changed while reading (size or modification time differs from when "
            "the case was planned); the next run redoes it"
        )
    read_seconds = time.perf_counter() - t
    try:
        case = preprocess_scan(scan, config)
    except InputError as err:  # the geometry of a DICOM series, known only once read
        if str(image_path) in str(err):
            raise
        raise InputError(f"{image_path}: {err}") from None
    case.seconds = {"read": read_seconds, **case.seconds}
    case.attrs.update(
        original_dtype=dtype,
        source_image=str(Path(image_path).resolve()),
        source_label=str(Path(label_path).resolve()) if label_path is not None else "",
        input_fingerprint=inputs.fingerprint,
    )
    return case


def write_case(path: str | Path, case_id: str, case: PreprocessedCase) -> float:
    """Write the shard atomically; returns the seconds it took."""
    t = time.perf_counter()
    write_shard(path, case.levels, case.label, {"case_id": case_id, **case.attrs})
    return time.perf_counter() - t
