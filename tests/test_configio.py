"""The YAML -> frozen dataclass loader every stage uses."""

from dataclasses import dataclass

import pytest

from dataset.common.configio import ConfigError, check_patch_fits_depth, from_dict, load_config
from dataset.index.config import IndexConfig
from preprocess.config import PreprocessConfig
from training.config import TrainConfig


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


@dataclass(frozen=True)
class _Inner:
    size: int = 1


@dataclass(frozen=True)
class _Outer:
    required: _Inner = _Inner()
    optional: _Inner | None = None


@pytest.mark.parametrize(
    ("cls", "text", "expected"),
    [
        # a nested section given a scalar, a list or null (reproduced from the issue: all were accepted)
        (
            TrainConfig,
            "model: 3\n",
            "c.yaml.model: expected a mapping (keys: activation, base_filters, deep_supervision, depth, norm, "
            "norm_groups), got 3",
        ),
        (
            TrainConfig,
            "model: [4, 16]\n",
            "c.yaml.model: expected a mapping (keys: activation, base_filters, deep_supervision, depth, norm, "
            "norm_groups), got [4, 16]",
        ),
        (IndexConfig, "elastic: null\n", "c.yaml.elastic: expected a mapping (keys: control_points, "),
        (IndexConfig, "elastic:\n", "got None"),
        # scalars: bool is not int, a float is not int, a number is not a string, text is not a number
        (TrainConfig, "model:\n  depth: true\n", "c.yaml.model.depth: expected int, got True"),
        (TrainConfig, "epochs: 3.5\n", "c.yaml.epochs: expected int, got 3.5"),
        (TrainConfig, "learning_rate: true\n", "c.yaml.learning_rate: expected float, got True"),
        (TrainConfig, "learning_rate: '1e-3'\n", "c.yaml.learning_rate: expected float, got '1e-3'"),
        (TrainConfig, "loss:\n  name: 3\n", "c.yaml.loss.name: expected str, got 3"),
        (PreprocessConfig, "equalize: 1\n", "c.yaml.equalize: expected bool, got 1"),
        (PreprocessConfig, "window_hu: [-135, true]\n", "c.yaml.window_hu[1]: expected float, got True"),
        (IndexConfig, "max_cases: true\n", "c.yaml.max_cases: expected int, got True"),
        (IndexConfig, "1: 2\n", "c.yaml: unknown key(s) 1; allowed:"),
    ],
)
def test_wrong_types_are_refused_with_file_key_and_value(tmp_path, cls, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(cls, path)
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message, message


def test_null_is_allowed_only_for_an_optional_section():
    assert from_dict(_Outer, {"optional": None}).optional is None
    assert from_dict(_Outer, {"optional": {"size": 2}}).optional == _Inner(2)
    with pytest.raises(ConfigError, match=r"config\.required: expected a mapping \(keys: size\), got None"):
        from_dict(_Outer, {"required": None})
    with pytest.raises(ConfigError, match=r"config\.optional: expected a mapping \(keys: size\), got 3"):
        from_dict(_Outer, {"optional": 3})


def test_right_types_still_load():
    assert from_dict(TrainConfig, {"learning_rate": 1, "model": {"depth": 3}}).learning_rate == 1.0
    assert from_dict(IndexConfig, {"max_cases": None}).max_cases is None
    assert from_dict(IndexConfig, {"max_cases": 5}).max_cases == 5
    assert load_config(TrainConfig, None) == from_dict(TrainConfig, None)  # an empty file is the defaults


@pytest.mark.parametrize(
    ("patch_zyx", "depth"), [((64, 128, 128), 4), ((8, 8, 8), 3), ((16, 32, 48), 4), ((5, 7, 9), 0)]
)
def test_patches_that_fit_the_depth_pass(patch_zyx, depth):
    assert check_patch_fits_depth(list(patch_zyx), depth, "training") == patch_zyx


@pytest.mark.parametrize(
    ("patch_zyx", "depth", "bad"),
    [
        ((20, 32, 32), 3, "(20, 32, 32)"),  # 20 is not a multiple of 8
        ((4, 32, 32), 3, "(4, 32, 32)"),  # a multiple of nothing but smaller than 8: 0 after 3 halvings
        ((0, 32, 32), 3, "(0, 32, 32)"),
        ((32, 32), 3, "(32, 32)"),
    ],
)
def test_patches_that_do_not_fit_quote_size_depth_and_factor(patch_zyx, depth, bad):
    with pytest.raises(ConfigError) as err:
        check_patch_fits_depth(patch_zyx, depth, "validation")
    assert str(err.value) == (
        f"validation patch size {bad} (z, y, x) cannot go through a U-Net of depth 3: every edge must be "
        "a positive multiple of 8, since the U-Net halves it 3 times (2**3 = 8)"
    )


# --- `--set KEY=VALUE` overrides (load_config's third argument) ----------------------------


def test_overrides_apply_on_top_of_the_file_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nmodel:\n  depth: 4\n  base_filters: 32\n")
    config = load_config(TrainConfig, path, ["model.depth=3", "augment.flip_axes=[1, 2]", "epochs=5", "epochs=6"])
    assert config == from_dict(
        TrainConfig, {"epochs": 6, "model": {"depth": 3, "base_filters": 32}, "augment": {"flip_axes": [1, 2]}}
    )


def test_overrides_apply_on_top_of_the_defaults():
    config = load_config(PreprocessConfig, None, ["window_hu=[-100, 200]", "equalize=false"])
    assert config == from_dict(PreprocessConfig, {"window_hu": [-100, 200], "equalize": False})
    assert config.window_hu == (-100.0, 200.0)  # typed like the YAML: ints into floats, a list into a tuple


def test_a_mapping_given_for_a_section_merges_key_by_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  base_filters: 32\n")
    assert (
        load_config(TrainConfig, path, ["model={depth: 3}"]).model
        == from_dict(TrainConfig, {"model": {"depth": 3, "base_filters": 32}}).model
    )


def test_an_entry_of_a_mapping_field_keeps_the_others():
    from prediction.config import PredictConfig

    assert load_config(PredictConfig, None, ["nsd_tolerance_mm.tumour=2"]).nsd_tolerance_mm == {
        **PredictConfig().nsd_tolerance_mm,
        "tumour": 2.0,
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("learning_rate=1e-4", 1e-4),  # PyYAML alone reads 1e-4 as a string
        ("learning_rate=2.5E+3", 2500.0),
        ("learning_rate=0.01", 0.01),
        ("learning_rate=3", 3.0),
    ],
)
def test_exponent_without_a_dot_is_a_float(text, value):
    assert load_config(TrainConfig, None, [text]).learning_rate == value


