"""``pancreas env``: what this machine gives the pipeline.

Versions, devices, TensorFlow's CUDA build, CPU threads, and two checks.

The checks write and read a small Blosc-LZ4 HDF5 dataset in a temporary folder (the store's
codec, through hdf5plugin) and import elasticdeform (built from source against NumPy 2).
Exit 1 when a check fails. Every training run records the same in RUN_DIR/environment.json.
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
