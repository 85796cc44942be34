"""Benchmark of the training input pipeline (``training.pipeline``) and whether it limits fit.

Writes a synthetic store (N cases of about 128x256x256 uint8 levels, Blosc-LZ4 32^3
chunks via ``dataset.contract.store.write_shard``) with a training manifest, then prints

* augmented training patches per second of the pipeline alone (goal >= 60 on 2 cores),
* for each model (the default U-Net and a small one): median ``model.fit`` step time
  fed by the pipeline vs. fed the same batches held in memory (goal: ratio <= 1.05),
* with ``--augment-table``: milliseconds per patch of each online transform applied to every
  patch (probability 1), and the pipeline's rate with nnU-Net's probabilities
  (``configs/train_nnunet_like.yaml``) and with every transform on every patch.

    .venv/bin/python bench/pipeline.py                      # the real figures (quiet machine)
    .venv/bin/python bench/pipeline.py --shape 32 64 64 --patch 16 32 32 --batches 5 --fit-steps 3
    .venv/bin/python bench/pipeline.py --augment-table --models ""     # the transforms' costs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from pancreas.testing.runs import make_synthetic_store
from training.callbacks import StepTimer
from training.config import ModelConfig, TrainConfig
from training.pipeline import input_thread_count, load_rows, measure_patches_per_second, training_dataset
from training.run import build_compiled_model

MODELS = {"default": ModelConfig(depth=4, base_filters=16), "small": ModelConfig(depth=3, base_filters=4)}


def fit_step_time(config: TrainConfig, dataset: tf.data.Dataset, steps: int) -> float:
    """Median seconds per step of ``model.fit`` over ``steps`` steps (first one excluded)."""
    tf.keras.utils.set_random_seed(0)
    model = build_compiled_model(config)
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps + 1, callbacks=[timer], verbose=0, shuffle=False)
    return timer.median()


def in_memory(dataset: tf.data.Dataset, batches: int) -> tf.data.Dataset:
    """The first ``batches`` batches of ``dataset``, held in memory and cycled."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset.take(batches)])
    return tf.data.Dataset.from_tensor_slices((np.stack(xs), np.stack(ys))).repeat().prefetch(2)


TRANSFORMS = ("rotation", "scale", "gamma", "blur", "lowres")


def augment_table(store: Path, rows: list, base: TrainConfig, batches: int) -> None:
    """Print each transform's cost per patch (on every patch) and the pipeline's rate under presets."""
    from training.config import AugmentConfig, load_train_config

    def rate(augment: AugmentConfig) -> float:
        config = dataclasses.replace(base, augment=augment, input_threads=1)
        return measure_patches_per_second(training_dataset(store, rows, config), batches)["patches_per_s"]

    plain = rate(AugmentConfig())
    print(f"1 input thread, default augmentation (flips, noise, offset): {plain:.1f} patches/s")
    every = {f"{name}_probability": 1.0 for name in TRANSFORMS}
    for name in TRANSFORMS:
        r = rate(AugmentConfig(**{f"{name}_probability": 1.0}))
        print(f"  + {name:8s} on every patch: {r:6.1f} patches/s, {1000 / r - 1000 / plain:+6.1f} ms per patch")
    preset = load_train_config(Path(__file__).resolve().parents[1] / "configs" / "train_nnunet_like.yaml").augment
    print(f"nnU-Net-like probabilities (configs/train_nnunet_like.yaml): {rate(preset):.1f} patches/s (goal >= 60)")
    print(f"every transform on every patch: {rate(AugmentConfig(**every)):.1f} patches/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(128, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--patch", type=int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument("--patches-per-case", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--batches", type=int, default=50, help="batches timed for the pipeline alone")
    p.add_argument("--fit-steps", type=int, default=10, help="fit steps timed per model and input")
    p.add_argument("--models", default="default,small", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--input-threads", type=int, default=0, help="tf.data pool (0: half the cores)")
    p.add_argument("--store", type=Path, help="keep the synthetic store here (default: a temp folder)")
    p.add_argument("--augment-table", action="store_true", help="also time each online transform")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "store"
        t0 = time.perf_counter()
        make_synthetic_store(
            store,
            n_cases=args.cases + 1,
            shape_zyx=tuple(args.shape),
            train_patch_zyx=tuple(args.patch),
            val_patch_zyx=tuple(args.patch),
            patches_per_case=args.patches_per_case,
        )
        rows = load_rows(store, "train")
        print(
            f"store: {args.cases} training cases of {tuple(args.shape)}, {len(rows)} rows of "
            f"{tuple(args.patch)} ({time.perf_counter() - t0:.1f} s to write); "
            f"{os.cpu_count()} CPUs visible"
        )

        config = TrainConfig(batch_size=args.batch_size, input_threads=args.input_threads)
        threads = input_thread_count(config.input_threads)
        rate = measure_patches_per_second(training_dataset(store, rows, config), args.batches)
        print(
            f"pipeline alone ({threads} input thread(s)): {rate['patches_per_s']:.1f} augmented patches/s "
            f"({rate['patches']} patches in {rate['seconds']:.2f} s; goal >= 60)"
        )

        if args.augment_table:
            augment_table(store, rows, config, args.batches)

        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            model_config = dataclasses.replace(config, model=MODELS[name])
            pipeline = training_dataset(store, rows, model_config)
            memory = in_memory(pipeline, min(args.fit_steps + 1, 8))
            t_mem = fit_step_time(model_config, memory, args.fit_steps)
            t_pipe = fit_step_time(model_config, pipeline, args.fit_steps)
            print(
                f"fit, {name} model (depth {MODELS[name].depth}, {MODELS[name].base_filters} filters), "
                f"batch {args.batch_size} of {tuple(args.patch)}: pipeline {t_pipe:.3f} s/step, "
                f"in memory {t_mem:.3f} s/step, ratio {t_pipe / t_mem:.2f} (goal <= 1.05)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