def test_exponent_without_a_dot_is_a_float_in_files_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-4\n")
    assert load_config(TrainConfig, path).learning_rate == 1e-4


@pytest.mark.parametrize(
    ("cls", "overrides", "expected"),
    [
        (
            TrainConfig,
            ["model.dpeth=3"],
            "--set model: unknown key(s) dpeth; allowed: activation, base_filters, deep_supervision, depth, norm, "
            "norm_groups",
        ),
        (TrainConfig, ["epoch=3"], "--set: unknown key(s) epoch; allowed: augment, batch_size, "),
        (TrainConfig, ["model.depth=abc"], "--set model.depth: expected int, got 'abc'"),
        (TrainConfig, ["model.depth=true"], "--set model.depth: expected int, got True"),
        (TrainConfig, ["model.depth=9"], "--set model: model.depth must be in 1..6, got 9"),
        (
            TrainConfig,
            ["model=3"],
            "--set model: expected a mapping (keys: activation, base_filters, deep_supervision, depth, norm, "
            "norm_groups), got 3",
        ),
        (TrainConfig, ["epochs.x=1"], "--set epochs: expected int, got {'x': 1}"),
        (TrainConfig, ["augment.flip_axes=[1, x]"], "--set augment.flip_axes[1]: expected int, got 'x'"),
        (PreprocessConfig, ["window_hu=abc"], "--set window_hu: expected a list, got 'abc'"),
        (PreprocessConfig, ["window_hu=[1,"], "--set window_hu: value '[1,' is not valid YAML"),
        (PreprocessConfig, ["window_hu"], "--set 'window_hu': expected KEY=VALUE with a dotted KEY"),
        (PreprocessConfig, ["model..depth=3"], "--set 'model..depth=3': expected KEY=VALUE"),
        (PreprocessConfig, ["=3"], "--set '=3': expected KEY=VALUE"),
        (IndexConfig, ["model_depth=4"], "--set model_depth: this key moved: "),
    ],
)
def test_bad_overrides_are_one_line_naming_the_key(cls, overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, overrides)
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message, message


def test_the_file_is_checked_on_its_own_before_the_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=r"c\.yaml\.epochs: expected int, got 'many'"):
        load_config(TrainConfig, path, ["epochs=3"])


def test_later_files_change_only_the_keys_they_name(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("epochs: 48\nsteps_per_epoch: 25\nmodel: {depth: 3, base_filters: 8}\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {norm: instance}\nschedule: poly\n")
    config = load_config(TrainConfig, [base, recipe], ["epochs=10"])
    assert (config.epochs, config.steps_per_epoch, config.schedule) == (10, 25, "poly")
    assert (config.model.depth, config.model.base_filters, config.model.norm) == (3, 8, "instance")
    assert load_config(TrainConfig, [recipe, base]).model.norm == "instance"  # base names no norm
    assert load_config(TrainConfig, [base]) == load_config(TrainConfig, base)


def test_a_later_file_is_checked_alone_and_over_the_earlier_ones(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {base_filters: 6, norm: group, norm_groups: 2}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("modle: {norm: instance}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key\(s\) modle"):
        load_config(TrainConfig, [base, typo])
    groups = tmp_path / "groups.yaml"
    groups.write_text("model: {norm_groups: 4}\n")  # valid alone, not over base's 6 filters
    expected = r"groups\.yaml \(over .*base\.yaml\).*norm_groups must divide base_filters=6"
    with pytest.raises(ConfigError, match=expected):
        load_config(TrainConfig, [base, groups])
