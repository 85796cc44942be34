"""``roi: auto``: the first pass's boxes (prediction.roi) and the prediction restricted to them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prediction.config import PredictConfig
from prediction.roi import (
    Box,
    box_windows,
    component_boxes,
    inside_mask,
    margin_voxels,
    merge_touching,
    roi_boxes,
    roi_windows,
)
from prediction.sliding import window_grid
from prediction.volume import argmax_labels, predict_volume

WINDOW = (8, 16, 16)


def blob_model(batch: np.ndarray) -> np.ndarray:
    """Pointwise: foreground (pancreas) where the intensity is above 0.5, tumour above 0.9."""
    x = batch[..., 0]
    logits = np.stack([np.full_like(x, 0.0), 20 * (x - 0.5), 40 * (x - 0.9)], axis=-1)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def nothing_model(batch: np.ndarray) -> np.ndarray:
    out = np.zeros((*batch.shape[:4], 3), np.float32)
    out[..., 0] = 1.0
    return out


class Recorder:
    """Wraps a model and keeps the batch sizes and (flipped or not) inputs it saw."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, batch):
        self.calls += 1
        return self.fn(batch)


def volume_with_blobs(shape=(40, 96, 96), blobs=(((20, 30, 30), 4),)) -> np.ndarray:
    """uint8 levels: dark (level 50) with bright cubes of half-width r at the given centres."""
    levels = np.full(shape, 50, np.uint8)
    for (z, y, x), r in blobs:
        levels[max(0, z - r) : z + r, max(0, y - r) : y + r, max(0, x - r) : x + r] = 200
    return levels


# ----------------------------------------------------------------------------- boxes


def test_margin_in_mm_on_an_anisotropic_grid():
    assert margin_voxels(30.0, (2.5, 0.8, 1.0)) == (12, 38, 30)
    assert margin_voxels(0.0, (2.5, 0.8, 1.0)) == (0, 0, 0)
    assert margin_voxels(5.0, (2.0, 2.0, 2.0)) == (3, 3, 3)  # rounded up: never less than asked


def test_components_become_boxes_grown_clipped_and_merged():
    mask = np.zeros((30, 60, 60), bool)
    mask[10:12, 5:9, 5:9] = True  # component A
    mask[10:12, 50:60, 50:60] = True  # component B touches the volume's edge
    assert component_boxes(mask) == [Box((10, 5, 5), (12, 9, 9)), Box((10, 50, 50), (12, 60, 60))]
    boxes = roi_boxes(mask, (2.0, 1.0, 1.0), margin_mm=4.0)
    # 4 mm = 2 slices in z, 4 voxels in y and x; B is clipped at the edge, never an error
    assert boxes == [Box((8, 1, 1), (14, 13, 13)), Box((8, 46, 46), (14, 60, 60))]
    apart = roi_boxes(mask, (2.0, 1.0, 1.0), margin_mm=20.0)  # A ends at y 29, B starts at 30: two boxes
    assert [b.stop[1] for b in apart] == [29, 60] and apart[1].start[1] == 30
    merged = roi_boxes(mask, (2.0, 1.0, 1.0), margin_mm=21.0)  # one more voxel and they overlap: merged
    assert merged == [Box((0, 0, 0), (23, 60, 60))]
    assert roi_boxes(np.zeros((5, 5, 5), bool), (1.0, 1.0, 1.0), 10.0) is None  # nothing found


def test_merging_is_transitive_and_sorted():
    a, b, c = Box((0, 0, 0), (2, 2, 2)), Box((2, 2, 2), (4, 4, 4)), Box((4, 4, 4), (6, 6, 6))
    far = Box((20, 20, 20), (21, 21, 21))
    assert merge_touching([c, far, a, b]) == [Box((0, 0, 0), (6, 6, 6)), far]


@pytest.mark.parametrize(
    "box",
    [
        Box((0, 0, 0), (3, 3, 3)),
        Box((37, 90, 90), (40, 96, 96)),
        Box((5, 10, 20), (35, 80, 70)),
        Box((0, 0, 0), (40, 96, 96)),
    ],
)
def test_box_windows_cover_the_box_and_stay_inside(box: Box):
    shape = (40, 96, 96)
    starts = box_windows(box, shape, WINDOW, 0.5)
    covered = np.zeros(shape, bool)
    for z, y, x in starts:
        assert 0 <= z <= shape[0] - WINDOW[0] and 0 <= y <= shape[1] - WINDOW[1] and 0 <= x <= shape[2] - WINDOW[2]
        covered[z : z + WINDOW[0], y : y + WINDOW[1], x : x + WINDOW[2]] = True
    assert covered[box.slices()].all()
    assert len(starts) <= len(window_grid(shape, WINDOW, 0.5))
    if box.shape == tuple(shape):
        assert starts == window_grid(shape, WINDOW, 0.5)  # the whole volume: the whole grid


