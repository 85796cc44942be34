"""``pancreas evaluate --cv``: out-of-fold scores of a K-fold cross-validation and the postprocessing chosen on them.

See docs/how-to/evaluate.md#cross-validation---cv and
docs/explanation/internals.md#cross-validation-evaluationcrossvalpy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset.common.atomic import write_json_atomic
from dataset.common.configio import to_dict
from dataset.common.errors import PancreasError
from dataset.common.locks import LOCK_NAME, exclusive_lock
from dataset.contract.catalog import read_catalog
from dataset.contract.fingerprints import store_fingerprint
from dataset.contract.index import read_split
from dataset.contract.postprocessing import PostprocessingDecision, write_postprocessing
from dataset.contract.predictions import label_name
from dataset.contract.run import checkpoint_path, read_input_contract
from evaluation.evaluate import (
    CasePair,
    EvaluationError,
    check_run_matches_store,
    protected_folders,
    read_pair,
    read_pair_on_grid,
    score_read_case,
    summarise_cases,
    validation_cases,
)
from evaluation.metrics import REGIONS, dice, region_mask, score_case, summarise
from evaluation.report_files import ReportFiles, check_report_files, write_report_files
from prediction.config import PredictConfig
from prediction.postprocess import apply_postprocessing, keep_largest_gland, keep_largest_tumour

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"
CSV_NAME = "report.csv"
PREDICTIONS_DIR = "predictions"
CANDIDATES = ("pancreas", "tumour")  # tried in this order; the tumour step given the gland's decision


class CrossValidationError(PancreasError, ValueError):
    """Runs, store or folder that ``evaluate --cv`` cannot use; the message names them."""


@dataclass(frozen=True)
class FoldCases:
    fold: int
    run: Path
    cases: list[tuple[str, Path, Path]]  # (case id, source image, source label)


# ----------------------------------------------------------------------------- checks
def check_runs(run_dirs: Sequence[str | Path], store: str | Path) -> list[FoldCases]:
    """One run per fold, in fold order, each trained on this store's index and its own fold."""

    store = Path(store)
    folds = read_split(store).folds
    if len(run_dirs) != len(folds):
        raise CrossValidationError(
            f"--cv got {len(run_dirs)} run(s) but {store}/index has {len(folds)} fold(s); give one run per fold, "
            f"in fold order (runs/fold_0 ... runs/fold_{len(folds) - 1})"
        )
    if len({Path(r).resolve() for r in run_dirs}) != len(run_dirs):
        raise CrossValidationError("--cv names the same run twice; give one run per fold")
    out = []
    for k, run in enumerate(run_dirs):
        contract = read_input_contract(run)
        trained = 0 if contract.fold is None else contract.fold
        if trained != k:
            raise CrossValidationError(
                f"{run}: trained on fold {trained}, but --cv position {k} needs fold {k}'s run; "
                "list the runs in fold order"
            )
        check_run_matches_store(contract, store, run)
        out.append(FoldCases(k, Path(run), validation_cases(store, k)))
    return out


def check_cv_outputs(cv_dir: Path) -> None:
    """``report.json``, ``report.csv`` and ``postprocessing.json`` are replaced only when the
    folder holds an earlier ``evaluate --cv`` report (its ``report.json``), never a user's files."""
    from dataset.common.atomic import read_json
    from dataset.contract.postprocessing import POSTPROCESSING_NAME

    present = [n for n in (REPORT_NAME, CSV_NAME, POSTPROCESSING_NAME) if (cv_dir / n).exists()]
    if not present:
        beside = dataclasses.astuple(ReportFiles.beside(cv_dir / REPORT_NAME))
        ours = {LOCK_NAME, PREDICTIONS_DIR, *(Path(p).name for p in beside)}
        foreign = sorted(p.name for p in cv_dir.iterdir() if p.name not in ours) if cv_dir.is_dir() else []
        if foreign:  # e.g. a run folder or ~/Documents: a new report there would mix with its files
            raise CrossValidationError(
                f"--out {cv_dir}: exists and holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
                "not an earlier `pancreas evaluate --cv` output; choose a new or empty --out folder"
            )
        return
    try:
        earlier = read_json(cv_dir / REPORT_NAME, "report")
    except ValueError:
        earlier = None
    if not isinstance(earlier, dict) or not {"folds", "case_folds", "cases"} <= set(earlier):
        raise CrossValidationError(
            f"--out {cv_dir}: holds {', '.join(present)} not written by `pancreas evaluate --cv`; "
            "choose a new or empty --out folder"
        )


