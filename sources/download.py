"""Fetch, verify and unpack the MSD Task07_Pancreas archive (standard library only).

Locked, resumable with retries, md5-checked (a mismatch keeps the bytes); unpacking is
``sources.archive``. See docs/how-to/download.md and
docs/explanation/internals.md#the-download-sourcesdownloadpy-sourcesarchivepy.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from dataset.common.atomic import fsync_path, remove_stale_temporaries, write_json_atomic
from dataset.common.errors import PancreasError
from dataset.common.locks import exclusive_lock
from sources.archive import DownloadError, extract_archive, one_line
from sources.config import DownloadConfig

log = logging.getLogger(__name__)
MARKER = ".{name}.extracted.json"
MISMATCH_SUFFIX = ".md5-mismatch"
MAX_WAIT_S = 60.0
RETRY_STATUSES = (408, 429)  # besides every 5xx


class ServerBusyError(PancreasError, ConnectionError):
    """An HTTP answer worth retrying (5xx, 408, 429)."""


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
    name = urlparse(url).path.rsplit("/", 1)[-1]  # not PurePosixPath(...).name, which drops a trailing "/"
    if name in ("", ".", ".."):  # a folder's URL, not a file's
        raise DownloadError(
            f"{url}: cannot tell the archive's file name from the URL (its last segment is {name!r}); "
            "give the URL of the .tar file itself"
        )
    return name


def md5_of_file(path: Path, chunk: int = 1 << 20) -> str:
    return _md5_of(path, chunk).hexdigest()


def _md5_of(path: Path, chunk: int = 1 << 20):
    digest = hashlib.md5()
    if path.exists():
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def backoff_s(failures: int, first_wait_s: float) -> float:
    """Wait before retry number ``failures`` (1, 2, ...) of a streak: doubling, capped."""
    return min(first_wait_s * 2.0 ** (failures - 1), MAX_WAIT_S)


# ----------------------------------------------------------------------------- transfer
def _content_total(response, offset: int) -> int | None:
    """Full size of the resource from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _open_response(url: str, offset: int, config: DownloadConfig):
    """The server's answer for the bytes from ``offset`` on; None when nothing is left."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return urllib.request.urlopen(request, timeout=config.timeout_s)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:  # nothing left to send: the part is complete
            return None
        if err.code >= 500 or err.code in RETRY_STATUSES:
            raise ServerBusyError(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None


def _write(f, data: bytes, part: Path) -> None:
    """Append ``data`` (b"": flush); a full disk is not a network problem, so no retry."""
    try:
        f.write(data)
        if not data:
            f.flush()
    except OSError as err:
        raise DownloadError(
            f"{part}: cannot write ({err.strerror or err}); free some space and run again to resume"
        ) from None


def _fetch_once(url: str, part: Path, state: dict, config: DownloadConfig, bar: tqdm) -> None:
    """Append the missing bytes of ``url`` to ``part``; raises OSError if cut short.

    ``state["md5"]`` already holds the md5 of the bytes in ``part``. A server that ignores
    the Range header (status 200) makes us start over.
    """
    offset = _size(part)
    response = _open_response(url, offset, config)
    if response is None:
        return
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
                _write(f, block, part)
                state["md5"].update(block)
                bar.update(len(block))
            _write(f, b"", part)
    size = _size(part)
    if total is not None and size < total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def _fetch_with_retries(url: str, part: Path, state: dict, config: DownloadConfig, progress: bool = True) -> None:
    """``_fetch_once`` until complete; ``config.retries`` failures in a row without new bytes end it."""
    failures, most = 0, _size(part)
    with tqdm(
        desc=f"download {part.name.removesuffix('.part')}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
    ) as bar:
        while True:
            try:
                _fetch_once(url, part, state, config, bar)
                return
            except (OSError, http.client.HTTPException) as err:  # 5xx, dropped, reset, timed out
                have = _size(part)
                failures = 1 if have > most else failures + 1
                most = max(most, have)
                if failures > config.retries:
                    then = (
                        f"run again to resume from {part} ({have} bytes)"
                        if have
                        else "run again later, or try another mirror with --url"
                    )
                    raise DownloadError(
                        f"{url}: gave up after {failures} failed tries in a row (last: {one_line(err)}); {then}"
                    ) from None
                wait = backoff_s(failures, config.retry_wait_s)
                log.warning(
                    "%s at %d bytes; retry %d of %d in %.1f s", one_line(err), have, failures, config.retries, wait
                )
                time.sleep(wait)


def _mismatch_error(dest: Path, bad: Path, got: str, md5: str) -> DownloadError:
    return DownloadError(
        f"{dest.name}: md5 {got} does not match the expected {md5}; kept the download as {bad}: "
        f"rerun to download it again from scratch (delete {bad.name} to free its space); if it fails "
        "again, the mirror serves a different file: try another --url, or --md5 if you trust this one"
    )


def download_file(url: str, dest: Path, md5: str, config: DownloadConfig, progress: bool = True) -> int:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumable), verify md5; bytes fetched.

    A mismatch renames the part to ``dest.md5-mismatch`` (see the module docstring).
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = _size(part)
    if start:
        log.info("resuming %s from byte %d", dest.name, start)
    state = {"md5": _md5_of(part)}
    _fetch_with_retries(url, part, state, config, progress)
    got = state["md5"].hexdigest()
    fsync_path(part)
    if got != md5:
        bad = dest.with_name(dest.name + MISMATCH_SUFFIX)
        os.replace(part, bad)
        fsync_path(dest.parent)
        raise _mismatch_error(dest, bad, got, md5)
    os.replace(part, dest)
    fsync_path(dest.parent)
    return dest.stat().st_size - start


# ----------------------------------------------------------------------------- the stage
def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _verified_archive(config: DownloadConfig, archive: Path, progress: bool = True) -> int:
    """Make sure ``archive`` is there with the right md5; the bytes downloaded for it."""
    if archive.is_file():
        log.info("verifying existing %s", archive)
        got = md5_of_file(archive)
        if got != config.md5:
            raise DownloadError(
                f"{archive}: md5 {got} does not match the expected {config.md5}; left untouched: "
                "delete or rename it and rerun to download it again (or pass --md5 if it is "
                "another release)"
            )
        return 0
    bad = archive.with_name(archive.name + MISMATCH_SUFFIX)
    if bad.is_file():
        log.warning(
            "%s (%.1f GB) is an earlier download that failed its md5 check; delete it when you no longer need it",
            bad,
            bad.stat().st_size / 1e9,
        )
    return download_file(config.url, archive, config.md5, config, progress)


def download_dataset(
    config: DownloadConfig, out_dir: str | Path | None = None, progress: bool = True
) -> DownloadSummary:
    """`pancreas download`: fetch (resuming), verify, extract; skips work already done.

    Holds the folder's lock throughout (``LockedError`` at once if another run has it).
    """
    t0 = time.perf_counter()
    out = Path(out_dir if out_dir is not None else config.out_dir)
    name = archive_name(config.url)
    archive = out / name
    marker = out / MARKER.format(name=name)
    if out.exists() and not out.is_dir():
        raise DownloadError(f"--out {out}: exists and is not a folder; choose a folder for the download")
    with exclusive_lock(out):
        remove_stale_temporaries(out)
        done = _read_marker(marker)
        if done and done.get("md5") == config.md5 and Path(done.get("dataset_dir") or out).is_dir():
            log.info("%s already downloaded and extracted into %s", name, out)
            dataset_dir = Path(done["dataset_dir"]) if done.get("dataset_dir") else None
            return DownloadSummary(archive, dataset_dir, 0, 0, 0, time.perf_counter() - t0, already_done=True)
        fetched = _verified_archive(config, archive, progress)
        extracted, skipped, dataset_dir = extract_archive(archive, out)
        write_json_atomic(
            marker,
            {
                "url": config.url,
                "md5": config.md5,
                "members": extracted,
                "dataset_dir": str(dataset_dir) if dataset_dir else None,
            },
        )
        if not config.keep_archive:
            archive.unlink()
    return DownloadSummary(archive, dataset_dir, fetched, extracted, skipped, time.perf_counter() - t0)
