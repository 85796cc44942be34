"""The YAML -> frozen dataclass loader every stage uses."""
import pytest

from dataset.common.configio import ConfigError, load_config
from preprocess.config import PreprocessConfig


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("window_hu: [-135, 250]\nwindw: 3\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) windw"):
        load_config(PreprocessConfig, path)


def test_scalar_where_a_list_belongs_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('window_hu: "abc"\n')
    with pytest.raises(ConfigError, match=r"c\.yaml\.window_hu: expected a list, got 'abc'"):
        load_config(PreprocessConfig, path)


def test_broken_yaml_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("window_hu: [1,\n  x: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(PreprocessConfig, path)
    assert "\n" not in str(err.value) and "c.yaml:3:1: not valid YAML" in str(err.value)


def test_missing_file_and_defaults(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PreprocessConfig, tmp_path / "nope.yaml")
    assert load_config(PreprocessConfig, None) == PreprocessConfig()
