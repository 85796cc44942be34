"""Mutated CT files against the reading path of ``preprocess`` and ``predict``.

``mutate_nifti`` damages a valid NIfTI-1 file (header fields set to hostile values, bytes
overwritten, truncation, gzip damage); ``dicom_series`` writes a small series with hostile
tag values. ``try_read`` runs what ``preprocess`` and ``predict`` run on a case's image
(the header checks, ``read_image``, ``preprocess_image``) and classifies the outcome:

* ``read``: a 3D uint8 volume of finite levels came out;
* ``refused``: a ``PancreasError`` whose message is one line naming the file;
* anything else is a defect (``bad-message``, ``crash`` with its traceback, ``slow``).

Used by ``tests/test_fuzz_reader.py`` (hypothesis, fixed seed) and ``bench/fuzz.py`` (a longer
campaign). Test scaffolding: not imported by the library.
"""

from __future__ import annotations

import gzip
import struct
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dataset.common.errors import PancreasError

# NIfTI-1 header fields: name -> (byte offset, struct format), from the NIfTI-1 standard (nifti1.h)
FIELDS: dict[str, tuple[int, str]] = {
    "sizeof_hdr": (0, "<i"),
    **{f"dim{i}": (40 + 2 * i, "<h") for i in range(8)},
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    **{f"pixdim{i}": (76 + 4 * i, "<f") for i in range(8)},
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    **{name: (256 + 4 * i, "<f") for i, name in enumerate(("quatern_b", "quatern_c", "quatern_d"))},
    **{name: (268 + 4 * i, "<f") for i, name in enumerate(("qoffset_x", "qoffset_y", "qoffset_z"))},
    **{f"srow_{axis}{i}": (280 + 16 * a + 4 * i, "<f") for a, axis in enumerate("xyz") for i in range(4)},
}
INT_VALUES = (-32768, -1, 0, 1, 2, 3, 4, 7, 8, 16, 64, 255, 512, 4096, 32767)
FLOAT_VALUES = (float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -1.0, 1e-30, 1e-6, 0.5, 1.0, 2.0, 1e6, 3.4e38)
DICOM_TAGS = ("0020|0032", "0020|0037", "0028|0030", "0018|0050", "0028|1052", "0028|1053")
DICOM_VALUES = (
    "",
    "nan",
    "inf",
    "1e400",
    "-0",
    "abc",
    "1\\2",
    "0\\0\\0\\0\\0\\0",
    "1\\0\\0\\1\\0\\0",
    "1\\0\\0\\0\\1\\0",
    "0\\1\\0\\1\\0\\0",
    "0.8\\0.8",
    "0\\0",
    "-1\\-1",
    "1e-9\\1e-9",
    "2.5",
    "0",
    "-1000",
    "1e30",
)


@dataclass(frozen=True)
class Mutation:
    """One change to a file: ``field`` set to ``value``; ``bytes`` at ``offset``; ``truncate`` at
    ``offset``; ``gzip-bytes``/``gzip-truncate`` on the compressed stream (``.nii.gz`` only)."""

    kind: str  # field | bytes | truncate | gzip-bytes | gzip-truncate
    field: str = ""
    value: float = 0.0
    offset: int = 0
    data: bytes = b""


def small_ct(seed: int = 0) -> sitk.Image:
    """A 12 x 40 x 48 CT-like volume (air, a body, a bright spine) at 2.5 x 0.8 x 0.8 mm."""
    rng = np.random.default_rng(seed)
    hu = np.full((12, 40, 48), -1000, np.int16)
    hu[:, 6:34, 6:42] = 40 + rng.integers(-20, 20, (12, 28, 36))
    hu[:, 24:30, 20:26] = 700
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-20.0, -16.0, -300.0))
    return image


