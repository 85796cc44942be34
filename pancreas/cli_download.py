"""``pancreas download``: fetch MSD Task07_Pancreas (resumable, md5-checked) and extract it safely."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from pancreas.cli_options import add_no_progress_option, add_set_option


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "download", help="download and extract MSD Task07_Pancreas (about 11.5 GB)", description=__doc__
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="target folder (default: out_dir of the config, 'data')"
    )
    parser.add_argument("--url", default=None, help="another mirror of Task07_Pancreas.tar (same md5)")
    parser.add_argument("--md5", default=None, help="expected md5 (with a different archive)")
    parser.add_argument(
        "--config", default=None, help="download YAML (default: the defaults, as in configs/download.yaml)"
    )
    add_set_option(parser)
    add_no_progress_option(parser, "no progress bar")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from dataset.common.configio import load_config
    from dataset.common.locks import LockedError
    from sources.config import DownloadConfig
    from sources.download import DownloadError, download_dataset

    config = load_config(DownloadConfig, args.config, args.overrides)
    changes = {k: v for k, v in (("url", args.url), ("md5", args.md5)) if v is not None}
    config = dataclasses.replace(config, **changes)
    try:
        summary = download_dataset(config, args.out, progress=not args.no_progress)
    except (DownloadError, LockedError) as err:  # one line, exit 2 like every user error
        print(f"pancreas download: error: {err}", file=sys.stderr)
        return 2
    where = summary.dataset_dir or summary.archive.parent
    if summary.already_done:
        print(f"download: {summary.archive.name} already downloaded, verified and extracted in {where}")
        return 0
    print(
        f"download: {summary.downloaded_bytes / 2**20:.1f} MiB fetched, {summary.extracted_members} files "
        f"extracted, {summary.skipped_members} macOS resource files skipped in {summary.seconds:.1f} s"
    )
    print(f"dataset: {where}")
    return 0
