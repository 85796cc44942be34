"""The evaluation report as one offline HTML page and a PNG plot: no scripts, no network, every text escaped.

See docs/explanation/internals.md#the-case-sheet-and-the-report-page-reviewsheetpy-reviewreport_htmlpy.
"""

from __future__ import annotations

import html
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from matplotlib.figure import Figure

from dataset.common.atomic import write_bytes_atomic
from dataset.common.figures import write_figure

log = logging.getLogger(__name__)

REGION_ORDER = ("pancreas", "pancreas_label1", "tumour")  # a report's own "regions" key wins
PLOT_METRICS = (("dice", "Dice"), ("nsd", "NSD"))
DIAMETER_BINS = ("<10", "10-20", "20-30", ">=30")
STATISTICS_COLUMNS = ("pancreas_ml", "tumour_ml", "tumours", "largest_tumour_diameter_mm", "touches_edge")
# every page says who wrote it: a command replaces only pages that carry this mark
GENERATOR = "pancreas-seg"
MAX_OTHER_STATISTICS = 6  # columns shown of a report whose statistics hold none of STATISTICS_COLUMNS

CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'"
CSS = """
:root { --ink: #1d2430; --muted: #5f6b7a; --line: #d8dee6; --band: #f4f6f9; --accent: #1f5f99; --bad: #fdecec; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
p.lead { color: var(--muted); margin: 0 0 10px; }
nav { font-size: 14px; margin: 6px 0 0; }
nav a { margin-right: 16px; }
a { color: var(--accent); }
table { border-collapse: collapse; width: 100%; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: middle; }
thead th { background: var(--band); font-weight: 600; border-bottom: 2px solid var(--line); }
thead tr.group th { text-align: center; border-bottom: 1px solid var(--line); }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num, th.num { text-align: right; }
.start { border-left: 1px solid var(--line); }
td.muted { color: var(--muted); }
tr.failed td { background: var(--bad); }
td.error { color: #8a1c1c; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px;
  overflow-wrap: anywhere; }
table.kv { width: auto; min-width: 50%; }
table.kv th { background: none; width: 1%; white-space: nowrap; color: var(--muted); font-weight: 500; }
table.kv td { overflow-wrap: anywhere; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
table.figures th { white-space: normal; width: auto; }
table.figures td { white-space: nowrap; font-family: inherit; font-size: 14px; text-align: right; }
td.case { font-weight: 600; overflow-wrap: anywhere; min-width: 11em; }  /* ids wrap only past 11em */
img.thumb { height: 64px; width: auto; display: block; border: 1px solid var(--line); border-radius: 3px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption, p.note { color: var(--muted); font-size: 13px; margin: 6px 0 0; }
.split { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }
.split > div { flex: 1 1 340px; }
@media print { main { max-width: none; padding: 0; } nav { display: none; } }
"""


class Html(str):
    """Text already escaped or built from escaped parts: the one kind of str the builders pass through as is."""


