"""``pancreas predict --workers N`` / ``--scheduler``: the same label maps as in process, a worker
killed mid-case, resuming, the models loaded once per worker, and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import write_contract_run, write_tiny_keras_run

from dataset.common.atomic import TMP_SUFFIX
from dataset.common.runner import SchedulerError
from dataset.contract.predictions import read_predictions
from prediction.config import PredictConfig
from prediction.predict import PredictError, predict_cases
from preprocess.io import read_label
from preprocess.output import image_array
from sources.synthetic.msd import make_dataset

N_CASES = 3


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    data = make_dataset(tmp_path_factory.mktemp("msd"), N_CASES, seed=0, size="small", n_test=0, progress=False)
    return data / "imagesTr"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_contract_run(tmp_path_factory.mktemp("run") / "run", window=(32, 64, 64))


def pointwise_model(batch: np.ndarray) -> np.ndarray:
    """A module-level 'model' (workers import it by name): class scores from the voxel's value."""
    x = batch[..., 0]
    logits = np.stack([np.zeros_like(x), 4 * x, 8 * (x - 0.5)], axis=-1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


class KillOnce:
    """``pointwise_model``, except that the first call anywhere kills its process (a worker dying
    mid-case, as the OOM killer would); the marker file makes it happen once in all workers."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return pointwise_model(batch)


@pytest.fixture(scope="module")
def serial(images: Path, run: Path, tmp_path_factory) -> Path:
    """The in-process run every Dask run is compared with."""
    out = tmp_path_factory.mktemp("serial")
    summary = predict_cases(run, images, out, PredictConfig(), predict_fn=pointwise_model, progress=False)
    assert summary.n_done == N_CASES, summary.table()
    return out


def _record(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text(encoding="utf-8"))


def assert_same_label_maps(a: Path, b: Path) -> None:
    """Bit for bit: the arrays, the grids and the files' recorded SHA-256."""
    cases_a, cases_b = _record(a)["cases"], _record(b)["cases"]
    assert list(cases_a) == list(cases_b)  # the record's order: the input's, however they finished
    for case_id in cases_a:
        x, y = read_label(a / f"{case_id}.nii.gz"), read_label(b / f"{case_id}.nii.gz")
        assert np.array_equal(image_array(x), image_array(y)), case_id
        assert (x.GetSpacing(), x.GetOrigin(), x.GetDirection()) == (y.GetSpacing(), y.GetOrigin(), y.GetDirection())
        assert cases_a[case_id]["output_sha256"] == cases_b[case_id]["output_sha256"], case_id


def no_temporaries(out: Path) -> bool:
    return not [p.name for p in out.iterdir() if TMP_SUFFIX in p.name]


@pytest.mark.timeout(240)
def test_two_workers_give_the_label_maps_of_one_process_and_resume(images, run, serial, tmp_path):
    out = tmp_path / "out"
    summary = predict_cases(run, images, out, PredictConfig(), predict_fn=pointwise_model, progress=False, workers=2)
    assert (summary.n_done, summary.n_skipped, len(summary.failed)) == (N_CASES, 0, 0), summary.table()
    assert [r.case_id for r in summary.results] == list(_record(serial)["cases"])
    assert_same_label_maps(serial, out)
    record = _record(out)
    assert record["cases"]["pancreas_001"]["output"] == str(out / "pancreas_001.nii.gz")  # as given, not resolved
    assert (out / "statistics.csv").read_text() == (serial / "statistics.csv").read_text()
    assert no_temporaries(out)
    again = predict_cases(run, images, out, PredictConfig(), predict_fn=pointwise_model, progress=False, workers=2)
    assert (again.n_done, again.n_skipped) == (0, N_CASES)
    assert _record(out) == record


@pytest.mark.timeout(240)
def test_a_killed_worker_is_replaced_and_its_case_redone(images, run, serial, tmp_path):
    marker = tmp_path / "killed"
    out = tmp_path / "out"
    summary = predict_cases(run, images, out, PredictConfig(), predict_fn=KillOnce(marker), progress=False, workers=2)
    assert marker.is_file(), "no worker was killed"
    assert (summary.n_done, len(summary.failed)) == (N_CASES, 0), summary.table()
    assert read_predictions(out) is not None and all(r.done for r in read_predictions(out).cases.values())
    assert_same_label_maps(serial, out)
    assert no_temporaries(out)


@pytest.mark.timeout(240)
def test_a_case_whose_worker_dies_fails_in_one_line_and_a_rerun_redoes_it(images, run, serial, tmp_path):
    import dask

    marker, out = tmp_path / "killed", tmp_path / "out"
    model = KillOnce(marker)
    # Dask gives up at the first death. A group of tasks this small is not queued on the scheduler, so the
    # dying worker may hold a second case besides the one it runs: every case it held fails, the others not
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        summary = predict_cases(run, images, out, PredictConfig(), predict_fn=model, progress=False, workers=2)
    assert marker.is_file() and summary.failed and summary.n_done >= 1, summary.table()
    assert summary.n_done + len(summary.failed) == N_CASES
    record = read_predictions(out)  # valid, and nothing of a dead case is listed as written
    assert record is not None
    for failed in summary.failed:
        assert failed.error.startswith(f"{failed.source}: worker error: ") and "\n" not in failed.error
        assert record.cases[failed.case_id].status == "failed" and record.cases[failed.case_id].output is None
    assert no_temporaries(out)
    rerun = predict_cases(
        run, images, out, PredictConfig(), predict_fn=model, progress=False
    )  # same model: its cases up to date
    redo = len(summary.failed)
    assert (rerun.n_done, rerun.n_skipped, len(rerun.failed)) == (redo, N_CASES - redo, 0), rerun.table()
    assert_same_label_maps(serial, out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_running_cluster_loads_the_keras_model_once_per_worker(images, tmp_path):
    from distributed import Client, LocalCluster

    run = write_tiny_keras_run(tmp_path / "run")
    here = predict_cases(run, images, tmp_path / "here", PredictConfig(), progress=False)
    assert here.n_done == N_CASES, here.table()
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        there = predict_cases(
            run, images, tmp_path / "there", PredictConfig(), progress=False, scheduler=cluster.scheduler_address
        )
        loads = client.run(_model_loads)
    assert there.n_done == N_CASES, there.table()
    assert list(loads.values()) == [1]  # three cases, one load
    assert_same_label_maps(tmp_path / "here", tmp_path / "there")


def _model_loads() -> int:
    from prediction.cluster import LOADS

    return LOADS[0]


def test_workers_0_runs_in_this_process(images, run, serial, tmp_path):
    """A lambda cannot travel to a worker: that it works proves no Dask was involved."""
    summary = predict_cases(
        run,
        images,
        tmp_path / "out",
        PredictConfig(),
        predict_fn=lambda b: pointwise_model(b),
        workers=0,
        progress=False,
    )
    assert summary.n_done == N_CASES


def test_a_model_that_cannot_reach_the_workers_is_refused_before_writing(images, run, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PredictError, match=r"model callable .*<lambda> cannot be sent to Dask workers"):
        predict_cases(run, images, out, PredictConfig(), predict_fn=lambda b: b, workers=2, progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"],
            "--workers 2 and --scheduler tcp://127.0.0.1:9 exclude",
        ),
        (["--workers", "-1"], "--workers must be >= 0, got -1"),
    ],
)
def test_cli_refuses_bad_parallel_options_in_one_line(images, run, tmp_path, capsys, options, message):
    from pancreas.cli import main

    out = tmp_path / "out"
    code = main(["predict", "--model", str(run), "--input", str(images), "--out", str(out), *options])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_an_unreachable_scheduler_is_one_line(images, run, tmp_path, monkeypatch):
    import dataset.common.runner as runner

    monkeypatch.setattr(runner, "SCHEDULER_TIMEOUT_S", 1)
    with pytest.raises(SchedulerError, match=r"^cannot reach the Dask scheduler at tcp://127.0.0.1:9 \(.*\)$"):
        predict_cases(
            run, images, tmp_path / "out", PredictConfig(), predict_fn=pointwise_model, scheduler="tcp://127.0.0.1:9"
        )


