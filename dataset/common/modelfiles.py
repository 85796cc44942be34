"""What is wrong with a model file, said before Keras says "File not found" about a file that exists."""

from __future__ import annotations

import zipfile
from pathlib import Path

HDF5_SUFFIXES = (".h5", ".hdf5")


def keras_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a ``.keras`` model (Keras 3's zip archive), or ``None`` if it may be one."""
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        return (
            "an HDF5 (.h5) model, not a .keras one; load it with the Keras that wrote it and save it as "
            "MODEL.keras (model.save('MODEL.keras'))"
        )
    if path.suffix == ".keras" and path.is_file() and not zipfile.is_zipfile(path):
        return "not a readable Keras model (a .keras file is a zip archive; this one is truncated or not a model)"
    return None