def escape(value: object) -> Html:
    """``html.escape(str(value), quote=True)``; markup built here stays as it is."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def _join(parts: Iterable[Html]) -> Html:
    return Html("".join(escape(p) for p in parts))


def relative_link(path: str | Path | None) -> str | None:
    """The URL-quoted form of a relative path inside the report's folder, or None (with a warning)
    for anything else: empty, absolute, with ``..``, a backslash, a control character or a scheme."""
    if path is None:
        return None
    text = os.fspath(path)
    parts = [p for p in text.split("/") if p not in ("", ".")]
    refused = (
        not parts
        or text.startswith("/")
        or "\\" in text
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
        or ".." in parts
        or ":" in parts[0]
        or bool(urlsplit(text).scheme or urlsplit(text).netloc)
    )
    if refused:
        log.warning("link %r dropped: only relative paths inside the report's folder are linked", text)
        return None
    return quote("/".join(parts), safe="/")


def fmt(value: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals (NumPy scalars too), "yes"/"no" for a bool, "-" for None, NaN or nothing."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.{digits}f}" if math.isfinite(value) else "-"
    return str(value)


def _get(data: object, *keys: object) -> Any:
    """``data[k1][k2]...``, or None where a level is missing or not a mapping (a report of an older version)."""
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def _mapping(data: object) -> Mapping[str, Any]:
    return data if isinstance(data, Mapping) else {}


# ---- table builders ----------------------------------------------------------------------------------------


def cell(value: object, cls: str = "", *, tag: str = "td", colspan: int = 1) -> Html:
    attrs = (f' class="{escape(cls)}"' if cls else "") + (f' colspan="{colspan}"' if colspan > 1 else "")
    return Html(f"<{tag}{attrs}>{escape(value)}</{tag}>")


def num(value: object, digits: int = 3, cls: str = "") -> Html:
    """A right-aligned number; ``cls`` adds classes ("start": the first column of a group)."""
    return cell(fmt(value, digits), " ".join(filter(None, ["num", "muted" if fmt(value, digits) == "-" else "", cls])))


def row(cells: Iterable[Html], cls: str = "") -> Html:
    attr = f' class="{escape(cls)}"' if cls else ""
    return Html(f"<tr{attr}>{_join(cells)}</tr>")


def table(head: Iterable[Html], rows: Iterable[Html], cls: str = "") -> Html:
    """``head``: header rows (``row`` of ``cell(..., tag="th")``); ``rows``: body rows."""
    attr = f' class="{escape(cls)}"' if cls else ""
    return Html(f"<table{attr}><thead>{_join(head)}</thead><tbody>{_join(rows)}</tbody></table>")


def key_value_table(items: Mapping[str, object], cls: str = "kv") -> Html:
    return table([], [row([cell(k, tag="th"), cell(fmt(v))]) for k, v in items.items()], cls)


def picture_cell(picture: str | Path | None, label: str) -> Html:
    link = relative_link(picture)
    if link is None:
        return cell("-", "muted start")
    href = escape(link)
    img = f'<img class="thumb" src="{href}" loading="lazy" alt="{escape(label)}">'
    return cell(Html(f'<a href="{href}">{img}</a>'), "start")


def section(anchor: str, heading: str, *body: Html) -> Html:
    return Html(f'<section id="{escape(anchor)}"><h2>{escape(heading)}</h2>{_join(body)}</section>')


def page(title: str, lead: str, sections: Sequence[tuple[str, str, Html]]) -> Html:
    """The whole HTML5 document: inline CSS, a contents line linking each section, the sections."""
    nav = _join(Html(f'<a href="#{escape(a)}">{escape(h)}</a>') for a, h, _ in sections)
    body = _join(section(a, h, b) for a, h, b in sections)
    return Html(
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">'
        '<meta name="referrer" content="no-referrer">'
        f'<meta name="generator" content="{GENERATOR}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
        f'<body><main><header><h1>{escape(title)}</h1><p class="lead">{escape(lead)}</p>'
        f"<nav>{nav}</nav></header>{body}</main></body></html>\n"
    )


# ---- the evaluation report ---------------------------------------------------------------------------------


def regions_of(report: Mapping[str, Any]) -> list[str]:
    """The report's regions in its own order, else the known ones found in its summary or cases."""
    declared = _get(report, "regions")
    if isinstance(declared, Mapping) and declared:
        return [str(r) for r in declared]
    seen = set(_mapping(_get(report, "summary"))) | {
        str(r) for scores in _mapping(_get(report, "cases")).values() for r in _mapping(scores)
    }
    return [r for r in REGION_ORDER if r in seen]


def region_label(report: Mapping[str, Any], region: str) -> str:
    labels = _get(report, "regions", region)
    if isinstance(labels, Sequence) and not isinstance(labels, str) and labels:
        return f"{region} (label{'s' if len(labels) > 1 else ''} {', '.join(str(x) for x in labels)})"
    return region


