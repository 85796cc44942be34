"""The MSD folder scan (dataset.json without case lists) reads nothing outside the dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sources.msd import MsdDatasetError, load_msd_dataset


def make_folder(tmp_path: Path, meta: dict | None = None) -> Path:
    root = tmp_path / "Task07_Pancreas"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta or {"name": "Pancreas", "labels": {"0": "background"}}))
    (tmp_path / "elsewhere").mkdir()
    return root


def put(path: Path, link_to: Path | None = None) -> None:
    """A stand-in scan file, or a symbolic link to ``link_to`` (created if missing)."""
    if link_to is None:
        path.write_bytes(b"nifti")
        return
    if not link_to.exists():
        link_to.write_bytes(b"nifti")
    path.symlink_to(link_to)


@pytest.mark.parametrize(
    "linked", ["imagesTr/pancreas_001.nii.gz", "labelsTr/pancreas_001.nii.gz", "imagesTs/pancreas_900.nii.gz"]
)
def test_scanned_file_resolving_outside_is_refused(tmp_path: Path, linked: str):
    root = make_folder(tmp_path)
    for name in ("imagesTr/pancreas_001.nii.gz", "labelsTr/pancreas_001.nii.gz", "imagesTs/pancreas_900.nii.gz"):
        put(root / name, tmp_path / "elsewhere" / Path(name).name if name == linked else None)
    with pytest.raises(MsdDatasetError, match="resolves outside the dataset folder") as info:
        load_msd_dataset(root)
    message = str(info.value)
    assert "\n" not in message and str(root / linked) in message and str(tmp_path / "elsewhere") in message


def test_scanned_folder_linked_outside_is_refused(tmp_path: Path):
    root = make_folder(tmp_path)
    (root / "imagesTs").rmdir()
    put(tmp_path / "elsewhere" / "pancreas_900.nii.gz")
    (root / "imagesTs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MsdDatasetError, match=r"imagesTs/pancreas_900\.nii\.gz: resolves outside"):
        load_msd_dataset(root)


def test_scanned_links_inside_the_folder_are_accepted(tmp_path: Path):
    root = make_folder(tmp_path)
    (root / "raw").mkdir()
    put(root / "imagesTr/pancreas_001.nii.gz", root / "raw/a.nii.gz")
    put(root / "labelsTr/pancreas_001.nii.gz", root / "raw/b.nii.gz")
    (case,) = load_msd_dataset(root).cases
    assert (case.case_id, case.image, case.label) == ("pancreas_001", root / "raw/a.nii.gz", root / "raw/b.nii.gz")


def test_listed_entry_linked_outside_is_refused_the_same_way(tmp_path: Path):
    root = make_folder(tmp_path, {"training": [{"image": "./imagesTr/p.nii.gz", "label": "./labelsTr/p.nii.gz"}]})
    put(root / "imagesTr/p.nii.gz", tmp_path / "elsewhere/p.nii.gz")
    put(root / "labelsTr/p.nii.gz")
    with pytest.raises(MsdDatasetError, match="resolves outside the dataset folder"):
        load_msd_dataset(root)
