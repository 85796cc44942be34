"""``build_index`` end to end on tiny synthetic stores (16x16x8 patches)."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from dataset.index.config import IndexConfig
from dataset.common.configio import to_dict
from dataset.index.build import build_index
from dataset.contract.manifest import read_manifest
from dataset.contract.reader import PatchReader
from dataset.common.files import TMP_SUFFIX, LockedError
from dataset.contract.catalog import read_catalog, write_catalog
from dataset.contract.store import StoreError
from pancreas.synthetic.store import blob_label, failed_record, make_store, write_case
from pancreas.cli import main
from lockholder import lock_held_elsewhere

CFG = IndexConfig(train_patch_xyz=(16, 16, 8), val_patch_xyz=(32, 32, 8), val_fraction=0.25)


def labels() -> dict[str, np.ndarray]:
    out = {f"case_{i}": blob_label((24, 48, 40), (10 + i, 20 + 2 * i, 18), (5, 9, 11), tumour_radius=3)
           for i in range(5)}
    out["case_thin"] = blob_label((5, 48, 40), (2, 24, 20), (2, 8, 8))       # 5 slices < 8
    out["case_empty"] = np.zeros((24, 48, 40), np.uint8)                    # no foreground
    out["case_full"] = np.ones((8, 16, 32), np.uint8)                        # no background patch
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
    split = json.loads((store / "index" / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == sorted(labels())
    assert (s.train_cases, s.val_cases) == (6, 2) and split["skipped"] == {"case_bad": "cannot read header"}
    on_disk = json.loads((store / "index" / "summary.json").read_text())
    assert on_disk["train_entries"] == s.train_entries == len(read_manifest(store / "index" / "train.csv"))
    assert on_disk["config"] == to_dict(CFG) and on_disk["store_fingerprint"] == s.store_fingerprint
    train_ids = set(split["train"])
    assert {r["case_id"] for r in read_manifest(store / "index" / "val.csv")} == set(split["val"])
    assert {r["case_id"] for r in read_manifest(store / "index" / "train.csv")} <= train_ids


def test_counts_are_exact_and_balance_holds(built):
    store, s = built
    rows = read_manifest(store / "index" / "train.csv")
    with PatchReader(store) as reader:
        for r in rows:
            if r["variant"]:
                continue
            _, label = reader.read_levels(r)
            assert (r["n_pancreas"], r["n_tumour"]) == ((label == 1).sum(), (label == 2).sum())
            assert r["foreground"] == int(r["n_pancreas"] + r["n_tumour"] >= 1)
    for case_id, info in s.per_case.items():
        if info["split"] != "train" or info["foreground_patches"] == 0:
            continue
        mine = [r for r in rows if r["case_id"] == case_id]
        fg = [r for r in mine if r["foreground"]]
        bg = [r for r in mine if not r["foreground"]]
        assert len(fg) == 2 * info["foreground_patches"]
        assert sum(1 for r in fg if r["variant"]) == info["foreground_patches"]
        if case_id != "case_full":
            assert len(bg) == int(1.5 * len(fg) + 0.5)


def test_empty_and_thin_cases(built):
    store, s = built
    rows = read_manifest(store / "index" / "train.csv") + read_manifest(store / "index" / "val.csv")
    thin = [r for r in rows if r["case_id"] == "case_thin"]
    assert thin and all(r["padded"] == 1 and r["z0"] == -2 for r in thin)  # (5 - 8) // 2
    with PatchReader(store) as reader:
        image, label = reader.read_levels(thin[0])
        assert image.shape == (8, thin[0]["dy"], thin[0]["dx"])
        assert not image[:2].any() and not label[:2].any() and not image[7:].any()
    assert s.cases_without_foreground == ["case_empty"]


def test_case_without_foreground_in_training(tmp_path):
    from dataset.index.split import split_cases

    ids = sorted(labels())
    seed = next(k for k in range(50) if "case_empty" in split_cases(ids, 0.25, k)[0])
    store = make(tmp_path, failed=False)
    s = build_index(store, IndexConfig(**{**CFG.__dict__, "seed": seed}), workers=0, progress=False)
    assert s.cases_without_foreground == ["case_empty"]
    empty = [r for r in read_manifest(store / "index" / "train.csv") if r["case_id"] == "case_empty"]
    assert len(empty) == CFG.background_without_foreground and not any(r["foreground"] for r in empty)
    assert len({(r["z0"], r["y0"], r["x0"]) for r in empty}) == len(empty)  # drawn without replacement


def test_augmented_shards(built):
    store, s = built
    rows = [r for r in read_manifest(store / "index" / "train.csv") if r["variant"]]
    assert rows and s.augmented_built == len(s.augmented_shards)
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


def test_deterministic_bytes_and_noop(tmp_path, built):
    store, first = built
    other = make(tmp_path / "again")
    build_index(other, CFG, workers=0, progress=False)
    for name in ("train.csv", "val.csv", "split.json"):
        assert (store / "index" / name).read_bytes() == (other / "index" / name).read_bytes()
    for shard in first.augmented_shards:
        a, b = store / "index" / shard, other / "index" / shard
        with h5py.File(a) as fa, h5py.File(b) as fb:
            np.testing.assert_array_equal(fa["image"][...], fb["image"][...])
            assert fa.attrs["fingerprint"] == fb.attrs["fingerprint"]
        assert a.read_bytes() == b.read_bytes()
    again = build_index(other, CFG, workers=0, progress=False)
    assert again.unchanged and again.augmented_built == 0


def test_changed_case_rebuilds_only_its_shard(tmp_path):
    store = make(tmp_path, failed=False)
    s1 = build_index(store, CFG, workers=0, progress=False)
    split = json.loads((store / "index" / "split.json").read_text())
    victim = next(c for c in split["train"] if f"augmented/{c}.h5" in s1.augmented_shards)
    times = {p.name: p.stat().st_mtime_ns for p in (store / "index" / "augmented").glob("*.h5")}
    catalog = read_catalog(store)
    catalog = catalog.with_case(victim, write_case(store, victim, labels()[victim], seed=99))  # new image bytes
    write_catalog(store, catalog)
    s2 = build_index(store, CFG, workers=0, progress=False)
    assert not s2.unchanged and s2.augmented_built == 1 and s2.augmented_reused == len(s1.augmented_shards) - 1
    for p in (store / "index" / "augmented").glob("*.h5"):
        assert (p.stat().st_mtime_ns == times[p.name]) == (p.stem != victim)
    s3 = build_index(store, IndexConfig(**{**CFG.__dict__, "background_ratio": 1.0}), workers=0, progress=False)
    assert not s3.unchanged and s3.augmented_built == 0  # manifests change, augmented shards do not


def test_stale_temporaries_removed(tmp_path):
    store = make(tmp_path, failed=False)
    (store / "index" / "augmented").mkdir(parents=True)
    junk = [store / "index" / f".train.csv.abc{TMP_SUFFIX}", store / "index" / "augmented" / f".case_0.h5.x{TMP_SUFFIX}"]
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
        build_index(two, IndexConfig(**{**CFG.__dict__, "val_fraction": 0.2}), workers=0, progress=False)
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
    assert "6 train / 2 validation cases" in out and "augmented" in out and "built" in out
    assert main(["index", "--store", str(store), "--config", str(config), "--workers", "0", "--no-progress"]) == 0
    assert "up to date" in capsys.readouterr().out
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
        assert inflight.read_text() == "being written"
        assert not (store / "index" / "summary.json").exists()
    build_index(store, CFG, workers=0, progress=False)  # the lock died with its holder


def test_a_failing_rebuild_keeps_the_committed_index(tmp_path):
    """Everything is read and classified before the committed index is touched."""
    store = make(tmp_path, failed=False)
    build_index(store, CFG, workers=0, progress=False)
    before = {p.name: p.read_bytes() for p in (store / "index").glob("*") if p.is_file()}
    (store / "cases" / "case_2.h5").write_bytes(b"not hdf5")  # the catalog still says done
    with pytest.raises(StoreError, match="case_2"):
        build_index(store, IndexConfig(**{**CFG.__dict__, "background_ratio": 1.0}), workers=0, progress=False)
    after = {p.name: p.read_bytes() for p in (store / "index").glob("*") if p.is_file()}
    assert after == before and "summary.json" in after
