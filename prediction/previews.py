"""What a person reads after ``pancreas predict``: ``statistics.csv``/``.json``, previews, ``index.html``.

Per predicted case, measured on the scan's own grid (``review.statistics``): gland
(labels 1+2) and tumour volume in ml, tumour count, the largest tumour's longest axial
diameter and volume, mean and median HU of gland and tumour on the original scan, and
edge flags (a region touching the scan's edge is cut off: its volume is a lower bound,
reported and flagged, never zeroed). ``--preview`` adds ``<case>_preview.png`` (a case
sheet, ``review.sheet``) beside each label map and ``index.html`` listing them.

Every file here is rebuilt at the end of each run from ``predictions.json``: a case
predicted in this run brings its figures from memory, an up-to-date case keeps the
entry ``statistics.json`` holds for its label map (same file fingerprint), and any other
done case is measured again from its files. A killed run therefore never leaves a done
case without statistics after the next run. Files of these names that this project did
not write are refused, never replaced.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dataset.common.atomic import read_json, write_bytes_atomic, write_json_atomic
from dataset.common.figures import is_our_png
from dataset.common.fingerprints import fingerprint_file
from dataset.contract.predictions import Predictions, label_name
from prediction.cases import CaseInput, PredictError
from review.orient import display_arrays
from review.report_html import is_our_page, render_index, write_html
from review.sheet import write_case_sheet
from review.statistics import STATISTICS_COLUMNS, case_statistics, statistics_csv

log = logging.getLogger(__name__)
STATISTICS_JSON = "statistics.json"
STATISTICS_CSV = "statistics.csv"
INDEX_NAME = "index.html"
WRITTEN_BY = "pancreas predict"  # statistics.json's mark: a file without it is someone else's


def preview_name(case_id: str) -> str:
    return f"{case_id}_preview.png"


def measure(labels: np.ndarray, ct: sitk.Image) -> dict[str, Any]:
    """Statistics of a label map on ``ct``'s grid, HU from the CT."""
    x, y, z = ct.GetSpacing()
    hu = sitk.GetArrayViewFromImage(ct)
    return case_statistics(labels, (float(z), float(y), float(x)), hu)


def draw_preview(path: Path, case_id: str, labels: sitk.Image, ct: sitk.Image) -> Path:
    """The case sheet of one prediction over its CT, in LPS (``review.orient``)."""
    (ct_lps, labels_lps), spacing = display_arrays([ct, labels])
    return write_case_sheet(path, ct_lps.astype(np.float32, copy=False), spacing, case_id, label=labels_lps)


def _our_csv(path: Path) -> bool:
    try:
        with open(path, newline="") as fh:
            return next(csv.reader(fh), None) == list(STATISTICS_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


def _read_ours(out: Path) -> dict[str, Any] | None:
    path = out / STATISTICS_JSON
    try:
        data = read_json(path, "statistics")
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("written_by") == WRITTEN_BY else None


def check_review_files(out: Path, case_ids: Sequence[str], preview: bool, flag: str = "--out") -> None:
    """Refuse, before any work, to replace a statistics file, page or preview someone else wrote."""
    checks = [(out / STATISTICS_JSON, lambda p: _read_ours(out) is not None), (out / STATISTICS_CSV, _our_csv)]
    if preview:
        checks.append((out / INDEX_NAME, is_our_page))
        checks += [(out / preview_name(c), is_our_png) for c in case_ids]
    for path, ours in checks:
        if (path.exists() or path.is_symlink()) and (path.is_symlink() or not ours(path)):
            raise PredictError(
                f"{path}: exists and was not written by `pancreas predict`; "
                f"move it away or choose another {flag} folder"
            )


def _from_files(case: CaseInput, label_path: Path, preview: Path | None) -> dict[str, Any]:
    """Measure (and draw) a done case from its label map and CT on disk."""
    from preprocess.io import read_image, read_label

    ct, _ = read_image(case.path, case.series_uid)
    labels = read_label(label_path)
    if preview is not None:
        draw_preview(preview, case.case_id, labels, ct)
    return measure(sitk.GetArrayFromImage(labels).astype(np.uint8), ct)


def write_review_files(
    out: Path,
    record: Predictions,
    cases: Sequence[CaseInput],
    fresh: Mapping[str, Mapping[str, Any]],
    preview: bool,
) -> list[dict[str, Any]]:
    """Rebuild statistics.json/.csv (and index.html with ``preview``) for every done case; the rows."""
    earlier = (_read_ours(out) or {}).get("cases", {})
    inputs = {c.case_id: c for c in cases}
    rows, entries = [], {}
    for case_id, entry in record.cases.items():
        label_path = out / label_name(case_id)
        if entry.status != "done" or not label_path.is_file():
            continue
        fp = fingerprint_file(label_path)
        picture = out / preview_name(case_id) if preview else None
        stats = fresh.get(case_id)
        if stats is None and isinstance(earlier.get(case_id), dict) and earlier[case_id].get("label_fingerprint") == fp:
            stats = earlier[case_id]["statistics"]
        if (stats is None or (picture is not None and not picture.is_file())) and case_id in inputs:
            try:
                stats = _from_files(inputs[case_id], label_path, picture)
            except (OSError, ValueError, RuntimeError) as err:
                log.error("%s: no statistics: %s", case_id, err)
        if stats is None:
            continue
        entries[case_id] = {"label_fingerprint": fp, "statistics": dict(stats)}
        rows.append({"case": case_id, **stats})
    write_json_atomic(out / STATISTICS_JSON, {"written_by": WRITTEN_BY, "cases": entries}, point="statistics")
    write_bytes_atomic(out / STATISTICS_CSV, statistics_csv(rows).encode(), point="statistics-csv")
    if preview:
        pictures = {r["case"]: preview_name(r["case"]) for r in rows if (out / preview_name(r["case"])).is_file()}
        page = render_index("Predictions", rows, list(STATISTICS_COLUMNS), pictures, {"folder": str(out)}, key="case")
        write_html(out / INDEX_NAME, page)
    return rows
