"""``pancreas evaluate``: Dice and HD95 (mm) of pancreas and tumour, per case and summarised."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("evaluate", help="score label maps against the truth (Dice, HD95)",
                            description=__doc__ + " Either --pred and --truth, or --run and --store.")
    parser.add_argument("--pred", metavar="DIR", help="folder of predicted <case>.nii.gz")
    parser.add_argument("--truth", metavar="DIR", help="folder of true <case>.nii.gz (e.g. labelsTr)")
    parser.add_argument("--run", dest="run_dir", metavar="RUN_DIR",  # `run` is the handler
                        help="training run: predict its validation cases end to end and score them")
    parser.add_argument("--store", metavar="STORE", help="the store the run was trained on (with --run)")
    parser.add_argument("--config", default=None, help="inference YAML for --run (default: configs/predict.yaml defaults)")
    parser.add_argument("--pred-out", default=None, metavar="DIR",
                        help="where --run writes its predictions (default RUN_DIR/validation_predictions); "
                             "outside the dataset, its truth and the store")
    parser.add_argument("--out", default=None, metavar="report.json",
                        help="write the JSON report here (an existing file only if it is an earlier report)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from inference.evaluate import evaluate_dirs, evaluate_run, report_ok, report_table, write_report

    by_dirs, by_run = bool(args.pred or args.truth), bool(args.run_dir or args.store)
    if by_dirs == by_run or (by_dirs and not (args.pred and args.truth)) or (by_run and not (args.run_dir and args.store)):
        raise ValueError("give either --pred DIR --truth DIR, or --run RUN_DIR --store STORE")
    if by_dirs:
        report = evaluate_dirs(args.pred, args.truth, progress=not args.no_progress)
    else:
        from dataset.common.configio import load_config
        from inference.config import PredictConfig

        config = load_config(PredictConfig, args.config)
        report = evaluate_run(args.run_dir, args.store, config, args.pred_out, progress=not args.no_progress)
    print(report_table(report))
    if args.out:
        write_report(report, args.out)
        print(f"report: {args.out}")
    return 0 if report_ok(report) else 1
