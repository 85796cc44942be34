"""What the code runs on and with: devices, package versions, TensorFlow's CUDA build, two checks.

``visible_gpus`` is the one place GPUs are listed (tests replace it); TensorFlow is imported only
inside the functions that need it. See docs/explanation/internals.md#the-environment-trainingenvironmentpy.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from dataset.common.devices import Gpu, cpu_threads, visible_gpus
from dataset.contract.run import EnvironmentRecord

# (shown name, distribution names to look up); hdf5 is the library h5py was built with
PACKAGES = (
    ("tensorflow", ("tensorflow", "tensorflow-cpu")),
    ("keras", ("keras",)),
    ("numpy", ("numpy",)),
    ("SimpleITK", ("SimpleITK",)),
    ("h5py", ("h5py",)),
    ("hdf5plugin", ("hdf5plugin",)),
    ("dask", ("dask",)),
    ("elasticdeform", ("elasticdeform",)),
)
CUDA_WHEEL = "nvidia-cudnn-cu12"  # one of the CUDA libraries `pip install .[gpu]` (tensorflow[and-cuda]) brings
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["Gpu", "cpu_threads", "visible_gpus"]  # moved to dataset.common.devices; callers import them here too


def describe_devices(gpus: list[Gpu]) -> str:
    """``GPU:0 (NVIDIA H100 80GB HBM3), GPU:1 (...)`` or ``CPU only (no GPU visible)``."""
    return ", ".join(g.label() for g in gpus) if gpus else "CPU only (no GPU visible)"


def package_versions() -> dict[str, str | None]:
    """Installed versions (``None``: not installed), read from package metadata without importing."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for shown, names in PACKAGES:
        found[shown] = next((v for v in map(_version, names) if v), None)
        if shown == "h5py":
            found["hdf5"] = _hdf5_version()
    found[CUDA_WHEEL] = _version(CUDA_WHEEL)
    return found


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hdf5_version() -> str | None:
    try:
        import h5py
    except ImportError:
        return None
    return h5py.version.hdf5_version


def cuda_build() -> dict[str, str | None]:
    """The CUDA and cuDNN versions TensorFlow was built against (``None``: not a CUDA build)."""
    try:
        import tensorflow as tf
    except ImportError:
        return {"cuda": None, "cudnn": None}
    info = tf.sysconfig.get_build_info()
    return {"cuda": info.get("cuda_version"), "cudnn": info.get("cudnn_version")}


def check_blosc() -> str:
    """Write and read back a small Blosc-LZ4 dataset, the shards' codec: ``ok`` or what failed."""
    try:
        import h5py
        import numpy as np

        from dataset.contract.store import compression

        data = (np.arange(16 * 16 * 16) % 251).astype(np.uint8).reshape(16, 16, 16)
        with tempfile.TemporaryDirectory(prefix="pancreas-env-") as folder:
            path = Path(folder) / "blosc.h5"
            with h5py.File(path, "w") as f:
                f.create_dataset("x", data=data, chunks=(8, 8, 8), **compression())
            with h5py.File(path, "r") as f:
                back = f["x"][...]
        return "ok" if np.array_equal(back, data) else "failed: the data read back differs from what was written"
    except Exception as err:
        return f"failed: {type(err).__name__}: {err} (reinstall hdf5plugin: pip install --force-reinstall hdf5plugin)"


def check_elasticdeform() -> str:
    """Import elasticdeform (the index stage's augmentation): ``ok``, or the error and the command that fixes it."""
    from dataset.common.imports import DependencyError, import_elasticdeform

    try:
        import_elasticdeform()
    except DependencyError as err:
        return f"failed: {err}"
    return "ok"


def git_commit(root: Path = PACKAGE_ROOT) -> str | None:
    """``git rev-parse HEAD`` of the checkout this code runs from; ``None`` for an installed copy."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    # an installed copy inside some other checkout (site-packages in a venv in a repo) is not that repo's code
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
        return None
    return lines[1]


def git_dirty(root: Path = PACKAGE_ROOT) -> bool | None:
    """Whether the checkout's tracked files differ from its commit (``git status --porcelain``);
    ``None`` where ``git_commit`` is ``None``. A run from edited code cannot be rebuilt from the commit."""
    if git_commit(root) is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def collect_environment(epoch: int = 0, execution: dict[str, Any] | None = None) -> EnvironmentRecord:
    """Everything above in one record; ``epoch``: the epoch a training start begins at."""
    versions = package_versions()
    try:
        gpus = visible_gpus()
    except ImportError:
        gpus = []
    return EnvironmentRecord(
        epoch=epoch,
        started_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        git_commit=git_commit(),
        git_dirty=git_dirty(),
        platform=platform.platform(),
        packages=versions,
        gpus=[
            {
                "name": g.name,
                "description": g.description,
                "compute_capability": list(g.compute_capability) if g.compute_capability else None,
            }
            for g in gpus
        ],
        cuda_build=cuda_build(),
        cpu_threads=cpu_threads(),
        checks={"packages": _missing(versions), "blosc": check_blosc(), "elasticdeform": check_elasticdeform()},
        execution=dict(execution or {}),
    )


def _missing(versions: dict[str, str | None]) -> str:
    absent = [name for name, _ in PACKAGES if versions.get(name) is None]
    return f"failed: not installed: {', '.join(absent)} (make install)" if absent else "ok"


def environment_lines(record: EnvironmentRecord) -> list[str]:
    """``pancreas env``'s report: one ``name  value`` line per item, checks last."""
    packages = dict(record.packages)
    cuda_wheel = packages.pop(CUDA_WHEEL, None)
    rows = [(name, version or "not installed") for name, version in packages.items()]
    gpus = [Gpu(g["name"], g.get("description") or "") for g in record.gpus]
    devices = describe_devices(gpus) if packages.get("tensorflow") else "unknown (TensorFlow is not installed)"
    if not gpus and packages.get("tensorflow"):
        devices += "; on a GPU machine: make install-gpu, and check nvidia-smi and CUDA_VISIBLE_DEVICES"
    build = record.cuda_build
    rows += [
        ("devices", devices),
        ("cuda (TF build)", build.get("cuda") or "none (not a CUDA build of TensorFlow)"),
        ("cudnn (TF build)", build.get("cudnn") or "none"),
        (
            "cuda libraries",
            f"{CUDA_WHEEL} {cuda_wheel}"
            if cuda_wheel
            else "not installed from pip (make install-gpu adds them: tensorflow[and-cuda])",
        ),
        ("cpu threads", str(record.cpu_threads)),
        ("platform", record.platform),
        (
            "git commit",
            (record.git_commit or "unknown (not a git checkout)")
            + (" (uncommitted changes)" if record.git_dirty else ""),
        ),
    ]
    rows += [(f"check {name}", result) for name, result in record.checks.items()]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def checks_passed(record: EnvironmentRecord) -> bool:
    return all(result == "ok" for result in record.checks.values())


__all__ = [
    "Gpu",
    "check_blosc",
    "check_elasticdeform",
    "checks_passed",
    "collect_environment",
    "cpu_threads",
    "cuda_build",
    "describe_devices",
    "environment_lines",
    "git_commit",
    "package_versions",
    "visible_gpus",
]
