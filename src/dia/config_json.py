"""Settings dataclasses to and from JSON: :func:`to_dict` writes them, :func:`from_dict` reads
them back with every value checked against its field's type. A section written before its
settings were grouped (:mod:`dia.config_tree`) is read into its groups."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .config_tree import field_types, has_groups, nest


def to_dict(config: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict, name: str | None = None) -> Any:
    """Build ``cls`` from a dict written by :func:`to_dict` (or by a dia from before the
    settings were grouped). Unknown keys, and values not of their field's type (a string for a
    number, NaN or infinity for a float, a list of the wrong length), are errors that name the
    setting (``name``, default the class's, and its path) and what it must be."""
    name = name or cls.__name__
    if not isinstance(values, dict):
        raise ValueError(f"{name} settings must be a JSON object, got {values!r}")
    hints = field_types(cls)
    if has_groups(cls):
        values = nest(cls, values)
    unknown = set(values) - set(hints)
    if unknown:
        raise ValueError(f"unknown {name} settings: {sorted(unknown)}")
    kwargs = {key: _typed(value, hints[key], f"{name}.{key}") for key, value in values.items()}
    return cls(**kwargs)


def _typed(value: Any, annotation: Any, name: str) -> Any:
    """``value`` as a field annotated ``annotation`` holds it (lists become tuples), or a
    ValueError naming ``name`` and the type expected."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for option in options:
        try:
            return _as_type(value, option, name)
        except ValueError:
            if len(options) == 1:
                raise
    raise ValueError(f"{name}={value!r}; expected {' or '.join(_describe(o) for o in options)}")


# What a JSON value of a plain-typed setting must be.
_PLAIN = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _as_type(value: Any, annotation: Any, name: str) -> Any:
    if annotation in _PLAIN:
        if _PLAIN[annotation](value):
            return value
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, dict):
            return from_dict(annotation, value, name)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise ValueError(f"{name}={value!r}; expected a finite number")
    elif typing.get_origin(annotation) is tuple and isinstance(value, (list, tuple)):
        items = _tuple_items(annotation, len(value))
        if items is not None:
            return tuple(
                _typed(v, t, f"{name}[{i}]")
                for i, (v, t) in enumerate(zip(value, items, strict=True))
            )
    raise ValueError(f"{name}={value!r}; expected {_describe(annotation)}")


def _tuple_items(annotation: Any, length: int) -> tuple | None:
    """The item types of a tuple annotation for a value of ``length`` items, or None when it
    cannot have that many."""
    items = typing.get_args(annotation)
    if len(items) == 2 and items[1] is Ellipsis:
        items = (items[0],) * length
    return items if len(items) == length else None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _describe(annotation: Any) -> str:
    """How an error names a type: 'an integer', 'null', 'a list of 2 numbers', ..."""
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    if annotation is type(None):
        return "null"
    if annotation in words:
        return words[annotation]
    if dataclasses.is_dataclass(annotation):
        return f"an object of {annotation.__name__} settings"
    items = typing.get_args(annotation)
    if len(items) == 2 and items[1] is Ellipsis:
        return f"a list of {_describe(items[0]).split(' ', 1)[-1]}s"
    if len(set(items)) == 1:
        return f"a list of {len(items)} {_describe(items[0]).split(' ', 1)[-1]}s"
    return f"a list of {len(items)} values"
