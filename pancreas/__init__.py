"""Command-line front end and the end-to-end demo. The library lives in the stage packages."""

from __future__ import annotations

from dataset.common.version import DISTRIBUTION, package_version

__all__ = ["DISTRIBUTION", "package_version"]
