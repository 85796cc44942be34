"""Benchmark of the accelerator-bound work on whichever Keras backend is installed (``KERAS_BACKEND``:
tensorflow or jax): training steps per second of the default U-Net and sliding-window inference voxels
per second, each in float32 and bfloat16.

Training: ``training.model.build_unet`` with ``training.config.ModelConfig()``'s shape, compiled with the
project's loss (``TrainConfig().loss``), optimizer (``training.optimizer.make_optimizer``) and Dice
metrics, one ``train_on_batch`` per step on synthetic batches of 128x128x64 patches (z=64), batch 2 and 8;
bfloat16 is Keras' ``mixed_bfloat16`` policy, as ``precision: mixed_bfloat16`` trains. Inference: one
64x256x256 window per call, batch 1 and 2; bfloat16 is ``prediction.precision.bfloat16_model``, what
``pancreas predict --set precision=bfloat16`` runs. Each figure follows warm-up calls (tracing, XLA).

Neither this script nor what it imports imports TensorFlow, so it runs where only JAX is installed.
Prints figures, asserts nothing; the recorded ones: docs/benchmarks.md.

    KERAS_BACKEND=jax python bench/gpu.py          # on a GPU machine
    python bench/gpu.py --steps 2 --size small     # a smoke test (about a minute on a CPU)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# size -> training patch (z, y, x), batches, inference window, window batches
SIZES = {
    "full": {"patch": (64, 128, 128), "batches": (2, 8), "window": (64, 256, 256), "window_batches": (1, 2)},
    "small": {"patch": (16, 32, 32), "batches": (2,), "window": (16, 64, 64), "window_batches": (1,)},
}
POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerators(backend: str) -> str:
    """The backend's GPUs (names), or "none"."""
    if backend == "jax":
        import jax

        gpus = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = [
            str(tf.config.experimental.get_device_details(d).get("device_name", d.name))
            for d in tf.config.list_physical_devices("GPU")
        ]
    else:
        gpus = []
    return ", ".join(gpus) or "none"


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header() -> str:
    import keras

    backend = keras.backend.backend()
    versions = {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"]}.get(backend, [backend])
    return "\n".join(
        [
            f"date: {datetime.date.today().isoformat()}",
            f"machine: {cpu_model()}; GPUs: {accelerators(backend)}",
            f"backend: {backend} ({', '.join(f'{d} {version(d)}' for d in versions)}), keras {keras.__version__}, "
            f"python {platform.python_version()}",
        ]
    )


def synthetic_batch(batch: int, patch: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1] and uint8 labels, 90% background (what the pipeline feeds)."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch, *patch, 1), dtype=np.float32)
    labels = rng.choice(np.array([0, 1, 2], np.uint8), size=(batch, *patch), p=[0.9, 0.08, 0.02])
    return images, labels


def default_unet():
    from training.config import ModelConfig
    from training.model import unet_of

    return unet_of(ModelConfig())


def timed(call, warmup: int, repeats: int) -> float:
    """Seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    t = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - t) / repeats


def training_row(policy: str, batch: int, patch: tuple[int, ...], steps: int, warmup: int) -> dict:
    import keras

    from training.config import TrainConfig
    from training.losses import make_loss
    from training.metrics import dice_metrics
    from training.optimizer import make_optimizer, precision_policy

    config = TrainConfig()
    with precision_policy(policy):
        keras.utils.set_random_seed(0)
        model = default_unet()
        model.compile(optimizer=make_optimizer(config), loss=make_loss(config.loss), metrics=dice_metrics())
        images, labels = synthetic_batch(batch, patch)
        seconds = timed(lambda: model.train_on_batch(images, labels), warmup, steps)
    return {"seconds": seconds, "jit": getattr(model, "jit_compile", "?")}


def inference_row(precision: str, batch: int, window: tuple[int, ...], repeats: int, warmup: int) -> float:
    import keras

    from prediction.precision import model_in_precision

    keras.utils.set_random_seed(0)
    model = model_in_precision(default_unet(), "bfloat16" if precision == "bf16" else "float32")
    images, _ = synthetic_batch(batch, window)
    return timed(lambda: np.asarray(model.predict_on_batch(images), np.float32), warmup, repeats)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full", help="full: the figures; small: a smoke test")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (and inference calls) per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (tracing, compilation)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="training batches (default: the size's)")
    parser.add_argument("--precisions", nargs="+", choices=tuple(POLICIES), default=list(POLICIES))
    parser.add_argument("--skip", choices=("train", "infer"), default=None, help="leave one part out")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    size = SIZES[args.size]
    print(header(), flush=True)
    patch, window = size["patch"], size["window"]
    if args.skip != "train":
        print(f"\ntraining: default U-Net, patches {'x'.join(map(str, patch[::-1]))} (x, y, z), synthetic batches")
        print(f"{'precision':<10}{'batch':>6}{'s/step':>9}{'steps/s':>9}{'patches/s':>11}  jit")
        for name in args.precisions:
            for batch in args.batches or size["batches"]:
                row = training_row(POLICIES[name], batch, patch, args.steps, args.warmup)
                s = row["seconds"]
                print(f"{name:<10}{batch:>6}{s:>9.3f}{1 / s:>9.2f}{batch / s:>11.2f}  {row['jit']}", flush=True)
    if args.skip != "infer":
        voxels = int(np.prod(window))
        print(f"\ninference: default U-Net, windows {'x'.join(map(str, window))} (z, y, x), predict_on_batch")
        print(f"{'precision':<10}{'batch':>6}{'s/call':>9}{'s/window':>10}{'Mvoxels/s':>11}")
        for name in args.precisions:
            for batch in size["window_batches"]:
                s = inference_row(name, batch, window, args.steps, args.warmup)
                print(f"{name:<10}{batch:>6}{s:>9.3f}{s / batch:>10.3f}{batch * voxels / s / 1e6:>11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
