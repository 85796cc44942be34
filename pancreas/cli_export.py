"""``pancreas export``: a training run's model as a TensorFlow SavedModel for serving (see training.export)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run's model as a TensorFlow SavedModel",
        description="Write RUN_DIR's model as a TensorFlow SavedModel into --out (signature serving_default: "
        "float32 (batch, z, y, x, 1) in, (batch, z, y, x, 3) probabilities out), with the run's "
        "input_contract.json and a README.txt beside it. Written atomically; an earlier export in "
        "--out is replaced, any other non-empty folder is refused.",
    )
    parser.add_argument("--model", required=True, type=Path, metavar="RUN_DIR", help="training run folder")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="export folder (locked while written)")
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which checkpoint to export (default best, as pancreas predict)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from training.export import export_run

    summary = export_run(args.model, args.out, args.checkpoint)
    shape = ", ".join("None" if d is None else str(d) for d in summary.input_shape)
    print(
        f"pancreas export: {summary.out} ({'replaced the earlier export' if summary.replaced else 'new'}): "
        f"checkpoints/{summary.checkpoint}.keras of {summary.run_dir} as a SavedModel, input ({shape}), "
        f"spatial edges multiples of {summary.spatial_multiple}; see {summary.out / 'README.txt'}"
    )
    return 0
