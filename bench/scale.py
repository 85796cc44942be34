"""Benchmark of the whole dataset: every stage on N Task07-like cases, and how each scales.

Synthesises N training cases with ``make_dataset(size="msd")`` (Task07's grids: 512x512
at 0.6-1.0 mm, 37-751 slices; with N >= 3 the 37-slice and the 751-slice 0.7 mm case are
among them; not timed), then runs and times

* ``preprocess`` (``run_preprocess``) and ``index`` (``build_index``, 5 folds or N if
  fewer) on one Dask cluster made by the library's own ``dask_client`` (or ``--scheduler``);
* the training input pipeline (``training.pipeline.training_dataset``) over the whole
  store: every case's training rows (the union of the folds' manifests), shuffled across
  all cases, at least ``--patches`` augmented patches;
* ``predict_cases`` of the largest case with an untrained U-Net (one model, no mirroring;
  ``--predict-model small`` or ``skip`` when the default network is too slow on a CPU).

Per stage it prints wall time, core-seconds, the per-case cost fitted against the case's
voxel count (seconds per million voxels and an intercept, least squares), the mean cost
per million voxels of the first 20 cases against all N (equal means linear scaling),
and the peak resident memory of every worker process with the case it happened on;
then the store's size against the inputs', and the elastic deformation's share of the
index. The last table is meant for the README.

Core-seconds: for the Dask stages, the sum of the per-case task seconds (``preprocess``:
what the catalog records; ``index``: each augmentation task's wall time inside its
one-thread worker) plus this process's CPU time (the index classifies labels here); for
the input profile and predict, which run here, this process's CPU time (every thread).

How the workers are measured without touching the library: a Dask ``WorkerPlugin``
(``TaskMeter``) sees every task start and finish in its worker process; at the start it
resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), at the end it reads
``VmHWM``, the task's CPU time and wall time, and names the case from the task key
(``run_cases`` keys are ``<stage>-<case>-<run id>``). For the index it also wraps
``dataset.index.augment.apply`` (the elastic deformation) with a timer, in the workers
only, and restores it on teardown.

    .venv/bin/python bench/scale.py --cases 3 --workers 2            # includes the 751-slice case
    .venv/bin/python bench/scale.py --cases 282 --predict-model small  # Task07's size (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

FIRST = 20  # the "first cases" of the linearity check
MEMORY_GOAL_MB = 1500  # per worker (bench/preprocess.py's goal)
PREDICT_MODELS = {"default": (4, 16), "small": (3, 4)}  # (depth, base filters); "skip" runs none
METER = "bench-scale-meter"
WORKER_STAGES = ("preprocess", "index")  # stages whose cases run in Dask workers (the memory goal's subject)


# ----------------------------------------------------------------------------- memory of a process


def status_mb(field_name: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB; NaN where there is none."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    """CPU time of this process, every thread, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- the worker plugin


def case_of(key) -> tuple[str, str]:
    """(stage, case id) of a ``run_cases`` task key ``<stage>-<case>-<pid>-<ns>``."""
    stage, _, rest = str(key).partition("-")
    return stage, rest.rsplit("-", 2)[0]


class TaskMeter(WorkerPlugin):
    """Per task: wall and CPU seconds, peak RSS, elastic-deformation seconds (one thread per worker)."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.open: dict = {}
        self.elastic_s = 0.0
        self.reset_ok = True
        self._original_apply = None

    def setup(self, worker) -> None:
        self.pid = os.getpid()

    def teardown(self, worker) -> None:
        if self._original_apply is not None:
            import dataset.index.augment as augment

            augment.apply = self._original_apply

    def _hook_elastic(self) -> None:
        """Time every call of the elastic deformation in this worker (once)."""
        import dataset.index.augment as augment

        if self._original_apply is not None:
            return
        original = self._original_apply = augment.apply

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.elastic_s += time.perf_counter() - t

        augment.apply = timed

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing":
            if str(key).startswith("augment-"):
                self._hook_elastic()
            self.reset_ok = reset_peak() and self.reset_ok
            self.elastic_s = 0.0
            self.open[key] = (time.perf_counter(), time.process_time())
        elif start == "executing" and key in self.open:
            t, cpu = self.open.pop(key)
            stage, case = case_of(key)
            self.records.append(
                {
                    "stage": stage,
                    "case": case,
                    "pid": self.pid,
                    "ok": finish == "memory",
                    "wall_s": time.perf_counter() - t,
                    "cpu_s": time.process_time() - cpu,
                    "peak_mb": status_mb("VmHWM"),
                    "elastic_s": self.elastic_s,
                    "reset_ok": self.reset_ok,
                }
            )


def take_records(dask_worker) -> list[dict]:
    """``client.run`` target: this worker's task records, emptied."""
    meter = dask_worker.plugins[METER]
    records, meter.records = meter.records, []
    return records


