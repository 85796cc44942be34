"""``pancreas export``: a training run's model as a TensorFlow SavedModel, for serving (``export_run``).

See docs/how-to/export.md; the signature and the atomic swap: docs/explanation/internals.md#export-trainingexportpy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.common.atomic import TMP_SUFFIX, fsync_path, read_json, write_json_atomic
from dataset.common.errors import PancreasError
from dataset.common.fingerprints import content_sha256, fingerprint_file
from dataset.common.locks import LOCK_NAME, exclusive_lock, shared_lock
from dataset.common.modelfiles import load_keras_model, unet_architecture
from dataset.common.paths import refuse_inside
from dataset.common.verify import naming_full_disk
from dataset.contract.run import (
    INPUT_CONTRACT_NAME,
    InputContract,
    RunError,
    checkpoint_path,
    read_input_contract,
    run_model_mismatch,
    write_input_contract,
)

log = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"
README_NAME = "README.txt"
CHECKPOINTS = ("best", "last")
# what an export folder holds (the SavedModel, our three files, the lock): anything else is not ours
EXPORT_FILES = frozenset(
    {
        "saved_model.pb",
        "fingerprint.pb",
        "variables",
        "assets",
        INPUT_CONTRACT_NAME,
        README_NAME,
        EXPORT_RECORD,
        LOCK_NAME,
    }
)
# the folders a SavedModel always has, even empty (Keras writes no assets for a U-Net)
SAVED_MODEL_FOLDERS = frozenset({"variables", "assets"})
SIGNATURE = "serving_default"
INPUT_KEY = "image"  # the U-Net's input layer name (training.model.build_unet)
OUTPUT_KEY = "output_0"  # Keras' name for a single-output model's result


class ExportError(PancreasError, ValueError):
    """An export that cannot be written where asked; the message names the folder."""


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_run`` wrote."""

    out: Path
    run_dir: Path
    checkpoint: str
    model_path: Path
    input_shape: tuple[int | None, ...]  # the signature's input; None: dynamic
    spatial_multiple: int  # each spatial edge must be a multiple of this (2**depth)
    replaced: bool  # an earlier export was replaced


# ----------------------------------------------------------------------------- the output folder
def holds_export(out: Path) -> bool:
    """Whether ``out`` may receive an export: missing, empty (but for our lock) or an earlier export.

    Returns True for an earlier export whose every file is one its record lists, unchanged (so
    replacing the folder deletes nothing of anyone else's); raises ``ExportError`` for anything else.
    """
    if out.is_symlink():
        raise ExportError(f"{out}: is a symbolic link; give the real folder as --out")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; choose another --out")
    if (out / EXPORT_RECORD).is_file():
        try:
            record = read_json(out / EXPORT_RECORD, "export record")
        except ValueError:
            record = None
        foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES and TMP_SUFFIX not in p.name)
        if (
            not isinstance(record, dict)
            or not {"signature", "checkpoint", "model_fingerprint"} <= set(record)
            or foreign
        ):
            what = f"also holds {', '.join(foreign)}" if foreign else f"its {EXPORT_RECORD} is not ours"
            raise ExportError(
                f"{out}: {what}; an export replaces only an earlier `pancreas export` folder, choose another --out"
            )
        _refuse_files_not_written(out, record.get("files"))
        return True
    if any(p.name != LOCK_NAME for p in out.iterdir()):
        raise ExportError(
            f"{out}: exists, is not empty and is not an earlier `pancreas export` "
            f"(no {EXPORT_RECORD}); choose another --out"
        )
    return False


def _written_files(folder: Path) -> dict[str, dict[str, Any]]:
    """The export's record of its files: relative path (``/``-separated) -> size and SHA-256 of its bytes;
    all but the record itself (and the lock, which is not in the temporary folder)."""
    files: dict[str, dict[str, Any]] = {}
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel in (EXPORT_RECORD, LOCK_NAME):
                continue
            files[rel] = {"size": path.stat().st_size, "sha256": content_sha256(path)}
    return files


