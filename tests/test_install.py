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
    assert listed == [
        "synth",
        "preprocess",
        "index",
        "train",
        "export",
        "package",
        "predict",
        "evaluate",
        "qc",
        "download",
        "demo",
        "env",
    ], out


# per subcommand: text only its own parser prints (its own options and their help)
OWN_HELP = {
    "synth": "--size {small,full,msd}",
    "preprocess": "--data DATA",
    "index": "preprocessed store (from `pancreas preprocess`)",
    "train": "--synthetic-input",
    "predict": "--model RUN_DIR",
    "evaluate": "--pred-out DIR",
    "qc": "--outlier-z",
    "download": "--md5 MD5",
    "demo": "folder for everything (default demo-output/)",
    "export": "--checkpoint {best,last}",
    "package": "--verify MODEL",
    "env": "what this machine gives the pipeline",
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

    _fake_cli(
        tmp_path,
        monkeypatch,
        (
            "def add_parser(sub):\n"
            "    sub.add_parser('synth').set_defaults(run=run)\n"
            "def run(args):\n"
            "    import no_such_dependency_xyz\n"
        ),
    )
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


# --- `pip install .` without make: elasticdeform's NumPy-1 wheel beside NumPy 2 ----------------

NUMPY_PAGE = (
    "\nA module that was compiled using NumPy 1.x cannot be run in\nNumPy 2.x as it may crash.\nTraceback ...\n"
)


class _BrokenWheel:
    """A meta-path finder whose ``elasticdeform`` fails like the PyPI wheel beside NumPy 2:
    NumPy writes its page (with a traceback) to stderr, then the import fails."""

    def find_spec(self, name, path=None, target=None):
        import importlib.util

        return importlib.util.spec_from_loader(name, self) if name == "elasticdeform" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        sys.stderr.write(NUMPY_PAGE)
        raise ImportError("numpy.core.multiarray failed to import")


@pytest.fixture
def broken_elasticdeform(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_BrokenWheel(), *sys.meta_path])
    for name in ("elasticdeform", "dataset.index.augment", "dataset.index.build"):  # imported afresh
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_elasticdeform_built_against_numpy1_gives_the_command_that_fixes_it(broken_elasticdeform, capsys):
    from dataset.common.imports import DependencyError, import_elasticdeform

    with pytest.raises(DependencyError) as err:
        import_elasticdeform()
    message = str(err.value)
    assert "\n" not in message and "numpy.core.multiarray failed to import" in message, message
    pip = f"{sys.executable} -m pip install"
    assert message.endswith(
        f"{pip} setuptools wheel && {pip} --force-reinstall --no-deps --no-binary elasticdeform "
        "--no-build-isolation elasticdeform==0.5.1"
    ), message
    assert capsys.readouterr().err == ""  # NumPy's page is swallowed


def test_elasticdeform_not_installed_gives_the_same_command(monkeypatch):
    from dataset.common.imports import DependencyError, elasticdeform_fix_command, import_elasticdeform

    monkeypatch.setitem(sys.modules, "elasticdeform", None)  # "import elasticdeform" -> ModuleNotFoundError
    with pytest.raises(DependencyError, match="^elasticdeform is not installed; ") as err:
        import_elasticdeform()
    assert str(err.value).endswith(elasticdeform_fix_command())


def test_pancreas_index_with_a_broken_elasticdeform_prints_one_line(broken_elasticdeform, tmp_path, capsys):
    from pancreas.cli import main

    assert main(["index", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pancreas index: error: elasticdeform cannot be imported"), err
    assert "--no-binary elasticdeform --no-build-isolation elasticdeform==0.5.1\n" in err