def worker_rss_mb() -> float:
    return status_mb("VmRSS")


def collect(client) -> list[dict]:
    return [r for records in client.run(take_records).values() for r in records]


# ----------------------------------------------------------------------------- results


@dataclass
class Stage:
    """What one stage cost; ``per_case`` is {case id: seconds}, fitted against ``voxels``."""

    name: str
    wall_s: float
    core_s: float
    voxels: str = "input"  # which voxel count the per-case cost is set against: "input" or "stored"
    per_case: dict[str, float] = field(default_factory=dict)
    peaks: list[dict] = field(default_factory=list)  # per worker: {"pid", "peak_mb", "case"}
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float | str] = field(default_factory=dict)


@dataclass
class Case:
    case_id: str
    image: Path
    input_zyx: tuple[int, int, int]
    input_bytes: int
    stored_zyx: tuple[int, int, int] | None = None
    augmented: int = 0  # elastically deformed training patches the index computes for it

    def mvox(self, which: str) -> float:
        shape = self.input_zyx if which == "input" else self.stored_zyx
        return float(np.prod(shape)) / 1e6 if shape else float("nan")


def linear_fit(mvox: list[float], seconds: list[float]) -> tuple[float, float]:
    """(seconds per Mvox, intercept seconds) by least squares; NaN with fewer than 2 distinct sizes."""
    if len(set(mvox)) < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.asarray(mvox), np.asarray(seconds), 1)
    return float(slope), float(intercept)


def per_mvox(stage: Stage, cases: list[Case], first: int | None = None) -> float:
    """Mean of seconds / Mvox over the stage's cases (in dataset order; the first ``first``)."""
    ids = [c for c in cases if c.case_id in stage.per_case][:first]
    rates = [stage.per_case[c.case_id] / c.mvox(stage.voxels) for c in ids]
    return float(np.mean(rates)) if rates else float("nan")


def worker_peaks(records: list[dict]) -> list[dict]:
    """Each worker process's highest task peak and the case it happened on."""
    best: dict[int, dict] = {}
    for r in records:
        if r["pid"] not in best or r["peak_mb"] > best[r["pid"]]["peak_mb"]:
            best[r["pid"]] = {"pid": r["pid"], "peak_mb": r["peak_mb"], "case": r["case"]}
    return sorted(best.values(), key=lambda p: -p["peak_mb"])


# ----------------------------------------------------------------------------- the stages


def synthesise(data: Path, n: int, seed: int, size: str) -> bool:
    """Write the dataset unless an earlier ``--keep`` run left it; True when written now."""
    from sources.synthetic.msd import make_dataset

    if (data / "dataset.json").is_file():
        import json

        meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
        if meta.get("numTraining") == n and f"seed {seed}, size {size})" in meta.get("description", ""):
            print(f"synth: reusing {data} ({n} cases)")
            return False
        raise SystemExit(
            f"{data} holds another synthetic dataset ({meta.get('description')}, "
            f"{meta.get('numTraining')} cases): choose another --out"
        )
    t = time.perf_counter()
    make_dataset(data, n, seed=seed, size=size, n_test=0, progress=False)
    print(f"synth: {n} --size {size} cases in {time.perf_counter() - t:.0f} s (not timed below)", flush=True)
    return True


def read_cases(data: Path) -> list[Case]:
    """The training cases with their input grids (from the headers) and input file sizes."""
    import SimpleITK as sitk

    from sources.msd import load_msd_dataset

    cases = []
    for case in load_msd_dataset(data).cases:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.image))
        reader.ReadImageInformation()
        x, y, z = reader.GetSize()
        size = sum(p.stat().st_size for p in (case.image, case.label) if p is not None)
        cases.append(Case(case.case_id, case.image, (z, y, x), size))
    return cases


