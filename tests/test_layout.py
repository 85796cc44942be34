"""The package layering: common <- contract and sources <- stages <- CLI, with no sideways edges.

Layers (lowest first); a module may import its own package, anything in a lower layer,
and nothing beside or above it:

* ``dataset.common``: atomic writes, locks, crash points, fingerprints, config loading,
  the Dask runner, seeds, the label regions
* ``dataset.contract`` (every file one stage hands to another), ``sources`` (where raw
  data comes from: the MSD and nnU-Net folder formats, NIfTI headers, the download,
  synthetic phantoms) and ``review`` (what a person looks at: statistics of a label map,
  tumour detection, case sheets, HTML pages; pure functions on arrays and dicts, used by
  prediction, evaluation and qc alike); none imports another
* the stages: ``preprocess``, ``dataset.index``, ``training``, ``prediction``, ``evaluation``
* ``pancreas`` (CLI, demo, test scaffolding) and ``bench``

Two edges between stages are allowed on purpose:

* ``prediction -> preprocess``: prediction must turn a new CT into the model's input with
  exactly the code that made the training store (the style guide: "inference reuses the
  preprocessing code; it never copies it"), so ``prediction`` calls ``preprocess.pipeline``
  with the config the run's input contract records. Copying that code into the contract
  would be the train/inference skew the style guide warns about.
* ``evaluation -> prediction`` and ``evaluation -> preprocess``: ``evaluate --run`` and
  ``--cv`` predict the cases they score with the same code as ``pancreas predict``, and
  read label maps and scans with the same reader as the preprocessing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dataset", "sources", "review", "preprocess", "training", "prediction", "evaluation", "pancreas")
STAGES = ("preprocess", "dataset.index", "training", "prediction", "evaluation")
ALLOWED_BETWEEN_STAGES = {("prediction", "preprocess"), ("evaluation", "prediction"), ("evaluation", "preprocess")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every project module a file imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
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
    for room in ("sources", "review"):
        if module == room or module.startswith(room + "."):
            return 1, room
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
    assert layer("dataset.common.atomic") == (0, "dataset.common")
    assert layer("sources.synthetic.phantom") == (1, "sources")
    assert layer("review.sheet") == (1, "review")
    assert bad_edges({"review.sheet": {"sources.msd"}}) == ["review.sheet -> sources.msd"]
    assert bad_edges({"sources.msd": {"dataset.contract.store"}}) == ["sources.msd -> dataset.contract.store"]
    assert bad_edges({"evaluation.crossval": {"prediction.predict"}}) == []
    assert bad_edges({"prediction.predict": {"evaluation.metrics"}}) == ["prediction.predict -> evaluation.metrics"]
    assert layer("dataset.contract.catalog") == (1, "dataset.contract")
    assert layer("dataset.index.build") == (2, "dataset.index")
    assert layer("pancreas.cli") == (3, "pancreas")
    assert bad_edges({"training.run": {"dataset.index.build"}}) == ["training.run -> dataset.index.build"]
    assert bad_edges({"dataset.contract.x": {"preprocess.io"}}) == ["dataset.contract.x -> preprocess.io"]


def test_no_sideways_or_upward_imports():
    assert bad_edges(import_graph()) == []
