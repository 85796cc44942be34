"""Read a model package safely: every member checked (names, types, sizes, ratio, hashes) before one byte is written.

The same walls as ``pancreas download``'s tar extraction (``dataset.common.archives``), applied to
zip, plus a zip bomb's. See docs/how-to/package.md#opening-a-package-from-elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dataset.common.archives import member_name_problem
from dataset.common.atomic import fsync_path
from dataset.common.fingerprints import content_sha256
from dataset.contract.package import PACKAGE_NAME, PackageError, PackageMember, PackageRecord, read_package_record

MAX_MEMBERS = 4096  # before package.json is read; after it, exactly the members it lists
MAX_MEMBER_BYTES = 2 << 30  # a 90 M-parameter float32 checkpoint is about 360 MiB
MAX_TOTAL_BYTES = 32 << 30
MAX_RECORD_BYTES = 16 << 20  # package.json (a few kB per model)
MAX_RATIO = 200  # uncompressed / compressed; deflate reaches about 1030:1 on zeros, our members 1-20:1
RATIO_FROM_BYTES = 1 << 20  # smaller members may compress better (a JSON of repeated keys) and cost nothing
ALLOWED_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


@dataclass(frozen=True)
class ReadPackage:
    """A package whose record and members passed every check: the zip (or folder) and its record."""

    path: Path
    record: PackageRecord
    record_bytes: bytes  # package.json as stored: the package's hash is their SHA-256

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.record_bytes).hexdigest()


def _refused(where: Path, name: str, why: str) -> PackageError:
    return PackageError(f"{where}: refusing member {name!r}: {why}; nothing was unpacked")


def zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why ``info`` may not be unpacked (None for a plain file with a plain relative name)."""
    name = info.filename
    problem = member_name_problem(name)
    if problem:
        return problem
    if "\\" in name or any(p in ("", ".") for p in name.rstrip("/").split("/")):
        return "not a plain relative name (a backslash, an empty or '.' part)"
    mode = info.external_attr >> 16  # Unix mode; its type bits 0 when the writer left them out
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"special file (mode {stat.filemode(mode)})"
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.compress_type not in ALLOWED_METHODS:
        return f"compression method {info.compress_type} (a package is stored or deflated)"
    if info.file_size > MAX_MEMBER_BYTES:
        return f"declares {info.file_size} bytes uncompressed, more than a member may hold ({MAX_MEMBER_BYTES})"
    if info.file_size > RATIO_FROM_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        return f"compression ratio {ratio:.0f}:1, more than {MAX_RATIO}:1 (a zip bomb?)"
    return None