def warm_up(client, module: str) -> list[float]:
    """Import ``module`` in every worker before the clock starts; their idle RSS (MB)."""
    client.run(lambda: __import__(module) and None)
    return sorted(client.run(worker_rss_mb).values())


def run_preprocess_stage(client, data: Path, store: Path, cases: list[Case], itk_threads: int | None) -> Stage:
    from dataset.contract.catalog import read_catalog
    from preprocess.driver import run_preprocess

    idle = warm_up(client, "preprocess.pipeline")
    t, cpu = time.perf_counter(), cpu_seconds()
    summary = run_preprocess(data, store, scheduler=client.scheduler.address, progress=False, itk_threads=itk_threads)
    wall, parent_cpu = time.perf_counter() - t, cpu_seconds() - cpu
    records = [r for r in collect(client) if r["stage"] == "preprocess"]
    catalog = read_catalog(store)
    for c in cases:
        c.stored_zyx = catalog.cases[c.case_id].shape_zyx
    per_case = {cid: r.seconds for cid, r in catalog.cases.items() if r.done}
    stage = Stage("preprocess", wall, sum(per_case.values()), "input", per_case, worker_peaks(records))
    stage.notes.append(
        f"worker idle RSS {', '.join(f'{m:.0f}' for m in idle)} MB; this process "
        f"{parent_cpu:.1f} core-s; worker CPU {sum(r['cpu_s'] for r in records):.1f} s"
    )
    stage.notes += [f"FAILED {cid}: {reason}" for cid, reason in summary.failures]
    stage.notes += _reset_note(records)
    return stage


def run_index_stage(client, store: Path, cases: list[Case], folds: int) -> tuple[Stage, dict]:
    from dataset.index.build import build_index
    from dataset.index.config import IndexConfig

    warm_up(client, "dataset.index.build")
    t, cpu = time.perf_counter(), cpu_seconds()
    summary = build_index(store, IndexConfig(folds=folds), scheduler=client.scheduler.address, progress=False)
    wall, parent_cpu = time.perf_counter() - t, cpu_seconds() - cpu
    records = [r for r in collect(client) if r["stage"] == "augment"]
    tasks_s = sum(r["wall_s"] for r in records)
    stage = Stage(
        "index",
        wall,
        parent_cpu + tasks_s,
        "stored",
        {r["case"]: r["wall_s"] for r in records if r["ok"]},
        worker_peaks(records),
    )
    elastic = sum(r["elastic_s"] for r in records)
    augment_wall = _busiest_worker_s(records)
    fold = summary.per_fold[0]
    rows = all_training_rows(store, folds)
    for c in cases:
        c.augmented = sum(1 for r in rows if r["case_id"] == c.case_id and r["variant"])
    n_augmented = sum(c.augmented for c in cases)
    stage.notes.append(
        f"{summary.folds} folds, {summary.cases} cases; fold 0: {fold.train_entries} train entries "
        f"({fold.train_augmented_entries} augmented), {fold.val_entries} val; {summary.augmented_built} augmented "
        f"shards built; classification {summary.classify_seconds_per_case:.2f} s/case in this process "
        f"({parent_cpu:.1f} core-s here); augmentation tasks {tasks_s:.1f} s (their CPU "
        f"{sum(r['cpu_s'] for r in records):.1f} s)"
    )
    stage.notes.append(
        f"{n_augmented} augmented patches in all: {tasks_s / max(n_augmented, 1):.2f} s per patch "
        f"(elastic deformation {elastic / max(n_augmented, 1):.2f} s); a case's cost follows its "
        "foreground patches, not its voxels"
    )
    stage.notes += _reset_note(records)
    share = {
        "elastic_s": elastic,
        "elastic_core_share": elastic / max(stage.core_s, 1e-9),
        "augment_wall_s": augment_wall,
        "augment_wall_share": augment_wall / max(wall, 1e-9),
    }
    return stage, share


def _busiest_worker_s(records: list[dict]) -> float:
    """The augmentation's wall time, about: the task seconds of the busiest worker."""
    by_pid: dict[int, float] = {}
    for r in records:
        by_pid[r["pid"]] = by_pid.get(r["pid"], 0.0) + r["wall_s"]
    return max(by_pid.values(), default=0.0)


