"""Benchmark of ``pancreas predict``: seconds per full-size case, split by stage, and memory.

Writes N synthetic full-size cases (512x512x~100 at 0.7-0.9 mm x 2-3 mm, every
orientation/dtype the generator makes), saves an untrained U-Net of the default shape
(``training.model.build_unet`` with ``training.config.ModelConfig()`` defaults) as a run
checkpoint, predicts the cases through the real path (``predict_cases``: read, the run's
preprocessing, Keras windows, stitching, restore, write) and prints per case:

* preprocess s (read + resample + crop + equalise), model s (inside the model calls),
  stitch s (window extraction, Gaussian accumulation), export s (argmax, post-processing,
  restore to the scan grid, NIfTI write);
* the share of everything outside the model windows (goal < 15 %);
* peak resident memory of the process and the stitching buffers' size.

    .venv/bin/python bench/predict.py                     # the real figures (slow on a CPU)
    .venv/bin/python bench/predict.py --size small --depth 2 --base-filters 4 --window 32 64 64
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.common.configio import to_dict  # noqa: E402
from inference.config import PredictConfig  # noqa: E402
from inference.predict import predict_cases  # noqa: E402
from preprocess.config import PreprocessConfig  # noqa: E402
from pancreas.synthetic.msd import make_dataset  # noqa: E402

DEFAULT_WINDOW_ZYX = (64, 256, 256)  # IndexConfig().val_patch_xyz reversed


def make_run(run_dir: Path, depth: int, base_filters: int, window_zyx: tuple[int, int, int]) -> None:
    import keras

    from training.model import build_unet

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    build_unet(depth=depth, base_filters=base_filters).save(run_dir / "checkpoints" / "best.keras")
    contract = {"patch_size_zyx": list(window_zyx), "val_patch_size_zyx": list(window_zyx), "n_classes": 3,
                "model_depth": depth, "preprocess": to_dict(PreprocessConfig()),
                "store_fingerprint": "bench", "index_fingerprint": "bench"}
    (run_dir / "input_contract.json").write_text(json.dumps(contract))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main() -> int:
    from training.config import ModelConfig

    defaults = ModelConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1)
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--base-filters", type=int, default=defaults.base_filters)
    parser.add_argument("--window", type=int, nargs=3, default=DEFAULT_WINDOW_ZYX, metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=PredictConfig().batch_size)
    parser.add_argument("--mirror", type=int, nargs="*", default=[], help="mirror axes (0 z, 1 y, 2 x)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        data = make_dataset(tmp / "data", args.cases, seed=0, size=args.size, n_test=0, progress=False)
        print(f"synthetic {args.size} cases: {time.perf_counter() - t:.1f} s")
        window = tuple(args.window)
        make_run(tmp / "run", args.depth, args.base_filters, window)
        rss_before = peak_rss_mib()
        config = PredictConfig(batch_size=args.batch_size, mirror_axes=tuple(args.mirror))
        summary = predict_cases(tmp / "run", data / "imagesTr", tmp / "out", config, progress=False)
        print(summary.table())
        if summary.failed:
            return 1

    print(f"\nmodel: depth {args.depth}, base filters {args.base_filters}, window {window}, "
          f"batch {args.batch_size}, mirror {tuple(args.mirror)}")
    totals = {k: 0.0 for k in ("preprocess", "model", "stitch", "export")}
    for r in summary.results:
        for k in totals:
            totals[k] += r.seconds.get(k, 0.0)
    total = sum(totals.values())
    n = len(summary.results)
    print(f"{'stage':<12}{'s/case':>10}{'share':>9}")
    for k, v in totals.items():
        print(f"{k:<12}{v / n:>10.2f}{v / total:>9.1%}")
    outside = 1 - totals["model"] / total
    print(f"{'total':<12}{total / n:>10.2f}   outside the model windows: {outside:.1%} (goal < 15%)")
    largest = max(r.shape_zyx[0] * r.shape_zyx[1] * r.shape_zyx[2] for r in summary.results)
    print(f"stitching buffers of the largest case: {(3 + 1) * 4 * largest / 2**20:.0f} MiB "
          f"((C + 1) float32 x {largest / 1e6:.1f} M stored voxels)")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (after loading TensorFlow + model: {rss_before:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
