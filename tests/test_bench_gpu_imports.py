"""``bench/gpu.py`` runs where JAX is installed and TensorFlow is not: nothing it imports imports TensorFlow."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "gpu.py"
PACKAGES = ("bench", "dataset", "evaluation", "pancreas", "prediction", "preprocess", "review", "sources", "training")
# what the bench imports inside its functions, as well as at the top
BENCH_MODULES = (
    "training.config",
    "training.model",
    "training.losses",
    "training.metrics",
    "training.optimizer",
    "prediction.precision",
)
requires_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")


def import_time_imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported: its top-level import statements (not those inside functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_file(name: str) -> Path | None:
    """The project file of module ``name``, or ``None`` for a module outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(start: list[Path]) -> dict[Path, set[str]]:
    """Every project file imported (transitively, at import time) from ``start``, with what it imports."""
    seen: dict[Path, set[str]] = {}
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = import_time_imports(path)
        for name in seen[path]:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the packages above a module run first
                found = module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def test_nothing_the_bench_imports_imports_tensorflow():
    closure = import_closure([BENCH, *(p for p in map(module_file, BENCH_MODULES) if p is not None)])
    assert ROOT / "training" / "model.py" in closure and ROOT / "training" / "optimizer.py" in closure
    culprits = sorted(
        str(path.relative_to(ROOT))
        for path, names in closure.items()
        if any(n == "tensorflow" or n.startswith("tensorflow.") for n in names)
    )
    assert culprits == []


def test_the_closure_does_find_a_tensorflow_import():
    closure = import_closure([ROOT / "training" / "distribute.py"])
    assert "tensorflow" in closure[ROOT / "training" / "distribute.py"]


@requires_jax
def test_bench_modules_build_and_train_with_tensorflow_blocked():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('bench_gpu', {str(BENCH)!r})\n"
        "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)\n"
        "row = bench.training_row('mixed_bfloat16', 1, (16, 16, 16), steps=1, warmup=1)\n"
        "print(row['seconds'] > 0, bench.inference_row('bf16', 1, (16, 16, 16), 1, 0) > 0)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "True"]
