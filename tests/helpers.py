"""Small builders several test modules share (imported like ``lockholder``: ``from helpers import ...``).

* ``write_contract_run``: a run folder holding only ``input_contract.json``, for prediction
  tests whose ``predict_fn`` stands in for the model;
* ``tiny_train_store``: the 3-case 16x32x32 trainable store of the training tests;
* ``preprocessed_store``: the training cases of a synthetic dataset, really preprocessed,
  in a store with its catalog (the index is each test's own).
"""

from __future__ import annotations

import json
from pathlib import Path

from dataset.common.configio import to_dict
from dataset.contract.catalog import Catalog, CatalogRecord, write_catalog
from pancreas.testing.runs import make_synthetic_store
from preprocess.config import PreprocessConfig
from preprocess.pipeline import preprocess_file, write_case
from sources.synthetic.msd import dataset_params


def write_contract_run(run_dir: Path, window=(32, 64, 64), depth: int = 2) -> Path:
    """A run folder with just the input contract (``predict_fn`` stands in for the model)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    contract = {
        "version": 1,
        "patch_size_zyx": list(window),
        "val_patch_size_zyx": list(window),
        "n_classes": 3,
        "label_names": {"0": "background", "1": "pancreas", "2": "tumour"},
        "model_depth": depth,
        "preprocess": to_dict(PreprocessConfig()),
        "store_fingerprint": "x",
        "index_fingerprint": "y",
    }
    (run_dir / "input_contract.json").write_text(json.dumps(contract))
    return run_dir


def tiny_train_store(root: Path, seed: int = 0) -> Path:
    """Three 16x32x32 cases with 16x32x32 training and validation patches, 4 per case."""
    make_synthetic_store(
        root,
        n_cases=3,
        shape_zyx=(16, 32, 32),
        train_patch_zyx=(16, 32, 32),
        val_patch_zyx=(16, 32, 32),
        patches_per_case=4,
        seed=seed,
    )
    return root


def preprocessed_store(data: Path, store: Path, n_cases: int, seed: int) -> tuple[Catalog, list[str], dict]:
    """Preprocess ``data``'s ``n_cases`` training cases (made by ``make_dataset(..., seed, n_test=0)``)
    into ``store`` with a catalog; returns the catalog, the case ids and the config the shards record."""
    catalog = Catalog(dataset={"root": str(data)}, config={}, config_fingerprint="")
    params = dataset_params(n_cases, seed=seed, n_test=0)
    for p in params:
        case = preprocess_file(data / "imagesTr" / p.filename, data / "labelsTr" / p.filename, PreprocessConfig())
        write_case(store / "cases" / f"{p.name}.h5", p.name, case)
        catalog = catalog.with_case(p.name, CatalogRecord.new(p.name, "training", True, status="done"))
    write_catalog(store, catalog)
    return catalog, [p.name for p in params], json.loads(case.attrs["config"])
