"""``pancreas env``: what this machine gives the pipeline (versions, devices, TensorFlow's CUDA build, CPU threads).

Two checks (a Blosc-LZ4 HDF5 round trip, importing elasticdeform); exit 1 when one fails.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "env", help="versions, devices and installation checks (GPU set-up, bug reports)", description=__doc__
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from training.environment import checks_passed, collect_environment, environment_lines

    record = collect_environment()
    print("\n".join(environment_lines(record)))
    return 0 if checks_passed(record) else 1
