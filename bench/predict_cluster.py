"""Benchmark of ``pancreas predict`` on Dask: 1 local worker against 2 (issue 20: 2 at least 1.7x 1).

Writes 8 small synthetic cases and an untrained U-Net of the default shape saved as a run
(``bench/predict.py``'s ``make_run``; 32x64x64 windows, no mirroring, to keep it short), then
for each worker count predicts them twice:

* ``cold``: ``predict_cases(workers=N)`` as ``pancreas predict --workers N`` runs it, the
  cluster's start, TensorFlow's import and each worker's model load included;
* ``warm``: on a cluster started and warmed first (each worker's model loaded into the worker's
  cache and its graph traced, as after its first case), sent with ``scheduler=``: the scaling.

Every worker has one TensorFlow (and SimpleITK) thread, so the comparison is of worker
processes, not of threads inside one. Prints seconds, cases per second and the speed-up over
1 worker, with the machine and the date; no asserts. ``cluster_rows`` is the function another
bench can call.

    .venv/bin/python bench/predict_cluster.py                  # 8 cases, 1 and 2 workers
    .venv/bin/python bench/predict_cluster.py --workers 1 2 4 --cases 16
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict import make_run  # bench/predict.py
from sheet import cpu_model

from dataset.common.runner import quiet_dask_logs
from prediction.config import PredictConfig
from prediction.predict import predict_cases
from sources.synthetic.msd import make_dataset

WINDOW_ZYX = (32, 64, 64)  # bench/predict.py --small: the default network on a small case
TF_THREADS = 1  # per worker: processes are compared, not threads


def warm_worker(run_dir: str, window_zyx: tuple[int, int, int], batch_size: int, threads: int) -> int:
    """On a worker: bound its threads, load the run's models into its cache, trace them once; its pid."""
    import numpy as np

    from prediction.cluster import configure_worker_threads, worker_models
    from prediction.runs import load_runs

    configure_worker_threads(threads)
    for fn in worker_models(load_runs(run_dir, PredictConfig())):
        fn(np.zeros((batch_size, *window_zyx, 1), np.float32))
    return os.getpid()


def _warm_seconds(images: Path, run: Path, out: Path, workers: int, config: PredictConfig) -> float:
    from distributed import Client, LocalCluster

    from prediction.cluster import worker_memory

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=worker_memory(workers),
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(warm_worker, str(run.resolve()), WINDOW_ZYX, config.batch_size, TF_THREADS)
        t = time.perf_counter()
        summary = predict_cases(run, images, out, config, progress=False, scheduler=cluster.scheduler_address)
        seconds = time.perf_counter() - t
    if summary.failed or summary.n_skipped:
        raise RuntimeError(summary.table())
    return seconds


def _cold_seconds(images: Path, run: Path, out: Path, workers: int, config: PredictConfig) -> float:
    t = time.perf_counter()
    summary = predict_cases(run, images, out, config, progress=False, workers=workers)
    seconds = time.perf_counter() - t
    if summary.failed or summary.n_skipped:
        raise RuntimeError(summary.table())
    return seconds


def cluster_rows(
    images: Path, run: Path, scratch: Path, worker_counts: Sequence[int] = (1, 2), config: PredictConfig | None = None
) -> list[dict[str, float]]:
    """One row per worker count: ``workers``, ``cold_s``, ``warm_s``, ``cases_per_s`` (warm) and
    ``speedup`` (warm, over the first count). ``scratch``: a folder for the label maps.

    ``cold`` needs ``cores // N == 1`` to give each worker one TensorFlow thread, as ``warm``
    does; on a bigger machine its workers get more (``pancreas predict --workers``' rule).
    """
    config = config or PredictConfig(mirror_axes=())
    n_cases = len([p for p in images.iterdir() if p.name.endswith(".nii.gz")])
    rows: list[dict[str, float]] = []
    for n in worker_counts:
        warm = _warm_seconds(images, run, scratch / f"warm_{n}", n, config)
        cold = _cold_seconds(images, run, scratch / f"cold_{n}", n, config)
        rows.append({"workers": n, "cold_s": cold, "warm_s": warm, "cases_per_s": n_cases / warm})
    for row in rows:
        row["speedup"] = rows[0]["warm_s"] / row["warm_s"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    quiet_dask_logs()
    from training.config import ModelConfig

    model = ModelConfig()
    with tempfile.TemporaryDirectory(prefix="bench_predict_cluster_") as tmp:
        root = Path(tmp)
        data = make_dataset(root / "data", args.cases, seed=0, size="small", n_test=0, progress=False)
        make_run(root / "run", model.depth, model.base_filters, WINDOW_ZYX, seed=0)
        rows = cluster_rows(data / "imagesTr", root / "run", root, args.workers)
    print(
        f"{datetime.date.today()}, {cpu_model() or platform.processor() or '?'}, {os.cpu_count()} cores; "
        f"{args.cases} small synthetic cases, untrained U-Net depth {model.depth} / {model.base_filters} filters, "
        f"{'x'.join(map(str, WINDOW_ZYX))} windows, no mirroring, {TF_THREADS} TensorFlow thread per worker"
    )
    head = f"{'workers':>7} {'cold s':>8} {'warm s':>8} {'cases/s':>8} {'speed-up':>9}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['workers']:>7} {r['cold_s']:>8.1f} {r['warm_s']:>8.1f} {r['cases_per_s']:>8.2f} {r['speedup']:>8.2f}x"
        )
    print("cold: --workers N from the start (cluster, TensorFlow import, model loads); warm: after them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
