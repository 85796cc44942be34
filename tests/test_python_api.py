"""The README's Python API example runs as written (in a temporary working folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"


def api_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(api_example(), "README.md:Python API", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert "pancreas_007" in printed and "'pancreas':" in printed
    assert (tmp_path / "work" / "cv" / "report.csv").is_file()
    assert (tmp_path / "work" / "test_predictions" / "pancreas_007.nii.gz").is_file()