# ----------------------------------------------------------------------------- predict
def predict_folds(
    folds: list[FoldCases], cv_dir: Path, config: PredictConfig, predict_fns: Sequence[Callable] | None, progress: bool
) -> dict[str, str]:
    """Each fold's validation cases by its own model; returns {case id: error} of failures."""
    from prediction.predict import CaseInput, predict_cases

    failed: dict[str, str] = {}
    for f in folds:
        out = cv_dir / PREDICTIONS_DIR / f"fold_{f.fold}"
        fn = None if predict_fns is None else predict_fns[f.fold]
        summary = predict_cases(
            f.run,
            [CaseInput(c, image) for c, image, _ in f.cases],
            out,
            config,
            predict_fn=fn,
            progress=progress,
            out_flag="--out",
        )
        failed.update({r.case_id: f"prediction failed: {r.error}" for r in summary.failed})
    return failed


# ----------------------------------------------------------------------------- score and decide
VARIANTS = {  # name -> the decision it stands for
    "none": {"pancreas": False, "tumour": False},
    "pancreas": {"pancreas": True, "tumour": False},
    "tumour": {"pancreas": False, "tumour": True},
    "both": {"pancreas": True, "tumour": True},
}


def _decision(choice: dict[str, bool], fingerprint: str, **extra: Any) -> PostprocessingDecision:
    return PostprocessingDecision(largest_component=dict(choice), store_fingerprint=fingerprint, **extra)


