"""``medmnist:NAME``: the official MedMNIST v2 file, downloaded once into a cache folder."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import torch

from dia.data.errors import DataError
from dia.data.npz import load_npz
from dia.data.types import ImageData
from dia.io import usual_mode

URL_TEMPLATE = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
DOWNLOAD_TIMEOUT_S = 30.0

# md5 of the 28 px files, as published with MedMNIST v2 (unchanged in the v3 record).
KNOWN_MD5 = {
    "pathmnist": "a8b06965200029087d5bd730944a56c1",
    "chestmnist": "02c8a6516a18b556561a56cbdd36c4a8",
    "dermamnist": "0744692d530f8e62ec473284d019b0c7",
    "octmnist": "c68d92d5b585d8d81f7112f81e2d0842",
    "pneumoniamnist": "28209eda62fecd6e6a2d98b1501bb15f",
    "retinamnist": "bd4c0672f1bba3e3a89f0e4e876791e4",
    "breastmnist": "750601b1f35ba3300ea97c75c52ff8f6",
    "bloodmnist": "7053d0359d879ad8a5505303e11de1dc",
    "tissuemnist": "ebe78ee8b05294063de985d821c1c34b",
    "organamnist": "68e3f8846a6bd62f0c9bf841c0d9eacc",
    "organcmnist": "b9ceb9546e10131b32923c5bbeaea2b1",
    "organsmnist": "9ab87b696fb54e2a387ebe992d6ed5f1",
}
# The 2D sets of MedMNIST v2; a name missing from KNOWN_MD5 would be loaded unverified.
MEDMNIST_2D = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$DIA_CACHE``, else ``~/.cache/dia``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("DIA_CACHE"):
        return Path(os.environ["DIA_CACHE"]).expanduser()
    return Path.home() / ".cache" / "dia"


def medmnist_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the file of data set ``name`` lives in the cache."""
    return cache_root(cache_dir) / "medmnist" / f"{_check_name(name)}.npz"


def load_medmnist(
    name: str, normal_class: int = 0, cache_dir: str | Path | None = None
) -> tuple[ImageData, torch.Tensor]:
    """Fetch (if needed) and read MedMNIST ``name``; same return values as ``load_npz``."""
    path, fetch_info = fetch_medmnist(name, cache_dir)
    data, abnormal_train = load_npz(path, normal_class)
    data.name = _check_name(name)
    data.info.update(fetch_info)
    return data, abnormal_train


def fetch_medmnist(name: str, cache_dir: str | Path | None = None) -> tuple[Path, dict]:
    """Path of a verified local copy of MedMNIST ``name``, downloading it when missing."""
    name = _check_name(name)
    path = medmnist_path(name, cache_dir)
    url = URL_TEMPLATE.format(name=name)
    expected = KNOWN_MD5.get(name)
    info = {"url": url, "cache_file": str(path)}

    stale = ""
    if path.is_file():
        cached = _md5(path) if expected is not None else None
        if cached == expected:
            info.update(downloaded=False, md5_verified=expected is not None)
            if expected is None:
                info["md5_note"] = f"no known checksum for {name}; the cached file was not verified"
            return path, info
        # A damaged or foreign file in the cache: fetch the official one over it.
        stale = f"the cached file has md5 {cached}, expected {expected}; "

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the cache folder {path.parent}: {err}") from err

    # Download next to the target, check it, then rename: a reader never sees half a file.
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".part")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        try:
            _download(url, tmp)
        except (OSError, http.client.HTTPException) as err:
            reason = f"{stale}the download failed ({err})"
            raise DataError(_offline_message(name, url, path, reason)) from err
        if expected is not None:
            actual = _md5(tmp)
            if actual != expected:
                reason = f"the downloaded file has md5 {actual}, expected {expected}"
                raise DataError(_offline_message(name, url, path, reason))
        usual_mode(tmp)  # a shared cache: others may read what one user downloaded
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

    info.update(downloaded=True, md5_verified=expected is not None)
    if expected is None:
        info["md5_note"] = f"no known checksum for {name}; the download was not verified"
    return path, info


def _download(url: str, destination: Path) -> None:
    """Write the bytes at ``url`` into ``destination`` (tests replace this function)."""
    with (
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        open(destination, "wb") as out,
    ):
        shutil.copyfileobj(response, out, length=1 << 20)


def _offline_message(name: str, url: str, path: Path, reason: str) -> str:
    return (
        f"cannot get MedMNIST '{name}': {reason}.\n"
        f"Download {url}\n"
        f"and save it as {path}\n"
        f"or pass the file directly with --data /path/to/{name}.npz"
    )


def _check_name(name: str) -> str:
    key = name.strip().lower()
    if key not in MEDMNIST_2D:
        raise DataError(
            f"unknown MedMNIST data set {name!r}; known 2D sets: {', '.join(MEDMNIST_2D)}"
        )
    return key


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
