"""One codec for every JSON hand-over record: frozen dataclass <-> JSON, with a format version.

A record class declares ``KIND`` (its name in ``MIGRATIONS`` and in messages), ``ERROR``
(the one error class its file raises) and a first field
``version: int = field(default=N, kw_only=True)``, written first; its fields are documented
on the class and in docs/reference/contract.md. Reading goes through
``configio.from_dict``, so unknown keys, missing keys and wrong types are refused the
same way as in a config file, naming the file and the dotted key. Here rather than in
``configio``: configs have no version, no migrations and no fields left out of the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dataset.common.atomic import ReadError, read_json, write_json_atomic
from dataset.common.configio import ConfigError, from_dict
from dataset.common.errors import PancreasError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")
OMIT_EMPTY = "omit_empty"  # field metadata: left out of the file when None or ""

# (kind, version read) -> function turning that file's dict into the next version's dict
# (which sets "version" to the new number). Empty: no format has been released yet.
MIGRATIONS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


class ContractError(PancreasError, ValueError):
    """A hand-over file that cannot be used; the message names the file and the key."""


def optional(default: Any = None) -> Any:
    """A field left out of the file while it is None or "" (unknown), so a record read and
    written again is the same JSON."""
    return dataclasses.field(default=default, metadata={OMIT_EMPTY: True})


def plain(value: Any) -> Any:
    """JSON's shapes: records to dicts, tuples to lists, numpy scalars to Python numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return record_to_dict(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def record_to_dict(record: Any) -> dict[str, Any]:
    """A JSON-ready dict of ``record``, keys in field order, ``optional`` fields left out while unknown."""
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.metadata.get(OMIT_EMPTY) and (value is None or value == ""):
            continue
        out[f.name] = plain(value)
    return out


def current_version(cls: type) -> int:
    """The version this code writes and reads for ``cls`` (its ``version`` field's default)."""
    default = next(f.default for f in dataclasses.fields(cls) if f.name == "version")
    if not isinstance(default, int):
        raise TypeError(f"{cls.__name__}.version needs an int default (the format version it writes)")
    return default


def _error(cls: type) -> type[Exception]:
    return getattr(cls, "ERROR", ContractError)


def _migrate(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Apply ``MIGRATIONS`` from the file's version up to this one, or refuse the file."""
    kind, current, version = getattr(cls, "KIND", cls.__name__), current_version(cls), data.get("version")
    while isinstance(version, int) and version != current and (kind, version) in MIGRATIONS:
        data = MIGRATIONS[(kind, version)](data)
        version = data.get("version")
    if version == current:
        return data
    if not isinstance(version, int) or isinstance(version, bool):
        said = "no format version" if version is None else f"format version {version!r}"
        raise _error(cls)(f"{where}: written by an older pancreas-seg ({said}; this one reads {current})")
    age = "a newer" if version > current else "an older"
    raise _error(cls)(f"{where}: written by {age} pancreas-seg (format version {version}; this one reads {current})")


def record_from_dict(cls: type[R], data: Any, where: str | Path) -> R:
    """``cls`` built from a file's JSON, migrated to this version; ``cls.ERROR`` with one line otherwise."""
    where = str(where)
    error = _error(cls)
    if not isinstance(data, dict):
        raise error(
            f"{where}: not a {getattr(cls, 'KIND', cls.__name__)} (expected a JSON object, got {type(data).__name__})"
        )
    data = _migrate(cls, data, where)
    try:
        return from_dict(cls, data, where)
    except ConfigError as err:
        raise error(str(err)) from None


def write_record(path: str | Path, record: Any, point: str) -> None:
    """Write ``record`` atomically and durably (crash point ``point``)."""
    write_json_atomic(path, record_to_dict(record), point=point)


def read_record(path: str | Path, cls: type[R], what: str, hint: str = "") -> R:
    """The record in ``path``; ``cls.ERROR`` with one line when it is missing, unreadable or wrong."""
    try:
        data = read_json(path, what, hint)
    except ReadError as err:
        raise _error(cls)(str(err)) from None
    return record_from_dict(cls, data, path)
