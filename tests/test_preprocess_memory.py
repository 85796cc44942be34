"""Peak memory of one case, at small scale (issue 10's fix for the 751-slice scan).

ITK's NIfTI reader holds a whole image twice, and the scan-grid images used to stay
alive through the whole case; the 512x512x751 float32 case peaked at 1712 MiB. These
tests measure the same effects on a 256x256x200 float32 scan (52 MB) in a fresh
subprocess, from the kernel's peak-RSS counter (``VmHWM`` after ``/proc/self/clear_refs``,
after a warm-up on a small scan so the library's code pages are already mapped: without
it the same code peaked 13-15 MB higher in a freshly installed copy of the environment), and check
each bound against the old
behaviour, so a bound that cannot fail is caught.
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
import gc, json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
import SimpleITK as sitk
from preprocess import io, pipeline
from preprocess.config import PreprocessConfig

def kib(field):
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

def run(mode, image, label):
    config = PreprocessConfig()
    if mode == "read_whole":
        return sitk.ReadImage(image, sitk.sitkFloat32)
    if mode == "read_slabs":
        return io.read_file(image, sitk.sitkFloat32)
    if mode == "case":
        return pipeline.preprocess_file(image, label, config)
    if mode == "case_held":  # the old way: whole reads, both scan-grid images alive to the end
        ct, lab = sitk.ReadImage(image, sitk.sitkFloat32), sitk.ReadImage(label)
        return pipeline.preprocess_image(ct, lab, config)

mode, image, label, small_image, small_label = sys.argv[1:6]
# warm-up on a small scan through the same code (slabs included): the library pages it
# maps count in RSS too, and how many a first run maps depends on the page cache
io.STREAM_SLAB_VOXELS = 1 << 12
run(mode, small_image, small_label)
io.STREAM_SLAB_VOXELS = 1 << 20
gc.collect()
Path("/proc/self/clear_refs").write_text("5")
base = kib("VmRSS")
kept = run(mode, image, label)
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
def scan(tmp_path_factory) -> tuple[Path, ...]:
    """A float32 .nii.gz at 0.5 mm (resampled to 1 mm it is 8x smaller), its uint8 label,
    and a small pair for the warm-up."""
    folder = tmp_path_factory.mktemp("memory")
    z, y, x = np.ogrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    body = ((y - 128) ** 2 + (x - 128) ** 2 < 110**2) & (z >= 0)
    hu = np.where(body, 40.0 + (z % 7) - (x % 5), -1000.0).astype(np.float32)
    label = (((y - 120) ** 2 + (x - 140) ** 2 < 20**2) & (z > 50) & (z < 150)).astype(np.uint8)
    paths = folder / "ct.nii.gz", folder / "label.nii.gz", folder / "small_ct.nii.gz", folder / "small_label.nii.gz"
    small = (slice(0, 40), slice(0, 256, 4), slice(0, 256, 4))  # for the warm-up
    for array, path in zip((hu, label, hu[small], label[small]), paths):
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing((0.5, 0.5, 0.5))
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        sitk.WriteImage(image, str(path), True, 1)
    return paths


def peak_mb(mode: str, scan: tuple[Path, ...]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE.format(root=str(ROOT)), mode, *map(str, scan)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def test_a_large_nifti_read_in_slabs_equals_one_read(scan, tmp_path):
    for path, pixel_type in ((scan[0], sitk.sitkFloat32), (scan[1], sitk.sitkUnknown)):  # the large pair
        whole = sitk.ReadImage(str(path), pixel_type)
        slabs = read_file(str(path), pixel_type, slab_voxels=256 * 256 * 7)  # 200 = 28 slabs of 7 + 4
        assert slabs.GetPixelID() == whole.GetPixelID()
        assert (slabs.GetSize(), slabs.GetSpacing(), slabs.GetOrigin(), slabs.GetDirection()) == (
            whole.GetSize(),
            whole.GetSpacing(),
            whole.GetOrigin(),
            whole.GetDirection(),
        )
        assert np.array_equal(sitk.GetArrayViewFromImage(slabs), sitk.GetArrayViewFromImage(whole))


def test_a_scaled_int16_nifti_read_in_slabs_keeps_its_scaling(tmp_path):
    from sources.synthetic.nifti import write_nifti

    stored = (np.arange(40 * 30 * 20) % 3000).reshape(40, 30, 20).astype(np.int16)
    path = tmp_path / "scaled.nii.gz"
    write_nifti(path, sitk.GetImageFromArray(stored), slope=0.5, inter=-1024.0)
    slabs = read_file(str(path), sitk.sitkFloat32, slab_voxels=30 * 20 * 3)
    expected = stored.astype(np.float32) * 0.5 - 1024.0
    assert np.array_equal(sitk.GetArrayViewFromImage(slabs), expected)
    assert np.array_equal(
        sitk.GetArrayViewFromImage(slabs), sitk.GetArrayViewFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))
    )
    # read as stored (how labels are read): the same pixel type and values as one read
    as_stored = read_file(str(path), sitk.sitkUnknown, slab_voxels=30 * 20 * 3)
    whole = sitk.ReadImage(str(path))
    assert as_stored.GetPixelID() == whole.GetPixelID()
    assert np.array_equal(sitk.GetArrayViewFromImage(as_stored), sitk.GetArrayViewFromImage(whole))


def test_reading_in_slabs_holds_the_image_once(scan):
    whole, slabs = peak_mb("read_whole", scan), peak_mb("read_slabs", scan)
    assert whole > 1.8 * FLOAT32_MB, whole  # ITK's two copies (2.0x measured): what the bound below rules out
    assert slabs < 1.4 * FLOAT32_MB, (slabs, whole)  # measured 1.16x


def test_a_case_peaks_near_its_float32_scan_not_twice_it(scan):
    """Read in slabs, label freed once resampled, scan freed before the crop: 1.32x the
    float32 scan here (image 1 + uint8 label 0.25 + a slab); the old way peaked at 2.0x."""
    held, case = peak_mb("case_held", scan), peak_mb("case", scan)
    assert held > 1.8 * FLOAT32_MB, held
    assert case < 1.6 * FLOAT32_MB, (case, held)
