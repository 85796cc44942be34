"""Benchmark of training recipes at the demo's budget: which one validates smoothly and scores best.

Builds the demo's store once (10 training and 3 held-out phantoms, ``pancreas.demo``), then
trains each candidate with each seed in a process of its own (the demo's configs with the
candidate's overrides), predicts and evaluates the held-out cases, and prints per run and per
candidate (mean over seeds):

* final-epoch and best-epoch validation Dice (pancreas, tumour),
* the largest drop of validation pancreas Dice between consecutive epochs in the second half,
* the standard deviation of validation pancreas Dice over the last 10 epochs,
* the held-out Dice (pancreas, tumour) of the final checkpoint's predictions, as ``evaluate``
  reports it: a tumour-free case scores tumour Dice 0 if any voxel is predicted tumour (and is left
  out if none is), so also the tumour Dice of the cases with a tumour and the count of tumour-free
  cases given a false tumour (with 3 held-out cases, one such case moves the mean by a third),
* median seconds per step (an epoch's wall time, its validation included, over its steps), and the training's
  CPU seconds per step (user + system time of the whole training, validation included, over its
  steps): on a machine whose speed varies within a run (this one's did on 2026-12-06: epochs
  alternated between about one and two busy cores) the CPU figure compares recipes, the
  wall-clock one does not,
* the same held-out figures on 12 more phantoms (``EXTRA_TEST_CASES``, another synthesis seed:
  the demo's 3 held-out cases hold 2 tumours, too few to rank recipes by tumour Dice).

``--step-cost`` measures instead, per candidate and each alone in a process of its own, what a
recipe costs apart from the validation protocol: CPU seconds per training step of its model on
one in-memory batch of the demo's patch (no input pipeline; median of ``STEP_COST_STEPS``), and
CPU seconds of one validation pass over the demo's validation manifest (tiled as training
validates it). The candidates are measured round-robin ``--repeats`` times and the table gives
each one's fastest repeat and its slowest over fastest: on 2026-12-07 one pass over the same
model config gave 0.49 and 0.77 s, as this machine's speed changed between runs. The input
pipeline's own rate under each augmentation mix is ``bench/pipeline.py --augment-table``'s.

    .venv/bin/python bench/recipe.py --out /tmp/recipe                  # every candidate x 2 seeds
    .venv/bin/python bench/recipe.py --out /tmp/recipe --seeds 0 --candidates seed instance
    .venv/bin/python bench/recipe.py --out /tmp/recipe --step-cost --candidates seed nnunet_like_adam

A finished run is kept and reused on a rerun (its folder holds ``result.json``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dataset.common.configio import from_dict, to_dict

PRESETS = Path(__file__).resolve().parents[1] / "configs"
EXTRA_TEST_CASES = 12
EXTRA_SEED = 1  # the demo's phantoms are synthesis seed 0
STEP_COST_STEPS = 20


def preset(name: str) -> dict[str, Any]:
    """A preset file's keys, as overrides (so the candidate is the preset, not a copy of it)."""
    import yaml

    return yaml.safe_load((PRESETS / name).read_text(encoding="utf-8"))


