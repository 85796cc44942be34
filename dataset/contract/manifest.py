"""Patch manifests: the CSV contract between ``pancreas index`` and the trainer.

One pair per cross-validation fold k: ``STORE/index/fold_<k>/train.csv`` and ``val.csv``
(``manifest_path``); one row per training or validation entry, a patch box in a case's
stored (z, y, x) grid that may start before or run past the volume (the reader pads).
The columns (``MANIFEST_COLUMNS``): docs/reference/contract.md.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from dataset.common.atomic import atomic_path
from dataset.common.errors import UsageError
from dataset.contract.store import StoreError

MANIFEST_COLUMNS = (
    "case_id",
    "z0",
    "y0",
    "x0",
    "dz",
    "dy",
    "dx",
    "n_pancreas",
    "n_tumour",
    "foreground",
    "padded",
    "variant",
    "seed",
    "kind",
    "copy",
    "with_replacement",
)
STR_COLUMNS = frozenset({"case_id", "variant", "kind"})
INT_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c not in STR_COLUMNS)
REQUIRED_COLUMNS = MANIFEST_COLUMNS[:13]  # what every reader may rely on


INDEX_DIR = "index"  # under STORE
AUGMENTED_DIR = "augmented"  # under STORE/index
FOLD_PREFIX = "fold_"  # STORE/index/fold_<k>/
SPLITS = ("train", "val")
MANIFEST_NAMES = ("train.csv", "val.csv")  # in each fold folder


def fold_dir(store: str | Path, fold: int) -> Path:
    """``STORE/index/fold_<fold>``."""
    return Path(store) / INDEX_DIR / f"{FOLD_PREFIX}{fold}"


def manifest_path(store: str | Path, split: str, fold: int) -> Path:
    """``STORE/index/fold_<fold>/<split>.csv`` for split "train" or "val"."""
    if split not in SPLITS:
        raise UsageError(f"unknown manifest {split!r}; expected one of {', '.join(SPLITS)}")
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise UsageError(f"fold must be an integer >= 0, got {fold!r}")
    return fold_dir(store, fold) / MANIFEST_NAMES[SPLITS.index(split)]


def manifest_folds(store: str | Path) -> int:
    """How many folds hold manifests: fold_0, fold_1, ... up to the first with neither file.

    ``pancreas index`` removes the manifests of folds beyond K before it commits, so on a
    committed index this is K.
    """
    k = 0
    while any((fold_dir(store, k) / name).exists() for name in MANIFEST_NAMES):
        k += 1
    return k


def variant_ref(case_id: str, entry: int) -> str:
    """The ``variant`` value naming entry ``entry`` of a case's augmented shard."""
    return f"{AUGMENTED_DIR}/{case_id}.h5:{entry}"


def parse_variant(variant: str) -> tuple[str, int]:
    """``"augmented/x.h5:3"`` -> (``"augmented/x.h5"``, 3); path relative to ``STORE/index``."""
    rel, sep, entry = variant.rpartition(":")
    if not sep or not rel or not entry.isdigit():
        raise StoreError(f"variant {variant!r} is not of the form 'augmented/<case>.h5:<entry>'")
    return rel, int(entry)


def write_manifest(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as CSV (header ``MANIFEST_COLUMNS``), atomically.

    Missing optional columns get their neutral value ("" / "grid" / 0) so callers that
    build rows by hand (tests, tools) need only the required ones.
    """
    defaults = {"variant": "", "kind": "grid", "copy": 0, "with_replacement": 0}
    with atomic_path(path, point="manifest") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            for i, row in enumerate(rows):
                try:
                    writer.writerow([_format(row[c] if c in row else defaults[c]) for c in MANIFEST_COLUMNS])
                except KeyError as err:
                    raise StoreError(f"{path}: row {i} lacks column {err}") from None


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a manifest: integer columns as ``int``, ``variant`` as str ("" = stored patch)."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise StoreError(f"{path}: not a patch manifest (missing column(s) {', '.join(missing)})")
            rows = []
            for line, raw in enumerate(reader, start=2):
                rows.append(_parse(raw, path, line))
    except FileNotFoundError:
        raise StoreError(f"{path}: manifest not found; run `pancreas index`") from None
    return rows


def _parse(raw: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in raw.items():
        if key is None:
            raise StoreError(f"{path}:{line}: more values than columns")
        if key in STR_COLUMNS:
            row[key] = value or ""
        else:
            try:
                row[key] = int(value)
            except (TypeError, ValueError):
                raise StoreError(f"{path}:{line}: column {key} is not an integer ({value!r})") from None
    return row


def index_fingerprint(store: str | Path) -> str:
    """Hash of every fold's two manifests, in fold order (small: one line per patch).

    ``summary.json`` records it, runs record it, and both are compared before training
    or evaluating: editing, adding or removing any fold's manifest changes it.
    """
    import hashlib

    digest = hashlib.sha256()
    for fold in range(max(1, manifest_folds(store))):
        for split in SPLITS:
            path = manifest_path(store, split, fold)
            try:
                digest.update(path.read_bytes())
            except OSError:
                raise StoreError(f"{path}: missing; run `pancreas index`") from None
    return digest.hexdigest()[:16]