def failed_cases(report: Mapping[str, Any]) -> dict[str, str]:
    """{case id: why it has no score}: errors, then missing predictions without an error."""
    failed = {str(c): str(e) for c, e in _mapping(_get(report, "errors")).items()}
    missing = _get(report, "missing_predictions")
    for case_id in missing if isinstance(missing, list) else []:
        failed.setdefault(str(case_id), "no prediction")
    return failed


def worst_first(report: Mapping[str, Any]) -> list[str]:
    """Case ids, failed cases first (by id), then by pancreas Dice from lowest; no Dice sorts before any."""
    failed = failed_cases(report)

    def key(case_id: str) -> tuple[bool, float, str]:
        dice = _get(report, "cases", case_id, "pancreas", "dice")
        known = isinstance(dice, numbers.Real) and math.isfinite(dice)
        return known, float(dice) if known else 0.0, case_id

    scored = [str(c) for c in _mapping(_get(report, "cases")) if str(c) not in failed]
    return sorted(failed) + sorted(scored, key=key)


def summary_section(report: Mapping[str, Any]) -> Html:
    groups = [("", 1), ("Dice", 2), ("NSD", 3), ("HD95 (mm)", 2), ("Cases", 3)]
    head = [
        row([cell(name, tag="th", colspan=span) for name, span in groups], "group"),
        row(
            [cell("Region", tag="th")]
            + [cell(h, "num", tag="th") for h in ("mean", "median", "mean", "median", "tolerance mm")]
            + [cell(h, "num", tag="th") for h in ("mean", "median", "scored", "absent", "HD95 undefined")]
        ),
    ]
    rows = []
    for region in regions_of(report):
        stats = _mapping(_get(report, "summary", region))
        values = [
            (_get(stats, "dice", "mean"), 3),
            (_get(stats, "dice", "median"), 3),
            (_get(stats, "nsd", "mean"), 3),
            (_get(stats, "nsd", "median"), 3),
            (_get(report, "nsd_tolerance_mm", region), 1),
            (_get(stats, "hd95_mm", "mean"), 2),
            (_get(stats, "hd95_mm", "median"), 2),
            (_get(stats, "dice", "n"), 0),
            (_get(stats, "dice", "n_absent"), 0),
            (_get(stats, "hd95_mm", "n_undefined"), 0),
        ]
        rows.append(row([cell(region_label(report, region)), *(num(v, d) for v, d in values)]))
    note = Html(
        '<p class="note">Means and medians over the cases where a metric is defined. "absent": the region is in '
        'neither map (no score). "HD95 undefined": the region is in only one map.</p>'
    )
    return _join([table(head, rows), note])


def _ratio(value: object, part: object, whole: object) -> str:
    counts = f" ({fmt(part)} of {fmt(whole)})" if part is not None and whole is not None else ""
    return fmt(value) + counts if fmt(value) != "-" else "-"


def _of_cases(value: object, cases: object) -> str:
    return f"{fmt(value)} (of {fmt(cases)} cases)" if fmt(value) != "-" and cases is not None else fmt(value)


def detection_section(report: Mapping[str, Any]) -> Html | None:
    detection = _get(report, "summary", "tumour_detection")
    if not isinstance(detection, Mapping):
        return None
    tumours, found = detection.get("tumours"), detection.get("detected")
    overall = {
        "Tumours detected (sensitivity)": _ratio(detection.get("sensitivity"), found, tumours),
        "False tumours per case": fmt(detection.get("false_per_case"), 2),
        "False tumours in all": fmt(detection.get("false")),
        "Cases with a tumour in which one was found (case sensitivity)": _of_cases(
            detection.get("case_sensitivity"), detection.get("positive_cases")
        ),
        "Tumour-free cases predicted tumour-free (case specificity)": _of_cases(
            detection.get("case_specificity"), detection.get("negative_cases")
        ),
    }
    head = [row([cell("Diameter (mm)", tag="th")] + [cell(h, "num", tag="th") for h in ("tumours", "found", "sens.")])]
    bins = _mapping(detection.get("by_diameter_mm"))
    rows = [
        row([cell(name)] + [num(_get(bins, name, k)) for k in ("truth", "detected", "sensitivity")])
        for name in [*DIAMETER_BINS, *(str(b) for b in bins if b not in DIAMETER_BINS)]
        if name in bins
    ]
    parts = [Html(f"<div>{key_value_table(overall, 'kv figures')}</div>")]
    if rows:
        parts.append(Html(f"<div>{table(head, rows)}</div>"))
    return Html(f'<div class="split">{_join(parts)}</div>')


