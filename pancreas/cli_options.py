"""Options shared by several ``pancreas`` commands, defined once so they read the same everywhere.

Not a command (``pancreas.cli.COMMANDS`` lists those): each ``cli_<stage>`` module calls
these from its ``add_parser``; ``pancreas.cli`` adds the logging options to every command.
"""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) beside ``--config``; read by ``configio.load_config``."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="change one config value on top of --config (or the defaults), checked like the "
        "YAML: dotted keys for sections, the value is YAML (--set model.depth=3 "
        "--set 'augment.flip_axes=[1, 2]', quoted for the shell); repeatable, later ones win",
    )


def fold_number(text: str) -> int:
    """``--fold K``: a fold of the index, numbered from 0 (argparse's "invalid int value" says neither)."""
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(f"expected a fold number 0, 1, ... (an integer >= 0), got {text!r}")
    return int(text)


def thread_count(text: str) -> int:
    """``--threads N``: a number of CPU threads, at least 1."""
    if not text.strip().isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of threads >= 1, got {text!r}")
    return int(text)


def add_no_progress_option(parser: argparse.ArgumentParser, what: str = "no progress bars") -> None:
    parser.add_argument("--no-progress", action="store_true", help=what)


def required_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Where a command's required options go, so ``--help`` lists them apart from the optional ones."""
    return parser.add_argument_group("required arguments")


def add_logging_options(parser: argparse.ArgumentParser, default: object = False) -> None:
    """``-v``/``-q``: on the top-level parser (``default`` False) and on every command
    (``default`` SUPPRESS, so ``pancreas -v index ...`` is not reset by the command's parser)."""
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging, Dask's messages included"
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="warnings and errors only; no progress bars (results are still printed)",
    )


def command_line() -> str:
    """The command as typed (program name without its folder), for a report's provenance."""
    import shlex
    import sys
    from pathlib import Path

    return shlex.join(["pancreas" if Path(sys.argv[0]).name == "pancreas" else Path(sys.argv[0]).name, *sys.argv[1:]])[
        :500
    ]
