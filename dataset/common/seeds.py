"""Seeds derived from names, identical on every machine and NumPy version.

Hashing (seed, purpose, case, position, ...) gives each decision its own stream, so
adding a case or changing one case's patches never reshuffles the others, and the
order of a directory listing or of Dask task completion cannot leak into the result.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit non-negative integer from any printable parts."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") >> 1
