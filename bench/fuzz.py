"""A fuzzing campaign against the CT reading path of preprocess and predict (``pancreas.testing.fuzz``).

Draws ``--inputs`` mutated files (NIfTI: 1-3 header fields set to hostile values, bytes
overwritten, truncations, gzip damage; DICOM: a small series with hostile tag values) from a
seeded generator, runs each through ``try_read`` and prints how many were tried, read and
refused, and every defect (a crash, a message that is not one line naming the file, a read
slower than ``--slow-s``). Exit status 1 when there is any defect.

    .venv/bin/python bench/fuzz.py --inputs 3000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pancreas.testing.fuzz import (
    DICOM_TAGS,
    DICOM_VALUES,
    FIELDS,
    FLOAT_VALUES,
    INT_VALUES,
    Mutation,
    dicom_series,
    mutate_nifti,
    nifti_bytes,
    try_read,
)

NAMES = sorted(FIELDS)


def random_mutation(rng: np.random.Generator, compressed: bool) -> Mutation:
    kinds = ["field", "field", "field", "bytes", "truncate"] + (["gzip-bytes", "gzip-truncate"] if compressed else [])
    kind = kinds[rng.integers(len(kinds))]
    if kind == "field":
        name = NAMES[rng.integers(len(NAMES))]
        ints = FIELDS[name][1] != "<f"
        pool = INT_VALUES if ints else FLOAT_VALUES
        value = pool[rng.integers(len(pool))] if rng.random() < 0.7 else float(rng.normal(0, 1e3))
        return Mutation("field", field=name, value=float(value))
    if kind in ("bytes", "gzip-bytes"):
        return Mutation(kind, offset=int(rng.integers(0, 3000)), data=rng.bytes(int(rng.integers(1, 9))))
    return Mutation(kind, offset=int(rng.integers(0, 30000)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=2000, help="mutated inputs to try (default 2000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dicom-share", type=float, default=0.1, help="fraction of inputs that are DICOM series")
    parser.add_argument("--slow-s", type=float, default=30.0, help="a read slower than this is a defect")
    parser.add_argument("--verbose", action="store_true", help="print each input before it is read")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    base = {suffix: nifti_bytes(suffix) for suffix in (".nii", ".nii.gz")}
    counts: collections.Counter[str] = collections.Counter()
    defects = []
    slowest: list[tuple[float, str]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.inputs):
            case = Path(tmp) / f"case{i}"
            if rng.random() < args.dicom_share:
                n = int(rng.integers(1, 4))
                tags = {
                    (f"{rng.integers(4)}:" if rng.random() < 0.3 else "") + DICOM_TAGS[rng.integers(len(DICOM_TAGS))]: (
                        DICOM_VALUES[rng.integers(len(DICOM_VALUES))]
                    )
                    for _ in range(n)
                }
                try:
                    path = dicom_series(case, tags)
                except RuntimeError:  # GDCM's writer refuses the value itself
                    counts["not writable"] += 1
                    continue
                what = f"DICOM {tags}"
            else:
                suffix = ".nii.gz" if rng.random() < 0.5 else ".nii"
                mutations = [random_mutation(rng, suffix == ".nii.gz") for _ in range(int(rng.integers(1, 4)))]
                path = case.with_suffix(suffix)
                path.write_bytes(mutate_nifti(base[suffix], suffix == ".nii.gz", mutations))
                what = f"{suffix} {mutations}"
            if args.verbose:
                print(f"  {i}: {what}", flush=True)
            outcome = try_read(path, args.slow_s)
            counts[outcome.kind] += 1
            slowest = sorted([*slowest, (outcome.seconds, what)], reverse=True)[:3]
            if (i + 1) % 500 == 0:
                print(f"  {i + 1} inputs, {time.perf_counter() - start:.0f} s", flush=True)
            if outcome.defect:
                defects.append((what, outcome))
    tried = sum(v for k, v in counts.items() if k != "not writable")
    kinds = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("read", "refused", "not writable"))
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, seed {args.seed}")
    print(
        f"inputs tried {tried} in {time.perf_counter() - start:.0f} s: read {counts['read']}, "
        f"refused {counts['refused']}, defects {len(defects)} "
        f"({kinds or 'none'}); "
        f"DICOM values GDCM would not write: {counts['not writable']}"
    )
    for seconds, what in slowest:
        print(f"slowest: {seconds:.1f} s: {what}")
    for what, outcome in defects[:20]:
        print(f"DEFECT {outcome.kind}: {what}\n  {outcome.detail.strip().splitlines()[-1]}")
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
