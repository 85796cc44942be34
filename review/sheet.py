"""The case sheet: orthogonal CT slices through the tumour (or gland) with region outlines, written as a PNG.

Arrays are (z, y, x) on the canonical LPS grid. See docs/how-to/evaluate.md#pictures-truth-against-prediction
and docs/explanation/internals.md#the-case-sheet-and-the-report-page-reviewsheetpy-reviewreport_htmlpy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dataset.common.figures import write_figure
from review.detection import DEFAULT_MIN_IOU, detect_tumours
from review.statistics import (
    bounding_box,
    centre_voxel,
    check_spacing,
    check_volume,
    pancreas_mask,
    tumour_components,
    tumour_mask,
)

# (level, width) in HU: -160..240 HU, the usual abdominal soft-tissue window (pancreas ~ 40-60 HU enhanced)
SOFT_TISSUE_WINDOW_HU = (40.0, 400.0)
BODY_THRESHOLD_HU = -500.0  # above this is tissue, not air: the body, for the slice choice of an unlabelled case
TRUTH_COLOUR, PREDICTION_COLOUR = "#0072B2", "#E69F00"  # Okabe-Ito blue and orange
PANCREAS_COLOUR, TUMOUR_COLOUR = "#009E73", "#D55E00"  # Okabe-Ito bluish green and vermillion
LineStyle = Literal["solid"] | tuple[float, tuple[float, float]]
REGION_STYLES: dict[str, LineStyle] = {"pancreas": "solid", "tumour": (0, (2.5, 1.5))}  # dash, gap in line widths
MAX_LESION_SLICES = 6  # extra axial panels for missed and false tumours (missed first, each largest first)
LESION_FIELD_MM = 100.0  # side of the square cut around a missed or false tumour
SCALE_BARS_MM = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
PLANES = (("axial", 0), ("coronal", 1), ("sagittal", 2))  # name, the array axis the plane fixes
_GREY = colormaps["gray"].with_extremes(bad="black")  # NaN voxels drawn black


def choose_point(label: np.ndarray, body_mask: np.ndarray | None = None) -> tuple[int, int, int]:
    """Where the sheet's slices cross: the largest tumour, else the gland, else the body, else the middle.

    Each centre is the structure's centre of mass moved onto the structure (``centre_voxel``).
    """
    label = check_volume(label, "label")
    numbered, count = tumour_components(label)
    if count:
        return centre_voxel(numbered == 1)
    gland = pancreas_mask(label)
    if gland.any():
        return centre_voxel(gland)
    if body_mask is not None and np.any(body_mask):
        return centre_voxel(np.asarray(body_mask, dtype=bool))
    z, y, x = (n // 2 for n in label.shape)
    return z, y, x


def plane_of(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2-D slice fixing ``axis``: axial (y, x), coronal (z, x) or sagittal (z, y)."""
    return np.take(volume, index, axis=axis)


def plane_spacing(spacing_zyx: Sequence[float], axis: int) -> tuple[float, float]:
    """(row, column) spacing in mm of the slice fixing ``axis``."""
    rows, cols = (a for a in range(3) if a != axis)
    return float(spacing_zyx[rows]), float(spacing_zyx[cols])


def plane_extent(
    shape: tuple[int, int], spacing_rc: tuple[float, float], rows_up: bool
) -> tuple[float, float, float, float]:
    """imshow ``extent`` (left, right, bottom, top) in mm, pixel centres at index * spacing.

    ``rows_up`` puts row 0 at the bottom (z upward); otherwise row 0 is at the top (anterior up).
    """
    (n_rows, n_cols), (row_mm, col_mm) = shape, spacing_rc
    left, right = -0.5 * col_mm, (n_cols - 0.5) * col_mm
    low, high = -0.5 * row_mm, (n_rows - 0.5) * row_mm
    return (left, right, low, high) if rows_up else (left, right, high, low)


def display_range(window: tuple[float, float] | None) -> tuple[float, float]:
    """(vmin, vmax) of a (level, width) window; None means an image already in [0, 1], drawn as is."""
    if window is None:
        return 0.0, 1.0
    level, width = (float(v) for v in window)
    if not width > 0:
        raise ValueError(f"window width must be positive, got window (level, width) = {window}")
    return level - width / 2, level + width / 2


def scale_bar_mm(field_mm: float) -> float:
    """The longest round bar length that fits five times into the field (the smallest one otherwise)."""
    fitting = [length for length in SCALE_BARS_MM if 5 * length <= field_mm]
    return fitting[-1] if fitting else SCALE_BARS_MM[0]


