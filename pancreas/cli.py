"""The command line: parses arguments and calls the library; nothing else.

Stage modules ``pancreas/cli_<stage>.py`` are imported lazily. See docs/reference/cli.md and
docs/explanation/internals.md#the-command-line-pancreasclipy.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from dataset.common.errors import PancreasError
from pancreas import package_version
from pancreas.cli_options import add_logging_options

# subcommand -> module that implements it
COMMANDS = {
    "synth": "pancreas.cli_synth",
    "preprocess": "pancreas.cli_preprocess",
    "index": "pancreas.cli_index",
    "train": "pancreas.cli_train",
    "export": "pancreas.cli_export",
    "package": "pancreas.cli_package",
    "predict": "pancreas.cli_predict",
    "evaluate": "pancreas.cli_evaluate",
    "qc": "pancreas.cli_qc",
    "download": "pancreas.cli_download",
    "demo": "pancreas.cli_demo",
    "env": "pancreas.cli_env",
}

# top-level packages of this project: a missing one is a bug, not a missing dependency
OWN_PACKAGES = frozenset(
    {"pancreas", "preprocess", "dataset", "sources", "review", "training", "prediction", "evaluation"}
)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pancreas",
        description="Segment the pancreas and pancreatic tumours in abdominal CT (MSD Task07): "
        "synth/download -> preprocess -> index -> train -> predict -> evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_logging_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # the named command; every one for the top-level --help (it lists their help); none for --version
    wanted = [a for a in argv if a in COMMANDS][:1] or (list(COMMANDS) if {"-h", "--help"} & set(argv) else [])
    for name in COMMANDS:
        if name in wanted:
            importlib.import_module(COMMANDS[name]).add_parser(sub)
        else:
            sub.add_parser(name, help=f"see `pancreas {name} --help`")
    for command in sub.choices.values():
        add_logging_options(command, default=argparse.SUPPRESS)  # -v/-q after the command too
        if command.description:  # module docstrings are reST; a terminal wants plain text
            command.description = command.description.replace("``", "")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # TensorFlow's C++ start-up chatter (oneDNN, "failed call to cuInit" on CPU-only
    # machines) alarms users and hides our summaries; warnings and errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        parser = build_parser(argv)
    except ModuleNotFoundError as err:
        return _missing_dependency(err, "pancreas")
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    if args.quiet and hasattr(args, "no_progress"):
        args.no_progress = True
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # highdicom logs each DICOM module it copies into a SEG at INFO
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a reader that left shows here, not as a traceback at the interpreter's exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pancreas env | head`: the reader left; end quietly, as a killed Unix tool
        return _stdout_gone()
    except ModuleNotFoundError as err:  # e.g. TensorFlow, imported when a stage starts
        return _missing_dependency(err, f"pancreas {args.command}")
    except (PancreasError, OSError) as err:  # a refusal or a file problem: one line; anything else is a bug
        print(f"pancreas {args.command}: error: {err}", file=sys.stderr)
        return 2


def _stdout_gone() -> int:
    """Point stdout at /dev/null so the interpreter's last flush cannot raise again; 141 = 128 + SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def _missing_dependency(err: ModuleNotFoundError, prog: str) -> int:
    """One line naming a dependency that is not installed; re-raise if it is this project's own."""
    if (err.name or "").split(".")[0] in OWN_PACKAGES:
        raise err
    print(f"{prog}: error: a dependency is not installed: {err} (install the project: make install)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
