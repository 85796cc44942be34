"""``MODEL.md``: the model card of a package, written from the runs' records and the cross-validation report.

See docs/how-to/package.md#the-model-card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dataset.common.configio import flatten_mapping
from dataset.contract.postprocessing import PostprocessingDecision
from dataset.contract.run import InputContract

SCORED_REGIONS = ("pancreas", "pancreas_label1", "tumour")
METRICS = (("dice", "Dice"), ("nsd", "NSD"), ("hd95_mm", "HD95 (mm)"))
LIMITS = """\
- Research use only: not a medical device, not validated for diagnosis or treatment planning.
- Made for contrast-enhanced (portal-venous) abdominal CT like the training data (MSD Task07:
  adults with pancreatic masses, one centre). Other phases, scanners, children, MRI or heavy
  artefacts are outside what it was trained on; its scores there are unknown.
- Cross-validation scores are out-of-fold estimates on the training cohort, not a test on
  another hospital's scans. Tumour scores on small cohorts vary widely between folds.
- A synthetic dataset (`pancreas synth`) makes a model that only works on synthetic phantoms.
- Check every label map before using it; `pancreas predict --preview` draws them."""


@dataclass(frozen=True)
class CardModel:
    """What the card says of one model: its folder, source run, contract and training records."""

    folder: str
    run: str
    contract: InputContract
    train_config: Mapping[str, Any] | None  # RUN_DIR/config.json, when present
    epochs: int | None  # epochs completed (state.json)
    best_epoch: int | None
    packages: Mapping[str, str | None]  # the newest start's versions (environment.json)


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _scores_table(summary: Mapping[str, Any], tolerances: Mapping[str, Any]) -> list[str]:
    rows = ["| region | " + " | ".join(f"{label} mean / median" for _, label in METRICS) + " | NSD tolerance | cases |"]
    rows.append("|---" * (len(METRICS) + 3) + "|")
    for region in SCORED_REGIONS:
        if region not in summary:
            continue
        cells = [f"{_number(summary[region][m]['mean'])} / {_number(summary[region][m]['median'])}" for m, _ in METRICS]
        n = summary[region]["dice"]["n"]
        rows.append(f"| {region} | {' | '.join(cells)} | {tolerances.get(region, 'n/a')} mm | {n} |")
    return rows


def _scores(report: Mapping[str, Any] | None, decision: PostprocessingDecision | None) -> list[str]:
    if report is None:
        return ["Not scored: packaged from runs without a cross-validation report (`pancreas package --cv`)."]
    checkpoint = report.get("checkpoint", "unknown")
    lines = [
        f"Pooled out-of-fold scores of `pancreas evaluate --cv`, checkpoint `{checkpoint}` of each fold "
        f"(the model of each case never saw it in training). Means and medians over the cases where a "
        "metric is defined (a region absent from both maps is left out).",
        "",
        "Raw out-of-fold predictions:",
        "",
        *_scores_table(report["summary"], report.get("nsd_tolerance_mm", {})),
    ]
    post = report.get("postprocessing") or {}
    if decision is not None and any(decision.largest_component.values()) and post.get("summary"):
        lines += ["", "With the packaged postprocessing applied:", ""]
        lines += _scores_table(post["summary"], report.get("nsd_tolerance_mm", {}))
    detection = report["summary"].get("tumour_detection")
    if isinstance(detection, Mapping) and detection.get("sensitivity") is not None:
        lines += [
            "",
            f"Tumour detection (lesion-wise): sensitivity {_number(detection.get('sensitivity'))}, "
            f"false tumours per case {_number(detection.get('false_per_case'), 2)}.",
        ]
    return lines


def _data(models: Sequence[CardModel], report: Mapping[str, Any] | None) -> list[str]:
    first = models[0].contract
    lines = [f"- Store fingerprint: `{first.store_fingerprint or 'not recorded'}`."]
    if report is not None:
        folds = report.get("folds", [])
        per_fold = ", ".join(f"fold {f['fold']}: {len(f['cases'])}" for f in folds)
        lines.append(f"- {len(report['cases'])} labelled case(s) in {len(folds)} fold(s) ({per_fold}).")
    if first.n_folds:
        lines.append(f"- Index with {first.n_folds} fold(s); each model trained on all folds but its own.")
    return lines


def _models(models: Sequence[CardModel], checkpoint: str) -> list[str]:
    rows = ["| folder | fold | epochs | best epoch | depth | base filters | loss | from run |", "|---" * 8 + "|"]
    for m in models:
        config = m.train_config or {}
        model = config.get("model", {}) if isinstance(config.get("model"), Mapping) else {}
        loss = config.get("loss", {}).get("name") if isinstance(config.get("loss"), Mapping) else None
        rows.append(
            f"| `{m.folder}` | {m.contract.fold if m.contract.fold is not None else 'n/a'} | {m.epochs or 'n/a'} | "
            f"{m.best_epoch or 'n/a'} | {m.contract.model_depth} | {model.get('base_filters', 'n/a')} | "
            f"{loss or 'n/a'} | `{m.run}` |"
        )
    return [f"Each model's `{checkpoint}` checkpoint, without optimiser state:", "", *rows]


def _preprocessing(contract: InputContract) -> list[str]:
    flat = flatten_mapping(dict(contract.preprocess), "")
    lines = [
        "Every scan is prepared exactly as the training store was (the run's `input_contract.json`; "
        "`pancreas predict` does it):",
        "",
    ]
    lines += [f"- `{key.lstrip('.')}`: `{value}`" for key, value in flat.items()]
    lines += [
        f"- Sliding window {list(contract.default_window_zyx)} (z, y, x), "
        f"mirroring along the axes the trainer flipped ({list(contract.mirror_axes or [])}), then the label map "
        "back onto the scan's own grid.",
        f"- Model input: {contract.input or 'stored uint8 level / 255'}; output: "
        f"{contract.output or 'softmax of the classes'}.",
    ]
    return lines


def _versions(models: Sequence[CardModel], packaged_with: Mapping[str, str]) -> list[str]:
    lines = ["Packaged with: " + ", ".join(f"{k} {v}" for k, v in packaged_with.items()) + "."]
    trained = models[0].packages
    if trained:
        lines.append("Trained with: " + ", ".join(f"{k} {v}" for k, v in trained.items() if v) + ".")
    return lines


def model_card(
    models: Sequence[CardModel],
    checkpoint: str,
    report: Mapping[str, Any] | None,
    decision: PostprocessingDecision | None,
    packaged_with: Mapping[str, str],
) -> str:
    """The card's Markdown text."""
    first = models[0].contract
    names = first.label_names
    labels = [names[k] for k in sorted(names, key=int)] if isinstance(names, Mapping) else list(names or [])
    post = (
        "none packaged"
        if decision is None
        else f"largest connected component only for: {', '.join(decision.regions) or 'no region'}"
    )
    sections = [
        "# Model card: pancreas and pancreatic tumour segmentation in CT",
        "",
        f"A {len(models)}-model ensemble of 3D U-Nets (`pancreas train`), packaged by `pancreas package`. "
        f"Classes: {', '.join(f'{i} {n}' for i, n in enumerate(labels)) or first.n_classes}. "
        f"Postprocessing: {post}.",
        "",
        "## Data",
        "",
        *_data(models, report),
        "",
        "## Protocol and models",
        "",
        *_models(models, checkpoint),
        "",
        "## Scores",
        "",
        *_scores(report, decision),
        "",
        "## Preprocessing",
        "",
        *_preprocessing(first),
        "",
        "## Intended use and limits",
        "",
        LIMITS,
        "",
        "## Versions",
        "",
        *_versions(models, packaged_with),
        "",
        "Check the package with `pancreas package --verify MODEL.zip`; predict with "
        "`pancreas predict --model MODEL.zip --input CT --out DIR`.",
        "",
    ]
    return "\n".join(sections)
