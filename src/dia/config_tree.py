"""Settings dataclasses that nest: a section (``DetectorConfig``) holds groups (its network,
its optimisation, ...), each a dataclass of plain settings.

Every plain setting of a section also has a flat name, unique in the section: its group's
``PREFIX`` and its own name (``t_min``, ``dicom_window``). The flat name is what its flag is
made of (``--t-min``), what ``--set detector.t_min=0`` and ``set_params(detector__t_min=0)``
take, and the key it had in a section's JSON before the settings were grouped.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The fields of dataclass ``cls`` by name, with their annotations resolved."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def is_group(annotation: Any) -> bool:
    """Whether a field annotated ``annotation`` is a group of settings (a dataclass)."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def has_groups(cls: type) -> bool:
    """Whether ``cls`` is a section whose settings are grouped: a group is a dataclass with a
    ``PREFIX`` (a ``RunConfig``'s sections have none: each is a section of its own)."""
    return any(is_group(a) and hasattr(a, "PREFIX") for a in field_types(cls).values())


@functools.cache
def flat_paths(cls: type) -> dict[str, tuple[str, ...]]:
    """Every plain setting of section ``cls`` by flat name: the field names that lead to it,
    in the order of the fields. A field that is a dataclass without a ``PREFIX`` (a
    ``RunConfig``'s section) counts as one setting."""
    paths: dict[str, tuple[str, ...]] = {}
    for name, annotation in field_types(cls).items():
        if is_group(annotation) and hasattr(annotation, "PREFIX"):
            for leaf, path in flat_paths(annotation).items():
                paths[annotation.PREFIX + leaf] = (name, *path)
        else:
            paths[name] = (name,)
    return paths


def leaf_field(cls: type, path: tuple[str, ...]) -> dataclasses.Field:
    """The dataclass field at the end of ``path`` in section ``cls``."""
    for name in path[:-1]:
        cls = field_types(cls)[name]
    return next(f for f in dataclasses.fields(cls) if f.name == path[-1])


def get_path(config: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``config``."""
    for name in path:
        config = getattr(config, name)
    return config


def path_of(cls: type, key: str) -> tuple[str, ...]:
    """Where setting ``key`` of section ``cls`` lives: ``key`` is its flat name (``t_min``) or
    its dotted path (``dissolving.t_min``, ``dissolving``); anything else is a ValueError."""
    if key in flat_paths(cls):
        return flat_paths(cls)[key]
    path, owner = tuple(key.split(".")), cls
    for name in path:
        if owner is None or name not in field_types(owner):
            known = ", ".join(flat_paths(cls))
            raise ValueError(f"unknown {cls.__name__} setting {key!r}; expected one of {known}")
        annotation = field_types(owner)[name]
        owner = annotation if is_group(annotation) else None
    return path


def replace_settings(config: Any, **values: Any) -> Any:
    """A copy of settings dataclass ``config`` with ``values`` set, each by flat name or path
    (:func:`path_of`): ``replace_settings(DetectorConfig(), width=8, lr=0.01)``. The copy is
    built once, so it is checked once, with every value in place."""
    nested: dict = {}
    for key, value in values.items():
        _put(nested, path_of(type(config), key), value, key)
    return _replaced(config, nested)


def _replaced(config: Any, nested: dict) -> Any:
    changes = {
        name: _replaced(getattr(config, name), value) if isinstance(value, _Nested) else value
        for name, value in nested.items()
    }
    return dataclasses.replace(config, **changes)


class _Nested(dict):
    """The values for one group, as :func:`replace_settings` gathers them (a plain dict may be
    a setting's value)."""


def _put(nested: dict, path: tuple[str, ...], value: Any, key: str) -> None:
    for name in path[:-1]:
        nested = nested.setdefault(name, _Nested())
        if not isinstance(nested, _Nested):
            raise ValueError(f"{key} is given twice: alone and in its group")
    if path[-1] in nested:
        raise ValueError(f"{key} is given twice")
    nested[path[-1]] = value


def nest(cls: type, values: dict) -> dict:
    """A section's JSON object (``values``) with the settings written at its top level, as
    before they were grouped (``{"t_min": 30}``), moved into their groups; the others, and
    names it does not know, stay where they are. A setting given in both places is an error."""
    fields = field_types(cls)
    out: dict = {}
    groups = {k: v for k, v in values.items() if k in fields and isinstance(v, dict)}
    for name, group in groups.items():
        out[name] = _Nested(group) if is_group(fields[name]) else group
    for key, value in values.items():
        if key in groups:
            continue
        path = (key,) if key in fields else flat_paths(cls).get(key, (key,))
        _put(out, path, value, key)
    return {k: dict(v) if isinstance(v, _Nested) else v for k, v in out.items()}


def flat_values(cls: type, values: dict) -> dict:
    """A section's JSON object (grouped or not) as ``{flat name: value}``; a setting it lacks
    is left out."""
    nested, flat = nest(cls, values), {}
    for name, path in flat_paths(cls).items():
        found: Any = nested
        for part in path:
            if not isinstance(found, dict) or part not in found:
                break
            found = found[part]
        else:
            flat[name] = found
    return flat


def with_default(cls: type, values: dict, name: str, default: Any) -> dict:
    """A section's JSON object (``values``), grouped (:func:`nest`), with setting ``name``
    (a flat name) set to ``default`` where it is missing."""
    nested = nest(cls, values)
    *groups, leaf = flat_paths(cls)[name]
    found = nested
    for group in groups:
        found = found.setdefault(group, {})
        if not isinstance(found, dict):
            return nested  # not an object: from_dict says what is wrong with it
    found.setdefault(leaf, default)
    return nested
