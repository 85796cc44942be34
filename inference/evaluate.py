"""``pancreas evaluate``: Dice and HD95 per case and region, a JSON report and a table.

Two ways in: two folders of label maps paired by case name (``evaluate_dirs``), or a
training run plus its store (``evaluate_run``): the run's validation cases (from
``STORE/index/split.json``) are predicted end to end from their original images (the
catalog shard's ``source_image``) and compared with ``source_label`` on the scan's own
grid, so the score includes every resampling step a user's prediction goes through.

The metrics and their conventions (absent regions, undefined HD95) are in
``inference.metrics``. A prediction whose grid (size, spacing, origin, direction)
differs from its truth is an error for that case, never silently resampled.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from dataset.common.files import write_json_atomic
from dataset.common.msd import case_id_of, is_image_name
from dataset.contract.store import StoreError, read_catalog, read_shard_attrs, shard_path
from inference.config import PredictConfig
from inference.metrics import REGIONS, score_case, summarise

log = logging.getLogger(__name__)
SPLIT_FILE = Path("index") / "split.json"


class EvaluationError(ValueError):
    """A case or folder that cannot be scored; the message names it."""


@dataclass(frozen=True)
class CasePair:
    case_id: str
    prediction: Path
    truth: Path


def _read_labels(path: Path, what: str, case_id: str):
    from preprocess.io import image_array
    from preprocess.io import InputError, label_value_counts, read_label

    try:
        image = read_label(path)
    except InputError as err:
        raise EvaluationError(f"{case_id}: {what}: {err}") from None
    array = image_array(image)
    if label_value_counts(array) is None:
        raise EvaluationError(f"{case_id}: {what} {path} holds values that are not integers in 0..255")
    return image, array.astype(np.uint8, copy=False)


def evaluate_pair(pair: CasePair) -> dict[str, dict[str, Any]]:
    """Scores of one case; EvaluationError naming the case on unreadable files or a grid mismatch."""
    from preprocess.io import spacing_zyx
    from preprocess.io import grid_mismatch

    pred_image, pred = _read_labels(pair.prediction, "prediction", pair.case_id)
    truth_image, truth = _read_labels(pair.truth, "truth", pair.case_id)
    mismatch = grid_mismatch(truth_image, pred_image)
    if mismatch:
        raise EvaluationError(f"{pair.case_id}: prediction {pair.prediction} does not match its truth's grid: {mismatch}")
    return score_case(pred, truth, spacing_zyx(truth_image))


def evaluate_pairs(pairs: Sequence[CasePair], progress: bool = True) -> dict[str, Any]:
    """The report for ``pairs``: cases, summary, and errors for cases that could not be scored."""
    cases: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for pair in tqdm(pairs, desc="evaluate", unit="case", disable=not progress):
        try:
            cases[pair.case_id] = evaluate_pair(pair)
        except EvaluationError as err:
            log.error("%s", err)
            errors[pair.case_id] = str(err)
    return {"cases": cases, "summary": summarise(cases), "errors": errors, "regions": {k: list(v) for k, v in REGIONS.items()}}


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    return {case_id_of(p): p for p in sorted(folder.iterdir())
            if p.is_file() and is_image_name(p.name) and not p.name.endswith("_probabilities.nii.gz")}


def evaluate_dirs(pred_dir: str | Path, truth_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Pair ``<case>.nii.gz`` files of two folders; cases without a prediction are listed and fail the run."""
    preds, truths = _label_files(Path(pred_dir)), _label_files(Path(truth_dir))
    if not truths:
        raise EvaluationError(f"{truth_dir}: no NIfTI label files")
    pairs = [CasePair(c, preds[c], truths[c]) for c in sorted(truths) if c in preds]
    report = evaluate_pairs(pairs, progress)
    report["missing_predictions"] = sorted(set(truths) - set(preds))
    report["predictions_without_truth"] = sorted(set(preds) - set(truths))
    for case_id in report["missing_predictions"]:
        log.error("%s: no prediction %s in %s", case_id, f"{case_id}.nii.gz", pred_dir)
    return report


