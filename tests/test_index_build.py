"""``build_index`` end to end on tiny synthetic stores (16x16x8 patches), K = 5 folds unless said."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from lockholder import lock_held_elsewhere

from dataset.common.atomic import TMP_SUFFIX
from dataset.common.configio import to_dict
from dataset.common.locks import LockedError
from dataset.contract.catalog import read_catalog, write_catalog
from dataset.contract.index import check_index, manifest_path, read_split
from dataset.contract.manifest import read_manifest
from dataset.contract.reader import PatchReader
from dataset.contract.store import StoreError
from dataset.index.build import build_index
from dataset.index.config import IndexConfig
from pancreas.cli import main
from pancreas.testing.store import blob_label, failed_record, make_store, write_case

CFG = IndexConfig(train_patch_xyz=(16, 16, 8), val_patch_xyz=(32, 32, 8), val_fraction=0.25)
TUMOUR = {f"case_{i}" for i in range(5)}  # of the 8 labelled cases below


def rows_of(store: Path, split: str, fold: int = 0) -> list[dict]:
    return read_manifest(manifest_path(store, split, fold))


def all_rows(store: Path, split: str) -> list[dict]:
    """Every fold's rows of one kind, each row once."""
    seen, out = set(), []
    for k in range(len(read_split(store).folds)):
        for r in rows_of(store, split, k):
            key = tuple(sorted(r.items()))
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def labels() -> dict[str, np.ndarray]:
    out = {
        f"case_{i}": blob_label((24, 48, 40), (10 + i, 20 + 2 * i, 18), (5, 9, 11), tumour_radius=3) for i in range(5)
    }
    out["case_thin"] = blob_label((5, 48, 40), (2, 24, 20), (2, 8, 8))  # 5 slices < 8
    out["case_empty"] = np.zeros((24, 48, 40), np.uint8)  # no foreground
    out["case_full"] = np.ones((8, 16, 32), np.uint8)  # no background patch
    return out


def make(tmp: Path, failed: bool = True) -> Path:
    records = make_store(tmp, labels())
    if failed:
        records["case_bad"] = failed_record("case_bad", "cannot read header")
        write_catalog(tmp, dataclasses.replace(read_catalog(tmp), cases=records))
    return tmp


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    store = make(tmp_path_factory.mktemp("store"))
    return store, build_index(store, CFG, workers=0, progress=False)


def test_split_and_summary(built):
    store, s = built
    split = json.loads((store / "index" / "split.json").read_text(encoding="utf-8"))
    assert list(split) == ["version", "seed", "val_fraction", "max_cases", "folds", "skipped"]
    assert len(split["folds"]) == s.folds == len(s.per_fold) == 5
    assert sorted(c for f in split["folds"] for c in f["val"]) == sorted(labels())  # each case once
    assert split["skipped"] == {"case_bad": "cannot read header"}
    assert (s.cases, s.tumour_cases) == (8, 5)
    on_disk = json.loads((store / "index" / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["config"] == to_dict(CFG) and on_disk["store_fingerprint"] == s.store_fingerprint
    for k, fold in enumerate(split["folds"]):
        assert not set(fold["train"]) & set(fold["val"]) and sorted(fold["train"] + fold["val"]) == sorted(labels())
        train, val = rows_of(store, "train", k), rows_of(store, "val", k)
        counts = on_disk["per_fold"][k]
        assert counts["train_entries"] == s.per_fold[k].train_entries == len(train)
        assert counts["val_entries"] == len(val) and (counts["train_cases"], counts["val_cases"]) == (
            len(fold["train"]),
            len(fold["val"]),
        )
        assert counts["val_tumour_cases"] == 1  # 5 tumour cases, 5 folds: stratified
        assert {r["case_id"] for r in val} == set(fold["val"])
        assert {r["case_id"] for r in train} <= set(fold["train"])
    assert not (store / "index" / "train.csv").exists() and not (store / "index" / "fold_5").exists()
    assert check_index(store, read_catalog(store)).index_fingerprint == s.index_fingerprint


def test_a_case_has_the_same_rows_in_every_fold(built):
    """Rows depend on the case and the config, never on the fold: that is what lets the
    folds share one augmented shard per case."""
    store, s = built
    split = read_split(store)
    for case_id in labels():
        for kind in ("train", "val"):
            per_fold = [
                [r for r in rows_of(store, kind, k) if r["case_id"] == case_id]
                for k, fold in enumerate(split.folds)
                if case_id in getattr(fold, kind)
            ]
            assert per_fold and all(rows == per_fold[0] for rows in per_fold), (case_id, kind)
    assert s.per_case["case_0"]["val_fold"] in range(5) and s.per_case["case_0"]["tumour"]


def test_every_fold_is_in_the_fingerprint_and_a_missing_fold_is_refused(tmp_path):
    store = make(tmp_path, failed=False)
    build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 3}), workers=0, progress=False)
    catalog = read_catalog(store)
    check_index(store, catalog, fold=2)
    with pytest.raises(StoreError, match=r"no fold 3: the index has 3 fold\(s\), 0..2"):
        check_index(store, catalog, fold=3)
    path = manifest_path(store, "val", 2)
    path.write_text(path.read_text(encoding="utf-8") + path.read_text(encoding="utf-8").splitlines()[1] + "\n")
    with pytest.raises(StoreError, match="the manifests were edited"):
        check_index(store, catalog)


