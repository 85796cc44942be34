"""Benchmark of ``pancreas predict``: seconds per case by stage, without and with test-time
mirroring, for one model and for an ensemble of two; and memory.

Writes N synthetic cases (full size: 512x512x~100 at 0.7-0.9 mm x 2-3 mm, every
orientation/dtype the generator makes), saves untrained U-Nets (``training.model.build_unet``,
default shape ``training.config.ModelConfig()``; seeds 0 and 1) as run checkpoints whose
input contracts record the default training flips (``AugmentConfig().flip_axes``), then
predicts the same cases through the real path (``predict_cases``: read, the run's
preprocessing, Keras windows, stitching, restore, write; each model loaded and its graph
traced once, before timing) once per scenario:

* ``plain``: one model, ``--no-mirror``;
* ``mirror``: one model, mirrored along the run's axes (predict's default; 2 axes = 4 passes);
* ``ensemble``: two models, ``--no-mirror``;
* ``ensemble-mirror``: two models, each mirrored (``pancreas predict --model A B``'s default).

Per scenario it prints model passes per window, seconds per case for preprocess (read +
resample + crop + equalise), model (inside the model calls, flips included), stitch (window
extraction, Gaussian accumulation) and export (argmax, post-processing, restore to the
scan grid, NIfTI write), the total and its ratio to ``plain``; then the share of
everything outside the model windows for ``plain`` (goal < 15 %), the stitching buffers'
size and the peak resident memory of the process.

    .venv/bin/python bench/predict.py                     # the real figures (slow on a CPU)
    .venv/bin/python bench/predict.py --small             # = --size small --window 32 64 64 (about a minute)
    .venv/bin/python bench/predict.py --small --depth 2 --base-filters 4   # a smoke test
    .venv/bin/python bench/predict.py --scenarios plain mirror
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

from dataset.common.configio import to_dict
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from preprocess.config import PreprocessConfig
from sources.synthetic.msd import make_dataset

DEFAULT_WINDOW_ZYX = (64, 256, 256)  # IndexConfig().val_patch_xyz reversed
SMALL = {"size": "small", "window": [32, 64, 64]}  # the default network on a small case and window
# scenario -> (number of models, mirror axes: None = the runs' recorded flips, () = off)
SCENARIOS = {"plain": (1, ()), "mirror": (1, None), "ensemble": (2, ()), "ensemble-mirror": (2, None)}
STAGES = ("preprocess", "model", "stitch", "export")


def make_run(run_dir: Path, depth: int, base_filters: int, window_zyx: tuple[int, int, int], seed: int) -> None:
    """An untrained model as ``checkpoints/best.keras`` and the contract a real run would write."""
    import keras

    from training.config import AugmentConfig
    from training.model import build_unet

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    build_unet(depth=depth, base_filters=base_filters).save(run_dir / "checkpoints" / "best.keras")
    augment = AugmentConfig()
    contract = {
        "version": 1,  # the input contract's format (dataset.contract.run); a record without one is refused
        "patch_size_zyx": list(window_zyx),
        "val_patch_size_zyx": list(window_zyx),
        "n_classes": 3,
        "model_depth": depth,
        "preprocess": to_dict(PreprocessConfig()),
        "store_fingerprint": "bench",
        "index_fingerprint": "bench",
        "flip_augment": {"flip_axes": list(augment.flip_axes), "flip_probability": augment.flip_probability},
    }
    (run_dir / "input_contract.json").write_text(json.dumps(contract))


def warmed_up(run_dir: Path, window_zyx: tuple[int, int, int], batch_size: int):
    """The run's model, loaded once and called once (TensorFlow traces its graph on the first
    call), so every scenario measures the steady state, not a one-off start-up."""
    import numpy as np

    from prediction.runs import load_predict_fn

    predict_fn = load_predict_fn(run_dir)
    predict_fn(np.zeros((batch_size, *window_zyx, 1), np.float32))
    return predict_fn


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def parse_args() -> argparse.Namespace:
    from training.config import ModelConfig

    defaults = ModelConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small",
        action="store_true",
        help="a run of a few minutes on a CPU: "
        + " ".join(
            f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in SMALL.items()
        )
        + " (flags given explicitly win)",
    )
    parser.add_argument("--cases", type=int, default=1)
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--base-filters", type=int, default=defaults.base_filters)
    parser.add_argument("--window", type=int, nargs=3, default=list(DEFAULT_WINDOW_ZYX), metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=PredictConfig().batch_size)
    parser.add_argument("--scenarios", nargs="+", choices=tuple(SCENARIOS), default=list(SCENARIOS))
    first, _ = parser.parse_known_args()
    if first.small:
        parser.set_defaults(**SMALL)
    return parser.parse_args()


def per_case(summary) -> dict[str, float]:
    n = len(summary.results)
    return {k: sum(r.seconds.get(k, 0.0) for r in summary.results) / n for k in STAGES}


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    window = tuple(args.window)
    rows, summaries = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        data = make_dataset(tmp / "data", args.cases, seed=0, size=args.size, n_test=0, progress=False)
        print(f"synthetic {args.size} cases: {time.perf_counter() - t:.1f} s")
        runs = [tmp / f"run{i}" for i in range(max(SCENARIOS[s][0] for s in args.scenarios))]
        for seed, run in enumerate(runs):
            make_run(run, args.depth, args.base_filters, window, seed)
        models = [warmed_up(run, window, args.batch_size) for run in runs]
        rss_before = peak_rss_mib()
        for name in args.scenarios:
            n_models, axes = SCENARIOS[name]
            config = PredictConfig(batch_size=args.batch_size, mirror_axes=axes)
            summary = predict_cases(
                runs[:n_models],
                data / "imagesTr",
                tmp / f"out_{name}",
                config,
                predict_fn=models[:n_models],
                progress=False,
            )
            if summary.failed:
                print(summary.table())
                return 1
            summaries[name] = summary
            rows[name] = per_case(summary)
            n_windows = summary.results[0].n_windows
            print(f"{name}: {sum(rows[name].values()):.1f} s/case ({n_windows} window passes)", flush=True)

    from training.config import AugmentConfig

    print(
        f"\nmodel: depth {args.depth}, base filters {args.base_filters}, window {window}, batch {args.batch_size}, "
        f"{args.cases} {args.size} case(s); mirrored scenarios flip the runs' axes {AugmentConfig().flip_axes}"
    )
    print(summaries[args.scenarios[0]].table())
    head = (
        f"{'scenario':<17}{'passes/win':>11}" + "".join(f"{k:>11}" for k in STAGES) + f"{'total s':>10}{'x plain':>9}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    base = sum(rows["plain"].values()) if "plain" in rows else None
    for name, row in rows.items():
        total = sum(row.values())
        r = summaries[name].results[0]
        passes = r.n_windows // max(1, len(_grid_of(r, window)))
        ratio = f"{total / base:>9.2f}" if base else f"{'-':>9}"
        print(f"{name:<17}{passes:>11}" + "".join(f"{row[k]:>11.2f}" for k in STAGES) + f"{total:>10.2f}{ratio}")
    if "plain" in rows:
        outside = 1 - rows["plain"]["model"] / sum(rows["plain"].values())
        print(f"plain: outside the model windows {outside:.1%} (goal < 15%)")
    results = [r for s in summaries.values() for r in s.results]
    largest = max(r.shape_zyx[0] * r.shape_zyx[1] * r.shape_zyx[2] for r in results)
    print(
        f"stitching buffers of the largest case: {(3 + 1) * 4 * largest / 2**20:.0f} MiB "
        f"((C + 1) float32 x {largest / 1e6:.1f} M stored voxels)"
    )
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (after loading TensorFlow + models: {rss_before:.0f} MiB)")
    return 0


def _grid_of(result, window) -> list:
    from prediction.sliding import window_grid

    return window_grid([max(s, w) for s, w in zip(result.shape_zyx, window)], window, PredictConfig().overlap)


if __name__ == "__main__":
    sys.exit(main())
