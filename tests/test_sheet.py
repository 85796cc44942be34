"""Tests of review.sheet: slice choice, outline positions in mm, physical aspect and the PNG file."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.contour import ContourSet
from matplotlib.image import imread
from matplotlib.path import Path as MplPath

from dataset.common.figures import png_bytes, write_png
from review.sheet import (
    PREDICTION_COLOUR,
    TRUTH_COLOUR,
    case_sheet,
    choose_point,
    scale_bar_mm,
    write_case_sheet,
)

SPACING = (3.0, 0.7, 0.9)  # anisotropic: z, y, x in mm
SHAPE = (10, 30, 40)
CUBE = (slice(3, 7), slice(8, 20), slice(10, 30))  # z 3-6, y 8-19, x 10-29


def ct(shape=SHAPE) -> np.ndarray:
    """A soft-tissue body with a gradient, inside air."""
    image = np.full(shape, -1000.0, np.float32)
    image[:, 2:-2, 2:-2] = np.linspace(-100, 200, shape[2] - 4)
    return image


def cube_label(shape=SHAPE) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[CUBE] = 1
    return label


def axes_named(fig, gid):
    (ax,) = [ax for ax in fig.axes if ax.get_gid() == gid]
    return ax


def outline(ax, gid) -> np.ndarray | None:
    """The vertices (x mm, y mm) of the outline ``gid`` drawn on ``ax``, None if not drawn."""
    found = [c for c in ax.collections if isinstance(c, ContourSet) and c.get_gid() == gid]
    if not found:
        return None
    (path,) = found[0].get_paths()
    return path.vertices[path.codes != MplPath.CLOSEPOLY] if path.codes is not None else path.vertices


def test_choose_point_prefers_the_largest_tumour_then_gland_then_body():
    label = cube_label()
    label[4, 10, 12] = 2  # a one-voxel tumour
    label[4:6, 14:17, 20:24] = 2  # the largest tumour: centre (4.5, 15, 21.5) rounds half up
    assert choose_point(label) == (5, 15, 22)
    assert choose_point(cube_label()) == (5, 14, 20)  # centre of the cube (4.5, 13.5, 19.5), halves up
    body = np.zeros(SHAPE, bool)
    body[0:2, 0:4, 0:6] = True
    assert choose_point(np.zeros(SHAPE, np.uint8), body) == (1, 2, 3)
    assert choose_point(np.zeros(SHAPE, np.uint8)) == (5, 15, 20)


def test_choose_point_lands_on_a_curved_gland():
    label = np.zeros(SHAPE, np.uint8)
    label[5, 5, 5:35] = label[5, 5:25, 5] = label[5, 5:25, 34] = 1  # a U whose centre of mass is in its hollow
    z, y, x = choose_point(label)
    assert label[z, y, x] == 1


def test_outline_lies_on_the_cube_boundary_in_mm():
    fig = case_sheet(ct(), SPACING, "cube", cube_label())
    sz, sy, sx = SPACING
    edges = {  # plane -> (x edges mm, y edges mm) of the cube's voxel boundaries
        "axial": ((10 - 0.5) * sx, (29 + 0.5) * sx, (8 - 0.5) * sy, (19 + 0.5) * sy),
        "coronal": ((10 - 0.5) * sx, (29 + 0.5) * sx, (3 - 0.5) * sz, (6 + 0.5) * sz),
        "sagittal": ((8 - 0.5) * sy, (19 + 0.5) * sy, (3 - 0.5) * sz, (6 + 0.5) * sz),
    }
    for plane, (x0, x1, y0, y1) in edges.items():
        vertices = outline(axes_named(fig, plane), "pancreas")
        x, y = vertices[:, 0], vertices[:, 1]
        on_side = np.isclose(x, x0) | np.isclose(x, x1) | np.isclose(y, y0) | np.isclose(y, y1)
        assert on_side.all(), plane
        assert np.all((x >= x0 - 1e-9) & (x <= x1 + 1e-9) & (y >= y0 - 1e-9) & (y <= y1 + 1e-9)), plane
        assert (
            np.isclose(x.min(), x0) and np.isclose(x.max(), x1) and np.isclose(y.min(), y0) and np.isclose(y.max(), y1)
        )
        assert outline(axes_named(fig, plane), "tumour") is None  # no tumour voxels: nothing drawn


def test_panels_are_in_millimetres_at_the_physical_aspect():
    fig = case_sheet(ct(), SPACING, "aspect", cube_label())
    fig.canvas.draw()
    sz, sy, sx = SPACING
    z, y, x = SHAPE
    expected = {"axial": (x * sx, y * sy), "coronal": (x * sx, z * sz), "sagittal": (y * sy, z * sz)}
    for plane, (width_mm, height_mm) in expected.items():
        ax = axes_named(fig, plane)
        left, right = ax.get_xlim()
        bottom, top = ax.get_ylim()
        assert (abs(right - left), abs(top - bottom)) == pytest.approx((width_mm, height_mm)), plane
        assert ax.get_aspect() == 1.0
        box = ax.get_window_extent()
        assert box.width / box.height == pytest.approx(width_mm / height_mm, rel=0.02), plane
    axial = axes_named(fig, "axial")
    assert axial.get_ylim()[0] > axial.get_ylim()[1]  # anterior (row 0) at the top
    coronal = axes_named(fig, "coronal")
    assert coronal.get_ylim()[0] < coronal.get_ylim()[1]  # z upward


def test_scale_bar_is_a_round_number_of_mm():
    assert (scale_bar_mm(410.0), scale_bar_mm(100.0), scale_bar_mm(4.0)) == (50.0, 20.0, 1.0)
    fig = case_sheet(ct((20, 512, 512)), (2.5, 0.8, 0.8), "bar", None)
    (bar,) = [line for line in axes_named(fig, "axial").lines if line.get_gid() == "scale bar"]
    assert np.ptp(bar.get_xdata()) == pytest.approx(50.0)


def test_truth_and_prediction_colours_and_lesion_panels():
    truth, pred = cube_label(), cube_label()
    truth[4:6, 10:13, 12:15] = 2  # found
    pred[4:6, 10:13, 12:16] = 2
    truth[1, 25:28, 3:6] = 2  # missed: outside the gland, 3 x 3 pixels
    pred[8, 2:4, 34:37] = 2  # false
    fig = case_sheet(ct(), SPACING, "both", truth, pred)
    axial = axes_named(fig, "axial")
    colours = {c.get_gid(): c.get_edgecolor()[0][:3] for c in axial.collections if isinstance(c, ContourSet)}
    assert np.allclose(colours["truth pancreas"], [0x00 / 255, 0x72 / 255, 0xB2 / 255]) and TRUTH_COLOUR == "#0072B2"
    assert (
        np.allclose(colours["prediction tumour"], [0xE6 / 255, 0x9F / 255, 0x00 / 255])
        and PREDICTION_COLOUR == "#E69F00"
    )
    captions = [axes_named(fig, f"lesion {i}").get_title() for i in range(2)]
    assert captions == [
        f"missed tumour {np.hypot(2 * 0.7, 2 * 0.9):.0f} mm, z 1",
        f"false tumour {2 * 0.9:.0f} mm, z 8",
    ]
    assert outline(axes_named(fig, "lesion 0"), "truth tumour") is not None
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels == ["truth pancreas", "truth tumour", "prediction pancreas", "prediction tumour"]


def test_a_prediction_alone_and_a_given_point():
    fig = case_sheet(ct(), SPACING, "pred only", None, cube_label(), point=(4, 1, 2))
    assert [axes_named(fig, plane).get_title() for plane in ("axial", "coronal", "sagittal")] == [
        "axial z 4",
        "coronal y 1",
        "sagittal x 2",
    ]
    assert outline(axes_named(fig, "axial"), "pancreas") is not None  # z 4 crosses the cube
    assert outline(axes_named(fig, "coronal"), "pancreas") is None  # y 1 and x 2 pass beside it
    assert outline(axes_named(fig, "sagittal"), "pancreas") is None
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["pancreas", "tumour"]


def test_lesion_panels_stop_at_the_limit():
    truth = np.zeros(SHAPE, np.uint8)
    for k in range(5):
        truth[k * 2, 3:5, 3 + 7 * k : 5 + 7 * k] = 2  # five separate missed tumours
    fig = case_sheet(ct(), SPACING, "many", truth, np.zeros(SHAPE, np.uint8), max_lesion_slices=3)
    assert sorted(ax.get_gid() for ax in fig.axes if ax.get_gid().startswith("lesion")) == [
        "lesion 0",
        "lesion 1",
        "lesion 2",
    ]


@pytest.mark.parametrize("empty", ["truth", "prediction"])
def test_an_empty_map_is_drawn_without_outlines(empty):
    full, blank = cube_label(), np.zeros(SHAPE, np.uint8)
    full[4:6, 10:13, 12:15] = 2
    truth, pred = (blank, full) if empty == "truth" else (full, blank)
    fig = case_sheet(ct(), SPACING, empty, truth, pred)
    axial = axes_named(fig, "axial")
    assert outline(axial, f"{empty} pancreas") is None
    other = "prediction" if empty == "truth" else "truth"
    assert outline(axial, f"{other} tumour") is not None
    assert fig.axes[-1].get_title().startswith("false" if empty == "truth" else "missed")
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_one_slice_scan_and_nan_and_unit_image(tmp_path):
    one = np.zeros((1, 30, 40), np.uint8)
    one[0, 5:10, 5:12] = 2
    image = ct((1, 30, 40))
    image[0, :3, :3] = np.nan
    path = write_case_sheet(tmp_path / "one.png", image, SPACING, "one slice", one)
    assert outline(axes_named(case_sheet(image, SPACING, "one slice", one), "coronal"), "tumour") is not None
    assert imread(path).std() > 0
    unit = np.clip((ct() + 160) / 400, 0, 1)
    unit[2, 2, 2] = np.nan
    assert imread(write_case_sheet(tmp_path / "unit.png", unit, SPACING, "unit", cube_label(), window=None)).std() > 0


def test_untrusted_case_id_is_plain_text():
    case_id = "a$b$ <c> $\\frac{1}{0}$\n\x00" + "x" * 200
    fig = case_sheet(ct(), SPACING, case_id, cube_label())
    png_bytes(fig)  # mathtext would fail or render here
    title = fig.get_suptitle()
    assert title.startswith("a$b$ <c> $\\frac{1}{0}$??") and len(title) == 100
    assert not fig._suptitle.get_parse_math()


def test_png_file_is_complete_and_not_blank(tmp_path):
    label = cube_label()
    label[4:6, 10:13, 12:15] = 2
    path = write_case_sheet(tmp_path / "sheet.png", ct(), SPACING, "png", label, dpi=50)
    pixels = imread(path)
    assert pixels.shape[:2] == (int(4.5 * 50), 12 * 50)
    assert pixels[..., :3].std() > 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]  # no temporary left
    write_case_sheet(path, ct(), SPACING, "again", label, dpi=50)  # replaces the old sheet
    assert imread(path).shape == pixels.shape


def test_incomplete_png_raises_and_leaves_nothing(tmp_path, request):
    with pytest.raises(OSError, match="not a complete PNG"):
        write_png(tmp_path / "bad.png", b"\x89PNG\r\n\x1a\nshort")
    request.getfixturevalue("short_writes")
    with pytest.raises(OSError, match=r"short\.png: only \d+ of \d+ bytes reached the disk"):
        write_case_sheet(tmp_path / "short.png", ct(), SPACING, "short", None)
    assert list(tmp_path.iterdir()) == []


def test_refuses_maps_on_another_grid_and_bad_window():
    with pytest.raises(ValueError, match=r"label has shape \(1, 2, 3\) but the image has shape \(10, 30, 40\)"):
        case_sheet(ct(), SPACING, "grid", np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"point \(10, 0, 0\) \(z, y, x\) lies outside the image of shape \(10, 30, 40\)"
    ):
        case_sheet(ct(), SPACING, "point", cube_label(), point=(10, 0, 0))
    with pytest.raises(ValueError, match="window width"):
        case_sheet(ct(), SPACING, "window", cube_label(), window=(40, 0))


def test_unlabelled_ct_is_cut_through_its_body():
    image = np.full(SHAPE, -1000.0, np.float32)
    image[0:4, 0:10, 0:10] = 40.0  # the body sits in a corner: centre (1.5, 4.5, 4.5), halves up
    fig = case_sheet(image, SPACING, "no labels")
    assert axes_named(fig, "axial").get_title() == "axial z 2"
    assert axes_named(fig, "coronal").get_title() == "coronal y 5"
    assert not fig.legends
