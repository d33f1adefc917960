"""The run folder: its layout, its ``config.json``, and what must not be overwritten in it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import checkpoint as ckpt
from .. import distributed
from ..config import DataConfig, DetectorConfig, RunConfig, ScoreConfig, from_dict, to_dict
from ..config_tree import flat_values, with_default
from ..detector_format import EARLY_SHIFTS
from ..detector_format import FORMAT as DETECTOR_FORMAT
from ..io import numbered, read_json, saved_dir, write_json

DIFFUSION_DIR = "diffusion"
DETECTOR_DIR = "detector"
CHECKPOINT_DIR = "detector-checkpoint"
DIFFUSION_CHECKPOINT_DIR = "diffusion-checkpoint"
REPORT_NAME = "report.html"
# A run's wall times from its training, kept while it is evaluated (metrics.json then holds them).
TIMINGS_NAME = "timings.json"
EXTERNAL_DIR = "external"


def default_run_dir(config: RunConfig, root: str | Path = "runs") -> Path:
    """runs/<data>-<dissolve>-seed<seed>, with -2, -3, ... so an earlier run is never reused."""
    spec = config.data.spec.rstrip("/\\")
    data_name = Path(spec).stem if spec not in ("synthetic",) else spec
    data_name = data_name.replace("medmnist:", "")
    base = Path(root) / f"{data_name}-{config.detector.dissolving.dissolve}-seed{config.seed}"
    return next(path for path in numbered(base, suffix=False) if not path.exists())


def agreed_run_dir(config: RunConfig) -> Path:
    """:func:`default_run_dir`, chosen by rank 0 for every process under a launcher."""
    return distributed.broadcast_object(default_run_dir(config) if distributed.is_main() else None)


def save_config(config: RunConfig, out: Path) -> None:
    write_json(out / "config.json", to_dict(config))


def load_config(out: Path) -> RunConfig:
    """The settings of run folder ``out``, from its ``config.json`` (:func:`read_config`)."""
    return read_config(out / "config.json")


# The sections of a run's config.json whose settings are grouped, or may lack a setting.
SECTIONS = {"data": DataConfig, "detector": DetectorConfig, "score": ScoreConfig}
# A setting a run saved before it existed was made with, as the run was made.
EARLIER = {
    "data": ("dicom_studies", False),
    "detector": ("stem_stride", 1),
    "score": ("shifts", EARLY_SHIFTS),
}


def read_config(file: Path) -> RunConfig:
    """The run settings that ``file`` holds: a run's ``config.json`` (or, given a folder, the
    one in it), as ``dia run --config`` reads it. A run saved before DICOM studies were grouped
    is read with them grouped file by file, as it was made, so that its data splits as it did;
    one saved before the stem's stride and the scored shifts were settings, with CIFAR's stem
    and every shift, as it was made; one saved before the settings were grouped by concern,
    into its groups (:func:`~dia.config_tree.nest`). The settings are checked as they are
    read: an error names the file and the setting."""
    file = Path(file)
    file = file / "config.json" if file.is_dir() else file
    values = read_json(file)
    if values.get("format") == DETECTOR_FORMAT:
        raise ValueError(
            f"{file} holds the settings of a saved detector, not of a run: give a run "
            "folder's config.json"
        )
    if "data" not in values:
        raise ValueError(f"{file} lacks 'data': it does not say what the run was trained on")
    try:
        for section, (name, value) in EARLIER.items():
            if isinstance(values.get(section), dict):
                values[section] = with_default(SECTIONS[section], values[section], name, value)
        config = from_dict(RunConfig, values)
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from err
    return config


def in_the_way(out: Path, config: RunConfig) -> str | None:
    """Why a training (``dia run``, ``train`` or ``train-diffusion``) must not start in
    ``out``: it would overwrite a result, an interrupted training or a trained model, or the
    ``config.json`` that says how they were made. None when nothing is in the way; a diffusion
    model trained with the run's settings (a run stopped after training it) is not in the way,
    but reused."""
    if (out / "metrics.json").exists():
        return f"{out} already holds a finished run; choose another --out"
    if holds_detector(out):
        return f"{out} holds a saved detector; choose another --out"
    interrupted = interrupted_run(out)
    if interrupted is not None:
        return interrupted
    if has_model(out, DETECTOR_DIR):
        return (
            f"{out} holds a trained detector that was never evaluated: dia evaluate --out {out} "
            "scores the test split with it (to train afresh, choose another --out)"
        )
    if has_model(out):  # whatever the run dissolves with: its config.json would replace them
        differ = diffusion_settings_differ(out, config)
        if differ:
            return (
                f"{out} holds a diffusion model trained with other settings ({differ}); pass "
                "the same settings to reuse it, or choose another --out"
            )
    return None


def has_model(out: Path, name: str = DIFFUSION_DIR) -> bool:
    """Whether run folder ``out`` holds a saved model in ``out/name`` (the diffusion model's
    by default)."""
    return (saved_dir(out / name) / "config.json").is_file()


def diffusion_settings_differ(
    out: Path, config: RunConfig, sections: tuple[str, ...] = ("data", "diffusion", "seed")
) -> str:
    """The settings that decide a diffusion model (data, diffusion, seed; or those of
    ``sections``) where the run folder's ``config.json`` and ``config`` differ, as ``name:
    saved X, now Y`` ('' when none)."""
    if not (out / "config.json").is_file():
        return f"no {out / 'config.json'} records them"
    saved = read_json(out / "config.json")
    now = json.loads(json.dumps(to_dict(config)))  # tuples as the saved JSON holds them: lists
    differ = [
        f"{section}.{key}: saved {_flat(saved, section).get(key)!r}, now {value!r}"
        for section in sections
        if section != "seed"
        for key, value in _flat(now, section).items()
        if _flat(saved, section).get(key) != value
    ]
    if "seed" in sections and saved.get("seed") != now["seed"]:
        differ.append(f"seed: saved {saved.get('seed')!r}, now {now['seed']!r}")
    return "; ".join(differ)


def _flat(values: dict, section: str) -> dict:
    """Section ``section`` of a run's JSON settings by the settings' flat names (as a run saved
    before they were grouped wrote them)."""
    found = values.get(section)
    if not isinstance(found, dict):
        return {}
    return flat_values(SECTIONS[section], found) if section in SECTIONS else found


def model_in_the_way(out: Path, name: str) -> str | None:
    """Why training must not write ``out/name`` (a trained model is there), or None."""
    if not has_model(out, name):
        return None
    return (
        f"{out / name} already holds a trained model; choose another --out (or delete it to "
        "train again)"
    )


def interrupted_run(out: Path) -> str | None:
    """Why a new training must not start in ``out`` (its checkpoint would be overwritten), or
    None when nothing is in the way."""
    folder = checkpoint_folder(out)
    if not ckpt.exists(folder):
        return None
    return (
        f"{out} holds an interrupted training: dia resume --out {out} continues it (to start "
        f"afresh instead, delete {folder} or choose another --out)"
    )


def checkpoint_folder(out: Path) -> Path:
    """The checkpoint of run folder ``out`` that ``dia resume`` continues: its detector
    training's, else its diffusion training's where only that one is there."""
    diffusion = out / DIFFUSION_CHECKPOINT_DIR
    if not ckpt.exists(out / CHECKPOINT_DIR) and ckpt.exists(diffusion):
        return diffusion
    return out / CHECKPOINT_DIR


def run_folder_of(out: Path) -> Path:
    """The run folder that ``out`` names: its parent when ``out`` is a run's ``detector``
    folder (however written: ``.``, a link), else ``out`` itself."""
    real = out.resolve()
    if real.name == DETECTOR_DIR and is_run_folder(real.parent):
        return real.parent
    return out


def is_run_folder(out: Path) -> bool:
    """Whether ``out`` holds a run's settings (``config.json`` of ``dia run`` or ``dia
    train``), not those of a detector saved by the library."""
    return (out / "config.json").is_file() and not holds_detector(out)


def holds_detector(folder: Path) -> bool:
    """Whether ``folder`` is a detector's own folder (``save_pretrained``; found where a
    save killed between its renames left it, :func:`~dia.io.saved_dir`)."""
    config = saved_dir(folder) / "config.json"
    return config.is_file() and read_json(config).get("format") == DETECTOR_FORMAT


def detector_digest(folder: Path) -> str | None:
    """SHA-256 of the files of the detector saved in ``folder`` (its settings, network and
    bank: all its scores depend on), None when there is none."""
    folder = saved_dir(folder)
    files = [folder / "config.json", folder / "model.safetensors"]
    if not all(f.is_file() for f in files):
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
