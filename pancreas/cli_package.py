"""``pancreas package``: one zip with an ensemble, its decision, report, card and probe; ``--verify`` checks one.

See evaluation.packaging (writing) and prediction.packages (checking, predicting).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "package",
        help="pack runs (or a cross-validation) into one verified MODEL.zip; --verify checks one",
        description="Write --out MODEL.zip: per model its checkpoint (no optimiser state), input contract and "
        "training records; the postprocessing decision; the cross-validation report; MODEL.md (the model card); "
        "a probe; package.json with every member's size and SHA-256. Written atomically; an existing file is "
        "replaced only when it is a package. --verify MODEL.zip checks a package and runs its probe "
        "(exit 0 and one summary line, or exit 1 naming the first failure).",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", nargs="+", metavar="RUN_DIR", help="training runs: the ensemble, in order")
    what.add_argument(
        "--cv", metavar="CV_DIR", help="an `evaluate --cv` folder: its runs, postprocessing.json and report"
    )
    what.add_argument("--verify", metavar="MODEL", help="check a package (a .zip, or the folder it unpacks to)")
    parser.add_argument("--out", type=Path, metavar="MODEL.zip", help="the package to write (with --model or --cv)")
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default=None,
        help="which checkpoint of each run (default: with --cv the one it scored, else best as predict)",
    )
    parser.add_argument(
        "--postprocessing",
        default=None,
        metavar="FILE",
        help="with --model: the postprocessing.json to carry (--cv carries its own)",
    )
    parser.set_defaults(run=run)
    return parser


def _verify(path: str) -> int:
    from dataset.common.errors import PancreasError
    from prediction.packages import verify_package

    try:
        found = verify_package(path)
    except PancreasError as err:
        print(f"pancreas package --verify: FAILED: {err}", file=sys.stderr)
        return 1
    record = found.opened.read.record
    size = sum(m.size for m in record.members.values())
    print(
        f"pancreas package --verify: {path}: OK: format version {record.version}, {len(record.members) + 1} members "
        f"({size / 2**20:.1f} MiB) match package.json, {len(record.models)} model(s) agree, largest probe "
        f"difference {found.max_difference:.1e} (tolerance {found.tolerance:g}); "
        f"package {found.opened.sha256[:16]}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from dataset.common.errors import UsageError

    if args.verify is not None:
        if args.out is not None or args.postprocessing is not None or args.checkpoint is not None:
            raise UsageError("--verify takes the package alone (no --out, --checkpoint or --postprocessing)")
        return _verify(args.verify)
    if args.out is None:
        raise UsageError("--out MODEL.zip is required with --model or --cv")
    from evaluation.packaging import package_models

    summary = package_models(args.out, args.model, args.cv, args.checkpoint, args.postprocessing)
    print(
        f"pancreas package: {summary.out} ({'replaced the earlier package' if summary.replaced else 'new'}): "
        f"{summary.models} model(s), checkpoint {summary.checkpoint}, {summary.members} members, "
        f"{summary.size_bytes / 2**20:.1f} MiB; package {summary.sha256[:16]}; "
        f"check it with `pancreas package --verify {summary.out}`"
    )
    return 0
