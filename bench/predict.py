"""Benchmark of ``pancreas predict``: seconds per case by stage, without and with test-time
mirroring, for one model and for an ensemble of two; and memory.

Writes N synthetic cases (full size: 512x512x~100 at 0.7-0.9 mm x 2-3 mm, every
orientation/dtype the generator makes), saves untrained U-Nets (``training.model.build_unet``,
default shape ``training.config.ModelConfig()``; seeds 0 and 1) as run checkpoints whose
input contracts record the default training flips (``AugmentConfig().flip_axes``), then
predicts the same cases through the real path (``predict_cases``: read, the run's
preprocessing, Keras windows, stitching, restore, write; each model loaded and its graph
traced once, before timing) once per scenario:

* ``plain``: one model, ``--no-mirror``, ``--roi whole``;
* ``mirror``: one model, mirrored along the run's axes (2 axes = 4 passes), ``--roi whole``
  (predict's default before ``roi: auto``: "today's figure");
* ``roi``: as ``mirror`` with ``roi: auto`` (predict's default: a first pass finds the gland);
* ``roi-plain``: as ``plain`` with ``roi: auto``;
* ``ensemble``: two models, ``--no-mirror``, ``--roi whole``;
* ``ensemble-mirror``: two models, each mirrored, ``--roi whole``;
* ``roi-ensemble-mirror``: as ``ensemble-mirror`` with ``roi: auto`` (``--model A B``'s default);
* ``shifted``: as ``plain`` at 40% overlap: compared with ``plain``, how much the model's own label
  maps move when only its windows move (the floor under any ROI difference that is not exact).

Each ``roi`` scenario is compared with its whole counterpart, case by case: Dice of pancreas
(labels 1+2) and tumour (label 2) between the two label maps and the tumour voxels of the whole
prediction the ROI prediction lost (goals: Dice >= 0.995, none lost), and the first pass's
reach: how far (mm) the whole prediction's foreground lies outside the first pass's (what
``roi_margin_mm`` must cover). Those figures need a model that finds the gland: ``--model RUN``
(``bench/predict_fixture.py`` trains the default U-Net on full-size phantoms); without it the
models are untrained and only the timings mean anything. ``--data FOLDER`` predicts those CTs
(e.g. the demo's held-out ``demo-output/data/imagesTs`` with its ``--model``) instead of
synthetic ones.

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
    .venv/bin/python bench/predict.py --model ~/.cache/pancreas-seg/bench-fixture/run --scenarios mirror roi
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
# scenario -> (number of models, mirror axes: None = the runs' recorded flips, () = off, roi, overlap)
SCENARIOS = {
    "plain": (1, (), "whole", 0.5),
    "mirror": (1, None, "whole", 0.5),
    "roi": (1, None, "auto", 0.5),
    "roi-plain": (1, (), "auto", 0.5),
    "shifted": (1, (), "whole", 0.4),
    "ensemble": (2, (), "whole", 0.5),
    "ensemble-mirror": (2, None, "whole", 0.5),
    "roi-ensemble-mirror": (2, None, "auto", 0.5),
}
# each compared with: the ROI with its whole prediction; "shifted" (the whole grid at 40% overlap, its windows
# elsewhere) with "plain": how much the model's own label maps move when only the windows move
WHOLE_OF = {"roi": "mirror", "roi-plain": "plain", "roi-ensemble-mirror": "ensemble-mirror", "shifted": "plain"}
DEFAULT_SCENARIOS = ("plain", "mirror", "roi", "roi-plain")
GOAL_SECONDS = 60.0  # issue 20: a full-size case, one model, default mirroring
GOAL_DICE = 0.995
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
    parser.add_argument("--seed", type=int, default=100, help="of the synthetic cases (not the fixture's: 0)")
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--base-filters", type=int, default=defaults.base_filters)
    parser.add_argument(
        "--window",
        type=int,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help=f"prediction window (default {list(DEFAULT_WINDOW_ZYX)}; with --model: the run's validation patch)",
    )
    parser.add_argument("--batch-size", type=int, default=PredictConfig().batch_size)
    parser.add_argument("--scenarios", nargs="+", choices=tuple(SCENARIOS), default=list(DEFAULT_SCENARIOS))
    parser.add_argument(
        "--model",
        nargs="+",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="trained run(s) in place of the untrained networks (one run: the ensembles use it twice); "
        "--depth/--base-filters/--window then come from the run",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="predict these CTs (a folder) instead of synthetic ones"
    )
    parser.add_argument("--margin-mm", type=float, default=PredictConfig().roi_margin_mm, help="roi_margin_mm")
    first, _ = parser.parse_known_args()
    if first.small:
        parser.set_defaults(**SMALL)
    return parser.parse_args()


def per_case(summary) -> dict[str, float]:
    n = len(summary.results)
    return {k: sum(r.seconds.get(k, 0.0) for r in summary.results) / n for k in STAGES}


def dice(a, b) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def compare(roi_dir: Path, whole_dir: Path, case_ids: list[str]) -> list[dict[str, float]]:
    """Per case: pancreas and tumour Dice of the ROI label map against the whole one, tumour voxels lost."""
    import SimpleITK as sitk

    rows = []
    for case_id in case_ids:
        roi = sitk.GetArrayFromImage(sitk.ReadImage(str(roi_dir / f"{case_id}.nii.gz")))
        whole = sitk.GetArrayFromImage(sitk.ReadImage(str(whole_dir / f"{case_id}.nii.gz")))
        rows.append(
            {
                "pancreas": dice(roi > 0, whole > 0),
                "tumour": dice(roi == 2, whole == 2),
                "lost": int(((whole == 2) & (roi != 2)).sum()),
                "whole_tumour": int((whole == 2).sum()),
            }
        )
    return rows


def first_pass_reach_mm(run_dir: Path, predict_fn, image_paths: list[Path], config: PredictConfig) -> list[float]:
    """Per case: the largest distance (mm) from a foreground voxel of the whole prediction (stored grid)
    to the first pass's foreground; inf when the first pass found nothing. What the margin must cover."""
    import dataclasses

    import numpy as np
    from scipy import ndimage

    from prediction.roi import first_pass_window
    from prediction.runs import load_runs
    from prediction.sliding import pad_to_window, window_grid
    from prediction.volume import _first_pass, argmax_labels, predict_volume
    from preprocess.io import read_image
    from preprocess.pipeline import preprocess_image

    run = load_runs([run_dir], config, predict_fn)
    cfg = dataclasses.replace(run.config, roi="whole")
    reach = []
    for path in image_paths:
        image, _ = read_image(path, None)
        pre = preprocess_image(image, None, run.preprocess)
        spacing = np.asarray(pre.attrs["spacing"], dtype=float)[::-1]
        whole = (
            argmax_labels(predict_volume(pre.levels, predict_fn, cfg, progress=False, mirror_axes=run.mirror_axes)) > 0
        )
        window = tuple(cfg.window_zyx or ())
        padded, shape = pad_to_window(pre.levels, window, 0)
        first = first_pass_window(padded.shape, window, 2 ** int(run.contract.model_depth))
        padded, _ = pad_to_window(padded, first, 0)
        mask = _first_pass(padded, window_grid(padded.shape, first, 0.0), first, predict_fn, None, False)
        mask = mask[: shape[0], : shape[1], : shape[2]]
        if not mask.any():
            reach.append(float("inf"))
            continue
        distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
        reach.append(float(distance[whole].max()) if whole.any() else 0.0)
    return reach


