"""Peak memory of one case, at small scale (issue 10's fix for the 751-slice scan).

ITK's NIfTI reader holds a whole image twice, and the scan-grid images used to stay
alive through the whole case; the 512x512x751 float32 case peaked at 1.71 GB. These
tests measure the same effects on a 256x256x200 float32 scan (52 MB) in a fresh
subprocess, from the kernel's peak-RSS counter (``VmHWM`` after ``/proc/self/clear_refs``),
and check each bound against the old behaviour, so a bound that cannot fail is caught.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from preprocess.io import read_file

ROOT = Path(__file__).resolve().parents[1]
SHAPE_ZYX = (200, 256, 256)
FLOAT32_MB = np.prod(SHAPE_ZYX) * 4 / 2**20

MEASURE = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
import SimpleITK as sitk
from preprocess import io, pipeline
from preprocess.config import PreprocessConfig

def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

mode, image, label = sys.argv[1:4]
io.STREAM_SLAB_VOXELS = 1 << 20
config = PreprocessConfig()
Path("/proc/self/clear_refs").write_text("5")
base = kib("VmRSS")
if mode == "read_whole":
    kept = sitk.ReadImage(image, sitk.sitkFloat32)
elif mode == "read_slabs":
    kept = io.read_file(image, sitk.sitkFloat32)
elif mode == "case":
    kept = pipeline.preprocess_file(image, label, config)
elif mode == "case_held":  # the old way: whole reads, both scan-grid images alive to the end
    ct, lab = sitk.ReadImage(image, sitk.sitkFloat32), sitk.ReadImage(label)
    kept = pipeline.preprocess_image(ct, lab, config)
print(json.dumps({{"peak_mb": (kib("VmHWM") - base) / 1024}}))
"""


def _can_reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs")


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, Path]:
    """A float32 .nii.gz at 0.5 mm (resampled to 1 mm it is 8x smaller) and its uint8 label."""
    folder = tmp_path_factory.mktemp("memory")
    z, y, x = np.ogrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    body = ((y - 128) ** 2 + (x - 128) ** 2 < 110**2) & (z >= 0)
    hu = np.where(body, 40.0 + (z % 7) - (x % 5), -1000.0).astype(np.float32)
    label = (((y - 120) ** 2 + (x - 140) ** 2 < 20**2) & (z > 50) & (z < 150)).astype(np.uint8)
    paths = folder / "ct.nii.gz", folder / "label.nii.gz"
    for array, path in zip((hu, label), paths):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.5, 0.5, 0.5))
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        sitk.WriteImage(image, str(path), True, 1)
    return paths


def peak_mb(mode: str, scan: tuple[Path, Path]) -> float:
    out = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT)), mode, *map(str, scan)],
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def test_a_large_nifti_read_in_slabs_equals_one_read(scan, tmp_path):
    for path, pixel_type in ((scan[0], sitk.sitkFloat32), (scan[1], sitk.sitkUnknown)):
        whole = sitk.ReadImage(str(path), pixel_type)
        slabs = read_file(str(path), pixel_type, slab_voxels=256 * 256 * 7)  # 200 = 28 slabs of 7 + 4
        assert slabs.GetPixelID() == whole.GetPixelID()
        assert (slabs.GetSize(), slabs.GetSpacing(), slabs.GetOrigin(), slabs.GetDirection()) == (
            whole.GetSize(), whole.GetSpacing(), whole.GetOrigin(), whole.GetDirection())
        assert np.array_equal(sitk.GetArrayViewFromImage(slabs), sitk.GetArrayViewFromImage(whole))


def test_a_scaled_int16_nifti_read_in_slabs_keeps_its_scaling(tmp_path):
    from pancreas.synthetic.nifti import write_nifti

    stored = (np.arange(40 * 30 * 20) % 3000).reshape(40, 30, 20).astype(np.int16)
    path = tmp_path / "scaled.nii.gz"
    write_nifti(path, sitk.GetImageFromArray(stored), slope=0.5, inter=-1024.0)
    slabs = read_file(str(path), sitk.sitkFloat32, slab_voxels=30 * 20 * 3)
    expected = stored.astype(np.float32) * 0.5 - 1024.0
    assert np.array_equal(sitk.GetArrayViewFromImage(slabs), expected)
    assert np.array_equal(sitk.GetArrayViewFromImage(slabs),
                          sitk.GetArrayViewFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32)))


def test_reading_in_slabs_holds_the_image_once(scan):
    whole, slabs = peak_mb("read_whole", scan), peak_mb("read_slabs", scan)
    assert whole > 1.8 * FLOAT32_MB, whole  # ITK's two copies: what the bound below rules out
    assert slabs < 1.5 * FLOAT32_MB, (slabs, whole)  # measured 1.31x


def test_a_case_peaks_near_its_float32_scan_not_twice_it(scan):
    """Read in slabs, label freed once resampled, scan freed before the crop: 1.54x the
    float32 scan here (image 1 + uint8 label 0.25 + a slab, plus the allocator's slack);
    the old way peaked at 2.08x."""
    held, case = peak_mb("case_held", scan), peak_mb("case", scan)
    assert held > 1.9 * FLOAT32_MB, held
    assert case < 1.75 * FLOAT32_MB, (case, held)
