"""Benchmark of ``pancreas index``: classification per case and patch read rates.

Writes N synthetic full-size cases (labels with a pancreas-like ellipsoid and a
tumour, 250x410x410 by default: a 512x512x100 CT at 0.8x0.8x2.5 mm resampled to 1 mm),
indexes them with the default patch sizes, and prints

* seconds per case to read the label and to classify its grid (goal <= 0.25 s),
* random training-row reads per second on one core, from case shards and from the
  augmented shards (goal >= 500 patches/s per core).

    .venv/bin/python bench/index.py --cases 4
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from dataset.contract.catalog import read_catalog
from dataset.contract.manifest import manifest_path, read_manifest
from dataset.contract.reader import PatchReader
from dataset.index.build import build_index, grid_rows, read_label
from dataset.index.config import IndexConfig
from pancreas.testing.store import blob_label, make_store


def synthetic_labels(n: int, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Pancreas-like blobs (elongated along x) at case-dependent places, with a tumour."""
    z, y, x = shape
    out = {}
    for i in range(n):
        centre = (z // 2 + 7 * (i % 3) - 7, y // 2 + 5 * i % 30, x // 2 - 10 * (i % 4))
        out[f"bench_{i:03d}"] = blob_label(shape, centre, (18, 14, 60), tumour_radius=8)
    return out


def read_rate(reader: PatchReader, rows: list[dict], seconds: float) -> tuple[float, int]:
    """Patches per second reading random rows for about ``seconds``."""
    order = rows[:]
    random.Random(0).shuffle(order)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        reader.read_levels(order[n % len(order)])
        n += 1
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(250, 410, 410), metavar=("Z", "Y", "X"))
    p.add_argument("--workers", type=int, default=0, help="Dask workers for augmentation (0: in process)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per read-rate measurement")
    p.add_argument("--out", default=None, help="store folder (default: a temporary folder)")
    p.add_argument(
        "--store",
        default=None,
        help="measure an existing preprocessed store instead (e.g. `pancreas synth --size full` "
        "then `pancreas preprocess`): realistic images instead of random levels",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp = None if (args.out or args.store) else tempfile.TemporaryDirectory()
    store = Path(args.store or args.out or tmp.name)

    if not args.store:
        t = time.perf_counter()
        make_store(store, synthetic_labels(args.cases, tuple(args.shape)))
        print(f"wrote {args.cases} synthetic cases of {tuple(args.shape)} (z, y, x) in {time.perf_counter() - t:.1f} s")

    config = IndexConfig(
        folds=1, val_fraction=0.25 if args.cases >= 4 else 0.5
    )  # one split: the read rates need one manifest
    catalog = read_catalog(store)
    read_s, classify_s = [], []
    for case_id in sorted(catalog.cases):
        t = time.perf_counter()
        label = read_label(store, case_id, catalog.cases[case_id])
        t1 = time.perf_counter()
        grid_rows(case_id, label, config.train_patch_zyx, config)
        read_s.append(t1 - t)
        classify_s.append(time.perf_counter() - t1)
    print(
        f"label read: {np.median(read_s):.3f} s/case; classification (128x128x64 grid): "
        f"{np.median(classify_s):.3f} s/case (median of {len(classify_s)}; goal <= 0.25 s)"
    )

    t = time.perf_counter()
    s = build_index(store, config, workers=args.workers, progress=False)
    fold = s.per_fold[0]
    print(
        f"build_index: {time.perf_counter() - t:.1f} s ({fold.train_entries} train entries, "
        f"{fold.train_augmented_entries} augmented, {s.augmented_built} shards built); "
        f"classification inside: {s.classify_seconds_per_case:.3f} s/case"
    )

    rows = read_manifest(manifest_path(store, "train", 0))
    with PatchReader(store) as reader:
        stored = [r for r in rows if not r["variant"]]
        for name, subset in (
            ("the whole manifest (its mix)", rows),
            ("case shards", stored),
            ("case shards, foreground rows", [r for r in stored if r["foreground"]]),
            ("case shards, background rows", [r for r in stored if not r["foreground"]]),
            ("augmented shards", [r for r in rows if r["variant"]]),
        ):
            if subset:
                rate, n = read_rate(reader, subset, args.seconds)
                print(
                    f"reader, random training rows from {name}: {rate:.0f} patches/s on one core "
                    f"({n} reads; goal >= 500)"
                )
        if stored:
            codec_vs_copy(store, stored[0], args.seconds)
    if tmp:
        tmp.cleanup()
    return 0


def codec_vs_copy(store: Path, row: dict, seconds: float) -> None:
    """ms per image-patch read from a case shard and from an uncompressed copy of it:
    tells whether the codec or HDF5's hyperslab copy limits the reader."""
    import h5py

    from dataset.contract.reader import read_box, row_box
    from dataset.contract.store import shard_path

    _, size = row_box(row)
    source = shard_path(store, row["case_id"])
    scratch = tempfile.TemporaryDirectory()  # never inside the store
    plain = Path(scratch.name) / "uncompressed.h5"
    with h5py.File(source, "r") as f, h5py.File(plain, "w") as g:
        g.create_dataset("image", data=f["image"][...], chunks=f["image"].chunks)
    rng = np.random.default_rng(0)
    timings = {}
    for name, path in (("Blosc-LZ4 shard", source), ("uncompressed copy", plain)):
        with h5py.File(path, "r") as f:
            ds, n, t = f["image"], 0, time.perf_counter()
            limits = [max(1, e - d + 1) for e, d in zip(ds.shape, size)]
            while time.perf_counter() - t < seconds / 2:
                read_box(ds, tuple(int(rng.integers(0, m)) for m in limits), size)
                n += 1
            timings[name] = (time.perf_counter() - t) / n * 1000
    scratch.cleanup()
    print("image patch read, 32^3 chunks: " + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))


if __name__ == "__main__":
    sys.exit(main())
