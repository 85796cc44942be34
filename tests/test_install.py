"""The installation the Makefile builds: elasticdeform compiled against NumPy 2, the console script."""
import shutil
import subprocess
import sys

import numpy as np


def test_elasticdeform_imports_and_runs_beside_numpy2():
    import elasticdeform  # the registry wheel fails here ("numpy.core.multiarray failed to import")

    assert int(np.__version__.split(".")[0]) >= 2
    image = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    displacement = np.zeros((3, 3, 3, 3))
    out = elasticdeform.deform_grid(image, displacement, order=1)
    np.testing.assert_allclose(out, image, atol=1e-4)  # zero displacement is the identity


def test_console_script_lists_every_stage():
    exe = shutil.which("pancreas") or str(__import__("pathlib").Path(sys.executable).with_name("pancreas"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("synth", "preprocess", "index", "train", "predict", "evaluate", "download", "demo"):
        assert stage in out


def test_every_command_help_is_plain_text():
    from pancreas.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser([name])
        command = parser._subparsers._group_actions[0].choices[name]
        text = command.format_help()
        assert "``" not in text and f"pancreas {name}" in text, text
