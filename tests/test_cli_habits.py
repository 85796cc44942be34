"""Habits every `pancreas` command shares: --set, -v/-q on either side of the command,
--version, --no-progress on the long commands, and required options listed apart in --help."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from dataset.common.errors import UsageError
from pancreas.cli import build_parser, main


def _one_error_line(capsys, stage: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pancreas {stage}: error: "), err
    return err.removeprefix(f"pancreas {stage}: error: ").rstrip("\n")


def _fake_module(monkeypatch, name: str, **attrs) -> None:
    """Put a stand-in for the library module ``name`` where the command imports it from."""
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


# ---- --set ------------------------------------------------------------------------------

# every command that takes --config: the arguments that reach its config loading, a bad
# type for one of its keys and the one line that names it
SET_STAGES = {
    "preprocess": (
        ["--data", "DATA", "--out", "STORE"],
        "window_hu=abc",
        "--set window_hu: expected a list, got 'abc'",
    ),
    "index": (["--store", "STORE"], "elastic.sigma_voxels=[1]", "--set elastic.sigma_voxels: expected float, got [1]"),
    "train": (["--store", "STORE", "--out", "RUN"], "model.depth=abc", "--set model.depth: expected int, got 'abc'"),
    "predict": (
        ["--model", "RUN", "--input", "IN", "--out", "OUT"],
        "batch_size=true",
        "--set batch_size: expected int, got True",
    ),
    "evaluate": (
        ["--pred", "PRED", "--truth", "TRUTH"],
        "nsd_tolerance_mm.tumour=x",
        "--set nsd_tolerance_mm.tumour: expected float, got 'x'",
    ),
    "download": (["--out", "DATA"], "retries=3.5", "--set retries: expected int, got 3.5"),
}


def test_every_command_with_config_takes_set():
    for name in ("synth", "preprocess", "index", "train", "predict", "evaluate", "download", "demo"):
        command = build_parser([name])._subparsers._group_actions[0].choices[name]
        options = {o for a in command._actions for o in a.option_strings}
        assert ("--set" in options) == ("--config" in options) == (name in SET_STAGES), name


@pytest.mark.parametrize("stage", sorted(SET_STAGES))
def test_set_with_an_unknown_key_is_one_line(stage, tmp_path, capsys):
    args, _, _ = SET_STAGES[stage]
    args = [str(tmp_path / a) if a.isupper() else a for a in args]
    assert main([stage, *args, "--set", "no_such_key=1"]) == 2
    assert _one_error_line(capsys, stage).startswith("--set: unknown key(s) no_such_key; allowed: ")


@pytest.mark.parametrize("stage", sorted(SET_STAGES))
def test_set_with_a_bad_type_is_one_line_naming_the_key(stage, tmp_path, capsys):
    args, override, expected = SET_STAGES[stage]
    args = [str(tmp_path / a) if a.isupper() else a for a in args]
    assert main([stage, *args, "--set", override]) == 2
    assert _one_error_line(capsys, stage).startswith(expected)


def test_set_applies_on_top_of_config_and_the_store_records_it(tmp_path, capsys):
    """preprocess and index for real: the store's catalog and index summary hold the overrides."""
    data, store = tmp_path / "data", tmp_path / "store"
    assert main(["synth", "--out", str(data), "--cases", "3", "--test", "0", "--no-progress"]) == 0
    config = tmp_path / "preprocess.yaml"
    config.write_text("window_hu: [-150, 300]\nequalize: false\n")
    assert (
        main(
            [
                "preprocess",
                "--data",
                str(data),
                "--out",
                str(store),
                "--workers",
                "0",
                "--no-progress",
                "--config",
                str(config),
                "--set",
                "window_hu=[-100, 200]",
            ]
        )
        == 0
    )
    recorded = json.loads((store / "catalog.json").read_text(encoding="utf-8"))["config"]
    assert recorded["window_hu"] == [-100.0, 200.0] and recorded["equalize"] is False
    assert (
        main(
            [
                "index",
                "--store",
                str(store),
                "--workers",
                "0",
                "--no-progress",
                "--set",
                "folds=1",
                "--set",
                "train_patch_xyz=[32, 32, 16]",
                "--set",
                "val_patch_xyz=[32, 32, 16]",
                "--set",
                "elastic.sigma_voxels=2",
            ]
        )
        == 0
    )
    recorded = json.loads((store / "index" / "summary.json").read_text(encoding="utf-8"))["config"]
    assert (recorded["folds"], recorded["train_patch_xyz"], recorded["elastic"]["sigma_voxels"]) == (
        1,
        [32, 32, 16],
        2.0,
    )


def test_train_hands_the_overridden_config_to_the_run(tmp_path, monkeypatch, capsys):
    seen = {}

    def train(store, run_dir, config, **kwargs):
        seen.update(config=config, **kwargs)
        raise UsageError("stop here")

    _fake_module(monkeypatch, "training.run", train=train, run_dir_summary_lines=lambda s: [])
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 3\nmodel:\n  base_filters: 8\n")
    assert (
        main(
            [
                "train",
                "--store",
                "S",
                "--out",
                str(tmp_path / "run"),
                "--config",
                str(config),
                "--set",
                "model.depth=3",
                "--set",
                "augment.flip_axes=[2]",
                "--no-progress",
            ]
        )
        == 2
    )
    c = seen["config"]
    assert (c.epochs, c.model.depth, c.model.base_filters, c.augment.flip_axes) == (3, 3, 8, (2,))
    assert seen["progress"] is False


