"""Case-level K-fold split: seeded by hashes (the same on every machine), stratified by tumour."""

from __future__ import annotations

import pytest

from dataset.common.records import record_from_dict, record_to_dict
from dataset.common.seeds import derive_seed
from dataset.contract.index import Fold, Split
from dataset.contract.store import StoreError
from dataset.index.split import fold_cases, make_folds, seeded_order, split_cases


def ids(n: int) -> list[str]:
    return [f"c{i:02d}" for i in range(n)]


def check_partition(cases: list[str], folds: tuple[Fold, ...]) -> None:
    """Every case validates in exactly one fold; each fold trains on all the others."""
    vals = [c for f in folds for c in f.val]
    assert sorted(vals) == sorted(cases)  # no case twice, none missing
    for f in folds:
        assert list(f.val) == sorted(f.val) and list(f.train) == sorted(f.train)
        assert not set(f.train) & set(f.val) and set(f.train) | set(f.val) == set(cases)


def test_hand_computed_small_case():
    # blake2b ranks of (seed 0, "split", id), from dataset.common.seeds: pinned, so a change
    # of the hash (and so of every published split) cannot pass unnoticed
    assert derive_seed(0, "split", "p7") == 2297027883900764099
    assert derive_seed(0, "split", "p1") == 8386563360998826357
    cases = ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]
    assert seeded_order(cases, 0) == ["p7", "p3", "p4", "p2", "p6", "p5", "p1"]
    # tumour cases first in that order (p3, p2, p1), then the others (p7, p4, p6, p5), dealt
    # round robin: fold 0 <- p3, p7, p5; fold 1 <- p2, p4; fold 2 <- p1, p6
    assert fold_cases(cases, {"p1", "p2", "p3"}, 3, 0) == [["p3", "p5", "p7"], ["p2", "p4"], ["p1", "p6"]]
    folds = make_folds("s", cases, {"p1", "p2", "p3"}, 3, 0.2, 0)
    assert folds[1] == Fold(("p1", "p3", "p5", "p6", "p7"), ("p2", "p4"))


@pytest.mark.parametrize(
    ("n", "k", "n_tumour"), [(2, 2, 0), (7, 3, 3), (8, 5, 5), (10, 5, 2), (11, 4, 11), (30, 5, 13)]
)
def test_every_case_validates_in_exactly_one_fold(n, k, n_tumour):
    cases = ids(n)
    tumour = set(cases[:n_tumour])
    folds = make_folds("s", cases, tumour, k, 0.2, 3)
    assert len(folds) == k
    check_partition(cases, folds)
    sizes = [len(f.val) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    per_fold = [len(tumour & set(f.val)) for f in folds]
    assert set(per_fold) <= {n_tumour // k, -(-n_tumour // k)}  # floor or ceil: stratified


def test_ten_cases_five_with_tumour_five_folds_one_tumour_case_each():
    cases = ids(10)
    tumour = {"c01", "c03", "c04", "c07", "c09"}
    folds = make_folds("s", cases, tumour, 5, 0.2, 0)
    assert [len(tumour & set(f.val)) for f in folds] == [1, 1, 1, 1, 1]
    assert [len(f.val) for f in folds] == [2, 2, 2, 2, 2]


def test_same_split_twice_whatever_the_input_order():
    cases = ids(13)
    tumour = {"c02", "c05", "c11"}
    first = make_folds("s", cases, tumour, 4, 0.2, 7)
    assert make_folds("s", list(reversed(cases)), set(tumour), 4, 0.2, 7) == first
    assert make_folds("s", cases, tumour, 4, 0.2, 8) != first  # the seed matters


def test_one_fold_is_the_seeded_val_fraction_split():
    cases = ids(10)
    (fold,) = make_folds("s", cases, {"c00"}, 1, 0.2, 0)
    assert (list(fold.train), list(fold.val)) == split_cases(cases, 0.2, 0)
    assert (len(fold.train), len(fold.val)) == (8, 2)


def test_max_cases_takes_a_seeded_subset_first():
    cases = ids(12)
    folds = make_folds("s", cases, set(), 3, 0.2, 0, max_cases=6)
    check_partition(seeded_order(cases, 0)[:6], folds)


@pytest.mark.parametrize(
    ("k", "n", "max_cases", "message"),
    [
        (6, 5, None, r"^store/x: 6 folds need at least 6 labelled cases, but 5 are indexed; use --folds 5 or fewer$"),
        (4, 10, 3, r"^store/x: 4 folds need at least 4 labelled cases, but 3 are indexed \(max_cases 3\)"),
        (0, 5, None, r"^store/x: folds must be >= 1, got 0$"),
    ],
)
def test_impossible_fold_counts_are_refused_naming_the_store(k, n, max_cases, message):
    with pytest.raises(StoreError, match=message):
        make_folds("store/x", ids(n), set(), k, 0.2, 0, max_cases=max_cases)


def test_split_round_trip_and_fold_accessor():
    split = Split(
        seed=1,
        val_fraction=0.2,
        max_cases=None,
        folds=(Fold(("b",), ("a",)), Fold(("a",), ("b",))),
        skipped={"z": "failed"},
    )
    data = record_to_dict(split)
    assert list(data) == ["version", "seed", "val_fraction", "max_cases", "folds", "skipped"]
    assert data["folds"] == [{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}]
    assert record_from_dict(Split, data, "x") == split
    assert split.fold(1).val == ("b",)
    with pytest.raises(StoreError, match=r"fold 2 is not in the split: it has 2 fold\(s\), 0..1"):
        split.fold(2)


SPLIT = {"seed": 0, "val_fraction": 0.2, "max_cases": None}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"seed": 0, "train": ["a"], "val": ["b"]}, r"x: unknown key\(s\) train, val"),
        ({"folds": []}, r"x: missing key\(s\) seed, val_fraction, max_cases"),
        ({**SPLIT, "folds": []}, "x: no folds listed"),
        ({**SPLIT, "folds": [{"train": ["a"], "val": []}]}, r"x.folds\[0\]: no validation cases"),
        ({**SPLIT, "folds": [{"train": ["a"], "val": ["a"]}]}, r"x.folds\[0\]: case.* a both train and validate"),
        (
            {**SPLIT, "folds": [{"train": ["b"], "val": ["a"]}, {"train": ["b"], "val": ["a"]}]},
            "x: case a validates in folds 0 and 1",
        ),
    ],
)
def test_bad_split_files_are_refused(data, message):
    with pytest.raises(StoreError, match=message):
        record_from_dict(Split, {"version": 1, **data}, "x")
