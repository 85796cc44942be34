"""``pancreas predict``: CT files in, label maps on the original scan grid out.

``predict_case`` (one file) and ``predict_cases`` (refusals, then the lock, the record and the case
loop). See docs/how-to/predict.md and docs/explanation/internals.md#the-layers-predictionpredictpy.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from dataset.common.atomic import remove_stale_temporaries
from dataset.common.configio import to_dict
from dataset.common.fingerprints import content_sha256, fingerprint_file
from dataset.common.locks import exclusive_lock
from dataset.common.runner import run_cases
from dataset.contract.postprocessing import PostprocessingDecision
from dataset.contract.predictions import (
    PredictionRecord,
    Predictions,
    label_name,
    output_names,
    probabilities_name,
    read_predictions,
    seg_name,
    write_predictions,
    writes_nifti,
    writes_seg,
)
from dataset.contract.run import PER_SAMPLE_NORMS, InputContract
from prediction.cases import (
    CaseInput,
    PredictError,
    check_seg_inputs,
    discover_inputs,
    gather_inputs,
    input_folders,
)
from prediction.cluster import (
    check_parallel_options,
    check_picklable,
    for_workers,
    on_a_cluster,
    predict_on_worker,
    threads_per_worker,
    worker_memory,
)
from prediction.config import PredictConfig
from prediction.guard import check_output, check_owned, run_folders
from prediction.packages import resolve_models
from prediction.postprocess import apply_postprocessing, keep_largest_component
from prediction.previews import check_review_files, draw_preview, measure, preview_name, write_review_files
from prediction.runs import RunSettings, check_checkpoints, load_predict_fns, load_runs, resolve_config
from prediction.summary import CaseResult, PredictSummary
from prediction.threads import set_tensorflow_threads, tensorflow_threads
from prediction.volume import PredictFn, argmax_labels, predict_volume

log = logging.getLogger(__name__)

# discover_inputs and resolve_config are imported from here by the tests and other modules
__all__ = [
    "CaseInput",
    "CaseResult",
    "PredictError",
    "PredictSummary",
    "apply_postprocessing",
    "argmax_labels",
    "discover_inputs",
    "keep_largest_component",
    "predict_case",
    "predict_cases",
    "predict_volume",
    "resolve_config",
]


# ----------------------------------------------------------------------------- one case


def predict_case(
    case: CaseInput,
    predict_fn: PredictFn | Sequence[PredictFn],
    config: PredictConfig,
    preprocess_config,
    out_dir: Path,
    *,
    n_classes: int | None = None,
    window_multiple: int | None = None,
    mirror_axes: Sequence[Sequence[int]] | None = None,
    postprocessing: PostprocessingDecision | None = None,
    progress: bool = True,
    preview: bool = False,
    model_fingerprint: str = "",
    package_sha256: str | None = None,
) -> CaseResult:
    """Predict one CT and write ``out_dir/<case>.nii.gz`` (uint8, the scan's exact grid).

    ``predict_fn``: one model or an ensemble's list; ``mirror_axes``: each model's (default
    ``config.mirror_axes``); ``postprocessing``: the decision, applied on the scan's grid.
    The label map's statistics are measured on the scan (``prediction.previews``);
    ``preview``: also draw ``<case>_preview.png``. ``config.output_format`` with a DICOM
    SEG: also (or only) ``<case>_seg.dcm`` (``prediction.dicomseg``), whose algorithm
    names ``model_fingerprint`` and, predicting with a model package, ``package_sha256``.
    """
    from preprocess.io import read_image
    from preprocess.pipeline import check_before_reading, preprocess_image

    result = CaseResult(case.case_id, str(case.path))
    t = time.perf_counter()
    check_before_reading(case.path, None, preprocess_config)  # absurd geometry, over the memory budget
    image, _dtype = read_image(case.path, case.series_uid)
    pre = preprocess_image(image, None, preprocess_config)
    result.shape_zyx = tuple(int(s) for s in pre.levels.shape)
    result.seconds["preprocess"] = time.perf_counter() - t

    timings: dict[str, float] = {}
    roi: dict[str, Any] = {}
    probs = predict_volume(
        pre.levels,
        predict_fn,
        config,
        mirror_axes=mirror_axes,
        progress=progress,
        timings=timings,
        n_classes=n_classes,
        spacing_zyx=tuple(float(v) for v in np.asarray(pre.attrs["spacing"])[::-1]),
        roi=roi,
        window_multiple=window_multiple,
    )
    result.n_windows, result.roi = int(timings["windows"]), roi
    for stage in ("model", "first_pass", "stitch"):
        result.seconds[stage] = timings[stage]

    t = time.perf_counter()
    out_path, labels = _write_case(case.case_id, probs, pre, image, config, out_dir, postprocessing)
    result.output = str(out_path) if out_path is not None else None
    if writes_seg(config.output_format):
        result.dicom_seg = str(_write_seg(case, labels, image, out_dir, model_fingerprint, package_sha256))
    result.statistics = measure(sitk.GetArrayViewFromImage(labels), image)
    if preview:
        draw_preview(out_dir / preview_name(case.case_id), case.case_id, labels, image)
    result.seconds["export"] = time.perf_counter() - t  # the label map, its statistics and preview
    return result


def _write_seg(
    case: CaseInput, labels, image, out_dir: Path, model_fingerprint: str, package_sha256: str | None
) -> Path:
    """``<case>_seg.dcm`` from the series' own files, in the order ``read_image`` read them."""
    from prediction.dicomseg import write_case_seg
    from preprocess.io import dicom_series_files
    from preprocess.output import geometry, image_array

    files = dicom_series_files(case.path, case.series_uid)
    return write_case_seg(
        files,
        image_array(labels),
        geometry(image),
        out_dir / seg_name(case.case_id),
        model_fingerprint,
        package_sha256,
    )


def _write_case(
    case_id: str,
    probs: np.ndarray,
    pre,
    image,
    config: PredictConfig,
    out_dir: Path,
    postprocessing: PostprocessingDecision | None = None,
) -> tuple[Path | None, Any]:
    """Labels (and the optional probabilities) back on the scan's grid, written atomically;
    the path (None when ``config.output_format`` asks for no NIfTI) and the label image."""
    from preprocess.geometry import restore_to_original
    from preprocess.io import grid_mismatch
    from preprocess.output import compose, copy_geometry, image_array, labels_image, write_image_atomic

    labels = keep_largest_component(argmax_labels(probs), config.largest_component)
    restored = restore_to_original(labels, pre.attrs, "nearest", 0)
    mismatch = grid_mismatch(image, restored)
    if mismatch:
        raise PredictError(f"restored label map is not on the scan's grid: {mismatch}")
    if postprocessing is not None:  # on the scan's grid: where `evaluate --cv` chose it, on the label maps
        restored = labels_image(apply_postprocessing(image_array(restored), postprocessing), image)
    out_path = out_dir / label_name(case_id) if writes_nifti(config.output_format) else None
    restored = copy_geometry(restored, image)
    if out_path is not None:
        write_image_atomic(restored, out_path)
    if config.save_probabilities:
        channels = [  # voxels cropped away by preprocessing: background (1), other classes 0
            copy_geometry(restore_to_original(np.ascontiguousarray(p), pre.attrs, "linear", 0.0 if c else 1.0), image)
            for c, p in enumerate(probs)
        ]
        write_image_atomic(compose(channels), out_dir / probabilities_name(case_id))
    return out_path, restored


# ----------------------------------------------------------------------------- the record


def _input_fingerprint(path: Path) -> str | None:
    try:
        return fingerprint_file(path)
    except OSError:
        return None


@dataclass(frozen=True)
class Plan:
    """What a run of ``predict_cases`` will do: the record so far, each input's fingerprint
    (taken now, before reading), and the cases to predict (the rest are up to date)."""

    record: Predictions
    input_fingerprints: dict[str, str | None]
    todo: tuple[CaseInput, ...]
    previous: Predictions | None = None  # the folder's record before this run


def _up_to_date(record: Predictions, case: CaseInput, input_fp: str | None, out: Path, output_format: str) -> bool:
    prev = record.cases.get(case.case_id)
    return (
        prev is not None
        and prev.done
        and prev.input_fingerprint == input_fp
        and prev.settings_fingerprint == record.settings_fingerprint
        # each file the format asks for: written by that prediction (in its record) and still there
        and all(
            (out / name).is_file() and _recorded(prev, case.case_id, name)
            for name in output_names(case.case_id, output_format)
        )
    )


def _recorded(prev: PredictionRecord, case_id: str, name: str) -> bool:
    """Whether ``prev`` lists ``name`` among the files its prediction wrote (a file left from an
    earlier prediction in another format is not this one's)."""
    return (prev.output if name == label_name(case_id) else prev.dicom_seg) is not None


def check_unedited(out: Path, previous: Predictions | None, cases: Sequence[CaseInput]) -> None:
    """Refuse to replace a label map (or SEG) whose bytes changed since predict wrote it (a hand correction)."""
    for case in cases:
        prev = previous.cases.get(case.case_id) if previous else None
        if prev is None or not prev.done:
            continue
        for name, sha256 in (
            (label_name(case.case_id), prev.output_sha256),
            (seg_name(case.case_id), prev.dicom_seg_sha256),
        ):
            _check_unedited(out / name, sha256)


def _check_unedited(path: Path, sha256: str | None) -> None:
    if sha256 is not None and path.is_file() and content_sha256(path) != sha256:
        raise PredictError(
            f"{path}: changed since `pancreas predict` wrote it (edited by hand?); predicting this case again "
            "would replace it: move it away, or pass --overwrite-edited to replace it"
        )


def plan_run(
    out: Path, run: RunSettings, cases: Sequence[CaseInput], overwrite: bool, flag: str, overwrite_edited: bool = False
) -> Plan:
    """Read the folder's record, decide what to predict, and check it replaces only its own files
    (and none the user edited, unless ``overwrite_edited``). Writes nothing: ``start_plan``
    lists the cases as pending, once the models have loaded (a refused model leaves no record)."""
    previous = read_predictions(out)
    record = Predictions(
        run=run.runs_text,
        settings_fingerprint=run.fingerprint,
        config=to_dict(run.config),
        cases=previous.cases if previous else {},
        package=run.package,
        package_sha256=run.package_sha256,
    )
    fps = {c.case_id: _input_fingerprint(c.path) for c in cases}
    fmt = run.config.output_format
    todo = tuple(c for c in cases if overwrite or not _up_to_date(record, c, fps[c.case_id], out, fmt))
    check_owned(out, previous, [c.case_id for c in todo], run.config.save_probabilities, flag, writes_seg(fmt))
    if not overwrite_edited:
        check_unedited(out, previous, todo)
    for case in todo:
        record = record.with_case(case.case_id, PredictionRecord(case.source, fps[case.case_id], run.fingerprint))
    return Plan(record, fps, todo, previous)


def start_plan(out: Path, plan: Plan, save_probabilities: bool, output_format: str) -> None:
    """List the plan's cases as pending in ``predictions.json`` before any of their files is written."""
    if plan.todo:
        write_predictions(out, plan.record)
    if plan.previous is not None:
        if not save_probabilities:
            _remove_stale_probabilities(out, plan.previous, plan.todo)
        _remove_stale_outputs(out, plan.previous, plan.todo, output_format)


def _remove_stale_outputs(out: Path, previous: Predictions, todo: Sequence[CaseInput], output_format: str) -> None:
    """A case predicted again in another format loses the label map or SEG the new format does not
    write (they would be the earlier model's), when ours and unedited; an edited one is kept."""
    for case in todo:
        prev = previous.cases.get(case.case_id)
        if prev is None:
            continue
        wanted = output_names(case.case_id, output_format)
        for name, sha256 in (
            (label_name(case.case_id), prev.output_sha256),
            (seg_name(case.case_id), prev.dicom_seg_sha256),
        ):
            stale = out / name
            if name in wanted or not stale.is_file() or stale.is_symlink() or not previous.owns(name):
                continue
            if sha256 is not None and content_sha256(stale) != sha256:
                log.warning("%s: keeping %s, edited since predict wrote it (it is not this run's)", case.case_id, name)
                continue
            log.info("%s: removing %s (this run writes %s)", case.case_id, name, output_format)
            stale.unlink()


def _remove_stale_probabilities(out: Path, previous: Predictions, todo: Sequence[CaseInput]) -> None:
    """A case predicted again without probabilities loses its earlier ``<case>_probabilities.nii.gz``
    (ours: the case is in the folder's record), which would no longer match its new label map."""
    for case in todo:
        stale = out / probabilities_name(case.case_id)
        if previous.owns(stale.name) and stale.is_file() and not stale.is_symlink():
            log.info("%s: removing %s (this run saves no probabilities)", case.case_id, stale.name)
            stale.unlink()


def _record_of(case: CaseInput, result: CaseResult, input_fp: str | None, settings_fp: str) -> PredictionRecord:
    return PredictionRecord(
        input=case.source,
        input_fingerprint=input_fp,
        settings_fingerprint=settings_fp,
        status="failed" if result.error else "done",
        error=result.error,
        output=result.output,
        shape_zyx=result.shape_zyx,
        output_sha256=content_sha256(result.output) if result.output and not result.error else None,
        dicom_seg=result.dicom_seg,
        dicom_seg_sha256=content_sha256(result.dicom_seg) if result.dicom_seg and not result.error else None,
        seconds=result.seconds,
        roi=result.roi if not result.error else None,
        threads=result.threads,
    )


# ----------------------------------------------------------------------------- many cases


def first_pass_multiple(contract: InputContract) -> int | None:
    """What the ROI first pass may widen its windows to a multiple of (``roi.first_pass_window``):
    ``2**depth`` for batch norm; None (the prediction window itself) for instance or group norm,
    whose statistics would change with a wider window."""
    return None if contract.model_norm in PER_SAMPLE_NORMS else 2 ** int(contract.model_depth)


def predict_or_report(
    case: CaseInput, predict_fns: Sequence[PredictFn], run: RunSettings, out: Path, progress: bool, preview: bool
) -> CaseResult:
    """One case; any failure becomes the case's one-line error (it must not stop the others)."""
    try:
        return predict_case(
            case,
            predict_fns,
            run.config,
            run.preprocess,
            out,
            n_classes=int(run.contract.n_classes),
            window_multiple=first_pass_multiple(run.contract),
            mirror_axes=run.mirror_axes,
            postprocessing=run.postprocessing,
            progress=progress,
            preview=preview,
            model_fingerprint=run.fingerprint,
            package_sha256=run.package_sha256,
        )
    except Exception as err:
        log.debug("case %s failed", case.case_id, exc_info=True)
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        return _failed(case, text)


def _failed(case: CaseInput, text: str) -> CaseResult:
    if str(case.path) not in text:
        text = f"{case.path}: {text}"
    log.error("case %s failed: %s", case.case_id, text)
    return CaseResult(case.case_id, str(case.path), error=text)


def _case_id(case: CaseInput) -> str:
    return case.case_id


@dataclass(frozen=True)
class Parallel:
    """Where the cases run: in this process (neither set, or ``workers`` 0), else on Dask."""

    workers: int | None = None
    scheduler: str | None = None
    threads: int | None = None  # --threads: each worker's TensorFlow threads (None: cores / workers locally)

    @property
    def on_dask(self) -> bool:
        return on_a_cluster(self.workers, self.scheduler)


def largest_first(cases: Sequence[CaseInput]) -> list[CaseInput]:
    """The cases by input size on disk, largest first (ties and unreadable sizes: input order).

    The longest-first rule of scheduling: with the big cases submitted first, the small ones fill
    the workers' idle ends instead of one worker finishing a big case last while the others wait.
    A DICOM series counts its folder's files.
    """

    def size(case: CaseInput) -> int:
        try:
            if case.path.is_dir():
                return sum(f.stat().st_size for f in case.path.iterdir() if f.is_file())
            return case.path.stat().st_size
        except OSError:
            return 0

    return sorted(cases, key=size, reverse=True)


def _run_planned(
    plan: Plan,
    predict_fns: Sequence[PredictFn] | None,
    run: RunSettings,
    out: Path,
    progress: bool,
    preview: bool,
    parallel: Parallel,
) -> Iterator[tuple[CaseInput, CaseResult | None, str | None]]:
    """``run_cases`` over the plan: here with the loaded models, or on Dask workers that load their own."""
    if not plan.todo:
        return iter(())
    if not parallel.on_dask:
        assert predict_fns is not None  # loaded whenever the plan has a case to predict
        args: tuple = (predict_fns, run, out, progress, preview)
        return run_cases(predict_or_report, plan.todo, args, name="predict", key=_case_id, workers=0)
    sent, todo, where = for_workers(run, plan.todo, out)
    todo = largest_first(todo)  # the big cases start first, so no worker ends the run alone on one
    threads = parallel.threads or threads_per_worker(parallel.workers, parallel.scheduler)
    args = (sent, str(where), preview, predict_fns, threads)
    return run_cases(
        predict_on_worker,
        todo,
        args,
        name="predict",
        key=_case_id,
        workers=parallel.workers,
        scheduler=parallel.scheduler,
        memory_limit=worker_memory(parallel.workers),
    )


def _as_given(case: CaseInput, result: CaseResult | None, error: str | None, out: Path) -> CaseResult:
    """A worker's result with the paths as the user gave them (a worker was sent absolute ones)."""
    if result is None:  # the task died with its worker (Dask gave up on it): a rerun redoes it
        return _failed(case, error or "failed")
    return dataclasses.replace(
        result,
        source=str(case.path),
        output=str(out / Path(result.output).name) if result.output else None,
        dicom_seg=str(out / Path(result.dicom_seg).name) if result.dicom_seg else None,
    )


def _predict_all(
    cases: Sequence[CaseInput],
    plan: Plan,
    predict_fns: Sequence[PredictFn] | None,
    run: RunSettings,
    out: Path,
    progress: bool,
    preview: bool = False,
    parallel: Parallel = Parallel(),
    threads: int | None = None,
) -> list[CaseResult]:
    """Predict the planned cases, committing each one's record as it ends (in input order here,
    as they finish on Dask: each case keeps the place ``plan_run`` gave it in the record)."""
    planned = {c.case_id: c for c in plan.todo}
    record, finished = plan.record, {}
    with tqdm(
        total=len(cases), initial=len(cases) - len(planned), desc="predict", unit="case", disable=not progress
    ) as bar:
        for sent, result, error in _run_planned(plan, predict_fns, run, out, progress, preview, parallel):
            case = planned[sent.case_id]
            finished[case.case_id] = _as_given(case, result, error, out)
            if not parallel.on_dask and not finished[case.case_id].error:
                finished[case.case_id].threads = threads  # a worker records its own
            if parallel.on_dask and result is not None and result.error:  # logged on the worker; here too
                log.error("case %s failed: %s", case.case_id, result.error)
            entry = _record_of(case, finished[case.case_id], plan.input_fingerprints[case.case_id], run.fingerprint)
            record = record.with_case(case.case_id, entry)
            write_predictions(out, record)
            bar.update(1)
    return [
        finished.get(c.case_id) or CaseResult(c.case_id, str(c.path), str(out / label_name(c.case_id)), skipped=True)
        for c in cases
    ]


def predict_cases(
    run_dirs: str | Path | Sequence[str | Path],
    inputs: str | Path | Sequence[CaseInput],
    out_dir: str | Path,
    config: PredictConfig = PredictConfig(),
    *,
    predict_fn: PredictFn | Sequence[PredictFn] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    out_flag: str = "--out",
    preview: bool = False,
    overwrite_edited: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
) -> PredictSummary:
    """Predict every input case into ``out_dir``; resumable, failures reported per case.

    ``run_dirs``: one training run, or several (an ensemble: the mean of their softmax;
    their contracts must agree, ``prediction.runs``). ``predict_fn``: one model callable
    per run in place of its Keras checkpoint (tests, other backends). Up-to-date outputs
    (same input fingerprint, models, contracts, config and post-processing, recorded in
    ``out_dir/predictions.json``) are skipped unless ``overwrite``. ``out_flag`` names the
    option that chose ``out_dir`` in refusals (``evaluate --run`` passes ``--pred-out``).
    Every run ends by rebuilding ``statistics.csv``/``.json`` of the done cases, and with
    ``preview`` their ``<case>_preview.png`` and ``index.html`` (``prediction.previews``).
    ``workers`` (local processes) or ``scheduler`` (a running cluster's address): the cases
    run on Dask workers, each loading the models once (``prediction.cluster``); neither (or
    ``workers`` 0): in this process. This process holds the lock and writes the record.
    ``threads``: TensorFlow's thread pools (``prediction.threads``), set before anything starts it;
    ``None``: its default. Each case records the threads its seconds were measured with.
    """
    t0 = time.perf_counter()
    check_parallel_options(workers, scheduler)
    parallel = Parallel(workers, scheduler, threads)
    tf_threads = None
    run_dirs, config, package = resolve_models(run_dirs, config)  # a package: checked, its runs and decision
    run = load_runs(run_dirs, config, predict_fn)
    if package is not None:
        run = dataclasses.replace(run, package=str(package.source), package_sha256=package.sha256)
    predict_fns = None if predict_fn is None else [predict_fn] if callable(predict_fn) else list(predict_fn)
    if parallel.on_dask:
        check_picklable(predict_fns)
    cases = gather_inputs(inputs)
    check_seg_inputs(cases, run.config.output_format)
    out = Path(out_dir)
    protected = [("input folder", f) for f in input_folders(inputs, cases)] + run_folders(run.run_dirs, out)
    # refusals that need no lock first: a refused run leaves no lock file in somebody else's folder
    seg = writes_seg(run.config.output_format)
    check_output(out, protected, [c.case_id for c in cases], run.config.save_probabilities, out_flag, seg)
    check_review_files(out, [c.case_id for c in cases], preview, out_flag)
    if predict_fns is None:
        check_checkpoints(run.run_dirs, run.config.checkpoint)
    with exclusive_lock(out):
        remove_stale_temporaries(out)
        plan = plan_run(out, run, cases, overwrite, out_flag, overwrite_edited)
        if plan.todo and threads is not None and not parallel.on_dask:
            # TensorFlow's pools, before its first model: nothing earlier starts it (on Dask each worker sets its own)
            tf_threads = set_tensorflow_threads(threads)
        if plan.todo and predict_fns is None and not parallel.on_dask:
            # a refused model stops the run
            predict_fns = load_predict_fns(run.run_dirs, run.config.checkpoint, run.config.precision)
            tf_threads = tensorflow_threads()
        start_plan(out, plan, run.config.save_probabilities, run.config.output_format)
        results = _predict_all(cases, plan, predict_fns, run, out, progress, preview, parallel, tf_threads)
        if parallel.on_dask:  # a worker that died mid-write left its temporary
            for stale in remove_stale_temporaries(out):
                log.info("removed %s, left by a worker that died", stale.name)
        record = read_predictions(out)
        if record is not None:
            fresh = {r.case_id: r.statistics for r in results if r.statistics is not None}
            write_review_files(out, record, cases, fresh, preview)
    return PredictSummary(out, results, time.perf_counter() - t0, tf_threads)
