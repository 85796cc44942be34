"""A checkpoint that is not its run's model is refused; readers and writers of a store or run exclude each other."""

from __future__ import annotations

import json

import pytest
from helpers import write_contract_run

from dataset.common.locks import LockedError, exclusive_lock, shared_lock
from dataset.common.modelfiles import unet_architecture
from dataset.contract.run import run_model_mismatch


def _run_with_model(tmp_path, name, run_depth, model_depth, filters=2, config_filters=None):
    from training.model import build_unet

    run = write_contract_run(tmp_path / name, window=(16, 32, 32), depth=run_depth)
    (run / "checkpoints").mkdir()
    build_unet(depth=model_depth, base_filters=filters).save(run / "checkpoints" / "best.keras")
    if config_filters is not None:
        (run / "config.json").write_text(json.dumps({"model": {"depth": run_depth, "base_filters": config_filters}}))
    return run


def test_architecture_is_read_from_the_model_itself():
    from training.model import build_unet

    found = unet_architecture(build_unet(depth=3, base_filters=4))
    assert found == {"model.depth": 3, "model.base_filters": 4, "n_classes": 3, "input channels": 1}


def test_predict_refuses_a_checkpoint_copied_in_from_a_deeper_run(tmp_path):
    from prediction.cases import PredictError
    from prediction.runs import load_predict_fn

    run = _run_with_model(tmp_path, "swap", run_depth=2, model_depth=3)
    with pytest.raises(PredictError, match=r"best\.keras: the model has model.depth 3 but the run's input_contract"):
        load_predict_fn(run)
    assert callable(load_predict_fn(_run_with_model(tmp_path, "same", run_depth=2, model_depth=2)))


def test_filters_are_checked_against_the_runs_config(tmp_path):
    import keras

    run = _run_with_model(tmp_path, "filters", run_depth=2, model_depth=2, filters=2, config_filters=4)
    model = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    assert "model.base_filters 2 but the run's config.json says 4" in run_model_mismatch(unet_architecture(model), run)


def test_export_refuses_a_swapped_checkpoint_and_writes_nothing(tmp_path):
    from training.export import ExportError, export_run

    run = _run_with_model(tmp_path, "swap", run_depth=2, model_depth=3)
    out = tmp_path / "serving"
    with pytest.raises(ExportError, match="model.depth 3 but the run's input_contract.json says 2"):
        export_run(run, out)
    assert not out.exists()  # not even the lock file or the folder


def test_readers_share_a_folder_and_a_writer_is_refused_while_one_reads(tmp_path):
    """The store's lock as training (a reader, in another process) and index (a writer) take it."""
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path / "store"
    folder.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time;"
            "from dataset.common.locks import shared_lock;"
            f"ctx = shared_lock({str(folder)!r}); ctx.__enter__(); print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with shared_lock(folder):  # a second reader: fine
            pass
        with pytest.raises(LockedError, match="in use by"), exclusive_lock(folder):  # a writer: refused at once
            pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(folder):  # the reader gone, the writer gets it
        pass


def test_predict_refused_for_a_swapped_checkpoint_leaves_no_folder(tmp_path):
    from pancreas.testing.fuzz import nifti_bytes
    from prediction.cases import PredictError
    from prediction.config import PredictConfig
    from prediction.predict import predict_cases

    run = _run_with_model(tmp_path, "swap", run_depth=2, model_depth=3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "case.nii.gz").write_bytes(nifti_bytes(".nii.gz"))
    out = tmp_path / "preds"
    with pytest.raises(PredictError, match="not this run's model"):
        predict_cases(run, inputs, out, PredictConfig(mirror_axes=()), progress=False)
    assert not out.exists()  # no predictions.json, no lock file, no folder
