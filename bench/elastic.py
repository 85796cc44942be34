"""Benchmark of the index's elastic deformation: elasticdeform's options on one patch.

One 128x128x64 (x, y, z) training patch around the pancreas of a full-size synthetic case
(``synth`` case 1, preprocessed in memory), deformed with ``elasticdeform.deform_grid``
as ``dataset.index.augment.apply`` calls it (float32 image and uint8 label together, the
label always order 0), for each setting:

* the image's interpolation order (0, 1, 3) and ``prefilter`` (only matters for order > 1),
* ``crop``: read ``--margin`` extra voxels of context per side and compute only the
  output region (what ``elastic.margin_voxels`` does),
* the control-point grid (2-5 per axis) at the same sigma.

For each it prints the milliseconds per patch (median of ``--repeats``, one core), and how
strong the deformation is, measured on the displacement itself (the same displacement
applied, order 1, to images of each voxel's own coordinates; voxels whose sample point
falls outside the patch are left out): RMS and largest displacement in voxels, and the
smallest Jacobian determinant (below 1 compresses; at or below 0 the deformation folds). The same
seeds are used for every setting, so only the
setting changes. ``--picture PATH`` writes one axial slice of the patch before and after
the chosen setting as a PNG (SimpleITK's PNG writer), pancreas and tumour outlined.

    .venv/bin/python bench/elastic.py --repeats 5 --picture docs/elastic.png
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from dataset.index.augment import apply, elasticdeform, make_params  # noqa: E402
from dataset.index.config import ElasticConfig  # noqa: E402

PATCH_ZYX = (64, 128, 128)


def patch_around_pancreas(case_index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stored-grid (levels, label) patch of ``PATCH_ZYX`` centred on the case's gland."""
    from preprocess.config import PreprocessConfig
    from preprocess.pipeline import preprocess_image
    from sources.synthetic.msd import make_case

    image, label = make_case(case_index, seed, "full")
    case = preprocess_image(image, label, PreprocessConfig())
    centre = np.round(np.argwhere(case.label > 0).mean(axis=0)).astype(int)
    start = [int(np.clip(c - n // 2, 0, s - n)) for c, n, s in zip(centre, PATCH_ZYX, case.levels.shape)]
    box = tuple(slice(a, a + n) for a, n in zip(start, PATCH_ZYX))
    return case.levels[box], case.label[box]


def displacement_stats(displacement: np.ndarray, shape: tuple[int, ...]) -> tuple[float, float, float]:
    """(RMS, largest, smallest Jacobian determinant) of the dense displacement, in voxels."""
    grids = list(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij"))
    moved = elasticdeform.deform_grid(grids, displacement, order=1, mode="nearest", prefilter=False)
    # where a sample point falls outside the patch, 'nearest' clamps the coordinate: such
    # voxels (and their neighbours, for the gradient) say nothing about the displacement
    inside = np.ones(shape, dtype=bool)
    for m, n in zip(moved, shape):
        inside &= (m > 0) & (m < n - 1)
    inside = ndimage.binary_erosion(inside, iterations=1)
    field = np.stack([m - g for m, g in zip(moved, grids)])
    magnitude = np.sqrt((field**2).sum(axis=0))[inside]
    jacobian = np.empty((3, 3, *shape), dtype=np.float32)
    for i in range(3):
        for j, d in enumerate(np.gradient(moved[i])):
            jacobian[i, j] = d
    det = np.linalg.det(np.moveaxis(jacobian, (0, 1), (-2, -1))[inside])
    return float(np.sqrt((magnitude**2).mean())), float(magnitude.max()), float(det.min())


def time_setting(levels: np.ndarray, label: np.ndarray, config: ElasticConfig, seeds: list[int]) -> float:
    """Median milliseconds of ``apply`` (plus the margin's read) per patch."""
    m = config.margin_voxels
    padded = np.pad(levels, m, mode="edge") if m else levels
    padded_label = np.pad(label, m, mode="edge") if m else label
    times = []
    for seed in seeds:
        params = make_params(np.random.default_rng(seed), config)
        t = time.perf_counter()
        apply(padded, padded_label, params, config, margin=m)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def settings(base: ElasticConfig, margin: int) -> list[tuple[str, ElasticConfig, bool]]:
    """(name, config, prefilter forced off) for every setting measured; the first is today's default."""
    rows = [("default: order 1, 3 points", base, False)]
    rows += [(f"image order {o}", replace(base, image_order=o), False) for o in (0, 3)]
    rows += [("image order 3, no prefilter", replace(base, image_order=3), True)]
    rows += [(f"crop: {margin}-voxel margin read, output only", replace(base, margin_voxels=margin), False)]
    rows += [(f"{p} control points", replace(base, control_points=p), False) for p in (2, 4, 5)]
    return rows


def write_picture(path: Path, levels: np.ndarray, label: np.ndarray, config: ElasticConfig, seed: int) -> None:
    """Axial middle slice before | after, grey levels with the label's outline in colour."""
    import SimpleITK as sitk

    after_levels, after_label = apply(levels, label, make_params(np.random.default_rng(seed), config), config)
    z = int(np.argmax((label > 0).sum(axis=(1, 2))))

    def rgb(image: np.ndarray, lab: np.ndarray) -> np.ndarray:
        out = np.repeat(image[..., None], 3, axis=2).astype(np.uint8)
        for value, colour in ((1, (0, 220, 0)), (2, (255, 40, 40))):
            mask = lab == value
            inner = mask.copy()
            inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
            out[mask & ~inner] = colour
        return np.kron(out, np.ones((2, 2, 1), dtype=np.uint8))  # 2x for the README

    gap = np.full((2 * levels.shape[1], 8, 3), 255, dtype=np.uint8)
    picture = np.concatenate([rgb(levels[z], label[z]), gap, rgb(after_levels[z], after_label[z])], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=True), str(path))
    print(
        f"wrote {path}: axial slice {z} of the patch, before | after ({config.control_points} control points, "
        f"sigma {config.sigma_voxels}, image order {config.image_order}, seed {seed})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="patches (seeds) per setting")
    p.add_argument("--margin", type=int, default=8, help="context voxels per side for the crop setting")
    p.add_argument("--picture", type=Path, default=None, help="write the before/after PNG here")
    p.add_argument(
        "--control-points", type=int, default=None, help="setting for the picture (default: the index's default)"
    )
    args = p.parse_args(argv)
    levels, label = patch_around_pancreas(1, 0)
    base = ElasticConfig()
    seeds = list(range(args.repeats))
    print(
        f"patch {'x'.join(map(str, PATCH_ZYX))} (z, y, x) around the pancreas of synth case 1; "
        f"sigma {base.sigma_voxels} voxels; {args.repeats} seeds; one thread; {os.cpu_count()} CPUs here"
    )
    head = f"{'setting':<46}{'ms/patch':>10}{'x default':>11}{'RMS vox':>9}{'max vox':>9}{'min det J':>11}"
    print(head + "\n" + "-" * len(head))
    reference = None
    for name, config, no_prefilter in settings(base, args.margin):
        if no_prefilter:
            import dataset.index.augment as augment

            original = augment.elasticdeform.deform_grid
            augment.elasticdeform.deform_grid = lambda *a, _orig=original, **k: _orig(*a, **{**k, "prefilter": False})
        try:
            ms = time_setting(levels, label, config, seeds)
        finally:
            if no_prefilter:
                augment.elasticdeform.deform_grid = original
        reference = reference or ms
        stats = [
            displacement_stats(make_params(np.random.default_rng(s), config).displacement, PATCH_ZYX) for s in seeds
        ]
        rms = statistics.mean(s[0] for s in stats)
        top = max(s[1] for s in stats)
        det = min(s[2] for s in stats)
        print(f"{name:<46}{ms:>10.0f}{ms / reference:>11.2f}{rms:>9.2f}{top:>9.2f}{det:>11.2f}", flush=True)
    if args.picture:
        chosen = replace(base, control_points=args.control_points or base.control_points)
        write_picture(args.picture, levels, label, chosen, seeds[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
