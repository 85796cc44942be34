"""``pancreas qc``: a case sheet per stored case and a dataset table with the cases a person should look at.

The table is built from the store alone (what the trainer sees): pure functions turn one shard's arrays
and attributes into a row (``case_row``) and the rows into outlier flags (``add_outlier_flags``);
``run_qc`` reads, draws and writes. Columns, flags and their rule: docs/how-to/qc.md.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset.common.atomic import ReadError, read_json, remove_stale_temporaries, write_bytes_atomic, write_json_atomic
from dataset.common.errors import PancreasError
from dataset.common.locks import LOCK_NAME, exclusive_lock
from dataset.common.paths import refuse_inside
from dataset.contract.catalog import Catalog, CatalogRecord, read_catalog
from dataset.contract.fingerprints import store_fingerprint
from dataset.contract.store import IMAGE_LEVELS, StoreError, levels_to_intensity, read_shard, shard_path
from review.report_html import render_index, write_html
from review.sheet import write_case_sheet
from review.statistics import case_statistics, pancreas_mask, table_csv

log = logging.getLogger(__name__)

QC_VERSION = 1
QC_NAME, CSV_NAME, INDEX_NAME, PICTURES_DIR = "qc.json", "qc.csv", "index.html", "pictures"
PERCENTILES = (5, 50, 95)
PARENCHYMA_LABEL = 1  # the gland without its tumour
# Iglewicz and Hoaglin's modified z-score: 0.6745 (x - median) / MAD, an outlier above 3.5
MAD_SCALE, MEAN_AD_SCALE = 0.6745, 0.7979  # 0.6745 / 0.7979 = 1 / 1.253314, their fallback when MAD is 0
FLAGS = ("gland_intensity_outlier", "gland_volume_outlier", "label_touches_edge", "no_tumour", "no_gland")
COLUMNS = (
    "case",
    "split",
    "status",
    "error",
    "geometry_source",
    "original_spacing_z_mm",
    "original_spacing_y_mm",
    "original_spacing_x_mm",
    "original_slices",
    "stored_shape_z",
    "stored_shape_y",
    "stored_shape_x",
    *(f"{region}_p{q}_intensity" for region in ("body", "gland") for q in PERCENTILES),
    "parenchyma_p50_intensity",
    "gland_ml",
    "tumour_ml",
    "tumour_count",
    "gland_intensity_z",
    "gland_volume_z",
    *FLAGS,
    "picture",
)
RECORDED, STORED_GRID = "original scan (shard attributes)", "stored grid (original geometry not recorded)"


class QcError(PancreasError, ValueError):
    """An output folder ``pancreas qc`` refuses; the message names it."""


@dataclass(frozen=True)
class QcParams:
    """How cases are flagged: a robust z-score above ``outlier_z`` over at least ``min_cases`` glands."""

    outlier_z: float = 3.5
    min_cases: int = 3

    def __post_init__(self) -> None:
        if not self.outlier_z > 0:
            raise QcError(f"outlier_z must be positive, got {self.outlier_z}")
        if self.min_cases < 3:
            raise QcError(f"min_cases must be at least 3 (a median and a spread), got {self.min_cases}")


@dataclass(frozen=True)
class QcSummary:
    """What a run wrote and what a person should look at."""

    out_dir: Path
    index_html: Path
    cases: int
    errors: Mapping[str, str] = field(default_factory=dict)
    flagged: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    seconds: float = 0.0


# ---- pure: one case ---------------------------------------------------------------------------------------


def level_percentiles(levels: np.ndarray, mask: np.ndarray, qs: Sequence[float] = PERCENTILES) -> list[float | None]:
    """Percentiles of the stored intensity (level / 255) under ``mask``; None for an empty mask.

    Exact for 8-bit levels: the smallest level whose cumulative share reaches q (numpy's "inverted_cdf").
    """
    counts = np.bincount(levels[mask].ravel(), minlength=IMAGE_LEVELS + 1)
    total = int(counts.sum())
    if total == 0:
        return [None for _ in qs]
    cumulative = np.cumsum(counts)
    return [round(int(np.searchsorted(cumulative, q / 100 * total)) / IMAGE_LEVELS, 4) for q in qs]


def body_mask(levels: np.ndarray) -> np.ndarray:
    """Voxels brighter than the case's darkest level: everything at or below the window's low end is that level."""
    return levels > levels.min() if levels.size else np.zeros(levels.shape, bool)


def stored_spacing_zyx(attrs: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[float, float, float]:
    """The stored grid's spacing (z, y, x) mm: the shard's ``spacing`` (x, y, z), else the store config's."""
    spacing = attrs.get("spacing", config.get("target_spacing_mm"))
    if spacing is None or len(spacing) != 3:
        raise StoreError(f"{attrs.get('case_id', '?')}: the shard records no spacing and the catalog config none")
    x, y, z = (float(v) for v in spacing)
    return z, y, x


def geometry_columns(attrs: Mapping[str, Any], stored_zyx: tuple[float, ...], shape: tuple[int, ...]) -> dict:
    """The original scan's spacing and slice count as recorded in the shard, else the stored grid's, said so."""
    spacing, size = attrs.get("original_spacing"), attrs.get("original_size")
    if spacing is not None and size is not None and len(spacing) == 3 and len(size) == 3:
        zyx, slices, source = tuple(float(v) for v in spacing[::-1]), int(size[2]), RECORDED
    else:
        zyx, slices, source = stored_zyx, int(shape[0]), STORED_GRID
    names = ("original_spacing_z_mm", "original_spacing_y_mm", "original_spacing_x_mm")
    return {"geometry_source": source, **{n: round(v, 4) for n, v in zip(names, zyx)}, "original_slices": slices}


def picture_name(case_id: str) -> str:
    """A file name for the case's sheet: the id itself when it is plain, else a cleaned id plus a hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id).lstrip(".") or "_"
    if safe != case_id:
        safe += "-" + hashlib.sha1(case_id.encode()).hexdigest()[:8]
    return f"{PICTURES_DIR}/{safe}.png"


def empty_row(case_id: str, split: str) -> dict[str, Any]:
    return {**dict.fromkeys(COLUMNS), "case": case_id, "split": split, "status": "ok"}


def error_row(case_id: str, split: str, message: str) -> dict[str, Any]:
    """The row of a case that could not be read: its one-line reason, nothing measured."""
    one_line = " ".join(str(message).split())
    return {**empty_row(case_id, split), "status": "error", "error": f"{case_id}: {one_line}"}


def case_row(
    case_id: str,
    split: str,
    levels: np.ndarray,
    label: np.ndarray | None,
    attrs: Mapping[str, Any],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything of one case's row but the dataset-wide outlier flags (``add_outlier_flags``)."""
    spacing = stored_spacing_zyx(attrs, config)
    row = empty_row(case_id, split)
    row.update(geometry_columns(attrs, spacing, levels.shape))
    row.update({f"stored_shape_{a}": int(n) for a, n in zip("zyx", levels.shape)})
    row.update(zip((f"body_p{q}_intensity" for q in PERCENTILES), level_percentiles(levels, body_mask(levels))))
    row["picture"] = picture_name(case_id)
    if label is None:
        return row
    if label.shape != levels.shape:
        raise StoreError(f"label has shape {label.shape} but the image {levels.shape}")
    row.update(zip((f"gland_p{q}_intensity" for q in PERCENTILES), level_percentiles(levels, pancreas_mask(label))))
    row["parenchyma_p50_intensity"] = level_percentiles(levels, label == PARENCHYMA_LABEL, (50,))[0]
    stats = case_statistics(label, spacing)
    row.update(
        gland_ml=round(stats["pancreas_ml"], 3),
        tumour_ml=round(stats["tumour_ml"], 3),
        tumour_count=stats["tumours"],
        label_touches_edge=bool(stats["touches_edge"]),
        no_tumour=stats["tumour_voxels"] == 0,
        no_gland=stats["pancreas_voxels"] == 0,
    )
    return row


# ---- pure: the dataset ------------------------------------------------------------------------------------


def robust_z(values: Mapping[str, float], min_cases: int = 3) -> dict[str, float | None]:
    """Iglewicz and Hoaglin's modified z-score of each value against the others' median.

    0.6745 (x - median) / MAD; when the MAD is 0 (more than half the values equal), the mean absolute
    deviation times 1.2533 stands in; all values equal gives 0. None for all with fewer than ``min_cases``.
    """
    if len(values) < min_cases:
        return dict.fromkeys(values)
    data = np.array(list(values.values()), dtype=np.float64)
    deviation = np.abs(data - np.median(data))
    mad = float(np.median(deviation))
    scale = mad / MAD_SCALE if mad > 0 else float(deviation.mean()) / MEAN_AD_SCALE
    if scale == 0:
        return dict.fromkeys(values, 0.0)
    return {k: round(float((v - np.median(data)) / scale), 3) for k, v in values.items()}


def add_outlier_flags(rows: Sequence[Mapping[str, Any]], params: QcParams) -> list[dict[str, Any]]:
    """The rows with ``gland_*_z`` and ``gland_*_outlier``, computed over the cases that have a gland.

    The intensity rule uses the median of label 1 alone: a large hypodense tumour pulls the whole gland's
    median down (on the demo store it flagged the four cases with the largest tumours, and nothing else).
    """
    result = [dict(r) for r in rows]
    for name, column in (("intensity", "parenchyma_p50_intensity"), ("volume", "gland_ml")):
        known = [r for r in rows if r["status"] == "ok" and r.get("no_gland") is False and r.get(column) is not None]
        z = robust_z({r["case"]: float(r[column]) for r in known}, params.min_cases)
        for r in result:
            if r["case"] in z:
                score = z[r["case"]]
                r[f"gland_{name}_z"] = score
                r[f"gland_{name}_outlier"] = None if score is None else abs(score) > params.outlier_z
    return result


def flags_of(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(f for f in FLAGS if row.get(f) is True)


def qc_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as CSV, ``COLUMNS`` in order; None is an empty cell, bools true/false."""
    return table_csv(rows, COLUMNS)


def qc_record(rows: Sequence[Mapping[str, Any]], store: Path, catalog: Catalog, params: QcParams) -> dict[str, Any]:
    """What ``qc.json`` holds: where it came from, how it flagged, the rows. No times: a rerun is identical."""
    return {
        "version": QC_VERSION,
        "complete": True,
        "store": str(store),
        "store_fingerprint": store_fingerprint(catalog),
        "preprocess_config_fingerprint": catalog.config_fingerprint,
        "parameters": {
            **asdict(params),
            "outlier_rule": "|0.6745 (x - median) / MAD| > outlier_z over the cases with a gland; "
            "x: parenchyma_p50_intensity, gland_ml",
            "percentiles": list(PERCENTILES),
            "intensity": "stored intensity level / 255 (windowed"
            + (", equalised" if catalog.config.get("equalize", True) else ", linear")
            + "), not HU",
        },
        "columns": list(COLUMNS),
        "errors": {r["case"]: r["error"] for r in rows if r["status"] == "error"},
        "flagged": {r["case"]: list(flags_of(r)) for r in rows if flags_of(r)},
        "cases": list(rows),
    }


def _triple(row: Mapping[str, Any], names: Sequence[str], digits: int, sep: str = "/") -> str | None:
    """Three values in one cell without spaces (a table this wide would break them over lines)."""
    values = [row.get(n) for n in names]
    return None if any(v is None for v in values) else sep.join(f"{v:.{digits}f}" for v in values)


def _notes(row: Mapping[str, Any]) -> str | None:
    if row["status"] == "error":
        return str(row["error"])
    if row.get("no_gland") is None:
        return f"no label ({row['split']})"
    return ", ".join(f.replace("_", " ") for f in flags_of(row)) or None  # spaces: the cell may wrap


def display_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The page's rows: errors first, then flagged cases, then the rest; a few columns, triples in one cell.

    The page must fit a laptop screen: the body's p5 and p95, z-scores and the split stay in the CSV.
    """
    times = "\u00d7"
    shown = []
    for r in rows:
        shown.append(
            {
                "case": r["case"],
                "scan_spacing_zyx_mm": _triple(r, [f"original_spacing_{a}_mm" for a in "zyx"], 2, times),
                "scan_slices": r.get("original_slices"),
                "stored_zyx": _triple(r, [f"stored_shape_{a}" for a in "zyx"], 0, times),
                "body_p50": r.get("body_p50_intensity"),
                "gland_p5/p50/p95": _triple(r, [f"gland_p{q}_intensity" for q in PERCENTILES], 2),
                "gland_ml": r.get("gland_ml"),
                "tumour_ml": r.get("tumour_ml"),
                "tumours": r.get("tumour_count"),
                "notes": _notes(r),
                "_order": (r["status"] != "error", not flags_of(r)),
            }
        )
    shown.sort(key=lambda s: s.pop("_order"))
    return shown


DISPLAY_COLUMNS = (
    "case",
    "scan_spacing_zyx_mm",
    "scan_slices",
    "stored_zyx",
    "body_p50",
    "gland_p5/p50/p95",
    "gland_ml",
    "tumour_ml",
    "tumours",
    "notes",
)


def qc_page(rows: Sequence[Mapping[str, Any]], record: Mapping[str, Any], store_name: str) -> str:
    pictures = {r["case"]: r["picture"] for r in rows if r.get("picture")}
    provenance = {
        "store": str(record["store"]),
        "store fingerprint": str(record["store_fingerprint"]),
        "outlier rule": f"{record['parameters']['outlier_rule']} (outlier_z {record['parameters']['outlier_z']})",
        "intensity": str(record["parameters"]["intensity"]),
        "table": f"{QC_NAME}, {CSV_NAME} (every column: docs/how-to/qc.md)",
    }
    return render_index(f"QC of {store_name}", display_rows(rows), DISPLAY_COLUMNS, pictures, provenance)


# ---- the output folder ------------------------------------------------------------------------------------


def previous_record(out: Path) -> dict[str, Any] | None:
    """The folder's ``qc.json`` if it is one this command wrote; None for an empty or missing folder.

    QcError for a non-empty folder without one (someone else's files), or with another ``qc.json``.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise QcError(f"--out {out} exists and is not a folder; choose a folder for the qc outputs")
    path = out / QC_NAME
    if not path.is_file():
        others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        if others:
            raise QcError(
                f"--out {out} holds {len(others)} entries (e.g. {others[0]}) but no {QC_NAME}: it is not a "
                "previous qc output; choose an empty or new folder"
            )
        return None
    try:
        data = read_json(path, "qc record")
    except ReadError as err:
        raise QcError(str(err)) from None
    if not isinstance(data, dict) or data.get("version") != QC_VERSION or not isinstance(data.get("cases"), list):
        raise QcError(f"{path}: not a qc record of version {QC_VERSION}; choose another --out folder")
    return data


def check_qc_output(out: str | Path, store: str | Path) -> dict[str, Any] | None:
    """Every refusal, before the lock is taken: ``--out`` inside the store, or someone else's folder."""
    out, store = Path(out), Path(store)
    refuse_inside(out, [("store", store)], "--out")
    return previous_record(out)


def _stale_pictures(previous: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Pictures the previous run wrote that this one does not: cases since gone from the store."""
    if not previous:
        return []
    now = {r.get("picture") for r in rows}
    old = {c.get("picture") for c in previous["cases"] if isinstance(c, dict)}
    ours = {p for p in old - now if isinstance(p, str) and p.startswith(f"{PICTURES_DIR}/")}
    return sorted(p for p in ours if "/" not in p.removeprefix(f"{PICTURES_DIR}/") and p.endswith(".png"))


# ---- the run ----------------------------------------------------------------------------------------------


def qc_case(store: Path, case_id: str, record: CatalogRecord, config: Mapping[str, Any], out: Path) -> dict:
    """Read one case, measure it and draw its sheet; an error row (never an exception) when it cannot."""
    if not record.done:
        return error_row(case_id, record.split, f"not in the store (preprocessing {record.status}: {record.error})")
    try:
        levels, label, attrs = read_shard(shard_path(store, case_id))
        row = case_row(case_id, record.split, levels, label, attrs, config)
        spacing = stored_spacing_zyx(attrs, config)
        write_case_sheet(out / row["picture"], levels_to_intensity(levels), spacing, case_id, label, window=None)
    except (PancreasError, OSError, ValueError) as err:
        log.warning("%s: %s", case_id, err)
        return error_row(case_id, record.split, str(err))
    return row


def run_qc(store: str | Path, out: str | Path, params: QcParams = QcParams(), progress: bool = True) -> QcSummary:
    """Write ``qc.json``, ``qc.csv``, ``index.html`` and ``pictures/<case>.png`` of every case of ``store``.

    A rerun redoes every case and rewrites the same JSON and CSV bytes for the same store; ``qc.json`` is
    written first as a claim (``complete: false``) and last in full.
    """
    started = time.perf_counter()
    store, out = Path(store).resolve(), Path(out)
    catalog = read_catalog(store)
    check_qc_output(out, store)
    with exclusive_lock(out):
        previous = check_qc_output(out, store)  # again under the lock: nobody can change it now
        if previous is None:  # claim the folder first, so that a killed first run can be rerun into it
            write_json_atomic(out / QC_NAME, {"version": QC_VERSION, "complete": False, "cases": []})
        remove_stale_temporaries(out)
        (out / PICTURES_DIR).mkdir(exist_ok=True)
        remove_stale_temporaries(out / PICTURES_DIR)
        rows = [
            qc_case(store, case_id, record, catalog.config, out)
            for case_id, record in tqdm(sorted(catalog.cases.items()), desc="qc", unit="case", disable=not progress)
        ]
        rows = add_outlier_flags(rows, params)
        record = qc_record(rows, store, catalog, params)
        for stale in _stale_pictures(previous, rows):
            (out / stale).unlink(missing_ok=True)
        write_bytes_atomic(out / CSV_NAME, qc_csv(rows).encode("utf-8"))
        write_html(out / INDEX_NAME, qc_page(rows, record, store.name))
        write_json_atomic(out / QC_NAME, record)  # last: its presence says the folder is a whole qc output
    return QcSummary(
        out_dir=out,
        index_html=out / INDEX_NAME,
        cases=len(rows),
        errors=record["errors"],
        flagged={c: tuple(f) for c, f in record["flagged"].items()},
        seconds=time.perf_counter() - started,
    )
