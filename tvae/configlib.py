"""The config layer every task shares: typed dataclasses addressed by dotted keys, and the ``--set`` grammar.

A task's configuration is a tree of dataclasses. Every leaf is reachable as a dotted key (``optim.lr``).
Values are checked against the field's annotation (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
``list[...]``, a nested dataclass); an int is accepted for a float, a whole float for an int, nothing else is
converted. Unknown keys, sections given a value and wrong types raise `ConfigError` naming the key.

``--set KEY=VALUE`` values (``tvae.train``, ``tvae.bench``, ``tvae.modular_addition``, ``study.run``) follow one
grammar, `parse_value`: a JSON value (``1e-3``, ``3``, ``true``, ``null``, ``[1, 2]``, ``"text"``), else a
decimal number JSON does not write (``.5``, ``1.``, ``+2``), else the text itself as a string (``cosine``).
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any, Literal, Mapping


class ConfigError(ValueError):
    """A configuration key is unknown, or its value has the wrong type or range. The message names the key."""


# ------------------------------------------------------------------------------------------- --set values

_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_value(text: str) -> Any:
    """One ``--set`` value: JSON, else a decimal number, else the text (see the module docstring)."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    if _DECIMAL.fullmatch(text):
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?\d+", text) else number
    return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"a.b=1e-3"`` -> ``("a.b", 0.001)``."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"--set {text!r} is not KEY=VALUE")
    return key.strip(), parse_value(raw)


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """Repeated ``--set`` options as one dict of dotted keys (a later value of the same key wins)."""
    return dict(parse_assignment(item) for item in items or [])


# ------------------------------------------------------------------------------------------- checking


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the annotation ``tp`` (int -> float and whole float -> int only)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(c) for c in choices)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a bool, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a str, got {type(value).__name__} {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [coerce(f"{key}[{i}]", item, item_tp) for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover


def _unknown(path: str, node_cls: type, prefix: str) -> ConfigError:
    known = ", ".join(prefix + f.name for f in dataclasses.fields(node_cls))
    return ConfigError(f"unknown config key {path!r}; known keys here: {known}")


def from_dict(cls: type, data: Mapping[str, Any], *, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping; missing keys keep their defaults."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown(f"{prefix}{key}", cls, prefix)
    return cls(**{key: coerce(prefix + key, value, hints[key]) for key, value in data.items()})


def replace(obj: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of dataclass ``obj`` with the dotted ``overrides`` applied (works on frozen dataclasses; each
    rebuilt section runs its own ``__post_init__`` checks)."""
    return _replace(obj, dict(overrides), "")


def _replace(obj: Any, updates: dict[str, Any], prefix: str) -> Any:
    hints = _hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in updates.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys are dotted strings, got {key!r}")
        head, _, rest = key.partition(".")
        if head not in names:
            raise _unknown(prefix + head, type(obj), prefix)
        section = dataclasses.is_dataclass(hints[head])
        if section and not rest:
            if isinstance(value, Mapping):
                nested.setdefault(head, {}).update(flatten_mapping(value))
                continue
            raise ConfigError(f"{prefix + head!r} is a section; set one of its keys ({prefix}{head}.<name>)")
        if not section and rest:
            raise ConfigError(f"unknown config key {prefix + key!r}: {prefix + head!r} is not a section")
        if section:
            nested.setdefault(head, {})[rest] = value
        else:
            changes[head] = coerce(prefix + key, value, hints[head])
    for head, sub in nested.items():
        changes[head] = _replace(getattr(obj, head), sub, prefix + head + ".")
    return dataclasses.replace(obj, **changes)


def set_key(obj: Any, key: str, value: Any) -> None:
    """Set the dotted ``key`` of the (mutable) dataclass ``obj`` in place, after checking its type."""
    parts = key.split(".")
    node: Any = obj
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        prefix = ".".join(parts[:i]) + "." if i else ""
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key {path!r}: {prefix[:-1]!r} is not a section")
        if part not in {f.name for f in dataclasses.fields(node)}:
            raise _unknown(path, type(node), prefix)
        if i == len(parts) - 1:
            tp = _hints(type(node))[part]
            if dataclasses.is_dataclass(tp) and not isinstance(value, Mapping):
                raise ConfigError(f"{key!r} is a section; set one of its keys ({key}.<name>)")
            setattr(node, part, coerce(key, value, tp))
        else:
            node = getattr(node, part)


def flatten_mapping(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten_mapping(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flatten(obj: Any) -> dict[str, Any]:
    """Every leaf of dataclass ``obj`` as ``{dotted key: value}`` (the inverse of `replace` on the defaults)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
            else:
                out[prefix + f.name] = value

    walk(obj, "")
    return out


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the dataclass type ``cls``."""
    keys: list[str] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys
