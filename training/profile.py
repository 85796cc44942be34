"""Which side limits a run: the input pipeline alone, or the model alone on in-memory batches.

Neither mode writes anything (no RUN_DIR, so no lock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.callbacks import StepTimer
from training.config import TrainConfig, check_patch_size
from training.distribute import build_compiled_model
from training.model import N_CLASSES
from training.optimizer import precision_policy
from training.pipeline import measure_patches_per_second, training_dataset
from training.preflight import read_run_inputs


def profile_input(store: str | Path, config: TrainConfig, batches: int = 20, fold: int = 0) -> dict[str, Any]:
    """The training pipeline alone (no model) on fold ``fold``'s manifest: augmented patches per second."""
    inputs = read_run_inputs(store, config, fold)
    ds = training_dataset(inputs.store, inputs.train_rows, config)
    result: dict[str, Any] = measure_patches_per_second(ds, batches)
    result["patch_size_zyx"] = list(inputs.patch_size_zyx)
    return result


def synthetic_step_time(
    config: TrainConfig, patch_size_zyx: tuple[int, int, int], steps: int = 5, seed: int = 0
) -> dict[str, float]:
    """The model alone on one random batch held in memory: seconds per training step."""
    check_patch_size(patch_size_zyx, config.model.depth, "synthetic")
    with precision_policy(config.precision):
        keras.utils.set_random_seed(seed)
        model = build_compiled_model(config)
        rng = np.random.default_rng(seed)
        shape = (config.batch_size, *patch_size_zyx)
        x = rng.random((*shape, 1), dtype=np.float32)
        y = rng.integers(0, N_CLASSES, shape).astype(np.uint8)
        ds = tf.data.Dataset.from_tensors((x, y)).repeat()
        timer = StepTimer()
        model.fit(ds, epochs=1, steps_per_epoch=steps + 1, callbacks=[timer], verbose=0, shuffle=False)
    seconds = timer.median()
    return {"steps": steps, "seconds_per_step": seconds, "patches_per_s": config.batch_size / seconds}
