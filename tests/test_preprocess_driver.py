"""The case loop: resume, bad input, a killed run, Dask LocalCluster and an external scheduler."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import preprocess.pipeline as pipeline
from dataset.common.atomic import TMP_SUFFIX
from dataset.common.locks import LockedError
from dataset.common.runner import SchedulerError
from dataset.contract.catalog import read_catalog
from dataset.contract.store import StoreError, read_shard, shard_path
from pancreas.cli import main
from preprocess.config import PreprocessConfig
from preprocess.driver import run_preprocess
from sources.msd import MsdDatasetError
from sources.synthetic.msd import make_dataset

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """3 training + 1 test small synthetic cases, copied by each test that changes them."""
    return make_dataset(tmp_path_factory.mktemp("template"), 3, seed=2, size="small", n_test=1, progress=False)


@pytest.fixture
def data(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "data"))


def shard_bytes(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store / "cases").glob("*.h5"))}


def no_temporaries(store: Path) -> bool:
    return not list(store.rglob(f"*{TMP_SUFFIX}*"))


def test_second_run_does_no_work(data, tmp_path, monkeypatch):
    store = tmp_path / "store"
    first = run_preprocess(data, store, workers=0, progress=False)
    assert (first.done, first.skipped, first.failed) == (4, 0, 0)
    before = shard_bytes(store)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a case was preprocessed again")

    monkeypatch.setattr(pipeline, "preprocess_file", must_not_run)
    second = run_preprocess(data, store, workers=0, progress=False)
    assert (second.done, second.skipped, second.failed) == (0, 4, 0)
    assert shard_bytes(store) == before
    catalog = read_catalog(store)
    assert all(r.done and r.shape_zyx for r in catalog.cases.values())


def test_changed_config_or_input_is_redone(data, tmp_path):
    store = tmp_path / "store"
    run_preprocess(data, store, workers=0, progress=False)
    changed = run_preprocess(data, store, PreprocessConfig(histogram_bins=64), workers=0, progress=False)
    assert (changed.done, changed.skipped) == (4, 0)
    image = data / "imagesTr" / "pancreas_002.nii.gz"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "re-downloaded"
    again = run_preprocess(data, store, PreprocessConfig(histogram_bins=64), workers=0, progress=False)
    assert (again.done, again.skipped) == (1, 3)


def test_stale_temporaries_are_removed(data, tmp_path):
    store = tmp_path / "store"
    (store / "cases").mkdir(parents=True)
    leftover = store / "cases" / f".pancreas_001.h5.abc123{TMP_SUFFIX}"
    leftover.write_bytes(b"half a shard")
    (store / f".catalog.json.x{TMP_SUFFIX}").write_text("{")
    run_preprocess(data, store, workers=0, progress=False)
    assert no_temporaries(store)


def write_tiny(path: Path, array_zyx: np.ndarray, origin=(0.0, 0.0, 0.0)) -> None:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing((1.5, 1.5, 3.0))
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def add_bad_cases(data: Path) -> dict[str, str]:
    """Append one case per kind of bad input; returns case id -> expected reason fragment."""
    meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    tr, lb = data / "imagesTr", data / "labelsTr"
    hu = np.full((4, 10, 12), -1000, np.int16)
    hu[1:3, 2:8, 3:9] = 40
    label = np.zeros(hu.shape, np.uint8)

    (tr / "bad_unreadable.nii.gz").write_bytes(b"not a nifti at all")
    write_tiny(lb / "bad_unreadable.nii.gz", label)
    four = sitk.JoinSeries([sitk.GetImageFromArray(hu)] * 2)
    sitk.WriteImage(four, str(tr / "bad_4d.nii.gz"))
    write_tiny(lb / "bad_4d.nii.gz", label)
    nan = hu.astype(np.float32)
    nan[2, 5, 5] = np.nan
    write_tiny(tr / "bad_nan.nii.gz", nan)
    write_tiny(lb / "bad_nan.nii.gz", label)
    write_tiny(tr / "bad_grid.nii.gz", hu)
    write_tiny(lb / "bad_grid.nii.gz", label, origin=(4.0, 0.0, 0.0))
    write_tiny(tr / "bad_values.nii.gz", hu)
    values = label.copy()
    values[2, 4, 4] = 7
    write_tiny(lb / "bad_values.nii.gz", values)
    names = ["bad_unreadable", "bad_4d", "bad_nan", "bad_grid", "bad_values", "bad_missing"]
    meta["training"] += [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names]
    (data / "dataset.json").write_text(json.dumps(meta))
    return {
        "bad_unreadable": "bad_unreadable.nii.gz: cannot read",
        "bad_4d": "bad_4d.nii.gz: image is 4D",
        "bad_nan": "NaN or infinite",
        "bad_grid": "label is on another grid than its image: origin",
        "bad_values": "not in the declared labels [0, 1, 2]: 7 (1 voxels)",
        "bad_missing": "listed file missing",
    }


def test_bad_inputs_fail_alone_and_cli_exits_nonzero(data, tmp_path, capsys):
    expected = add_bad_cases(data)
    store = tmp_path / "store"
    code = main(["preprocess", "--data", str(data), "--out", str(store), "--workers", "0", "--no-progress"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "4 done, 0 skipped (up to date), 6 failed" in printed
    catalog = read_catalog(store)
    for case_id, fragment in expected.items():
        record = catalog.cases[case_id]
        assert record.status == "failed" and fragment in record.error, record.error
        assert "\n" not in record.error
        line = next(x for x in printed.splitlines() if f"FAILED {case_id}:" in x)
        assert fragment in line
        assert not shard_path(store, case_id).exists()
    good = [c for c, r in catalog.cases.items() if r.done]
    assert good == ["pancreas_001", "pancreas_002", "pancreas_003", "pancreas_004"]
    assert all(read_shard(shard_path(store, c))[0].size for c in good)


def test_failed_redo_keeps_the_previous_good_shard(data, tmp_path):
    store = tmp_path / "store"
    run_preprocess(data, store, workers=0, progress=False)
    path = shard_path(store, "pancreas_001")
    before = path.read_bytes()
    (data / "imagesTr" / "pancreas_001.nii.gz").write_bytes(b"corrupted download")
    summary = run_preprocess(data, store, workers=0, progress=False)
    assert summary.failures and summary.failures[0][0] == "pancreas_001"
    assert (summary.done, summary.skipped, summary.failed) == (0, 3, 1)
    assert path.read_bytes() == before
    assert read_catalog(store).cases["pancreas_001"].status == "failed"


def test_declared_labels_must_be_allowed_by_config(data, tmp_path):
    with pytest.raises(MsdDatasetError, match=r"declares label values \[2\]"):
        run_preprocess(data, tmp_path / "store", PreprocessConfig(label_values=(0, 1)), workers=0, progress=False)


def test_outside_entry_fails_the_cli_with_a_message(data, tmp_path, capsys):
    meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    meta["test"].append("../../elsewhere/pancreas_099.nii.gz")
    (data / "dataset.json").write_text(json.dumps(meta))
    assert main(["preprocess", "--data", str(data), "--out", str(tmp_path / "s"), "--workers", "0"]) == 2
    assert "pancreas_099.nii.gz' resolves outside the dataset folder" in capsys.readouterr().err


@pytest.mark.timeout(180)
def test_local_cluster_of_two_processes_matches_in_process(data, tmp_path):
    serial = run_preprocess(data, tmp_path / "serial", workers=0, progress=False)
    dask = run_preprocess(data, tmp_path / "dask", workers=2, progress=False)
    assert (dask.done, dask.failed) == (serial.done, serial.failed) == (4, 0)
    for case_id in ("pancreas_001", "pancreas_004"):
        a = read_shard(shard_path(tmp_path / "serial", case_id))
        b = read_shard(shard_path(tmp_path / "dask", case_id))
        np.testing.assert_array_equal(a[0], b[0])
        assert (a[1] is None) == (b[1] is None) and (a[1] is None or np.array_equal(a[1], b[1]))


def test_unreachable_scheduler_is_a_clear_error(data, tmp_path, monkeypatch):
    import dataset.common.runner as cluster

    monkeypatch.setattr(cluster, "SCHEDULER_TIMEOUT_S", 1)
    with pytest.raises(SchedulerError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        run_preprocess(data, tmp_path / "store", scheduler="tcp://127.0.0.1:9", progress=False)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.timeout(180)
def test_external_scheduler_and_worker(data, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    dask_cli = [PYTHON, "-m", "dask"]
    scheduler = _start(
        [
            *dask_cli,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        tmp_path / "scheduler.log",
    )
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text(encoding="utf-8"))["address"]
        assert address.startswith("tcp://127.0.0.1:")
        worker = _start(
            [
                *dask_cli,
                "worker",
                address,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
            ],
            tmp_path / "worker.log",
        )
        summary = run_preprocess(data, tmp_path / "store", scheduler=address, progress=False)
        assert (summary.done, summary.failed) == (4, 0)
        assert all(r.done for r in read_catalog(tmp_path / "store").cases.values())
    finally:
        for process in (worker, scheduler):
            if process is not None:
                _stop(process)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
def test_killed_run_then_rerun_completes(data, tmp_path):
    """SIGKILL the CLI after the first shard, rerun: all shards complete, no temporaries.

    Only the main process is killed (as the OOM killer would): its Dask worker processes
    must exit by themselves, and the rerun must cope with whatever they left behind.
    """
    store = tmp_path / "store"
    config = tmp_path / "slow.yaml"  # 0.5 mm: each case takes long enough to be killed mid-way
    config.write_text("target_spacing_mm: [0.5, 0.5, 0.5]\n")
    args = [
        PYTHON,
        "-m",
        "pancreas.cli",
        "preprocess",
        "--data",
        str(data),
        "--out",
        str(store),
        "--config",
        str(config),
        "--workers",
        "1",
        "--no-progress",
    ]
    run = _start(args, tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 90
        while not list((store / "cases").glob("*.h5")) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)
        run.wait()
    deadline = time.monotonic() + 20
    while _group_alive(run.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = _group_alive(run.pid)
    if orphans:
        os.killpg(run.pid, signal.SIGKILL)
    assert not orphans, "Dask worker processes outlived the killed run"
    finished = len(list((store / "cases").glob("*.h5")))
    assert 1 <= finished < 4, f"kill came too late or too early ({finished} shards)"
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{4 - finished} done, {finished} skipped" in rerun.stdout
    assert no_temporaries(store)
    for case_id, record in read_catalog(store).cases.items():
        image, _, attrs = read_shard(shard_path(store, case_id))
        assert record.done and image.shape == record.shape_zyx
        assert attrs["case_id"] == case_id


def test_store_of_another_dataset_is_not_overwritten(tmp_path):
    first = make_dataset(tmp_path / "a", 2, seed=0, n_test=0, progress=False)
    second = make_dataset(tmp_path / "b", 2, seed=1, n_test=0, progress=False)
    store = tmp_path / "store"
    run_preprocess(first, store, workers=0, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (store / "cases").iterdir()}
    with pytest.raises(StoreError, match=r"holds a store built from .*a, not .*b"):
        run_preprocess(second, store, workers=0, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (store / "cases").iterdir()} == before


# ---- the store's lock ---------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from dataset.common.locks import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_second_run_on_a_locked_store_fails_at_once_naming_the_holder(data, tmp_path, capsys):
    store = tmp_path / "store"
    (store / "cases").mkdir(parents=True)
    in_flight = store / "cases" / f".pancreas_001.h5.abc123{TMP_SUFFIX}"  # the holder's shard being written
    in_flight.write_bytes(b"half a shard")
    holder = subprocess.Popen([PYTHON, "-c", HOLD_LOCK, str(store)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LockedError, match=rf"in use by pid {holder.pid} on {re.escape(socket.gethostname())} "):
            run_preprocess(data, store, workers=0, progress=False)
        code = main(["preprocess", "--data", str(data), "--out", str(store), "--workers", "0", "--no-progress"])
        assert time.monotonic() - started < 10  # at once, not after waiting
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pancreas preprocess:")]
    assert len(errors) == 1 and f"pid {holder.pid} on {socket.gethostname()}" in errors[0]
    assert in_flight.exists()  # only the lock holder sweeps temporaries
    assert not (store / "catalog.json").exists() and not list((store / "cases").glob("*.h5"))
    assert run_preprocess(data, store, workers=0, progress=False).done == 4  # the holder is gone: lock released
    assert not in_flight.exists()


# ---- what a shard is made from -------------------------------------------------------------


@pytest.mark.parametrize("when", ["before", "after"])
def test_input_replaced_while_reading_fails_the_case_and_the_next_run_redoes_it(data, tmp_path, monkeypatch, when):
    """Planned with one file, read another: never stored under a fingerprint it was not made from.

    The old code fingerprinted the input after processing, so a file replaced right after
    it was read ("after") was stored as the old content under the new fingerprint and
    skipped by every later run.
    """
    store = tmp_path / "store"
    image = data / "imagesTr" / "pancreas_002.nii.gz"
    label = data / "labelsTr" / "pancreas_002.nii.gz"
    brighter = tmp_path / "brighter.nii.gz"  # the same scan 200 HU brighter: other content, same grid
    sitk.WriteImage(sitk.ReadImage(str(image)) + 200, str(brighter))
    old_levels = pipeline.preprocess_file(image, label, PreprocessConfig()).levels
    real_read = pipeline.read_case

    def replace_image() -> None:
        shutil.copyfile(brighter, image.with_name("incoming"))
        os.replace(image.with_name("incoming"), image)

    def read_case(image_path, label_path, allowed):
        if when == "before" and Path(image_path) == image:
            replace_image()
        out = real_read(image_path, label_path, allowed)
        if when == "after" and Path(image_path) == image:
            replace_image()
        return out

    monkeypatch.setattr(pipeline, "read_case", read_case)
    first = run_preprocess(data, store, workers=0, progress=False)
    assert (first.done, first.failed) == (3, 1)
    case_id, reason = first.failures[0]
    assert case_id == "pancreas_002" and "\n" not in reason
    assert reason.startswith(f"{image}: changed while reading"), reason
    assert not shard_path(store, "pancreas_002").exists()

    monkeypatch.undo()
    second = run_preprocess(data, store, workers=0, progress=False)
    assert (second.done, second.skipped, second.failed) == (1, 3, 0)
    stored = read_shard(shard_path(store, "pancreas_002"))[0]
    new_levels = pipeline.preprocess_file(image, label, PreprocessConfig()).levels
    assert not np.array_equal(new_levels, old_levels)
    np.testing.assert_array_equal(stored, new_levels)


def test_changed_declared_labels_redo_the_labelled_cases(data, tmp_path):
    """dataset.json's labels decide whether a label passes validation: part of the input."""
    store = tmp_path / "store"
    run_preprocess(data, store, workers=0, progress=False)
    with_tumour = {c for c, r in read_catalog(store).cases.items() if r.label_counts and r.label_counts[2]}
    meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"] = {"0": "background", "1": "pancreas"}
    (data / "dataset.json").write_text(json.dumps(meta))
    again = run_preprocess(data, store, workers=0, progress=False)
    assert again.skipped == 1 and again.done + again.failed == 3  # the unlabelled test case does not depend on them
    assert {c for c, _ in again.failures} == with_tumour and with_tumour
    assert all("not in the declared labels [0, 1]: 2 (" in reason for _, reason in again.failures)