def _region_cells(scores: Mapping[str, Any], with_surface: bool) -> list[Html]:
    status = scores.get("status")
    dice = cell("absent", "num muted start") if status == "absent" else num(scores.get("dice"), cls="start")
    if not with_surface:
        return [dice]
    return [dice, num(scores.get("nsd")), num(scores.get("hd95_mm"), 2)]


def _detection_cells(detection: object) -> list[Html]:
    d = _mapping(detection)
    found = f"{fmt(d.get('detected'))} / {fmt(d.get('truth'))}" if d else "-"
    return [cell(found, "num start" if d else "num muted start"), num(d.get("false"))]


def case_columns(report: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(region, with NSD and HD95) of the per-case table: label 1 alone shows its Dice only."""
    return [(r, r != "pancreas_label1") for r in regions_of(report)]


def cases_section(report: Mapping[str, Any], pictures: Mapping[str, str | Path]) -> Html:
    columns = case_columns(report)
    with_detection = any(
        isinstance(_get(c, "tumour_detection"), Mapping) for c in _mapping(report.get("cases")).values()
    )
    width = sum(3 if s else 1 for _, s in columns) + (2 if with_detection else 0)
    groups = [cell("", tag="th")] + [cell(r, "start", tag="th", colspan=3 if s else 1) for r, s in columns]
    groups += [cell("detection", "start", tag="th", colspan=2)] if with_detection else []
    subhead = [cell("Case", tag="th")]
    for _, with_surface in columns:
        names = ("Dice", "NSD", "HD95 mm") if with_surface else ("Dice",)
        subhead += [cell(h, "num start" if i == 0 else "num", tag="th") for i, h in enumerate(names)]
    subhead += [cell("found", "num start", tag="th"), cell("false", "num", tag="th")] if with_detection else []
    head = [row([*groups, cell("", "start", tag="th")], "group"), row([*subhead, cell("Picture", "start", tag="th")])]
    failed = failed_cases(report)
    rows = []
    for case_id in worst_first(report):
        picture = picture_cell(pictures.get(case_id), f"case {case_id}")
        if case_id in failed:
            rows.append(
                row([cell(case_id, "case"), cell(failed[case_id], "error start", colspan=width), picture], "failed")
            )
            continue
        scores = _mapping(_get(report, "cases", case_id))
        cells = [cell(case_id, "case")]
        for region, with_surface in columns:
            cells += _region_cells(_mapping(scores.get(region)), with_surface)
        cells += _detection_cells(scores.get("tumour_detection")) if with_detection else []
        rows.append(row([*cells, picture]))
    if not rows:
        return Html('<p class="note">No cases.</p>')
    note = Html(
        '<p class="note">Worst first: cases that could not be scored, then by pancreas Dice from the lowest. '
        '"found": detected / true tumours; "false": predicted tumours matching none.</p>'
    )
    return _join([table(head, rows), note])


def statistics_columns(report: Mapping[str, Any]) -> list[str]:
    """The ``STATISTICS_COLUMNS`` the cases hold (the rest, HU and voxel counts, stay in report.json);
    a report with none of them shows its first few others."""
    seen: dict[str, None] = {}
    for scores in _mapping(_get(report, "cases")).values():
        for side in ("truth", "prediction"):
            seen.update(dict.fromkeys(str(k) for k in _mapping(_get(scores, "statistics", side)) if k != "case"))
    return [c for c in STATISTICS_COLUMNS if c in seen] or list(seen)[:MAX_OTHER_STATISTICS]


def statistics_section(report: Mapping[str, Any]) -> Html | None:
    columns = statistics_columns(report)
    if not columns:
        return None
    head = [row([cell("Case", tag="th")] + [cell(c.replace("_", " "), "num", tag="th") for c in columns])]
    rows = []
    for case_id in worst_first(report):
        stats = _get(report, "cases", case_id, "statistics")
        if not isinstance(stats, Mapping):
            continue
        cells = [cell(case_id, "case")]
        for c in columns:
            truth, pred = fmt(_get(stats, "truth", c), 1), fmt(_get(stats, "prediction", c), 1)
            cells.append(cell(f"{truth} / {pred}", "num"))
        rows.append(row(cells))
    note = Html('<p class="note">Each cell: truth / prediction. Volumes in ml, diameters in mm.</p>')
    return _join([table(head, rows), note])


def plot_section(plot: str | Path | None) -> Html | None:
    link = relative_link(plot)
    if link is None:
        return None
    alt = "Dice and NSD per region, one dot per case, the line at the median"
    img = f'<a href="{escape(link)}"><img src="{escape(link)}" alt="{escape(alt)}"></a>'
    return Html(f"<figure>{img}<figcaption>{escape(alt)}.</figcaption></figure>")


def provenance_items(report: Mapping[str, Any], provenance: Mapping[str, object]) -> dict[str, object]:
    """What produced the report: the report's own run, predictions and tolerances, then ``provenance``."""
    items: dict[str, object] = {k: report[k] for k in ("run", "predictions") if isinstance(report.get(k), str)}
    tolerances = _mapping(_get(report, "nsd_tolerance_mm"))
    if tolerances:
        items["NSD tolerance (mm)"] = ", ".join(f"{r} {fmt(t, 1)}" for r, t in tolerances.items())
    items.update({str(k): v for k, v in provenance.items()})
    return items


def _lead(report: Mapping[str, Any]) -> str:
    failed = failed_cases(report)
    scored = [c for c in _mapping(_get(report, "cases")) if str(c) not in failed]
    text = f"{len(scored)} case{'s' if len(scored) != 1 else ''} scored"
    if failed:
        text += f", {len(failed)} could not be scored"
    unscored = _get(report, "predictions_without_truth")
    if isinstance(unscored, list) and unscored:
        text += f", {len(unscored)} prediction(s) without truth not scored: " + ", ".join(str(c) for c in unscored)
    return text + "."


def render_report(
    report: Mapping[str, Any],
    *,
    title: str,
    pictures: Mapping[str, str | Path],
    plot: str | Path | None,
    provenance: Mapping[str, str],
) -> str:
    """The evaluation report as one self-contained HTML5 page.

    Args:
        report: what ``pancreas evaluate`` wrote; any optional key may be missing.
        pictures: {case id: path relative to the page's folder}; other paths are dropped.
        plot: the ``metrics_plot`` PNG, relative to the page's folder, or None.
        provenance: what produced the report (runs, checkpoint, config, versions), shown as given.
    """
    candidates = [
        ("summary", "Summary per region", summary_section(report)),
        ("plot", "Dice and NSD per case", plot_section(plot)),
        ("detection", "Tumour detection", detection_section(report)),
        ("cases", "Cases, worst first", cases_section(report, {str(k): v for k, v in pictures.items()})),
        ("statistics", "Volumes and tumours per case", statistics_section(report)),
        ("provenance", "Provenance", key_value_table(provenance_items(report, provenance))),
    ]
    sections = [(a, h, b) for a, h, b in candidates if b is not None]
    return str(page(title, _lead(report), sections))


def _is_numeric_column(values: Sequence[object]) -> bool:
    """Numbers (or nothing) in every row, and at least one number: the column is right-aligned."""
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, numbers.Real) for v in present)


