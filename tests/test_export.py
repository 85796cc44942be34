"""``pancreas export``: the SavedModel gives the ``.keras`` model's probabilities, beside the
run's contract; written atomically into a folder that is new, empty or an earlier export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset.common.atomic import TMP_SUFFIX
from dataset.common.locks import LOCK_NAME
from dataset.common.records import record_to_dict
from dataset.contract.run import InputContract, checkpoint_path, write_input_contract

ROOT = Path(__file__).resolve().parent.parent
DEPTH = 2
CONTRACT = InputContract(
    patch_size_zyx=(8, 16, 16),
    val_patch_size_zyx=(8, 16, 16),
    n_classes=3,
    label_names=["background", "pancreas", "tumour"],
    model_depth=DEPTH,
    input="(N, z, y, x, 1) float32 in [0, 1] = stored uint8 level / 255",
    output="(N, z, y, x, 3) float32 softmax",
    preprocess={"window_hu": [-135.0, 250.0]},
)


def _random_model(seed: int):
    """A tiny U-Net whose every weight (batch-norm statistics included) is random, not its initial value."""

    from training.model import build_unet

    model = build_unet(DEPTH, 2)
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
            if "variance" in w.path
            else rng.normal(0, 0.5, w.shape).astype(np.float32)
            for w in model.weights
        ]
    )
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as far as export reads it: the contract and both checkpoints (different weights)."""
    from training.checkpoints import save_model_atomic

    run = tmp_path_factory.mktemp("run")
    write_input_contract(run, CONTRACT)
    for seed, kind in enumerate(("best", "last")):
        save_model_atomic(_random_model(seed), checkpoint_path(run, kind))
    return run


def _keras_probabilities(path: Path, window: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(keras.saving.load_model(path, compile=False).predict_on_batch(window))


@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_the_saved_model_gives_the_keras_models_probabilities(run_dir, tmp_path, checkpoint):
    import tensorflow as tf

    from training.export import export_run

    out = tmp_path / "serving"
    summary = export_run(run_dir, out, checkpoint)
    assert summary.input_shape == (None, None, None, None, 1) and summary.spatial_multiple == 4
    loaded = tf.saved_model.load(str(out))
    rng = np.random.default_rng(7)
    for shape in [(2, 8, 12, 16, 1), (1, 4, 4, 8, 1)]:  # dynamic batch and spatial edges (multiples of 4)
        window = rng.random(shape, dtype=np.float32)
        expected = _keras_probabilities(checkpoint_path(run_dir, checkpoint), window)
        served = loaded.signatures["serving_default"](image=tf.constant(window))["output_0"].numpy()
        assert served.shape == (*shape[:4], 3) and served.dtype == np.float32
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loaded.serve(window).numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(served.sum(axis=-1), 1.0, rtol=1e-5)
    other = "last" if checkpoint == "best" else "best"  # the file asked for, not the other one
    assert not np.allclose(served, _keras_probabilities(checkpoint_path(run_dir, other), window), atol=1e-3)

    assert json.loads((out / "input_contract.json").read_text(encoding="utf-8")) == record_to_dict(CONTRACT)
    readme = (out / "README.txt").read_text(encoding="utf-8")
    assert "serving_default" in readme and "multiple of 4" in readme and "input_contract.json" in readme
    record = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert record["checkpoint"] == checkpoint and record["signature"]["input_shape"] == [None, None, None, None, 1]
    assert not [p for p in tmp_path.iterdir() if TMP_SUFFIX in p.name]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_earlier_export_is_replaced_and_another_folder_refused_untouched(run_dir, tmp_path):
    import tensorflow as tf

    from training.export import ExportError, export_run

    out = tmp_path / "serving"
    assert not export_run(run_dir, out, "last").replaced
    (tmp_path / f".serving.export-abcd_123{TMP_SUFFIX}").mkdir()  # what a killed export leaves
    (tmp_path / f".serving.v2.export-abcd_123{TMP_SUFFIX}").mkdir()  # another export's, maybe in flight
    summary = export_run(run_dir, out, "best")
    assert summary.replaced and json.loads((out / "export.json").read_text(encoding="utf-8"))["checkpoint"] == "best"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".serving.v2.export-abcd_123{TMP_SUFFIX}", "serving"]
    window = np.random.default_rng(3).random((1, 4, 8, 8, 1), dtype=np.float32)
    loaded = tf.saved_model.load(str(out))  # kept: its functions need the object alive
    np.testing.assert_allclose(
        loaded.serve(window).numpy(),
        _keras_probabilities(checkpoint_path(run_dir, "best"), window),
        rtol=1e-5,
        atol=1e-6,
    )

    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match=r"notes: exists, is not empty and is not an earlier `pancreas export`"):
        export_run(run_dir, other)
    assert sorted(p.name for p in other.iterdir()) == ["mine.txt"]  # not even a lock file
    with pytest.raises(Exception, match="no checkpoint"):
        export_run(tmp_path / "serving", tmp_path / "x")  # an export is not a run (no checkpoints)


HOLD = (
    "import sys; from dataset.common.locks import exclusive_lock\n"
    "with exclusive_lock(sys.argv[1]):\n    print('ready', flush=True); sys.stdin.read()\n"
)


def test_cli_exports_and_a_locked_folder_fails_at_once(run_dir, tmp_path, capsys):
    from pancreas.cli import main

    out = tmp_path / "serving"
    assert main(["export", "--model", str(run_dir), "--out", str(out), "--checkpoint", "last"]) == 0
    assert "pancreas export:" in capsys.readouterr().out and (out / "saved_model.pb").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            LOCK_NAME,
            "README.txt",
            "assets",
            "export.json",
            "fingerprint.pb",
            "input_contract.json",
            "saved_model.pb",
            "variables",
        ]
    )

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert main(["export", "--model", str(run_dir), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by pid {holder.pid}" in err[0], err
        assert json.loads((out / "export.json").read_text(encoding="utf-8"))["checkpoint"] == "last"  # untouched
    finally:
        holder.stdin.close()
        holder.wait(60)


def test_a_folder_with_an_export_json_of_its_own_or_extra_files_is_not_replaced(tmp_path):
    from training.export import EXPORT_RECORD, ExportError, holds_export

    other = tmp_path / "other_tool"
    other.mkdir()
    (other / EXPORT_RECORD).write_text('{"made_by": "another tool"}')
    with pytest.raises(ExportError, match="is not ours"):
        holds_export(other)
    mine = tmp_path / "served"
    mine.mkdir()
    (mine / EXPORT_RECORD).write_text('{"signature": {}, "checkpoint": "best", "model_fingerprint": "x", "files": {}}')
    assert holds_export(mine)
    (mine / "1").mkdir()  # e.g. a TF-Serving version folder a user added beside it
    with pytest.raises(ExportError, match="also holds 1"):
        holds_export(mine)
