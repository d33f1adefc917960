"""Crash-safe writing: a finished run or a saved model is never left half-written."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: folders are not locked there
    fcntl = None  # type: ignore[assignment]


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


def make_parent(path: Path) -> None:
    """Create the folder ``path`` goes in, or say which part of its path is a file."""
    for folder in (path.parent, *path.parent.parents):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file, not a folder: {path} cannot go there")
        if folder.is_dir():
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file, then rename)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    make_parent(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        usual_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png(path: str | Path, picture) -> Path:
    """Save ``picture`` (a PIL image or a matplotlib figure) as a PNG at ``path``, whole or
    not at all; returns the path."""
    buffer = io.BytesIO()
    if hasattr(picture, "savefig"):
        picture.savefig(buffer, format="png")
    else:
        picture.save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
    return Path(path)


def write_csv(path: str | Path, header: list, rows: Iterable, new_name: bool = False) -> Path:
    """Write a CSV file whole or not at all (a temporary file, then a rename); returns its
    path. File names among the values are written as the file system gave them, byte for
    byte, even where they are not valid UTF-8 (Python's ``surrogateescape``: read the file
    back with ``errors="surrogateescape"`` to get the same names). ``new_name``: never replace
    a file: ``path``, or ``NAME-2.csv``, ``NAME-3.csv``, ..., the first free one taken
    atomically, so that processes writing at once each get a file of their own."""
    path = Path(path)
    make_parent(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        usual_mode(Path(tmp))
        if not new_name:
            os.replace(tmp, path)
            return path
        return _link_to_free_name(Path(tmp), path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _link_to_free_name(tmp: Path, path: Path) -> Path:
    """Give the finished file ``tmp`` the first free name of ``path``, ``NAME-2``, ... (a
    hard link fails where the name is taken; where links are not supported, the name is
    reserved by an exclusive create and the file renamed onto it)."""
    for candidate in numbered(path):
        try:
            os.link(tmp, candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError:  # no hard links on this file system
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            os.replace(tmp, candidate)
            return candidate
    raise AssertionError("unreachable")  # numbered() never ends


def new_folder(path: str | Path) -> Path:
    """Create and return ``path``, or ``NAME-2``, ``NAME-3``, ... when it exists: the first
    free name, taken atomically, so that processes starting at once never share a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for candidate in numbered(path, suffix=False):
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def numbered(path: Path, suffix: bool = True):
    """``path``, ``NAME-2.EXT``, ``NAME-3.EXT``, ... without end (``suffix`` False: the
    number after the whole name, as a folder's)."""
    yield path
    i = 2
    while True:
        if suffix:
            yield path.with_name(f"{path.stem}-{i}{path.suffix}")
        else:
            yield path.with_name(f"{path.name}-{i}")
        i += 1


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


class FolderInUse(RuntimeError):
    """Another process holds the folder (:func:`hold_folder`)."""


@contextlib.contextmanager
def hold_folder(folder: str | Path, disposable: tuple[str, ...] = ()) -> Iterator[list[Path]]:
    """Work on ``folder`` (created if need be) as its only dia process: another one asking
    for it meanwhile stops with :class:`FolderInUse`. The lock is the kernel's (``flock`` on
    the folder itself: no file is added to it), so it ends with the process however that
    ends; none is taken where the system or the file system has no ``flock``. Holding the
    folder, no other save can be under way in it, so the temporary files and folders that a
    killed save left (``.NAME.XXXX.tmp``) are removed first; yields their paths. When the work
    fails, a folder this call created that holds nothing but files named in ``disposable`` is
    removed again."""
    folder = saved_dir(folder)  # a save killed between its renames: its folder put back first
    existed = folder.exists()
    make_parent(folder / "x")
    fd = _locked(folder) if fcntl else None
    try:
        yield remove_stale_temporaries(folder)
    except BaseException:
        left = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        if not existed and left <= set(disposable):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # and with it the lock


def _locked(folder: Path) -> int | None:
    """A descriptor of ``folder``, locked; :class:`FolderInUse` when another process holds
    it; None where the file system cannot lock it (the work goes on unlocked)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderInUse(
            f"{folder} is in use by another dia process; wait until it ends, or choose "
            "another --out"
        ) from None
    except OSError:  # no locks here (some network file systems)
        os.close(fd)
        return None
    return fd


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files and folders of unfinished saves in ``folder`` (those of
    :func:`write_text`, :func:`write_csv` and :func:`save_dir_atomically`, named
    ``.NAME.XXXX.tmp``); returns them. Only for a folder no other process is saving into."""
    stale = [p for p in folder.glob(".*.tmp") if p.name.count(".") >= 3]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
