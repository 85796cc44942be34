"""The demo's overrides: configs/demo/*.yaml, the in-code copy for installs without them, and their values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataset.common.configio import check_patch_fits_depth, from_dict, load_config
from dataset.index.config import IndexConfig
from pancreas.demo import DEMO_CONFIG_DIR, DEMO_OVERRIDES, demo_configs
from prediction.config import PredictConfig
from preprocess.config import PreprocessConfig
from training.config import LossConfig, ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"index": IndexConfig, "train": TrainConfig}


def test_the_files_are_configs_demo_and_nothing_else():
    assert DEMO_CONFIG_DIR == ROOT / "configs" / "demo"
    assert sorted(p.name for p in DEMO_CONFIG_DIR.iterdir()) == sorted(f"{n}.yaml" for n in DEMO_OVERRIDES)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_yaml_equals_the_in_code_copy(name):
    path = DEMO_CONFIG_DIR / f"{name}.yaml"
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == DEMO_OVERRIDES[name]  # same keys, not only same result
    assert load_config(CLASSES[name], path) == from_dict(CLASSES[name], DEMO_OVERRIDES[name])


def test_without_the_source_tree_the_fallback_gives_the_same_configs(tmp_path):
    assert demo_configs(tmp_path / "not-installed") == demo_configs()


def test_demo_values():
    configs = demo_configs()
    assert configs.preprocess == PreprocessConfig() and configs.predict == PredictConfig()
    assert configs.index.train_patch_xyz == (64, 64, 32) and configs.index.val_patch_xyz == (96, 96, 48)
    assert configs.train.model == ModelConfig(depth=3, base_filters=8)
    assert configs.train.loss == LossConfig(name="dice_cross_entropy")
    assert (configs.train.epochs, configs.train.steps_per_epoch, configs.train.lr_patience) == (48, 25, 6)
    # the index no longer knows the depth: the demo's own two files must agree
    check_patch_fits_depth(configs.index.train_patch_zyx, configs.train.model.depth, "demo training")
    check_patch_fits_depth(configs.index.val_patch_zyx, configs.train.model.depth, "demo validation")


def test_a_broken_demo_file_is_an_error_not_a_silent_fallback(tmp_path):
    (tmp_path / "index.yaml").write_text("train_patch_xyz: [64, 64]\n")
    (tmp_path / "train.yaml").write_text("epochs: 16\n")
    with pytest.raises(ValueError, match=r"index\.yaml\.train_patch_xyz: expected 3 values"):
        demo_configs(tmp_path)


def test_found_from_any_working_folder(tmp_path):
    code = "from pancreas.demo import DEMO_CONFIG_DIR as d; print(d.is_dir(), d)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"True {DEMO_CONFIG_DIR}"  # the YAML files, not the fallback
