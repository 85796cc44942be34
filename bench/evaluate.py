"""Benchmark of ``pancreas evaluate`` with and without pictures (target: at most 1.2x).

Writes ``--cases`` full-size synthetic cases (512 x 512 x 100 at 2.5 x 0.8 x 0.8 mm, the
case of ``bench/sheet.py``) as NIfTI truth, prediction and CT, then times
``evaluate_dirs`` with the CTs (HU statistics) twice: without pictures and with
``pictures/<case>.png``; prints both, their ratio, the machine and the date.

    .venv/bin/python bench/evaluate.py --cases 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sheet import SPACING_ZYX, cpu_model, synthetic_case

from evaluation.evaluate import evaluate_dirs
from evaluation.report_files import ReportFiles


def _write(values: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(tuple(reversed(SPACING_ZYX)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    ct, truth, pred = synthetic_case()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.cases):
            _write(truth, root / "truth" / f"case_{i}.nii.gz")
            _write(pred, root / "pred" / f"case_{i}.nii.gz")
            _write(ct.astype(np.int16), root / "images" / f"case_{i}.nii.gz")
        seconds = {}
        for name, files in (("without pictures", None), ("with pictures", ReportFiles.beside(root / "r.json"))):
            start = time.perf_counter()
            evaluate_dirs(root / "pred", root / "truth", progress=False, images_dir=root / "images", files=files)
            seconds[name] = time.perf_counter() - start
    cpu = platform.processor() or cpu_model() or "?"
    print(f"evaluate, {args.cases} case(s) of {truth.shape[::-1]} voxels (x, y, z), with their CTs")
    for name, s in seconds.items():
        print(f"  {name:<17} {s:7.2f} s  ({s / args.cases:.2f} s per case)")
    ratio = seconds["with pictures"] / seconds["without pictures"]
    print(f"  ratio            {ratio:7.2f}x  (target <= 1.2x)")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; {datetime.date.today()}")


if __name__ == "__main__":
    main()
