"""What ``roi: auto`` would cost on a store's cases if the first pass found exactly the true gland.

No model runs: for each shard of ``--store`` it counts the whole grid's windows (``roi: whole``), the
first pass's wide windows (``prediction.roi.first_pass_window``) and the full pass's windows for the
boxes of the true label (``roi_boxes`` with ``--margin-mm``), and turns them into seconds with a
measured time per window (``--seconds-per-window``, default: ``bench/gpu.py`` on the 2-core AMD EPYC,
float32, batch 1, 2026-12-03) and voxels per second for the first pass. The seconds are ESTIMATES
of the model's share of a case (preprocessing, stitching and export add about 5 s at full size):
they stand in for ``bench/predict.py --model`` until a trained full-size fixture exists.

    .venv/bin/python bench/roi_windows.py --store ~/.cache/pancreas-seg/bench-fixture/store
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECONDS_PER_WINDOW = 3.48  # bench/gpu.py --skip train, float32, batch 1, 64x256x256, quiet 2-core AMD EPYC
VOXELS_PER_SECOND = 1.21e6  # the same run


def main() -> int:
    import h5py
    import hdf5plugin  # noqa: F401
    import numpy as np

    from prediction.roi import first_pass_window, roi_boxes, roi_windows
    from prediction.sliding import window_grid

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--window", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--depth", type=int, default=4, help="model depth (first-pass windows: multiples of 2**depth)")
    parser.add_argument("--margin-mm", type=float, default=30.0)
    parser.add_argument("--passes", type=int, default=4, help="mirror passes per window (4: y and x, the default)")
    parser.add_argument("--seconds-per-window", type=float, default=SECONDS_PER_WINDOW)
    args = parser.parse_args()
    window = tuple(args.window)
    head = f"{'case':<16}{'stored z,y,x':>16}{'whole':>7}{'first':>7}{'kept':>6}{'whole s':>9}{'roi s':>8}{'x':>6}"
    print(head + "\n" + "-" * len(head))
    totals = [0.0, 0.0]
    for path in sorted((args.store / "cases").glob("*.h5")):
        with h5py.File(path, "r") as shard:
            if "label" not in shard:
                continue
            label = shard["label"][...]
            spacing = tuple(float(v) for v in np.asarray(shard.attrs["spacing"])[::-1])
        shape = tuple(max(s, w) for s, w in zip(label.shape, window))
        whole = window_grid(shape, window, 0.5)
        first_window = first_pass_window(shape, window, 2**args.depth)
        first = window_grid(tuple(max(s, w) for s, w in zip(shape, first_window)), first_window, 0.0)
        boxes = roi_boxes(label > 0, spacing, args.margin_mm)
        kept = roi_windows(boxes, shape, window, 0.5) if boxes else whole
        whole_s = len(whole) * args.passes * args.seconds_per_window
        roi_s = (
            len(first) * math.prod(first_window) / VOXELS_PER_SECOND + len(kept) * args.passes * args.seconds_per_window
        )
        totals[0] += whole_s
        totals[1] += roi_s
        shown = "x".join(map(str, label.shape))
        print(
            f"{path.stem:<16}{shown:>16}{len(whole):>7}{len(first):>7}{len(kept):>6}"
            f"{whole_s:>9.0f}{roi_s:>8.0f}{whole_s / roi_s:>6.1f}"
        )
    print(
        f"ESTIMATES of model seconds per case ({args.passes} passes per window, {args.seconds_per_window} s per "
        f"window, margin {args.margin_mm} mm, the first pass finding exactly the true gland): "
        f"whole {totals[0]:.0f} s, roi {totals[1]:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
