"""What a run reads from the store before it starts, checked against itself and the model.

Reads only contract files (``dataset.contract``): the catalog, the committed index
(``check_index``: complete, and still built on this store and these manifests) and the
manifests. Nothing here writes, so a bad store or index leaves RUN_DIR untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from dataset.common.errors import UsageError
from dataset.contract.catalog import Catalog, read_catalog
from dataset.contract.fingerprints import store_fingerprint
from dataset.contract.index import REINDEX, check_index, read_index_summary
from dataset.contract.manifest import index_fingerprint
from dataset.contract.run import MODEL_INPUT, MODEL_OUTPUT, InputContract, RunFingerprints
from dataset.contract.store import LABEL_NAMES, StoreError
from training.config import TrainConfig, check_patch_size
from training.model import N_CLASSES
from training.pipeline import load_rows, patch_size_of


@dataclass(frozen=True)
class RunInputs:
    """Everything read and checked from the store before a run starts."""

    store: Path
    catalog: Catalog
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    patch_size_zyx: tuple[int, int, int]
    val_patch_size_zyx: tuple[int, int, int]
    fingerprints: RunFingerprints
    fold: int = 0  # the index fold whose manifests these are
    n_folds: int = 1  # K of the committed index


def check_cases(rows: list[dict[str, Any]], catalog: Catalog, what: str) -> None:
    """Every case a manifest names is done and labelled in the catalog."""
    for case_id in sorted({r["case_id"] for r in rows}):
        record = catalog.cases.get(case_id)
        if record is None or not record.done or not record.has_label:
            reason = "is not in the store's catalog" if record is None else f"is {record.status} / unlabelled"
            raise StoreError(f"{what} manifest names case {case_id}, which {reason}; {REINDEX}")


def check_blur_fits(config: TrainConfig, patch_zyx: tuple[int, ...]) -> None:
    """The blur kernel's half-width must be below every patch edge (a mirrored border needs it)."""
    from training.augment import blur_radius

    aug = config.augment
    if aug.blur_probability > 0 and blur_radius(aug.blur_sigma[1]) >= min(patch_zyx):
        raise UsageError(
            f"augment.blur_sigma up to {aug.blur_sigma[1]} needs a kernel of half-width "
            f"{blur_radius(aug.blur_sigma[1])} voxels, not below the training patch's smallest edge "
            f"{min(patch_zyx)} (patch {tuple(patch_zyx)}); lower blur_sigma or index larger patches"
        )


def read_run_inputs(store: str | Path, config: TrainConfig, fold: int = 0) -> RunInputs:
    """Catalog, committed index and fold ``fold``'s manifests, checked against each other and the model."""
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise UsageError(f"--fold must be a fold number 0, 1, ... (an integer >= 0), got {fold!r}")
    store = Path(store)
    if not store.is_dir():
        raise StoreError(f"{store}: store not found")
    catalog = read_catalog(store)
    _refuse_missing_fold(store, catalog, fold)
    train_rows, val_rows = load_rows(store, "train", fold), load_rows(store, "val", fold)
    check_cases(train_rows, catalog, "training")
    check_cases(val_rows, catalog, "validation")
    patch = check_patch_size(patch_size_of(train_rows, "training"), config.model.depth, "training")
    val_patch = check_patch_size(patch_size_of(val_rows, "validation"), config.model.depth, "validation")
    check_blur_fits(config, patch)
    summary = check_index(store, catalog, fold)
    fingerprints = RunFingerprints(
        store_fingerprint=store_fingerprint(catalog),
        index_fingerprint=index_fingerprint(store),
        preprocess_fingerprint=catalog.config_fingerprint,
        index_config_fingerprint=summary.config_fingerprint,
    )
    return RunInputs(
        store,
        catalog,
        train_rows,
        val_rows,
        cast("tuple[int, int, int]", tuple(patch)),
        cast("tuple[int, int, int]", tuple(val_patch)),
        fingerprints,
        fold=fold,
        n_folds=summary.folds,
    )


def _refuse_missing_fold(store: Path, catalog: Catalog, fold: int) -> None:
    """A fold the committed index lacks gets ``check_index``'s one line (the store, its K,
    ``--fold``) before its manifests, which do not exist, are read."""
    if fold not in range(read_index_summary(store).folds):
        check_index(store, catalog, fold)


def input_contract(inputs: RunInputs, config: TrainConfig) -> InputContract:
    """What a model of this run takes and gives; inference checks a store against it."""
    return InputContract(
        patch_size_zyx=inputs.patch_size_zyx,
        val_patch_size_zyx=inputs.val_patch_size_zyx,
        n_classes=N_CLASSES,
        label_names=[LABEL_NAMES[k] for k in range(N_CLASSES)],
        model_depth=config.model.depth,
        model_norm=config.model.norm,
        input=MODEL_INPUT,
        output=MODEL_OUTPUT,
        preprocess=dict(inputs.catalog.config),
        preprocess_fingerprint=inputs.fingerprints.preprocess_fingerprint,
        store_fingerprint=inputs.fingerprints.store_fingerprint,
        index_fingerprint=inputs.fingerprints.index_fingerprint,
        # predict mirrors along these axes by default (test-time augmentation, as nnU-Net)
        flip_augment={
            "flip_axes": list(config.augment.flip_axes),
            "flip_probability": float(config.augment.flip_probability),
        },
        fold=inputs.fold,  # evaluate --run scores this fold's validation cases
        n_folds=inputs.n_folds,
    )
