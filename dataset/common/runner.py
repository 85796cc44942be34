"""The one way parallel stages run their cases: ``run_cases`` on Dask (or in-process); ``dask_client``.

Worker processes with one thread each (h5py serialises every call). See
docs/explanation/internals.md#the-runner-datasetcommonrunnerpy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from dataset.common.errors import PancreasError

if TYPE_CHECKING:
    import distributed

log = logging.getLogger(__name__)

WORKER_MEMORY_LIMIT = 4 << 30  # bytes per local worker process, at most (a 751-slice CT peaks at 1.3 GB)
SCHEDULER_TIMEOUT_S = 30


class SchedulerError(PancreasError, ValueError):
    """The Dask scheduler given with ``--scheduler`` cannot be reached."""


def total_memory() -> int:
    """Physical memory in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def worker_memory_limit(workers: int) -> int:
    total = total_memory()
    return min(WORKER_MEMORY_LIMIT, total // workers) if total else WORKER_MEMORY_LIMIT


@contextlib.contextmanager
def dask_client(
    workers: int | None = None, scheduler: str | None = None, memory_limit: int | None = None
) -> Iterator[distributed.Client]:
    """Yield a ``distributed.Client``; a local cluster is closed on exit.

    ``scheduler`` (e.g. ``tcp://host:8786``) connects to a running cluster and ignores
    ``workers``; otherwise ``workers`` processes (default: all cores) start here, each
    limited to ``memory_limit`` bytes (default ``worker_memory_limit``; 0: no limit).
    """
    from distributed import Client, LocalCluster

    if scheduler:
        log.info("connecting to Dask scheduler %s", scheduler)
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise SchedulerError(f"cannot reach the Dask scheduler at {scheduler} ({reason})") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            memory_limit=worker_memory_limit(n) if memory_limit is None else memory_limit,
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        log.info("started a local Dask cluster of %d worker process(es)", n)
        yield client


def quiet_dask_logs() -> None:
    """Dask logs every worker start and stop at INFO; keep only its warnings (CLI, benchmark)."""
    import distributed  # noqa: F401  (sets its loggers' levels on import)

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.WARNING)


T = TypeVar("T")


def one_line(err: BaseException) -> str:
    """An exception as one short line (ITK and Dask messages span many)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def run_cases(
    fn: Callable[..., Any],
    items: Iterable[T],
    args: tuple = (),
    *,
    name: str,
    key: Callable[[T], str] = str,
    workers: int | None = None,
    scheduler: str | None = None,
    memory_limit: int | None = None,
) -> Iterator[tuple[T, Any, str | None]]:
    """Run ``fn(item, *args)`` for every item; yield ``(item, result, error)`` as each finishes.

    The one failure policy of every stage: a case that raises (or whose worker dies)
    yields ``error`` (one line) and ``result`` None, and the others go on; the caller
    records it and reports all failures at the end. ``workers == 0`` (and no
    ``scheduler``) runs in this process, in order, without Dask (debugging, tests, the
    crash tests' kill points). Tasks get unique keys, so two runs never share results.
    ``memory_limit``: bytes per local worker (``dask_client``).
    """
    items = list(items)
    if not items:
        return
    if workers == 0 and not scheduler:
        for item in items:
            try:
                yield item, fn(item, *args), None
            except Exception as err:
                log.debug("%s %s failed", name, key(item), exc_info=True)
                yield item, None, one_line(err)
        return
    from distributed import as_completed

    with dask_client(workers, scheduler, memory_limit) as client:
        run_id = f"{os.getpid()}-{time.time_ns()}"
        futures = {
            client.submit(fn, item, *args, key=f"{name}-{key(item)}-{run_id}", pure=False): item for item in items
        }
        for future in as_completed(futures):
            item = futures[future]
            try:
                result = future.result()
            except Exception as err:
                yield item, None, f"worker error: {one_line(err)}"
            else:
                yield item, result, None
            future.release()