@pytest.mark.parametrize("library", ["SimpleITK", "numpy"])
def test_another_simpleitk_or_numpy_version_redoes_every_case(data, tmp_path, monkeypatch, library):
    import preprocess.config as config_module

    store = tmp_path / "store"
    run_preprocess(data, store, workers=0, progress=False)
    real = config_module.library_versions()
    monkeypatch.setattr(config_module, "library_versions", lambda: {**real, library: "0.0.1"})
    again = run_preprocess(data, store, workers=0, progress=False)
    assert (again.done, again.skipped) == (4, 0)


def test_a_worker_with_other_library_versions_fails_its_case_instead_of_redoing_it_forever(tmp_path):
    """With --scheduler, a worker's SimpleITK/NumPy may differ from the driver's: its shards
    would carry another config fingerprint and never count as up to date."""
    from preprocess.config import PreprocessConfig, config_fingerprint, config_to_dict
    from preprocess.driver import PlannedCase, process_case
    from preprocess.input_files import take_inputs
    from sources.msd import load_msd_dataset

    data = make_dataset(tmp_path / "data", 1, seed=2, n_test=0, progress=False)
    dataset = load_msd_dataset(data)
    case = dataset.cases[0]
    planned = PlannedCase(case, take_inputs(case.image, case.label, dataset.label_values))
    config = PreprocessConfig()
    record = process_case(planned, str(tmp_path / "store"), config_to_dict(config), 1, "another-fingerprint")
    assert record.status == "failed" and "install the same SimpleITK and NumPy on every Dask worker" in record.error
    assert not (tmp_path / "store" / "cases").exists()
    ok = process_case(planned, str(tmp_path / "store"), config_to_dict(config), 1, config_fingerprint(config))
    assert ok.status == "done"
