"""Crash tests in the manner of SQLite's: SIGKILL each stage at every commit point in turn.

For ``preprocess`` and ``index`` (and ``train``, in tests/test_train_crash.py) a first
uninterrupted run lists every commit point it reaches (``PANCREAS_CRASH_LOG``: a
temporary written, renamed, a record updated; see dataset/common/atomic.py). Then, for
each point in turn, a fresh copy of the inputs is run with ``PANCREAS_CRASH_AT`` set to
that point, which SIGKILLs the process there; a rerun must finish, and its result must
equal the uninterrupted run's (timings aside), with no temporary left behind and no
committed work redone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from dataset.common.atomic import TMP_SUFFIX
from dataset.common.crashpoints import CRASH_ENV, CRASH_LOG_ENV
from sources.synthetic.msd import make_dataset

pytestmark = pytest.mark.slow

TIMING_KEYS = {"seconds", "classify_seconds_per_case", "unchanged", "augmented_built", "augmented_reused"}


def cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, CRASH_LOG_ENV)}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pancreas.cli", *args, "--no-progress"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def commit_points(args: list[str], log: Path) -> list[str]:
    result = cli(args, **{CRASH_LOG_ENV: str(log)})
    assert result.returncode == 0, result.stderr
    return log.read_text(encoding="utf-8").split()


def _strip(value, root: str):
    if isinstance(value, dict):
        return {k: _strip(v, root) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    return value


def snapshot(folder: Path) -> dict[str, object]:
    """Every file of an output folder, comparable across folders: JSON without timings,
    HDF5 by datasets and attributes, anything else by bytes."""
    root = str(folder.resolve())
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name == ".pancreas.lock":
            continue
        rel = str(path.relative_to(folder))
        if path.suffix == ".json":
            out[rel] = _strip(json.loads(path.read_text(encoding="utf-8")), root)
        elif path.suffix == ".h5":
            with h5py.File(path, "r") as f:
                out[rel] = (
                    {k: f[k][...].tobytes() for k in f},
                    {k: _strip(v.tolist() if isinstance(v, np.ndarray) else v, root) for k, v in f.attrs.items()},
                )
        else:
            out[rel] = path.read_bytes().replace(root.encode(), b"<root>")
    return out


def identity(path: Path) -> tuple[int, int]:
    """(inode, mtime): a redone file is renamed into place, so it has a new inode even when a
    coarse clock gives it the old modification time."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def temporaries(folder: Path) -> list[Path]:
    return list(folder.rglob(f"*{TMP_SUFFIX}*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), 3, seed=4, size="small", n_test=1, progress=False)


def kill_and_resume(points, make_inputs, args_for, out_of, tmp_path, reference, committed_check):
    """Kill at each point, rerun, compare; return how many points were killed."""
    killed = 0
    for i, point in enumerate(points):
        work = tmp_path / f"kill_{i}"
        make_inputs(work)
        crashed = cli(args_for(work), **{CRASH_ENV: point})
        assert crashed.returncode == -9, f"{point}: expected SIGKILL, got {crashed.returncode}: {crashed.stderr[-400:]}"
        before = committed_check(work, None)
        rerun = cli(args_for(work))
        assert rerun.returncode == 0, f"rerun after a kill at {point} failed: {rerun.stderr[-800:]}"
        assert temporaries(out_of(work)) == [], point
        assert snapshot(out_of(work)) == reference, f"result after a kill at {point} differs"
        committed_check(work, before)
        killed += 1
        shutil.rmtree(work)
    return killed


def test_preprocess_survives_a_kill_at_every_commit_point(data, tmp_path):
    ref = tmp_path / "ref"
    args = lambda work: ["preprocess", "--data", str(data), "--out", str(work / "store"), "--workers", "0"]  # noqa: E731
    points = commit_points(args(ref), tmp_path / "points.log")
    assert any(p.startswith("shard:") for p in points) and any(p.startswith("catalog:") for p in points)
    reference = snapshot(ref / "store")

    def committed(work: Path, before):
        """Shards the catalog called done at the kill are never redone by the rerun."""
        catalog = work / "store" / "catalog.json"
        done = {}
        if catalog.is_file():
            for cid, rec in json.loads(catalog.read_text(encoding="utf-8"))["cases"].items():
                shard = work / "store" / rec["shard"]
                if rec["status"] == "done" and shard.is_file():
                    done[cid] = identity(shard)
        if before is not None:
            for cid, mtime in before.items():
                assert identity(work / "store" / "cases" / f"{cid}.h5") == mtime, f"{cid} was redone"
        return done

    killed = kill_and_resume(
        points, lambda work: work.mkdir(), args, lambda w: w / "store", tmp_path, reference, committed
    )
    assert killed == len(points) >= 8
    print(f"preprocess: {killed} commit points killed")


def test_index_survives_a_kill_at_every_commit_point(data, tmp_path):
    base = tmp_path / "base"
    assert cli(["preprocess", "--data", str(data), "--out", str(base), "--workers", "0"]).returncode == 0
    config = tmp_path / "index.yaml"
    config.write_text(
        "train_patch_xyz: [32, 32, 16]\nval_patch_xyz: [32, 32, 16]\nfolds: 2\n"  # 3 cases
        "elastic:\n  control_points: 3\n  sigma_voxels: 2.0\n"
    )

    def inputs(work: Path) -> None:
        shutil.copytree(base, work / "store")

    args = lambda work: ["index", "--store", str(work / "store"), "--config", str(config), "--workers", "0"]  # noqa: E731
    inputs(tmp_path / "ref")
    points = commit_points(args(tmp_path / "ref"), tmp_path / "points.log")
    assert {"augmented:renamed", "manifest:renamed", "summary:renamed", "split:renamed"} <= {
        p.split("#")[0] for p in points
    }
    reference = snapshot(tmp_path / "ref" / "store")

    def committed(work: Path, before):
        """Augmented shards renamed into place before the kill are reused, not rebuilt."""
        aug = work / "store" / "index" / "augmented"
        now = {p.name: identity(p) for p in aug.glob("*.h5")} if aug.is_dir() else {}
        if before is not None:
            for name, mtime in before.items():
                assert now.get(name) == mtime, f"augmented shard {name} was rebuilt"
        return now

    killed = kill_and_resume(points, inputs, args, lambda w: w / "store", tmp_path, reference, committed)
    assert killed == len(points) >= 8
    print(f"index: {killed} commit points killed")


def test_full_disk_gives_one_line_no_partial_file_and_keeps_earlier_results(data, tmp_path):
    """A write that fails with ENOSPC (simulated at the commit point, as a full disk would fail
    the temporary's write): one line naming the case or file, nothing half-written, and a rerun
    with space again finishes without redoing what was committed."""
    from dataset.common.crashpoints import ENOSPC_ENV

    store = tmp_path / "store"
    first = cli(
        ["preprocess", "--data", str(data), "--out", str(store), "--workers", "0"], **{ENOSPC_ENV: "shard:written#2"}
    )
    assert first.returncode == 1
    failed_lines = [line for line in first.stdout.splitlines() + first.stderr.splitlines() if "No space left" in line]
    assert failed_lines, first.stdout + first.stderr
    assert temporaries(store) == []
    catalog = json.loads((store / "catalog.json").read_text(encoding="utf-8"))
    done = {c: identity(store / r["shard"]) for c, r in catalog["cases"].items() if r["status"] == "done"}
    assert len(done) == len(catalog["cases"]) - 1
    again = cli(["preprocess", "--data", str(data), "--out", str(store), "--workers", "0"])
    assert again.returncode == 0, again.stderr
    for case_id, mtime in done.items():
        assert identity(store / "cases" / f"{case_id}.h5") == mtime

    config = tmp_path / "index.yaml"
    config.write_text("train_patch_xyz: [32, 32, 16]\nval_patch_xyz: [32, 32, 16]\nfolds: 2\n")
    index = ["index", "--store", str(store), "--config", str(config), "--workers", "0"]
    full = cli(index, **{ENOSPC_ENV: "manifest:written#1"})
    assert full.returncode == 2 and "No space left on device" in full.stderr
    assert len([line for line in full.stderr.splitlines() if line.strip()]) == 1, full.stderr
    assert temporaries(store) == []
    shards = {p.name: identity(p) for p in (store / "index" / "augmented").glob("*.h5")}
    assert shards and not (store / "index" / "summary.json").exists()  # not committed, so never trusted
    assert cli(index).returncode == 0
    assert {p.name: identity(p) for p in (store / "index" / "augmented").glob("*.h5")} == shards
