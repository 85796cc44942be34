"""The store written by `pancreas preprocess` follows dataset/contract/store.py's contract exactly."""

from __future__ import annotations

import dataclasses
import json
import re

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

import dataset.contract.store as store_module
from dataset.common.fingerprints import fingerprint_file, fingerprint_json
from dataset.contract.catalog import CatalogRecord, catalog_path
from dataset.contract.fieldtables import PAGE
from dataset.contract.store import CHUNK_ZYX, SCHEMA_VERSION, read_shard, shard_path
from preprocess.config import PreprocessConfig, config_fingerprint, config_to_dict
from preprocess.driver import run_preprocess
from sources.synthetic.msd import make_dataset

BLOSC_FILTER_ID = 32001
CATALOG_CASE_KEYS = {f.name for f in dataclasses.fields(CatalogRecord)}  # the file holds every field


def read_catalog(store) -> dict:
    """catalog.json as written (the file is the contract)."""
    return json.loads(catalog_path(store).read_text(encoding="utf-8"))


def documented_attributes() -> dict[str, str]:
    """Attribute name -> "what" column of the shard attribute table in docs/reference/contract.md."""
    table = PAGE.read_text(encoding="utf-8").split("| attribute | what |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", table, flags=re.M))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("data"), 3, seed=1, size="small", n_test=1, progress=False)
    out = tmp_path_factory.mktemp("store")
    summary = run_preprocess(data, out, PreprocessConfig(), workers=0, progress=False)
    assert (summary.done, summary.failed) == (4, 0)
    return data, out


def test_attribute_table_is_parsed():
    attrs = documented_attributes()
    assert len(attrs) == 21 and "crop_start_zyx" in attrs and "config_fingerprint" in attrs


def test_shards_have_the_documented_datasets_and_attributes(store):
    _data, out = store
    catalog = read_catalog(out)
    documented = documented_attributes()
    for case_id, record in catalog["cases"].items():
        with h5py.File(out / record["shard"], "r") as f:
            assert set(f.keys()) == ({"image", "label"} if record["has_label"] else {"image"})
            for name in f:
                ds = f[name]
                assert ds.dtype == np.uint8 and ds.ndim == 3
                assert ds.chunks == tuple(min(c, s) for c, s in zip(CHUNK_ZYX, ds.shape))
                assert ds.id.get_create_plist().get_filter(0)[0] == BLOSC_FILTER_ID
            expected = set(documented) - ({"label_counts"} if not record["has_label"] else set())
            assert set(f.attrs) == expected, case_id
            attrs = dict(f.attrs)
        for name, kind in documented.items():
            if name not in attrs:
                continue
            match = re.match(r"\((\d+),\)\s+(int64|float64)", kind)
            if match:
                value = np.asarray(attrs[name])
                assert value.shape == (int(match[1]),), name
                assert value.dtype == np.dtype(match[2]), name
        assert attrs["schema_version"] == SCHEMA_VERSION and attrs["case_id"] == case_id
        assert isinstance(attrs["source_image"], str) and isinstance(attrs["original_dtype"], str)


def test_attribute_values(store):
    _data, out = store
    config = PreprocessConfig()
    for case_id, record in read_catalog(out)["cases"].items():
        image, label, attrs = read_shard(shard_path(out, case_id))
        assert list(image.shape) == record["shape_zyx"]
        assert image.min() == 0 and image.max() == 255  # equalised over the whole volume
        np.testing.assert_allclose(attrs["spacing"], config.target_spacing_mm)
        np.testing.assert_array_equal(attrs["direction"], np.eye(3).ravel())
        start, stop = attrs["crop_start_zyx"], attrs["crop_stop_zyx"]
        np.testing.assert_array_equal(stop - start, image.shape)
        assert (start >= 0).all() and (stop <= attrs["resampled_size"][::-1]).all()
        np.testing.assert_allclose(attrs["origin"], attrs["resampled_origin"] + start[::-1] * attrs["spacing"])
        np.testing.assert_allclose(attrs["window_hu"], config.window_hu)
        assert json.loads(attrs["config"]) == config_to_dict(config)
        assert attrs["config_fingerprint"] == config_fingerprint(config) == record["config_fingerprint"]
        source_label = attrs["source_label"] or None
        files = [fingerprint_file(attrs["source_image"]), fingerprint_file(source_label) if source_label else ""]
        declared = [[0, 1, 2]] if source_label else []  # a label's validity depends on dataset.json's labels
        expected_fp = fingerprint_json(files + declared)
        assert attrs["input_fingerprint"] == expected_fp == record["input_fingerprint"]
        if label is not None:
            counts = np.bincount(label.ravel(), minlength=3)
            np.testing.assert_array_equal(attrs["label_counts"], counts)
            assert record["label_counts"] == counts.tolist() and counts[1] > 0
            assert attrs["source_label"].endswith(f"{case_id}.nii.gz") or attrs["source_label"].endswith(".nii")
        else:
            assert attrs["source_label"] == "" and record["label_counts"] is None


def test_catalog_format(store):
    data, out = store
    catalog = read_catalog(out)
    assert set(catalog) == {"version", "dataset", "config", "config_fingerprint", "cases"}
    assert catalog["dataset"] == {
        "root": str(data.resolve()),
        "name": "Pancreas",
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
    }
    assert catalog["config"] == config_to_dict(PreprocessConfig())
    assert list(catalog["cases"]) == ["pancreas_001", "pancreas_002", "pancreas_003", "pancreas_004"]
    for case_id, record in catalog["cases"].items():
        assert set(record) == CATALOG_CASE_KEYS
        assert record["shard"] == f"cases/{case_id}.h5" and record["status"] == "done"
        assert record["error"] is None and record["seconds"] >= 0
    splits = [r["split"] for r in catalog["cases"].values()]
    assert splits == ["training", "training", "training", "test"]
    assert [r["has_label"] for r in catalog["cases"].values()] == [True, True, True, False]


@pytest.mark.parametrize("hold_first", [False, True])
def test_shard_bytes_do_not_depend_on_when_handles_close(tmp_path, hold_first):
    """Keeping the first dataset's handle open longer must not reorder chunks in the file.

    With HDF5's default chunk cache it does (the label's chunks land first),
    which made the same augmented shard differ between a Dask worker and the
    main process.
    """
    rng = np.random.default_rng(0)
    image = (rng.random((4, 8, 16, 16)) * 40).astype(np.uint8)
    label = (image > 30).astype(np.uint8)

    def write(path, hold):
        with store_module.create_h5(path) as f:
            first = f.create_dataset("image", data=image, chunks=(1, 8, 16, 16), **store_module.compression())
            if not hold:
                del first
            f.create_dataset("label", data=label, chunks=(1, 8, 16, 16), **store_module.compression())
        return path.read_bytes()

    assert write(tmp_path / "a.h5", False) == write(tmp_path / "b.h5", hold_first)
