"""The case loop: every case of an MSD dataset -> one shard, through ``run_cases`` (Dask).

Holds the store's lock for the whole run; workers return ``CatalogRecord``s, the driver rewrites the
catalog as they arrive. See docs/how-to/preprocess.md#reruns-bad-cases-and-changed-files and
docs/explanation/internals.md#the-case-loop-preprocessdriverpy.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
from tqdm import tqdm

from dataset.common.atomic import remove_stale_temporaries
from dataset.common.errors import UsageError
from dataset.common.links import broken_link
from dataset.common.locks import exclusive_lock
from dataset.common.paths import refuse_inside
from dataset.common.runner import one_line, run_cases
from dataset.contract.catalog import Catalog, CatalogRecord, read_catalog, write_catalog
from dataset.contract.store import CASES_DIR, StoreError, shard_path
from preprocess.config import PreprocessConfig, config_fingerprint, config_from_dict, config_to_dict
from preprocess.input_files import CaseInputs, take_inputs
from sources.msd import MsdCase, MsdDataset, MsdDatasetError, load_msd_dataset

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

    def count(self, case_id: str, record: CatalogRecord) -> None:
        if record.done:
            self.done += 1
        else:
            self.failed += 1
            self.failures.append((case_id, record.error or "failed"))


@dataclass(frozen=True)
class PlannedCase:
    """A case to do, with its inputs' fingerprints as taken when it was planned (sent to the worker)."""

    case: MsdCase
    inputs: CaseInputs


def _record(case: MsdCase, **fields) -> CatalogRecord:
    return CatalogRecord.new(case.case_id, case.split, case.label is not None, **fields)


def _done(case: MsdCase, shape, counts, input_fp: str, config_fp: str, seconds: float) -> CatalogRecord:
    return _record(
        case,
        status="done",
        shape_zyx=tuple(int(s) for s in shape),
        label_counts=tuple(int(c) for c in counts) if counts is not None else None,
        input_fingerprint=input_fp,
        config_fingerprint=config_fp,
        seconds=seconds,
    )


def process_case(
    planned: PlannedCase, store: str, config_json: dict, itk_threads: int, run_config_fp: str
) -> CatalogRecord:
    """Dask task: preprocess one case and write its shard; never raises for bad input.

    ``run_config_fp``: the driver's config fingerprint. A worker whose SimpleITK or NumPy
    differs makes another one; its shards would never count as up to date (every rerun
    would silently redo them), so such a worker fails the case and says why.
    """
    from preprocess.config import library_versions
    from preprocess.geometry import set_itk_threads
    from preprocess.io import InputError
    from preprocess.pipeline import preprocess_file, write_case

    t = time.perf_counter()
    case = planned.case
    config = config_from_dict(config_json)
    if config_fingerprint(config) != run_config_fp:
        versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
        return _record(
            case,
            error=f"worker {socket.gethostname()} has {versions}, not the versions the run started "
            "with; install the same SimpleITK and NumPy on every Dask worker",
            config_fingerprint=run_config_fp,
        )
    set_itk_threads(itk_threads)
    try:
        data = preprocess_file(case.image, case.label, config, planned.inputs.declared_labels, planned.inputs)
        write_case(shard_path(store, case.case_id), case.case_id, data)
    except Exception as err:
        expected = isinstance(err, (InputError, OSError))
        log.warning("%s failed: %s", case.case_id, one_line(err), exc_info=not expected)
        seconds = round(time.perf_counter() - t, 3)
        return _record(case, error=one_line(err), config_fingerprint=config_fingerprint(config), seconds=seconds)
    attrs = data.attrs
    return _done(
        case,
        data.levels.shape,
        attrs.get("label_counts"),
        attrs["input_fingerprint"],
        attrs["config_fingerprint"],
        round(time.perf_counter() - t, 3),
    )


def stored_record(
    case: MsdCase, store: Path, input_fp: str, config_fp: str, seconds: float = 0.0
) -> CatalogRecord | None:
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
            shape = f["image"].shape
            counts = attrs.get("label_counts")
    except (OSError, KeyError):
        return None  # unreadable: redo it
    return _done(case, shape, counts, input_fp, config_fp, seconds)


def _missing_reason(case: MsdCase) -> str:
    paths = [p for p in (case.image, case.label) if p is not None]
    broken = [why for p in paths if (why := broken_link(p))]
    if broken:  # a link that leads nowhere: said so, not "missing"
        return "; ".join(broken)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        return f"listed file missing: {', '.join(missing)}"
    return f"cannot read {', '.join(str(p) for p in paths)} (permissions?)"


def _previous_seconds(store: Path) -> dict[str, float]:
    try:
        return {case_id: r.seconds for case_id, r in read_catalog(store).cases.items()}
    except StoreError:
        return {}


