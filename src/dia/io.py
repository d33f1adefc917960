"""Crash-safe writing: a finished run or a saved model is never left half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def usual_mode(*paths: Path) -> None:
    """Give temporary files and folders the permissions a plain ``open`` or ``mkdir`` would
    have (the temporary ones are private to the owner, so that others on a shared machine
    could not read a saved model or result)."""
    umask = os.umask(0)  # read by setting it: the only portable way
    os.umask(umask)
    for path in paths:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_json(path: str | Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        usual_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> dict:
    """Read a JSON object, with an error that names the file when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def save_dir_atomically(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Let ``write(folder)`` fill a fresh sibling folder, then swap it into ``target``.

    An exception inside ``write`` leaves any earlier ``target`` untouched; a process killed
    between the two renames of the swap leaves it as ``.NAME.old``, where :func:`saved_dir`
    finds it.
    """
    target = saved_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(staging)
        # Some writers (safetensors among them) create owner-only files too.
        usual_mode(staging, *staging.rglob("*"))
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def saved_dir(target: str | Path) -> Path:
    """``target``, a folder written by :func:`save_dir_atomically`; when a save was killed
    between its two renames (the earlier folder moved aside to ``.NAME.old``, the new one not
    yet in place), the earlier folder is moved back first, or read where it is when that is
    not allowed."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if target.exists() or not old.is_dir():
        return target
    try:
        os.replace(old, target)
    except OSError:  # not allowed, or another process moved it back first
        return target if target.exists() else old
    return target