def test_counts_are_exact_and_balance_holds(built):
    store, s = built
    rows = all_rows(store, "train")
    with PatchReader(store) as reader:
        for r in rows:
            if r["variant"]:
                continue
            _, label = reader.read_levels(r)
            assert (r["n_pancreas"], r["n_tumour"]) == ((label == 1).sum(), (label == 2).sum())
            assert r["foreground"] == int(r["n_pancreas"] + r["n_tumour"] >= 1)
    for case_id, info in s.per_case.items():
        if info["train"]["foreground_patches"] == 0:
            continue
        mine = [r for r in rows if r["case_id"] == case_id]
        fg = [r for r in mine if r["foreground"]]
        bg = [r for r in mine if not r["foreground"]]
        assert len(fg) == 2 * info["train"]["foreground_patches"]
        assert sum(1 for r in fg if r["variant"]) == info["train"]["foreground_patches"]
        if case_id != "case_full":
            assert len(bg) == int(1.5 * len(fg) + 0.5)


def test_empty_and_thin_cases(built):
    store, s = built
    rows = all_rows(store, "train") + all_rows(store, "val")
    thin = [r for r in rows if r["case_id"] == "case_thin"]
    assert thin and all(r["padded"] == 1 and r["z0"] == -2 for r in thin)  # (5 - 8) // 2
    with PatchReader(store) as reader:
        image, label = reader.read_levels(thin[0])
        assert image.shape == (8, thin[0]["dy"], thin[0]["dx"])
        assert not image[:2].any() and not label[:2].any() and not image[7:].any()
    assert s.cases_without_foreground == ["case_empty"]


def test_case_without_foreground_in_training(built):
    store, _s = built
    empty = [r for r in all_rows(store, "train") if r["case_id"] == "case_empty"]  # it trains in 4 of 5 folds
    assert len(empty) == CFG.background_without_foreground and not any(r["foreground"] for r in empty)
    assert len({(r["z0"], r["y0"], r["x0"]) for r in empty}) == len(empty)  # drawn without replacement


def test_augmented_shards(built):
    store, s = built
    rows = [r for r in all_rows(store, "train") if r["variant"]]
    # one shard per case with foreground, built once however many folds train on it
    assert s.augmented_shards == [f"augmented/{c}.h5" for c in sorted(labels()) if c != "case_empty"]
    assert rows and s.augmented_built == len(s.augmented_shards) and s.augmented_reused == 0
    stored_fg = aug_fg = changed = 0
    with PatchReader(store) as reader:
        for r in rows:
            image, label = reader.read_levels(r)
            orig_image, orig_label = reader.read_levels(dict(r, variant=""))
            assert image.shape == (r["dz"], r["dy"], r["dx"]) and set(np.unique(label)) <= {0, 1, 2}
            # linear interpolation inside the patch (mode nearest): no value outside the stored range
            assert orig_image.min() <= image.min() and image.max() <= orig_image.max()
            changed += not np.array_equal(label, orig_label)
            stored_fg += (orig_label > 0).sum()
            aug_fg += ((label > 0) & (orig_label > 0)).sum()
    assert changed >= len(rows) // 2  # uniform patches (case_full) may stay equal
    assert aug_fg >= 0.6 * stored_fg


