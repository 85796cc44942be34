"""``pancreas predict --workers N`` / ``--scheduler ADDRESS``: the Dask side of the case loop.

The worker task (``predict_on_worker``), its once-per-process model cache and thread bounds, and
the checks the submitting process makes first. See docs/how-to/predict.md#many-cases-on-a-dask-cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import threading
from collections.abc import Sequence
from pathlib import Path

from dataset.common.errors import UsageError
from dataset.common.runner import total_memory
from prediction.cases import CaseInput, PredictError
from prediction.runs import RunSettings, load_predict_fns
from prediction.summary import CaseResult
from prediction.volume import PredictFn

log = logging.getLogger(__name__)

# this process's models: {(run folders, checkpoint, models' fingerprints): one callable per run};
# one entry, so a worker that meets another run's task frees the first run's models
_MODELS: dict[tuple, list[PredictFn]] = {}
_MODELS_LOCK = threading.Lock()  # an external worker may run several threads
LOADS = [0]  # how many times this process loaded models (tests ask the workers; logs)
_THREADS: list[int] = []  # the TensorFlow threads this process was given, once


def check_parallel_options(workers: int | None, scheduler: str | None) -> None:
    """One line for ``--workers`` below 0, or given with ``--scheduler`` (whose cluster has its own)."""
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")
    if workers and scheduler:
        raise UsageError(
            f"--workers {workers} and --scheduler {scheduler} exclude each other: the scheduler's cluster "
            "has its own workers; give one of them"
        )


def on_a_cluster(workers: int | None, scheduler: str | None) -> bool:
    """Whether the cases go to Dask (``--workers 0`` and neither option: in this process, as before)."""
    return bool(workers) or bool(scheduler)


def threads_per_worker(workers: int | None, scheduler: str | None) -> int | None:
    """TensorFlow threads of each local worker: the cores shared out (None: a running cluster's own)."""
    if scheduler or not workers:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def worker_memory(workers: int | None) -> int:
    """Bytes per local worker: the machine's memory shared out (0: no limit, when unknown).

    Not the runner's 4 GiB of preprocessing: one full-size case with the default windows peaks
    at 4.5 GB in TensorFlow (docs/benchmarks.md), and Dask restarts a worker at 95% of its limit.
    """
    total = total_memory()
    return total // max(1, workers or 1) if total else 0


def check_picklable(predict_fns: Sequence[PredictFn] | None) -> None:
    """Model callables given in place of checkpoints must reach the workers by name: a module-level
    function or an instance of a module-level class (pickle's rule). Refused in one line otherwise."""
    for fn in predict_fns or ():
        try:
            pickle.dumps(fn)
        except Exception as err:  # pickle raises PicklingError, AttributeError, TypeError ...
            name = getattr(fn, "__qualname__", type(fn).__qualname__)
            raise PredictError(
                f"model callable {name} cannot be sent to Dask workers ({' '.join(str(err).split())}); "
                "pass a module-level function, or predict without --workers/--scheduler"
            ) from None


def for_workers(run: RunSettings, cases: Sequence[CaseInput], out: Path) -> tuple[RunSettings, list[CaseInput], Path]:
    """Absolute paths: a worker of a running cluster has its own working folder (shared filesystem)."""
    members = tuple(dataclasses.replace(m, run_dir=m.run_dir.resolve()) for m in run.members)
    resolved = [dataclasses.replace(c, path=c.path.resolve()) for c in cases]
    return dataclasses.replace(run, members=members), resolved, out.resolve()


def configure_worker_threads(threads: int, tensorflow: bool = True) -> None:
    """SimpleITK's threads and TensorFlow's intra- and inter-op thread pools in this worker process.

    N local workers each get max(1, cores // N), so they do not oversubscribe the machine
    (``--threads N`` gives each worker N instead). TensorFlow takes them only before its
    runtime starts: set once per process, before the first model loads, by
    ``prediction.threads.set_tensorflow_threads`` as in one process (``tensorflow`` False:
    model callables given in its place, no import).
    """
    from prediction.threads import set_tensorflow_threads
    from preprocess.geometry import set_itk_threads

    set_itk_threads(threads)
    if _THREADS or not tensorflow:
        return
    _THREADS.append(set_tensorflow_threads(threads))


def worker_models(run: RunSettings) -> list[PredictFn]:
    """The run's models, loaded once per worker process and kept for its next cases."""
    key = (
        tuple(str(d) for d in run.run_dirs),
        run.config.checkpoint,
        run.config.precision,
        tuple(m.model for m in run.members),
    )
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()
            _MODELS[key] = load_predict_fns(run.run_dirs, run.config.checkpoint, run.config.precision)
            LOADS[0] += 1
            log.info("worker %d loaded %d model(s) from %s", os.getpid(), len(run.members), run.runs_text)
        return _MODELS[key]


def predict_on_worker(
    case: CaseInput,
    run: RunSettings,
    out: str,
    preview: bool,
    predict_fns: Sequence[PredictFn] | None,
    threads: int | None,
) -> CaseResult:
    """Dask task: one case's files into ``out`` (atomically), its result back; never raises for a bad case.

    It never takes the folder's lock nor writes ``predictions.json``, statistics or
    ``index.html``: the submitting process does, holding the lock for the whole run.
    """
    from prediction.predict import predict_or_report

    if threads is not None:
        configure_worker_threads(threads, tensorflow=predict_fns is None)
    fns = list(predict_fns) if predict_fns is not None else worker_models(run)
    result = predict_or_report(case, fns, run, Path(out), progress=False, preview=preview)
    if not result.error and predict_fns is None:  # Keras models: the threads their seconds were measured with
        from prediction.threads import tensorflow_threads

        result.threads = _THREADS[0] if _THREADS else tensorflow_threads()
    return result