def check_zip_members(archive: zipfile.ZipFile, where: Path) -> dict[str, zipfile.ZipInfo]:
    """Every member's header checked (``zip_member_problem``), no name twice, sizes bounded; by name."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise PackageError(f"{where}: {len(infos)} members, more than a package may hold ({MAX_MEMBERS})")
    by_name: dict[str, zipfile.ZipInfo] = {}
    seen: dict[str, str] = {}
    for info in infos:
        problem = zip_member_problem(info)
        if problem:
            raise _refused(where, info.filename, problem)
        if info.filename in by_name:
            raise _refused(where, info.filename, "its name appears twice")
        folded = info.filename.casefold()
        if folded in seen:  # one file on a case-insensitive disk (macOS, Windows)
            raise _refused(where, info.filename, f"its name differs from {seen[folded]!r} only in case")
        seen[folded] = info.filename
        by_name[info.filename] = info
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise PackageError(f"{where}: declares {total} bytes uncompressed, more than a package may ({MAX_TOTAL_BYTES})")
    return by_name


def _check_listed(where: Path, record: PackageRecord, names: set[str]) -> None:
    """The members are exactly those ``package.json`` lists (and itself)."""
    extra = sorted(names - set(record.members) - {PACKAGE_NAME})
    if extra:
        raise _refused(where, extra[0], f"not listed in {PACKAGE_NAME} (more members than it declares)")
    missing = sorted(set(record.members) - names)
    if missing:
        raise PackageError(f"{where}: member {missing[0]!r} listed in {PACKAGE_NAME} is missing")


def _mismatch(where: Path, name: str, entry: PackageMember, size: int, sha256: str | None) -> str | None:
    if size != entry.size:
        return f"{where}: member {name!r} holds {size} bytes, {PACKAGE_NAME} says {entry.size}"
    if sha256 is not None and sha256 != entry.sha256:
        said = f"{PACKAGE_NAME} says {entry.sha256[:12]}..."
        return f"{where}: member {name!r} has SHA-256 {sha256[:12]}..., {said} (changed or damaged)"
    return None


def _zip_sha256(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: Path) -> str:
    digest = hashlib.sha256()
    try:
        with archive.open(info) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # a CRC or a deflate stream broken
        raise PackageError(f"{where}: member {info.filename!r} is damaged ({err})") from None
    return digest.hexdigest()


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise PackageError(f"{path}: not a readable zip archive ({err})") from None


def read_zip_package(path: Path) -> ReadPackage:
    """Check every header, ``package.json`` (format version) and every member's size and SHA-256, in memory."""
    with open_zip(path) as archive:
        infos = check_zip_members(archive, path)
        info = infos.get(PACKAGE_NAME)
        if info is None:
            raise PackageError(f"{path}: no {PACKAGE_NAME}; not a `pancreas package` model package")
        if info.file_size > MAX_RECORD_BYTES:
            raise _refused(path, PACKAGE_NAME, f"declares {info.file_size} bytes (a record holds kilobytes)")
        data = archive.read(info)
        record = read_package_record(data, str(path))
        _check_listed(path, record, set(infos))
        for name, entry in record.members.items():
            problem = _mismatch(path, name, entry, infos[name].file_size, None) or _mismatch(
                path, name, entry, entry.size, _zip_sha256(archive, infos[name], path)
            )
            if problem:
                raise PackageError(problem)
    return ReadPackage(path, record, data)


def read_folder_package(folder: Path) -> ReadPackage:
    """The same checks on an unpacked package: ``package.json`` and every file it lists (no links)."""
    try:
        data = (folder / PACKAGE_NAME).read_bytes()
    except OSError as err:
        raise PackageError(f"{folder}: cannot read {PACKAGE_NAME} ({err.strerror or err})") from None
    record = read_package_record(data, str(folder))
    for name, entry in record.members.items():
        problem = member_name_problem(name)
        if problem:
            raise _refused(folder, name, problem)
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise PackageError(f"{folder}: member {name!r} listed in {PACKAGE_NAME} is missing or not a plain file")
        mismatch = _mismatch(folder, name, entry, path.stat().st_size, None) or _mismatch(
            folder, name, entry, entry.size, content_sha256(path)
        )
        if mismatch:
            raise PackageError(mismatch)
    return ReadPackage(folder, record, data)


def unpack_zip(path: Path, folder: Path, read: ReadPackage) -> None:
    """Write ``package.json`` and the members ``read`` lists from the (checked) zip ``path`` into the
    new, empty ``folder``, durably; then check the folder against ``read`` (the zip may have been
    replaced since it was read: what was written must be what was checked)."""
    root = folder.resolve()
    wanted = {*read.record.members, PACKAGE_NAME}
    with open_zip(path) as archive:
        for info in archive.infolist():
            name = info.filename
            if name not in wanted:
                raise _refused(path, name, f"not listed in {PACKAGE_NAME} (the zip changed since it was checked)")
            target = folder.joinpath(*PurePosixPath(name).parts)
            if not target.resolve().is_relative_to(root):  # a second wall behind zip_member_problem
                raise _refused(path, name, "it would land outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "xb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
            fsync_path(target)
    for root_dir, _dirs, _files in os.walk(folder):
        fsync_path(root_dir)
    if read_folder_package(folder).record_bytes != read.record_bytes:
        raise PackageError(f"{path}: changed while it was unpacked ({PACKAGE_NAME} differs); run again")
