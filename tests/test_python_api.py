"""The Python API example of docs/python-api.md runs as written (in a temporary working folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def api_example() -> str:
    section = PAGE.read_text(encoding="utf-8").split("## The whole protocol in Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(api_example(), "docs/python-api.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert "pancreas_007" in printed and "'pancreas':" in printed
    assert (tmp_path / "work" / "cv" / "report.csv").is_file()
    assert (tmp_path / "work" / "test_predictions" / "pancreas_007.nii.gz").is_file()
