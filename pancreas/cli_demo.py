"""``pancreas demo``: the whole journey on synthetic data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("demo", help="synth -> preprocess -> index -> train -> predict -> evaluate")
    parser.add_argument("--out", default="demo-output", help="folder for everything (default demo-output/)")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from dataset.common.imports import import_elasticdeform
    from dataset.common.runner import quiet_dask_logs
    from evaluation.evaluate import report_ok, report_table
    from pancreas.demo import run_demo

    import_elasticdeform()  # a broken install stops here, not after synth and preprocess
    if not args.verbose:
        quiet_dask_logs()
    result = run_demo(args.out, workers=args.workers, progress=not args.no_progress)
    print()
    print(report_table(result.report))
    print()
    print("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))
    print("outputs:")
    for name, path in result.paths.items():
        print(f"  {name:<12} {path}")
    print(f"training curves: {result.paths['progress']} (or: tensorboard --logdir {result.paths['tensorboard']})")
    print(f"open the report in a browser: {result.paths['report_html'].resolve()}")
    return 0 if report_ok(result.report) else 1
