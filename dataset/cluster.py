"""A Dask client for the indexer: a local cluster of processes, or an existing scheduler.

Worker processes with one thread each, because h5py serialises every call behind one
lock (threads never read HDF5 in parallel) while processes open their own handles.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a ``distributed.Client``; a local cluster is closed on exit.

    ``scheduler`` (e.g. ``tcp://host:8786``) connects to a running cluster and ignores
    ``workers``; otherwise ``workers`` processes (default: all cores) start here.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        log.info("connecting to Dask scheduler %s", scheduler)
        with Client(scheduler) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        log.info("started a local Dask cluster of %d worker process(es)", n)
        yield client