def _refuse_files_not_written(out: Path, listed: Any) -> None:
    """Raise ``ExportError`` naming the first file or folder in the earlier export ``out`` that its
    record does not list, or whose bytes changed: replacing the folder would delete it.

    ``listed`` is the record's ``files``; a record without it is not ours (every export lists them).
    """
    if not (
        isinstance(listed, dict)
        and all(isinstance(v, dict) and isinstance(v.get("size"), int) and "sha256" in v for v in listed.values())
    ):
        raise ExportError(
            f"{out}: its {EXPORT_RECORD} lists its files wrongly; an export replaces only an earlier "
            "`pancreas export` folder, choose another --out"
        )
    ours = set(listed)
    folders = set(SAVED_MODEL_FOLDERS) | {p for rel in ours for p in map(str, Path(rel).parents) if p != "."}

    def refuse(rel: str, why: str) -> None:
        raise ExportError(
            f"{out}: {rel} {why}; an export replaces only the files it wrote, "
            f"move {rel} out of {out} or choose another --out"
        )

    for root, dirs, names in os.walk(out):
        here = Path(root)
        top = here == out
        dirs.sort()
        for name in sorted(dirs):
            rel = (here / name).relative_to(out).as_posix()
            if top and TMP_SUFFIX in name:
                dirs.remove(name)  # a killed write's temporary (top level only, as before)
            elif (here / name).is_symlink():
                refuse(rel, "is a symbolic link that export did not write")
            elif rel not in folders:
                refuse(rel, "is a folder that export did not write")
        for name in sorted(names):
            path = here / name
            rel = path.relative_to(out).as_posix()
            if top and (name in (EXPORT_RECORD, LOCK_NAME) or TMP_SUFFIX in name):
                continue
            if path.is_symlink():
                refuse(rel, "is a symbolic link that export did not write")
            entry = listed.get(rel)
            if entry is None:
                refuse(rel, "is not a file that export wrote")
            elif path.stat().st_size != entry["size"] or content_sha256(path) != entry["sha256"]:
                refuse(rel, "was changed since export wrote it")


def _temporaries(out: Path) -> list[Path]:
    """Folders an earlier, killed export of ``out`` left next to it: exactly the names ``_temp_dir``
    makes (8 random characters), so another export's (``out.v2``) are never taken for ours."""
    name = re.compile(rf"^\.{re.escape(out.name)}\.export-[a-z0-9_]{{8}}{re.escape(TMP_SUFFIX)}$")
    return [p for p in out.parent.iterdir() if name.match(p.name) and p.is_dir() and not p.is_symlink()]


def _temp_dir(out: Path) -> Path:
    """An empty folder next to ``out``, with ordinary permissions (mkdtemp makes 0700: a server could not read it)."""
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", suffix=TMP_SUFFIX, dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    return folder


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(root)


def _swap_in(new: Path, out: Path) -> None:
    """Rename ``new`` onto ``out`` (which holds our lock file and maybe an earlier export)."""
    try:  # the lock we hold moves with the folder: a second export sees it locked throughout
        os.link(out / LOCK_NAME, new / LOCK_NAME)
    except OSError as err:  # a filesystem without hard links: the next run makes a new lock file
        log.debug("%s: cannot link the lock file into the new export (%s)", out, err)
    aside = _temp_dir(out)
    os.replace(out, aside)  # onto an empty folder: allowed by rename(2)
    os.replace(new, out)
    fsync_path(out.parent)
    shutil.rmtree(aside, ignore_errors=True)


# ----------------------------------------------------------------------------- the files
def readme_text(contract: InputContract, summary: ExportSummary) -> str:
    """README.txt: how to call the SavedModel, with this export's sizes."""
    m = summary.spatial_multiple
    shape = ", ".join("None" if d is None else str(d) for d in summary.input_shape)
    window = ", ".join(str(v) for v in contract.default_window_zyx)
    return f"""\
3D U-Net for pancreas (1) and tumour (2) segmentation in CT, exported by `pancreas export`
from {summary.run_dir} (checkpoints/{summary.checkpoint}.keras).

Signature {SIGNATURE!r} (and the function `serve`):
  input  {INPUT_KEY!r}: float32, shape ({shape}) = (batch, z, y, x, 1)
         each spatial edge a multiple of {m} (2**depth); the training window was ({window})
  output {OUTPUT_KEY!r}: float32, shape (batch, z, y, x, 3): probabilities of background, pancreas, tumour

Python:
  import numpy as np, tensorflow as tf
  model = tf.saved_model.load("{summary.out}")
  window = np.zeros((1, {window}, 1), np.float32)          # preprocessed, see below
  probabilities = model.serve(window).numpy()            # or:
  probabilities = model.signatures["{SIGNATURE}"]({INPUT_KEY}=tf.constant(window))["{OUTPUT_KEY}"]

TensorFlow Serving: copy this folder to MODEL_BASE/1/ and POST
  {{"instances": [<z x y x x x 1 nested list>]}} to /v1/models/<name>:predict

The input must be preprocessed exactly as in training: {INPUT_CONTRACT_NAME} (beside this file)
records the preprocessing config ("preprocess": spacing, HU window, equalisation, crop) and
the input scaling ({contract.input or "stored uint8 level / 255"}). The SavedModel is the
network only: a whole scan needs the sliding window, the argmax and the mapping back to the
scan's grid that `pancreas predict --model RUN_DIR` does.
"""