def test_roi_windows_lists_each_corner_once():
    shape = (40, 96, 96)
    boxes = [Box((0, 0, 0), (3, 3, 3)), Box((1, 1, 1), (4, 4, 4))]  # the same single window
    assert roi_windows(boxes, shape, WINDOW, 0.5) == [(0, 0, 0)]
    assert inside_mask(boxes, shape).sum() == 27 + 27 - 8


# ----------------------------------------------------------------------------- the prediction


def test_roi_prediction_equals_the_whole_inside_the_boxes_and_is_background_outside():
    levels = volume_with_blobs(blobs=(((20, 30, 30), 4), ((8, 80, 80), 3)))
    whole_cfg = PredictConfig(window_zyx=WINDOW, mirror_axes=(), roi="whole")
    auto_cfg = PredictConfig(window_zyx=WINDOW, mirror_axes=(), roi="auto", roi_margin_mm=3.0)
    whole = predict_volume(levels, blob_model, whole_cfg, progress=False)
    roi: dict = {}
    timings: dict = {}
    auto = predict_volume(levels, blob_model, auto_cfg, progress=False, roi=roi, timings=timings)
    assert roi["result"] == "found" and len(roi["boxes"]) == 2
    boxes = [Box(tuple(b["start_zyx"]), tuple(b["stop_zyx"])) for b in roi["boxes"]]
    inside = inside_mask(boxes, levels.shape)
    np.testing.assert_allclose(auto[:, inside], whole[:, inside], atol=1e-6)
    assert (auto[0, ~inside] == 1.0).all() and (auto[1:, ~inside] == 0.0).all()
    assert np.array_equal(argmax_labels(auto), argmax_labels(whole))  # nothing outside the boxes was foreground
    assert roi["windows"] < roi["windows_whole"] == len(window_grid(levels.shape, WINDOW, 0.5))
    assert roi["first_pass_windows"] == len(window_grid(levels.shape, WINDOW, 0.0))
    assert timings["windows"] == roi["windows"] + roi["first_pass_windows"]
    assert json.loads(json.dumps(roi)) == roi  # it goes into predictions.json as it is


def test_first_pass_finding_nothing_predicts_everywhere():
    levels = volume_with_blobs(blobs=())
    model = Recorder(nothing_model)
    roi: dict = {}
    config = PredictConfig(window_zyx=WINDOW, mirror_axes=(), batch_size=1)
    probs = predict_volume(levels, model, config, progress=False, roi=roi)
    assert roi["boxes"] is None and "no foreground" in roi["result"]
    whole = len(window_grid(levels.shape, WINDOW, 0.5))
    assert roi["windows"] == whole and model.calls == whole + len(window_grid(levels.shape, WINDOW, 0.0))
    assert (probs[0] == 1.0).all()


def test_first_pass_is_the_first_model_unmirrored_and_the_full_pass_every_model_mirrored():
    levels = volume_with_blobs()
    first, second = Recorder(blob_model), Recorder(blob_model)
    roi: dict = {}
    config = PredictConfig(window_zyx=WINDOW, mirror_axes=(1, 2), batch_size=1, roi_margin_mm=2.0)
    predict_volume(levels, [first, second], config, progress=False, roi=roi)
    coarse = len(window_grid(levels.shape, WINDOW, 0.0))
    assert first.calls == coarse + 4 * roi["windows"]
    assert second.calls == 4 * roi["windows"]


def test_a_gland_at_the_scan_edge_is_clipped_not_an_error():
    levels = volume_with_blobs(blobs=(((0, 0, 0), 3),))
    roi: dict = {}
    config = PredictConfig(window_zyx=WINDOW, mirror_axes=(), roi_margin_mm=50.0)
    probs = predict_volume(levels, blob_model, config, progress=False, roi=roi)
    (box,) = roi["boxes"]
    assert box["start_zyx"] == [0, 0, 0] and all(b <= s for b, s in zip(box["stop_zyx"], levels.shape))
    assert argmax_labels(probs)[:3, :3, :3].all()


