"""Check and unpack a downloaded archive: the walls that keep it inside the output folder (stdlib only).

See docs/how-to/download.md#a-safe-extraction and
docs/explanation/internals.md#the-download-sourcesdownloadpy-sourcesarchivepy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from dataset.common.archives import member_name_problem
from dataset.common.errors import PancreasError

log = logging.getLogger(__name__)


class DownloadError(PancreasError, RuntimeError):
    """A download or archive that cannot be used; the message (one line) says why.

    Defined here, the lower layer, so both this module and ``sources.download``
    (which imports it from here) raise the same class without an import cycle.
    """


def one_line(err: BaseException) -> str:
    """``err`` as one line of text, for messages that must stay on one line."""
    return " ".join(str(err).split()) or type(err).__name__


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be extracted (None for a plain folder or file inside)."""
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if not (member.isfile() or member.isdir()):
        return f"special file (tar type {member.type!r})"
    return member_name_problem(member.name)


def is_resource_fork(name: str) -> bool:
    """macOS AppleDouble files (``._x.nii.gz``) and ``__MACOSX`` folders."""
    parts = PurePosixPath(name).parts
    return any(p.startswith("._") for p in parts) or "__MACOSX" in parts


def _refused(path: Path, member: tarfile.TarInfo, why: str) -> DownloadError:
    return DownloadError(f"{path}: refusing archive member {member.name!r}: {why}; nothing was extracted")


def safe_members(archive: tarfile.TarFile, path: Path) -> tuple[list[tarfile.TarInfo], int]:
    """Members to extract and the number of skipped resource forks.

    Reads every header first and raises on the first unsafe member, resource forks
    included (a real MSD archive has none), so a refused archive writes nothing.
    """
    try:
        members = archive.getmembers()
    except tarfile.TarError as err:
        raise DownloadError(f"{path}: not a readable tar archive ({one_line(err)})") from None
    for member in members:
        problem = _member_problem(member)
        if problem:
            raise _refused(path, member, problem)
    keep = [m for m in members if not is_resource_fork(m.name)]
    return keep, len(members) - len(keep)


def staging_dir(path: Path, out_dir: Path) -> Path:
    """Hidden folder an archive is unpacked into before its folders move into place."""
    return out_dir / f".{path.name}.extracting"


def _filter_kwargs() -> dict:
    """The standard library's 'data' filter (Python >= 3.11.4): a second wall behind
    ``safe_members``; older Pythons rely on that check alone."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _unpack(archive: tarfile.TarFile, path: Path, members: list[tarfile.TarInfo], staging: Path) -> None:
    with tqdm(
        total=sum(m.size for m in members), desc=f"extract {path.name}", unit="B", unit_scale=True, unit_divisor=1024
    ) as bar:
        for member in members:
            try:
                archive.extract(member, staging, set_attrs=False, **_filter_kwargs())
            except getattr(tarfile, "FilterError", ()) as err:  # () before Python 3.11.4: no filters
                raise _refused(path, member, one_line(err)) from None
            bar.update(member.size)


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
        archive = tarfile.open(path)  # noqa: SIM115 - closed by the `with` below; opened first to name a TarError
    except tarfile.TarError as err:
        raise DownloadError(f"{path}: not a readable tar archive ({one_line(err)})") from None
    with archive:
        members, skipped = safe_members(archive, path)
        tops = sorted({PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts})
        if staging.name in tops:  # it would be moved onto itself
            raise DownloadError(
                f"{path}: refusing archive member {staging.name!r}: named like the staging folder this "
                f"extraction unpacks into ({staging}); nothing was extracted"
            )
        taken = [top for top in tops if (out_dir / top).exists() or (out_dir / top).is_symlink()]
        if taken:
            raise DownloadError(
                f"{out_dir / taken[0]} already exists; move it away (or delete it) and rerun, nothing was extracted"
            )
        staging.mkdir()
        try:
            _unpack(archive, path, members, staging)
            for top in tops:
                os.replace(staging / top, out_dir / top)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    dataset_dir = out_dir / tops[0] if len(tops) == 1 else None
    return len(members), skipped, dataset_dir
