"""What is wrong with a model file, said before Keras says "File not found" about a file that exists;
and what shape of U-Net a loaded model is (no Keras import here: the model is duck-typed)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

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


# Modules whose import registers the project's Keras classes (the deep-supervision U-Net, losses,
# metrics): imported before a load when installed, so a checkpoint of this project always reads.
CUSTOM_OBJECT_MODULES = ("training.model", "training.losses", "training.metrics")


def load_keras_model(path: str | Path, error: type[Exception]) -> Any:
    """``keras.saving.load_model(path, compile=False)`` reduced to the full-resolution output, or
    ``error`` with one line naming ``path`` when it cannot be a model (``keras_file_problem``) or
    Keras cannot read it.

    A model trained with deep supervision has extra coarse outputs; what predicts, exports or
    is compared is the network up to ``outputs[0]``, which is exactly the model without them.
    """
    import contextlib
    import importlib

    import keras

    problem = keras_file_problem(path)
    if problem:
        raise error(f"{path}: {problem}")
    for module in CUSTOM_OBJECT_MODULES:
        with contextlib.suppress(ImportError):  # a tree without the trainer: plain models still load
            importlib.import_module(module)
    try:
        model = keras.saving.load_model(path, compile=False)
    except ValueError as err:  # Keras says "File not found" of a damaged archive that exists
        raise error(f"{path}: not a readable Keras model ({str(err).splitlines()[0]})") from None
    return full_resolution_model(model)


def full_resolution_model(model: Any) -> Any:
    """``model`` itself, or for a multi-output (deep-supervision) U-Net its sub-model up to ``outputs[0]``."""
    if len(model.outputs) <= 1:
        return model
    import keras

    return keras.Model(model.inputs, model.outputs[0], name=model.name)


_POOL = re.compile(r"^enc(\d+)_pool$")


def unet_architecture(model: Any) -> dict[str, int] | None:
    """``model.depth``, ``model.base_filters``, ``n_classes`` and ``input channels`` of a U-Net built
    by ``training.model.build_unet`` (read from its layers), or ``None`` for any other model."""
    names = {layer.name for layer in model.layers}
    if "enc0_conv1" not in names or "head_conv" not in names:
        return None
    return {
        "model.depth": sum(1 for n in names if _POOL.match(n)),
        "model.base_filters": int(model.get_layer("enc0_conv1").filters),
        "n_classes": int(model.outputs[0].shape[-1]),
        "input channels": int(model.inputs[0].shape[-1]),
    }
