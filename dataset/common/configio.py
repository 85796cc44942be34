"""Load commented YAML files into frozen dataclasses.

Every stage's parameters live in one frozen dataclass whose field defaults are the
documented defaults (the YAML files under ``configs/`` repeat them with comments; a
test keeps the two equal). Unknown keys are rejected with the key named, because a
misspelt key that is silently ignored is the most common way a run ends up using a
default the user thought they had changed. Every value is checked against its field's
type before any stage runs (a nested section must be a mapping of its own keys, ``true``
is not a number), and each error is one line naming the file, the dotted key and the value.

``--set KEY=VALUE`` on the command line changes one value on top of the file (or the
defaults): the value is read as YAML and goes through the same checks, so a misspelt key
or a wrong type is refused the same way, named ``--set model.depth`` instead of the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from dataset.common.errors import PancreasError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(PancreasError, ValueError):
    """A configuration file or value that cannot be used; the message names it."""


SCALARS = (bool, int, float, str)
# how errors in command-line overrides are named: "--set model.depth: expected int, got 'x'"
OVERRIDE = "--set"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that ``1e-4`` is a float (PyYAML wants ``1.0e-4``).

    Without this, ``learning_rate: 1e-4`` or ``--set learning_rate=1e-4`` would be refused
    as "expected float, got '1e-4'", which reads like a bug of ours.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _child(where: str, key: Any) -> str:
    """The name of ``key`` inside ``where``: ``c.yaml.model.depth``, or ``--set model.depth``."""
    if where == OVERRIDE:
        return f"{where} {key}"
    return f"{where}.{key}"


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
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _convert_section(value, annotation, where)
    if origin is tuple:
        return _convert_tuple(value, typing.get_args(annotation), where)
    if origin is list:
        return _convert_list(value, typing.get_args(annotation), where)
    if origin in (dict, Mapping):
        return _convert_mapping(value, typing.get_args(annotation), where)
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


def _convert_list(value: Any, args: tuple[Any, ...], where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    item = args[0] if args else Any
    return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]


def _convert_mapping(value: Any, args: tuple[Any, ...], where: str) -> dict:
    """``dict[str, X]`` / ``Mapping[str, X]``: a mapping of string keys, each value checked as X."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{where}: expected a mapping with string keys, got {value!r}")
    item = args[1] if len(args) == 2 else Any
    return {k: _convert(v, item, _child(where, k)) for k, v in value.items()}


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
            said = "given" if where.startswith(OVERRIDE) else "this file says"
            raise ConfigError(f"{_child(where, key)}: this key moved: {moved[key]} ({said} {data[key]!r})")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    kwargs = {k: _convert(v, hints[k], _child(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _required(f: dataclasses.Field) -> bool:
    return f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def load_config(cls: type[T], path: str | Path | Sequence[str | Path] | None, overrides: Sequence[str] = ()) -> T:
    """Load ``path`` (YAML, or several YAML files layered in order) into ``cls``, then apply
    ``overrides`` (``KEY=VALUE`` strings from ``--set``, dotted keys for sections, in order);
    ``None`` (or no file) starts from the defaults.

    Each file is checked on its own first, so its errors name the file. A later file is
    merged into the config resolved so far like ``--set`` (a section key by key, so a recipe
    file that names ``model.norm`` keeps the earlier file's ``model.depth``) and the result
    is checked again, naming that file. The overrides are then merged into the resolved
    config (every key, defaults included, so ``--set nsd_tolerance_mm.tumour=2`` keeps the
    other regions) and the result is checked again, naming the ``--set`` key.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    config = from_dict(cls, None)
    for n, one in enumerate(paths):
        data = _read_yaml(Path(one))
        layer = from_dict(cls, data, where=str(one))  # the file alone: its own errors name it
        if n == 0:
            config = layer
            continue
        merged = to_dict(config)
        for key, value in (data or {}).items():
            merged = _merge(merged, (key,), value)
        config = from_dict(cls, merged, where=f"{one} (over {', '.join(str(p) for p in paths[:n])})")
    if not overrides:
        return config
    merged = to_dict(config)
    for text in overrides:
        keys, value = parse_override(text)
        merged = _merge(merged, keys, value)
    return from_dict(cls, merged, where=OVERRIDE)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        _refuse_duplicate_keys(path, yaml.compose(text, Loader=_Loader))
        return yaml.load(text, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None


def _refuse_duplicate_keys(path: Path, node: yaml.Node | None) -> None:
    """A key given twice in one mapping: PyYAML keeps the last silently, hiding the first from its reader."""
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    where = f"{path}:{key.start_mark.line + 1}:{key.start_mark.column + 1}"
                    raise ConfigError(f"{where}: key {key.value!r} is given twice; keep one")
                seen.add(key.value)
            _refuse_duplicate_keys(path, value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(path, item)


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"model.depth=3"`` -> ``(("model", "depth"), 3)``; the value is read as YAML
    (``[1, 2]`` a list, ``true`` a flag, ``null`` none, an empty value none)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigError(f"{OVERRIDE} {text!r}: expected KEY=VALUE with a dotted KEY (e.g. model.depth=3)")
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{OVERRIDE} {key}: value {raw!r} is not valid YAML ({problem})") from None
    return tuple(key.split(".")), value


def _merge(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``value`` at ``keys``; a mapping given for a section is merged
    into it key by key (``--set model={depth: 3}`` keeps the file's ``model.base_filters``)."""
    out = dict(data)
    head, rest = keys[0], keys[1:]
    current = out.get(head)
    if rest:
        out[head] = _merge(current if isinstance(current, dict) else {}, rest, value)
    elif isinstance(current, dict) and isinstance(value, dict):
        for key, item in value.items():
            out[head] = _merge(out[head], (key,), item)
    else:
        out[head] = value
    return out


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


def flatten_mapping(value: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>.a.b": 1}`` (tuples as lists), to compare two configs key by key
    and name the key that differs (an ensemble's or a fine-tuning source's preprocessing)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten_mapping(item, f"{prefix}.{key}"))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}
