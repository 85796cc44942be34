"""``pancreas synth``: write a synthetic dataset in the MSD Task07_Pancreas layout (or nnU-Net v2's)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dataset.common.errors import UsageError
from pancreas.cli_options import add_no_progress_option, required_group


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("synth", help="write synthetic CT phantoms in the MSD Task07 layout", description=__doc__)
    required_group(parser).add_argument(
        "--out",
        required=True,
        help="dataset folder to write (e.g. data/Task07_Synth): new, or an earlier synth output; "
        "files synth did not write are never replaced",
    )
    parser.add_argument("--cases", type=int, default=8, help="labelled training cases (default 8)")
    parser.add_argument(
        "--test", type=int, default=None, help="test cases (default max(1, cases // 4)); their truth goes to labelsTs/"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size",
        choices=("small", "full", "msd"),
        default="small",
        help="small: ~64-128 px in-plane, 20-60 slices (tests); full: 512x512x~100; "
        "msd: Task07-like grids (512x512, 0.7-5 mm slices, 37-751 slices; pancreas_002 and "
        "pancreas_003 have the fewest and the most) and 0.5-6 cm tumours",
    )
    parser.add_argument(
        "--tumours",
        choices=("profile", "task07"),
        default="profile",
        help="profile: the size's own tumours (small/full: 4-11 mm; msd: Task07's); task07: "
        "Task07's 0.5-6 cm diameters scaled to the phantom's gland (small: about 0.78x)",
    )
    parser.add_argument(
        "--layout",
        choices=("msd", "nnunet"),
        default="msd",
        help="msd: MSD Task07 (default); nnunet: nnU-Net v2 raw dataset (imagesTr/<case>_0000.nii.gz, "
        "a v2 dataset.json without case lists)",
    )
    parser.add_argument(
        "--dicom",
        action="store_true",
        help="also write each test case (imagesTs/) as a DICOM CT series, dicomTs/<case>/IM0001.dcm... "
        "(one file per slice, int16 HU), to try `pancreas predict --format both` on",
    )
    add_no_progress_option(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sources.synthetic.marker import DICOM_DIR, case_file_names
    from sources.synthetic.msd import dataset_params, make_dataset

    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    out = make_dataset(
        args.out,
        args.cases,
        seed=args.seed,
        size=args.size,
        n_test=args.test,
        layout=args.layout,
        progress=not args.no_progress,
        tumours=args.tumours,
        dicom=args.dicom,
    )
    params = dataset_params(args.cases, args.seed, args.size, args.test, args.tumours)
    n_train = args.cases
    print(
        f"wrote {n_train} training + {len(params) - n_train} test cases ({args.size}, seed {args.seed}) "
        f"to {out.resolve()}"
    )
    rows = []
    for i, p in enumerate(params):
        size = "x".join(str(v) for v in p.grid_size)
        spacing = "x".join(f"{v:.2f}" for v in p.spacing_mm)
        dtype = p.dtype + (f" {p.scl_slope:g}/{p.scl_inter:g}" if p.dtype == "int16_scaled" else "")
        split = "train" if i < n_train else "test"
        image = case_file_names(p, args.layout)[0]
        rows.append((image, split, size, spacing, p.orientation, dtype, "yes" if p.anatomy.has_tumour else "no"))
    print("\n".join(table_lines(("case", "split", "size (x,y,z)", "spacing mm", "orient", "dtype", "tumour"), rows)))
    tests = params[n_train:]
    if args.dicom and tests:
        dicom = out.resolve() / DICOM_DIR
        given = dicom / tests[0].name if len(tests) == 1 else dicom  # one series is named after the folder given
        print(f"DICOM series of the test cases in {dicom}/<case>/; to try DICOM SEG output:")
        print(f"  pancreas predict --model RUN --input {given} --out predictions --format both")
    return 0


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell plus two spaces, so no two cells ever touch."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in (header, *rows)]
