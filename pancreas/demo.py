"""The whole journey on synthetic data: ``pancreas demo`` / ``make demo``.

synth -> preprocess -> index -> train -> predict (held-out cases) -> evaluate, all under
one folder. The demo's settings are embedded here (``demo_configs``) rather than read
from ``configs/``: they are the defaults of every stage except where a 2-core CPU needs
smaller numbers (patch sizes for the small phantoms, a small U-Net, a few minutes of
training). Each resolved config is written to ``OUT/configs/`` so the run can be repeated
stage by stage with the CLI. Every stage is resumable, so rerunning the demo reuses what
is up to date and only redoes what changed.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dataset.index.config import IndexConfig
from dataset.common.configio import to_dict
from inference.config import PredictConfig
from preprocess.config import PreprocessConfig

log = logging.getLogger(__name__)

DEMO_TRAIN_CASES = 10
DEMO_TEST_CASES = 3


@dataclass(frozen=True)
class DemoConfigs:
    """The resolved config of every stage the demo runs."""

    preprocess: PreprocessConfig
    index: IndexConfig
    train: Any  # training.config.TrainConfig (imported lazily: TensorFlow)
    predict: PredictConfig


def demo_configs() -> DemoConfigs:
    """Stage defaults, shrunk where the synthetic phantoms (about 100 mm a side) and a CPU need it."""
    from training.config import LossConfig, ModelConfig, TrainConfig

    index = dataclasses.replace(
        IndexConfig(),
        train_patch_xyz=(64, 64, 32),  # the phantoms are ~100 voxels a side after cropping
        val_patch_xyz=(96, 96, 48),
        model_depth=3,
    )
    train = dataclasses.replace(
        TrainConfig(),
        epochs=16,
        steps_per_epoch=25,
        lr_patience=6,
        image_patches=2,
        model=ModelConfig(depth=3, base_filters=8),  # ~0.4 M parameters: minutes on 2 cores
        # Generalized Dice alone sits on its "everything is foreground" plateau for a few
        # hundred steps; adding cross-entropy (nnU-Net's Dice+CE) shows learning within the
        # demo's budget. The real-data default stays the seed's Generalized Dice.
        loss=LossConfig(name="dice_cross_entropy"),
    )
    return DemoConfigs(PreprocessConfig(), index, train, PredictConfig())


@dataclass
class DemoResult:
    out_dir: Path
    paths: dict[str, Path]
    report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def write_configs(configs: DemoConfigs, folder: Path) -> dict[str, Path]:
    """Write each resolved config as YAML (usable with ``--config``)."""
    from dataset.common.files import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("preprocess", "index", "train", "predict"):
        path = folder / f"{name}.yaml"
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(to_dict(getattr(configs, name)), sort_keys=False))
        written[name] = path
    return written


def run_demo(out_dir: str | Path = "demo-output", workers: int | None = 2, progress: bool = True) -> DemoResult:
    """Run every stage under ``out_dir`` and return the evaluation report."""
    from dataset.index.build import build_index
    from inference.evaluate import evaluate_dirs, write_report
    from inference.predict import predict_cases
    from preprocess.driver import run_preprocess
    from pancreas.synthetic.msd import make_dataset
    from training.run import train

    out = Path(out_dir).resolve()
    paths = {
        "data": out / "data",
        "store": out / "store",
        "index": out / "store" / "index",
        "run": out / "run",
        "tensorboard": out / "run" / "logs",
        "predictions": out / "predictions",
        "report": out / "report.json",
        "configs": out / "configs",
    }
    configs = demo_configs()
    write_configs(configs, paths["configs"])
    seconds: dict[str, float] = {}

    def stage(name: str):
        log.info("demo: %s", name)
        seconds[name] = time.perf_counter()

    def done(name: str):
        seconds[name] = time.perf_counter() - seconds[name]

    stage("synth")
    make_dataset(paths["data"], DEMO_TRAIN_CASES, seed=0, size="small", n_test=DEMO_TEST_CASES, progress=progress)
    done("synth")

    stage("preprocess")
    pre = run_preprocess(paths["data"], paths["store"], configs.preprocess, workers=workers, progress=progress)
    if not pre.ok:
        raise RuntimeError(f"demo: preprocessing failed for {pre.failures}")
    done("preprocess")

    stage("index")
    build_index(paths["store"], configs.index, workers=workers, progress=progress)
    done("index")

    stage("train")
    train(paths["store"], paths["run"], configs.train, resume=True)
    done("train")

    stage("predict")
    predicted = predict_cases(paths["run"], paths["data"], paths["predictions"], configs.predict, progress=progress)
    if predicted.failed:
        raise RuntimeError(f"demo: prediction failed for {[r.case_id for r in predicted.failed]}")
    done("predict")

    stage("evaluate")
    report = evaluate_dirs(paths["predictions"], paths["data"] / "labelsTs", progress=progress)
    write_report(report, paths["report"])
    done("evaluate")
    return DemoResult(out, paths, report, seconds)
