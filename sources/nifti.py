"""NIfTI-1 files at the byte level: the one header parser, and the checks ITK cannot make.

ITK reads a truncated NIfTI file without complaint (the missing slices become 0) and
turns stored NaN/Inf into 0; both can only be seen in the bytes. Everything here reads
the file itself (numpy, gzip, struct; no SimpleITK), and every reader of a NIfTI header
in this project goes through ``parse_header`` / ``read_header``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dataset.common.slabs import z_slabs

HEADER_BYTES = 348  # sizeof_hdr of NIfTI-1
# what reading a damaged file raises: zlib.error (a corrupt deflate block) is not an OSError
READ_ERRORS = (OSError, EOFError, zlib.error)
SUFFIXES = (".nii", ".nii.gz")
# header "datatype" codes -> numpy names (the type stored on disk, before scl_slope)
DATATYPES = {
    2: "uint8",
    4: "int16",
    8: "int32",
    16: "float32",
    64: "float64",
    256: "int8",
    512: "uint16",
    768: "uint32",
    1024: "int64",
    1280: "uint64",
}
GZIP_BLOCK = 1 << 24


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1 header this project uses (byte offsets in ``parse_header``)."""

    endian: Literal["<", ">"]  # "<" or ">": struct/numpy byte order of the whole file
    dims: tuple[int, ...]  # dim[1 .. dim[0]]: voxels along each axis
    datatype: int
    bitpix: int
    vox_offset: int  # where the voxels start; -1: the header's value is no byte offset
    scl_slope: float
    scl_inter: float

    @property
    def dtype(self) -> str | None:
        """numpy name of the stored voxel type (None for a type this project does not know)."""
        return DATATYPES.get(self.datatype)

    @property
    def data_bytes(self) -> int:
        """Bytes of voxel data the header promises."""
        return int(np.prod([max(1, d) for d in self.dims])) * self.bitpix // 8

    @property
    def intercept(self) -> float:
        """``scl_inter`` as applied (0 when the header sets no scaling)."""
        return float(self.scl_inter) if self.scl_slope != 0.0 and np.isfinite(self.scl_inter) else 0.0


def is_nifti(path: Path) -> bool:
    return path.name.endswith(SUFFIXES) and not path.is_dir()


def parse_header(data: bytes) -> NiftiHeader | None:
    """The header at the start of ``data``; None when it is not NIfTI-1 (e.g. NIfTI-2)."""
    if len(data) < HEADER_BYTES:
        return None
    endians: tuple[Literal["<", ">"], ...] = ("<", ">")
    for endian in endians:
        if struct.unpack(endian + "i", data[:4])[0] == HEADER_BYTES:
            break
    else:
        return None
    dims = struct.unpack(endian + "8h", data[40:56])
    rank = max(0, min(dims[0], 7))
    datatype, bitpix = struct.unpack(endian + "hh", data[70:74])
    raw_offset = struct.unpack(endian + "f", data[108:112])[0]
    # -1: not a byte offset (NaN, infinite, negative or beyond any file): ``truncation`` refuses it
    vox_offset = max(int(raw_offset), HEADER_BYTES) if math.isfinite(raw_offset) and 0 <= raw_offset < 2**40 else -1
    slope, inter = struct.unpack(endian + "ff", data[112:120])
    return NiftiHeader(endian, tuple(dims[1 : 1 + rank]), datatype, bitpix, vox_offset, slope, inter)


GEOMETRY_MAX_ABS = 1e15  # larger header numbers overflow to infinity in ITK's matrix arithmetic


def geometry_problem(data: bytes) -> str | None:
    """Why a NIfTI-1 header's spacing or orientation numbers are unusable (not finite, or so large
    they overflow), checked before ITK sees them: ITK's reader hangs on some (an infinite sform
    with a huge quaternion did not return in 20 s). None when they are usable or it is no NIfTI-1."""
    header = parse_header(data)
    if header is None:
        return None
    e = header.endian
    pixdim = struct.unpack(e + "8f", data[76:108])
    qform_code, sform_code = struct.unpack(e + "hh", data[252:256])
    fields = [("pixdim", pixdim[1:4])]
    if qform_code > 0:
        fields.append(("quatern/qoffset", struct.unpack(e + "6f", data[256:280])))
    if sform_code > 0:
        fields.append(("srow", struct.unpack(e + "12f", data[280:328])))
    for name, values in fields:
        if not all(math.isfinite(v) and abs(v) <= GEOMETRY_MAX_ABS for v in values):
            shown = ", ".join(f"{v:g}" for v in values)
            return f"header {name} ({shown}) holds a value that is not finite or is absurdly large"
    return None


