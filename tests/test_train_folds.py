"""`pancreas train --fold k`: fold k's manifests, the fold recorded, a missing fold or another
fold's resume refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dataset.common.configio import to_dict
from dataset.contract.run import RunError
from dataset.contract.store import StoreError
from training.config import LossConfig, ModelConfig, TrainConfig

ONE_EPOCH = TrainConfig(
    epochs=1,
    steps_per_epoch=2,
    batch_size=2,
    image_patches=0,
    model=ModelConfig(depth=2, base_filters=4),
    loss=LossConfig(name="dice_cross_entropy"),
)


@pytest.fixture(scope="module")
def two_fold_store(tmp_path_factory) -> Path:
    """Four tiny cases indexed by the real indexer into 2 folds (2 validation cases each)."""
    from dataset.index.build import build_index
    from dataset.index.config import IndexConfig
    from pancreas.testing.runs import synthetic_case
    from pancreas.testing.store import write_case, write_catalog_for

    store = tmp_path_factory.mktemp("store")
    records = {}
    for i in range(4):
        image, label = synthetic_case((24, 48, 48), i)
        records[f"c{i}"] = write_case(store, f"c{i}", label, seed=i, image=image)
    write_catalog_for(store, records)
    build_index(
        store, IndexConfig(train_patch_xyz=(32, 32, 16), val_patch_xyz=(48, 48, 16), folds=2), workers=0, progress=False
    )
    return store


@pytest.fixture(scope="module")
def fold_1_run(two_fold_store, tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """A one-epoch run on fold 1, and the case ids its fit was given (training, validation)."""
    import training.run
    from training.fit import fit

    seen = {}

    def spy(run_dir, config, inputs, state, *args, **kwargs):
        seen["train"] = {r["case_id"] for r in inputs.train_rows}
        seen["val"] = {r["case_id"] for r in inputs.val_rows}
        return fit(run_dir, config, inputs, state, *args, **kwargs)

    run_dir = tmp_path_factory.mktemp("runs") / "fold_1"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.run, "fit", spy)
        summary = training.run.train(two_fold_store, run_dir, ONE_EPOCH, fold=1)
    assert summary.fold == 1 and summary.n_folds == 2 and summary.epochs_completed == 1
    return run_dir, seen["train"], seen["val"]


def test_the_run_trains_on_its_folds_manifests_and_records_the_fold(two_fold_store, fold_1_run):
    from dataset.contract.index import read_split
    from dataset.contract.run import read_input_contract

    run_dir, train_cases, val_cases = fold_1_run
    split = read_split(two_fold_store)
    assert split.fold(0).val != split.fold(1).val  # the two folds validate on different cases
    assert val_cases == set(split.fold(1).val) and train_cases == set(split.fold(1).train)
    contract = read_input_contract(run_dir)
    assert (contract.fold, contract.n_folds) == (1, 2)
    data = json.loads((run_dir / "input_contract.json").read_text(encoding="utf-8"))
    assert list(data)[-2:] == ["fold", "n_folds"]  # the table's order (dataset.contract.run)


@pytest.mark.parametrize("fold", [2, 7])  # -1: not a fold number (tests/test_messages_name_the_file.py)
def test_a_fold_the_index_lacks_is_refused_with_nothing_written(two_fold_store, tmp_path, fold):
    from training.run import train

    with pytest.raises(
        StoreError,
        match=rf"{two_fold_store}.*no fold {fold}: the index has 2 fold\(s\), 0..1; "
        r"pass --fold 0..1",
    ):
        train(two_fold_store, tmp_path / "run", ONE_EPOCH, fold=fold)
    assert not (tmp_path / "run").exists()


def test_cli_bad_fold_is_one_line_for_train_and_profile(two_fold_store, tmp_path, capsys):
    from pancreas.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(to_dict(ONE_EPOCH)))
    base = ["train", "--store", str(two_fold_store), "--config", str(cfg), "--fold", "2"]
    for extra in (["--out", str(tmp_path / "run")], ["--profile-input", "--steps", "1"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(two_fold_store) in err[0] and "2 fold(s)" in err[0] and "--fold" in err[0]
    assert not (tmp_path / "run").exists()
    assert main([*base[:-1], "1", "--profile-input", "--steps", "1"]) == 0
    assert "on fold 1" in capsys.readouterr().out


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock's (it records who held the folder last)."""
    from dataset.common.locks import LOCK_NAME

    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def test_resume_with_another_fold_is_refused_and_leaves_the_run(two_fold_store, fold_1_run, tmp_path):
    import shutil

    from training.run import train

    run_dir = tmp_path / "run"
    shutil.copytree(fold_1_run[0], run_dir)
    before = _snapshot(run_dir)
    with pytest.raises(RunError, match=r"trains fold 1; cannot resume it with --fold 0 \(pass --fold 1"):
        train(two_fold_store, run_dir, ONE_EPOCH, resume=True)  # the default fold, 0
    assert _snapshot(run_dir) == before

    contract = json.loads((run_dir / "input_contract.json").read_text(encoding="utf-8"))
    for key in ("fold", "n_folds"):  # a run from before folds counts as fold 0
        del contract[key]
    (run_dir / "input_contract.json").write_text(json.dumps(contract))
    before = _snapshot(run_dir)
    with pytest.raises(RunError, match="trains fold 0; cannot resume it with --fold 1"):
        train(two_fold_store, run_dir, ONE_EPOCH, resume=True, fold=1)
    assert _snapshot(run_dir) == before


def test_cli_resume_on_the_same_fold_says_which(two_fold_store, fold_1_run, tmp_path, capsys):
    import shutil

    from pancreas.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(fold_1_run[0], run_dir)
    cfg = tmp_path / "two_epochs.yaml"
    cfg.write_text(yaml.safe_dump({**to_dict(ONE_EPOCH), "epochs": 2}))
    args = ["train", "--store", str(two_fold_store), "--config", str(cfg), "--out", str(run_dir), "--resume"]
    assert main([*args, "--fold", "1"]) == 0
    assert "epochs: 1 -> 2 (completed) on fold 1 (of 2)" in capsys.readouterr().out
    assert json.loads((run_dir / "input_contract.json").read_text(encoding="utf-8"))["fold"] == 1
