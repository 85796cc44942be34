"""``pancreas evaluate``: Dice, NSD and HD95 (mm) of pancreas, its label 1 and tumour, per case and summarised."""

from __future__ import annotations

import argparse
from pathlib import Path

from dataset.common.errors import UsageError
from pancreas.cli_options import add_set_option, command_line


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "evaluate",
        help="score label maps against the truth (Dice, NSD, HD95)",
        description=__doc__ + " Either --pred and --truth, or --run and --store.",
    )
    parser.add_argument("--pred", metavar="DIR", help="folder of predicted <case>.nii.gz")
    parser.add_argument("--truth", metavar="DIR", help="folder of true <case>.nii.gz (e.g. labelsTr)")
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="with --pred/--truth: the CTs (<case>.nii.gz or <case>_0000.nii.gz, e.g. imagesTr), for HU "
        "figures and the pictures' background (without it the outlines are drawn on black)",
    )
    parser.add_argument(
        "--run",
        dest="run_dir",
        metavar="RUN_DIR",  # `run` is the handler
        help="training run: predict its validation cases end to end and score them",
    )
    parser.add_argument(
        "--cv",
        nargs="+",
        metavar="RUN_DIR",
        help="cross-validation: one run per fold, in fold order (fold 0 first); predicts every "
        "fold's validation cases with its own model, pools them, chooses postprocessing; "
        "--out is then the CV folder",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="with --cv: the checkpoint scored (default last: best was picked on these cases)",
    )
    parser.add_argument("--store", metavar="STORE", help="the store the run(s) were trained on (with --run or --cv)")
    parser.add_argument(
        "--config",
        default=None,
        help="predict/evaluate YAML: inference settings for --run, NSD tolerances for both "
        "(default: configs/predict.yaml defaults)",
    )
    add_set_option(parser)
    parser.add_argument(
        "--pred-out",
        default=None,
        metavar="DIR",
        help="where --run writes its predictions (default RUN_DIR/validation_predictions); "
        "outside the dataset, its truth and the store",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="report.json|CV_DIR",
        help="write the JSON report here (an existing file only if it is an earlier report); "
        "with --cv: the folder for report.json, report.csv, postprocessing.json and the "
        "out-of-fold predictions (required)",
    )
    parser.add_argument(
        "--no-pictures",
        action="store_true",
        help="do not draw pictures/<case>.png (truth against prediction) beside the report",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from dataset.common.configio import load_config
    from dataset.common.paths import refuse_inside
    from evaluation.evaluate import (
        check_report_path,
        evaluate_dirs,
        evaluate_run,
        report_ok,
        report_table,
        write_report,
    )
    from evaluation.report_files import ReportFiles, check_report_files
    from prediction.config import PredictConfig

    if args.cv:
        if args.pred or args.truth or args.run_dir or not args.store or not args.out:
            raise UsageError("--cv takes --store STORE and --out CV_DIR (and not --pred/--truth/--run)")
        return run_cv(args, load_config(PredictConfig, args.config, args.overrides))
    by_dirs, by_run = bool(args.pred or args.truth), bool(args.run_dir or args.store)
    if (
        by_dirs == by_run
        or (by_dirs and not (args.pred and args.truth))
        or (by_run and not (args.run_dir and args.store))
    ):
        raise UsageError(
            "give either --pred DIR --truth DIR, or --run RUN_DIR --store STORE, or --cv RUN_DIR ... --store STORE"
        )
    if args.images and not by_dirs:
        raise UsageError("--images goes with --pred/--truth (--run reads each case's CT from the store's catalog)")
    config = load_config(PredictConfig, args.config, args.overrides)
    files = None
    if args.out:  # before the work, not after it
        refuse_inside(args.out, report_reads(args), "--out")
        check_report_path(args.out)
        files = ReportFiles.beside(args.out)
        check_report_files(files, pictures=not args.no_pictures)
    pictures = None if args.no_pictures else files
    progress = not args.no_progress
    if by_dirs:
        report = evaluate_dirs(args.pred, args.truth, progress, config, args.images, files=pictures)
    else:
        report = evaluate_run(args.run_dir, args.store, config, args.pred_out, progress=progress, files=pictures)
    print(report_table(report))
    if args.out and files is not None:
        write_report(report, args.out, title="Evaluation", command=command_line())
        print(f"report: {args.out}; {files.csv.name}, {files.html} (open it in a browser)")
    return 0 if report_ok(report) else 1


def report_reads(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """Every folder ``evaluate`` (--pred/--truth or --run) reads, which the report's --out must stay out of."""
    from evaluation.evaluate import dirs_inputs, protected_folders, run_inputs
    from prediction.guard import run_folders

    if args.run_dir is None:
        return dirs_inputs(args.pred, args.truth, args.images)
    cases, pred, _ = run_inputs(args.run_dir, args.store, args.pred_out)
    return [("prediction folder", pred), *protected_folders(args.store, cases), *run_folders([args.run_dir], args.out)]


def run_cv(args: argparse.Namespace, config) -> int:
    from evaluation.crossval import CSV_NAME, REPORT_NAME, evaluate_cv
    from evaluation.evaluate import report_ok, report_table

    report = evaluate_cv(
        args.cv,
        args.store,
        args.out,
        config,
        checkpoint=args.checkpoint,
        progress=not args.no_progress,
        pictures=not args.no_pictures,
        command=command_line(),
    )
    print(report_table(report))
    kept = [r for r, on in report["postprocessing"]["largest_component"].items() if on]
    for region, s in report["postprocessing"]["scores"].items():
        before, after = s["mean_dice_without"], s["mean_dice_with"]
        print(
            f"postprocessing, largest component of {region}: mean Dice {before if before is None else f'{before:.3f}'}"
            f" -> {after if after is None else f'{after:.3f}'} over {s['n_cases']} case(s): "
            f"{'kept' if s['kept'] else 'not kept'}"
        )
    post = report["postprocessing"]["summary"]
    print(
        "with the chosen postprocessing ("
        + (", ".join(kept) or "none")
        + "): mean Dice "
        + ", ".join(f"{r} {post[r]['dice']['mean']:.3f}" for r in post if post[r]["dice"]["mean"] is not None)
    )
    print(
        f"{len(report['folds'])} fold(s), checkpoint {report['checkpoint']}; wrote {args.out}/{REPORT_NAME}, "
        f"{args.out}/{CSV_NAME}, {args.out}/postprocessing.json, out-of-fold predictions in {report['predictions']}"
    )
    print(f"open {args.out}/report.html in a browser")
    return 0 if report_ok(report) else 1
