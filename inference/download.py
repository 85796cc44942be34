"""Fetch, verify and unpack the MSD Task07_Pancreas archive (standard library only).

The archive is about 11.5 GB, so the transfer must survive a dropped connection: bytes go
to ``<name>.part`` and a rerun (or an automatic retry) asks the server for the rest with an
HTTP Range request. The md5 is computed while the bytes arrive (a resumed run hashes the
existing part first), a mismatch deletes the part file. Extraction checks every member
first and refuses the whole archive if one would land outside the target folder (absolute
names, ``..``, links pointing out, device files); macOS ``._*`` resource files are skipped
because they are not NIfTI files and break naive globbing. Members are unpacked into a
hidden staging folder and moved into place at the end, so an interrupted extraction
leaves nothing that looks like a usable dataset.
"""
from __future__ import annotations

import hashlib
import json
import http.client
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from tqdm import tqdm

from dataset.common.files import write_json_atomic
from inference.config import DownloadConfig

log = logging.getLogger(__name__)
MARKER = ".{name}.extracted.json"


class DownloadError(RuntimeError):
    """A download or archive that cannot be used; the message says why."""


@dataclass(frozen=True)
class DownloadSummary:
    archive: Path
    dataset_dir: Path | None
    downloaded_bytes: int
    extracted_members: int
    skipped_members: int
    seconds: float
    already_done: bool = False


def archive_name(url: str) -> str:
    name = PurePosixPath(urlparse(url).path).name
    if not name:
        raise DownloadError(f"{url}: cannot tell the file name from the URL")
    return name


def md5_of_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _content_total(response, offset: int) -> int | None:
    """Full size of the resource from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _fetch_once(url: str, part: Path, state: dict, config: DownloadConfig, bar: tqdm) -> None:
    """Append the missing bytes of ``url`` to ``part``; raises ConnectionError if cut short.

    ``state["md5"]`` already holds the md5 of the bytes in ``part``. A server that ignores
    the Range header (status 200) makes us start over.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=config.timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the part is complete
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    with response:
        if offset and response.status != 206:
            log.info("server ignored the resume request; starting %s again", part.name)
            offset = 0
            state["md5"] = hashlib.md5()
        total = _content_total(response, offset)
        bar.reset(total=total)
        bar.update(offset)
        with open(part, "ab" if offset else "wb") as f:
            while block := response.read(config.chunk_bytes):
                f.write(block)
                state["md5"].update(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def download_file(url: str, dest: Path, md5: str, config: DownloadConfig) -> int:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumable), verify md5; bytes fetched."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    state = {"md5": hashlib.md5()}
    start = part.stat().st_size if part.exists() else 0
    if start:
        log.info("resuming %s from byte %d", dest.name, start)
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                state["md5"].update(block)
    attempts = 0
    with tqdm(desc=f"download {dest.name}", unit="B", unit_scale=True, unit_divisor=1024) as bar:
        while True:
            try:
                _fetch_once(url, part, state, config, bar)
                break
            except (OSError, http.client.HTTPException) as err:  # dropped, reset, timed out
                attempts += 1
                have = part.stat().st_size if part.exists() else 0
                if attempts > config.retries:
                    raise DownloadError(
                        f"{url}: transfer interrupted at {have} bytes ({err}); run again to resume from {part}"
                    ) from None
                log.warning("transfer interrupted at %d bytes (%s); resuming (%d/%d)", have, err, attempts, config.retries)
                time.sleep(min(2.0 ** attempts, 30.0) * 0.05)
    got = state["md5"].hexdigest()
    if got != md5:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{dest.name}: md5 {got} does not match the expected {md5}; deleted the partial file")
    os.replace(part, dest)
    return dest.stat().st_size - start


def _member_problem(member: tarfile.TarInfo, root: Path) -> str | None:
    """Why ``member`` may not be extracted under ``root`` (None if it is safe)."""
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path contains '..'"
    target = (root / name).resolve()
    if not target.is_relative_to(root):
        return "lands outside the target folder"
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute():
            return f"link to absolute path {member.linkname}"
        base = (root / name).parent if member.issym() else root
        if not (base / member.linkname).resolve().is_relative_to(root):
            return f"link {member.linkname} points outside the target folder"
    elif not (member.isfile() or member.isdir()):
        return "device, fifo or other special file"
    return None


