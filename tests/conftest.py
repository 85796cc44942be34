"""Fixtures shared by several test files (one body each; a file's own fixture of the same name wins)."""

from __future__ import annotations

import pytest
from helpers import tiny_train_store


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    """A tiny learnable store with its index: what the trainer tests start from."""
    return tiny_train_store(tmp_path_factory.mktemp("store"))
