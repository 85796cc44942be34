"""Tests of the synthetic MSD-format dataset generator (sources.synthetic: msd, params, phantom, marker)."""

from __future__ import annotations

import gzip
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from lockholder import lock_held_elsewhere

from dataset.common.locks import LOCK_NAME, LockedError
from pancreas.cli import main
from sources.synthetic.marker import SYNTH_MARKER
from sources.synthetic.msd import make_case, make_dataset, render_case
from sources.synthetic.params import ORIENTATIONS, THIN_CASE_INDEX, draw_case_params, grid_coordinates, reoriented
from sources.synthetic.phantom import Anatomy, render_phantom

NIFTI_DTYPE = {4: "int16", 8: "int32", 16: "float32"}


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    """6 training cases (index 5 is stored uncompressed) + default 1 test case."""
    return make_dataset(tmp_path_factory.mktemp("synth") / "Task07", 6, seed=0, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    """Every file synth wrote (the lock file records who holds it and since when: not ours to compare)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_NAME
    }


def _header(path: Path) -> bytes:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read(348)


def _read(ds: Path, rel: str) -> tuple[sitk.Image, np.ndarray]:
    img = sitk.ReadImage(str(ds / rel))
    return img, sitk.GetArrayFromImage(img)


def test_layout_and_dataset_json(ds):
    meta = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    for key in ("name", "description", "modality", "labels", "numTraining", "numTest", "training", "test"):
        assert key in meta
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "pancreas", "2": "cancer"}
    assert (meta["numTraining"], meta["numTest"]) == (6, 1) == (len(meta["training"]), len(meta["test"]))
    assert meta["training"][0] == {"image": "./imagesTr/pancreas_001.nii.gz", "label": "./labelsTr/pancreas_001.nii.gz"}
    assert meta["training"][5]["image"] == "./imagesTr/pancreas_006.nii"  # the uncompressed one
    assert meta["test"] == ["./imagesTs/pancreas_007.nii.gz"]
    for entry in meta["training"]:
        assert (ds / entry["image"]).is_file() and (ds / entry["label"]).is_file()
    assert (ds / meta["test"][0]).is_file()
    assert (ds / "labelsTs" / "pancreas_007.nii.gz").is_file()  # our addition, unlisted
    for folder in ("imagesTr", "labelsTr"):
        junk = ds / folder / "._pancreas_001.nii.gz"
        assert junk.is_file() and junk.stat().st_size < 100
        assert junk.read_bytes()[:4] == b"\x00\x05\x16\x07"
    assert not list(ds.rglob("*.tmp"))


def test_deterministic_and_seed_dependent(tmp_path):
    a = _files(make_dataset(tmp_path / "a", 3, seed=7, n_test=1, progress=False))
    b = _files(make_dataset(tmp_path / "b", 3, seed=7, n_test=1, progress=False))
    c = _files(make_dataset(tmp_path / "c", 3, seed=8, n_test=1, progress=False))
    d = _files(make_dataset(tmp_path / "d", 2, seed=7, n_test=0, progress=False))
    assert a == b
    assert a["imagesTr/pancreas_001.nii.gz"] != c["imagesTr/pancreas_001.nii.gz"]
    # fewer cases: the earlier ones are byte-identical (per-case generators)
    for name in ("imagesTr/pancreas_001.nii.gz", "labelsTr/pancreas_002.nii.gz"):
        assert d[name] == a[name]


def test_labels_on_image_grid(ds):
    meta = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    pairs = [(e["image"], e["label"]) for e in meta["training"]]
    pairs += [(t, t.replace("imagesTs", "labelsTs")) for t in meta["test"]]
    for image_rel, label_rel in pairs:
        img = sitk.ReadImage(str(ds / image_rel))
        lab = sitk.ReadImage(str(ds / label_rel))
        assert lab.GetPixelID() == sitk.sitkUInt8, label_rel
        assert lab.GetSize() == img.GetSize()
        np.testing.assert_allclose(lab.GetSpacing(), img.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(lab.GetOrigin(), img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(lab.GetDirection(), img.GetDirection(), atol=1e-6)
        values = set(np.unique(sitk.GetArrayFromImage(lab)).tolist())
        assert values <= {0, 1, 2} and 1 in values, (label_rel, values)


def test_variety_in_four_cases(ds):
    directions, dtypes = set(), set()
    for i in range(4):
        rel = f"imagesTr/pancreas_{i + 1:03d}.nii.gz"
        img = sitk.ReadImage(str(ds / rel))
        directions.add(tuple(np.round(img.GetDirection(), 6)))
        header = _header(ds / rel)
        code = struct.unpack("<h", header[70:72])[0]
        slope, inter = struct.unpack("<ff", header[112:120])
        scaled = code == 4 and (slope, inter) not in ((1.0, 0.0), (0.0, 0.0))
        dtypes.add("int16_scaled" if scaled else NIFTI_DTYPE[code])
    assert len(directions) >= 3
    assert tuple(float(v) for v in ORIENTATIONS["LPS"]) in directions
    assert tuple(float(v) for v in ORIENTATIONS["RAS"]) in directions
    assert {"int16_scaled", "float32"} <= dtypes
    thin = sitk.ReadImage(str(ds / f"imagesTr/pancreas_{THIN_CASE_INDEX + 1:03d}.nii.gz"))
    assert thin.GetSize()[2] == 20 and thin.GetSpacing()[2] == pytest.approx(2.0)


def test_scaled_int16_reads_back_as_hu(ds):
    params = draw_case_params(1, seed=0)
    assert params.dtype == "int16_scaled" and params.scl_slope != 1.0
    img, hu = _read(ds, "imagesTr/pancreas_002.nii.gz")
    _, label = _read(ds, "labelsTr/pancreas_002.nii.gz")
    assert img.GetPixelID() == sitk.sitkFloat32  # SimpleITK applied the scaling
    reference, _ = make_case(1, seed=0)
    # stored values are HU rounded to the slope's step
    np.testing.assert_allclose(hu, sitk.GetArrayFromImage(reference), atol=params.scl_slope / 2 + 1e-3)
    corner = hu[:, :4, :4]  # outside the elliptical body
    assert abs(float(corner.mean()) + 1000.0) < 5.0
    assert 100.0 - 15 < float(hu[label == 1].mean()) < 130.0 + 5


def test_anatomy_intensities():
    for index in (1, 2, 4):
        params = draw_case_params(index, seed=0)
        hu, label = render_case(params)
        anat = params.anatomy
        pancreas = float(hu[label == 1].mean())
        assert anat.pancreas_hu - 12 < pancreas < anat.pancreas_hu + 3, (index, pancreas)
        if anat.has_tumour:
            assert (label == 2).sum() > 5
            assert float(hu[label == 2].mean()) < pancreas - 30
        air = hu[:, :3, :3]
        assert abs(float(air.std()) - params.noise_sd_hu) < 0.3 * params.noise_sd_hu


def test_grid_coordinates_match_simpleitk():
    for index in range(4):  # LPS, RAS, LPI, PLS
        params = draw_case_params(index, seed=3)
        x, y, z = (np.broadcast_to(c, params.grid_size[::-1]) for c in grid_coordinates(params))
        img = sitk.Image(list(params.grid_size), sitk.sitkUInt8)
        img.SetSpacing(params.spacing_mm)
        img.SetOrigin(params.origin_mm)
        img.SetDirection(params.direction)
        for ijk in [(0, 0, 0), (5, 7, 2), tuple(s - 1 for s in params.grid_size)]:
            expected = img.TransformIndexToPhysicalPoint(ijk)
            got = (x[ijk[::-1]], y[ijk[::-1]], z[ijk[::-1]])
            np.testing.assert_allclose(got, expected, atol=1e-6)


def _physical_centroid(image: sitk.Image, label: np.ndarray, value: int) -> np.ndarray:
    zyx = np.argwhere(label == value).mean(axis=0)
    return np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1])))


def test_same_physical_anatomy_in_every_orientation(tmp_path):
    from sources.synthetic.nifti import to_image as _to_image
    from sources.synthetic.nifti import write_nifti

    base = draw_case_params(4, seed=0)  # stored LPS
    centroids = []
    for orientation in ("LPS", "RAS", "LPI", "PLS"):
        params = reoriented(base, orientation)
        _, label = render_case(params)
        path = tmp_path / f"{orientation}.nii.gz"
        write_nifti(path, _to_image(label, params))
        back = sitk.ReadImage(str(path))  # through the NIfTI writer and reader
        np.testing.assert_allclose(back.GetDirection(), ORIENTATIONS[orientation], atol=1e-6)
        centroids.append(_physical_centroid(back, sitk.GetArrayFromImage(back), 1))
    for c in centroids[1:]:
        np.testing.assert_allclose(c, centroids[0], atol=0.3)
    # and the pancreas is where the anatomy puts it: left of the head, anterior to the spine
    anat = base.anatomy
    rel = centroids[0] - np.array(anat.centre_mm)
    assert -20 * anat.inplane_scale < rel[1] < 40 * anat.inplane_scale + 7


def test_phantom_layout_on_reference_slice():
    """Hand-placed probes on the reference adult (1 mm in-plane, z = -30..30 mm)."""
    anat = Anatomy(has_tumour=False)
    x = np.arange(-200.0, 201.0).reshape(1, 1, -1)
    y = np.arange(-200.0, 201.0).reshape(1, -1, 1)
    z = np.arange(-30.0, 31.0, 2.0).reshape(-1, 1, 1)  # z = 0 is index 15
    hu, label = render_phantom(x, y, z, anat)
    at = lambda px, py: float(hu[15, int(py) + 200, int(px) + 200])  # noqa: E731
    assert at(-199, -199) == -1000.0  # air outside the body
    assert at(0, -130) == anat.fat_hu  # anterior subcutaneous fat
    assert at(0, 48) == anat.bone_hu - 100  # vertebral body, posterior midline
    assert at(14, 26) == anat.aorta_hu  # aorta, left-anterior of the spine
    assert at(-100, -10) == anat.liver_hu  # liver on the patient's right
    assert at(68, 55) == anat.kidney_medulla_hu  # left kidney
    xs = np.nonzero(label.any(axis=(0, 1)))[0] - 200
    assert xs.min() < -50 and xs.max() > 80  # head right, tail left
    # the body crosses anterior to the aorta
    ys = np.nonzero(label[15, :, 214])[0] - 200
    assert ys.size >= 12 and ys.max() < 26 - 11


def test_full_case_is_realistic():
    params = draw_case_params(0, seed=0, size="full")
    assert params.grid_size[:2] == (512, 512) and 90 <= params.grid_size[2] <= 110
    hu, label = render_case(params)
    assert 0.0005 < (label > 0).mean() < 0.01
    assert (hu > -900).mean() > 0.45  # the body fills most of the field of view


def test_cli(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "ds"), "--cases", "2", "--test", "0", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 training + 0 test cases" in out and "pancreas_002.nii.gz" in out
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text(encoding="utf-8"))
    assert meta["numTraining"] == 2 and meta["test"] == []
    assert main(["synth", "--out", str(tmp_path / "bad"), "--cases", "0"]) == 2


def test_rerun_leaves_identical_files_untouched(tmp_path):
    """A rerun keeps every file's mtime, so downstream fingerprints (preprocess) stay valid."""
    out = make_dataset(tmp_path / "d", 2, seed=0, n_test=1, progress=False)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME)
    before = {p: p.stat().st_mtime_ns for p in files}
    time.sleep(0.01)
    make_dataset(out, 2, seed=0, n_test=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert not list(out.rglob("*.tmp"))


# ----------------------------------------------------------------------------- output-folder safety


def _real_dataset(root: Path) -> dict[str, bytes]:
    """A stand-in for a real MSD download: its own dataset.json and a CT named like case 1."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text('{"name": "Pancreas", "numTraining": 281}')
    (root / "imagesTr" / "pancreas_001.nii.gz").write_bytes(b"a real CT")
    return _files(root)


def test_synth_refuses_to_replace_a_real_dataset(tmp_path, capsys):
    real = tmp_path / "Task07_Pancreas"
    before = _real_dataset(real)
    assert main(["synth", "--out", str(real), "--cases", "2", "--test", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {real}" in err and "dataset.json" in err, err
    assert _files(real) == before  # nothing replaced, nothing added (not even a lock file)
    assert not (real / LOCK_NAME).exists()


def test_synth_refuses_a_single_foreign_file_but_not_unrelated_ones(tmp_path):
    out = tmp_path / "ds"
    (out / "labelsTs").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "labelsTs" / "pancreas_003.nii.gz").write_bytes(b"hand-made truth")
    with pytest.raises(ValueError, match=r"labelsTs/pancreas_003.nii.gz, not written by `pancreas synth`"):
        make_dataset(out, 2, seed=0, n_test=1, progress=False)
    assert (out / "labelsTs" / "pancreas_003.nii.gz").read_bytes() == b"hand-made truth"
    (out / "labelsTs" / "pancreas_003.nii.gz").unlink()
    make_dataset(out, 2, seed=0, n_test=1, progress=False)  # only unrelated files left: fine
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_marker_lists_what_synth_wrote_and_reruns_may_change_the_cases(tmp_path):
    out = make_dataset(tmp_path / "d", 2, seed=0, n_test=1, progress=False)
    marker = json.loads((out / SYNTH_MARKER).read_text(encoding="utf-8"))
    assert marker["written_by"] == "pancreas synth"
    assert set(marker["files"]) == set(_files(out)) - {SYNTH_MARKER}
    # case 3 was a test case; now it is a training case, and a 4th is the test case
    make_dataset(out, 3, seed=0, n_test=1, progress=False)
    make_dataset(out, 2, seed=0, n_test=1, progress=False)  # back: every file is still listed
    listed = set(json.loads((out / SYNTH_MARKER).read_text(encoding="utf-8"))["files"])
    assert set(_files(out)) - {SYNTH_MARKER} <= listed and "imagesTs/pancreas_004.nii.gz" in listed


def _as_before_the_marker(out: Path) -> Path:
    """What an older `pancreas synth` left (an old `make demo`'s demo-output/data): no marker, no lock file."""
    (out / SYNTH_MARKER).unlink()
    (out / LOCK_NAME).unlink()
    return out


def test_a_synth_folder_from_before_the_marker_is_accepted_and_gets_one(tmp_path, capsys):
    out = _as_before_the_marker(make_dataset(tmp_path / "data", 2, seed=0, n_test=1, progress=False))
    before = _files(out)
    assert main(["synth", "--out", str(out), "--cases", "2", "--test", "1"]) == 0, capsys.readouterr().err
    assert _files(out) == {**before, SYNTH_MARKER: (out / SYNTH_MARKER).read_bytes()}  # same bytes, marker added
    assert set(json.loads((out / SYNTH_MARKER).read_text(encoding="utf-8"))["files"]) == set(before)
    make_dataset(out, 3, seed=0, n_test=1, progress=False)  # the marker now lists them: reruns may change cases


def test_a_synth_folder_from_before_the_marker_with_a_file_its_dataset_json_does_not_name_is_refused(tmp_path):
    """dataset.json names pancreas_003 as a test case only: an imagesTr/pancreas_003.nii.gz
    beside it is somebody else's, though synth with --cases 3 would write that name."""
    out = _as_before_the_marker(make_dataset(tmp_path / "data", 2, seed=0, n_test=1, progress=False))
    (out / "imagesTr" / "pancreas_003.nii.gz").write_bytes(b"somebody's CT")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match=r"holds imagesTr/pancreas_003.nii.gz, not written by `pancreas synth`"):
        make_dataset(out, 3, seed=0, n_test=1, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no marker, no lock file
    assert (out / "imagesTr" / "pancreas_003.nii.gz").read_bytes() == b"somebody's CT"


ODD_TRAINING = [
    {"image": "./imagesTr/patient_7.nii.gz", "label": "./labelsTr/patient_7.nii.gz"},  # not a synth name
    {"image": "./imagesTr/pancreas_009.nii.gz", "label": "./labelsTr/pancreas_010.nii.gz"},  # mismatched
    "./imagesTr/pancreas_009.nii.gz",
]  # not an MSD training entry


@pytest.mark.parametrize(
    "change",
    [
        {"reference": "Memorial Sloan Kettering Cancer Center"},  # the real Task07's
        {"description": "Pancreas and cancer segmentation"},  # the real Task07's
        {"test": "./imagesTs/pancreas_003.nii.gz"},  # not a list
        *({"training+": [odd]} for odd in ODD_TRAINING),
        {"test+": ["./imagesTs/../imagesTr/pancreas_009.nii.gz"]},
    ],
    ids=["reference", "description", "test-not-a-list", "odd-name", "label-not-image", "not-a-mapping", "dot-dot"],
)
def test_a_folder_without_marker_whose_dataset_json_synth_did_not_write_is_refused(tmp_path, change):
    """Every file synth would replace is named, but the dataset.json is not one synth writes."""
    out = _as_before_the_marker(make_dataset(tmp_path / "data", 2, seed=0, n_test=1, progress=False))
    data = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    for key, value in change.items():
        data[key.rstrip("+")] = data[key.rstrip("+")] + value if key.endswith("+") else value
    (out / "dataset.json").write_text(json.dumps(data))
    before = _files(out)
    with pytest.raises(ValueError, match=r"holds dataset.json \(and 8 more\), not written by `pancreas synth`"):
        make_dataset(out, 2, seed=0, n_test=1, progress=False)
    assert _files(out) == before and not (out / SYNTH_MARKER).exists() and not (out / LOCK_NAME).exists()


def test_concurrent_synth_into_the_same_folder_fails_at_once(tmp_path, capsys):
    out = tmp_path / "ds"
    with lock_held_elsewhere(out) as pid:
        with pytest.raises(LockedError, match=f"in use by pid {pid}"):
            make_dataset(out, 1, seed=0, n_test=0, progress=False)
        assert main(["synth", "--out", str(out), "--cases", "1", "--test", "0"]) == 2
        assert f"pancreas synth: error: {out}: in use by pid {pid}" in capsys.readouterr().err
    assert not (out / "dataset.json").exists()


def test_stale_file_cleanup_never_follows_a_marker_entry_outside_the_folder(tmp_path):
    from sources.synthetic.marker import stale_case_files

    out = tmp_path / "data"
    (out / "imagesTr").mkdir(parents=True)
    victim = tmp_path / "victim.nii.gz"
    victim.write_text("not synth's")
    (out / "imagesTr" / "pancreas_009_0000.nii.gz").write_text("synth's own, no longer planned")
    (out / "imagesTr" / "notes.nii.gz").write_text("a user's file")
    listed = {"imagesTr/../../victim.nii.gz", "imagesTr/pancreas_009_0000.nii.gz", "imagesTr/notes.nii.gz"}
    assert stale_case_files(out, set(), listed) == [out / "imagesTr" / "pancreas_009_0000.nii.gz"]