# Overrides of the demo's train config (configs/demo/train.yaml). "seed" is the demo as it is:
# batch norm, ReLU, Adam 1e-3, ReduceLROnPlateau; "seed_poly" the same with the poly decay.
# "renorm": the seed's recipe with batch renormalisation.
# "instance": the seed's recipe with instance norm;
# "instance_poly": and the poly decay instead of the plateau rule; "instance_poly_ds": and deep
# supervision. "nnunet_like": configs/train_nnunet_like.yaml (nnU-Net's normalisation, activation,
# deep supervision, optimizer, schedule and augmentation probabilities) at the demo's budget.
CANDIDATES: dict[str, dict[str, Any]] = {
    "seed": {},
    "seed_poly": {"schedule": "poly"},
    # The seed's recipe with batch renormalisation (training.model.BatchRenormalization): batch
    # norm's statistics corrected towards the moving ones in training, so batches of 2 validate
    # with the statistics they trained with.
    "renorm": {"model": {"norm": "batch_renorm"}},
    "renorm_poly": {"model": {"norm": "batch_renorm"}, "schedule": "poly"},
    "instance": {"model": {"norm": "instance"}},
    "instance_poly": {"model": {"norm": "instance"}, "schedule": "poly"},
    "instance_poly_ds": {"model": {"norm": "instance", "deep_supervision": True}, "schedule": "poly"},
    "instance_poly_ds_lr3": {
        "model": {"norm": "instance", "deep_supervision": True},
        "schedule": "poly",
        "learning_rate": 3e-3,
    },
    "group2_poly_ds": {
        "model": {"norm": "group", "norm_groups": 2, "deep_supervision": True},
        "schedule": "poly",
    },
    # nnunet_like_adam without its online augmentation (the same config, as the demo's loss is
    # already Dice + CE): the network and schedule alone, at the default pipeline's cost.
    "instance_leaky_poly_ds": {
        "model": {"norm": "instance", "activation": "leaky_relu", "deep_supervision": True},
        "schedule": "poly",
    },
    "nnunet_like": preset("train_nnunet_like.yaml"),
    # The preset with a tenth of nnU-Net's learning rate: its SGD at 0.01 / momentum 0.99 learned
    # nothing on the demo's 8-filter model (2026-12-03, both seeds).
    "nnunet_like_lr1e-3": {**preset("train_nnunet_like.yaml"), "learning_rate": 1e-3},
    "instance_poly_ds_lr5e-4": {
        "model": {"norm": "instance", "deep_supervision": True},
        "schedule": "poly",
        "learning_rate": 5e-4,
    },
    # The preset with Adam 1e-3 instead of its SGD (everything else kept, augmentation included):
    # the docs' line for trying the preset's other choices at the demo's budget.
    "nnunet_like_adam": {
        **preset("train_nnunet_like.yaml"),
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
    },
}


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def curve_figures(history_csv: Path, steps: int) -> dict[str, float]:
    """The validation-curve figures of one run's ``history.csv``."""
    with open(history_csv, newline="", encoding="utf-8") as fh:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    pancreas = [r["val_dice_pancreas"] for r in rows]
    half = len(pancreas) // 2
    drops = [a - b for a, b in zip(pancreas[half - 1 :], pancreas[half:], strict=False)]
    best = max(range(len(rows)), key=lambda i: pancreas[i])
    return {
        "epochs": len(rows),
        "final_val_pancreas": pancreas[-1],
        "final_val_tumour": rows[-1]["val_dice_tumour"],
        "best_val_pancreas": pancreas[best],
        "best_val_tumour": rows[best]["val_dice_tumour"],
        "best_epoch": best + 1,
        "max_drop_second_half": max([0.0, *drops]),
        "std_last10": statistics.pstdev(pancreas[-10:]),
        "seconds_per_step": statistics.median(r["epoch_seconds"] for r in rows) / steps,
    }