@pytest.mark.parametrize(
    ("workers", "scheduler", "expected"),
    [(2, None, max(1, (os.cpu_count() or 1) // 2)), (64, None, 1), (None, "tcp://h:8786", None), (0, None, None)],
)
def test_local_workers_share_the_cores(workers, scheduler, expected):
    from prediction.cluster import threads_per_worker

    assert threads_per_worker(workers, scheduler) == expected


def test_configure_worker_threads_bounds_tensorflow_in_a_fresh_process():
    import subprocess
    import sys

    code = (
        "from prediction.cluster import configure_worker_threads; configure_worker_threads(1); "
        "import SimpleITK as sitk, tensorflow as tf; t = tf.config.threading; "
        "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads(), "
        "sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["1", "1", "1"]


def test_cases_go_to_the_workers_largest_first(tmp_path):
    from prediction.cases import CaseInput
    from prediction.predict import largest_first

    sizes = {"a": 10, "b": 300, "c": 20, "d": 300}
    cases = []
    for name, n in sizes.items():
        (tmp_path / f"{name}.nii.gz").write_bytes(b"x" * n)
        cases.append(CaseInput(name, tmp_path / f"{name}.nii.gz"))
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"IM{i}").write_bytes(b"x" * 100)  # a DICOM folder counts its files: 300 too
    cases.append(CaseInput("s", series))
    cases.append(CaseInput("gone", tmp_path / "missing.nii.gz"))  # unreadable: size 0, kept
    assert [c.case_id for c in largest_first(cases)] == ["b", "d", "s", "c", "a", "gone"]
