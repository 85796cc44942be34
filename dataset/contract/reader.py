"""Read one manifest row's patch from the store: only the patch's slab, never a volume.

Boxes may start before or run past the volume (thin scans, centred patches): the part
inside is read from HDF5 straight into a zero-filled array, so the image is padded with
level 0 (the normalised minimum) and the label with 0 (background). Augmented entries
(``row["variant"]`` non-empty) come from the cached shards under ``STORE/index/``.

HDF5 handles are opened lazily and cached per process, at most ``MAX_OPEN_FILES`` at a
time (least recently used closed first). They are never pickled (``__getstate__`` drops
them) and a forked child reopens its own, because h5py handles are not safe to share
between processes.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter)
import numpy as np

from dataset.contract.manifest import INDEX_DIR, parse_variant
from dataset.contract.store import StoreError, levels_to_intensity, shard_path

Box = tuple[tuple[slice, ...], tuple[slice, ...]]
# Why a bound: a shuffled stream over all of Task07 touches every case shard and every
# augmented shard, 564 files at 282 cases. Kept open they approach the usual 1024 open-file
# limit (a larger dataset, or a second reader in the same process, crosses it and fails
# with "Too many open files"), and each holds HDF5's chunk cache (1 MiB per dataset). An
# open costs about 0.1 ms against about 1 ms for a patch read, so 64 handles cost little.
MAX_OPEN_FILES = 64  # HDF5 files a PatchReader keeps open


def box_slices(
    start_zyx: tuple[int, int, int], size_zyx: tuple[int, int, int], shape_zyx: tuple[int, ...]
) -> Box | None:
    """Source slices (in the volume) and destination slices (in the patch) of a box.

    ``None`` when the box does not overlap the volume at all.
    """
    src, dst = [], []
    for start, size, extent in zip(start_zyx, size_zyx, shape_zyx):
        lo, hi = max(start, 0), min(start + size, extent)
        if hi <= lo:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    return tuple(src), tuple(dst)


def row_box(row: Mapping[str, Any]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return (int(row["z0"]), int(row["y0"]), int(row["x0"])), (int(row["dz"]), int(row["dy"]), int(row["dx"]))


def known_background(row: Mapping[str, Any]) -> bool:
    """Whether the manifest's exact counts say the stored patch holds no foreground.

    HDF5's hyperslab copy, not decompression, dominates a patch read (about 1 ms for a
    128x128x64 uint8 box, compressed or not), so skipping the label read of background
    rows (most of a balanced manifest) nearly doubles their rate. The counts are exact
    (``dataset.index.classify``) and the trainer refuses an index older than its store.
    """
    try:
        return int(row["n_pancreas"]) == 0 and int(row["n_tumour"]) == 0
    except (KeyError, TypeError, ValueError):
        return False


def read_box(dataset: h5py.Dataset, start_zyx, size_zyx) -> np.ndarray:
    """The box of a 3D dataset, zero where it lies outside; reads only the overlap."""
    out = np.zeros(tuple(size_zyx), dtype=dataset.dtype)
    slices = box_slices(tuple(start_zyx), tuple(size_zyx), dataset.shape)
    if slices is not None:
        src, dst = slices
        dataset.read_direct(out, source_sel=src, dest_sel=dst)
    return out


def _close(handle: h5py.File) -> None:
    with contextlib.suppress(Exception):  # closing a handle of a damaged file must not hide the first error
        handle.close()


class PatchReader:
    """Reads manifest rows of one store; cheap to construct, safe to send to workers."""

    def __init__(self, store: str | Path, max_open: int | None = None) -> None:
        self.store = Path(store)
        self.max_open = max(1, max_open or MAX_OPEN_FILES)
        self._files: OrderedDict[Path, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "max_open": self.max_open}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["store"], state.get("max_open"))

    def _file(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._files, self._pid = OrderedDict(), os.getpid()
        handle = self._files.get(path)
        if handle is not None:
            self._files.move_to_end(path)
            return handle
        while len(self._files) >= self.max_open:
            _close(self._files.popitem(last=False)[1])
        try:
            handle = h5py.File(path, "r")
        except (OSError, FileNotFoundError) as err:
            raise StoreError(f"{path}: cannot open shard ({err})") from None
        self._files[path] = handle
        return handle

    def read_levels(self, row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 levels and uint8 label, both (dz, dy, dx), padded where needed."""
        start, size = row_box(row)
        variant = row.get("variant") or ""
        if variant:
            return self._read_variant(variant, size, row["case_id"])
        f = self._file(shard_path(self.store, row["case_id"]))
        try:
            image, label = f["image"], f["label"]
        except KeyError:
            raise StoreError(f"{f.filename}: shard of case {row['case_id']} has no label") from None
        if known_background(row):
            return read_box(image, start, size), np.zeros(size, dtype=label.dtype)
        return read_box(image, start, size), read_box(label, start, size)

    def _read_variant(self, variant: str, size: tuple[int, int, int], case_id: str):
        rel, entry = parse_variant(variant)
        f = self._file(self.store / INDEX_DIR / rel)
        image, label = f["image"], f["label"]
        if entry >= image.shape[0] or image.shape[1:] != size:
            raise StoreError(
                f"{f.filename}: case {case_id} has no augmented entry {entry} of size {size} "
                f"(shard holds {image.shape[0]} of {image.shape[1:]}); rerun `pancreas index`"
            )
        return image[entry], label[entry]

    def read(self, row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Float32 image in [0, 1] and uint8 label."""
        levels, label = self.read_levels(row)
        return levels_to_intensity(levels), label

    def close(self) -> None:
        for handle in self._files.values():
            _close(handle)
        self._files = OrderedDict()

    def __enter__(self) -> PatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            self.close()