def _reset_note(records: list[dict]) -> list[str]:
    if all(r["reset_ok"] for r in records):
        return []
    return ["could not reset VmHWM in the workers: peaks are each worker's highest so far, not per task"]


def all_training_rows(store: Path, folds: int) -> list[dict]:
    """Every case's training rows once (a case trains in K-1 folds, with the same rows in each)."""
    from dataset.contract.manifest import manifest_path, read_manifest

    taken: dict[str, list[dict]] = {}
    for k in range(folds):
        fold_rows: dict[str, list[dict]] = {}
        for row in read_manifest(manifest_path(store, "train", k)):
            fold_rows.setdefault(row["case_id"], []).append(row)
        for case_id, rows in fold_rows.items():
            taken.setdefault(case_id, rows)
    return [row for case_id in sorted(taken) for row in taken[case_id]]


def run_profile_stage(store: Path, folds: int, patches: int) -> Stage:
    from training.config import TrainConfig
    from training.pipeline import index_stream, input_thread_count, measure_patches_per_second, training_dataset

    config = TrainConfig()
    rows = all_training_rows(store, folds)
    batches = math.ceil(patches / config.batch_size)
    reset_peak()
    rss0 = status_mb("VmRSS")
    t, cpu = time.perf_counter(), cpu_seconds()
    dataset = training_dataset(store, rows, config)
    rate = measure_patches_per_second(dataset, batches)
    wall, core = time.perf_counter() - t, cpu_seconds() - cpu
    draws = [int(i) for _, i in index_stream(len(rows), config.seed).take((batches + 2) * config.batch_size)]
    drawn = len({rows[i]["case_id"] for i in draws})
    n_cases = len({r["case_id"] for r in rows})
    stage = Stage(
        "train input", wall, core, peaks=[{"pid": os.getpid(), "peak_mb": status_mb("VmHWM"), "case": "the process"}]
    )
    stage.notes.append(
        f"{rate['patches']} patches of {tuple(int(rows[0][k]) for k in ('dz', 'dy', 'dx'))} in "
        f"{rate['seconds']:.1f} s = {rate['patches_per_s']:.0f} patches/s, {input_thread_count(config.input_threads)} "
        f"input thread(s), batch {config.batch_size}; {len(rows)} rows of {n_cases} cases, draws touched "
        f"{drawn} of them; {len(os.listdir('/proc/self/fd'))} open files; RSS before {rss0:.0f} MB"
    )
    stage.extra["patches_per_s"] = rate["patches_per_s"]
    return stage


def _bench_predict():
    """bench/predict.py as a module (its untrained run directory and warm-up), not duplicated here."""
    spec = importlib.util.spec_from_file_location("bench_predict", ROOT / "bench" / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_predict_stage(scratch: Path, case: Case, model: str) -> Stage:
    from prediction.config import PredictConfig
    from prediction.predict import CaseInput, predict_cases

    bench_predict = _bench_predict()
    depth, filters = PREDICT_MODELS[model]
    window = bench_predict.DEFAULT_WINDOW_ZYX
    config = PredictConfig(mirror_axes=())
    run = scratch / "run"
    bench_predict.make_run(run, depth, filters, window, seed=0)
    predict_fn = bench_predict.warmed_up(run, window, config.batch_size)
    rss0 = status_mb("VmRSS")
    reset_peak()
    t, cpu = time.perf_counter(), cpu_seconds()
    summary = predict_cases(
        run,
        [CaseInput(case.case_id, case.image)],
        scratch / "predictions",
        config,
        predict_fn=predict_fn,
        progress=False,
    )
    wall, core = time.perf_counter() - t, cpu_seconds() - cpu
    stage = Stage(
        "predict",
        wall,
        core,
        "input",
        peaks=[{"pid": os.getpid(), "peak_mb": status_mb("VmHWM"), "case": case.case_id}],
    )
    stage.extra["model"] = model
    if summary.failed:
        stage.notes.append(f"FAILED: {summary.table()}")
        return stage
    result = summary.results[0]
    stage.per_case[case.case_id] = sum(result.seconds.values())
    stage.notes.append(
        f"{case.case_id}: input {'x'.join(map(str, case.input_zyx))} (z, y, x), stored "
        f"{'x'.join(map(str, result.shape_zyx))}; {model} untrained U-Net (depth {depth}, {filters} filters), "
        f"{'x'.join(map(str, window))} windows, {result.n_windows} windows, no mirroring; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        + f"; RSS {rss0:.0f} MB before (TensorFlow, the model, the input profile)"
    )
    return stage


# ----------------------------------------------------------------------------- printing


def folder_mb(path: Path, pattern: str = "*") -> float:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file()) / 2**20