def render_index(
    title: str,
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    pictures: Mapping[str, str | Path],
    provenance: Mapping[str, str],
    *,
    key: str | None = None,
) -> str:
    """A table page (``predict --preview``'s index, ``pancreas qc``): one row per mapping, the given columns
    in order, and the picture of ``pictures[str(row[key])]`` (``key`` defaults to the first column)."""
    key = key if key is not None else (columns[0] if columns else None)
    numeric = [c for c in columns if _is_numeric_column([item.get(c) for item in rows])]
    titles = [cell(c.replace("_", " "), "num" if c in numeric else "", tag="th") for c in columns]
    head = [row([*titles, cell("Picture", "start", tag="th")])]
    body = []
    for item in rows:
        cells = [
            num(item.get(c)) if c in numeric else cell(fmt(item.get(c)), "case" if c == key else "") for c in columns
        ]
        name = str(item.get(key, "")) if key is not None else ""
        body.append(row([*cells, picture_cell(pictures.get(name), name)]))
    sections = [("table", "Cases", table(head, body) if body else Html('<p class="note">No rows.</p>'))]
    sections.append(("provenance", "Provenance", key_value_table(dict(provenance))))
    return str(page(title, f"{len(rows)} row{'s' if len(rows) != 1 else ''}.", sections))


