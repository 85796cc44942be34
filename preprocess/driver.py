"""The case loop: every case of an MSD dataset -> one shard, on Dask distributed.

Each task reads its own input files and writes its own shard (nothing open is pickled;
HDF5 is never shared between processes) and returns a small record; the driver writes
the catalog as results arrive. Resuming: a case whose shard holds the same input and
config fingerprints is skipped without work; temporaries of a killed run are removed.
A bad case becomes a "failed" catalog record with a one-line reason; the shard of an
earlier good run stays on disk (shards are only ever replaced by an atomic rename).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import hdf5plugin  # noqa: F401
from tqdm import tqdm

from dataset.common.runner import SchedulerError, dask_client, quiet_dask_logs  # noqa: F401 (re-exported)
from dataset.common.files import remove_stale_temporaries
from dataset.common.msd import MsdCase, MsdDatasetError, load_msd_dataset
from dataset.contract.store import (
    CASES_DIR,
    SCHEMA_VERSION,
    read_catalog,
    shard_path,
    StoreError,
    write_catalog,
)
from preprocess.config import PreprocessConfig, config_fingerprint, config_from_dict, config_to_dict

log = logging.getLogger(__name__)

@dataclass
class PreprocessSummary:
    """What a run did; ``failures`` is [(case_id, one-line reason)]."""

    store: Path
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _record(case: MsdCase, **fields: Any) -> dict[str, Any]:
    """A catalog record (keys documented in dataset/contract/store.py)."""
    record = {
        "split": case.split,
        "shard": f"{CASES_DIR}/{case.case_id}.h5",
        "status": "failed",
        "error": None,
        "shape_zyx": None,
        "has_label": case.label is not None,
        "label_counts": None,
        "input_fingerprint": "",
        "config_fingerprint": "",
        "seconds": 0.0,
    }
    record.update(fields)
    return record


def process_case(case: MsdCase, store: str, config_json: dict, allowed: tuple[int, ...], itk_threads: int) -> dict:
    """Dask task: preprocess one case and write its shard; never raises for bad input."""
    from preprocess.geometry import set_itk_threads
    from preprocess.io import InputError
    from preprocess.pipeline import preprocess_file, write_case

    t = time.perf_counter()
    config = config_from_dict(config_json)
    set_itk_threads(itk_threads)
    try:
        case_data = preprocess_file(case.image, case.label, config, allowed)
        write_case(shard_path(store, case.case_id), case.case_id, case_data)
    except Exception as err:  # noqa: BLE001 - one bad case must not stop the others
        expected = isinstance(err, (InputError, OSError))
        log.warning("%s failed: %s", case.case_id, one_line(err), exc_info=not expected)
        seconds = round(time.perf_counter() - t, 3)
        return _record(case, error=one_line(err), config_fingerprint=config_fingerprint(config), seconds=seconds)
    attrs = case_data.attrs
    counts = attrs.get("label_counts")
    return _record(
        case, status="done",
        shape_zyx=list(case_data.levels.shape),
        label_counts=[int(c) for c in counts] if counts is not None else None,
        input_fingerprint=attrs["input_fingerprint"],
        config_fingerprint=attrs["config_fingerprint"],
        seconds=round(time.perf_counter() - t, 3),
    )


def stored_record(case: MsdCase, store: Path, input_fp: str, config_fp: str) -> dict | None:
    """The catalog record of an existing shard with the same fingerprints, else None."""
    path = shard_path(store, case.case_id)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            if attrs.get("input_fingerprint") != input_fp or attrs.get("config_fingerprint") != config_fp:
                return None
            if ("label" in f) != (case.label is not None):
                return None
            shape = list(f["image"].shape)
            counts = attrs.get("label_counts")
    except (OSError, KeyError):
        return None  # unreadable: redo it
    return _record(
        case, status="done", shape_zyx=shape,
        label_counts=[int(c) for c in counts] if counts is not None else None,
        input_fingerprint=input_fp, config_fingerprint=config_fp,
    )


def _input_fingerprint(case: MsdCase) -> str | None:
    from preprocess.pipeline import input_fingerprint

    try:
        return input_fingerprint(case.image, case.label)
    except OSError:  # missing or unreadable (permissions): reported by _missing_reason
        return None


def _missing_reason(case: MsdCase) -> str:
    paths = [p for p in (case.image, case.label) if p is not None]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        return f"listed file missing: {', '.join(missing)}"
    return f"cannot read {', '.join(str(p) for p in paths)} (permissions?)"


def _previous_seconds(store: Path) -> dict[str, float]:
    try:
        cases = read_catalog(store).get("cases", {})
    except StoreError:
        return {}
    return {k: v.get("seconds", 0.0) for k, v in cases.items() if isinstance(v, dict)}


def _results(
    todo: list[MsdCase], args: tuple, workers: int, scheduler: str | None
) -> Iterator[tuple[str, dict]]:
    """Records of the cases in ``todo`` as they finish (in-process when workers == 0)."""
    if not todo:
        return
    if workers == 0 and not scheduler:
        for case in todo:
            yield case.case_id, process_case(case, *args)
        return
    from distributed import as_completed

    with dask_client(workers, scheduler) as client:
        run_id = f"{os.getpid()}-{time.time_ns()}"
        futures = {
            client.submit(process_case, case, *args, key=f"preprocess-{case.case_id}-{run_id}", pure=False): case
            for case in todo
        }
        for future in as_completed(futures):
            case = futures[future]
            try:
                yield case.case_id, future.result()
            except Exception as err:  # noqa: BLE001 - a killed worker fails one case
                yield case.case_id, _record(case, error=f"worker error: {one_line(err)}")
            future.release()


def _plan(
    cases: tuple[MsdCase, ...], store: Path, config_fp: str, records: dict, summary: PreprocessSummary
) -> list[MsdCase]:
    """Cases to do; up-to-date and missing-input cases go straight into ``records``/``summary``."""
    previous = _previous_seconds(store)
    todo = []
    for case in cases:
        input_fp = _input_fingerprint(case)
        if input_fp is None:
            reason = _missing_reason(case)
            records[case.case_id] = _record(case, error=reason, config_fingerprint=config_fp)
            summary.failed += 1
            summary.failures.append((case.case_id, reason))
            continue
        record = stored_record(case, store, input_fp, config_fp)
        if record is None:
            todo.append(case)
        else:
            record["seconds"] = previous.get(case.case_id, 0.0)
            records[case.case_id] = record
            summary.skipped += 1
    return todo


def _check_same_dataset(store: Path, root: Path) -> None:
    """Refuse to mix two datasets in one store: their case ids collide (pancreas_001 ...),
    so a wrong ``--out`` would silently replace another dataset's shards."""
    try:
        built_from = read_catalog(store).get("dataset", {}).get("root")
    except StoreError:
        return  # a new (or unreadable) store: nothing to protect
    if built_from and Path(built_from) != Path(root):
        raise StoreError(
            f"{store}: holds a store built from {built_from}, not {root}; "
            "preprocess this dataset into another --out (or delete the old store)"
        )