def print_cases(cases: list[Case], stages: list[Stage]) -> None:
    head = f"{'case':<14}{'input z,y,x':>16}{'Mvox':>7}{'stored z,y,x':>16}{'Mvox':>7}{'aug':>5}" + "".join(
        f"{s.name + ' s':>15}" for s in stages
    )
    print("\nper case\n" + head + "\n" + "-" * len(head))
    for c in cases:
        stored = "x".join(map(str, c.stored_zyx)) if c.stored_zyx else "-"
        cells = "".join(f"{s.per_case[c.case_id]:>15.2f}" if c.case_id in s.per_case else f"{'-':>15}" for s in stages)
        print(
            f"{c.case_id:<14}{'x'.join(map(str, c.input_zyx)):>16}{c.mvox('input'):>7.1f}{stored:>16}"
            f"{c.mvox('stored'):>7.1f}{c.augmented:>5}{cells}"
        )


def print_workers(stages: list[Stage]) -> None:
    print("\npeak RSS per process (MB, the case it happened on)")
    for s in stages:
        cells = ", ".join(
            f"pid {p['pid']}: {p['peak_mb']:.0f} ({p['case']})"
            + (" OVER the 1.5 GB goal" if p["peak_mb"] > MEMORY_GOAL_MB and s.name in WORKER_STAGES else "")
            for p in s.peaks
        )
        print(f"  {s.name:<12} {cells or '-'}")