def _manifests_and_split(store: Path) -> dict[str, bytes]:
    index = store / "index"
    return {
        str(p.relative_to(index)): p.read_bytes()
        for p in sorted(index.rglob("*"))
        if p.suffix in (".csv", ".json") and p.name != "summary.json"
    }


def test_deterministic_bytes_and_noop(tmp_path, built):
    store, first = built
    other = make(tmp_path / "again")
    build_index(other, CFG, workers=0, progress=False)
    files = _manifests_and_split(store)
    assert len(files) == 1 + 2 * 5 and files == _manifests_and_split(other)
    for shard in first.augmented_shards:
        a, b = store / "index" / shard, other / "index" / shard
        with h5py.File(a) as fa, h5py.File(b) as fb:
            np.testing.assert_array_equal(fa["image"][...], fb["image"][...])
            assert fa.attrs["fingerprint"] == fb.attrs["fingerprint"]
        assert a.read_bytes() == b.read_bytes()
    again = build_index(other, CFG, workers=0, progress=False)
    assert again.unchanged and again.augmented_built == 0


def _shard_times(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "index" / "augmented").glob("*.h5")}


def test_changed_case_rebuilds_only_its_shard(tmp_path):
    store = make(tmp_path, failed=False)
    s1 = build_index(store, CFG, workers=0, progress=False)
    victim = "case_3"
    times = _shard_times(store)
    catalog = read_catalog(store)
    catalog = catalog.with_case(victim, write_case(store, victim, labels()[victim], seed=99))  # new image bytes
    write_catalog(store, catalog)
    s2 = build_index(store, CFG, workers=0, progress=False)
    assert not s2.unchanged and s2.augmented_built == 1 and s2.augmented_reused == len(s1.augmented_shards) - 1
    for p in (store / "index" / "augmented").glob("*.h5"):
        assert (p.stat().st_mtime_ns == times[p.name]) == (p.stem != victim)
    s3 = build_index(store, IndexConfig(**{**CFG.__dict__, "background_ratio": 1.0}), workers=0, progress=False)
    assert not s3.unchanged and s3.augmented_built == 0  # manifests change, augmented shards do not


def test_changing_k_rewrites_only_split_and_manifests(tmp_path):
    store = make(tmp_path, failed=False)
    s5 = build_index(store, CFG, workers=0, progress=False)
    times = _shard_times(store)
    assert s5.augmented_built == len(times) == 7  # K = 5 folds, one augmentation per case
    s3 = build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 3}), workers=0, progress=False)
    assert (s3.folds, s3.augmented_built, s3.augmented_reused) == (3, 0, 7) and _shard_times(store) == times
    assert sorted(p.name for p in (store / "index").glob("fold_*")) == ["fold_0", "fold_1", "fold_2"]
    assert check_index(store, read_catalog(store)).folds == 3
    s2 = build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 2}), workers=0, progress=False)
    assert s2.augmented_built == 0 and _shard_times(store) == times
    s1 = build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 1}), workers=0, progress=False)
    val = read_split(store).fold(0).val  # one split: validation cases are never augmented
    assert s1.augmented_built == 0 and _shard_times(store) == {k: v for k, v in times.items() if k[:-3] not in val}


def test_a_fold_beyond_k_is_refused_and_removed_by_a_rerun(tmp_path):
    """A fold folder the committed index does not have (a power cut undid its removal)."""
    import shutil

    store = make(tmp_path, failed=False)
    build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 2}), workers=0, progress=False)
    shutil.copytree(store / "index" / "fold_0", store / "index" / "fold_2")
    with pytest.raises(StoreError, match="the manifests were edited"):
        check_index(store, read_catalog(store))
    again = build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 2}), workers=0, progress=False)
    assert again.unchanged and not (store / "index" / "fold_2").exists()
    check_index(store, read_catalog(store))