def is_resource_fork(name: str) -> bool:
    """macOS AppleDouble files (``._x.nii.gz``) and ``__MACOSX`` folders."""
    parts = PurePosixPath(name).parts
    return any(p.startswith("._") for p in parts) or "__MACOSX" in parts


def safe_members(archive: tarfile.TarFile, root: Path) -> tuple[list[tarfile.TarInfo], int]:
    """Members to extract and the number of skipped resource forks; raises on any unsafe member."""
    root = root.resolve()
    keep, skipped = [], 0
    for member in archive.getmembers():
        if is_resource_fork(member.name):
            skipped += 1
            continue
        problem = _member_problem(member, root)
        if problem:
            raise DownloadError(f"refusing archive member {member.name!r}: {problem}; nothing extracted")
        keep.append(member)
    return keep, skipped


def staging_dir(path: Path, out_dir: Path) -> Path:
    """Hidden folder an archive is unpacked into before its folders move into place."""
    return out_dir / f".{path.name}.extracting"


def extract_archive(path: Path, out_dir: Path) -> tuple[int, int, Path | None]:
    """Extract safely; returns (members extracted, members skipped, top-level dataset folder).

    Members are unpacked into a hidden staging folder next to their destination and
    each top-level folder is renamed into ``out_dir`` only once every member is there,
    so an interrupted extraction never leaves a half-filled ``Task07_Pancreas/`` that
    looks usable; the next run deletes the leftover staging folder and starts again.
    A top-level folder that already exists is never merged into or replaced: it may be
    the user's own copy, so the run stops before extracting anything.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(path, out_dir)
    if staging.exists():
        log.info("removing %s left by an interrupted extraction", staging)
        shutil.rmtree(staging)
    try:
        archive = tarfile.open(path)
    except tarfile.TarError as err:
        raise DownloadError(f"{path}: not a readable tar archive ({err})") from None
    with archive:
        members, skipped = safe_members(archive, staging)
        tops = sorted({PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts})
        taken = [top for top in tops if (out_dir / top).exists() or (out_dir / top).is_symlink()]
        if taken:
            raise DownloadError(f"{out_dir / taken[0]} already exists; move it away (or delete it) and rerun, "
                                "nothing was extracted")
        staging.mkdir()
        try:
            total = sum(m.size for m in members)
            with tqdm(total=total, desc=f"extract {path.name}", unit="B", unit_scale=True,
                      unit_divisor=1024) as bar:
                for member in members:
                    archive.extract(member, staging, set_attrs=False, **_filter_kwargs())
                    bar.update(member.size)
            for top in tops:
                os.replace(staging / top, out_dir / top)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    dataset_dir = out_dir / tops[0] if len(tops) == 1 else None
    return len(members), skipped, dataset_dir


def _filter_kwargs() -> dict:
    """Python >= 3.12 (and patched 3.11) tarfile filters: our own checks already ran, so
    ask for the permissive 'tar' filter only to silence the deprecation warning."""
    return {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def download_dataset(config: DownloadConfig, out_dir: str | Path | None = None) -> DownloadSummary:
    """`pancreas download`: fetch (resuming), verify, extract; skips work already done."""
    t0 = time.perf_counter()
    out = Path(out_dir if out_dir is not None else config.out_dir)
    name = archive_name(config.url)
    archive = out / name
    marker = out / MARKER.format(name=name)
    done = _read_marker(marker)
    if done and done.get("md5") == config.md5 and Path(done.get("dataset_dir") or out).is_dir():
        log.info("%s already downloaded and extracted into %s", name, out)
        dataset_dir = Path(done["dataset_dir"]) if done.get("dataset_dir") else None
        return DownloadSummary(archive, dataset_dir, 0, 0, 0, time.perf_counter() - t0, already_done=True)
    fetched = 0
    if archive.is_file():
        log.info("verifying existing %s", archive)
        got = md5_of_file(archive)
        if got != config.md5:
            raise DownloadError(f"{archive}: md5 {got} does not match the expected {config.md5}; delete it and rerun")
    else:
        fetched = download_file(config.url, archive, config.md5, config)
    extracted, skipped, dataset_dir = extract_archive(archive, out)
    write_json_atomic(marker, {"url": config.url, "md5": config.md5, "members": extracted,
                               "dataset_dir": str(dataset_dir) if dataset_dir else None})
    if not config.keep_archive:
        archive.unlink()
    return DownloadSummary(archive, dataset_dir, fetched, extracted, skipped, time.perf_counter() - t0)
