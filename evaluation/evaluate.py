"""``pancreas evaluate``: Dice, NSD and HD95 per case and region (``evaluate_dirs``, ``evaluate_run``).

A prediction on another grid than its truth is an error for that case, never resampled. See
docs/how-to/evaluate.md and docs/explanation/internals.md#scoring-a-run-evaluationevaluatepy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset.common.atomic import read_json, write_json_atomic
from dataset.common.configio import to_dict
from dataset.common.errors import PancreasError
from dataset.common.locks import exclusive_lock
from dataset.contract.catalog import read_catalog
from dataset.contract.fingerprints import check_fingerprint, store_fingerprint
from dataset.contract.index import check_index, index_dir, read_split
from dataset.contract.manifest import index_fingerprint
from dataset.contract.predictions import PROBABILITIES_SUFFIX, label_name
from dataset.contract.run import InputContract
from dataset.contract.store import StoreError, read_shard_attrs, shard_path
from evaluation.casework import hu_array, read_ct_on, review_case, write_pair_picture
from evaluation.metrics import REGIONS, score_case, summarise
from evaluation.report_files import ReportFiles, write_report_files
from prediction.config import PredictConfig
from review.detection import detection_summary
from sources.msd import case_id_of, is_image_name

NNUNET_CHANNEL = "_0000"  # nnU-Net's suffix of a case's one CT channel (sources.nnunet)

log = logging.getLogger(__name__)
REPORT_KEYS = ("cases", "summary")  # what an existing --out file must hold to be replaced
WRONG_STORE = "evaluate it on the store and index it was trained on"


class EvaluationError(PancreasError, ValueError):
    """A case or folder that cannot be scored; the message names it."""


@dataclass(frozen=True)
class CasePair:
    case_id: str
    prediction: Path
    truth: Path
    image: Path | None = None  # the CT: HU figures and the picture's background (optional)


def _read_labels(path: Path, what: str, case_id: str):
    from preprocess.io import InputError, label_value_counts, read_label
    from preprocess.output import image_array

    try:
        image = read_label(path)
    except InputError as err:
        raise EvaluationError(f"{case_id}: {what}: {err}") from None
    array = image_array(image)
    if label_value_counts(array) is None:
        raise EvaluationError(f"{case_id}: {what} {path} holds values that are not integers in 0..255")
    return image, array.astype(np.uint8, copy=False)


def read_pair_on_grid(pair: CasePair):
    """(prediction, truth, the truth's image for its grid); EvaluationError naming the case on
    unreadable files or a grid mismatch (never silently resampled)."""
    from preprocess.io import grid_mismatch

    pred_image, pred = _read_labels(pair.prediction, "prediction", pair.case_id)
    truth_image, truth = _read_labels(pair.truth, "truth", pair.case_id)
    mismatch = grid_mismatch(truth_image, pred_image)
    if mismatch:
        raise EvaluationError(
            f"{pair.case_id}: prediction {pair.prediction} does not match its truth's grid: {mismatch}"
        )
    return pred, truth, truth_image


def read_pair(pair: CasePair) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(prediction, truth, spacing z, y, x) of one case (``read_pair_on_grid``)."""
    from preprocess.output import spacing_zyx

    pred, truth, grid = read_pair_on_grid(pair)
    return pred, truth, spacing_zyx(grid)


def evaluate_pair(
    pair: CasePair, config: PredictConfig = PredictConfig(), files: ReportFiles | None = None
) -> dict[str, Any]:
    """Scores, tumour detection and statistics of one case, and its picture when ``files`` is given;
    EvaluationError naming the case on unreadable files or a grid mismatch."""
    pred, truth, grid = read_pair_on_grid(pair)
    return score_read_case(pair, pred, truth, grid, config, files)


def score_read_case(
    pair: CasePair,
    pred: np.ndarray,
    truth: np.ndarray,
    grid: Any,
    config: PredictConfig = PredictConfig(),
    files: ReportFiles | None = None,
) -> dict[str, Any]:
    """``evaluate_pair`` once the maps are read (``grid``: the truth's SimpleITK image)."""
    from preprocess.output import spacing_zyx

    spacing = spacing_zyx(grid)
    ct = read_ct_on(pair.image, grid, pair.case_id)
    case: dict[str, Any] = score_case(pred, truth, spacing, nsd_tolerance_mm=config.nsd_tolerance_mm)
    case.update(review_case(pred, truth, spacing, hu_array(ct), config.detection))
    picture = files.picture(pair.case_id) if files is not None else None
    if files is not None and picture is None:
        log.warning("%r: no picture (a case id that is not a plain file name)", pair.case_id)
    if picture is not None:
        try:
            write_pair_picture(picture, pair.case_id, truth, pred, grid, ct, config.detection)
        except OSError as err:  # the scores stand; the report says the picture is missing
            log.error("%s: picture not written: %s", pair.case_id, err)
            case["picture_error"] = str(err)
    return case


def evaluate_pairs(
    pairs: Sequence[CasePair],
    progress: bool = True,
    config: PredictConfig = PredictConfig(),
    files: ReportFiles | None = None,
) -> dict[str, Any]:
    """The report for ``pairs``: cases, summary, and errors for cases that could not be scored.

    ``files``: also draw each case's picture into ``files.pictures`` (None: no pictures).
    """
    cases: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for pair in tqdm(pairs, desc="evaluate", unit="case", disable=not progress):
        try:
            cases[pair.case_id] = evaluate_pair(pair, config, files)
        except EvaluationError as err:
            log.error("%s", err)
            errors[pair.case_id] = str(err)
    return {
        "cases": cases,
        "summary": summarise_cases(cases),
        "errors": errors,
        "regions": {k: list(v) for k, v in REGIONS.items()},
        "nsd_tolerance_mm": dict(config.nsd_tolerance_mm),
        "detection": to_dict(config.detection),
    }


def summarise_cases(cases: dict[str, Any]) -> dict[str, Any]:
    """Per-region summaries plus the tumour-detection summary over the cases that have one."""
    detected = {c: s["tumour_detection"] for c, s in cases.items() if "tumour_detection" in s}
    return {**summarise(cases), "tumour_detection": detection_summary(detected)}


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    return {
        case_id_of(p): p
        for p in sorted(folder.iterdir())
        if p.is_file() and is_image_name(p.name) and not p.name.endswith(PROBABILITIES_SUFFIX)
    }


def _image_files(folder: Path) -> dict[str, Path]:
    """``<case>.nii.gz`` or nnU-Net's ``<case>_0000.nii.gz`` CTs of ``--images``, by case id."""
    return {c.removesuffix(NNUNET_CHANNEL): p for c, p in _label_files(folder).items()}


def evaluate_dirs(
    pred_dir: str | Path,
    truth_dir: str | Path,
    progress: bool = True,
    config: PredictConfig = PredictConfig(),
    images_dir: str | Path | None = None,
    files: ReportFiles | None = None,
) -> dict[str, Any]:
    """Pair ``<case>.nii.gz`` files of two folders; cases without a prediction are listed and fail the run.

    ``images_dir``: the CTs (``imagesTr``/``imagesTs``), for HU figures and the pictures' background.
    """
    if Path(pred_dir).resolve() == Path(truth_dir).resolve():
        raise EvaluationError(f"--pred {pred_dir} is the --truth folder {truth_dir}: the labels would score themselves")
    preds, truths = _label_files(Path(pred_dir)), _label_files(Path(truth_dir))
    if not truths:
        raise EvaluationError(f"{truth_dir}: no NIfTI label files")
    images = _image_files(Path(images_dir)) if images_dir is not None else {}
    pairs = [CasePair(c, preds[c], truths[c], images.get(c)) for c in sorted(truths) if c in preds]
    report = evaluate_pairs(pairs, progress, config, files)
    report["missing_predictions"] = sorted(set(truths) - set(preds))
    report["predictions_without_truth"] = sorted(set(preds) - set(truths))
    for case_id in report["missing_predictions"]:
        log.error("%s: no prediction %s in %s", case_id, f"{case_id}.nii.gz", pred_dir)
    return report


def validation_cases(store: str | Path, fold: int = 0) -> list[tuple[str, Path, Path]]:
    """(case id, source image, source label) of fold ``fold``'s validation cases, from the store."""
    store = Path(store)
    catalog = read_catalog(store)
    check_index(store, catalog, fold)  # the split is committed, still matches the store, and has the fold
    out = []
    for case_id in read_split(store).fold(fold).val:
        if case_id not in catalog.cases:
            raise StoreError(f"{index_dir(store)}: validation case {case_id} is not in the catalog")
        attrs = read_shard_attrs(shard_path(store, case_id))
        image, label = str(attrs.get("source_image", "")), str(attrs.get("source_label", ""))
        if not image or not label:
            raise StoreError(f"{case_id}: shard records no source_image/source_label")
        out.append((case_id, Path(image), Path(label)))
    return out


def check_run_matches_store(contract: InputContract, store: str | Path, run_dir: str | Path) -> None:
    """The run must have been trained on this store and this index: otherwise its
    "validation" cases may be another split's training cases, and the score a lie."""
    if contract.store_fingerprint:
        check_fingerprint(
            "store fingerprint",
            contract.store_fingerprint,
            store_fingerprint(read_catalog(store)),
            run_dir,
            store,
            WRONG_STORE,
        )
    if contract.index_fingerprint:
        check_fingerprint(
            "index fingerprint",
            contract.index_fingerprint,
            index_fingerprint(store),
            run_dir,
            index_dir(store),
            WRONG_STORE,
        )


def protected_folders(store: str | Path, cases: Sequence[tuple[str, Path, Path]]) -> list[tuple[str, Path]]:
    """Folders ``evaluate --run`` reads, which its predictions must stay out of."""
    root = read_catalog(store).dataset.get("root")
    folders = [("truth folder", label.parent) for _, _, label in cases]  # the most specific first
    folders += [("input folder", image.parent) for _, image, _ in cases]
    folders += ([("dataset folder", Path(root))] if root else []) + [("store", Path(store))]
    return list(dict.fromkeys(folders))


def run_inputs(
    run_dir: str | Path, store: str | Path, pred_dir: str | Path | None
) -> tuple[list[tuple[str, Path, Path]], Path, list[tuple[str, Path]]]:
    """``evaluate --run``'s validation cases, its --pred-out folder and the folders it reads
    (``refuse_inside`` pairs for --pred-out; ``--out`` adds the --pred-out folder)."""
    from dataset.contract.run import read_input_contract
    from prediction.guard import VALIDATION_PREDICTIONS, run_folders

    contract = read_input_contract(run_dir)
    check_run_matches_store(contract, store, run_dir)
    cases = validation_cases(store, contract.fold or 0)  # the fold the run trained on holds its validation cases
    pred = Path(pred_dir) if pred_dir is not None else Path(run_dir) / VALIDATION_PREDICTIONS
    return cases, pred, protected_folders(store, cases) + run_folders([run_dir], pred)


def dirs_inputs(pred_dir: str | Path, truth_dir: str | Path, images_dir: str | Path | None) -> list[tuple[str, Path]]:
    """The folders ``evaluate --pred/--truth`` reads, with the dataset folder of an MSD truth folder."""
    folders = [("truth folder", Path(truth_dir)), ("prediction folder", Path(pred_dir))]
    folders += [("images folder", Path(images_dir))] if images_dir else []
    return folders + [("dataset folder", f.parent) for _, f in folders if (f.parent / "dataset.json").is_file()]


def evaluate_run(
    run_dir: str | Path,
    store: str | Path,
    config: PredictConfig = PredictConfig(),
    pred_dir: str | Path | None = None,
    predict_fn=None,
    progress: bool = True,
    files: ReportFiles | None = None,
) -> dict[str, Any]:
    """Predict the run's validation cases from their original images and score them
    (``files``: and draw each case's picture)."""
    from prediction.guard import check_output
    from prediction.predict import CaseInput, predict_cases

    cases, pred_dir, reads = run_inputs(run_dir, store, pred_dir)
    check_output(
        pred_dir, reads, [c for c, _, _ in cases], config.save_probabilities, "--pred-out"
    )  # before the lock file is made: a refused run leaves the folder as it was
    with exclusive_lock(pred_dir):
        summary = predict_cases(
            run_dir,
            [CaseInput(c, img) for c, img, _ in cases],
            pred_dir,
            config,
            predict_fn=predict_fn,
            progress=progress,
            out_flag="--pred-out",
        )
        failed = {r.case_id: r.error for r in summary.failed}
        pairs = [CasePair(c, pred_dir / label_name(c), label, img) for c, img, label in cases if c not in failed]
        report = evaluate_pairs(pairs, progress, config, files)
    report["errors"].update({c: f"prediction failed: {e}" for c, e in failed.items()})
    report["missing_predictions"] = sorted(failed)
    report["run"] = str(Path(run_dir).resolve())
    report["predictions"] = str(pred_dir)
    return report


def check_report_path(path: str | Path) -> None:
    """An existing ``--out`` file is replaced only if it is an earlier report; checked before
    any work (a wrong --out must not cost a whole evaluation) and again when writing."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        try:
            earlier = read_json(path, "report")
        except ValueError:
            earlier = None
        if not isinstance(earlier, dict) or not all(k in earlier for k in REPORT_KEYS):
            raise EvaluationError(
                f"--out {path}: exists and is not a report of `pancreas evaluate`; choose another --out file"
            )


def write_report(report: dict[str, Any], path: str | Path, title: str = "Evaluation", command: str = "") -> None:
    """Write the report and the files beside it (``evaluation.report_files``): CSV, plot and page first,
    report.json last; an existing file is replaced only if this project wrote it."""
    check_report_path(path)
    write_report_files(report, ReportFiles.beside(path), title, command)
    write_json_atomic(path, report, point="report")


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
        lines.append(
            f"{r}: Dice over {d['n']} case(s), {d['n_absent']} absent from both; "
            f"HD95 over {h['n']}, {h['n_undefined']} undefined (region in only one map)"
        )
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
