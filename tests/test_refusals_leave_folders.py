"""A refused run leaves the folder as it found it: no lock file, no record, no folder of its own (issue 18, item 8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import tiny_train_store, write_contract_run
from test_crossval import two_folds  # noqa: F401 - the fixture: 4 preprocessed cases, 2-fold index, 2 runs

from dataset.common.errors import PancreasError
from dataset.common.locks import LOCK_NAME, exclusive_lock
from evaluation.crossval import evaluate_cv
from pancreas.cli import main
from prediction.cases import PredictError
from prediction.predict import predict_cases
from sources.synthetic.msd import make_dataset


def tree(root: Path) -> dict[Path, bytes | None]:
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_a_refusal_under_a_new_lock_removes_the_folders_and_lock_it_made(tmp_path: Path):
    with pytest.raises(PancreasError), exclusive_lock(tmp_path / "a" / "b"):
        raise PancreasError("refused")
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_keeps_an_earlier_lock_file_and_anything_else(tmp_path: Path):
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / LOCK_NAME).write_text("")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    for folder in ("earlier", "mine"):
        with pytest.raises(PancreasError), exclusive_lock(tmp_path / folder):
            raise PancreasError("refused")
    assert sorted(p.name for p in (tmp_path / "earlier").iterdir()) == [LOCK_NAME]
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_a_bug_keeps_the_lock_file_as_before(tmp_path: Path):
    with pytest.raises(ZeroDivisionError), exclusive_lock(tmp_path / "out"):
        _ = 1 / 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK_NAME]


def test_predict_with_a_run_lacking_its_checkpoint_writes_nothing(tmp_path: Path):
    """Reproduced (d15): the refusal left .pancreas.lock and predictions.json beside the user's file."""
    data = make_dataset(tmp_path / "data", 1, seed=0, n_test=1, progress=False)
    run = write_contract_run(tmp_path / "run")
    out = tmp_path / "p15"
    out.mkdir()
    (out / "readme.txt").write_text("notes")
    for target in (out, tmp_path / "new"):
        with pytest.raises(PredictError, match=r"no checkpoint best\.keras in checkpoints/"):
            predict_cases(run, data / "imagesTs", target, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["readme.txt"]
    assert not (tmp_path / "new").exists()


def test_cv_refused_for_a_foreign_prediction_leaves_the_folder(two_folds, tmp_path: Path):  # noqa: F811
    data, store, runs, folds = two_folds
    cv = tmp_path / "cv"
    (cv / "predictions" / "fold_0").mkdir(parents=True)
    shutil.copy(data / "labelsTr" / f"{folds[0].val[0]}.nii.gz", cv / "predictions" / "fold_0")
    before = tree(cv)
    with pytest.raises(PredictError, match="exists and was not written by `pancreas predict`"):
        evaluate_cv(runs, store, cv, predict_fns=[lambda b: b, lambda b: b], progress=False)
    assert tree(cv) == before


def test_train_into_an_existing_run_leaves_it_as_it_was(tmp_path: Path, capsys):
    store = tiny_train_store(tmp_path / "store")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "state.json"):
        (run / name).write_text("{}")
    before = tree(run)
    assert main(["train", "--store", str(store), "--out", str(run), "--set", "model.depth=2", "-q"]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert tree(run) == before


@pytest.mark.parametrize("folds", [["--folds", "0"], ["--set", "folds=0"]])
def test_index_with_zero_folds_leaves_the_store(tmp_path: Path, capsys, folds: list[str]):
    store = tiny_train_store(tmp_path / "store")
    before = tree(store)
    assert main(["index", "--store", str(store), "--workers", "0", *folds]) == 2
    assert "must be" in capsys.readouterr().err
    assert tree(store) == before
