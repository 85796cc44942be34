"""Benchmark `pancreas preprocess` on full-size synthetic CTs (512x512, ~100 slices of 2-3 mm).

Prints seconds per case and cases per second with 1 and 2 worker processes (one SimpleITK
thread each), the parallel efficiency, peak RSS per worker, shard size against the
input .nii.gz size, and a per-step breakdown of one case. Goals: <= 2 core-seconds per
case, >= 85% efficiency at 2 workers, <= 1.5 GB peak RSS per worker.

    .venv/bin/python bench/preprocess.py --cases 4 [--data DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_rss_mb() -> float:
    """Current resident memory, then reset the peak counter (Linux: clear_refs 5)."""
    rss = _status_mb("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return rss


def worker_peak_rss_mb() -> float:
    """Peak resident memory since the last reset (VmHWM; ru_maxrss would include the
    parent's memory inherited at fork)."""
    return _status_mb("VmHWM")


def run_with_workers(data: Path, store: Path, workers: int) -> tuple[float, list[float], list[float], int]:
    """(wall seconds of the case loop, idle and peak RSS MB of each worker, cases done)."""
    from distributed import Client, LocalCluster

    from preprocess.driver import run_preprocess

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit="4GiB",
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        # import the pipeline in every worker before the clock starts; note the idle memory
        client.run(lambda: __import__("preprocess.pipeline") and None)
        idle = sorted(client.run(worker_rss_mb).values())
        t = time.perf_counter()
        summary = run_preprocess(data, store, scheduler=cluster.scheduler_address, progress=False, itk_threads=1)
        seconds = time.perf_counter() - t
        rss = sorted(client.run(worker_peak_rss_mb).values())
    if summary.failed:
        raise SystemExit(f"benchmark run failed: {summary.failures}")
    return seconds, idle, rss, summary.done


def step_breakdown(data: Path, scratch: Path) -> dict[str, float]:
    """Seconds per step for the first case, in this process with one SimpleITK thread."""
    from preprocess.config import PreprocessConfig
    from preprocess.geometry import set_itk_threads
    from preprocess.intensity import window_to_int16
    from preprocess.pipeline import preprocess_file, write_case
    from sources.msd import load_msd_dataset

    set_itk_threads(1)
    config = PreprocessConfig()
    case = load_msd_dataset(data).cases[0]
    out = preprocess_file(case.image, case.label, config)
    steps = {
        "read + validate": out.seconds["read"],
        "reorient + resample (image, label)": out.seconds["resample"],
        "crop (body box)": out.seconds["crop"],
    }
    # window alone, measured on a volume of the stored size (the intensity step repeats it)
    import numpy as np

    hu = np.random.default_rng(0).normal(0, 300, out.levels.shape).astype(np.float32)
    t = time.perf_counter()
    window_to_int16(hu, config.window_hu)
    steps["window (alone, for reference)"] = time.perf_counter() - t
    steps["window + equalise + normalise (LUT)"] = out.seconds["intensity"]
    steps["write shard"] = write_case(scratch / "one.h5", case.case_id, out)
    steps["total"] = sum(v for k, v in steps.items() if "reference" not in k)
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="full-size synthetic cases (default 4)")
    parser.add_argument("--data", default=None, help="reuse/create the synthetic dataset here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from dataset.common.runner import quiet_dask_logs
    from sources.synthetic.msd import make_dataset

    quiet_dask_logs()

    scratch = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    data = Path(args.data) if args.data else scratch / "data"
    try:
        if not (data / "dataset.json").exists():
            t = time.perf_counter()
            make_dataset(data, args.cases, seed=0, size="full", n_test=0, progress=False)
            print(f"generated {args.cases} full-size cases in {time.perf_counter() - t:.1f} s")
        for path in data.rglob("*.nii*"):  # same page-cache state for both runs
            path.read_bytes()
        results = {}
        for workers in (1, 2):
            results[workers] = run_with_workers(data, scratch / f"store{workers}", workers)
        n = results[1][3]
        t1, t2 = results[1][0], results[2][0]
        print(f"\n{n} cases, 1 SimpleITK thread per worker")
        print(
            f"{'workers':>8}{'s/case':>10}{'cases/s':>10}{'core-s/case':>13}"
            f"{'peak RSS/worker MB':>22}{'idle RSS MB':>14}"
        )
        for w, (sec, idle, rss, _) in results.items():
            print(
                f"{w:>8}{sec / n:>10.2f}{n / sec:>10.2f}{sec * w / n:>13.2f}"
                f"{', '.join(f'{r:.0f}' for r in rss):>22}{', '.join(f'{r:.0f}' for r in idle):>14}"
            )
        print(f"parallel efficiency at 2 workers: {t1 / (2 * t2):.0%}  (goal >= 85%)")
        inputs = sum(p.stat().st_size for p in data.rglob("*.nii*") if not p.name.startswith("."))
        shards = sum(p.stat().st_size for p in (scratch / "store1" / "cases").glob("*.h5"))
        print(
            f"shards {shards / 2**20:.1f} MiB vs input .nii.gz (image + label) {inputs / 2**20:.1f} MiB "
            f"({shards / inputs:.2f}x)"
        )
        print("\nper step, first case, one thread:")
        for step, sec in step_breakdown(data, scratch).items():
            print(f"  {step:<40}{sec:>7.2f} s")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
