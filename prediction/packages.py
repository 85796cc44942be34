"""Predict with a model package: check it, unpack it into the cache keyed by its hash, verify it on its probe.

``open_package`` runs the cheap checks (format version, every member's size and SHA-256, the contracts
agree) that ``pancreas predict --model MODEL.zip`` runs before it starts; ``verify_package`` adds the
probe. See docs/how-to/package.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.common.atomic import TMP_SUFFIX, fsync_path
from dataset.common.errors import PancreasError
from dataset.contract.package import MODEL_DIR, PACKAGE_NAME, PROBE_NAME, PackageError
from dataset.contract.run import checkpoint_path
from prediction.config import PredictConfig
from prediction.package_zip import ReadPackage, read_folder_package, read_zip_package, unpack_zip

log = logging.getLogger(__name__)

CACHE_ENV = "PANCREAS_CACHE_DIR"
PACKAGES_DIR = "packages"
KEY_HEX = 16  # the cache folder's name: the package hash's first 64 bits (its package.json is compared in full)
PROBE_INPUT = "input"
PROBE_EDGE = 16  # the probe window's edge (z, y, x), rounded up to a multiple of 2**depth
PROBE_TOLERANCE = 1e-2  # see docs/how-to/package.md#the-probe-and-its-tolerance


@dataclass(frozen=True)
class OpenedPackage:
    """A checked package, unpacked: its run folders and decision file, ready for ``predict_cases``."""

    source: Path  # the zip or folder given
    folder: Path  # the unpacked package (the folder given, or the cache folder)
    read: ReadPackage

    @property
    def sha256(self) -> str:
        """The package hash: SHA-256 of its package.json, which pins every other member by its hash."""
        return self.read.sha256

    @property
    def run_dirs(self) -> list[Path]:
        return [self.folder / m.folder for m in self.read.record.models]

    @property
    def postprocessing(self) -> Path | None:
        name = self.read.record.postprocessing
        return None if name is None else self.folder / name


# ----------------------------------------------------------------------------- the probe
def probe_window(depth: int) -> tuple[int, int, int]:
    """The probe's (z, y, x): PROBE_EDGE rounded up to a multiple of 2**depth."""
    multiple = 2**depth
    edge = -(-PROBE_EDGE // multiple) * multiple
    return (edge, edge, edge)


def probe_input(depth: int) -> np.ndarray:
    """One deterministic (1, z, y, x, 1) window of stored levels / 255, as the model takes them."""
    levels = np.random.default_rng(20261203).integers(0, 256, size=(1, *probe_window(depth), 1))
    return (levels / 255.0).astype(np.float32)


def probe_difference(recorded: np.ndarray, found: np.ndarray, name: str) -> float:
    """The largest absolute difference of two probe outputs; ``PackageError`` when their shapes differ."""
    if recorded.shape != found.shape:
        raise PackageError(f"{name}: gives shape {found.shape} on the probe, recorded {recorded.shape}")
    return float(np.max(np.abs(recorded.astype(np.float64) - found.astype(np.float64)), initial=0.0))


# ----------------------------------------------------------------------------- the cache
def cache_root() -> Path:
    """``$PANCREAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pancreas-seg``, else ``~/.cache/pancreas-seg``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pancreas-seg"


def cache_folder(read: ReadPackage) -> Path:
    return cache_root() / PACKAGES_DIR / read.sha256[:KEY_HEX]


def _cached(folder: Path, read: ReadPackage) -> bool:
    """Whether ``folder`` is this package unpacked (checked member by member); refuse anything else."""
    if not folder.exists() and not folder.is_symlink():
        return False
    if folder.is_symlink() or not folder.is_dir():
        raise PackageError(f"{folder}: the cache folder of {read.path} is not a folder; remove it and rerun")
    try:
        same = (folder / PACKAGE_NAME).read_bytes() == read.record_bytes
    except OSError:
        same = False
    if not same:
        raise PackageError(
            f"{folder}: the cache folder of {read.path} holds something else than this package; remove it and rerun"
        )
    try:
        read_folder_package(folder)  # every member's size and hash again: a changed cache is not trusted
    except PackageError as err:
        raise PackageError(f"{err}; the cache folder changed since it was unpacked, remove it and rerun") from None
    return True


def unpack_into_cache(read: ReadPackage) -> Path:
    """The package's cache folder, unpacked now unless it already is; never over anything else."""
    folder = cache_folder(read)
    if _cached(folder, read):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=TMP_SUFFIX, dir=folder.parent))
    except OSError as err:
        raise PackageError(
            f"{folder.parent}: cannot unpack {read.path} there ({err.strerror or err}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from None
    try:
        unpack_zip(read.path, staging, read)
        try:
            os.rename(staging, folder)  # a folder onto a missing name; fails if another predict was first
        except OSError:
            if not _cached(folder, read):
                raise
        fsync_path(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: unpacked into %s", read.path, folder)
    return folder


# ----------------------------------------------------------------------------- opening
def is_package(path: str | Path) -> bool:
    """A zip file, or a folder holding package.json."""
    path = Path(path)
    return (path.is_file() and zipfile.is_zipfile(path)) or (path.is_dir() and (path / PACKAGE_NAME).is_file())


def open_package(path: str | Path) -> OpenedPackage:
    """The cheap checks (module docstring), then the package unpacked (a folder is used in place)."""
    path = Path(path)
    if path.is_dir():
        read = read_folder_package(path)
        folder = path
    else:
        read = read_zip_package(path)
        folder = unpack_into_cache(read)
    opened = OpenedPackage(path, folder, read)
    _check_contents(opened)
    return opened


def _check_contents(opened: OpenedPackage) -> None:
    """Every model has its checkpoint; the contracts agree and the decision fits them (``load_runs``)."""
    from prediction.runs import load_runs

    record = opened.read.record
    if not record.models:
        raise PackageError(f"{opened.source}: {PACKAGE_NAME} lists no model")
    for i, (model, run_dir) in enumerate(zip(record.models, opened.run_dirs, strict=True)):
        if model.folder != MODEL_DIR.format(i=i):
            raise PackageError(f"{opened.source}: model {i} is in {model.folder!r}, not {MODEL_DIR.format(i=i)!r}")
        ckpt = checkpoint_path(run_dir, record.checkpoint).relative_to(opened.folder).as_posix()
        if ckpt not in record.members:
            raise PackageError(f"{opened.source}: no member {ckpt!r} ({model.folder}'s {record.checkpoint} checkpoint)")
    config = PredictConfig(checkpoint=record.checkpoint, postprocessing=_str(opened.postprocessing))
    try:
        load_runs(opened.run_dirs, config)
    except PancreasError as err:
        raise PackageError(f"{opened.source}: {err}") from None


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def resolve_models(
    run_dirs: str | Path | Sequence[str | Path], config: PredictConfig
) -> tuple[str | Path | Sequence[str | Path], PredictConfig, OpenedPackage | None]:
    """``predict``'s models: a package given alone becomes its run folders, checkpoint and decision."""
    given = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    missing = [p for p in given if Path(p).suffix.lower() == ".zip" and not Path(p).exists()]
    if missing:
        raise PackageError(f"{missing[0]}: no such model package")
    packages = [p for p in given if is_package(p)]
    if not packages:
        return run_dirs, config, None
    if len(given) > 1:
        raise PackageError(f"{packages[0]}: a model package is given alone (it holds its whole ensemble)")
    if config.postprocessing:
        raise PackageError(
            f"--postprocessing {config.postprocessing}: {packages[0]} carries its own postprocessing decision; "
            "give the package alone"
        )
    opened = open_package(packages[0])
    record = opened.read.record
    if config.checkpoint != record.checkpoint:
        log.info("%s holds the %s checkpoints: predicting with them", opened.source, record.checkpoint)
    config = dataclasses.replace(config, checkpoint=record.checkpoint, postprocessing=_str(opened.postprocessing))
    log.info("%s: package %s, %d model(s), checks passed", opened.source, opened.sha256[:KEY_HEX], len(record.models))
    return opened.run_dirs, config, opened


# ----------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class Verified:
    """What ``verify_package`` found."""

    opened: OpenedPackage
    max_difference: float  # on the probe, over every model
    tolerance: float


def verify_package(path: str | Path) -> Verified:
    """``open_package``, then every model loaded and run on the probe against its recorded output."""
    from prediction.runs import load_predict_fn

    opened = open_package(path)
    record = opened.read.record
    with np.load(opened.folder / PROBE_NAME, allow_pickle=False) as probe:
        recorded = {k: probe[k] for k in probe.files}
    if PROBE_INPUT not in recorded:
        raise PackageError(f"{opened.source}: {PROBE_NAME} holds no {PROBE_INPUT!r} window")
    worst = 0.0
    for i, (model, run_dir) in enumerate(zip(record.models, opened.run_dirs, strict=True)):
        key = f"output_{i}"
        if key not in recorded:
            raise PackageError(f"{opened.source}: {PROBE_NAME} holds no {key!r} for {model.folder}")
        found = load_predict_fn(run_dir, record.checkpoint)(recorded[PROBE_INPUT])
        difference = probe_difference(recorded[key], found, f"{opened.source}: {model.folder}")
        if not difference <= record.probe_tolerance:
            raise PackageError(
                f"{opened.source}: {model.folder} gives probabilities on the probe that differ from the recorded "
                f"ones by up to {difference:.3g} (tolerance {record.probe_tolerance:g})"
            )
        worst = max(worst, difference)
    return Verified(opened, worst, record.probe_tolerance)
