"""``pancreas predict``: segment CTs with a trained run; label maps on each scan's own grid."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("predict", help="segment CTs (NIfTI file/folder, MSD folder or DICOM series)",
                            description=__doc__)
    parser.add_argument("--model", required=True, metavar="RUN_DIR",
                        help="training run folder (input_contract.json + checkpoints/)")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="a .nii/.nii.gz file, a folder of them, an MSD task folder (its test cases) "
                             "or a DICOM series folder")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for <case>.nii.gz label maps, outside the input's folder; predict replaces "
                             "only files its DIR/predictions.json lists")
    parser.add_argument("--config", default=None,
                        help="inference YAML (default: the defaults, as in configs/predict.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="predict again even if up to date")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from dataset.common.configio import load_config
    from inference.config import PredictConfig
    from inference.predict import predict_cases

    config = load_config(PredictConfig, args.config)
    summary = predict_cases(args.model, args.input, args.out, config, overwrite=args.overwrite,
                            progress=not args.no_progress)
    print(summary.table())
    return 1 if summary.failed else 0