def test_one_fold_is_the_80_20_split(tmp_path):
    from dataset.index.split import split_cases

    store = make(tmp_path, failed=False)
    s = build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 1, "val_fraction": 0.2}), workers=0, progress=False)
    (fold,) = read_split(store).folds
    assert (list(fold.train), list(fold.val)) == split_cases(sorted(labels()), 0.2, CFG.seed)
    assert (s.per_fold[0].train_cases, s.per_fold[0].val_cases) == (6, 2)  # 8 * 0.2 rounds to 2
    assert [p.name for p in (store / "index").glob("fold_*")] == ["fold_0"]
    assert all(s.per_case[c]["val_fold"] is None and "val" not in s.per_case[c] for c in fold.train)


def test_too_many_folds_are_refused_and_nothing_is_written(tmp_path):
    store = make(tmp_path, failed=False)
    with pytest.raises(StoreError, match=rf"^{store}: 9 folds need at least 9 labelled cases, but 8 are indexed"):
        build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 9}), workers=0, progress=False)
    assert not (store / "index").exists()
    build_index(store, CFG, workers=0, progress=False)
    before = {p: p.read_bytes() for p in (store / "index").rglob("*") if p.is_file()}
    with pytest.raises(StoreError, match="9 folds"):
        build_index(store, IndexConfig(**{**CFG.__dict__, "folds": 9}), workers=0, progress=False)
    assert {p: p.read_bytes() for p in (store / "index").rglob("*") if p.is_file()} == before


def test_stale_temporaries_removed(tmp_path):
    store = make(tmp_path, failed=False)
    (store / "index" / "augmented").mkdir(parents=True)
    (store / "index" / "fold_0").mkdir()
    junk = [
        store / "index" / f".split.json.abc{TMP_SUFFIX}",
        store / "index" / "augmented" / f".case_0.h5.x{TMP_SUFFIX}",
        store / "index" / "fold_0" / f".train.csv.y{TMP_SUFFIX}",
    ]
    for p in junk:
        p.write_text("half")
    build_index(store, CFG, workers=0, progress=False)
    assert not any(p.exists() for p in junk)


def _index_files(store: Path) -> list[Path]:
    return [p for p in (store / "index").rglob("*") if p.is_file()] if (store / "index").exists() else []


