"""The whole journey on synthetic data: ``pancreas demo`` / ``make demo``.

Stage defaults plus the overrides of ``configs/demo/`` (an in-code copy, ``DEMO_OVERRIDES``, for an
install without the source tree). See docs/how-to/demo.md and docs/explanation/internals.md#the-demo-pancreasdemopy.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataset.common.configio import from_dict, load_config, to_dict
from dataset.common.errors import PancreasError
from dataset.common.paths import refuse_inside
from dataset.index.config import IndexConfig
from prediction.config import PredictConfig
from preprocess.config import PreprocessConfig
from training.config import TrainConfig  # no TensorFlow: that is imported by training.run

log = logging.getLogger(__name__)

DEMO_TRAIN_CASES = 10
DEMO_TEST_CASES = 3
# Task07's tumour sizes at the small phantoms' scale (``sources.synthetic.params``): with
# the small profile's own 5-8 mm tumours the demo's model found none in its budget (tumour
# Dice 0); with these (8-26 mm) and 48 epochs it finds them (README: "A demo run").
DEMO_TUMOURS = "task07"

# configs/demo/*.yaml, found from this file so `pancreas demo` works from any folder.
DEMO_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "demo"

# The same overrides for an install without the source tree (see the module docstring);
# tests/test_demo_config.py keeps them equal to configs/demo/*.yaml. Stages not named
# here (preprocess, predict) run with their defaults. Predict's default mirrors along the
# run's flip axes (y, x: 4 model passes per window); measured on this 2-core CPU, the
# demo's 3 held-out cases took 4 s mirrored (3.7 s in the model) against 1.3 s of model
# time unmirrored, and pancreas Dice 0.878 vs 0.876 (with the small profile's own tumours,
# before DEMO_TUMOURS), so the demo keeps the default and
# shows what `pancreas predict` does, rather than a `mirror_axes: []` override.
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    "index": {"train_patch_xyz": [64, 64, 32], "val_patch_xyz": [96, 96, 48], "folds": 1},
    "train": {
        "epochs": 48,
        "steps_per_epoch": 25,
        "lr_patience": 6,
        "model": {"depth": 3, "base_filters": 8},
        "loss": {"name": "dice_cross_entropy"},
    },
}


@dataclass(frozen=True)
class DemoConfigs:
    """The resolved config of every stage the demo runs."""

    preprocess: PreprocessConfig
    index: IndexConfig
    train: TrainConfig
    predict: PredictConfig


def demo_configs(folder: Path | None = None) -> DemoConfigs:
    """Stage defaults plus the demo's overrides: ``folder`` (default ``configs/demo``) if it
    exists, else the equal in-code copy ``DEMO_OVERRIDES``."""
    folder = DEMO_CONFIG_DIR if folder is None else folder
    classes = {"preprocess": PreprocessConfig, "index": IndexConfig, "train": TrainConfig, "predict": PredictConfig}
    if folder.is_dir():
        loaded = {
            name: load_config(cls, folder / f"{name}.yaml") if name in DEMO_OVERRIDES else cls()
            for name, cls in classes.items()
        }
    else:
        log.debug("%s not found (installed without the source tree): using pancreas.demo.DEMO_OVERRIDES", folder)
        loaded = {
            name: from_dict(cls, DEMO_OVERRIDES.get(name), where=f"pancreas.demo.DEMO_OVERRIDES[{name!r}]")
            for name, cls in classes.items()
        }
    return DemoConfigs(**loaded)


@dataclass
class DemoResult:
    out_dir: Path
    paths: dict[str, Path]
    report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def write_configs(configs: DemoConfigs, folder: Path) -> dict[str, Path]:
    """Write each resolved config as YAML (usable with ``--config``)."""
    from dataset.common.atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("preprocess", "index", "train", "predict"):
        path = folder / f"{name}.yaml"
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(to_dict(getattr(configs, name)), sort_keys=False))
        written[name] = path
    return written


def demo_paths(out: Path) -> dict[str, Path]:
    """Where each stage of the demo writes, all under ``out``."""
    return {
        "data": out / "data",
        "store": out / "store",
        "index": out / "store" / "index",
        "run": out / "run",
        "tensorboard": out / "run" / "logs",
        "predictions": out / "predictions",
        "report": out / "report.json",
        "report_html": out / "report.html",
        "progress": out / "run" / "progress.png",
        "configs": out / "configs",
    }


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Log the stage's start and record its wall time in ``seconds[name]`` when it ends."""
    log.info("demo: %s", name)
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def build_store(
    paths: dict[str, Path], configs: DemoConfigs, workers: int | None, progress: bool, seconds: dict[str, float]
) -> None:
    """synth -> preprocess -> index."""
    from dataset.index.build import build_index
    from preprocess.driver import run_preprocess
    from sources.synthetic.msd import make_dataset

    with _timed(seconds, "synth"):
        make_dataset(
            paths["data"],
            DEMO_TRAIN_CASES,
            seed=0,
            size="small",
            n_test=DEMO_TEST_CASES,
            progress=progress,
            tumours=DEMO_TUMOURS,
        )
    with _timed(seconds, "preprocess"):
        pre = run_preprocess(paths["data"], paths["store"], configs.preprocess, workers=workers, progress=progress)
        if not pre.ok:
            raise PancreasError(f"demo: preprocessing failed for {pre.failures}")
    with _timed(seconds, "index"):
        build_index(paths["store"], configs.index, workers=workers, progress=progress)


def train_and_score(
    paths: dict[str, Path], configs: DemoConfigs, progress: bool, seconds: dict[str, float]
) -> dict[str, Any]:
    """train -> predict the held-out cases -> evaluate; the evaluation report."""
    from dataset.contract.run import holds_run
    from evaluation.evaluate import evaluate_dirs, write_report
    from evaluation.report_files import ReportFiles
    from prediction.predict import predict_cases
    from training.run import train

    with _timed(seconds, "train"):
        train(
            paths["store"],
            paths["run"],
            configs.train,
            resume=holds_run(paths["run"]),  # continue a killed demo
            progress=progress,
        )
    with _timed(seconds, "predict"):
        predicted = predict_cases(paths["run"], paths["data"], paths["predictions"], configs.predict, progress=progress)
        if predicted.failed:
            raise PancreasError(f"demo: prediction failed for {[r.case_id for r in predicted.failed]}")
    with _timed(seconds, "evaluate"):
        report = evaluate_dirs(
            paths["predictions"],
            paths["data"] / "labelsTs",
            progress=progress,
            images_dir=paths["data"] / "imagesTs",
            files=ReportFiles.beside(paths["report"]),
        )
        write_report(report, paths["report"], title="Demo: held-out synthetic cases", command="pancreas demo")
    return report


def run_demo(out_dir: str | Path = "demo-output", workers: int | None = 2, progress: bool = True) -> DemoResult:
    """Run every stage under ``out_dir`` and return the evaluation report."""
    out = Path(out_dir).resolve()
    refuse_inside(out, [("demo config folder", DEMO_CONFIG_DIR)], "--out")
    paths = demo_paths(out)
    configs = demo_configs()
    write_configs(configs, paths["configs"])
    seconds: dict[str, float] = {}
    build_store(paths, configs, workers, progress, seconds)
    report = train_and_score(paths, configs, progress, seconds)
    return DemoResult(out, paths, report, seconds)