# ---- writers -----------------------------------------------------------------------------------------------


def write_html(path: str | Path, text: str) -> Path:
    """Write a rendered page atomically and durably (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"))
    return Path(path)


# ---- the plot ----------------------------------------------------------------------------------------------


def metric_values(report: Mapping[str, Any], metric: str) -> dict[str, list[float]]:
    """{region: finite values of ``metric`` over the report's cases}, regions in the report's order."""
    out: dict[str, list[float]] = {}
    for region in regions_of(report):
        values = [_get(scores, region, metric) for scores in _mapping(_get(report, "cases")).values()]
        out[region] = [float(v) for v in values if isinstance(v, numbers.Real) and math.isfinite(v)]
    return out


def jitter(n: int, width: float = 0.28) -> np.ndarray:
    """Fixed horizontal offsets in [-width/2, width/2]: the same report always draws the same picture."""
    return (np.random.default_rng(0).random(n) - 0.5) * width


def _strip_axes(axes: Any, values: Mapping[str, list[float]], name: str) -> None:
    for x, points in enumerate(values.values()):
        if points:
            axes.scatter(x + jitter(len(points)), points, s=18, alpha=0.7, color="#1f5f99", linewidths=0)
            median = float(np.median(points))
            axes.hlines(median, x - 0.3, x + 0.3, color="#c0392b", linewidth=2.2, zorder=3)
            axes.annotate(f"{median:.2f}", (x + 0.32, median), va="center", fontsize=8, color="#c0392b")
    axes.set_xticks(range(len(values)), [f"{r}\nn={len(p)}" for r, p in values.items()], fontsize=9)
    axes.set_xlim(-0.6, max(len(values), 1) - 0.4)
    axes.set_ylim(-0.03, 1.03)
    axes.set_title(name, fontsize=11)
    axes.grid(axis="y", color="#e3e7ec", linewidth=0.8)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if not any(values.values()):
        axes.text(0.5, 0.5, "no scored cases", transform=axes.transAxes, ha="center", color="#5f6b7a")


def metrics_figure(report: Mapping[str, Any]) -> Figure:
    """Dice and NSD per region, one dot per case and the median as a line (no pyplot state)."""
    figure = Figure(figsize=(10, 3.6), dpi=110, layout="constrained")
    for axes, (metric, name) in zip(figure.subplots(1, len(PLOT_METRICS), sharey=True), PLOT_METRICS):
        _strip_axes(axes, metric_values(report, metric), name)
    return figure


def metrics_plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """Draw ``metrics_figure`` to a PNG at ``path``, written atomically; OSError naming the file if incomplete."""
    return write_figure(metrics_figure(report), path)


def is_our_page(path: str | Path) -> bool:
    """Whether ``path`` is a page this project wrote (its generator mark), so it may be replaced."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">' in head


__all__ = [
    "GENERATOR",
    "escape",
    "is_our_page",
    "metrics_plot",
    "relative_link",
    "render_index",
    "render_report",
    "worst_first",
    "write_html",
]