def machine() -> str:
    import platform

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {time.strftime('%Y-%m-%d')}"


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    window = tuple(args.window or DEFAULT_WINDOW_ZYX)
    rows, summaries = {}, {}
    n_runs = max(SCENARIOS[s][0] for s in args.scenarios)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        if args.data is not None:
            inputs = args.data
        else:
            data = make_dataset(tmp / "data", args.cases, seed=args.seed, size=args.size, n_test=0, progress=False)
            inputs = data / "imagesTr"
            print(f"synthetic {args.size} cases (seed {args.seed}): {time.perf_counter() - t:.1f} s")
        if args.model:
            runs = [args.model[min(i, len(args.model) - 1)].resolve() for i in range(n_runs)]
            from dataset.contract.run import read_input_contract

            window = tuple(args.window or read_input_contract(runs[0]).default_window_zyx)
        else:
            runs = [tmp / f"run{i}" for i in range(n_runs)]
            for seed, run in enumerate(runs):
                make_run(run, args.depth, args.base_filters, window, seed)
        models = [warmed_up(run, window, args.batch_size) for run in runs]
        rss_before = peak_rss_mib()
        for name in args.scenarios:
            n_models, axes, roi, overlap = SCENARIOS[name]
            config = PredictConfig(
                window_zyx=window if args.window else None,
                batch_size=args.batch_size,
                mirror_axes=axes,
                roi=roi,
                roi_margin_mm=args.margin_mm,
                overlap=overlap,
            )
            summary = predict_cases(
                runs[:n_models], inputs, tmp / f"out_{name}", config, predict_fn=models[:n_models], progress=False
            )
            if summary.failed:
                print(summary.table())
                return 1
            summaries[name] = summary
            rows[name] = per_case(summary)
            r = summary.results[0]
            print(f"{name}: {sum(rows[name].values()):.1f} s/case ({r.n_windows} window passes, case 1)", flush=True)
        case_ids = [r.case_id for r in next(iter(summaries.values())).results]
        comparisons = {
            name: compare(tmp / f"out_{name}", tmp / f"out_{WHOLE_OF[name]}", case_ids)
            for name in summaries
            if name in WHOLE_OF and WHOLE_OF[name] in summaries
        }
        reach = None
        if any(SCENARIOS[name][2] == "auto" for name in summaries):
            paths = [Path(r.source) for r in next(iter(summaries.values())).results]
            reach = first_pass_reach_mm(runs[0], models[0], paths, PredictConfig(batch_size=args.batch_size))

    from training.config import AugmentConfig

    trained = f"trained run {args.model[0]}" if args.model else "UNTRAINED networks (Dice and reach meaningless)"
    print(f"\nmachine: {machine()}")
    print(
        f"model: {trained}; window {window}, batch {args.batch_size}, {len(case_ids)} case(s) "
        f"({args.data or args.size}); mirrored scenarios flip the runs' axes {AugmentConfig().flip_axes}; "
        f"roi_margin_mm {args.margin_mm}"
    )
    print(summaries[args.scenarios[0]].table())
    head = (
        f"{'scenario':<20}{'passes':>8}{'roi win':>9}"
        + "".join(f"{k:>11}" for k in STAGES)
        + f"{'total s':>10}{'x plain':>9}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    base = sum(rows["plain"].values()) if "plain" in rows else None
    for name, row in rows.items():
        total = sum(row.values())
        results = summaries[name].results
        passes = sum(r.n_windows for r in results) / len(results)
        kept = [r.roi for r in results if r.roi and r.roi.get("boxes") is not None]
        roi_cell = f"{sum(k['windows'] for k in kept)}/{sum(k['windows_whole'] for k in kept)}" if kept else "-"
        ratio = f"{total / base:>9.2f}" if base else f"{'-':>9}"
        print(
            f"{name:<20}{passes:>8.0f}{roi_cell:>9}"
            + "".join(f"{row[k]:>11.2f}" for k in STAGES)
            + f"{total:>10.2f}{ratio}"
        )
    if "roi" in rows:
        today = f"{sum(rows['mirror'].values()):.1f} s (mirror, roi whole)" if "mirror" in rows else "not run"
        print(
            f"goal: one model, default mirroring, roi auto: {sum(rows['roi'].values()):.1f} s/case "
            f"(goal <= {GOAL_SECONDS:.0f} s; today's: {today})"
        )
    for name, comps in comparisons.items():
        worst_p = min(c["pancreas"] for c in comps)
        worst_t = min(c["tumour"] for c in comps)
        lost = sum(c["lost"] for c in comps)
        whole_t = sum(c["whole_tumour"] for c in comps)
        goals = (f"goal >= {GOAL_DICE}", "goal 0") if name != "shifted" else ("the floor, no goal", "no goal")
        print(
            f"{name} vs {WHOLE_OF[name]}: lowest Dice over the cases pancreas {worst_p:.4f}, tumour {worst_t:.4f} "
            f"({goals[0]}); tumour voxels of the whole prediction lost: {lost} of {whole_t} ({goals[1]})"
        )
        for case_id, c in zip(case_ids, comps):
            print(f"    {case_id}: pancreas {c['pancreas']:.4f}, tumour {c['tumour']:.4f}, lost {c['lost']}")
    if reach is not None:
        cells = ", ".join(f"{v:.1f}" for v in reach)
        print(f"first pass reach (mm the whole prediction lies outside the first pass's foreground): {cells}")
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


if __name__ == "__main__":
    sys.exit(main())
