"""``pancreas qc``: one case sheet per stored case (the 1 mm image and label as the trainer sees them) and a
dataset table (qc.json, qc.csv, index.html) flagging the cases a person should look at."""

from __future__ import annotations

import argparse

from pancreas.cli_options import add_no_progress_option, required_group


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("qc", help="case sheets and a flagged table of a store's cases", description=__doc__)
    required = required_group(parser)
    required.add_argument("--store", required=True, help="preprocessed store (from `pancreas preprocess`)")
    required.add_argument(
        "--out",
        required=True,
        metavar="QC_DIR",
        help="folder for qc.json, qc.csv, index.html and pictures/ (new, empty or a previous qc output; "
        "outside the store)",
    )
    parser.add_argument(
        "--outlier-z",
        type=float,
        default=3.5,
        metavar="Z",
        help="flag a gland whose median intensity or volume has a robust z-score (median/MAD) above Z (default 3.5)",
    )
    add_no_progress_option(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from evaluation.qc import QcParams, run_qc

    summary = run_qc(args.store, args.out, QcParams(outlier_z=args.outlier_z), progress=not args.no_progress)
    for line in format_summary(summary):
        print(line)
    return 0


def format_summary(s) -> list[str]:
    """Readable lines of a QcSummary: counts, the cases to look at and why, where the page is."""
    lines = [f"qc of {s.cases} case(s) in {s.seconds:.1f} s: {len(s.flagged)} flagged, {len(s.errors)} unreadable"]
    lines += [f"  error    {message}" for message in s.errors.values()]
    lines += [f"  flagged  {case}: {', '.join(flags)}" for case, flags in s.flagged.items()]
    lines.append(f"  wrote    {s.out_dir}/{{qc.json, qc.csv, index.html, pictures/}}")
    lines.append(f"  open     {s.index_html}")
    return lines
