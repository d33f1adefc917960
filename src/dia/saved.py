"""How every saved component (a detector, a diffusion model) is written and read back: a folder
with ``config.json`` and ``model.safetensors``, swapped in whole, read with no pickle.

``config.json`` holds the component's settings and three fields of its own: ``format`` (what
the folder holds), ``format_version`` (how it was written) and ``weights_digest`` (which
weights it was saved with). The weights carry a copy of that config in their metadata, so
weights and a ``config.json`` from different saves are found out when they are read, while a
``config.json`` edited by hand, which keeps its digest, is read as edited: the component then
checks its settings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .io import read_json, save_dir_atomically, saved_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_KEY = "format"
VERSION_KEY = "format_version"
DIGEST_KEY = "weights_digest"
# The key of the config's copy in the weights' metadata. One key: safetensors writes its
# metadata map in no fixed order, and identical components should give identical files.
COPY_KEY = "dia_config"


class Loaded(NamedTuple):
    """A component read by :func:`load_component`: its settings (``config.json`` less the
    fields of :mod:`dia.saved`), its tensors by name, the format version it was saved with,
    and the folder it was read from (where a save killed between its renames left it)."""

    config: dict
    tensors: dict[str, torch.Tensor]
    version: int
    folder: Path


def save_component(
    folder: str | Path,
    kind: str,
    version: int,
    config: dict,
    tensors: dict[str, torch.Tensor],
    extra_files: dict[str, bytes | str] | None = None,
) -> Path:
    """Write ``config.json`` (``config`` with ``format`` = ``kind``, ``format_version`` =
    ``version`` and ``weights_digest``), ``model.safetensors`` (``tensors``, on the CPU, with a
    copy of that config) and ``extra_files`` (name -> contents) into folder ``folder``: all of
    them or, when the save fails, none (an earlier folder there is kept). Returns the folder.
    Equal arguments give equal bytes."""
    taken = [key for key in (FORMAT_KEY, VERSION_KEY, DIGEST_KEY) if key in config]
    extra = dict(extra_files or {})
    clashing = [n for n in extra if n in (CONFIG_NAME, WEIGHTS_NAME) or Path(n).name != n]
    if taken or clashing:
        raise ValueError(f"{taken or clashing} are written by save_component itself")
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    whole = {FORMAT_KEY: kind, VERSION_KEY: version, **config, DIGEST_KEY: digest(tensors)}
    text = json.dumps(whole, indent=2)

    def write(staging: Path) -> None:
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={COPY_KEY: text})
        (staging / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
        for name, contents in extra.items():
            data = contents.encode("utf-8") if isinstance(contents, str) else contents
            (staging / name).write_bytes(data)

    return save_dir_atomically(folder, write)


def load_component(
    folder: str | Path,
    kind: str,
    versions: range,
    *,
    old_version_key: str | None = None,
    unnamed: bool = False,
) -> Loaded:
    """Read a folder written by :func:`save_component` as component ``kind``, whose format
    versions ``versions`` this dia reads. Earlier layouts: ``old_version_key`` names the field
    that held the version before ``format_version`` (where a config has it, it is the
    version; a config with neither is version 0), and ``unnamed`` takes a config without
    ``format`` (written before it was) as this kind. Weights without a copy of the config
    (written before they carried one) are read as they are.

    Errors are one line that names the file: FileNotFoundError for a missing file, ValueError
    for another kind, a version this dia does not read, a file that cannot be read, or
    weights and a config from different saves."""
    folder = saved_dir(folder)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    name = kind.replace("-", " ")
    for file in (config_file, weights_file):
        if not file.is_file():
            raise FileNotFoundError(f"{name} file missing: {file}")
    config = read_json(config_file)
    found = config.get(FORMAT_KEY)
    if found != kind and not (unnamed and FORMAT_KEY not in config):
        raise ValueError(f"{folder} does not hold a {name} (format={found!r})")
    version = _version(config, versions, old_version_key, config_file)
    tensors, copy = _read_weights(weights_file)
    if copy is not None and not _same_save(copy, config):
        raise ValueError(
            f"{weights_file} and {config_file} come from different saves (interrupted save?)"
        )
    own = (FORMAT_KEY, VERSION_KEY, DIGEST_KEY, old_version_key)
    return Loaded({k: v for k, v in config.items() if k not in own}, tensors, version, folder)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """32 hex digits naming CPU ``tensors`` by their names, dtypes, shapes and values."""
    hashed = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        hashed.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        hashed.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return hashed.hexdigest()


def _version(config: dict, versions: range, old_key: str | None, file: Path) -> int:
    key = old_key if old_key is not None and old_key in config else VERSION_KEY
    if key not in config and 0 not in versions:
        raise ValueError(f"{file} lacks {VERSION_KEY}: it was not written by dia")
    version = config.get(key, 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"{file}: {key}={version!r}; expected a non-negative integer")
    if version > versions[-1]:
        raise ValueError(
            f"{file.parent} was saved by a newer dia ({key} {version}); this one reads "
            f"{_describe(versions)}"
        )
    if version not in versions:
        raise ValueError(f"{file}: {key}={version}; this dia reads {_describe(versions)}")
    return version


def _describe(versions: range) -> str:
    if len(versions) == 1:
        return f"version {versions[0]}"
    return f"versions {versions[0]} to {versions[-1]}"


def _read_weights(file: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors of ``file`` and the config copied into it (None where it has none)."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            copy = (f.metadata() or {}).get(COPY_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
        copy = None if copy is None else json.loads(copy)
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"cannot read {file}: {err}") from err
    if copy is not None and not isinstance(copy, dict):
        raise ValueError(f"cannot read {file}: its copy of the config is not a JSON object")
    return tensors, copy


def _same_save(copy: dict, config: dict) -> bool:
    """Whether weights holding ``copy`` were saved with ``config``: the same digest, or, for
    a copy written before there was one, the same config."""
    if DIGEST_KEY in copy:
        return config.get(DIGEST_KEY) == copy[DIGEST_KEY]
    return copy == config