def table(stages: list[Stage], cases: list[Case], n: int, workers: str) -> str:
    first = min(FIRST, n)
    lines = [
        f"| stage (N = {n}, {workers}) | wall s | core-s | s per Mvox (fit) | intercept s "
        f"| s/Mvox, first {first} | s/Mvox, all {n} | peak RSS MB (case) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        slope, intercept = linear_fit(
            [c.mvox(s.voxels) for c in cases if c.case_id in s.per_case],
            [s.per_case[c.case_id] for c in cases if c.case_id in s.per_case],
        )
        top = s.peaks[0] if s.peaks else None
        peak = f"{top['peak_mb']:.0f} ({top['case']})" if top else "-"
        several = len(s.per_case) > 1
        # with N <= 20 the first 20 are all N: "-" rather than a copy of the next column
        first_rate = per_mvox(s, cases, FIRST) if several and len(s.per_case) > FIRST else math.nan
        cells = [
            f"{s.wall_s:.1f}",
            f"{s.core_s:.1f}",
            _num(slope, 3),
            _num(intercept, 2),
            _num(first_rate, 3),
            _num(per_mvox(s, cases), 3),
            peak,
        ]
        label = s.name + (f", {s.extra['model']} U-Net" if "model" in s.extra else "")
        if s.per_case:
            label += f" (per {s.voxels} Mvox)" if several else f" ({next(iter(s.per_case))} only, per {s.voxels} Mvox)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float, digits: int) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=282, help="training cases (default 282, Task07's count)")
    p.add_argument("--workers", type=int, default=2, help="local Dask worker processes (default 2)")
    p.add_argument("--scheduler", default=None, help="a running Dask scheduler's address (ignores --workers)")
    p.add_argument("--folds", type=int, default=5, help="index folds (default 5; N if fewer cases)")
    p.add_argument("--patches", type=int, default=2000, help="augmented patches drawn by the input profile")
    p.add_argument(
        "--predict-model",
        choices=(*PREDICT_MODELS, "skip"),
        default="default",
        help="untrained U-Net for predict: default (depth 4, 16 filters), small (3, 4) or skip",
    )
    p.add_argument("--seed", type=int, default=0, help="synth seed")
    p.add_argument(
        "--size",
        choices=("msd", "full", "small"),
        default="msd",
        help="synth size (default msd; small: a smoke test of this script)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="work here: a new folder, or one holding only data/ of an earlier --keep run (reused)",
    )
    p.add_argument("--keep", action="store_true", help="keep the synthetic data, store and predictions")
    args = p.parse_args(argv)
    if args.cases < 2:
        p.error("--cases must be >= 2 (the index needs a training and a validation case)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from dataset.common.runner import dask_client, quiet_dask_logs

    quiet_dask_logs()
    scratch = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    store = scratch / "store"
    for name in ("store", "run", "predictions"):
        if (scratch / name).exists():
            raise SystemExit(f"{scratch / name} exists: remove it or choose another --out")
    created = [scratch] if not args.out or not scratch.exists() else [store, scratch / "run", scratch / "predictions"]
    folds = min(args.folds, args.cases)
    stages: list[Stage] = []
    try:
        if synthesise(scratch / "data", args.cases, args.seed, args.size) and created[0] != scratch:
            created.append(scratch / "data")
        cases = read_cases(scratch / "data")
        itk_threads = None if args.scheduler else max(1, (os.cpu_count() or 1) // args.workers)
        with dask_client(args.workers, args.scheduler) as client:
            client.register_plugin(TaskMeter(), name=METER)
            n_workers = len(client.scheduler_info()["workers"])
            print(f"{n_workers} Dask worker process(es), 1 thread each; {os.cpu_count()} CPUs here", flush=True)
            stages.append(run_preprocess_stage(client, scratch / "data", store, cases, itk_threads))
            print(f"preprocess: {stages[-1].wall_s:.0f} s", flush=True)
            index, share = run_index_stage(client, store, cases, folds)
            stages.append(index)
            print(f"index: {index.wall_s:.0f} s", flush=True)
        stages.append(run_profile_stage(store, folds, args.patches))
        print(f"train input: {stages[-1].wall_s:.0f} s", flush=True)
        largest = max(cases, key=lambda c: c.mvox("input"))
        if args.predict_model == "skip":
            print("predict: skipped (--predict-model skip)")
        else:
            stages.append(run_predict_stage(scratch, largest, args.predict_model))
        report(args, scratch, stages, cases, share, n_workers, folds)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            for path in created:
                shutil.rmtree(path, ignore_errors=True)
    return 0 if not any(n.startswith("FAILED") for s in stages for n in s.notes) else 1


def report(
    args, scratch: Path, stages: list[Stage], cases: list[Case], share: dict, n_workers: int, folds: int
) -> None:
    store = scratch / "store"
    print_cases(cases, [s for s in stages if s.per_case and s.name != "predict"])
    print_workers(stages)
    print("\nnotes")
    for s in stages:
        for note in s.notes:
            print(f"  {s.name}: {note}")
    inputs = sum(c.input_bytes for c in cases) / 2**20
    shards, augmented = folder_mb(store / "cases", "*.h5"), folder_mb(store / "index" / "augmented", "*.h5")
    total = folder_mb(store)
    print(
        f"\nstore {total:.0f} MiB (case shards {shards:.0f}, augmented {augmented:.0f}) vs input .nii.gz "
        f"(image + label) {inputs:.0f} MiB: {total / inputs:.2f}x (shards alone {shards / inputs:.2f}x)"
    )
    print(
        f"index: elastic deformation {share['elastic_s']:.1f} s = {share['elastic_core_share']:.0%} of its "
        f"core-seconds; the busiest worker's augmentation tasks {share['augment_wall_s']:.1f} s = "
        f"{share['augment_wall_share']:.0%} of its wall time"
    )
    workers = f"{n_workers} workers" if not args.scheduler else f"scheduler {args.scheduler}"
    machine = f"{os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB"
    print(f"\n{table(stages, cases, len(cases), workers)}")
    print(
        f"\n({machine}; synth --size {args.size} seed {args.seed}; index {folds} folds; train input "
        f"{stages[2].extra['patches_per_s']:.0f} patches/s; predict: "
        + (
            "skipped"
            if args.predict_model == "skip"
            else f"{args.predict_model} untrained U-Net, largest case, no mirroring"
        )
        + f"; store {total / inputs:.2f}x the inputs; "
        f"elastic deformation {share['elastic_core_share']:.0%} of the index's core-s)"
    )


if __name__ == "__main__":
    sys.exit(main())
