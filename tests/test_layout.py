"""The package layering: contract <- stages <- CLI, with no sideways edges between stages.

Layers (lowest first); a module may import its own package, anything in a lower layer,
and nothing beside or above it:

* ``dataset.common``: files, locks, config loading, the Dask runner, seeds, the MSD input format
* ``dataset.contract``: every file one stage hands to another
* the stages: ``preprocess``, ``dataset.index``, ``training``, ``inference``
* ``pancreas`` (CLI, demo, synthetic data) and ``bench``

One edge between stages is allowed on purpose: ``inference -> preprocess``. Prediction
must turn a new CT into the model's input with exactly the code that made the training
store (the style guide: "inference reuses the preprocessing code; it never copies it"),
so ``inference`` calls ``preprocess.pipeline`` with the config the run's input contract
records. Copying that code into the contract would be the train/inference skew the
style guide warns about.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dataset", "preprocess", "training", "inference", "pancreas")
STAGES = ("preprocess", "dataset.index", "training", "inference")
ALLOWED_BETWEEN_STAGES = {("inference", "preprocess")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every project module a file imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p) for p in files}
    graph = {}
    for path in files:
        # keep the longest prefix that is a module ("dataset.contract.store.X" -> the module)
        targets = set()
        for name in imports_of(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
        graph[module_name(path)] = targets - {module_name(path)}
    return graph


def layer(module: str) -> tuple[int, str]:
    if module.startswith("dataset.common") or module == "dataset":
        return 0, "dataset.common"
    if module.startswith("dataset.contract"):
        return 1, "dataset.contract"
    for stage in STAGES:
        if module == stage or module.startswith(stage + "."):
            return 2, stage
    return 3, module.split(".")[0]


def bad_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        (ls, gs) = layer(src)
        for dst in sorted(targets):
            (ld, gd) = layer(dst)
            if gs == gd or ld < ls or (gs, gd) in ALLOWED_BETWEEN_STAGES:
                continue
            bad.append(f"{src} -> {dst}")
    return bad


def test_layer_function_knows_every_package():
    assert layer("dataset.common.files") == (0, "dataset.common")
    assert layer("dataset.contract.catalog") == (1, "dataset.contract")
    assert layer("dataset.index.build") == (2, "dataset.index")
    assert layer("pancreas.cli") == (3, "pancreas")
    assert bad_edges({"training.run": {"dataset.index.build"}}) == ["training.run -> dataset.index.build"]
    assert bad_edges({"dataset.contract.x": {"preprocess.io"}}) == ["dataset.contract.x -> preprocess.io"]


def test_no_sideways_or_upward_imports():
    assert bad_edges(import_graph()) == []
