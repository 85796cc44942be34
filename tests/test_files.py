"""Atomic writes, locks, crash points and fingerprints (dataset.common)."""

import errno
import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from dataset.common.atomic import (
    TMP_SUFFIX,
    ReadError,
    atomic_path,
    read_json,
    remove_stale_temporaries,
    write_json_atomic,
)
from dataset.common.crashpoints import commit_point
from dataset.common.fingerprints import fingerprint_file, fingerprint_json
from dataset.common.locks import LOCK_NAME, LockedError, exclusive_lock, holds_lock
from dataset.common.paths import inside


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(TMP_SUFFIX)
        tmp.write_text("new")
    assert target.read_text(encoding="utf-8") == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600

    with pytest.raises(RuntimeError):  # noqa: PT012 - the failure must happen inside the write
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text(encoding="utf-8") == "new"
    assert os.listdir(target.parent) == ["out.txt"]


def test_keep_identical_preserves_mtime_only_when_bytes_match(tmp_path):
    target = tmp_path / "d.json"
    write_json_atomic(target, {"a": 1})
    os.utime(target, ns=(1, 1))
    write_json_atomic(target, {"a": 1}, keep_identical=True)
    assert target.stat().st_mtime_ns == 1
    write_json_atomic(target, {"a": 2}, keep_identical=True)
    assert target.stat().st_mtime_ns != 1 and '"a": 2' in target.read_text(encoding="utf-8")


def test_stale_temporaries_are_removed_only_by_the_lock_holder_and_only_ours(tmp_path):
    (tmp_path / f".x.h5.abc{TMP_SUFFIX}").write_text("partial")
    (tmp_path / ".notes.tmp").write_text("a user's file that merely looks temporary")
    (tmp_path / "x.h5").write_text("done")
    with pytest.raises(RuntimeError, match="holding the folder's lock"):
        remove_stale_temporaries(tmp_path)
    with exclusive_lock(tmp_path):
        removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [f".x.h5.abc{TMP_SUFFIX}"]
    assert sorted(os.listdir(tmp_path)) == sorted([".notes.tmp", "x.h5", LOCK_NAME])


def _hold(folder, ready, release):
    with exclusive_lock(folder):
        ready.set()
        release.wait(60)


def test_lock_refuses_a_second_process_names_it_and_dies_with_it(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(LockedError, match=rf"in use by pid {holder.pid} on {os.uname().nodename}") as err:
            with exclusive_lock(tmp_path):
                pass
        assert "\n" not in str(err.value)
    finally:
        holder.kill()  # a SIGKILLed holder never leaves a stale lock
        holder.join(60)
    with exclusive_lock(tmp_path):
        assert holds_lock(tmp_path) and holds_lock(tmp_path / "sub" / "folder")
    assert not holds_lock(tmp_path)


def test_lock_is_reentrant_within_a_process(tmp_path):
    with exclusive_lock(tmp_path):
        with exclusive_lock(tmp_path):
            assert holds_lock(tmp_path)
        assert holds_lock(tmp_path)
    assert not holds_lock(tmp_path)


def test_commit_point_kills_at_the_named_occurrence_and_logs_every_point(tmp_path):
    code = (
        "from dataset.common.atomic import write_json_atomic as w\n"
        "import sys\nfor i in range(3):\n    w(sys.argv[1], {'i': i}, point='state')\n"
    )
    target, log = tmp_path / "state.json", tmp_path / "points.log"
    env = {**os.environ, "PANCREAS_CRASH_LOG": str(log)}
    assert subprocess.run([sys.executable, "-c", code, str(target)], env=env).returncode == 0
    assert log.read_text(encoding="utf-8").split() == [
        f"state:{p}#{i}" for i in (1, 2, 3) for p in ("written", "renamed")
    ]
    env = {**os.environ, "PANCREAS_CRASH_AT": "state:written#2"}
    assert subprocess.run([sys.executable, "-c", code, str(target)], env=env).returncode == -9
    assert json.loads(target.read_text(encoding="utf-8")) == {"i": 0}  # the second write never landed
    assert [p.name for p in tmp_path.iterdir() if TMP_SUFFIX in p.name]  # its temporary is left for the sweep


def test_simulated_full_disk_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "catalog.json"
    write_json_atomic(target, {"v": 1}, point="catalog")
    monkeypatch.setenv("PANCREAS_ENOSPC_AT", "catalog:written")
    with pytest.raises(OSError, match="No space left") as err:
        write_json_atomic(target, {"v": 2}, point="catalog")
    assert err.value.errno == errno.ENOSPC
    assert json.loads(target.read_text(encoding="utf-8")) == {"v": 1} and os.listdir(tmp_path) == ["catalog.json"]
    commit_point("unrelated:written")  # other points are untouched


def test_read_json_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(ReadError, match=r"missing.json: no index summary; rerun"):
        read_json(tmp_path / "missing.json", "index summary", "rerun")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ReadError, match=r"bad.json: unreadable catalog \(") as err:
        read_json(tmp_path / "bad.json", "catalog")
    assert "\n" not in str(err.value)


def test_inside_resolves_links(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert inside(tmp_path / "link" / "x", tmp_path / "data") and inside(tmp_path / "data", tmp_path / "data")
    assert not inside(tmp_path / "other", tmp_path / "data")


def test_fingerprints_are_stable_and_sensitive(tmp_path):
    assert fingerprint_json({"a": 1, "b": [1, 2]}) == fingerprint_json({"b": [1, 2], "a": 1})
    assert fingerprint_json({"a": 1}) != fingerprint_json({"a": 2})
    f = tmp_path / "ct.nii.gz"
    f.write_bytes(b"1234")
    first = fingerprint_file(f)
    assert fingerprint_file(f) == first
    f.write_bytes(b"12345")
    assert fingerprint_file(f) != first


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_lock_file_that_is_a_link_never_truncates_its_target(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("the only copy")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(target)
    with pytest.raises(LockedError, match="cannot open its lock file"):
        with exclusive_lock(out):
            pass
    assert target.read_text(encoding="utf-8") == "the only copy"


def test_write_bytes_atomic_refuses_a_short_file_and_keeps_the_old_one(tmp_path, request):
    from dataset.common.atomic import write_bytes_atomic

    target = tmp_path / "picture.png"
    write_bytes_atomic(target, b"old bytes")
    assert target.read_bytes() == b"old bytes"
    request.getfixturevalue("short_writes")
    with pytest.raises(OSError, match=r"picture\.png: only 5 of 10 bytes reached the disk \(is .* full\?\)"):
        write_bytes_atomic(target, b"new bytes!")
    assert target.read_bytes() == b"old bytes" and [p.name for p in tmp_path.iterdir()] == ["picture.png"]