def test_a_volume_of_one_window_skips_the_first_pass():
    levels = volume_with_blobs(shape=WINDOW, blobs=(((4, 8, 8), 2),))
    model = Recorder(blob_model)
    roi: dict = {}
    predict_volume(levels, model, PredictConfig(window_zyx=WINDOW, mirror_axes=()), progress=False, roi=roi)
    assert model.calls == 1 and roi["first_pass_windows"] == 0 and roi["boxes"] is None
    assert "no more than the first pass" in roi["result"]


def test_config_refuses_bad_roi_settings():
    with pytest.raises(ValueError, match="roi must be one of"):
        PredictConfig(roi="gland")
    with pytest.raises(ValueError, match="roi_margin_mm"):
        PredictConfig(roi_margin_mm=-1.0)
    with pytest.raises(ValueError, match="roi_margin_mm"):
        PredictConfig(roi_margin_mm=float("nan"))


def test_predictions_json_records_the_roi(tmp_path: Path):
    from prediction.predict import predict_cases
    from sources.synthetic.msd import make_dataset
    from tests.helpers import write_contract_run
    from tests.test_inference_predict import pointwise_model

    data = make_dataset(tmp_path / "msd", 1, seed=3, size="small", n_test=0, progress=False)
    run = write_contract_run(tmp_path / "run", window=(16, 32, 32))
    out = tmp_path / "out"
    summary = predict_cases(
        run, data / "imagesTr", out, PredictConfig(mirror_axes=()), predict_fn=pointwise_model, progress=False
    )
    assert not summary.failed, summary.table()
    (case,) = json.loads((out / "predictions.json").read_text(encoding="utf-8"))["cases"].values()
    assert case["roi"]["mode"] == "auto" and case["roi"]["windows"] <= case["roi"]["windows_whole"]
    assert case["seconds"]["first_pass"] >= 0
    assert f"{case['roi']['windows']}/{case['roi']['windows_whole']}" in summary.table() or case["roi"]["boxes"] is None


def test_axis_starts_take_the_whole_grids_windows_unless_a_grid_of_the_box_is_smaller():
    from prediction.roi import axis_starts
    from prediction.sliding import window_starts

    whole = window_starts(100, 16, 0.5)
    assert axis_starts(0, 100, 100, 16, 0.5) == whole  # the whole axis: the whole grid
    assert axis_starts(40, 44, 100, 16, 0.5) == [34]  # 4 voxels: one window of its own, centred
    assert axis_starts(96, 100, 100, 16, 0.5) == [84]  # moved inside the axis
    assert axis_starts(1, 99, 100, 64, 0.5) == window_starts(100, 64, 0.5) == [0, 18, 36]  # a tie: the whole grid's
    assert axis_starts(5, 95, 100, 64, 0.5) == [5, 31]  # 2 of its own < the 3 of the whole grid reaching in
    assert axis_starts(3, 5, 16, 16, 0.5) == [0]


def test_the_first_pass_window_is_wide_in_plane_and_bounded():
    from prediction.roi import first_pass_window

    assert first_pass_window((218, 329, 424), (64, 256, 256), 16) == (64, 336, 432)  # one slab-wide window
    assert first_pass_window((218, 600, 700), (64, 256, 256), 16) == (64, 512, 512)  # at most 2 windows wide
    assert first_pass_window((64, 100, 100), (64, 256, 256), 16) == (64, 256, 256)  # never narrower
    assert first_pass_window((218, 329, 424), (64, 256, 256), None) == (64, 256, 256)


def test_a_wide_first_pass_finds_what_the_window_sized_one_finds():
    levels = volume_with_blobs(shape=(40, 70, 90), blobs=(((20, 30, 60), 4),))
    config = PredictConfig(window_zyx=WINDOW, mirror_axes=(), roi_margin_mm=2.0)
    narrow: dict = {}
    wide: dict = {}
    a = predict_volume(levels, blob_model, config, progress=False, roi=narrow)
    b = predict_volume(levels, blob_model, config, progress=False, roi=wide, window_multiple=8)
    assert wide["first_pass_window_zyx"] == [8, 32, 32] and narrow["first_pass_window_zyx"] == list(WINDOW)
    assert wide["first_pass_windows"] < narrow["first_pass_windows"]
    assert wide["boxes"] == narrow["boxes"] and np.array_equal(a, b)