def validation_cases(store: str | Path) -> list[tuple[str, Path, Path]]:
    """(case id, source image, source label) of the validation split, from the store."""
    store = Path(store)
    catalog = read_catalog(store)
    split_path = store / SPLIT_FILE
    if not split_path.is_file():
        raise StoreError(f"{store}: no {SPLIT_FILE}; run `pancreas index` first")
    split = json.loads(split_path.read_text())
    val_ids = split.get("val")
    if not isinstance(val_ids, list) or not val_ids:
        raise StoreError(f"{split_path}: no validation cases listed under 'val'")
    out = []
    for case_id in val_ids:
        if case_id not in catalog.get("cases", {}):
            raise StoreError(f"{split_path}: validation case {case_id} is not in the catalog")
        attrs = read_shard_attrs(shard_path(store, case_id))
        image, label = str(attrs.get("source_image", "")), str(attrs.get("source_label", ""))
        if not image or not label:
            raise StoreError(f"{case_id}: shard records no source_image/source_label")
        out.append((case_id, Path(image), Path(label)))
    return out


def check_run_matches_store(contract: dict[str, Any], store: str | Path, run_dir: str | Path) -> None:
    """The run must have been trained on this store and this index: otherwise its
    "validation" cases may be another split's training cases, and the score a lie."""
    from dataset.index.build import store_fingerprint
    from dataset.contract.manifest import index_fingerprint

    current = {"store_fingerprint": lambda: store_fingerprint(read_catalog(store)),
               "index_fingerprint": lambda: index_fingerprint(store)}
    for key, compute in current.items():
        trained = contract.get(key)
        if trained and trained != (value := compute()):
            raise StoreError(
                f"{run_dir}: was trained on {key} {trained} but {store} now has {value}; "
                "evaluate it on the store and index it was trained on"
            )


def evaluate_run(
    run_dir: str | Path, store: str | Path, config: PredictConfig = PredictConfig(),
    pred_dir: str | Path | None = None, predict_fn=None, progress: bool = True,
) -> dict[str, Any]:
    """Predict the run's validation cases from their original images and score them."""
    from inference.predict import CaseInput, load_contract, predict_cases

    check_run_matches_store(load_contract(run_dir), store, run_dir)
    cases = validation_cases(store)
    pred_dir = Path(pred_dir) if pred_dir is not None else Path(run_dir) / "validation_predictions"
    summary = predict_cases(run_dir, [CaseInput(c, img) for c, img, _ in cases], pred_dir, config,
                            predict_fn=predict_fn, progress=progress)
    failed = {r.case_id: r.error for r in summary.failed}
    pairs = [CasePair(c, pred_dir / f"{c}.nii.gz", label) for c, _, label in cases if c not in failed]
    report = evaluate_pairs(pairs, progress)
    report["errors"].update({c: f"prediction failed: {e}" for c, e in failed.items()})
    report["missing_predictions"] = sorted(failed)
    report["run"] = str(Path(run_dir).resolve())
    report["predictions"] = str(pred_dir)
    return report


def write_report(report: dict[str, Any], path: str | Path) -> None:
    write_json_atomic(path, report)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def report_table(report: dict[str, Any]) -> str:
    """Per-case rows and the summary as a terminal table."""
    regions = list(REGIONS)
    head = f"{'case':<24}" + "".join(f" {r + ' Dice':>14} {r + ' HD95 mm':>17}" for r in regions)
    lines = [head, "-" * len(head)]
    for case_id, scores in report["cases"].items():
        row = f"{case_id:<24}"
        for r in regions:
            s = scores[r]
            dice_text = _fmt(s["dice"], 3) if s["status"] != "absent" else "absent"
            row += f" {dice_text:>14} {_fmt(s['hd95_mm'], 2):>17}"
        lines.append(row)
    lines.append("-" * len(head))
    for stat in ("mean", "median"):
        row = f"{stat:<24}"
        for r in regions:
            s = report["summary"][r]
            row += f" {_fmt(s['dice'][stat], 3):>14} {_fmt(s['hd95_mm'][stat], 2):>17}"
        lines.append(row)
    for r in regions:
        d, h = report["summary"][r]["dice"], report["summary"][r]["hd95_mm"]
        lines.append(f"{r}: Dice over {d['n']} case(s), {d['n_absent']} absent from both; "
                     f"HD95 over {h['n']}, {h['n_undefined']} undefined (region in only one map)")
    for case_id, error in report.get("errors", {}).items():
        lines.append(f"error: {error}" if error.startswith(case_id) else f"error {case_id}: {error}")
    for case_id in report.get("missing_predictions", []):
        if case_id not in report.get("errors", {}):
            lines.append(f"missing prediction: {case_id}")
    for case_id in report.get("predictions_without_truth", []):
        lines.append(f"not scored (no truth): {case_id}")
    return "\n".join(lines)


def report_ok(report: dict[str, Any]) -> bool:
    return not report.get("errors") and not report.get("missing_predictions")