def nifti_bytes(suffix: str, seed: int = 0) -> bytes:
    """``small_ct`` as the bytes of a ``.nii`` or ``.nii.gz`` file written by SimpleITK."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"ct{suffix}"
        sitk.WriteImage(small_ct(seed), str(path), useCompression=suffix == ".nii.gz")
        return path.read_bytes()


def _set_field(header: bytearray, name: str, value: float) -> None:
    offset, fmt = FIELDS[name]
    if fmt == "<h":
        header[offset : offset + 2] = struct.pack(fmt, int(np.clip(value, -32768, 32767)))
    elif fmt == "<i":
        header[offset : offset + 4] = struct.pack(fmt, int(np.clip(value, -(2**31), 2**31 - 1)))
    else:
        header[offset : offset + 4] = struct.pack(fmt, np.float32(value))


def mutate_nifti(data: bytes, compressed: bool, mutations: list[Mutation]) -> bytes:
    """``data`` (a whole ``.nii`` or ``.nii.gz`` file) with ``mutations`` applied in order."""
    raw = bytearray(gzip.decompress(data) if compressed else data)
    stream_changes = []
    for m in mutations:
        if m.kind == "field":
            _set_field(raw, m.field, m.value)
        elif m.kind == "bytes":
            at = m.offset % max(1, len(raw))
            raw[at : at + len(m.data)] = m.data
        elif m.kind == "truncate":
            del raw[m.offset % max(1, len(raw)) :]
        else:
            stream_changes.append(m)
    out = bytearray(gzip.compress(bytes(raw), mtime=0) if compressed else raw)
    for m in stream_changes if compressed else []:
        if m.kind == "gzip-bytes":
            at = m.offset % max(1, len(out))
            out[at : at + len(m.data)] = m.data
        elif m.kind == "gzip-truncate":
            del out[m.offset % max(1, len(out)) :]
    return bytes(out)


def dicom_series(folder: Path, tags: dict[str, str], n_slices: int = 4) -> Path:
    """A small CT series in ``folder``; ``tags``: values that replace the regular ones on every
    slice (``{tag: value}``), or on one slice (key ``"<k>:<tag>"``)."""
    image = small_ct()[:, :, :n_slices]
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n_slices):
        slice_ = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        regular = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.2.{k + 1}",
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0018|0050": "2.5",
        }
        for key, value in tags.items():
            slice_k, _, tag = key.rpartition(":")
            if not slice_k or int(slice_k) == k:
                regular[tag] = value
        for tag, value in regular.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"im{k:04d}.dcm"))
        writer.Execute(slice_)
    return folder


@dataclass(frozen=True)
class Outcome:
    kind: str  # read | refused | bad-message | crash | slow
    detail: str
    seconds: float

    @property
    def defect(self) -> bool:
        return self.kind not in ("read", "refused")


def try_read(path: Path, slow_s: float = 30.0) -> Outcome:
    """What ``preprocess`` does with a case's image file or DICOM folder (``preprocess_file``: the
    header checks, ``read_image``, ``preprocess_image``); ``predict`` runs the same three and puts
    the path before any message that lacks it."""
    from preprocess.config import PreprocessConfig
    from preprocess.pipeline import preprocess_file

    config = PreprocessConfig()
    start = time.perf_counter()
    try:
        case = preprocess_file(path, None, config)
    except PancreasError as err:
        seconds = time.perf_counter() - start
        message = str(err)
        if "\n" in message or str(path) not in message:
            return Outcome("bad-message", message, seconds)
        return Outcome("refused", message, seconds)
    except Exception:
        return Outcome("crash", traceback.format_exc(), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    levels = case.levels
    if levels.ndim != 3 or levels.dtype != np.uint8 or levels.size == 0:
        return Outcome("crash", f"read, but levels {levels.dtype} {levels.shape}", seconds)
    if seconds > slow_s:
        return Outcome("slow", f"{seconds:.1f} s", seconds)
    return Outcome("read", f"levels {levels.shape}", seconds)
