"""The real model path: a tiny untrained Keras U-Net saved as the run's checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from dataset.common.configio import to_dict
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from preprocess.config import PreprocessConfig
from sources.synthetic.msd import make_dataset


def test_importing_inference_does_not_import_tensorflow():
    code = (
        "import sys, prediction.predict, evaluation.evaluate, sources.download, pancreas.cli_predict;"
        "print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_predict_with_saved_keras_checkpoint(tmp_path: Path):
    import keras

    from training.model import build_unet

    data = make_dataset(tmp_path / "msd", 1, seed=0, n_test=1, progress=False)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    keras.utils.set_random_seed(0)
    build_unet(depth=2, base_filters=2).save(run / "checkpoints" / "best.keras")
    (run / "input_contract.json").write_text(
        json.dumps(
            {
                "version": 1,
                "patch_size_zyx": [32, 64, 64],
                "val_patch_size_zyx": [32, 64, 64],
                "n_classes": 3,
                "model_depth": 2,
                "preprocess": to_dict(PreprocessConfig()),
            }
        )
    )
    summary = predict_cases(run, data, tmp_path / "out", PredictConfig(batch_size=4), progress=False)
    assert not summary.failed and summary.n_done == 1, summary.table()
    from preprocess.io import read_image, read_label
    from preprocess.output import image_array

    written = read_label(summary.results[0].output)
    image, _ = read_image(data / "imagesTs" / Path(summary.results[0].source).name)
    assert written.GetSize() == image.GetSize() and written.GetDirection() == image.GetDirection()
    assert set(np.unique(image_array(written))) <= {0, 1, 2}
