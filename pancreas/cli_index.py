"""``pancreas index``: split cases into K cross-validation folds, classify grid patches, write
balanced manifests per fold and cache the elastically deformed foreground copies under STORE/index/."""

from __future__ import annotations

import argparse
import dataclasses

from dataset.common.errors import UsageError
from pancreas.cli_options import add_set_option, required_group


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("index", help="build patch manifests and cached augmented patches", description=__doc__)
    required_group(parser).add_argument(
        "--store", required=True, help="preprocessed store (from `pancreas preprocess`)"
    )
    parser.add_argument(
        "--config", default=None, help="index config YAML (default: built-in defaults = configs/index.yaml)"
    )
    add_set_option(parser)
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="cross-validation folds by case (default: the config's folds, 5); 1: a single val_fraction split",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Dask worker processes for augmentation (default: all cores; 0: no Dask)",
    )
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from dataset.common.configio import load_config
    from dataset.common.runner import quiet_dask_logs
    from dataset.index.build import build_index
    from dataset.index.config import IndexConfig

    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.folds is not None and args.folds < 1:
        raise UsageError(f"{args.store}: --folds must be >= 1, got {args.folds}")
    config = load_config(IndexConfig, args.config, args.overrides)
    if args.folds is not None:
        config = dataclasses.replace(config, folds=args.folds)
    if not args.verbose:
        quiet_dask_logs()
    s = build_index(args.store, config, workers=args.workers, scheduler=args.scheduler, progress=not args.no_progress)
    for line in format_summary(s):
        print(line)
    return 0


def format_summary(s) -> list[str]:
    """Readable lines of an IndexSummary: the whole index, then one line per fold."""
    if s.unchanged:
        head = [
            f"index of {s.store} is up to date (store {s.store_fingerprint}, "
            f"config {s.config_fingerprint}); nothing to do"
        ]
    else:
        head = [
            f"indexed {s.store} in {s.seconds:.1f} s "
            f"(classification {s.classify_seconds_per_case * 1000:.0f} ms per case)"
        ]
    kind = "a single split" if s.folds == 1 else f"{s.folds} cross-validation folds"
    lines = [
        *head,
        f"  split        {s.cases} cases ({s.tumour_cases} with tumour) in {kind}"
        + (f"; skipped (preprocessing failed): {', '.join(s.skipped_cases)}" if s.skipped_cases else ""),
    ]
    for k, c in enumerate(s.per_fold):
        lines += [
            f"  fold {k}       {c.train_cases} train / {c.val_cases} validation cases "
            f"({c.val_tumour_cases} with tumour)",
            f"    train      {c.train_entries} entries: {c.train_foreground_entries} foreground "
            f"({c.train_augmented_entries} augmented, {c.train_centred_entries} centred), "
            f"{c.train_background_entries} background ({c.train_with_replacement} drawn with replacement)",
            f"    validation {c.val_entries} patches: {c.val_foreground_entries} foreground, "
            f"{c.val_background_entries} background",
        ]
    lines += [
        f"  padded       {s.padded_patches} grid patches extend past their volume",
        f"  augmented    {len(s.augmented_shards)} shards (one per case, shared by the folds): "
        f"{s.augmented_built} built, {s.augmented_reused} reused",
    ]
    if s.cases_without_foreground:
        lines.append(f"  no foreground: {', '.join(s.cases_without_foreground)} (background entries only)")
    lines.append(
        f"  wrote        {s.index_dir}/{{split.json, fold_0..{s.folds - 1}/{{train,val}}.csv, "
        "augmented/, summary.json}"
    )
    return lines
