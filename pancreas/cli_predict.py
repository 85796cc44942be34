"""``pancreas predict``: segment CTs with a trained run, or an ensemble of runs; label maps on each scan's own grid."""

from __future__ import annotations

import argparse

from pancreas.cli_options import add_set_option, required_group, thread_count


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "predict", help="segment CTs (NIfTI file/folder, MSD folder or DICOM series)", description=__doc__
    )
    required = required_group(parser)
    required.add_argument(
        "--model",
        required=True,
        nargs="+",
        metavar="RUN_DIR",
        help="training run folder (input_contract.json + checkpoints/); several: an ensemble "
        "(the mean of their softmax; their input contracts must agree); or one `pancreas package` "
        "MODEL.zip (or the folder it unpacks to): its ensemble, checkpoint and postprocessing",
    )
    required.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help="a .nii/.nii.gz file, a folder of them, an MSD task folder (its test cases) or a DICOM series folder",
    )
    required.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for <case>.nii.gz label maps, outside the input's folder; predict replaces "
        "only files its DIR/predictions.json lists",
    )
    parser.add_argument(
        "--config", default=None, help="inference YAML (default: the defaults, as in configs/predict.yaml)"
    )
    add_set_option(parser)
    parser.add_argument(
        "--no-mirror",
        action="store_true",
        help="no test-time mirroring (default: along the axes each run's trainer flipped)",
    )
    parser.add_argument(
        "--roi",
        choices=("auto", "whole"),
        default=None,
        help="auto (the default): a first pass finds the gland and the full pass covers only it (plus "
        "roi_margin_mm); whole: the full pass over every window of the body crop",
    )
    parser.add_argument(
        "--postprocessing",
        default=None,
        metavar="FILE",
        help="postprocessing.json of `pancreas evaluate --cv` (chosen on the runs' store): "
        "which regions keep only their largest connected component",
    )
    parser.add_argument(
        "--preview",
        action="store_true",
        help="also draw <case>_preview.png (three slices with the outlines) and DIR/index.html",
    )
    parser.add_argument(
        "--format",
        choices=("nifti", "dicom-seg", "both"),
        default=None,
        help="nifti: <case>.nii.gz (the default); dicom-seg: <case>_seg.dcm, a DICOM Segmentation "
        "referencing the source series (DICOM input only); both: the two side by side",
    )
    parser.add_argument("--overwrite", action="store_true", help="predict again even if up to date")
    parser.add_argument(
        "--overwrite-edited",
        action="store_true",
        help="also replace label maps changed since predict wrote them (by default they are kept and the run refused)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Dask worker processes on this machine, each loading the models once and given "
        "cores / N TensorFlow threads (default: none, the cases run in this process; 0: the same)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler (tcp://host:port) to send the cases to instead; "
        "its workers must see --model, --input and --out at the same paths",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        metavar="N",
        help="CPU threads of TensorFlow's thread pools (intra- and inter-op), set before it starts "
        "(default: TensorFlow's own, every core); recorded with each case's timings",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from dataset.common.configio import load_config
    from dataset.common.runner import quiet_dask_logs
    from prediction.cluster import check_parallel_options
    from prediction.config import PredictConfig
    from prediction.predict import predict_cases

    check_parallel_options(args.workers, args.scheduler)
    if (args.workers or args.scheduler) and not getattr(args, "verbose", False):
        quiet_dask_logs()
    config = load_config(PredictConfig, args.config, args.overrides)
    if args.no_mirror:
        config = dataclasses.replace(config, mirror_axes=())
    if args.postprocessing is not None:
        config = dataclasses.replace(config, postprocessing=args.postprocessing)
    if args.format is not None:
        config = dataclasses.replace(config, output_format=args.format)
    if args.roi is not None:
        config = dataclasses.replace(config, roi=args.roi)
    summary = predict_cases(
        args.model,
        args.input,
        args.out,
        config,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        preview=args.preview,
        overwrite_edited=args.overwrite_edited,
        workers=args.workers,
        scheduler=args.scheduler,
        threads=args.threads,
    )
    print(summary.table())
    return 1 if summary.failed else 0
