"""Split by case and balancing of training entries, on hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest

from dataset.contract.catalog import Catalog, CatalogRecord
from dataset.contract.store import StoreError
from dataset.index import balance
from dataset.index.config import IndexConfig
from dataset.index.split import split_cases, usable_cases

CFG = IndexConfig(train_patch_xyz=(16, 16, 8), val_patch_xyz=(16, 16, 8))


def rows(case_id, n_fg, n_bg):
    out = []
    for i in range(n_fg + n_bg):
        fg = i < n_fg
        out.append(balance.make_row(case_id, (0, 0, 16 * i), (8, 16, 16), 5 if fg else 0, 0, fg, False))
    return out


@pytest.mark.parametrize(
    ("n_fg", "n_bg", "copies", "ratio", "expect_bg", "expect_repl"),
    [
        (4, 20, 2, 1.5, 12, 0),  # 4 fg patches -> 8 fg entries -> 12 background, all distinct
        (4, 5, 2, 1.5, 12, 7),  # only 5 background patches: 7 drawn again
        (3, 10, 1, 1.5, 5, 0),  # 3 entries * 1.5 = 4.5 -> rounds half up to 5
        (2, 10, 3, 1.0, 6, 0),
        (0, 10, 2, 1.5, 4, 0),  # no foreground: background_without_foreground (4)
    ],
)
def test_balance_counts(n_fg, n_bg, copies, ratio, expect_bg, expect_repl):
    cfg = IndexConfig(train_patch_xyz=(16, 16, 8), foreground_copies=copies, background_ratio=ratio)
    entries, stats = balance.balance_case("c", rows("c", n_fg, n_bg), cfg)
    fg = [e for e in entries if e["foreground"]]
    bg = [e for e in entries if not e["foreground"]]
    assert len(fg) == n_fg * copies and stats.foreground_entries == n_fg * copies
    assert len(bg) == expect_bg == stats.background_entries
    assert sum(e["with_replacement"] for e in bg) == expect_repl == stats.with_replacement
    # without replacement first: every background patch used at most once before any reuse
    distinct = {(e["z0"], e["y0"], e["x0"]) for e in bg}
    assert len(distinct) == min(n_bg, expect_bg)
    # each foreground patch: one stored copy and copies-1 augmented ones with distinct variants
    assert sum(1 for e in fg if e["variant"] == "") == n_fg
    variants = [e["variant"] for e in fg if e["variant"]]
    assert variants == [f"augmented/c.h5:{i}" for i in range(n_fg * (copies - 1))]


def test_balance_without_background_patches_reports_shortfall():
    entries, stats = balance.balance_case("c", rows("c", 2, 0), CFG)
    assert len(entries) == 4 and stats.background_short == 6


def test_background_draw_is_deterministic_and_seeded():
    r = rows("c", 1, 30)
    a = balance.draw_background("c", r[1:], 5, seed=0)
    assert a == balance.draw_background("c", r[1:], 5, seed=0)
    assert a != balance.draw_background("c", r[1:], 5, seed=1)


def test_seeds_differ_per_entry_and_are_stable():
    entries, _ = balance.balance_case("c", rows("c", 3, 10), CFG)
    balance.assign_seeds(entries, 0)
    seeds = [e["seed"] for e in entries]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    again, _ = balance.balance_case("c", rows("c", 3, 10), CFG)
    balance.assign_seeds(again, 0)
    assert [e["seed"] for e in again] == seeds


def test_centred_rows_hold_the_chosen_class():
    label = np.zeros((20, 40, 40), np.uint8)
    label[10, 5, 5] = 2
    label[12:14, 30:33, 30:33] = 1
    cfg = IndexConfig(train_patch_xyz=(16, 16, 8), centred_per_case=6, centred_tumour_probability=0.5)
    out = balance.centred_rows("c", label, (8, 16, 16), cfg)
    assert len(out) == 6 and all(r["kind"] == "centred" and r["foreground"] for r in out)
    for r in out:
        block = label[max(0, r["z0"]) : r["z0"] + 8, max(0, r["y0"]) : r["y0"] + 16, max(0, r["x0"]) : r["x0"] + 16]
        assert (r["n_pancreas"], r["n_tumour"]) == ((block == 1).sum(), (block == 2).sum())
    assert any(r["n_tumour"] for r in out) and any(r["n_pancreas"] for r in out)
    assert balance.centred_rows("c", label, (8, 16, 16), CFG) == []  # off by default


def test_split_by_case_deterministic_and_disjoint():
    ids = [f"pancreas_{i:03d}" for i in range(150)]
    train, val = split_cases(ids, 0.2, seed=0)
    assert len(train) == 120 and len(val) == 30 and not set(train) & set(val)
    assert (train, val) == split_cases(list(reversed(ids)), 0.2, seed=0)  # input order is irrelevant
    assert split_cases(ids, 0.2, seed=1) != (train, val)
    sub_train, sub_val = split_cases(ids + [f"extra_{i}" for i in range(50)], 0.2, seed=0, max_cases=150)
    assert len(sub_train) == 120 and len(sub_val) == 30


def test_split_without_validation_case_is_an_error():
    with pytest.raises(StoreError, match="val_fraction 0.2 of 2 labelled case\\(s\\) leaves no validation case"):
        split_cases(["a", "b"], 0.2, seed=0)


def test_usable_cases_skips_failed_and_unlabelled():
    def rec(cid, status, has_label, error=None):
        return CatalogRecord.new(cid, "training" if has_label else "test", has_label, status=status, error=error)

    catalog = Catalog(
        dataset={},
        config={},
        config_fingerprint="x",
        cases={
            "b": rec("b", "done", True),
            "a": rec("a", "done", True),
            "t": rec("t", "done", False),
            "f": rec("f", "failed", True, "bad header"),
            "p": rec("p", "pending", True),
        },
    )  # a killed preprocess run
    usable, skipped = usable_cases(catalog)
    assert usable == ["a", "b"]
    assert [c for c, _ in skipped] == ["f", "p"]
    assert skipped[0][1] == "bad header" and "pending" in skipped[1][1]
