"""``pancreas train``: train the 3D U-Net on a store's patch index (see training.run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dataset.common.errors import UsageError
from pancreas.cli_options import add_no_progress_option, add_set_option, fold_number, required_group


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the U-Net",
        description="Train the 3D U-Net on one fold of a store's patch index (STORE/index/fold_<k>/train.csv, "
        "val.csv). Folds are independent runs: train them side by side, each into its own --out.",
    )
    required_group(parser).add_argument("--store", required=True, type=Path, help="preprocessed store with index/")
    parser.add_argument(
        "--fold",
        type=fold_number,
        default=0,
        metavar="K",
        help="the index fold to train on, 0..folds-1 (default 0); recorded in the run, and "
        "--resume must name the same fold",
    )
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="training YAML (default: the built-in defaults, which configs/train.yaml repeats); "
        "repeatable: a later file changes only the keys it names (e.g. --config "
        "demo-output/configs/train.yaml --config configs/train_nnunet_like.yaml: the demo's "
        "budget with the preset's recipe)",
    )
    add_set_option(parser)
    parser.add_argument("--out", type=Path, help="run folder (checkpoints, logs, history); locked while the run lasts")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last completed epoch (refused if --out holds no run)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="RUN_DIR|MODEL.keras",
        help="fine-tune: start a new run from these weights (RUN_DIR: its last.keras; or a .keras "
        "file, e.g. RUN_DIR/checkpoints/best.keras) with a fresh optimiser at epoch 0; the "
        "preprocessing and model shape must match (not with --resume)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--profile-input",
        action="store_true",
        help="run the input pipeline alone and report patches/s (writes nothing)",
    )
    mode.add_argument(
        "--synthetic-input",
        action="store_true",
        help="run the model on random in-memory batches and report step time (writes nothing)",
    )
    parser.add_argument(
        "--require-gpu", action="store_true", help="stop at once (exit 2, nothing written) when TensorFlow sees no GPU"
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="batches timed by --profile-input / --synthetic-input (default 20)"
    )
    add_no_progress_option(parser, "one line per epoch instead of Keras' progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataset.common.configio import load_config
    from training.config import TrainConfig

    config = load_config(TrainConfig, args.config, args.overrides)
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    from training.distribute import check_execution, execution_line, log_plan_warnings

    plan = check_execution(config, require_gpu=args.require_gpu)  # before any work: nothing read or written yet
    print(f"pancreas train: {execution_line(plan)}", flush=True)
    log_plan_warnings(plan)
    if args.profile_input or args.synthetic_input:
        return _profile(args, config)
    if args.out is None:
        raise UsageError("--out RUN_DIR is required to train")
    from training.run import run_dir_summary_lines, train

    summary = train(
        args.store,
        args.out,
        config,
        resume=args.resume,
        fold=args.fold,
        init_from=args.init_from,
        progress=not args.no_progress,
    )  # a held lock is one line from pancreas.cli, like every user error
    print("\n".join(f"pancreas train: {line}" for line in run_dir_summary_lines(summary)))
    return 1 if summary.stopped == "nan" else 0


def _profile(args: argparse.Namespace, config) -> int:
    from training.run import profile_input, read_run_inputs, synthetic_step_time

    if args.profile_input:
        result = profile_input(args.store, config, batches=args.steps, fold=args.fold)
        print(
            f"pancreas train: input pipeline alone on fold {args.fold}: {result['patches_per_s']:.1f} augmented "
            f"patches/s ({result['patches']} patches of {tuple(result['patch_size_zyx'])} in "
            f"{result['seconds']:.1f} s)"
        )
    else:
        patch = read_run_inputs(args.store, config, args.fold).patch_size_zyx
        result = synthetic_step_time(config, patch, steps=args.steps)
        print(
            f"pancreas train: model alone on in-memory batches: {result['seconds_per_step']:.3f} s/step "
            f"({result['patches_per_s']:.1f} patches/s, batch {config.batch_size}, patch {patch})"
        )
    print("pancreas train: compare the two: if patches/s of the pipeline is below the model's, input limits the run")
    return 0
