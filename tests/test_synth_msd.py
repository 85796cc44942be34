"""Tests of the ``msd`` synth profile (sources.synthetic.task07 and its use in params/phantom).

The drawn CaseParams are checked against the cited Task07 figures; rendering stays tiny
(``inplane_voxels`` samples the same patient on a coarse in-plane grid).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sources.synthetic.msd import dataset_params
from sources.synthetic.params import draw_case_params, grid_coordinates
from sources.synthetic.phantom import render_phantom, tumour_centre
from sources.synthetic.task07 import (
    MSD_FEWEST,
    MSD_MAX_SLICES,
    MSD_MIN_SLICES,
    MSD_MOST,
    MSD_SLICE_MM,
    TUMOUR_DIAMETER_MEDIAN_MM,
    TUMOUR_DIAMETER_RANGE_MM,
    TUMOUR_DIAMETER_SIGMA,
    truncated_lognormal,
)

DRAWS = [draw_case_params(i, seed=0, size="msd") for i in range(50)]


def _slices(p) -> int:
    return p.grid_size[2]  # the third stored axis runs along z in every orientation


def _slice_mm(p) -> float:
    return p.spacing_mm[2]


def _diameter_mm(p) -> float:
    return 2.0 * max(p.anatomy.tumour_semi_axes_mm)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("n_cases", [3, 5])
def test_three_cases_meet_both_extremes(seed, n_cases):
    params = dataset_params(n_cases, seed, "msd", n_test=0)
    fewest = min(params, key=_slices)
    most = max(params, key=_slices)
    assert (_slices(fewest), _slice_mm(fewest)) == MSD_FEWEST == (37, 2.5)
    assert (_slices(most), _slice_mm(most)) == MSD_MOST == (751, 0.7)
    assert _slice_mm(most) == min(_slice_mm(p) for p in params) == min(MSD_SLICE_MM)
    assert [p.name for p in (fewest, most)] == ["pancreas_002", "pancreas_003"]


def test_grids_follow_task07_statistics_over_50_draws():
    inplane = np.array([p.spacing_mm[0] for p in DRAWS])
    slice_mm = np.array([_slice_mm(p) for p in DRAWS])
    slices = np.array([_slices(p) for p in DRAWS])
    assert {p.grid_size[:2] for p in DRAWS} == {(512, 512)}
    assert all(p.spacing_mm[0] == p.spacing_mm[1] for p in DRAWS)
    assert inplane.min() >= 0.6 and inplane.max() <= 1.0 and 0.75 <= np.median(inplane) <= 0.85
    assert 0.7 <= slice_mm.min() < 1.0 and slice_mm.max() == 5.0  # under 1 mm to several mm
    assert np.median(slice_mm) == 2.5
    assert slices.min() == MSD_MIN_SLICES and slices.max() == MSD_MAX_SLICES
    assert 60 <= np.median(slices) <= 160  # a typical 512x512x~100
    assert len({p.orientation for p in DRAWS}) == 4 and len({p.dtype for p in DRAWS}) == 4


def test_same_seed_same_params_and_another_seed_differs():
    again = [draw_case_params(i, seed=0, size="msd") for i in range(50)]
    assert again == DRAWS
    other = [draw_case_params(i, seed=1, size="msd") for i in range(6)]
    assert [p.grid_size for p in other] != [p.grid_size for p in DRAWS[:6]]


def test_tumour_diameters_are_centimetres_with_some_small():
    diameters = np.array([_diameter_mm(p) for p in DRAWS])
    lo, hi = TUMOUR_DIAMETER_RANGE_MM
    assert lo <= diameters.min() and diameters.max() <= hi
    assert (diameters < 20).sum() >= 5 and (diameters > 30).sum() >= 5
    assert (diameters < 10).any()  # some small ones kept
    assert all(p.anatomy.tumour_widens_gland for p in DRAWS)
    assert not draw_case_params(0, seed=0, size="full").anatomy.tumour_widens_gland


@pytest.mark.parametrize("u", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_truncated_lognormal_matches_brute_force(u):
    lo, hi = TUMOUR_DIAMETER_RANGE_MM
    sample = np.random.default_rng(0).lognormal(np.log(TUMOUR_DIAMETER_MEDIAN_MM), TUMOUR_DIAMETER_SIGMA, 400_000)
    sample = sample[(sample >= lo) & (sample <= hi)]
    got = truncated_lognormal(u, TUMOUR_DIAMETER_MEDIAN_MM, TUMOUR_DIAMETER_SIGMA, lo, hi)
    assert got == pytest.approx(np.quantile(sample, u), abs=0.3)


def test_inplane_voxels_keeps_the_patient_and_field_of_view():
    full, coarse = draw_case_params(1, 0, "msd"), draw_case_params(1, 0, "msd", inplane_voxels=64)
    assert coarse.grid_size == (64, 64, 37) and coarse.spacing_mm[2] == full.spacing_mm[2]
    np.testing.assert_allclose(
        np.multiply(coarse.grid_size, coarse.spacing_mm)[:2], np.multiply(full.grid_size, full.spacing_mm)[:2]
    )
    assert coarse.anatomy.tumour_semi_axes_mm == full.anatomy.tumour_semi_axes_mm
    assert coarse.anatomy.inplane_scale == pytest.approx(full.anatomy.inplane_scale, rel=1e-12)
    with pytest.raises(ValueError, match="inplane_voxels applies to size 'msd' only"):
        draw_case_params(1, 0, "small", inplane_voxels=64)


def _tumour_voxels_ml(params) -> tuple[np.ndarray, np.ndarray, float]:
    hu, label = render_phantom(*grid_coordinates(params), params.anatomy)
    return hu, label, (label == 2).sum() * float(np.prod(params.spacing_mm)) / 1000.0


def test_a_centimetre_tumour_widens_the_gland_with_consistent_labels():
    params = draw_case_params(6, 0, "msd", inplane_voxels=64)  # 64x64x265 voxels of 6.3 x 6.3 x 1.5 mm
    anat = params.anatomy
    assert anat.has_tumour and _diameter_mm(params) > 50
    hu, label, tumour_ml = _tumour_voxels_ml(params)
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert np.all(hu[label == 2] == np.float32(anat.tumour_hu))
    # every tumour voxel lies inside the drawn ellipsoid (physical mm)
    x, y, z = (np.broadcast_to(c, label.shape)[label == 2] for c in grid_coordinates(params))
    (tx, ty, tz), _ = tumour_centre(anat)
    cx, cy, cz = np.asarray(anat.centre_mm) + np.array([tx, ty, tz])
    a = anat.tumour_semi_axes_mm
    assert np.all(((x - cx) / a[0]) ** 2 + ((y - cy) / a[1]) ** 2 + ((z - cz) / a[2]) ** 2 <= 1.0 + 1e-9)
    ellipsoid_ml = 4.0 / 3.0 * np.pi * np.prod(a) / 1000.0
    assert tumour_ml == pytest.approx(ellipsoid_ml, rel=0.05)  # the whole ellipsoid, none cut away
    # the same tumour confined to the tube (the small/full renderer) would be a fraction of it
    _, _, confined_ml = _tumour_voxels_ml(replace(params, anatomy=replace(anat, tumour_widens_gland=False)))
    assert confined_ml < 0.3 * tumour_ml


def test_task07_tumours_change_only_the_tumour_of_the_small_and_full_profiles():
    from sources.synthetic.params import gland_scale

    for size in ("small", "full"):
        for i in range(12):
            own, task07 = draw_case_params(i, 0, size), draw_case_params(i, 0, size, tumours="task07")
            assert (
                replace(
                    task07,
                    anatomy=replace(
                        task07.anatomy, tumour_semi_axes_mm=own.anatomy.tumour_semi_axes_mm, tumour_widens_gland=False
                    ),
                )
                == own
            )
            assert task07.anatomy.tumour_widens_gland
            scale = gland_scale(task07.anatomy)
            assert (0.6 < scale < 0.9) if size == "small" else (0.8 < scale <= 1.2), (size, scale)
            low, high = TUMOUR_DIAMETER_RANGE_MM
            assert low * scale - 1e-9 <= _diameter_mm(task07) <= high * scale + 1e-9
    # msd already draws Task07's tumours: the option changes nothing there
    assert draw_case_params(4, 0, "msd", tumours="task07") == draw_case_params(4, 0, "msd")
    with pytest.raises(ValueError, match="tumours 'huge'"):
        draw_case_params(0, 0, "small", tumours="huge")


def test_task07_tumours_are_larger_against_the_gland_and_recorded(tmp_path):
    import json

    from sources.synthetic.msd import make_case, make_dataset

    diameters = {
        t: [_diameter_mm(p) for p in dataset_params(40, 0, "small", 0, t) if p.anatomy.has_tumour]
        for t in ("profile", "task07")
    }
    assert np.median(diameters["task07"]) > 1.5 * np.median(diameters["profile"])
    assert min(diameters["task07"]) < 8.0  # some small ones stay
    import SimpleITK as sitk

    volumes = {
        t: (sitk.GetArrayViewFromImage(make_case(5, 0, "small", tumours=t)[1]) == 2).sum()
        for t in ("profile", "task07")
    }
    assert volumes["task07"] > 2 * volumes["profile"] > 0
    make_dataset(tmp_path / "d", 2, seed=0, size="small", n_test=0, progress=False, tumours="task07")
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text(encoding="utf-8"))
    assert "(seed 0, size small, tumours task07)" in meta["description"]
