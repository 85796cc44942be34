"""configs/predict.yaml and configs/download.yaml mirror the dataclass defaults; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset.common.configio import ConfigError, from_dict, load_config
from prediction.config import PredictConfig
from sources.config import DownloadConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(("cls", "name"), [(PredictConfig, "predict.yaml"), (DownloadConfig, "download.yaml")])
def test_yaml_equals_defaults(cls, name):
    assert load_config(cls, CONFIGS / name) == cls()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"mirror_axes": [0, 3]}, "mirror_axes"),
        ({"largest_component": "biggest"}, "largest_component"),
        ({"window_zyx": [0, 64, 64]}, "window_zyx"),
        ({"batch_size": 0}, "batch_size"),
        ({"checkpoint": "final"}, "checkpoint"),
        ({"windw_zyx": [64, 64, 64]}, "unknown key"),
    ],
)
def test_bad_predict_values_are_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(PredictConfig, data)


def test_window_from_yaml_becomes_a_tuple():
    assert from_dict(PredictConfig, {"window_zyx": [32, 64, 64], "mirror_axes": [1, 2]}).window_zyx == (32, 64, 64)


def test_predict_window_check_is_the_shared_one_with_predicts_error_type():
    from dataset.common.configio import check_patch_fits_depth
    from dataset.contract.run import InputContract
    from prediction.predict import PredictError, resolve_config

    contract = InputContract(val_patch_size_zyx=(32, 64, 64), n_classes=3, model_depth=2, preprocess={})
    with pytest.raises(PredictError) as err:
        resolve_config(PredictConfig(window_zyx=(30, 64, 64)), contract)
    with pytest.raises(ConfigError) as shared:
        check_patch_fits_depth((30, 64, 64), 2, "sliding-window")
    assert str(err.value) == str(shared.value)
    assert not isinstance(err.value, ConfigError)  # callers that catch PredictError still do
