"""Train/validation folds by case (never by patch), seeded and machine independent.

See docs/how-to/index.md#what-this-does and docs/explanation/internals.md#folds-datasetindexsplitpy.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from dataset.common.seeds import derive_seed
from dataset.contract.catalog import Catalog, CatalogRecord
from dataset.contract.index import Fold
from dataset.contract.store import StoreError

log = logging.getLogger(__name__)


def usable_cases(catalog: Catalog) -> tuple[list[str], list[tuple[str, str]]]:
    """Sorted ids of labelled, preprocessed cases, and (id, error) of failed ones.

    Unlabelled (test) cases are not part of the index; failed cases are skipped with a
    warning so one bad scan never blocks the rest.
    """
    usable, failed = [], []
    for case_id in sorted(catalog.cases):
        record = catalog.cases[case_id]
        status = record.status
        if status == "done":
            if record.has_label:
                usable.append(case_id)
            continue
        if status != "failed" and not record.has_label:
            continue  # an unlabelled (test) case is never indexed
        if status == "failed":
            reason = str(record.error or "no reason recorded")
            log.warning("skipping case %s: preprocessing failed (%s)", case_id, reason)
        else:  # e.g. "pending": a preprocessing run was killed before this case was done
            reason = f"not preprocessed (status {status!r}); rerun `pancreas preprocess`"
            log.warning("skipping case %s: %s", case_id, reason)
        failed.append((case_id, reason))
    return usable, failed


def has_tumour(record: CatalogRecord) -> bool:
    """Whether a case's stored label holds tumour voxels (class 2), from the catalog alone."""
    counts = record.label_counts
    return counts is not None and len(counts) > 2 and counts[2] > 0


def seeded_order(case_ids: Collection[str], seed: int, max_cases: int | None = None) -> list[str]:
    """Cases ordered by a hash of (seed, case id); ``max_cases`` keeps a seeded subset."""
    order = sorted(case_ids, key=lambda c: (derive_seed(seed, "split", c), c))
    return order if max_cases is None else order[:max_cases]


def split_cases(
    case_ids: list[str], val_fraction: float, seed: int, max_cases: int | None = None
) -> tuple[list[str], list[str]]:
    """(train, validation) case ids, each sorted: the one-fold split.

    Cases are ordered by a hash of (seed, case id): the same seed gives the same split
    on any machine, and ``max_cases`` takes a seeded subset before splitting.
    """
    order = seeded_order(case_ids, seed, max_cases)
    n_val = int(len(order) * val_fraction + 0.5)
    if n_val == 0 or n_val == len(order):
        raise StoreError(
            f"val_fraction {val_fraction} of {len(order)} labelled case(s) leaves "
            f"{'no validation' if n_val == 0 else 'no training'} case; add cases or change val_fraction"
        )
    return sorted(order[n_val:]), sorted(order[:n_val])


def fold_cases(case_ids: list[str], with_tumour: Collection[str], folds: int, seed: int) -> list[list[str]]:
    """The validation cases of each of ``folds`` folds (each sorted), stratified by tumour."""
    order = seeded_order(case_ids, seed)
    tumour = set(with_tumour)
    dealt = [c for c in order if c in tumour] + [c for c in order if c not in tumour]
    return [sorted(dealt[k::folds]) for k in range(folds)]


def make_folds(
    store: str | Path,
    case_ids: list[str],
    with_tumour: Collection[str],
    folds: int,
    val_fraction: float,
    seed: int,
    max_cases: int | None = None,
) -> tuple[Fold, ...]:
    """The split's folds; ``StoreError`` naming the store when K does not fit the cases."""
    if folds < 1:
        raise StoreError(f"{store}: folds must be >= 1, got {folds}")
    if folds == 1:
        train, val = split_cases(case_ids, val_fraction, seed, max_cases)
        return (Fold(tuple(train), tuple(val)),)
    cases = seeded_order(case_ids, seed, max_cases)
    if folds > len(cases):
        subset = f" (max_cases {max_cases})" if max_cases is not None and max_cases < len(case_ids) else ""
        raise StoreError(
            f"{store}: {folds} folds need at least {folds} labelled cases, but {len(cases)} are "
            f"indexed{subset}; use --folds {len(cases)} or fewer"
        )
    vals = fold_cases(cases, with_tumour, folds, seed)
    n_tumour = len(set(cases) & set(with_tumour))
    if n_tumour < folds:
        log.warning(
            "only %d of %d indexed cases have tumour: %d of %d folds validate on no tumour case",
            n_tumour,
            len(cases),
            folds - n_tumour,
            folds,
        )
    return tuple(Fold(tuple(sorted(set(cases) - set(val))), tuple(val)) for val in vals)