def _plan(
    dataset: MsdDataset, store: Path, catalog: Catalog, summary: PreprocessSummary
) -> tuple[Catalog, list[PlannedCase]]:
    """Fingerprint every case's inputs now; up-to-date and missing-input cases go straight into
    the catalog and ``summary``, the others are returned (and listed as pending)."""
    previous = _previous_seconds(store)
    todo: list[PlannedCase] = []
    for case in dataset.cases:
        try:
            inputs = take_inputs(case.image, case.label, dataset.label_values)
        except OSError:  # missing or unreadable (permissions)
            record = _record(case, error=_missing_reason(case), config_fingerprint=catalog.config_fingerprint)
            catalog = catalog.with_case(case.case_id, record)
            summary.count(case.case_id, record)
            continue
        stored = stored_record(
            case, store, inputs.fingerprint, catalog.config_fingerprint, previous.get(case.case_id, 0.0)
        )
        if stored is None:
            todo.append(PlannedCase(case, inputs))
        else:
            catalog = catalog.with_case(case.case_id, stored)
            summary.skipped += 1
    for planned in todo:  # a killed run leaves them listed (not silently dropped) until done
        pending = _record(planned.case, status="pending", config_fingerprint=catalog.config_fingerprint)
        catalog = catalog.with_case(planned.case.case_id, pending)
    return catalog, todo


def _check_same_dataset(store: Path, root: Path) -> None:
    """Refuse to mix two datasets in one store: their case ids collide (pancreas_001 ...),
    so a wrong ``--out`` would silently replace another dataset's shards."""
    try:
        built_from = read_catalog(store).dataset.get("root")
    except StoreError:
        return  # a new (or unreadable) store: nothing to protect
    if built_from and Path(built_from) != Path(root):
        raise StoreError(
            f"{store}: holds a store built from {built_from}, not {root}; "
            "preprocess this dataset into another --out (or delete the old store)"
        )


def _load_dataset(data_dir: str | Path, config: PreprocessConfig) -> MsdDataset:
    dataset = load_msd_dataset(data_dir)
    extra = sorted(set(dataset.label_values) - set(config.label_values))
    if extra:
        raise MsdDatasetError(
            f"{dataset.root}/dataset.json declares label values {extra} that config label_values "
            f"{list(config.label_values)} does not allow"
        )
    return dataset


def _parallelism(workers: int | None, scheduler: str | None, itk_threads: int | None) -> tuple[int, int]:
    """(worker processes, SimpleITK threads per task)."""
    cpus = os.cpu_count() or 1
    workers = cpus if workers is None else workers
    if workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    if itk_threads is None:
        itk_threads = 1 if scheduler else max(1, cpus // max(1, workers))
    return workers, itk_threads


def _sweep(store: Path) -> None:
    """Remove the temporaries a killed run left (we hold the store's lock)."""
    (store / CASES_DIR).mkdir(parents=True, exist_ok=True)
    for folder in (store, store / CASES_DIR):
        for stale in remove_stale_temporaries(folder):
            log.info("removed temporary %s left by an interrupted run", stale.name)


def _process(
    todo: list[PlannedCase],
    catalog: Catalog,
    store: Path,
    args: tuple,
    summary: PreprocessSummary,
    workers: int,
    scheduler: str | None,
    bar: tqdm,
) -> Catalog:
    """Run the planned cases; the catalog is rewritten after each one finishes."""
    for planned, record, error in run_cases(
        process_case, todo, args, name="preprocess", key=lambda p: p.case.case_id, workers=workers, scheduler=scheduler
    ):
        case_id = planned.case.case_id
        if error is not None:  # the task itself died (a killed worker)
            record = _record(planned.case, error=error)
        catalog = catalog.with_case(case_id, record)
        write_catalog(store, catalog)
        summary.count(case_id, record)
        bar.set_postfix(done=summary.done, failed=summary.failed, skipped=summary.skipped, refresh=False)
        bar.update(1)
    return catalog


def _run(
    dataset: MsdDataset,
    store: Path,
    config: PreprocessConfig,
    workers: int,
    scheduler: str | None,
    itk_threads: int,
    progress: bool,
) -> PreprocessSummary:
    """Plan, list the pending cases, process them, and write the catalog in the dataset's order."""
    config_fp = config_fingerprint(config)
    catalog = Catalog.new(dataset.root, dataset.name, dataset.labels, config_to_dict(config), config_fp)
    summary = PreprocessSummary(store=store)
    catalog, todo = _plan(dataset, store, catalog, summary)
    write_catalog(store, catalog)
    log.info(
        "%d cases: %d up to date, %d to do, %d missing input",
        len(dataset.cases),
        summary.skipped,
        len(todo),
        summary.failed,
    )
    with tqdm(
        total=len(dataset.cases),
        initial=summary.skipped + summary.failed,
        unit="case",
        desc="preprocess",
        disable=not progress,
    ) as bar:
        bar.set_postfix(done=0, failed=summary.failed, skipped=summary.skipped)
        args = (str(store), config_to_dict(config), itk_threads, config_fp)
        catalog = _process(todo, catalog, store, args, summary, workers, scheduler, bar)
    write_catalog(store, catalog.ordered([case.case_id for case in dataset.cases]))
    return summary


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
    CPUs / workers locally, 1 on an external cluster). ``LockedError`` at once when another
    process is writing ``store``.
    """
    t0 = time.perf_counter()
    config = config or PreprocessConfig()
    dataset = _load_dataset(data_dir, config)
    workers, itk_threads = _parallelism(workers, scheduler, itk_threads)
    refuse_inside(store, [("dataset folder", Path(data_dir)), ("dataset folder", Path(dataset.root))], "--out")
    store = Path(store).resolve()
    with exclusive_lock(store):
        _check_same_dataset(store, dataset.root)
        _sweep(store)
        summary = _run(dataset, store, config, workers, scheduler, itk_threads, progress)
    summary.seconds = time.perf_counter() - t0
    return summary