def variant_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Dice of the gland and tumour regions under each postprocessing variant of one case
    (the gland's largest component is found once: a full-scan labelling costs seconds)."""
    gland = keep_largest_gland(pred)  # the order apply_postprocessing uses: gland, then tumour
    maps = {"none": pred, "pancreas": gland, "tumour": keep_largest_tumour(pred), "both": keep_largest_tumour(gland)}
    return {
        name: {r: dice(region_mask(labels, REGIONS[r]), region_mask(truth, REGIONS[r])) for r in CANDIDATES}
        for name, labels in maps.items()
    }


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def choose_postprocessing(per_case: Sequence[dict[str, dict[str, float | None]]]) -> tuple[dict[str, bool], dict]:
    """The gland step first, then the tumour step given it. Each is kept only if it raises its
    region's mean Dice over the cases where that Dice is defined (a tie keeps it off) and
    lowers no other region's: the gland step also drops tumour voxels outside the largest
    gland component, so it must not cost tumour Dice (nnU-Net's rule for a foreground step)."""
    choice = {"pancreas": False, "tumour": False}
    scores = {}
    for region in CANDIDATES:
        name_without = next(n for n, c in VARIANTS.items() if c == choice)
        name_with = next(n for n, c in VARIANTS.items() if c == {**choice, region: True})
        means = {
            r: (_mean([case[name_without][r] for case in per_case]), _mean([case[name_with][r] for case in per_case]))
            for r in CANDIDATES
        }
        before, after = means[region]
        others_kept = all(b is None or (a is not None and a >= b) for r, (b, a) in means.items() if r != region)
        keep = before is not None and after is not None and after > before and others_kept
        choice[region] = keep
        scores[region] = {
            "mean_dice_without": before,
            "mean_dice_with": after,
            "kept": keep,
            "other_regions": {
                r: {"mean_dice_without": b, "mean_dice_with": a} for r, (b, a) in means.items() if r != region
            },
            "n_cases": sum(case[name_with][region] is not None for case in per_case),
        }
    return choice, scores


def _pairs(folds: list[FoldCases], cv_dir: Path, failed: dict[str, str]) -> list[CasePair]:
    return [
        CasePair(c, cv_dir / PREDICTIONS_DIR / f"fold_{f.fold}" / label_name(c), label, image)
        for f in folds
        for c, image, label in f.cases
        if c not in failed
    ]


def score_pooled(pairs: Sequence[CasePair], config: PredictConfig, progress: bool, files: ReportFiles | None):
    """First pass: full scores without postprocessing, tumour detection, statistics and the
    picture (``files``), and every variant's Dice, case by case (one case in memory at a
    time: 282 full-size cases do not fit together)."""
    cases, dices, errors = {}, [], {}
    for pair in tqdm(pairs, desc="score", unit="case", disable=not progress):
        try:
            pred, truth, grid = read_pair_on_grid(pair)
        except EvaluationError as err:
            log.error("%s", err)
            errors[pair.case_id] = str(err)
            continue
        cases[pair.case_id] = score_read_case(pair, pred, truth, grid, config, files)
        dices.append(variant_dice(pred, truth))
    return cases, dices, errors


def score_postprocessed(
    pairs: Sequence[CasePair], decision: PostprocessingDecision, tolerances, progress: bool
) -> dict:
    """Second pass, only when the decision changes something: full scores with it applied."""
    cases = {}
    for pair in tqdm(pairs, desc="score postprocessed", unit="case", disable=not progress):
        case_id = pair.case_id
        try:
            pred, truth, spacing = read_pair(pair)
        except EvaluationError:
            continue  # already reported by the first pass
        cases[case_id] = score_case(apply_postprocessing(pred, decision), truth, spacing, nsd_tolerance_mm=tolerances)
    return cases


# ----------------------------------------------------------------------------- the protocol
def evaluate_cv(
    run_dirs: Sequence[str | Path],
    store: str | Path,
    cv_dir: str | Path,
    config: PredictConfig = PredictConfig(),
    checkpoint: str = "last",
    predict_fns: Sequence[Callable] | None = None,
    progress: bool = True,
    pictures: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """The whole protocol (module docstring); returns the report written to ``CV_DIR/report.json``
    (beside it: report.csv, report.html, its plot and ``pictures/<case>.png`` unless ``pictures`` is off)."""
    from dataset.common.paths import refuse_inside

    if checkpoint not in ("last", "best"):
        raise CrossValidationError(f"--checkpoint must be last or best, got {checkpoint!r}")
    store, cv_dir = Path(store), Path(cv_dir)
    folds = check_runs(run_dirs, store)
    all_cases = [c for f in folds for c in f.cases]
    runs = [("run folder", Path(f.run)) for f in folds]
    refuse_inside(cv_dir, [*protected_folders(store, all_cases), *runs], "--out")
    check_cv_outputs(cv_dir)
    files = ReportFiles.beside(cv_dir / REPORT_NAME)
    check_report_files(files, pictures=pictures)
    # the out-of-fold maps are scored raw: a postprocessing from the config would be chosen on top of itself
    config = dataclasses.replace(config, checkpoint=checkpoint, postprocessing=None, largest_component="off")
    missing = (
        []
        if predict_fns is not None
        else [
            str(checkpoint_path(f.run, checkpoint)) for f in folds if not checkpoint_path(f.run, checkpoint).is_file()
        ]
    )
    if missing:  # before any fold is predicted: a missing fold-4 model must not cost folds 0-3's time
        raise CrossValidationError(f"--checkpoint {checkpoint}: no {', '.join(missing)}")
    with exclusive_lock(cv_dir):
        failed = predict_folds(folds, cv_dir, config, predict_fns, progress)
        pairs = _pairs(folds, cv_dir, failed)
        cases, dices, errors = score_pooled(pairs, config, progress, files if pictures else None)
        choice, decision_scores = choose_postprocessing(dices)
        fingerprint = store_fingerprint(read_catalog(store))
        decision = _decision(
            choice,
            fingerprint,
            scores=decision_scores,
            chosen_on=f"out-of-fold predictions of {len(folds)} fold(s), {len(cases)} case(s), checkpoint {checkpoint}",
        )
        after = score_postprocessed(pairs, decision, config.nsd_tolerance_mm, progress) if any(choice.values()) else {}
        report = _report(folds, cases, errors, failed, after, decision, config, checkpoint, cv_dir)
        write_postprocessing(cv_dir, decision)
        write_report_files(report, files, title="Cross-validation", command=command, point="cv-report")
        write_json_atomic(cv_dir / REPORT_NAME, report, point="cv-report")
    return report


def _report(folds, cases, errors, failed, after, decision, config, checkpoint, cv_dir) -> dict[str, Any]:
    case_folds = {c: f.fold for f in folds for c, _, _ in f.cases}
    return {
        "cases": cases,
        "summary": summarise_cases(cases),
        "errors": {**errors, **failed},
        "missing_predictions": sorted(failed),
        "regions": {k: list(v) for k, v in REGIONS.items()},
        "nsd_tolerance_mm": dict(config.nsd_tolerance_mm),
        "detection": to_dict(config.detection),
        "checkpoint": checkpoint,
        "mirror_axes": None if config.mirror_axes is None else list(config.mirror_axes),  # None: each run's own
        "folds": [{"fold": f.fold, "run": str(f.run.resolve()), "cases": [c for c, _, _ in f.cases]} for f in folds],
        "case_folds": case_folds,
        "postprocessing": {
            "largest_component": dict(decision.largest_component),
            "scores": decision.scores,
            "summary": summarise(after) if after else summarise(cases),
            "cases": after,
        },
        "predictions": str(cv_dir / PREDICTIONS_DIR),
    }
