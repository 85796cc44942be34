"""Load commented YAML files into frozen dataclasses.

Every stage's parameters live in one frozen dataclass whose field defaults are the
documented defaults (the YAML files under ``configs/`` repeat them with comments; a
test keeps the two equal). Unknown keys are rejected with the key named, because a
misspelt key that is silently ignored is the most common way a run ends up using a
default the user thought they had changed. Every value is checked against its field's
type before any stage runs (a nested section must be a mapping of its own keys, ``true``
is not a number), and each error is one line naming the file, the dotted key and the value.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names it."""


SCALARS = (bool, int, float, str)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML value against its field's annotation and coerce YAML's shapes into it
    (lists into tuples, mappings into nested dataclasses, ints into floats).

    Every field is checked here, before any dataclass is built, so a wrong type never
    reaches a stage: ``model: 3`` or ``elastic: null`` would otherwise pass through a
    frozen dataclass untouched and fail much later, far from the file that caused it.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, typing.get_args(annotation), where)
    if dataclasses.is_dataclass(annotation):
        return _convert_section(value, annotation, where)
    if origin is tuple:
        return _convert_tuple(value, typing.get_args(annotation), where)
    if annotation in SCALARS:
        return _convert_scalar(value, annotation, where)
    return value  # Any and other annotations are left to the dataclass's own checks


def _convert_union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    """``X | None``: null only where the annotation allows it, else the first type that fits."""
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
        return _convert(value, options[0], where)
    for option in options:
        try:
            return _convert(value, option, where)
        except ConfigError:
            continue
    names = " or ".join(getattr(a, "__name__", str(a)) for a in options)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def _convert_section(value: Any, cls: type, where: str) -> Any:
    """A nested dataclass takes a mapping of its own keys, never a scalar, list or null."""
    if not isinstance(value, dict):
        keys = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
        raise ConfigError(f"{where}: expected a mapping (keys: {keys}), got {value!r}")
    return from_dict(cls, value, where=where)


def _convert_tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    elif not args:
        return tuple(value)
    elif len(args) != len(value):
        raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)}")
    return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _convert_scalar(value: Any, annotation: type, where: str) -> Any:
    """YAML's ``true`` is not a number and ``1`` is not a flag (Python's bool is an int)."""
    if isinstance(value, bool) != (annotation is bool):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if annotation is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting keys the dataclass does not have.

    A key listed in the class's ``MOVED_KEYS`` (key -> where it went) is refused with
    that explanation rather than as a misspelling.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    moved = getattr(cls, "MOVED_KEYS", {})
    for key in data:
        if key in moved:
            raise ConfigError(f"{where}.{key}: this key moved: {moved[key]} (this file says {data[key]!r})")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def load_config(cls: type[T], path: str | Path | None) -> T:
    """Load ``path`` (YAML) into ``cls``; ``None`` gives the defaults."""
    if path is None:
        return cls()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    return from_dict(cls, data, where=str(path))


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def check_patch_fits_depth(patch_zyx: Sequence[int], depth: int, what: str) -> tuple[int, ...]:
    """A U-Net pools ``depth`` times, so every patch edge must be a positive multiple of 2**depth.

    The one copy of this rule: ``pancreas train`` checks the index's patch sizes with it and
    ``pancreas predict`` its sliding window (the index itself knows no model depth).
    """
    factor = 2**depth
    size = tuple(int(s) for s in patch_zyx)
    if len(size) != 3 or any(s < factor or s % factor for s in size):
        raise ConfigError(
            f"{what} patch size {size} (z, y, x) cannot go through a U-Net of depth {depth}: every edge "
            f"must be a positive multiple of {factor}, since the U-Net halves it {depth} times (2**{depth} = {factor})"
        )
    return size
