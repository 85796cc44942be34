"""The installation the Makefile builds: elasticdeform compiled against NumPy 2, the console script."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def test_elasticdeform_imports_and_runs_beside_numpy2():
    import elasticdeform  # the registry wheel fails here ("numpy.core.multiarray failed to import")

    assert int(np.__version__.split(".")[0]) >= 2
    image = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    displacement = np.zeros((3, 3, 3, 3))
    out = elasticdeform.deform_grid(image, displacement, order=1)
    np.testing.assert_allclose(out, image, atol=1e-4)  # zero displacement is the identity


def test_console_script_lists_every_stage():
    exe = shutil.which("pancreas") or str(Path(sys.executable).with_name("pancreas"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"^    (\w+) +\S", out, flags=re.MULTILINE)  # the COMMAND list, not the description
    assert listed == ["synth", "preprocess", "index", "train", "predict", "evaluate", "download", "demo"], out


# per subcommand: text only its own parser prints (its own options and their help)
OWN_HELP = {
    "synth": "--size {small,full}",
    "preprocess": "--data DATA",
    "index": "preprocessed store (from `pancreas preprocess`)",
    "train": "--synthetic-input",
    "predict": "--model RUN_DIR",
    "evaluate": "--pred-out DIR",
    "download": "--md5 MD5",
    "demo": "folder for everything (default demo-output/)",
}


def test_every_command_is_checked():
    from pancreas.cli import COMMANDS

    assert sorted(OWN_HELP) == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(OWN_HELP))
def test_each_command_prints_its_own_help(name, capsys):
    from pancreas.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert out.startswith(f"usage: pancreas {name} [-h]") and OWN_HELP[name] in out, out
    assert "COMMAND" not in out  # not the top-level help


def _fake_cli(tmp_path, monkeypatch, body: str) -> None:
    """Make `pancreas synth` a module written here (``body``)."""
    (tmp_path / "fake_cli_synth.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(__import__("pancreas.cli").cli.COMMANDS, "synth", "fake_cli_synth")


def test_missing_dependency_of_a_command_is_named_not_hidden(tmp_path, monkeypatch, capsys):
    from pancreas.cli import main

    _fake_cli(tmp_path, monkeypatch, "import no_such_dependency_xyz\n")
    assert main(["synth", "--out", "x"]) == 2  # before: "invalid choice: 'synth'", as if not built
    err = capsys.readouterr().err
    assert "'no_such_dependency_xyz'" in err and err.count("\n") == 1, err


def test_missing_dependency_imported_by_a_running_stage_is_named(tmp_path, monkeypatch, capsys):
    from pancreas.cli import main

    _fake_cli(tmp_path, monkeypatch, (
        "def add_parser(sub):\n"
        "    sub.add_parser('synth').set_defaults(run=run)\n"
        "def run(args):\n"
        "    import no_such_dependency_xyz\n"
    ))
    assert main(["synth"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pancreas synth: error:") and "'no_such_dependency_xyz'" in err, err


def test_a_module_of_this_project_that_is_missing_is_a_bug_with_a_traceback(monkeypatch):
    from pancreas import cli

    monkeypatch.setitem(cli.COMMANDS, "synth", "pancreas.cli_no_such_stage")
    with pytest.raises(ModuleNotFoundError, match="pancreas.cli_no_such_stage"):
        cli.main(["synth", "--help"])


def test_every_command_help_is_plain_text():
    from pancreas.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser([name])
        command = parser._subparsers._group_actions[0].choices[name]
        text = command.format_help()
        assert "``" not in text and f"pancreas {name}" in text, text
