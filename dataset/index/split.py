"""Train/validation split by case (never by patch), seeded and machine independent."""
from __future__ import annotations

import logging
from dataset.common.seeds import derive_seed
from dataset.contract.catalog import Catalog
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


def split_cases(case_ids: list[str], val_fraction: float, seed: int,
                max_cases: int | None = None) -> tuple[list[str], list[str]]:
    """(train, validation) case ids, each sorted.

    Cases are ordered by a hash of (seed, case id): the same seed gives the same split
    on any machine, and ``max_cases`` takes a seeded subset before splitting.
    """
    order = sorted(case_ids, key=lambda c: (derive_seed(seed, "split", c), c))
    if max_cases is not None:
        order = order[:max_cases]
    n_val = int(len(order) * val_fraction + 0.5)
    if n_val == 0 or n_val == len(order):
        raise StoreError(
            f"val_fraction {val_fraction} of {len(order)} labelled case(s) leaves "
            f"{'no validation' if n_val == 0 else 'no training'} case; add cases or change val_fraction"
        )
    return sorted(order[n_val:]), sorted(order[:n_val])
