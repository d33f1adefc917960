"""The steps that make a run's models, each on its own: the data, the diffusion model, the
detector (with its checkpoints), and loading them back from the run folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import Checkpointing
from ..config import RunConfig
from ..data import ImageData, load_data
from ..detector import DIADetector
from ..device import resolve_device
from ..dissolve import Dissolver, dissolver_class
from ..io import read_json, saved_dir, write_json
from .folders import CHECKPOINT_DIR, DETECTOR_DIR, DIFFUSION_DIR, has_model, holds_detector


def load_run_data(config: RunConfig) -> ImageData:
    """The run's data; under a launcher rank 0 loads first, so that one process downloads."""
    with distributed.main_first():
        return load_data(config.data)


def held_out_normals(data: ImageData) -> torch.Tensor:
    """The normal images no model of the run was trained on: the validation split's, or the
    test split's where there is none."""
    if data.val is not None and (data.val_labels == 0).any():
        return data.val[data.val_labels == 0]
    return data.test[data.test_labels == 0]


def make_dissolver(config: RunConfig) -> Dissolver:
    """The run's dissolver as its settings name it, unfitted."""
    return dissolver_class(config.detector.dissolving.dissolve).create(config.diffusion)


def fit_dissolver_step(
    config: RunConfig,
    data: ImageData,
    out: Path,
    progress: bool = True,
    dissolver: Dissolver | None = None,
    checkpoint: Checkpointing | None = None,
) -> tuple[Dissolver, dict]:
    """The run's dissolver, fitted. One that learns is fitted on the normal training images
    (the diffusion model: trained, or taken from an earlier run with the same images,
    settings and seed, :mod:`dia.diffusion.cache`) and saved to ``out/diffusion``; what its
    fitting did comes with it: ``kept`` (taken from the cache), its one-time ``train_s``,
    ``steps`` and ``epochs`` (nothing for one that does not learn). ``dissolver``: another
    one than the settings name. ``checkpoint`` keeps the fitting's state as it goes (see
    :func:`checkpointing`) where the dissolver is ``resumable``; once the model is saved, the
    checkpoint is removed."""
    dissolver = make_dissolver(config) if dissolver is None else dissolver
    if not dissolver.learns:
        return dissolver, {}
    device = resolve_device(config.device)
    saving = {"checkpoint": checkpoint} if dissolver.resumable else {}
    history = dissolver.fit(
        data.train, device=device, seed=config.seed, progress=progress, **saving
    )
    if distributed.is_main():
        dissolver.save(out / DIFFUSION_DIR)
        write_json(out / DIFFUSION_DIR / "history.json", history)
        if checkpoint is not None:
            shutil.rmtree(checkpoint.folder, ignore_errors=True)
    return dissolver, fitting_record(history)


def fitting_record(history: dict) -> dict:
    """What a learning dissolver's fitting did, from its history: ``kept`` (taken from the
    cache), its one-time ``train_s``, ``steps`` and ``epochs``."""
    record = {"kept": bool(history.get("kept")), "train_s": history.get("seconds")}
    return {**record, **{k: history.get(k) for k in ("steps", "epochs")}}


def saved_fitting(out: Path) -> dict | None:
    """:func:`fitting_record` of the dissolver saved in run folder ``out``, or None."""
    file = out / DIFFUSION_DIR / "history.json"
    return fitting_record(read_json(file)) if file.is_file() else None


def make_detector(config: RunConfig, progress: bool = True) -> DIADetector:
    """An unfitted detector with the run's settings."""
    return DIADetector(
        detector=config.detector,
        score=config.score,
        diffusion=config.diffusion,
        device=config.device,
        precision=config.precision,
        seed=config.seed,
        progress=progress,
        dicom_window=config.data.dicom.window,
    )


def train_detector_step(
    config: RunConfig,
    data: ImageData,
    out: Path,
    dissolver: Dissolver | None,
    progress: bool = True,
    deadline: float | None = None,
    checkpoint: Checkpointing | None = None,
) -> DIADetector:
    """Train the amplifying network and its feature bank, save it to ``out/detector``.

    ``deadline`` (a ``time.perf_counter()`` value) is when the fitted detector must be ready.
    ``checkpoint`` keeps the training's state as it goes (see :func:`checkpointing`); once the
    detector is saved, the checkpoint is removed.
    """
    detector = make_detector(config, progress)
    detector.fit(
        data.train,
        dissolver=dissolver,
        deadline=deadline,
        checkpoint=checkpoint,
        groups=data.train_groups,
    )
    if distributed.is_main():
        detector.save_pretrained(out / DETECTOR_DIR)
        write_json(
            out / DETECTOR_DIR / "history.json",
            {**detector.history_, "timings": detector.timings_},
        )
        if checkpoint is not None:
            shutil.rmtree(checkpoint.folder, ignore_errors=True)
    return detector


def checkpointing(
    out: Path, every_s: float | None, name: str = CHECKPOINT_DIR, **meta
) -> Checkpointing | None:
    """Checkpoints of a run folder's detector training (or of the training whose checkpoint
    folder is ``out/name``) every ``every_s`` training seconds and on Ctrl-C (None or 0: none
    at all); ``meta`` is kept with them for :func:`~dia.pipeline.resume`."""
    if not every_s:
        return None
    if every_s < 0:
        raise ValueError(f"checkpoint interval {every_s}; expected seconds > 0, or 0 for none")
    return Checkpointing(out / name, every_s, meta={**meta, "every_s": every_s})


def load_dissolver(out: Path, config: RunConfig, device: str | None = None) -> Dissolver | None:
    """The dissolver of run folder ``out``: one that learns as saved in ``out/diffusion``
    (None when nothing is saved there), any other made anew."""
    cls = dissolver_class(config.detector.dissolving.dissolve)
    if not cls.learns:
        return cls.create(config.diffusion)
    if not has_model(out):
        return None
    return cls.load(out / DIFFUSION_DIR, str(resolve_device(device or config.device)))


def load_detector(out: Path, device: str = "auto", precision: str = "auto") -> DIADetector:
    """The detector of run folder ``out`` (``out/detector``), or the one saved in ``out``."""
    folder = saved_dir(out / DETECTOR_DIR)
    if not (folder / "config.json").is_file() and holds_detector(out):
        folder = out
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no saved detector in {out}: expected {out / DETECTOR_DIR / 'config.json'} "
            "(train one with dia run or dia train)"
        )
    return DIADetector.from_pretrained(folder, device=device, precision=precision)
