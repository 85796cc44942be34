"""Make the pictures the README and docs show: ``make docs-pictures``.

    python docs/make_pictures.py docs/pictures

Writes ``case-sheet.png`` and ``report.png`` (a headless-Chromium screenshot of the report
page) from ``pancreas evaluate`` on synthetic cases (``pancreas synth --size small``) whose
"predictions" are their own truth, changed by hand so the pictures show each kind of
result: one case exact, one with its tumour called gland (a missed tumour), one shifted by
3 voxels, one eroded by a voxel. No model is involved: the pictures show what evaluate
draws and reports, not how well a model does (the demo's own report is
``demo-output/report.html`` after ``make demo``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import screenshot  # the tests' Chromium helper: the same flags

from pancreas.cli import main as pancreas


def _changed(labels: np.ndarray, kind: int) -> np.ndarray:
    if kind == 1:
        return np.where(labels == 2, 1, labels).astype(np.uint8)  # tumour called gland
    if kind == 2:
        return np.roll(labels, 3, axis=2)  # shifted 3 voxels
    if kind == 3:
        return np.where(ndimage.binary_erosion(labels > 0), labels, 0).astype(np.uint8)  # one voxel thinner
    return labels


def make(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        args = ["--out", str(work / "raw"), "--cases", "4", "--test", "1", "--size", "small"]
        assert pancreas(["synth", *args, "--tumours", "task07", "--no-progress", "-q"]) == 0
        (work / "pred").mkdir()
        for kind, path in enumerate(sorted((work / "raw" / "labelsTr").glob("pancreas_*.nii.gz"))):
            truth = sitk.ReadImage(str(path))
            changed = sitk.GetImageFromArray(_changed(sitk.GetArrayFromImage(truth), kind))
            changed.CopyInformation(truth)
            sitk.WriteImage(changed, str(work / "pred" / path.name))
        raw = work / "raw"
        argv = ["evaluate", "--pred", str(work / "pred"), "--truth", str(raw / "labelsTr")]
        argv += ["--images", str(raw / "imagesTr"), "--out", str(work / "eval" / "report.json"), "--no-progress"]
        pancreas([*argv, "-q"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "eval" / "pictures" / "pancreas_002.png", out / "case-sheet.png")  # the missed tumour
        (work / "shots").mkdir()
        shot = screenshot(work / "eval" / "report.html", work / "shots" / "report.png", window=(1280, 1500))
        shutil.copyfile(shot, out / "report.png")
    print(f"wrote {out}/case-sheet.png and {out}/report.png")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    make(Path(sys.argv[1]).resolve())
