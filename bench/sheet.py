"""Benchmark of the case sheet (``review.sheet``): seconds per sheet of a full-size case.

Builds one synthetic 512 x 512 x 100 CT at (2.5, 0.8, 0.8) mm (a body ellipse in soft tissue, a gland,
a tumour) with a prediction that finds the gland, misses a second tumour and adds a false one, then
writes the sheet as a PNG (choose the point, draw, encode, fsync, rename) and prints the median of
``--repeats`` runs for one label map and for truth against prediction (target: 1 s each), with
``case_statistics`` and ``detect_tumours`` on the same case, the machine and the date.

    .venv/bin/python bench/sheet.py
    .venv/bin/python bench/sheet.py --repeats 5 --keep sheets/   # also keep the two PNGs to look at
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from review.detection import detect_tumours
from review.sheet import write_case_sheet
from review.statistics import case_statistics

SHAPE_ZYX = (100, 512, 512)
SPACING_ZYX = (2.5, 0.8, 0.8)


def ellipsoid(centre_mm, radii_mm) -> np.ndarray:
    """Boolean ellipsoid on the benchmark grid, centre and radii (z, y, x) in mm."""
    axes = [((np.arange(n) * s - c) / r) ** 2 for n, s, c, r in zip(SHAPE_ZYX, SPACING_ZYX, centre_mm, radii_mm)]
    return axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :] <= 1.0


def synthetic_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT in HU, truth and prediction label maps."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    body = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 <= 1.0
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)[None] + rng.normal(0, 20, SHAPE_ZYX).astype(np.float32)
    truth = np.zeros(SHAPE_ZYX, np.uint8)
    gland = ellipsoid((125, 200, 220), (25, 20, 60))
    truth[gland] = 1
    truth[ellipsoid((125, 200, 190), (10, 12, 12))] = 2
    truth[ellipsoid((110, 205, 250), (5, 5, 5))] = 2  # small: the prediction misses it
    pred = np.zeros_like(truth)
    pred[ellipsoid((127, 202, 222), (24, 19, 58))] = 1
    pred[ellipsoid((125, 201, 191), (10, 11, 12))] = 2
    pred[ellipsoid((150, 300, 300), (6, 8, 8))] = 2  # false
    ct[truth == 1] += 60.0
    ct[truth == 2] -= 30.0
    return ct, truth, pred


def median_seconds(run, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), '' elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def report(folder: Path, repeats: int) -> None:
    """Print the machine, then the median seconds of each step, writing the sheets into ``folder``."""
    ct, truth, pred = synthetic_case()
    print(f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine {cpu_model() or '?'} (platform.processor() {platform.processor()!r}, {platform.machine()}),"
        f" {os.cpu_count()} CPUs, Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"case {SHAPE_ZYX[::-1]} voxels (x, y, z) at {SPACING_ZYX[::-1]} mm, median of {repeats}")
    figures = {
        "sheet, one label map": lambda: write_case_sheet(folder / "label.png", ct, SPACING_ZYX, "bench", truth),
        "sheet, truth vs prediction": lambda: write_case_sheet(
            folder / "both.png", ct, SPACING_ZYX, "bench", truth, pred
        ),
        "case_statistics (with HU)": lambda: case_statistics(truth, SPACING_ZYX, ct),
        "detect_tumours": lambda: detect_tumours(truth, pred, SPACING_ZYX),
    }
    for name, run in figures.items():
        print(f"{name:30s} {median_seconds(run, repeats):6.3f} s")
    print("sheets: " + ", ".join(f"{p.name} {p.stat().st_size // 1024} KiB" for p in sorted(folder.glob("*.png"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="folder to keep the two sheets in (default: a deleted temporary one)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report(args.keep, args.repeats)
        print(f"kept in {args.keep}")
        return
    with tempfile.TemporaryDirectory(prefix="sheet-bench-") as folder:
        report(Path(folder), args.repeats)


if __name__ == "__main__":
    main()