def _export_record(summary: ExportSummary, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    return {
        "run_dir": str(summary.run_dir.resolve()),
        "checkpoint": summary.checkpoint,
        "model_fingerprint": fingerprint_file(summary.model_path),
        "signature": {
            "name": SIGNATURE,
            "input": INPUT_KEY,
            "output": OUTPUT_KEY,
            "input_shape": list(summary.input_shape),
            "spatial_multiple": summary.spatial_multiple,
        },
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "files": files,  # what a later export may replace (holds_export)
    }


def _load_checked(model_path: Path, run_dir: Path) -> tuple[Any, int]:
    """The checkpoint's model and its depth, refused in one line when it is not readable or not this run's."""
    model = load_keras_model(model_path, ExportError)
    found = unet_architecture(model)
    mismatch = run_model_mismatch(found, run_dir)
    if found is None or mismatch:
        raise ExportError(f"{model_path}: {mismatch}")
    return model, found["model.depth"]


def _write_export(folder: Path, contract: InputContract, summary: ExportSummary, model: Any) -> ExportSummary:
    """The SavedModel and its three files into ``folder`` (empty); the signature's input shape."""
    import tensorflow as tf

    shape = (None, *model.inputs[0].shape[1:])  # batch always dynamic; spatial as the model allows
    model.export(
        str(folder),
        format="tf_saved_model",
        verbose=False,
        input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_KEY)],
    )
    summary = dataclasses.replace(summary, input_shape=tuple(shape))
    write_input_contract(folder, contract)
    (folder / README_NAME).write_text(readme_text(contract, summary))
    files = _written_files(folder)
    write_json_atomic(folder / EXPORT_RECORD, _export_record(summary, files), point="export-record")
    return summary


def _write_export_naming_full_disk(
    folder: Path, contract: InputContract, summary: ExportSummary, model: Any
) -> ExportSummary:
    """``_write_export``; a full disk is one line naming the export (TensorFlow's SaveV2 raises
    ``ResourceExhaustedError``, with a traceback, naming only its own temporary file)."""
    with naming_full_disk(summary.out):
        return _write_export(folder, contract, summary, model)


def export_run(run_dir: str | Path, out: str | Path, checkpoint: str = "best") -> ExportSummary:
    """Export RUN_DIR's ``checkpoint`` model into ``out`` as a SavedModel (see the module docstring)."""
    run_dir, out = Path(run_dir), Path(os.path.abspath(out))  # "--out ." names the folder, not "."
    if checkpoint not in CHECKPOINTS:
        raise ExportError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    contract = read_input_contract(run_dir)
    model_path = checkpoint_path(run_dir, checkpoint)
    if not model_path.is_file():
        raise RunError(f"{run_dir}: no checkpoint {model_path.name} in checkpoints/ (no epoch completed yet?)")
    refuse_inside(out, [("model's run folder", run_dir)], "--out")
    holds_export(out)  # refuse before writing anything, not even the lock file
    with shared_lock(run_dir), exclusive_lock(out):  # the run: no training may replace the checkpoint meanwhile
        model, depth = _load_checked(model_path, run_dir)
        replaced = holds_export(out)
        for stale in _temporaries(out):
            log.info("%s: removing %s, left by an export that was killed", out, stale.name)
            shutil.rmtree(stale, ignore_errors=True)
        summary = ExportSummary(out, run_dir, checkpoint, model_path, (), 2**depth, replaced)
        folder = _temp_dir(out)
        try:
            summary = _write_export_naming_full_disk(folder, contract, summary, model)
            _fsync_tree(folder)
            holds_export(out)  # again: a file added to the earlier export while this one was written
            _swap_in(folder, out)
        finally:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    log.info("%s: exported %s (%s)", out, model_path, "replacing the earlier export" if replaced else "new")
    return summary


__all__ = [
    "CHECKPOINTS",
    "EXPORT_RECORD",
    "README_NAME",
    "ExportError",
    "ExportSummary",
    "export_run",
    "holds_export",
    "readme_text",
]
