"""Benchmark of ``precision`` in ``pancreas predict``: float32 against bfloat16 on one full-size case.

One synthetic case (``sources.synthetic.msd.make_dataset(size="full")``) predicted through the real path
(``predict_cases``, no mirroring) by one model in each precision, loaded and traced once before timing.
Prints seconds per window of each, the speed-up (> 1: bfloat16 is faster), the voxels whose label
differs, and the Dice between the two label maps per region (pancreas = labels 1 + 2, tumour = 2).
The model: a trained run given with ``--model RUN_DIR``, else an untrained default U-Net, whose label
maps mean nothing (the Dice then only says how often rounding flips a near-tie). Prints figures,
asserts nothing; the recorded ones: docs/benchmarks.md.

    .venv/bin/python bench/predict_precision.py                   # untrained default U-Net (minutes on a CPU)
    .venv/bin/python bench/predict_precision.py --model RUN_DIR   # a trained run: a meaningful Dice
    .venv/bin/python bench/predict_precision.py --size small --window 32 64 64   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.predict import DEFAULT_WINDOW_ZYX, make_run
from dataset.common.regions import REGIONS
from evaluation.metrics import dice, region_mask
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from sources.synthetic.msd import make_dataset

PRECISIONS = ("float32", "bfloat16")


def warmed_up(run_dir: Path, window_zyx: tuple[int, ...], batch_size: int, precision: str):
    """The run's model in ``precision``, called once so its graph is traced before timing."""
    from prediction.runs import load_predict_fn

    predict_fn = load_predict_fn(run_dir, precision=precision)
    predict_fn(np.zeros((batch_size, *window_zyx, 1), np.float32))
    return predict_fn


def label_map(path: str) -> np.ndarray:
    from preprocess.io import read_label
    from preprocess.output import image_array

    return image_array(read_label(path))


def precision_rows(run_dir: Path, data: Path, out: Path, window_zyx: tuple[int, ...], batch_size: int) -> dict:
    """Per precision: seconds per window, windows, the label map; then the differing voxels and Dice per region."""
    rows: dict = {}
    for precision in PRECISIONS:
        model = warmed_up(run_dir, window_zyx, batch_size, precision)
        config = PredictConfig(batch_size=batch_size, mirror_axes=(), precision=precision)
        summary = predict_cases(run_dir, data, out / precision, config, predict_fn=model, progress=False)
        if summary.failed:
            raise RuntimeError(summary.table())
        result = summary.results[0]
        rows[precision] = {
            "seconds_per_window": result.seconds["model"] / result.n_windows,
            "windows": result.n_windows,
            "labels": label_map(str(result.output)),
        }
    a, b = rows["float32"]["labels"], rows["bfloat16"]["labels"]
    rows["speed_up"] = rows["float32"]["seconds_per_window"] / rows["bfloat16"]["seconds_per_window"]
    rows["differing_voxels"] = int(np.count_nonzero(a != b))
    rows["voxels"] = int(a.size)
    rows["dice"] = {name: dice(region_mask(b, labels), region_mask(a, labels)) for name, labels in REGIONS.items()}
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, metavar="RUN_DIR", help="a trained run (default: untrained)"
    )
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--window", type=int, nargs=3, default=list(DEFAULT_WINDOW_ZYX), metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=PredictConfig().batch_size)
    return parser.parse_args()


def main() -> int:
    from training.config import ModelConfig

    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    window = tuple(args.window)
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as folder:
        tmp = Path(folder)
        data = make_dataset(tmp / "data", 1, seed=0, size=args.size, n_test=0, progress=False) / "imagesTr"
        run = args.model
        if run is None:
            run = tmp / "run"
            make_run(run, ModelConfig().depth, ModelConfig().base_filters, window, seed=0)
            contract = json.loads((run / "input_contract.json").read_text(encoding="utf-8"))
            contract["version"] = 1  # bench.predict.make_run writes none, which predict now refuses
            (run / "input_contract.json").write_text(json.dumps(contract), encoding="utf-8")
        rows = precision_rows(run, data, tmp / "out", window, args.batch_size)
    which = f"trained run {args.model}" if args.model else "an UNTRAINED default U-Net (the Dice means little)"
    print(f"one {args.size} synthetic case, {which}, window {window}, batch {args.batch_size}, no mirroring")
    for precision in PRECISIONS:
        row = rows[precision]
        print(f"{precision:<9} {row['seconds_per_window']:.3f} s per window ({row['windows']} windows)")
    print(f"bfloat16 speed-up: {rows['speed_up']:.2f}x (< 1: slower)")
    print(f"voxels whose label differs: {rows['differing_voxels']} of {rows['voxels']}")
    for name, value in rows["dice"].items():
        shown = "both empty" if value is None else f"{value:.4f}"
        print(f"Dice float32 vs bfloat16, {name}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
