"""DICOM as it arrives: ``find_series`` lists a folder tree's series, grouped by SeriesInstanceUID.

Only lists files (no ``InputError`` here: callers word it); reading is ``preprocess.io.read_image``.
See docs/explanation/internals.md#dicom-series-preprocessdicompy.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SERIES_NUMBER, SERIES_DESCRIPTION = "0020|0011", "0008|103e"
POSITION, ORIENTATION = "0020|0032", "0020|0037"  # ImagePositionPatient, ImageOrientationPatient
SUFFIX_HEX_DIGITS = 8
# slice steps may differ from the median by this much (the larger of the two): DICOM writes
# positions as decimal strings of at most 16 characters (a few micrometres of rounding), and
# 1% of a step is a tenth of a voxel at worst, far below a missing (100%) or duplicated slice
STEP_TOLERANCE_MM, STEP_TOLERANCE_FRACTION = 0.01, 0.01
MAX_REPORTED = 3


@dataclass(frozen=True)
class DicomSeries:
    """One series: where its files are, in GDCM's slice order, and how the scanner named it."""

    uid: str
    folder: Path  # the folder holding its files (their common folder when spread over several)
    files: tuple[str, ...]
    number: str  # SeriesNumber, "" when absent
    description: str  # SeriesDescription, "" when absent

    def summary(self) -> str:
        """``series 3 "Venous" (120 files) UID 1.2...`` for listings."""
        number = f"series {self.number}" if self.number else "series"
        description = f' "{self.description}"' if self.description else ""
        return f"{number}{description} ({len(self.files)} files) UID {self.uid} in {self.folder}"


def uid_suffix(uid: str) -> str:
    """A short name part that is stable for a series: the first 8 hex digits of SHA-1(UID)."""
    return hashlib.sha1(uid.encode()).hexdigest()[:SUFFIX_HEX_DIGITS]


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    was = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was)


def series_ids(folder: Path) -> tuple[str, ...]:
    """SeriesInstanceUIDs of the DICOM files directly in ``folder``."""
    with _quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def series_files(folder: Path, uid: str, recursive: bool = False) -> tuple[str, ...]:
    """The files of series ``uid`` in ``folder`` (and below, if ``recursive``), sorted by slice position."""
    with _quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid, recursive=recursive))


def _folders(root: Path) -> Iterator[Path]:
    """``root`` and every folder below it, sorted, hidden ones (``.git``, ``._x``) skipped, links not followed."""
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(here)


def _names(first_file: str) -> tuple[str, str]:
    """(SeriesNumber, SeriesDescription) from a series' first file; "" where absent."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(first_file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return "", ""
    return tuple(
        reader.GetMetaData(k).strip() if reader.HasMetaDataKey(k) else ""  # type: ignore[return-value]
        for k in (SERIES_NUMBER, SERIES_DESCRIPTION)
    )


def find_series(root: str | Path) -> list[DicomSeries]:
    """Every DICOM series in ``root`` and the folders below it, in folder order, then UID order."""
    found: dict[str, list[Path]] = {}
    for folder in _folders(Path(root)):
        for uid in sorted(series_ids(folder)):
            found.setdefault(uid, []).append(folder)
    series = []
    for uid, folders in found.items():
        if len(folders) == 1:
            folder, files = folders[0], series_files(folders[0], uid)
        else:  # spread over several folders: one series, read from their common folder
            folder = Path(os.path.commonpath([str(f) for f in folders]))
            files = series_files(folder, uid, recursive=True)
        if files:
            series.append(DicomSeries(uid, folder, files, *_names(files[0])))
    return series


def _numbers(reader: sitk.ImageFileReader, tag: str) -> list[float] | None:
    if not reader.HasMetaDataKey(tag):
        return None
    try:
        return [float(v) for v in reader.GetMetaData(tag).split("\\")]
    except ValueError:
        return None


def slice_positions_mm(files: Sequence[str]) -> list[float] | None:
    """Each file's ImagePositionPatient projected on the slice normal (from ImageOrientationPatient);
    None when a file lacks either tag (then GDCM's own order is all there is)."""
    positions = []
    reader = sitk.ImageFileReader()
    with _quiet_itk():
        for name in files:
            reader.SetFileName(name)
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                return None
            position, orientation = _numbers(reader, POSITION), _numbers(reader, ORIENTATION)
            if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
                return None
            normal = np.cross(orientation[:3], orientation[3:])
            positions.append(float(np.dot(normal, position)))
    return positions


def _at(position: float, name: str) -> str:
    return f"{position:.3f} mm ({Path(name).name})"


def grid_problem(positions_mm: Sequence[float], files: Sequence[str]) -> str | None:
    """Why slices at ``positions_mm`` (one per file) are no regular grid: duplicates, gaps or
    irregular steps beyond the larger of ``STEP_TOLERANCE_MM`` and ``STEP_TOLERANCE_FRACTION``
    of the median step; None for a regular grid."""
    if len(positions_mm) < 2:
        return None
    for position, name in zip(positions_mm, files):
        if not math.isfinite(position):
            return f"slice position {position} is not a number ({Path(name).name}: its ImagePositionPatient)"
    order = np.argsort(positions_mm, kind="stable")
    z = np.asarray(positions_mm, dtype=np.float64)[order]
    names = [files[i] for i in order]
    steps = np.diff(z)
    median = float(np.median(steps))
    tolerance = max(STEP_TOLERANCE_MM, STEP_TOLERANCE_FRACTION * median)
    problems = []
    for i, step in enumerate(steps):
        pair = f"{_at(z[i], names[i])} and {_at(z[i + 1], names[i + 1])}"
        if step <= tolerance:
            problems.append(f"duplicate slice position: {pair}")
        elif abs(step - median) > tolerance:
            kind = "gap (a missing slice?)" if step > median else "irregular step"
            problems.append(f"{kind} of {step:.3f} mm between {pair}")
    if not problems:
        return None
    more = f"; and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    return (
        f"{len(files)} slices are not a regular grid (median step {median:.3f} mm, tolerance {tolerance:.3f} mm): "
        + "; ".join(problems[:MAX_REPORTED])
        + more
    )


def irregular_slices(files: Sequence[str]) -> str | None:
    """``grid_problem`` of a series' files (see docs/how-to/preprocess.md#dicom-input)."""
    positions = slice_positions_mm(files)
    return None if positions is None else grid_problem(positions, files)