def _open(path: Path):
    return (gzip.open if path.name.endswith(".gz") else open)(path, "rb")


def read_header(path: str | Path) -> NiftiHeader | None:
    """The header of a ``.nii``/``.nii.gz`` file; None when it is not NIfTI-1 or too short.

    OSError/EOFError (unreadable file, broken gzip stream) propagate.
    """
    with _open(Path(path)) as f:
        return parse_header(f.read(HEADER_BYTES))


def file_geometry_problem(path: str | Path) -> str | None:
    """``geometry_problem`` of a file's header; None when unreadable (ITK then says why)."""
    try:
        with _open(Path(path)) as f:
            return geometry_problem(f.read(HEADER_BYTES))
    except READ_ERRORS:
        return None


def truncation(path: str | Path) -> str | None:
    """Why a NIfTI-1 file holds fewer voxel bytes than its header promises, else None.

    Cheap: an uncompressed file's size, or a gzip file's trailer (ISIZE, the uncompressed
    size mod 2^32); only when the trailer disagrees (a truncated stream, or a rare
    multi-member gzip) is the stream decompressed to the end to decide.
    """
    path = Path(path)
    if not is_nifti(path):
        return None
    try:
        with _open(path) as f:
            data = f.read(HEADER_BYTES)
    except READ_ERRORS as err:
        return f"unreadable header ({err})"
    if len(data) < HEADER_BYTES:
        return "file shorter than a NIfTI header"
    header = parse_header(data)
    if header is None:
        return None  # not NIfTI-1: left to ITK
    if header.vox_offset < 0:
        return "header's vox_offset is not a byte offset (NaN, infinite, negative or absurdly large)"
    expected = header.vox_offset + header.data_bytes
    if not path.name.endswith(".gz"):
        size = path.stat().st_size
        return None if size >= expected else f"truncated: header promises {expected} bytes, file has {size}"
    with open(path, "rb") as raw:
        raw.seek(-4, 2)
        isize = struct.unpack("<I", raw.read(4))[0]
    if isize == expected % (1 << 32):
        return None
    try:
        with gzip.open(path, "rb") as f:
            total = 0
            while block := f.read(GZIP_BLOCK):
                total += len(block)
    except READ_ERRORS as err:
        return f"truncated or corrupt gzip stream ({err})"
    return None if total >= expected else f"truncated: header promises {expected} bytes, file has {total}"


def has_non_finite(path: str | Path, dtype: str) -> bool:
    """Whether a float NIfTI file stores NaN or infinite values (streamed; integer files cannot)."""
    path = Path(path)
    if dtype not in ("float32", "float64") or not is_nifti(path):
        return False
    with _open(path) as f:
        header = parse_header(f.read(HEADER_BYTES))
        if header is None:
            return False
        f.read(header.vox_offset - HEADER_BYTES)
        item = np.dtype(dtype).newbyteorder(header.endian)
        while block := f.read(item.itemsize * (1 << 20)):
            usable = len(block) - len(block) % item.itemsize
            if not np.isfinite(np.frombuffer(block[:usable], dtype=item)).all():
                return True
    return False


def may_hide_non_finite(values: np.ndarray, path: str | Path, dtype: str) -> bool:
    """Whether loaded voxels could be ITK's stand-ins for NaN/Inf of a float NIfTI.

    ITK stores a non-finite value as 0 and then applies the scaling, so it shows up as
    ``scl_inter`` (0 without scaling). A volume holding neither value cannot hide one, and
    the second full decompression of the file (about 1 s for a gzipped 512x512x100 float
    case) is skipped.
    """
    path = Path(path)
    if dtype not in ("float32", "float64") or not is_nifti(path):
        return False
    header = read_header(path)
    candidates = {0.0, header.intercept if header is not None else 0.0}
    # slab by slab: no whole-volume boolean temporary
    return any(bool((values[z] == np.float32(c)).any()) for c in candidates for z in z_slabs(values.shape, 1 << 22))
