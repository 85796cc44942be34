"""Checks that a library's writer really wrote a whole file, run before ``atomic_path`` renames it.

On a full disk some writers stop short without raising (SimpleITK's NIfTI writer prints
``** ERROR: NWAD`` or nothing, HDF5 may only print), so each format is read back here in
its cheapest reliable way; a failure is an ``OSError`` naming the final file and its folder.
See docs/explanation/commit-protocol.md.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from dataset.common.errors import PancreasError

CHUNK_BYTES = 1 << 20


class WriteError(PancreasError, OSError):
    """A file that could not be written whole; ``str()`` is the message alone (no ``[Errno 28]``),
    which already names the file and its folder."""

    def __str__(self) -> str:
        return str(self.strerror)


def short_write(path: str | Path, written: int, expected: int) -> WriteError:
    """The one-line error of a file that came out shorter than its writer meant."""
    path = Path(path)
    text = f"{path}: only {written} of {expected} bytes reached the disk (is {path.parent} full?)"
    return WriteError(errno.ENOSPC, text, str(path))


def no_space(path: str | Path) -> WriteError:
    """The one-line error of a full disk met while writing ``path``."""
    path = Path(path)
    return WriteError(errno.ENOSPC, f"No space left on device writing {path} (folder {path.parent})", str(path))


def incomplete(path: str | Path, what: str, why: object) -> WriteError:
    """A written file that does not read back whole (``what``: its format)."""
    path = Path(path)
    text = f"{path}: the {what} just written does not read back whole ({why}; is {path.parent} full?)"
    return WriteError(errno.EIO, text, str(path))


def verify_gzip(tmp: str | Path, final: str | Path, min_bytes: int = 0) -> None:
    """Decompress ``tmp`` to its end: a torn gzip stream lacks its trailer (CRC-32 and length).

    Reading the stream through is the only check that covers every byte: a shorter file
    ends early (``EOFError``), a zero-filled hole fails the CRC (``BadGzipFile``). SimpleITK
    reading it back is no check: it fills a truncated tail with zeros. Decompressing costs
    a fraction of the compression that made the file. ``min_bytes``: the uncompressed size
    the writer must at least have produced (a NIfTI header plus its voxels).
    """
    total = 0
    try:
        with gzip.open(tmp, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise incomplete(final, "gzip file", err) from None
    if total < min_bytes:
        raise short_write(final, total, min_bytes)


def verify_size(tmp: str | Path, final: str | Path, min_bytes: int) -> None:
    """An uncompressed file must hold at least ``min_bytes``."""
    size = Path(tmp).stat().st_size
    if size < min_bytes:
        raise short_write(final, size, min_bytes)


def verify_zip(tmp: str | Path, final: str | Path) -> None:
    """Every member of a zip (a ``.keras`` file) reads back with its CRC; a torn zip lacks its directory."""
    try:
        with zipfile.ZipFile(tmp) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise incomplete(final, "zip file", err) from None
    if bad is not None:
        raise incomplete(final, "zip file", f"member {bad} fails its CRC")


def verify_hdf5(tmp: str | Path, final: str | Path, datasets: Iterable[str] = ()) -> None:
    """Reopen an HDF5 file: its superblock records the end of file, so a shorter file will not open.

    The superblock is written last, when the file closes, so a file whose close failed
    does not open either; the named ``datasets`` must be there.
    """
    import h5py

    try:
        with h5py.File(tmp, "r") as f:
            missing = [name for name in datasets if name not in f]
    except OSError as err:
        raise incomplete(final, "HDF5 file", str(err).splitlines()[0] if str(err) else err) from None
    if missing:
        raise incomplete(final, "HDF5 file", f"no dataset {', '.join(missing)}")


def is_no_space(err: BaseException) -> bool:
    """An ``OSError`` of a full disk (or a quota), however a library wrapped it."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err)


@contextlib.contextmanager
def naming_full_disk(path: str | Path) -> Iterator[None]:
    """A full disk met while writing ``path`` (a file, or a folder a library writes into) says so
    in one line naming it and its folder (Python's own ``[Errno 28] No space left on device``
    names neither); a ``WriteError`` already names its file and passes unchanged."""
    try:
        yield
    except WriteError:
        raise
    except Exception as err:
        if not is_no_space(err):
            raise
        raise no_space(path) from err


__all__ = [
    "WriteError",
    "incomplete",
    "is_no_space",
    "naming_full_disk",
    "no_space",
    "short_write",
    "verify_gzip",
    "verify_hdf5",
    "verify_size",
    "verify_zip",
]
