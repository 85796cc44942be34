"""IndexConfig defaults, the commented YAML, and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset.common.configio import ConfigError, from_dict, load_config
from dataset.index.config import ElasticConfig, IndexConfig

YAML = Path(__file__).resolve().parents[1] / "configs" / "index.yaml"


def test_yaml_mirrors_defaults():
    assert load_config(IndexConfig, YAML) == IndexConfig()


def test_sizes_are_converted_to_zyx():
    c = IndexConfig()
    assert c.train_patch_zyx == (64, 128, 128) and c.val_patch_zyx == (64, 256, 256)


def test_index_takes_any_positive_patch_the_depth_lives_in_train_yaml():
    # the U-Net depth is checked by `pancreas train` (check_patch_fits_depth), not here
    assert from_dict(IndexConfig, {"train_patch_xyz": [128, 128, 40]}).train_patch_zyx == (40, 128, 128)
    with pytest.raises(
        ConfigError, match=r"train_patch_xyz must be three positive sizes \(x, y, z\), got \(128, 0, 40\)"
    ):
        from_dict(IndexConfig, {"train_patch_xyz": [128, 0, 40]})
    assert not hasattr(IndexConfig(), "model_depth")  # configs/index.yaml without it: test_yaml_mirrors_defaults


def test_old_model_depth_key_says_where_it_moved(tmp_path):
    path = tmp_path / "dataset.yaml"
    path.write_text("train_patch_xyz: [128, 128, 64]\nmodel_depth: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(IndexConfig, path)
    message = str(err.value)
    assert message.startswith(f"{path}.model_depth: this key moved: ") and "train.yaml's model.depth" in message
    assert "(this file says 4)" in message and "\n" not in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"folds": 0}, "folds must be an integer >= 1, got 0"),
        ({"val_fraction": 0.0}, "val_fraction must be in"),
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"foreground_copies": 0}, "foreground_copies"),
        ({"overlap": 1.0}, "overlap"),
        ({"elastic": {"image_order": 2}}, "image_order"),
        ({"elastic": {"sigma": 3}}, "unknown key"),
        ({"patch": 3}, "unknown key"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(IndexConfig, data)


def test_nested_elastic_loads():
    assert from_dict(IndexConfig, {"elastic": {"sigma_voxels": 2}}).elastic == ElasticConfig(sigma_voxels=2.0)


def test_dataset_imports_without_tensorflow_or_simpleitk():
    import subprocess
    import sys

    code = (
        "import sys, dataset.index.build, dataset.contract.reader, dataset.common.runner, pancreas.cli_index; "
        "bad = [m for m in ('tensorflow', 'SimpleITK') if m in sys.modules]; "
        "print(*bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    assert result.returncode == 0, result.stdout + result.stderr
