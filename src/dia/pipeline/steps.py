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
from ..diffusion import DiffusionModel, train_diffusion
from ..diffusion.cache import load_cached, model_dir, model_key, store
from ..io import saved_dir, write_json
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


def train_diffusion_step(
    config: RunConfig, data: ImageData, out: Path, progress: bool = True
) -> tuple[DiffusionModel, dict]:
    """Train the DDPM on the normal training images, or take the one an earlier run trained on
    the same images with the same settings and seed (:mod:`dia.diffusion.cache`), and save it
    to ``out/diffusion``. Returns the model and what its training did: ``kept`` (whether it
    was taken from the cache), its one-time ``train_s``, ``steps`` and ``epochs``."""
    device = resolve_device(config.device)
    key = model_key(data.train, config.diffusion, data.channels, config.seed)
    found = _kept_model(key, device)
    if found is not None:
        model, history = found
    else:
        model = DiffusionModel(config.diffusion, data.channels, seed=config.seed)
        history = train_diffusion(
            model, data.train, config.diffusion, device=device, seed=config.seed,
            progress=progress,
        )  # fmt: skip
        if distributed.is_main():
            store(model, history, key)
    if distributed.is_main():
        model.save_pretrained(out / DIFFUSION_DIR)
        write_json(out / DIFFUSION_DIR / "history.json", history)
    info = {"kept": found is not None, "train_s": history.get("seconds")}
    info.update({k: history.get(k) for k in ("steps", "epochs")})
    return model, info


def _kept_model(key: str, device: torch.device) -> tuple[DiffusionModel, dict] | None:
    """The cache's model of ``key`` and its history, where rank 0 finds one (every process of
    a launch then loads it), else None."""
    found = load_cached(key, device) if distributed.is_main() else None
    if not distributed.broadcast_object(found is not None):
        return None
    if found is None:
        found = load_cached(key, device)
        if found is None:
            raise RuntimeError(f"the kept diffusion model {model_dir(key)} could not be read")
    return found


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
        dicom_window=config.data.dicom_window,
    )


def train_detector_step(
    config: RunConfig,
    data: ImageData,
    out: Path,
    diffusion_model: DiffusionModel | None,
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
        diffusion_model=diffusion_model,
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


def checkpointing(out: Path, every_s: float | None, **meta) -> Checkpointing | None:
    """Checkpoints of a run folder's detector training every ``every_s`` training seconds
    and on Ctrl-C (None or 0: none at all); ``meta`` is kept with them for
    :func:`~dia.pipeline.resume`."""
    if not every_s:
        return None
    if every_s < 0:
        raise ValueError(f"checkpoint interval {every_s}; expected seconds > 0, or 0 for none")
    return Checkpointing(out / CHECKPOINT_DIR, every_s, meta={**meta, "every_s": every_s})


def load_diffusion(out: Path, device: str = "auto") -> DiffusionModel | None:
    """The diffusion model saved in a run folder, or None when there is none."""
    if not has_model(out):
        return None
    return DiffusionModel.from_pretrained(out / DIFFUSION_DIR, device=str(resolve_device(device)))


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
