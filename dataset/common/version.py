"""The installed version of this project, for outputs that record what produced them."""

from __future__ import annotations

DISTRIBUTION = "pancreas-seg"  # the name in pyproject.toml


def package_version() -> str:
    """The installed version; from a source checkout that was never installed, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return _pyproject_version()


def _pyproject_version() -> str:
    import tomllib
    from pathlib import Path

    try:
        with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"
