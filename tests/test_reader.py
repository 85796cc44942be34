"""PatchReader and the manifest format against numpy slicing of whole volumes."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from dataset.contract.manifest import MANIFEST_COLUMNS, read_manifest, write_manifest
from dataset.contract.reader import PatchReader, box_slices
from dataset.contract.store import StoreError, levels_to_intensity
from pancreas.testing.store import image_for, make_store


def brute_box(volume: np.ndarray, start, size) -> np.ndarray:
    """Pad the whole volume generously, then slice: obviously right, slow."""
    pad = max(size) + max(abs(s) for s in start) + 1
    padded = np.pad(volume, pad)
    sl = tuple(slice(s + pad, s + pad + n) for s, n in zip(start, size))
    return padded[sl]


def row(case_id, start, size, variant=""):
    return {
        "case_id": case_id,
        "z0": start[0],
        "y0": start[1],
        "x0": start[2],
        "dz": size[0],
        "dy": size[1],
        "dx": size[2],
        "variant": variant,
    }


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, size=(7, 20, 13), dtype=np.uint8)
    make_store(tmp_path, {"case_a": label})
    return tmp_path, label, image_for(label, 0)


BOXES = [
    ((0, 0, 0), (4, 8, 8)),  # inside, at the corner
    ((3, 12, 5), (4, 8, 8)),  # inside, at the far end
    ((-2, 0, 0), (8, 8, 8)),  # starts before z
    ((-3, -4, -5), (16, 32, 24)),  # larger than the volume on every axis
    ((5, 17, 10), (4, 8, 8)),  # runs past the end
    ((0, 30, 0), (4, 8, 8)),  # entirely outside
]


@pytest.mark.parametrize(("start", "size"), BOXES)
def test_read_levels_matches_brute_force(store, start, size):
    path, label, image = store
    with PatchReader(path) as reader:
        got_image, got_label = reader.read_levels(row("case_a", start, size))
    assert got_image.dtype == np.uint8 and got_label.dtype == np.uint8
    np.testing.assert_array_equal(got_image, brute_box(image, start, size))
    np.testing.assert_array_equal(got_label, brute_box(label, start, size))


def test_read_is_float_intensity(store):
    path, label, image = store
    reader = PatchReader(path)
    img, lab = reader.read(row("case_a", (-1, 2, 3), (4, 8, 8)))
    assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0
    np.testing.assert_array_equal(img, levels_to_intensity(brute_box(image, (-1, 2, 3), (4, 8, 8))))
    np.testing.assert_array_equal(lab, brute_box(label, (-1, 2, 3), (4, 8, 8)))
    reader.close()


def test_box_slices_hand_computed():
    assert box_slices((-2, 0, 3), (4, 5, 5), (10, 10, 6)) == (
        (slice(0, 2), slice(0, 5), slice(3, 6)),
        (slice(2, 4), slice(0, 5), slice(0, 3)),
    )
    assert box_slices((0, 0, 6), (1, 1, 2), (1, 1, 6)) is None


def test_reader_pickles_without_handles(store):
    path, label, _ = store
    reader = PatchReader(path)
    reader.read_levels(row("case_a", (0, 0, 0), (2, 2, 2)))
    assert reader._files  # a handle is cached
    clone = pickle.loads(pickle.dumps(reader))
    assert not clone._files
    np.testing.assert_array_equal(clone.read_levels(row("case_a", (0, 0, 0), (2, 2, 2)))[1], label[:2, :2, :2])
    reader.close()
    clone.close()


def test_variant_reads_augmented_entry(store):
    path, _, _ = store
    aug = path / "index" / "augmented" / "case_a.h5"
    aug.parent.mkdir(parents=True)
    imgs = np.arange(2 * 4 * 8 * 8, dtype=np.uint8).reshape(2, 4, 8, 8)
    with h5py.File(aug, "w") as f:
        f["image"], f["label"] = imgs, (imgs % 3).astype(np.uint8)
    with PatchReader(path) as reader:
        img, lab = reader.read_levels(row("case_a", (-1, 0, 0), (4, 8, 8), "augmented/case_a.h5:1"))
        np.testing.assert_array_equal(img, imgs[1])
        np.testing.assert_array_equal(lab, imgs[1] % 3)
        with pytest.raises(StoreError, match="no augmented entry 2"):
            reader.read_levels(row("case_a", (0, 0, 0), (4, 8, 8), "augmented/case_a.h5:2"))


def test_missing_shard_is_named(store):
    path, _, _ = store
    with pytest.raises(StoreError, match="nope.h5"):
        PatchReader(path).read_levels(row("nope", (0, 0, 0), (2, 2, 2)))


def test_manifest_round_trip(tmp_path):
    rows = [
        dict(
            row("c1", (-3, 0, 5), (8, 16, 16)),
            n_pancreas=4,
            n_tumour=0,
            foreground=1,
            padded=1,
            seed=123456789012,
            kind="grid",
            copy=0,
            with_replacement=0,
        ),
        dict(
            row("c2", (0, 0, 0), (8, 16, 16), "augmented/c2.h5:0"),
            n_pancreas=0,
            n_tumour=2,
            foreground=True,
            padded=0,
            seed=7,
        ),
    ]
    write_manifest(tmp_path / "m.csv", rows)
    back = read_manifest(tmp_path / "m.csv")
    assert list(back[0]) == list(MANIFEST_COLUMNS)
    assert back[0]["z0"] == -3 and back[0]["seed"] == 123456789012 and back[0]["variant"] == ""
    assert back[1]["variant"] == "augmented/c2.h5:0" and back[1]["foreground"] == 1
    assert back[1]["kind"] == "grid" and back[1]["with_replacement"] == 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_manifest_bad_inputs(tmp_path):
    with pytest.raises(StoreError, match="not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(StoreError, match="missing column"):
        read_manifest(tmp_path / "bad.csv")


def test_background_rows_skip_the_label_read(tmp_path, monkeypatch):
    """Rows whose exact counts are zero get a zero label without touching the label dataset."""
    import dataset.contract.reader as reader_module

    label = np.zeros((8, 16, 16), dtype=np.uint8)
    label[6:, 12:, 12:] = 1  # foreground only in one corner
    make_store(tmp_path, {"case_b": label})
    calls = []
    real = reader_module.read_box
    monkeypatch.setattr(reader_module, "read_box", lambda ds, s, n: calls.append(ds.name) or real(ds, s, n))

    background = {**row("case_b", (0, 0, 0), (4, 8, 8)), "n_pancreas": 0, "n_tumour": 0}
    foreground = {
        **row("case_b", (4, 8, 8), (4, 8, 8)),
        "n_pancreas": int((label[4:, 8:, 8:] == 1).sum()),
        "n_tumour": 0,
    }
    with PatchReader(tmp_path) as reader:
        _, lab_bg = reader.read_levels(background)
        assert calls == ["/image"]
        np.testing.assert_array_equal(lab_bg, brute_box(label, (0, 0, 0), (4, 8, 8)))
        _, lab_fg = reader.read_levels(foreground)
        assert calls[1:] == ["/image", "/label"]
        np.testing.assert_array_equal(lab_fg, brute_box(label, (4, 8, 8), (4, 8, 8)))
        # rows without counts (other callers) always read the label
        _, lab = reader.read_levels(row("case_b", (4, 8, 8), (4, 8, 8)))
        np.testing.assert_array_equal(lab, lab_fg)


def _open_h5_files(folder) -> int:
    """HDF5 files under ``folder`` this process holds open (from /proc/self/fd)."""
    import os

    fds = os.listdir("/proc/self/fd")
    targets = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in fds]
    return sum(t.startswith(str(folder)) and t.endswith(".h5") for t in targets)


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_stream_over_many_cases_keeps_a_bounded_number_of_files_open(tmp_path, monkeypatch):
    """At Task07's scale a shuffled stream touches 564 shards; the reader keeps at most
    MAX_OPEN_FILES open (here 3 of 8), closing the least recently used, with the same bytes."""
    import dataset.contract.reader as reader_module

    rng = np.random.default_rng(5)
    labels = {f"case_{i}": rng.integers(0, 3, size=(5, 9, 7), dtype=np.uint8) for i in range(8)}
    make_store(tmp_path, labels)
    rows = [row(case, (int(rng.integers(-2, 3)), 0, 1), (4, 6, 6)) for case in labels for _ in range(3)]
    rng.shuffle(rows)
    monkeypatch.setattr(reader_module, "MAX_OPEN_FILES", 3)
    bounded, most_open = PatchReader(tmp_path), 0
    for r in rows + rows[::-1]:
        image, label = bounded.read_levels(r)
        most_open = max(most_open, _open_h5_files(tmp_path))
        np.testing.assert_array_equal(label, brute_box(labels[r["case_id"]], row_box_start(r), (4, 6, 6)))
        seed = sorted(labels).index(r["case_id"])  # make_store's seeds: 0, 1, ... in id order
        expected = brute_box(image_for(labels[r["case_id"]], seed), row_box_start(r), (4, 6, 6))
        np.testing.assert_array_equal(image, expected)
    assert most_open == 3 and len(bounded._files) == 3
    clone = pickle.loads(pickle.dumps(bounded))
    assert clone.max_open == 3
    bounded.close()
    assert _open_h5_files(tmp_path) == 0


def row_box_start(r) -> tuple[int, int, int]:
    return r["z0"], r["y0"], r["x0"]
