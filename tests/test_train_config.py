"""Training config: YAML mirrors the defaults, validation names the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset.common.configio import ConfigError, from_dict
from training.config import TrainConfig, load_train_config

YAML = Path(__file__).resolve().parent.parent / "configs" / "train.yaml"


def test_yaml_equals_defaults():
    assert load_train_config(YAML) == TrainConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"epochz": 3}, "epochz"),
        ({"model": {"filters": 3}}, "filters"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"loss": {"name": "focal"}}, "'focal'"),
        ({"augment": {"flip_axes": [3]}}, "(3,)"),
        ({"precision": "float16"}, "'float16'"),
        ({"strategy": "tpu"}, "'tpu'"),
    ],
)
def test_rejects_bad_values(data, message):
    with pytest.raises(ConfigError, match=None) as info:
        from_dict(TrainConfig, data)
    assert message in str(info.value)


def test_gpu_example_config_loads_and_overrides_only_what_it_names():
    from pathlib import Path

    from training.config import TrainConfig, load_train_config

    gpu = load_train_config(Path(__file__).resolve().parents[1] / "configs" / "train_gpu.yaml")
    assert gpu.precision == "mixed_bfloat16" and gpu.epochs == 400
    assert gpu.model == TrainConfig().model and gpu.loss == TrainConfig().loss


def test_the_trainer_uses_the_one_patch_depth_check():
    from dataset.common.configio import ConfigError, check_patch_fits_depth
    from training.config import check_patch_size

    assert check_patch_size is check_patch_fits_depth
    with pytest.raises(
        ConfigError, match=r"training patch size \(64, 128, 120\) \(z, y, x\) cannot go through a U-Net of depth 4"
    ):
        check_patch_size((64, 128, 120), TrainConfig().model.depth, "training")


def test_multiworker_is_refused_in_one_line_saying_why():
    from training.config import TrainConfig

    with pytest.raises(ValueError, match=r"multiworker is not supported \(every worker would write RUN_DIR"):
        TrainConfig(strategy="multiworker")


@pytest.mark.parametrize("preset", ["train_seed.yaml", "train_nnunet_like.yaml"])
def test_the_presets_load_and_train_a_step(preset):
    import dataclasses
    from pathlib import Path

    import numpy as np

    from training.config import load_train_config
    from training.distribute import build_compiled_model

    config = load_train_config(Path(__file__).resolve().parents[1] / "configs" / preset)
    if preset == "train_nnunet_like.yaml":
        assert (config.model.norm, config.optimizer, config.schedule) == ("instance", "sgd", "poly")
        assert config.model.deep_supervision
    else:
        assert (config.model.norm, config.loss.name, config.optimizer) == ("batch", "generalized_dice", "adam")
    small = dataclasses.replace(config, model=dataclasses.replace(config.model, depth=3, base_filters=4))
    model = build_compiled_model(small)
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 32, 32, 1), dtype=np.float32)
    y = rng.integers(0, 3, (2, 16, 32, 32)).astype(np.uint8)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and int(model.optimizer.iterations) == 1
