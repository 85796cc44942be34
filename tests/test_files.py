"""Atomic writes and fingerprints (dataset.common.files)."""
import os

import pytest

from dataset.common.files import (
    atomic_path,
    fingerprint_file,
    fingerprint_json,
    remove_stale_temporaries,
    write_json_atomic,
)


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp")
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600

    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["out.txt"]


def test_keep_identical_preserves_mtime_only_when_bytes_match(tmp_path):
    target = tmp_path / "d.json"
    write_json_atomic(target, {"a": 1})
    os.utime(target, ns=(1, 1))
    write_json_atomic(target, {"a": 1}, keep_identical=True)
    assert target.stat().st_mtime_ns == 1
    write_json_atomic(target, {"a": 2}, keep_identical=True)
    assert target.stat().st_mtime_ns != 1 and '"a": 2' in target.read_text()


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".x.h5.abc.tmp").write_text("partial")
    (tmp_path / "x.h5").write_text("done")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".x.h5.abc.tmp"]
    assert os.listdir(tmp_path) == ["x.h5"]


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
