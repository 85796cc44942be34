"""Every output option of every command refuses a folder the command reads (``dataset.common.paths.refuse_inside``).

``CASES`` proves the refusal per (command, option); ``READS_NOTHING`` names the options of commands
that read no folder. ``test_every_output_option_is_covered`` enumerates ``pancreas.cli.COMMANDS`` and
their parsers, so a new output option cannot skip the rule.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from test_crossval import two_folds  # noqa: F401 - the fixture: 4 preprocessed cases, 2-fold index, 2 runs

from dataset.common.paths import OutputInsideInputError, inside, refuse_inside
from pancreas.cli import COMMANDS, build_parser, main
from pancreas.demo import DEMO_CONFIG_DIR

# dests that name where a command writes; any dest shaped like these must be one of them
OUTPUT_DESTS = {"out", "pred_out"}
OUTPUTISH = re.compile(r"(^|_)out($|_)")

Argv = Callable[[dict[str, Path]], list[str]]
# (command, dest) -> [(argv from the fixture's paths, the role the message names)]
CASES: dict[tuple[str, str], list[tuple[Argv, str]]] = {
    ("preprocess", "out"): [
        (lambda p: ["preprocess", "--data", str(p["data"]), "--out", str(p["data"] / "store"), "--workers", "0"],
         "dataset folder"),
    ],
    ("train", "out"): [
        (lambda p: ["train", "--store", str(p["store"]), "--out", str(p["store"] / "index" / "fold_0" / "run")],
         "store"),
        (lambda p: ["train", "--store", str(p["store"]), "--out", str(p["run0"] / "again"),
                    "--init-from", str(p["run0"] / "checkpoints" / "best.keras")], "run of --init-from"),
    ],
    ("export", "out"): [
        (lambda p: ["export", "--model", str(p["run0"]), "--out", str(p["run0"] / "serving")], "model's run folder"),
    ],
    ("package", "out"): [
        (lambda p: ["package", "--model", str(p["run0"]), "--out", str(p["run0"] / "MODEL.zip")],
         "model's run folder"),
    ],
    ("predict", "out"): [
        (lambda p: ["predict", "--model", str(p["run0"]), "--input", str(p["data"] / "imagesTr"),
                    "--out", str(p["run0"] / "checkpoints" / "p")], "model's run folder"),
        (lambda p: ["predict", "--model", str(p["run0"]), "--input", str(p["data"] / "imagesTr"),
                    "--out", str(p["data"] / "imagesTr" / "p")], "input folder"),
    ],
    ("evaluate", "out"): [
        (lambda p: ["evaluate", "--pred", str(p["preds"]), "--truth", str(p["data"] / "labelsTr"),
                    "--out", str(p["data"] / "labelsTr" / "report.json")], "truth folder"),
        (lambda p: ["evaluate", "--pred", str(p["preds"]), "--truth", str(p["data"] / "labelsTr"),
                    "--out", str(p["preds"] / "report.json")], "prediction folder"),
        (lambda p: ["evaluate", "--pred", str(p["preds"]), "--truth", str(p["data"] / "labelsTr"),
                    "--images", str(p["data"] / "imagesTr"), "--out", str(p["data"] / "imagesTr" / "r.json")],
         "images folder"),
        (lambda p: ["evaluate", "--pred", str(p["preds"]), "--truth", str(p["data"] / "labelsTr"),
                    "--out", str(p["data"] / "report.json")], "dataset folder"),
        (lambda p: ["evaluate", "--run", str(p["run0"]), "--store", str(p["store"]),
                    "--out", str(p["store"] / "report.json")], "store"),
        (lambda p: ["evaluate", "--run", str(p["run0"]), "--store", str(p["store"]),
                    "--out", str(p["run0"] / "report.json")], "model's run folder"),
        (lambda p: ["evaluate", "--cv", str(p["run0"]), str(p["run1"]), "--store", str(p["store"]),
                    "--out", str(p["run1"])], "run folder"),
        (lambda p: ["evaluate", "--cv", str(p["run0"]), str(p["run1"]), "--store", str(p["store"]),
                    "--out", str(p["data"] / "cv")], "dataset folder"),
    ],
    ("evaluate", "pred_out"): [
        (lambda p: ["evaluate", "--run", str(p["run0"]), "--store", str(p["store"]),
                    "--pred-out", str(p["data"] / "labelsTr")], "truth folder"),
        (lambda p: ["evaluate", "--run", str(p["run0"]), "--store", str(p["store"]),
                    "--pred-out", str(p["run0"] / "checkpoints")], "model's run folder"),
    ],
    ("qc", "out"): [
        (lambda p: ["qc", "--store", str(p["store"]), "--out", str(p["store"] / "qc")], "store"),
    ],
    ("demo", "out"): [
        (lambda p: ["demo", "--out", str(DEMO_CONFIG_DIR / "out")], "demo config folder"),
    ],
}  # fmt: skip
READS_NOTHING = {
    ("synth", "out"): "writes a new dataset from its seed; reads no folder",
    ("download", "out"): "reads only the network and its config file",
}


def output_options() -> set[tuple[str, str]]:
    """(command, dest) of every output-shaped option of every command."""
    found = set()
    for name in COMMANDS:
        parser = build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for action in sub.choices[name]._actions:
            if OUTPUTISH.search(action.dest):
                found.add((name, action.dest))
    return found


def test_every_output_option_is_covered():
    options = output_options()
    assert {dest for _, dest in options} <= OUTPUT_DESTS, "a new output option: add its dest and its cases"
    assert options == set(CASES) | set(READS_NOTHING)
    assert not set(CASES) & set(READS_NOTHING)


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.fixture(scope="module")
def paths(two_folds) -> dict[str, Path]:  # noqa: F811 - the imported fixture
    data, store, runs, _folds = two_folds
    for run in runs:
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "checkpoints" / "best.keras").write_bytes(b"not opened: refused before")
    preds = data.parent / "preds"
    preds.mkdir(exist_ok=True)
    return {"data": data, "store": store, "run0": runs[0], "run1": runs[1], "preds": preds}


@pytest.mark.parametrize(
    ("key", "index"), [(key, i) for key, cases in CASES.items() for i in range(len(cases))], ids=str
)
def test_output_inside_a_folder_it_reads_is_refused_writing_nothing(paths, capsys, key, index):
    argv, role = CASES[key][index]
    args = [*argv(paths), "--no-progress"] if key[0] not in ("export", "package") else argv(paths)
    root = paths["data"].parent
    before = tree(root) | tree(DEMO_CONFIG_DIR)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    flag = "--" + key[1].replace("_", "-")
    pattern = rf"pancreas {key[0]}: error: {flag} \S+ (is|lies inside) the {re.escape(role)} \S+: .*"
    assert re.fullmatch(pattern, err), err
    assert tree(root) | tree(DEMO_CONFIG_DIR) == before


def test_cv_out_a_foreign_non_empty_folder_is_refused_and_left_alone(paths, capsys):
    mine = paths["data"].parent / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    argv = ["evaluate", "--cv", str(paths["run0"]), str(paths["run1"]), "--store", str(paths["store"])]
    assert main([*argv, "--out", str(mine), "--no-progress"]) == 2
    assert "holds notes.txt, not an earlier `pancreas evaluate --cv` output" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("out", "folder", "where"),
    [("a", "a", "is"), ("a/b/c", "a", "lies inside"), ("ab", "a", None), ("a", "a/b", None)],
)
def test_refuse_inside_is_the_one_rule(tmp_path, out, folder, where):
    reads = [("other folder", tmp_path / "z"), ("input folder", tmp_path / folder), ("never", None)]
    if where is None:
        refuse_inside(tmp_path / out, reads, "--out")
        return
    with pytest.raises(OutputInsideInputError, match=rf"^--out {tmp_path / out} {where} the input folder "):
        refuse_inside(tmp_path / out, reads, "--out")


def test_refuse_inside_follows_links(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert inside(tmp_path / "link" / "x", tmp_path / "data")
    with pytest.raises(OutputInsideInputError, match="lies inside the dataset folder"):
        refuse_inside(tmp_path / "link" / "x", [("dataset folder", tmp_path / "data")], "--out")