def run_preprocess(
    data_dir: str | Path,
    store: str | Path,
    config: PreprocessConfig | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    itk_threads: int | None = None,
) -> PreprocessSummary:
    """Preprocess every case of an MSD dataset into ``store``; resumable.

    ``workers``: worker processes of the LocalCluster (default: CPU count); 0 runs the cases
    in this process without Dask (debugging). ``scheduler``: address of an existing Dask
    scheduler to submit to instead. ``itk_threads``: SimpleITK threads per task (default:
    CPUs / workers locally, 1 on an external cluster).
    """
    t0 = time.perf_counter()
    config = config or PreprocessConfig()
    dataset = load_msd_dataset(data_dir)
    extra = sorted(set(dataset.label_values) - set(config.label_values))
    if extra:
        raise MsdDatasetError(
            f"{dataset.root}/dataset.json declares label values {extra} that config label_values "
            f"{list(config.label_values)} does not allow"
        )
    store = Path(store).resolve()
    _check_same_dataset(store, dataset.root)
    (store / CASES_DIR).mkdir(parents=True, exist_ok=True)
    for folder in (store, store / CASES_DIR):
        for stale in remove_stale_temporaries(folder):
            log.info("removed temporary %s left by an interrupted run", stale.name)

    cpus = os.cpu_count() or 1
    workers = cpus if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if itk_threads is None:
        itk_threads = 1 if scheduler else max(1, cpus // max(1, workers))
    config_fp = config_fingerprint(config)
    catalog = {
        "schema_version": SCHEMA_VERSION,
        "dataset": {"root": str(dataset.root), "name": dataset.name, "labels": dataset.labels},
        "config": config_to_dict(config),
        "config_fingerprint": config_fp,
        "cases": {},
    }
    summary = PreprocessSummary(store=store)
    todo = _plan(dataset.cases, store, config_fp, catalog["cases"], summary)
    for case in todo:  # a killed run leaves them listed (not silently dropped) until done
        catalog["cases"][case.case_id] = _record(case, status="pending", config_fingerprint=config_fp)
    write_catalog(store, catalog)
    log.info("%d cases: %d up to date, %d to do, %d missing input",
             len(dataset.cases), summary.skipped, len(todo), summary.failed)

    bar = tqdm(total=len(dataset.cases), initial=summary.skipped + summary.failed, unit="case",
               desc="preprocess", disable=not progress)
    bar.set_postfix(done=0, failed=summary.failed, skipped=summary.skipped)
    args = (str(store), config_to_dict(config), dataset.label_values, itk_threads)
    try:
        for case_id, record in _results(todo, args, workers, scheduler):
            catalog["cases"][case_id] = record
            write_catalog(store, catalog)
            if record["status"] == "done":
                summary.done += 1
            else:
                summary.failed += 1
                summary.failures.append((case_id, record["error"]))
            bar.set_postfix(done=summary.done, failed=summary.failed, skipped=summary.skipped, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    records = catalog["cases"]
    catalog["cases"] = {c.case_id: records[c.case_id] for c in dataset.cases if c.case_id in records}
    write_catalog(store, catalog)
    summary.seconds = time.perf_counter() - t0
    return summary
