"""``pancreas preprocess``: every CT of an MSD dataset -> one HDF5 shard per case (resumable)."""

from __future__ import annotations

import argparse

from dataset.common.errors import UsageError
from pancreas.cli_options import add_set_option, required_group


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "preprocess", help="resample, crop, window and equalise CTs into a store", description=__doc__
    )
    required = required_group(parser)
    required.add_argument("--data", required=True, help="MSD task folder with dataset.json")
    required.add_argument("--out", required=True, help="store folder to write (catalog.json + cases/)")
    parser.add_argument(
        "--config", default=None, help="preprocessing YAML (default: the defaults, as in configs/preprocess.yaml)"
    )
    add_set_option(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: CPU count; 0: run in this process, no Dask)",
    )
    parser.add_argument(
        "--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:port) to use instead"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def format_summary(summary) -> str:
    """The end-of-run summary the user reads: counts, failures one per line, store, time."""
    lines = [
        f"preprocess: {summary.done} done, {summary.skipped} skipped (up to date), "
        f"{summary.failed} failed in {summary.seconds:.1f} s",
        f"store: {summary.store}",
    ]
    lines += [f"  FAILED {case_id}: {reason}" for case_id, reason in summary.failures]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dataset.common.configio import load_config
    from dataset.common.runner import quiet_dask_logs
    from preprocess.config import PreprocessConfig
    from preprocess.driver import run_preprocess

    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if not getattr(args, "verbose", False):
        quiet_dask_logs()
    config = load_config(PreprocessConfig, args.config, args.overrides)
    summary = run_preprocess(
        args.data,
        args.out,
        config,
        workers=args.workers,  # a held lock: one line (pancreas.cli)
        scheduler=args.scheduler,
        progress=not args.no_progress,
    )
    print(format_summary(summary))
    return 0 if summary.ok else 1