def test_bad_inputs_write_nothing(tmp_path, caplog):
    empty = tmp_path / "empty"
    make_store(empty, {})
    with pytest.raises(StoreError, match="no labelled, preprocessed case"):
        build_index(empty, CFG, workers=0, progress=False)

    missing = make(tmp_path / "missing", failed=False)
    (missing / "cases" / "case_3.h5").unlink()
    with pytest.raises(StoreError, match=r"case case_3: shard .*case_3.h5 is missing"):
        build_index(missing, CFG, workers=0, progress=False)

    broken = make(tmp_path / "broken", failed=False)
    (broken / "cases" / "case_2.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match=r"case case_2: shard .*case_2.h5 is unreadable"):
        build_index(broken, CFG, workers=0, progress=False)

    two = tmp_path / "two"
    make_store(two, {"a": labels()["case_0"], "b": labels()["case_1"]})
    with pytest.raises(StoreError, match="leaves no validation case"):
        build_index(two, IndexConfig(**{**CFG.__dict__, "folds": 1, "val_fraction": 0.2}), workers=0, progress=False)
    with pytest.raises(StoreError, match="5 folds need at least 5 labelled cases, but 2"):
        build_index(two, CFG, workers=0, progress=False)
    for store in (empty, missing, broken, two):
        assert _index_files(store) == []

    caplog.set_level(logging.WARNING)
    failed = make(tmp_path / "failed")
    build_index(failed, CFG, workers=0, progress=False)
    assert any("case_bad" in m and "failed" in m for m in caplog.messages)


def test_cli_summary_and_config_error(tmp_path, capsys):
    store = make(tmp_path / "s", failed=False)
    config = tmp_path / "index.yaml"
    config.write_text(yaml.safe_dump(to_dict(CFG)))
    assert main(["index", "--store", str(store), "--config", str(config), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "8 cases (5 with tumour) in 5 cross-validation folds" in out and "7 built" in out
    s = json.loads((store / "index" / "summary.json").read_text(encoding="utf-8"))
    for k, c in enumerate(s["per_fold"]):
        assert f"fold {k}       {c['train_cases']} train / {c['val_cases']} validation cases (1 with tumour)" in out
        assert f"    train      {c['train_entries']} entries" in out
        assert f"    validation {c['val_entries']} patches" in out
    assert main(["index", "--store", str(store), "--config", str(config), "--workers", "0", "--no-progress"]) == 0
    assert "up to date" in capsys.readouterr().out
    argv = ["index", "--store", str(store), "--config", str(config), "--workers", "0", "--no-progress"]
    assert main([*argv, "--folds", "2"]) == 0  # the flag overrides the config
    out = capsys.readouterr().out
    assert "in 2 cross-validation folds" in out and "fold 1  " in out and "fold 2" not in out and "0 built" in out
    for folds, message in (
        ("0", f"{store}: --folds must be >= 1, got 0"),
        ("9", f"{store}: 9 folds need at least 9 labelled cases, but 8 are indexed"),
    ):
        assert main([*argv, "--folds", folds]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert read_split(store).folds and len(read_split(store).folds) == 2  # refused runs wrote nothing
    config.write_text(yaml.safe_dump({**to_dict(CFG), "model_depth": 3}))  # moved to train.yaml
    assert main(["index", "--store", str(store), "--config", str(config), "--no-progress"]) == 2
    assert "model_depth: this key moved" in capsys.readouterr().err


def test_local_cluster_gives_same_shards(tmp_path, built):
    store, first = built
    other = make(tmp_path / "dask")
    s = build_index(other, CFG, workers=1, progress=False)
    assert s.augmented_built == len(first.augmented_shards)
    for shard in first.augmented_shards:
        assert (store / "index" / shard).read_bytes() == (other / "index" / shard).read_bytes()


def test_unused_augmented_shard_removed(tmp_path):
    store = make(tmp_path, failed=False)
    build_index(store, CFG, workers=0, progress=False)
    orphan = store / "index" / "augmented" / "gone.h5"
    orphan.write_bytes(b"")
    s = build_index(store, IndexConfig(**{**CFG.__dict__, "foreground_copies": 1}), workers=0, progress=False)
    assert s.augmented_shards == [] and not list((store / "index" / "augmented").glob("*.h5"))


def test_a_second_index_run_on_the_same_store_fails_at_once(tmp_path):
    """Two writers on one store would sweep each other's temporaries (the lock is the fix)."""
    import os

    store = make(tmp_path, failed=False)
    with lock_held_elsewhere(store) as pid:
        inflight = store / "index" / f".train.csv.x{TMP_SUFFIX}"  # the other run's temporary
        inflight.parent.mkdir(parents=True)
        inflight.write_text("being written")
        with pytest.raises(LockedError, match=rf"in use by pid {pid} on {os.uname().nodename}"):
            build_index(store, CFG, workers=0, progress=False)
        assert inflight.read_text(encoding="utf-8") == "being written"
        assert not (store / "index" / "summary.json").exists()
    build_index(store, CFG, workers=0, progress=False)  # the lock died with its holder


def test_a_failing_rebuild_keeps_the_committed_index(tmp_path):
    """Everything is read and classified before the committed index is touched."""
    store = make(tmp_path, failed=False)
    build_index(store, CFG, workers=0, progress=False)
    before = {p: p.read_bytes() for p in (store / "index").rglob("*") if p.is_file()}
    (store / "cases" / "case_2.h5").write_bytes(b"not hdf5")  # the catalog still says done
    with pytest.raises(StoreError, match="case_2"):
        build_index(store, IndexConfig(**{**CFG.__dict__, "background_ratio": 1.0}), workers=0, progress=False)
    after = {p: p.read_bytes() for p in (store / "index").rglob("*") if p.is_file()}
    assert after == before and store / "index" / "summary.json" in after