def test_predict_and_download_hand_the_overridden_config_on(tmp_path, monkeypatch, capsys):
    seen = {}

    def predict_cases(models, inputs, out, config, **kwargs):
        seen["predict"] = config
        raise UsageError("stop here")

    def download_dataset(config, out_dir, progress=True):
        seen["download"], seen["progress"] = config, progress
        raise UsageError("stop here")

    _fake_module(monkeypatch, "prediction.predict", predict_cases=predict_cases)
    monkeypatch.setattr("sources.download.download_dataset", download_dataset)
    assert (
        main(
            [
                "predict",
                "--model",
                "R",
                "--input",
                "I",
                "--out",
                "O",
                "--set",
                "overlap=0.25",
                "--set",
                "mirror_axes=[0]",
            ]
        )
        == 2
    )
    assert (seen["predict"].overlap, seen["predict"].mirror_axes) == (0.25, (0,))
    assert (
        main(["download", "--set", "retries=7", "--url", "http://example.invalid/Task07_Pancreas.tar", "--no-progress"])
        == 2
    )
    assert seen["download"].retries == 7 and seen["download"].url.startswith("http://example.invalid")
    assert seen["progress"] is False


# ---- -v / -q, --version -------------------------------------------------------------------


@pytest.fixture
def recorded_args(tmp_path, monkeypatch):
    """`pancreas synth` replaced by a command that records the parsed arguments and the log level."""
    (tmp_path / "fake_habits_synth.py").write_text(
        "SEEN = {}\n"
        "def add_parser(sub):\n"
        "    p = sub.add_parser('synth')\n"
        "    p.add_argument('--no-progress', action='store_true')\n"
        "    p.set_defaults(run=run)\n"
        "def run(args):\n"
        "    SEEN['args'] = args\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(__import__("pancreas.cli").cli.COMMANDS, "synth", "fake_habits_synth")
    levels = []
    monkeypatch.setattr("logging.basicConfig", lambda **kw: levels.append(kw["level"]))
    import fake_habits_synth

    def run(argv):
        assert main(argv) == 0
        args = fake_habits_synth.SEEN.pop("args")
        return args, levels.pop()

    return run


@pytest.mark.parametrize(
    ("argv", "verbose", "quiet", "level"),
    [
        (["synth"], False, False, 20),
        (["-v", "synth"], True, False, 10),
        (["synth", "-v"], True, False, 10),
        (["synth", "--verbose"], True, False, 10),
        (["-q", "synth"], False, True, 30),
        (["synth", "-q"], False, True, 30),
        (["synth", "--quiet"], False, True, 30),
    ],
)
def test_verbose_and_quiet_before_or_after_the_command(recorded_args, argv, verbose, quiet, level):
    args, logged = recorded_args(argv)
    assert (args.verbose, args.quiet, logged) == (verbose, quiet, level)
    assert args.no_progress is quiet  # quiet: no progress bars either


@pytest.mark.parametrize("argv", [["-v", "synth", "-q"], ["synth", "-q", "-v"], ["-q", "-v", "synth"]])
def test_verbose_and_quiet_exclude_each_other(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "never_written")])
    assert exit_.value.code == 2 and "-v/--verbose and -q/--quiet exclude each other" in capsys.readouterr().err


def test_version_is_the_package_version(capsys):
    import tomllib

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    version = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"
    ]["version"]
    assert exit_.value.code == 0 and capsys.readouterr().out == f"pancreas {version}\n"


def test_version_of_a_checkout_that_was_never_installed_is_pyprojects(monkeypatch):
    from importlib import metadata

    from dataset.common import version

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert version.package_version() == version._pyproject_version() != "unknown"


# ---- --no-progress, required options ------------------------------------------------------

LONG_COMMANDS = {  # the arguments each needs besides --no-progress
    "synth": ["--out", "D"],
    "preprocess": ["--data", "D", "--out", "S"],
    "index": ["--store", "S"],
    "train": ["--store", "S"],
    "predict": ["--model", "R", "--input", "I", "--out", "O"],
    "evaluate": ["--pred", "P", "--truth", "T"],
    "qc": ["--store", "S", "--out", "Q"],
    "download": [],
    "demo": [],
}


@pytest.mark.parametrize("name", sorted(LONG_COMMANDS))
def test_every_long_command_takes_no_progress(name):
    args = build_parser([name]).parse_args([name, *LONG_COMMANDS[name], "--no-progress"])
    assert args.no_progress is True
    assert build_parser([name]).parse_args([name, *LONG_COMMANDS[name]]).no_progress is False


def test_synth_no_progress_hides_its_bar(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "a"), "--cases", "1", "--test", "0"]) == 0
    assert "synth: 100%" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "b"), "--cases", "1", "--test", "0", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


REQUIRED = {
    "synth": ["--out"],
    "preprocess": ["--data", "--out"],
    "index": ["--store"],
    "train": ["--store"],
    "predict": ["--model", "--input", "--out"],
    "qc": ["--store", "--out"],
}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_help_lists_required_options_apart(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = capsys.readouterr().out
    options, _, rest = out.partition("\nrequired arguments:\n")
    required = rest.split("\n\n")[0]
    listed = [line.split()[0] for line in required.splitlines() if line.startswith("  --")]
    assert listed == REQUIRED[name], out
    assert not any(f"\n  {o} " in options for o in REQUIRED[name]), out
