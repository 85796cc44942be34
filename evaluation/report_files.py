"""The files beside an evaluation report: ``report.csv``, ``report.html``, the plot and ``pictures/``.

Every way into ``pancreas evaluate`` writes the same set beside its ``report.json``:
``--out FOLDER/NAME.json`` gives ``NAME.csv``, ``NAME.html``, ``NAME_metrics.png`` and
``FOLDER/pictures/<case>.png``; ``--cv CV_DIR`` gives ``report.*`` inside CV_DIR.

``--out`` may name a file in a folder the user also keeps other things in, so each of
these is replaced only when this project wrote it: a CSV whose header is ours, a page
carrying our generator mark, a PNG carrying our Software chunk. Anything else is a
one-line refusal before any case is scored.
"""

from __future__ import annotations

import csv
import io
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.common.atomic import write_bytes_atomic
from dataset.common.errors import PancreasError
from dataset.common.figures import is_our_png
from dataset.common.regions import REGIONS
from review.report_html import is_our_page, metrics_plot, render_report, write_html

PICTURES_DIR = "pictures"
SCORE_COLUMNS = ("dice", "nsd", "hd95_mm", "status")
CSV_COLUMNS = (
    "case_id",
    "fold",
    "region",
    *SCORE_COLUMNS,
    *(f"{c}_postprocessed" for c in SCORE_COLUMNS),
    # per case (the same on each of its region rows): tumour-level detection
    "truth_tumours",
    "detected_tumours",
    "missed_tumours",
    "false_tumours",
    # per case: volumes (ml) and the largest tumour's longest axial diameter (mm) of truth and prediction
    "truth_pancreas_ml",
    "pred_pancreas_ml",
    "truth_tumour_ml",
    "pred_tumour_ml",
    "truth_largest_tumour_diameter_mm",
    "pred_largest_tumour_diameter_mm",
    "pred_touches_edge",
)
# a case id becomes a file name: plain characters only, never a path (ids come from file names)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class ReportFileError(PancreasError, ValueError):
    """A file beside the report that this project did not write; the message names it."""


@dataclass(frozen=True)
class ReportFiles:
    """Where one evaluation's outputs go."""

    json: Path
    csv: Path
    html: Path
    plot: Path
    pictures: Path  # a folder

    @classmethod
    def beside(cls, report_json: str | Path) -> ReportFiles:
        path = Path(report_json)
        stem = path.with_suffix("") if path.suffix == ".json" else path
        return cls(
            json=path,
            csv=stem.with_name(stem.name + ".csv"),
            html=stem.with_name(stem.name + ".html"),
            plot=stem.with_name(stem.name + "_metrics.png"),
            pictures=path.parent / PICTURES_DIR,
        )

    def picture(self, case_id: str) -> Path | None:
        """``pictures/<case>.png``, or None for an id that is not a plain file name."""
        return self.pictures / f"{case_id}.png" if SAFE_NAME.fullmatch(case_id) else None


def _refuse(path: Path, flag: str) -> ReportFileError:
    return ReportFileError(
        f"{flag}: {path} exists and was not written by `pancreas evaluate`; move it or choose another {flag}"
    )


def _our_csv(path: Path) -> bool:
    try:
        with open(path, newline="") as fh:
            return next(csv.reader(fh), None) == list(CSV_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


def check_report_files(files: ReportFiles, flag: str = "--out", pictures: bool = True) -> None:
    """Refuse, before any work, to replace a CSV, page, plot or picture someone else wrote."""
    if (files.csv.exists() or files.csv.is_symlink()) and not _our_csv(files.csv):
        raise _refuse(files.csv, flag)
    if (files.html.exists() or files.html.is_symlink()) and not is_our_page(files.html):
        raise _refuse(files.html, flag)
    if (files.plot.exists() or files.plot.is_symlink()) and not is_our_png(files.plot):
        raise _refuse(files.plot, flag)
    if pictures and (files.pictures.exists() or files.pictures.is_symlink()):
        if files.pictures.is_symlink() or not files.pictures.is_dir():
            raise _refuse(files.pictures, flag)
        for p in sorted(files.pictures.iterdir()):
            if p.is_symlink() or not p.is_file() or not is_our_png(p):
                raise _refuse(p, flag)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{float(value):.6g}"
    return str(value)


def _case_cells(case: Mapping[str, Any]) -> list[str]:
    found = case.get("tumour_detection") or {}
    stats = case.get("statistics") or {}
    truth, pred = stats.get("truth") or {}, stats.get("prediction") or {}
    cells = [found.get(k) for k in ("truth", "detected", "missed", "false")]
    cells += [truth.get("pancreas_ml"), pred.get("pancreas_ml"), truth.get("tumour_ml"), pred.get("tumour_ml")]
    cells += [truth.get("largest_tumour_diameter_mm"), pred.get("largest_tumour_diameter_mm")]
    cells += [pred.get("touches_edge")]
    return [_cell(c) for c in cells]


def report_csv(report: Mapping[str, Any]) -> str:
    """One row per case and region: the scores, those after the chosen postprocessing (``--cv``
    only), then the case's detection counts and volumes."""
    post = report.get("postprocessing")
    after = post.get("cases", {}) if isinstance(post, Mapping) else None
    folds = report.get("case_folds", {})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case_id, case in report["cases"].items():
        extra = _case_cells(case)
        for region in REGIONS:
            s = case[region]
            p = after.get(case_id, case)[region] if after is not None else None
            scores = [_cell(s[m]) if m != "status" else s[m] for m in SCORE_COLUMNS]
            scores_after = (
                [_cell(p[m]) if m != "status" else p[m] for m in SCORE_COLUMNS] if p else [""] * len(SCORE_COLUMNS)
            )
            writer.writerow([case_id, _cell(folds.get(case_id)), region, *scores, *scores_after, *extra])
    return buffer.getvalue()


def provenance(report: Mapping[str, Any], command: str = "") -> dict[str, str]:
    """What produced a report, for its page: the command, tolerances, detection rule, versions."""
    import numpy
    import SimpleITK

    from dataset.common.version import package_version

    out = {"command": command} if command else {}
    if report.get("checkpoint"):
        out["checkpoint"] = str(report["checkpoint"])
    for fold in report.get("folds", []):
        out[f"fold {fold['fold']} run"] = str(fold["run"])
    if report.get("detection"):
        out["tumour detection"] = ", ".join(f"{k} {v}" for k, v in report["detection"].items())
    out["pancreas-seg"] = package_version()
    out["python / numpy / SimpleITK"] = f"{platform.python_version()} / {numpy.__version__} / {SimpleITK.__version__}"
    return out


def write_report_files(
    report: Mapping[str, Any], files: ReportFiles, title: str, command: str = "", point: str = "report"
) -> None:
    """report.csv, the plot and report.html (report.json is the caller's, written last)."""
    check_report_files(files, pictures=False)  # again at the end: nothing replaced that appeared meanwhile
    write_bytes_atomic(files.csv, report_csv(report).encode(), point=f"{point}-csv")
    metrics_plot(report, files.plot)
    pictures = {}
    for case_id in report["cases"]:
        path = files.picture(case_id)
        if path is not None and path.is_file():
            pictures[case_id] = path.relative_to(files.html.parent).as_posix()
    page = render_report(
        report,
        title=title,
        pictures=pictures,
        plot=files.plot.relative_to(files.html.parent).as_posix(),
        provenance=provenance(report, command),
    )
    write_html(files.html, page)
