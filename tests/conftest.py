"""Fixtures shared by several test files (one body each; a file's own fixture of the same name wins)."""

from __future__ import annotations

import pytest
from helpers import tiny_train_store


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    """A tiny learnable store with its index: what the trainer tests start from."""
    return tiny_train_store(tmp_path_factory.mktemp("store"))


class _HalfFile:
    """A file object that keeps only half of each write and says nothing: a full disk as
    some libraries' writers meet it (the bytes never arrive, no error is raised)."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self.file = open(path, mode, *args, **kwargs)  # noqa: SIM115 - closed in __exit__

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        return self.file.write(data[: len(data) // 2])

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.fixture
def short_writes(monkeypatch):
    """Make ``dataset.common.atomic.write_bytes_atomic`` meet a disk that silently drops bytes."""
    import dataset.common.atomic as atomic

    monkeypatch.setattr(atomic, "open", _HalfFile, raising=False)