def safe_text(text: object, limit: int = 100) -> str:
    """Untrusted text for a label: control characters as '?', at most ``limit`` characters."""
    cleaned = "".join(c if c.isprintable() else "?" for c in str(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@dataclass(frozen=True)
class Layer:
    """One label map to outline: its legend prefix, a colour per region and a line width."""

    prefix: str
    volume: np.ndarray
    colours: Mapping[str, str]
    linewidth: float


def draw_outline(
    ax: Axes,
    mask: np.ndarray,
    spacing_rc: tuple[float, float],
    colour: str,
    style: LineStyle,
    linewidth: float,
    gid: str,
) -> None:
    """The 0.5 iso-line of a 2-D mask in mm: on voxel boundaries, closed even where the mask meets the edge."""
    box = bounding_box(mask)
    if box is None:
        return
    padded = np.pad(mask[box].astype(np.float32), 1)  # a zero ring closes outlines and makes 1-pixel slices 3 wide
    rows = (np.arange(padded.shape[0]) + box[0].start - 1) * spacing_rc[0]
    cols = (np.arange(padded.shape[1]) + box[1].start - 1) * spacing_rc[1]
    contours = ax.contour(cols, rows, padded, levels=[0.5], colors=[colour], linestyles=[style], linewidths=linewidth)
    contours.set_gid(gid)


def draw_scale_bar(ax: Axes, left_mm: float, width_mm: float) -> None:
    """A white bar of round length at the panel's lower left, labelled in mm."""
    length = scale_bar_mm(width_mm)
    start = left_mm + 0.05 * width_mm
    transform = ax.get_xaxis_transform()  # x in mm, y as a fraction of the panel height
    ax.plot(
        [start, start + length],
        [0.06, 0.06],
        color="white",
        linewidth=2,
        solid_capstyle="butt",
        transform=transform,
        gid="scale bar",
    )
    ax.text(
        start + length / 2,
        0.08,
        f"{length:g} mm",
        color="white",
        fontsize=7,
        ha="center",
        va="bottom",
        transform=transform,
    )


def _layers(label: np.ndarray | None, prediction: np.ndarray | None) -> list[Layer]:
    """The maps to outline. Truth is drawn wider, under the prediction: where they agree both colours show."""
    if label is not None and prediction is not None:
        return [
            Layer("truth ", label, dict.fromkeys(REGION_STYLES, TRUTH_COLOUR), 2.4),
            Layer("prediction ", prediction, dict.fromkeys(REGION_STYLES, PREDICTION_COLOUR), 1.0),
        ]
    single = label if label is not None else prediction
    return [] if single is None else [Layer("", single, {"pancreas": PANCREAS_COLOUR, "tumour": TUMOUR_COLOUR}, 1.2)]


def _draw_panel(
    ax: Axes,
    image2d: np.ndarray,
    spacing_rc: tuple[float, float],
    rows_up: bool,
    vrange: tuple[float, float],
    masks: list,
) -> None:
    """One slice: the CT, every (mask, colour, style, width, gid) outline and a scale bar, limits in mm."""
    extent = plane_extent(image2d.shape, spacing_rc, rows_up)
    ax.imshow(
        image2d,
        cmap=_GREY,
        vmin=vrange[0],
        vmax=vrange[1],
        extent=extent,
        origin="lower" if rows_up else "upper",
        interpolation="antialiased",
    )
    for mask, colour, style, width, gid in masks:
        draw_outline(ax, mask, spacing_rc, colour, style, width, gid)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    draw_scale_bar(ax, extent[0], extent[1] - extent[0])


def _panel_masks(layers: list[Layer], cut: Callable[[np.ndarray], np.ndarray]) -> list[tuple]:
    """(2-D mask, colour, style, width, gid) of every region of every map, cut by ``cut(volume) -> 2-D``."""
    masks = []
    for layer in layers:
        plane = cut(layer.volume)
        for region, mask in (("pancreas", pancreas_mask(plane)), ("tumour", tumour_mask(plane))):
            masks.append((mask, layer.colours[region], REGION_STYLES[region], layer.linewidth, layer.prefix + region))
    return masks


def _lesion_panels(
    label: np.ndarray, prediction: np.ndarray, spacing: tuple[float, float, float], min_iou: float, limit: int
) -> list[tuple[str, dict]]:
    """(caption, tumour record) of the missed, then false, tumours to show, at most ``limit``."""
    found = detect_tumours(label, prediction, spacing, min_iou=min_iou)
    missed = [("missed", t) for t in found["tumours"] if not t["detected"]]
    false = [("false", t) for t in found["false_tumours"]]
    return [
        (f"{kind} tumour {t['diameter_mm']:.0f} mm, z {t['centre_zyx'][0]}", t) for kind, t in (missed + false)[:limit]
    ]


def _lesion_cut(
    centre_zyx: Sequence[int], shape: tuple[int, ...], spacing: tuple[float, float, float]
) -> tuple[slice, slice]:
    """The (y, x) window of about LESION_FIELD_MM around a lesion centre, clipped to the slice."""
    window = []
    for axis in (1, 2):
        half = int(np.ceil(LESION_FIELD_MM / 2 / spacing[axis]))
        centre = int(centre_zyx[axis])
        window.append(slice(max(centre - half, 0), min(centre + half + 1, shape[axis])))
    return window[0], window[1]


def _lesion_of(volume: np.ndarray, z: int, rows: slice, cols: slice) -> np.ndarray:
    """The axial cut of a lesion panel."""
    return volume[z, rows, cols]


def _check_maps(image: np.ndarray, **maps: np.ndarray | None) -> None:
    """Every label map must share the image's grid."""
    for name, volume in maps.items():
        if volume is not None and np.shape(volume) != image.shape:
            raise ValueError(f"{name} has shape {np.shape(volume)} but the image has shape {image.shape}")


def _sheet_point(
    image: np.ndarray, layers: list[Layer], window: tuple[float, float] | None, body_mask: np.ndarray | None
) -> tuple[int, int, int]:
    """``choose_point`` on the first map with a labelled voxel; a windowed CT's body is the voxels above -500 HU."""
    labelled = next((layer.volume for layer in layers if pancreas_mask(layer.volume).any()), None)
    if labelled is not None:
        return choose_point(labelled)
    if body_mask is None and window is not None:
        body_mask = np.isfinite(image) & (image > BODY_THRESHOLD_HU)
    return choose_point(np.zeros(image.shape, np.uint8), body_mask)


def _legend_handles(layers: list[Layer]) -> list[Line2D]:
    """One legend line per map and region, in the colour, style and width drawn."""
    return [
        Line2D([], [], color=layer.colours[r], linestyle=style, linewidth=layer.linewidth, label=layer.prefix + r)
        for layer in layers
        for r, style in REGION_STYLES.items()
    ]


def case_sheet(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    case_id: str,
    label: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    *,
    window: tuple[float, float] | None = SOFT_TISSUE_WINDOW_HU,
    point: tuple[int, int, int] | None = None,
    body_mask: np.ndarray | None = None,
    max_lesion_slices: int = MAX_LESION_SLICES,
    min_iou: float = DEFAULT_MIN_IOU,
    dpi: int = 100,
) -> Figure:
    """The sheet as a Figure: axial, coronal and sagittal slices through ``point`` (default ``choose_point``).

    One label map (``label`` or ``prediction``) is outlined per region; both are truth (``label``) against
    prediction, plus one axial panel (a ~100 mm cut) per missed and false tumour of ``detect_tumours``,
    up to ``max_lesion_slices``. ``window`` is (level, width) in HU, or None for an image in [0, 1].
    Without a point or any labelled voxel, and without ``body_mask``, a windowed image's body is taken as
    the voxels above -500 HU.
    """
    image = check_volume(image, "image")
    spacing = check_spacing(spacing_zyx)
    _check_maps(image, label=label, prediction=prediction, body_mask=body_mask)
    vrange = display_range(window)
    layers = _layers(label, prediction)
    if point is None:
        point = _sheet_point(image, layers, window, body_mask)
    if len(point) != 3 or not all(0 <= int(p) < n for p, n in zip(point, image.shape)):
        raise ValueError(f"point {tuple(point)} (z, y, x) lies outside the image of shape {image.shape}")
    lesions = []
    if label is not None and prediction is not None and max_lesion_slices > 0:
        lesions = _lesion_panels(label, prediction, spacing, min_iou, max_lesion_slices)
    fig = Figure(figsize=(12, 7.0 if lesions else 4.5), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 if lesions else 1, 6, height_ratios=[3, 2] if lesions else [1])
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86 if lesions else 0.83, wspace=0.06, hspace=0.15)
    for column, (name, axis) in enumerate(PLANES):
        ax = fig.add_subplot(grid[0, 2 * column : 2 * column + 2])
        cut = partial(plane_of, axis=axis, index=point[axis])
        _draw_panel(
            ax,
            cut(image).astype(np.float32),
            plane_spacing(spacing, axis),
            axis != 0,
            vrange,
            _panel_masks(layers, cut),
        )
        ax.set_title(f"{name} {'zyx'[axis]} {point[axis]}", fontsize=9)
        ax.set_gid(name)
    for column, (caption, tumour) in enumerate(lesions):
        ax = fig.add_subplot(grid[1, column])
        z, (rows, cols) = tumour["centre_zyx"][0], _lesion_cut(tumour["centre_zyx"], image.shape, spacing)
        cut = partial(_lesion_of, z=z, rows=rows, cols=cols)
        _draw_panel(
            ax, cut(image).astype(np.float32), plane_spacing(spacing, 0), False, vrange, _panel_masks(layers, cut)
        )
        ax.set_title(caption, fontsize=8)
        ax.set_gid(f"lesion {column}")
    if layers:
        handles = _legend_handles(layers)
        fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(safe_text(case_id), x=0.01, ha="left", fontsize=12, parse_math=False)
    return fig


def write_case_sheet(
    path: str | Path,
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    case_id: str,
    label: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    **options: Any,
) -> Path:
    """Draw ``case_sheet`` (same arguments and ``options``) and write it as a PNG at ``path``."""
    return write_figure(case_sheet(image, spacing_zyx, case_id, label, prediction, **options), path)
