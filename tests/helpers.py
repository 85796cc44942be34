"""Small builders several test modules share (imported like ``lockholder``: ``from helpers import ...``).

* ``write_contract_run``: a run folder holding only ``input_contract.json``, for prediction
  tests whose ``predict_fn`` stands in for the model;
* ``tiny_train_store``: the 3-case 16x32x32 trainable store of the training tests;
* ``preprocessed_store``: the training cases of a synthetic dataset, really preprocessed,
  in a store with its catalog (the index is each test's own);
* ``write_dicom_series``: a CT image as a DICOM series of one file per slice, in any
  orientation, with the patient, study and frame-of-reference tags a DICOM SEG copies.
"""

from __future__ import annotations

import json
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
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom_series(
    image: Any, folder: Path, uid: str, *, reverse_instances: bool = False, patient_position: str = "HFS"
) -> list[Path]:
    """Slice k of ``image`` (a SimpleITK int16 image, any direction) as ``folder/IM<k>.dcm``, its
    ImageOrientationPatient the direction's first two columns; the files, in slice order.

    ``reverse_instances``: InstanceNumber and file names count down as k counts up (a series
    stored in reverse order: only the positions sort it).
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    orientation = (d[0], d[3], d[6], d[1], d[4], d[7])  # row direction (x axis), column direction (y axis)
    n = image.GetSize()[2]
    files = []
    for k in range(n):
        number = n - k if reverse_instances else k + 1
        tags = {
            "0008|0016": CT_IMAGE_STORAGE,
            "0008|0018": f"{uid}.{number}",
            "0008|0060": "CT",
            "0010|0010": "Test^Patient",
            "0010|0020": "P001",
            "0010|0030": "19700101",
            "0010|0040": "O",
            "0008|0020": "20260101",
            "0008|0030": "120000",
            "0008|0050": "A001",
            "0008|0090": "",
            "0020|0010": "1",
            "0018|5100": patient_position,
            "0020|000d": DICOM_STUDY,
            "0020|000e": uid,
            "0020|0052": DICOM_FRAME_OF_REFERENCE,
            "0020|0011": "3",
            "0020|0013": str(number),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientation),
            "0018|0050": f"{image.GetSpacing()[2]:g}",
        }
        slice_ = image[:, :, k]
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        files.append(folder / f"IM{number:04d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(slice_)
    return files
