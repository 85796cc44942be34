"""DICOM as it arrives: the series in a folder tree, and the files of one series.

A PACS export or a CD holds several series (the venous and arterial phases, a scout, a
dose report) either side by side in one folder or one folder per series, often several
levels deep (``PATIENT/STUDY/SERIES/IM0001``). ``find_series`` walks the tree and groups
files by SeriesInstanceUID (0020|000e) with GDCM, which also sorts each series' slices
by position. A series whose files are spread over several folders is one series, read
from their common folder. Reading the voxels is ``preprocess.io.read_image(folder,
series_uid)``; this module only lists files (no ``InputError`` here: callers word it).

ITK prints a "No Series were found" warning for every folder without DICOM files; those
are expected while walking a tree, so warnings are off during the walk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

SERIES_NUMBER, SERIES_DESCRIPTION = "0020|0011", "0008|103e"
SUFFIX_HEX_DIGITS = 8


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
