"""After `pancreas predict`: statistics per case, --preview sheets and index.html, rebuilt every run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import write_contract_run
from matplotlib.image import imread
from test_inference_predict import N_TRAIN, pointwise_model
from test_report_html import Page

from prediction.cases import PredictError
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from review.statistics import STATISTICS_COLUMNS
from sources.synthetic.msd import make_dataset


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("msd"), N_TRAIN, seed=0, size="small", n_test=2, progress=False)


def _predict(run, msd, out, **kw):
    return predict_cases(run, msd, out, PredictConfig(), predict_fn=pointwise_model, progress=False, **kw)


def test_statistics_match_the_label_maps_and_previews_link(msd, tmp_path):
    run, out = write_contract_run(tmp_path / "run", window=(32, 64, 64)), tmp_path / "out"
    summary = _predict(run, msd, out, preview=True)
    assert not summary.failed and "statistics.csv" in summary.table() and "index.html" in summary.table()
    with open(out / "statistics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == [r.case_id for r in summary.results] and list(rows[0]) == list(
        STATISTICS_COLUMNS
    )
    for row in rows:  # volumes by hand from the written label map
        label = sitk.ReadImage(str(out / f"{row['case']}.nii.gz"))
        voxel_ml = float(np.prod(label.GetSpacing())) / 1000
        values = sitk.GetArrayFromImage(label)
        assert float(row["pancreas_ml"]) == pytest.approx(np.isin(values, (1, 2)).sum() * voxel_ml, rel=1e-5)
        assert float(row["tumour_ml"]) == pytest.approx((values == 2).sum() * voxel_ml, rel=1e-5, abs=1e-9)
        assert imread(out / f"{row['case']}_preview.png")[..., :3].std() > 0.05
    links = [
        link for link in Page((out / "index.html").read_text(encoding="utf-8")).links() if not link.startswith("#")
    ]
    assert links and all((out / link).is_file() for link in links)
    stats = json.loads((out / "statistics.json").read_text(encoding="utf-8"))
    assert stats["written_by"] == "pancreas predict" and set(stats["cases"]) == {r["case"] for r in rows}


def test_a_rerun_keeps_and_rebuilds_statistics_of_up_to_date_cases(msd, tmp_path):
    run, out = write_contract_run(tmp_path / "run", window=(32, 64, 64)), tmp_path / "out"
    _predict(run, msd, out)
    first = (out / "statistics.csv").read_text(encoding="utf-8")
    (out / "statistics.json").unlink()  # as after a kill before it was written
    (out / "statistics.csv").unlink()
    again = _predict(run, msd, out, preview=True)
    assert again.n_skipped == len(again.results)  # nothing predicted again ...
    assert (out / "statistics.csv").read_text(
        encoding="utf-8"
    ) == first  # ... measured again from the files, the same figures
    assert all((out / f"{r.case_id}_preview.png").is_file() for r in again.results)


def test_a_foreign_statistics_file_or_preview_is_refused_before_any_work(msd, tmp_path):
    run, out = write_contract_run(tmp_path / "run", window=(32, 64, 64)), tmp_path / "out"
    out.mkdir()
    (out / "statistics.csv").write_text("my own table\n")
    with pytest.raises(PredictError, match=r"statistics.csv: exists and was not written by `pancreas predict`"):
        _predict(run, msd, out)
    assert sorted(p.name for p in out.iterdir()) == ["statistics.csv"]
    (out / "statistics.csv").unlink()
    case = sorted((msd / "imagesTs").glob("pancreas_*.nii.gz"))[0].name.removesuffix(".nii.gz")
    (out / f"{case}_preview.png").write_bytes(b"a picture of mine")
    _predict(run, msd, out)  # without --preview the file is not ours to care about
    with pytest.raises(PredictError, match=rf"{case}_preview.png: exists and was not written"):
        _predict(run, msd, out, preview=True)
    assert (out / f"{case}_preview.png").read_bytes() == b"a picture of mine"


def _edit(path: Path) -> bytes:
    """Correct a label map by hand (a new gland); the file's new bytes."""
    image = sitk.ReadImage(str(path))
    values = np.zeros_like(sitk.GetArrayFromImage(image))
    values[2:4, 10:20, 10:20] = 1
    edited = sitk.GetImageFromArray(values)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(path), True)
    return path.read_bytes()


def test_a_hand_corrected_label_map_is_never_replaced_silently(msd, tmp_path):
    run, out = write_contract_run(tmp_path / "run", window=(32, 64, 64)), tmp_path / "out"
    first = _predict(run, msd, out)
    case = first.results[0].case_id
    record = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert len(record["cases"][case]["output_sha256"]) == 64
    edited = _edit(out / f"{case}.nii.gz")
    assert _predict(run, msd, out).n_skipped == len(first.results)  # up to date: nothing replaced
    with pytest.raises(PredictError, match=rf"{case}.nii.gz: changed since `pancreas predict` wrote it"):
        _predict(run, msd, out, overwrite=True)  # other settings or --overwrite would replace it
    assert (out / f"{case}.nii.gz").read_bytes() == edited
    again = _predict(run, msd, out, overwrite=True, overwrite_edited=True)
    assert again.n_done == len(first.results) and (out / f"{case}.nii.gz").read_bytes() != edited