def heldout_figures(report: dict[str, Any]) -> dict[str, float]:
    """The held-out figures of one run's ``report.json`` (``evaluate``'s)."""
    summary = report["summary"]
    tumours = [c["tumour"] for c in report["cases"].values()]
    with_tumour = [t["dice"] for t in tumours if t["status"] in ("both", "missed")]
    return {
        "heldout_pancreas": summary["pancreas"]["dice"]["mean"],
        "heldout_tumour": summary["tumour"]["dice"]["mean"],
        "heldout_tumour_cases": statistics.mean(with_tumour) if with_tumour else float("nan"),
        "heldout_false_tumours": sum(t["status"] == "false_positive" for t in tumours),
    }


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (every TensorFlow thread included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def candidate_config(candidate: str, seed: int):
    """The demo's configs with ``candidate``'s train overrides and ``seed``."""
    from pancreas.demo import demo_configs
    from training.config import TrainConfig

    configs = demo_configs()
    train = from_dict(
        TrainConfig, merged(to_dict(configs.train), {**CANDIDATES[candidate], "seed": seed}), where=candidate
    )
    return dataclasses.replace(configs, train=train)


def extra_figures(out: Path, folder: Path, configs) -> dict[str, float]:
    """The held-out figures of a trained run on the ``EXTRA_TEST_CASES`` phantoms (``out/extra``)."""
    from evaluation.evaluate import evaluate_dirs
    from prediction.predict import predict_cases

    data = out / "extra"
    predicted = predict_cases(folder / "run", data, folder / "extra_predictions", configs.predict, progress=False)
    if predicted.failed:
        raise RuntimeError(f"extra held-out prediction failed for {[r.case_id for r in predicted.failed]}")
    report = evaluate_dirs(folder / "extra_predictions", data / "labelsTs", progress=False)
    (folder / "extra_report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return {f"extra_{key.removeprefix('heldout_')}": value for key, value in heldout_figures(report).items()}


def make_extra_cases(out: Path) -> None:
    """The extra held-out phantoms (once): the demo's size and tumours, synthesis seed ``EXTRA_SEED``."""
    from pancreas.demo import DEMO_TUMOURS
    from sources.synthetic.msd import make_dataset

    if not (out / "extra" / "dataset.json").is_file():
        make_dataset(
            out / "extra",
            1,
            seed=EXTRA_SEED,
            size="small",
            n_test=EXTRA_TEST_CASES,
            progress=False,
            tumours=DEMO_TUMOURS,
        )


def run_one(out: Path, candidate: str, seed: int) -> dict[str, Any]:
    """Train, predict and evaluate one candidate with one seed (in this process); a run already
    finished only gets the figures it lacks (the extra held-out cases)."""
    from pancreas.demo import demo_paths, train_and_score

    configs = candidate_config(candidate, seed)
    train = configs.train
    folder = out / f"{candidate}-seed{seed}"
    done = folder / "result.json"
    if done.is_file():
        result = json.loads(done.read_text(encoding="utf-8"))
        if "heldout_false_tumours" not in result:  # written before those columns
            result.update(heldout_figures(json.loads((folder / "report.json").read_text(encoding="utf-8"))))
        result.update(extra_figures(out, folder, configs))
        done.write_text(json.dumps(result, indent=2), encoding="utf-8")
        return result
    paths = {
        **demo_paths(out),
        "run": folder / "run",
        "predictions": folder / "predictions",
        "report": folder / "report.json",
    }
    seconds: dict[str, float] = {}
    from dataset.contract.run import holds_run
    from training.run import train as train_run

    # Trained here first, so its CPU time is measured alone; train_and_score then finds the run
    # finished and only predicts and scores.
    cpu_start = cpu_seconds()
    train_run(paths["store"], paths["run"], train, resume=holds_run(paths["run"]), progress=False)
    train_cpu = cpu_seconds() - cpu_start
    report = train_and_score(paths, configs, progress=False, seconds=seconds)
    result = {
        "candidate": candidate,
        "seed": seed,
        **curve_figures(paths["run"] / "history.csv", train.steps_per_epoch),
        **heldout_figures(report),
        "train_cpu_seconds": train_cpu,
        "cpu_seconds_per_step": train_cpu / (train.epochs * train.steps_per_epoch),
    }
    # written before the extra cases are scored: a failure there leaves the training's figures
    # (its CPU time cannot be measured again from a finished run), and a rerun scores them
    done.write_text(json.dumps(result, indent=2), encoding="utf-8")
    result.update(extra_figures(out, folder, configs))
    done.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def step_cost(out: Path, candidate: str, repeat: int) -> dict[str, Any]:
    """What ``candidate`` costs per training step and per validation pass (see the module docstring)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from training.distribute import build_compiled_model
    from training.model import N_CLASSES
    from training.pipeline import validation_dataset, validation_tiles
    from training.preflight import read_run_inputs

    config = candidate_config(candidate, 0).train
    inputs = read_run_inputs(out / "store", config, 0)
    keras.utils.set_random_seed(0)
    model = build_compiled_model(config)
    rng = np.random.default_rng(0)
    shape = (config.batch_size, *inputs.patch_size_zyx)
    x = rng.random((*shape, 1), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, shape).astype(np.uint8)

    class CpuPerStep(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[float] = []

        def on_train_batch_begin(self, batch, logs=None) -> None:
            self._start = cpu_seconds()

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.steps.append(cpu_seconds() - self._start)

    timer = CpuPerStep()
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(data, epochs=1, steps_per_epoch=STEP_COST_STEPS + 1, callbacks=[timer], verbose=0, shuffle=False)
    tile = inputs.patch_size_zyx if config.model.per_sample_norm else None
    samples = len(inputs.val_rows) * validation_tiles(inputs.val_patch_size_zyx, tile)
    val = validation_dataset(inputs.store, inputs.val_rows, config.val_batch_size, config.input_threads, tile)
    steps = math.ceil(samples / config.val_batch_size)
    model.evaluate(val, steps=1, verbose=0)  # traced and warmed outside the timing
    start = cpu_seconds()
    model.evaluate(val, steps=steps, verbose=0)
    result = {
        "candidate": candidate,
        "train_step_cpu_seconds": statistics.median(timer.steps[1:]),
        "validation_cpu_seconds": cpu_seconds() - start,
        "validation_samples": samples,
        "validation_patch_zyx": list(inputs.val_patch_size_zyx),
        "validation_tile_zyx": list(tile) if tile else None,
    }
    (out / "step-cost").mkdir(exist_ok=True)
    (out / "step-cost" / f"{candidate}-{repeat}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def step_cost_table(repeats: list[list[dict[str, Any]]]) -> str:
    """A Markdown table of ``step_cost`` results (one list of repeats per candidate): each
    candidate's fastest repeat, relative to the first candidate's, and slowest over fastest."""

    def fastest(runs: list[dict[str, Any]], key: str) -> float:
        return min(r[key] for r in runs)

    ref = fastest(repeats[0], "train_step_cpu_seconds")
    lines = [
        f"| candidate | CPU s per training step (fastest of {len(repeats[0])}) | x {repeats[0][0]['candidate']} "
        "| slowest / fastest | validation pass, CPU s (fastest) | validation samples |",
        "|---|---|---|---|---|---|",
    ]
    for runs in repeats:
        r, step = runs[0], fastest(runs, "train_step_cpu_seconds")
        spread = max(x["train_step_cpu_seconds"] for x in runs) / step
        tiles = "" if r["validation_tile_zyx"] is None else f" (tiles of {tuple(r['validation_tile_zyx'])})"
        lines.append(
            f"| {r['candidate']} | {step:.3f} | {step / ref:.2f} | {spread:.2f} | "
            f"{fastest(runs, 'validation_cpu_seconds'):.1f} | {r['validation_samples']}{tiles} |"
        )
    return "\n".join(lines)


COLUMNS = (
    ("final_val_pancreas", "final val P", ".3f"),
    ("final_val_tumour", "final val T", ".3f"),
    ("best_val_pancreas", "best val P", ".3f"),
    ("best_val_tumour", "best val T", ".3f"),
    ("max_drop_second_half", "max drop 2nd half", ".3f"),
    ("std_last10", "std last 10", ".3f"),
    ("heldout_pancreas", "held-out P", ".3f"),
    ("heldout_tumour", "held-out T", ".3f"),
    ("heldout_tumour_cases", "held-out T, tumour cases", ".3f"),
    ("heldout_false_tumours", "false tumours", "g"),
    ("seconds_per_step", "s/step", ".3f"),
    ("cpu_seconds_per_step", "CPU s/step", ".3f"),
    ("extra_pancreas", f"{EXTRA_TEST_CASES} more: P", ".3f"),
    ("extra_tumour", f"{EXTRA_TEST_CASES} more: T", ".3f"),
    ("extra_tumour_cases", f"{EXTRA_TEST_CASES} more: T, tumour cases", ".3f"),
    ("extra_false_tumours", f"{EXTRA_TEST_CASES} more: false tumours", "g"),
)


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per run, then one per candidate (mean over its seeds)."""
    head = "| run | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in results:
        cells = " | ".join(format(r.get(key, math.nan), fmt) for key, _, fmt in COLUMNS)
        lines.append(f"| {r['candidate']} seed {r['seed']} | {cells} |")
    for name in dict.fromkeys(r["candidate"] for r in results):
        runs = [r for r in results if r["candidate"] == name]
        cells = " | ".join(format(statistics.mean(r.get(key, math.nan) for r in runs), fmt) for key, _, fmt in COLUMNS)
        lines.append(f"| **{name}** (mean of {len(runs)}) | {cells} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (kept: reruns reuse finished runs)")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--step-cost", action="store_true", help="measure each candidate's step and validation cost")
    parser.add_argument("--one", nargs=2, metavar=("CANDIDATE", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="--step-cost: round-robin passes (default 3)")
    parser.add_argument("--one-cost", nargs=2, metavar=("CANDIDATE", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out.resolve()
    if args.one:
        run_one(out, args.one[0], int(args.one[1]))
        return 0
    if args.one_cost:
        step_cost(out, args.one_cost[0], int(args.one_cost[1]))
        return 0

    from pancreas.demo import build_store, demo_configs, demo_paths

    if not (out / "store" / "index" / "summary.json").is_file():
        build_store(demo_paths(out), demo_configs(), workers=2, progress=False, seconds={})
    machine = f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if args.step_cost:
        for repeat in range(args.repeats):
            for candidate in args.candidates:
                command = [sys.executable, __file__, "--out", str(out), "--one-cost", candidate, str(repeat)]
                subprocess.run(command, check=True)
        costs = [
            [json.loads((out / "step-cost" / f"{c}-{i}.json").read_text(encoding="utf-8")) for i in range(args.repeats)]
            for c in args.candidates
        ]
        print(f"\n{machine}\n{step_cost_table(costs)}")
        return 0
    make_extra_cases(out)
    results = []
    for candidate in args.candidates:
        for seed in args.seeds:
            done = out / f"{candidate}-seed{seed}" / "result.json"
            if not done.is_file() or "extra_pancreas" not in json.loads(done.read_text(encoding="utf-8")):
                print(f"{'scoring' if done.is_file() else 'training'} {candidate} seed {seed} ...", flush=True)
                subprocess.run([sys.executable, __file__, "--out", str(out), "--one", candidate, str(seed)], check=True)
            results.append(json.loads(done.read_text(encoding="utf-8")))
    print(f"\n{machine}")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
