"""The steps of a run and the run folder they share: config, models, scores, metrics.

Under a launcher (:mod:`dia.distributed`) every process runs the training steps, and rank 0
alone writes the run folder and evaluates.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import platform
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import __version__, distributed
from . import checkpoint as ckpt
from .baselines import baseline_aurocs
from .checkpoint import Checkpointing
from .config import NUM_SHIFTS, DataConfig, RunConfig, check_settings, from_dict, to_dict
from .data import ImageData, load_data, load_test_set
from .data.folder import load_images
from .data.volumes import split_selection
from .detector import FORMAT as DETECTOR_FORMAT
from .detector import DIADetector
from .device import cpu_has_fast_bf16, cpu_memory, resolve_device, resolve_precision
from .diffusion import DiffusionModel, train_diffusion
from .dissolve import build_dissolver
from .evaluation import anomaly_metrics
from .io import (
    new_folder,
    numbered,
    read_json,
    saved_dir,
    write_csv,
    write_json,
    write_png,
    write_text,
)
from .quality import dissolver_quality
from .reports import (
    GRID_TIMESTEPS,
    PICTURE_COUNT,
    REPORT_PICTURES,
    anomaly_map_grid,
    dissolve_grid,
    report_html,
    roc_plot,
    score_histogram,
    training_plot,
)

DIFFUSION_DIR = "diffusion"
DETECTOR_DIR = "detector"
CHECKPOINT_DIR = "detector-checkpoint"
REPORT_NAME = "report.html"
# How a run's dissolver is measured: on this many held-out normal images, at these timesteps.
QUALITY_IMAGES = 64
QUALITY_TIMESTEPS = (50, 100)
# A run's wall times from its training, kept while it is evaluated (metrics.json then holds them).
TIMINGS_NAME = "timings.json"
EXTERNAL_DIR = "external"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_commit() -> str:
    """The git commit of the installed code, '+dirty' when the package's files differ from it,
    or 'unknown' outside a checkout."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    changed = _git("status", "--porcelain", "--", str(Path(__file__).parent))
    return commit + ("+dirty" if changed else "")


def cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (None elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    """What the numbers were measured on; ``amx``: whether bf16 runs on AMX tiles (the
    ``auto`` precision's choice on a CPU); ``cpu_memory``: how CPU memory is taken
    (:func:`dia.device.set_cpu_memory`)."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "amx": cpu_has_fast_bf16(),
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_memory": cpu_memory(),
    }


def default_run_dir(config: RunConfig, root: str | Path = "runs") -> Path:
    """runs/<data>-<dissolve>-seed<seed>, with -2, -3, ... so an earlier run is never reused."""
    spec = config.data.spec.rstrip("/\\")
    data_name = Path(spec).stem if spec not in ("synthetic",) else spec
    data_name = data_name.replace("medmnist:", "")
    base = Path(root) / f"{data_name}-{config.detector.dissolve}-seed{config.seed}"
    return next(path for path in numbered(base, suffix=False) if not path.exists())


def save_config(config: RunConfig, out: Path) -> None:
    write_json(out / "config.json", to_dict(config))


def load_config(out: Path) -> RunConfig:
    """The run's settings. A run saved before DICOM studies were grouped is read with them
    grouped file by file, as it was made, so that its data splits as it did; one saved before
    the stem's stride and the scored shifts were settings, with CIFAR's stem and every shift,
    as it was made."""
    file = out / "config.json"
    values = read_json(file)
    if "data" not in values:
        raise ValueError(f"{file} lacks 'data': it does not say what the run was trained on")
    earlier = {"data": ("dicom_studies", False), "detector": ("stem_stride", 1)}
    earlier["score"] = ("shifts", NUM_SHIFTS)
    for section, (key, value) in earlier.items():
        if isinstance(values.get(section), dict):
            values[section].setdefault(key, value)
    try:
        config = from_dict(RunConfig, values)
        check_settings(config.detector, config.score)
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from err
    return config


def load_run_data(config: RunConfig) -> ImageData:
    """The run's data; under a launcher rank 0 loads first, so that one process downloads."""
    with distributed.main_first():
        return load_data(config.data)


def train_diffusion_step(
    config: RunConfig, data: ImageData, out: Path, progress: bool = True
) -> DiffusionModel:
    """Train the DDPM on the normal training images and save it to ``out/diffusion``."""
    device = resolve_device(config.device)
    model = DiffusionModel(config.diffusion, data.channels, seed=config.seed)
    history = train_diffusion(
        model, data.train, config.diffusion, device=device, seed=config.seed, progress=progress
    )
    if distributed.is_main():
        model.save_pretrained(out / DIFFUSION_DIR)
        write_json(out / DIFFUSION_DIR / "history.json", history)
    return model


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
        f"{section}.{key}: saved {saved.get(section, {}).get(key)!r}, now {value!r}"
        for section in sections
        if section != "seed"
        for key, value in now[section].items()
        if saved.get(section, {}).get(key) != value
    ]
    if "seed" in sections and saved.get("seed") != now["seed"]:
        differ.append(f"seed: saved {saved.get('seed')!r}, now {now['seed']!r}")
    return "; ".join(differ)


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
    folder = out / CHECKPOINT_DIR
    if not ckpt.exists(folder):
        return None
    return (
        f"{out} holds an interrupted training: dia resume --out {out} continues it (to start "
        f"afresh instead, delete {folder} or choose another --out)"
    )


def checkpointing(out: Path, every_s: float | None, **meta) -> Checkpointing | None:
    """Checkpoints of a run folder's detector training every ``every_s`` training seconds
    and on Ctrl-C (None or 0: none at all); ``meta`` is kept with them for :func:`resume`."""
    if not every_s:
        return None
    if every_s < 0:
        raise ValueError(f"checkpoint interval {every_s}; expected seconds > 0, or 0 for none")
    return Checkpointing(out / CHECKPOINT_DIR, every_s, meta={**meta, "every_s": every_s})


def evaluate_step(
    config: RunConfig,
    data: ImageData,
    detector: DIADetector,
    out: Path,
    timings: dict | None = None,
    extra: dict | None = None,
    finish: bool = True,
) -> dict:
    """Score the test split, write ``scores.csv``, the ROC curve ``roc.png``, the score
    histograms ``score_histogram.png``, the training losses ``training_curve.png``, the
    anomaly maps ``anomaly_maps.png``, and with ``finish`` the page ``report.html`` that shows
    them all and ``metrics.json`` (:func:`finish_run`; without it, the caller finishes);
    return the metrics (with ``extra`` added). The metrics hold the validation AUROC and the
    baselines' AUROCs as well (:func:`reference_metrics`)."""
    t0 = time.perf_counter()
    scores = detector.score_samples(data.test)
    score_s = time.perf_counter() - t0
    labels = data.test_labels.numpy()
    metrics = anomaly_metrics(labels, -scores)
    predicted = scores < detector.threshold_
    device = resolve_device(config.device)
    history = getattr(detector, "history_", None) or {}
    metrics.update(
        threshold=detector.threshold_,
        threshold_fpr_target=detector.fpr,
        test_fpr_at_threshold=float(predicted[labels == 0].mean()),
        test_tpr_at_threshold=float(predicted[labels == 1].mean()),
        protocol="last-checkpoint; no choice uses test labels",
        data={"name": data.name, **data.counts(), **data.info},
        config=to_dict(config),
        seed=config.seed,
        commit=code_commit(),
        version=__version__,
        device=str(device),
        precision=resolve_precision(config.precision, device),
        machine=machine(),
        training={
            k: history[k]
            for k in ("steps", "dissolved_steps", "epochs", "images_per_s", "train_s")
            if k in history
        },
        world_size=history.get("world_size", distributed.world_size()),
        wall_s={**(timings or {}), "test_scoring_s": score_s},
        test_images_per_s=len(labels) / max(score_s, 1e-9),
        # which saved detector made scores.csv: dia maps reuses the scores while it is the same
        detector_sha256=detector_digest(out / DETECTOR_DIR),
    )
    metrics.update(reference_metrics(data, detector, metrics["wall_s"]))
    metrics.update(extra or {})
    # Each test image's file, where it came from one, so that a flagged scan can be found.
    names = data.test_names or [""] * len(labels)
    rows = zip(names, labels, scores, predicted, strict=True)
    write_csv(
        out / "scores.csv",
        ["index", "path", "label", "score", "predicted_abnormal"],
        ([i, name, int(y), f"{s:.6f}", int(p)] for i, (name, y, s, p) in enumerate(rows)),
    )
    title = f"{data.name}, test split (AUROC {metrics['auroc']:.3f})"
    roc_plot(labels, scores, out / "roc.png", detector.threshold_, title)
    score_histogram(labels, scores, out / "score_histogram.png", detector.threshold_, title)
    write_training_curve(out)
    t0 = time.perf_counter()
    write_anomaly_maps(detector, data.test, scores, out / "anomaly_maps.png")
    metrics["wall_s"]["anomaly_maps_s"] = time.perf_counter() - t0
    if finish:
        finish_run(out, metrics)
    return metrics


def finish_run(out: Path, metrics: dict) -> None:
    """Write the report, then ``metrics.json``: written last, since a folder with it counts
    as a finished run (the timings kept apart until then go)."""
    write_report(out, metrics)
    write_json(out / "metrics.json", metrics)
    (out / TIMINGS_NAME).unlink(missing_ok=True)


def reference_metrics(data: ImageData, detector: DIADetector, wall_s: dict) -> dict:
    """What the detector's test AUROC is read beside: ``val_auroc``, its AUROC on the
    validation split (where ``data`` has one with both classes), and ``baselines``, the pixel
    kNN baselines' AUROCs on the test and validation splits with ``data.train`` as their
    training set (none without training images: an external test set). The seconds each took
    go into ``wall_s`` (``val_scoring_s``, ``baselines_s``)."""
    splits = {"test": (data.test, data.test_labels)}
    if data.val is not None and data.val_labels is not None and len(data.val_labels.unique()) == 2:
        splits["val"] = (data.val, data.val_labels)
    metrics: dict = {}
    if "val" in splits:
        t0 = time.perf_counter()
        scores = detector.score_samples(data.val)
        metrics["val_auroc"] = anomaly_metrics(data.val_labels.numpy(), -scores)["auroc"]
        wall_s["val_scoring_s"] = time.perf_counter() - t0
    if len(data.train):
        t0 = time.perf_counter()
        metrics["baselines"] = baseline_aurocs(data.train, splits)
        wall_s["baselines_s"] = time.perf_counter() - t0
    return metrics


def evaluate_saved(config: RunConfig, detector: DIADetector, out: Path) -> dict:
    """Score run ``out``'s test split with its saved ``detector`` (``dia evaluate``: again,
    or for the first time when the run stopped between saving and scoring it).
    What the run recorded about its training is kept: the steps and speed (from the
    detector's ``history.json``), the wall times of its training and a resume or reuse."""
    earlier = {}
    for name in ("metrics.json", TIMINGS_NAME):  # a finished run's, or one that stopped before
        if not earlier and (out / name).is_file():
            earlier = read_json(out / name)
    _load_history(detector, out)
    # the run's wall times; the test's scoring and maps are timed anew
    timings = dict(earlier.get("wall_s", {}))
    kept = ("resumed_at_step", "diffusion_reused", "dissolver_quality")
    extra = {k: earlier[k] for k in kept if earlier.get(k)}
    data = load_run_data(config)
    metrics = evaluate_step(config, data, detector, out, timings, extra, finish=False)
    if not (out / "dissolve_grid.png").is_file():  # the run stopped before drawing it
        dissolver = (
            load_diffusion(out, config.device) if config.detector.dissolve == "diffusion" else None
        )
        if config.detector.dissolve != "diffusion" or dissolver is not None:
            _dissolve_grid_step(config, data, out, dissolver, metrics)
    finish_run(out, metrics)
    return metrics


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


def saved_test_scores(out: Path, data: ImageData, detector: DIADetector) -> np.ndarray | None:
    """The test scores that evaluating run ``out`` wrote (``scores.csv``), when they are the
    scores ``detector`` gives ``data``'s test images: the same saved detector, device type and
    precision, the same images in the same order. None otherwise (scores to compute anew)."""
    device = resolve_device(detector.device)
    try:
        metrics = read_json(out / "metrics.json")
        digest = metrics.get("detector_sha256")
        if digest is None or digest != detector_digest(out / DETECTOR_DIR):
            return None
        if metrics.get("precision") != resolve_precision(detector.precision, device):
            return None
        if torch.device(metrics.get("device", "")).type != device.type:
            return None
        with open(out / "scores.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
        names = data.test_names or [""] * len(data.test)
        labels = data.test_labels.tolist()
        if len(rows) != len(names) or any(
            row["path"] != name or int(row["label"]) != label
            for row, name, label in zip(rows, names, labels, strict=True)
        ):
            return None
        return np.array([float(row["score"]) for row in rows])
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def _load_history(detector: DIADetector, out: Path) -> None:
    """Give ``detector`` the training history saved beside it in run ``out`` (its steps and
    speed, for the metrics and the report), unless it has one."""
    history = out / DETECTOR_DIR / "history.json"
    if getattr(detector, "history_", None) is None and history.is_file():
        detector.history_ = read_json(history)


def evaluate_external(
    config: RunConfig,
    detector: DIADetector,
    out: Path,
    settings: dict,
    trained_on: DataConfig | None = None,
) -> tuple[dict, Path]:
    """Evaluate the detector of ``out`` (a run folder, or a folder the library saved a
    detector in) on the test images of another data set (an external test set,
    :func:`~dia.data.load_test_set`) into ``out/external/NAME`` (``-2``, ``-3``, ...
    rather than overwrite); the run's own results stay as they are. Returns the metrics and
    that folder. ``trained_on``: the run's data settings (None when unknown: a library
    folder), recorded and warned about when ``settings`` name the same data set.

    ``settings`` are :class:`~dia.config.DataConfig` fields: ``spec`` and, optionally,
    ``normal_class``, ``cache_dir`` (else the run's) and ``dicom_window`` (else the
    detector's). Images are read at the detector's size and channels, and the threshold stays
    the one chosen on the run's own normal training images.
    """
    data_config = external_data_config(detector, {"cache_dir": config.data.cache_dir, **settings})
    if trained_on is not None and _same_data(data_config.spec, trained_on.spec):
        warnings.warn(
            f"{data_config.spec} is the data set the detector was trained on, not an external "
            "one: its test images are the run's own (and of a flat folder or a CSV list "
            "without splits every image is tested, the training images among them, which "
            "flatters the numbers)",
            stacklevel=2,
        )
    data = load_test_set(data_config)
    _load_history(detector, out)  # how the run's detector was trained
    folder = new_folder(out / EXTERNAL_DIR / (data.name or "data"))
    extra = {"external": {"run": str(out), "trained_on": trained_on and to_dict(trained_on)}}
    config = dataclasses.replace(config, data=data_config)
    if trained_on is None:  # a library's detector: how it was trained is not recorded
        extra["config"] = {**to_dict(config), "diffusion": None, "budget_s": None, "preset": None}
    return evaluate_step(config, data, detector, folder, extra=extra), folder


def external_data_config(detector: DIADetector, settings: dict) -> DataConfig:
    """How an external test set (``settings``: :class:`~dia.config.DataConfig` fields) is
    read for ``detector``: at its size and channels, DICOM files through its window unless
    ``settings`` give another."""
    settings = {"dicom_window": detector.dicom_window, **settings}
    return DataConfig(**settings, image_size=detector.image_size_, channels=detector.channels_)


def _same_data(spec: str, other: str) -> bool:
    """Whether two data specs name the same data set (the same path, however written)."""
    paths = [Path(s.strip()).expanduser() for s in (spec, other)]
    if all(p.exists() for p in paths):
        return paths[0].resolve() == paths[1].resolve()
    return spec.strip().lower() == other.strip().lower()


def write_training_curve(out: Path) -> Path | None:
    """``out/training_curve.png`` from the saved training histories of run folder ``out``
    (None when it holds no detector history)."""
    detector_history = out / DETECTOR_DIR / "history.json"
    if not detector_history.is_file():
        return None
    diffusion_history = out / DIFFUSION_DIR / "history.json"
    return training_plot(
        read_json(detector_history),
        out / "training_curve.png",
        read_json(diffusion_history) if diffusion_history.is_file() else None,
    )


def write_report(out: Path, metrics: dict | None = None) -> Path:
    """``out/report.html``: the run's numbers (``metrics``, by default its ``metrics.json``)
    and the pictures found in ``out``, on one self-contained page; returns its path."""
    pictures = {
        name: (out / name).read_bytes() for name, _ in REPORT_PICTURES if (out / name).is_file()
    }
    path = out / REPORT_NAME
    metrics = read_json(out / "metrics.json") if metrics is None else metrics
    write_text(path, report_html(metrics, pictures))
    return path


def refresh_report(out: Path) -> None:
    """Write ``out/report.html`` again when ``out`` is an evaluated run (it has metrics), so
    that a picture drawn anew by ``dia maps`` or ``dia dissolve`` shows in it."""
    if (out / "metrics.json").is_file():
        write_report(out)


def write_anomaly_maps(
    detector: DIADetector,
    images: torch.Tensor,
    scores,
    path: Path,
    count: int = PICTURE_COUNT,
    patch: int | None = None,
    stride: int | None = None,
) -> int:
    """A PNG of the anomaly maps of the ``count`` lowest-scoring ``images`` (the most abnormal
    by ``scores``, the detector's; no label is looked at); returns how many it shows."""
    if count < 1:
        raise ValueError(f"count={count}; expected at least 1")
    scores = np.asarray(scores)
    chosen = np.argsort(scores, kind="stable")[:count]
    picked = images[torch.as_tensor(chosen)]
    maps = detector.anomaly_map(picked, patch=patch, stride=stride)
    grid = anomaly_map_grid(picked, maps, scores[chosen], detector.threshold_)
    write_png(path, grid)
    return len(picked)


def write_dissolve_grid(
    dissolve: str,
    diffusion_model: DiffusionModel | None,
    images: torch.Tensor,
    path: Path,
    device: str | torch.device = "cpu",
    timesteps=GRID_TIMESTEPS,
) -> None:
    """A PNG of ``images`` (rows) and their versions dissolved by operator ``dissolve`` at
    every timestep (columns)."""
    dissolver = build_dissolver(dissolve, diffusion_model).to(device)
    grid = dissolve_grid(images.to(device), dissolver, list(timesteps))
    write_png(path, grid)


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


def score_files(
    detector: DIADetector,
    paths: list,
    csv_path: Path,
    fpr: float | None = None,
    skip_unreadable: bool = False,
) -> dict:
    """Score image files (and the image files under folders) with a fitted ``detector`` and
    write ``path,score,threshold,abnormal`` per image to ``csv_path`` (or ``NAME-2.csv``, ...:
    the first free name, :func:`~dia.io.write_csv`); returns a summary, the file's path in
    ``csv``.

    ``fpr``: call abnormal the share of normal training images this is, instead of the
    detector's own (:meth:`~dia.detector.DIADetector.threshold_at`). ``skip_unreadable``:
    score the files that can be read and list the others, with why, in ``-unreadable.csv``
    beside ``csv_path`` (else the first one stops the scoring).
    """
    threshold = detector.threshold_ if fpr is None else detector.threshold_at(fpr)
    unreadable: list | None = [] if skip_unreadable else None
    images, files = load_images(
        paths, detector.image_size_, detector.channels_, detector.dicom_window, unreadable
    )
    scores = detector.score_samples(images)
    abnormal = scores < threshold
    rows = zip(files, scores, abnormal, strict=True)
    csv_path = write_csv(
        csv_path,
        ["path", "score", "threshold", "abnormal"],
        ([str(p), f"{score:.6f}", f"{threshold:.6f}", int(flag)] for p, score, flag in rows),
        new_name=True,
    )
    volumes = _volume_summary(files, scores, abnormal)
    summary = {
        "csv": str(csv_path),
        "images": len(files),
        "abnormal": int(abnormal.sum()),
        "threshold": threshold,
        "threshold_fpr_target": detector.fpr if fpr is None else fpr,
        "files": [str(p) for p in files],
        "scores": scores.tolist(),
        "volumes": volumes,
        "unreadable": [str(path) for path, _ in unreadable or []],
    }
    if unreadable:
        summary["unreadable_csv"] = str(
            write_csv(
                csv_path.with_name(f"{csv_path.stem}-unreadable.csv"),
                ["path", "reason"],
                ([str(path), reason] for path, reason in unreadable),
                new_name=True,
            )
        )
    if volumes:
        summary["volumes_csv"] = str(
            write_csv(
                csv_path.with_name(f"{csv_path.stem}-volumes.csv"),
                list(volumes[0]),
                (list(v.values()) for v in volumes),
                new_name=True,
            )
        )
    return summary


def _volume_summary(files: list[Path], scores: np.ndarray, abnormal: np.ndarray) -> list[dict]:
    """Per volume scored slice by slice (names ``FILE#K``), in the order first met: its
    slices (each once, however often it was named), how many were called abnormal, and the
    most abnormal slice (the lowest score). A count of flagged slices, not a decision about
    the volume: the threshold is a slice's."""
    volumes: dict[str, dict] = {}
    seen: set[str] = set()
    for name, score, flag in zip(files, scores.tolist(), abnormal.tolist(), strict=True):
        base, selection = split_selection(str(name))
        if selection is None or name.exists() or str(name) in seen:
            continue  # a 2-D file (whatever its name), or a slice named again
        seen.add(str(name))
        entry = volumes.setdefault(
            base,
            {"volume": base, "slices": 0, "abnormal_slices": 0, "most_abnormal": "",
             "lowest_score": float("inf")},
        )  # fmt: skip
        entry["slices"] += 1
        entry["abnormal_slices"] += int(flag)
        if score < entry["lowest_score"]:
            entry["most_abnormal"], entry["lowest_score"] = str(name), score
    return list(volumes.values())


def load_diffusion(out: Path, device: str = "auto") -> DiffusionModel | None:
    """The diffusion model saved in a run folder, or None when there is none."""
    if not has_model(out):
        return None
    return DiffusionModel.from_pretrained(out / DIFFUSION_DIR, device=str(resolve_device(device)))


def run(
    config: RunConfig,
    out: Path,
    progress: bool = True,
    checkpoint_every: float | None = ckpt.EVERY_S,
) -> dict | None:
    """Everything: data, diffusion (when needed), detector, evaluation. Returns the metrics
    (None on the other processes under a launcher: rank 0 evaluates and writes).

    The detector's training is checkpointed every ``checkpoint_every`` training seconds and
    on Ctrl-C (0 or None: never); :func:`resume` finishes an interrupted run.
    """
    t_start = time.perf_counter()
    deadline = None if config.budget_s is None else t_start + config.budget_s
    error = reuse = None
    created = False
    if distributed.is_main():
        error = in_the_way(out, config)
        reuse = error is None and config.detector.dissolve == "diffusion" and has_model(out)
        if error is None:
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            save_config(config, out)
    # every process stops, or reuses the diffusion model, not just rank 0
    error, reuse = distributed.broadcast_object((error, reuse))
    if error is not None:
        raise FileExistsError(error)
    timings: dict = {}
    try:
        t0 = time.perf_counter()
        data = load_run_data(config)
        timings["data_s"] = time.perf_counter() - t0
        diffusion_model = None
        if reuse:
            diffusion_model = load_diffusion(out, config.device)
            timings["diffusion_reused"] = True
        elif config.detector.dissolve == "diffusion":
            t0 = time.perf_counter()
            diffusion_model = train_diffusion_step(config, data, out, progress)
            timings["diffusion_s"] = time.perf_counter() - t0
        saving = checkpointing(out, checkpoint_every, command="run", timings=dict(timings))
        return _finish(
            config,
            data,
            out,
            diffusion_model,
            saving,
            progress=progress,
            deadline=deadline,
            timings=timings,
            t_start=t_start,
        )
    except BaseException as err:
        # A run that failed before saving anything (data that cannot be read, a budget too
        # small) leaves no folder behind holding its settings alone (the next would be -2).
        if created and distributed.is_main() and {p.name for p in out.iterdir()} <= {"config.json"}:
            shutil.rmtree(out, ignore_errors=True)
        elif (
            isinstance(err, Exception)
            and has_model(out, DETECTOR_DIR)
            and not (out / "metrics.json").exists()
        ):
            raise RuntimeError(
                f"{err}. The trained detector is saved: once that is put right, dia evaluate "
                f"--out {out} evaluates it"
            ) from err
        elif (
            isinstance(err, ValueError)
            and "diffusion_s" in timings
            and not has_model(out, DETECTOR_DIR)
        ):
            raise ValueError(
                f"{err}. The diffusion model it trained is saved: dia run --out {out} with the "
                "same settings reuses it"
            ) from err
        raise


def _finish(config, data, out, diffusion_model, saving, *, progress, deadline, timings, t_start):
    """Train the detector and, on rank 0, evaluate: the end of :func:`run` and of
    :func:`resume`. ``timings`` (wall seconds so far) is completed and kept in the metrics;
    ``t_start`` is when the session began."""
    t0 = time.perf_counter()
    detector = train_detector_step(config, data, out, diffusion_model, progress, deadline, saving)
    timings["detector_s"] = time.perf_counter() - t0
    timings.update({f"detector_{k}": v for k, v in detector.timings_.items()})
    timings["dissolve_cache_s"] = detector.history_.get("dissolve_cache_s", 0.0)
    if not distributed.is_main():
        return None
    # a flag, not seconds: the diffusion model came from an earlier session, its time not counted
    reused = timings.pop("diffusion_reused", False)
    # kept apart until metrics.json holds them: a crash while evaluating does not lose them
    write_json(out / TIMINGS_NAME, {"wall_s": timings, "diffusion_reused": reused})
    metrics = evaluate_step(config, data, detector, out, timings, finish=False)
    _dissolve_grid_step(config, data, out, diffusion_model, metrics)
    metrics["wall_s"]["total_s"] = time.perf_counter() - t_start
    if reused:
        metrics["diffusion_reused"] = True
    if "resumed_at_step" in detector.history_:
        metrics["resumed_at_step"] = detector.history_["resumed_at_step"]
    finish_run(out, metrics)
    return metrics


def _dissolve_grid_step(config, data, out: Path, diffusion_model, metrics: dict) -> None:
    """``dissolve_grid.png`` of a run that dissolves, and how well its dissolver dissolves
    (:func:`~dia.quality.dissolver_quality` at t = 50 and 100 on normal images it was not
    trained on), timed into ``metrics``."""
    if config.detector.dissolve == "none":
        return
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    write_dissolve_grid(
        config.detector.dissolve,
        diffusion_model,
        data.test[:PICTURE_COUNT],
        out / "dissolve_grid.png",
        device,
    )
    dissolver = build_dissolver(config.detector.dissolve, diffusion_model).to(device)
    normals = held_out_normals(data)[:QUALITY_IMAGES].to(device)
    if len(normals) >= 10:  # enough for the cross-validated separability
        quality = dissolver_quality(dissolver, normals, QUALITY_TIMESTEPS, diffusion_model)
        metrics["dissolver_quality"] = {**quality, "images": len(normals)}
    metrics["wall_s"]["dissolve_grid_s"] = time.perf_counter() - t0


def held_out_normals(data: ImageData) -> torch.Tensor:
    """The normal images no model of the run was trained on: the validation split's, or the
    test split's where there is none."""
    if data.val is not None and (data.val_labels == 0).any():
        return data.val[data.val_labels == 0]
    return data.test[data.test_labels == 0]


def resume(
    out: Path, device: str | None = None, precision: str | None = None, progress: bool = True
) -> tuple[str, dict | None]:
    """Continue the interrupted detector training of run folder ``out`` from its checkpoint
    and finish what was started: a ``dia run`` is evaluated as well. ``device`` and
    ``precision`` default to the run's own. Returns the command finished (``run`` or
    ``train``) and, for ``run`` on rank 0, the metrics.

    Trained for a number of epochs, the continued training takes exactly the steps, and gives
    exactly the weights, of an uninterrupted one (with the same number of processes). Under a
    time budget the steps depend on the clock, interrupted or not: the budget counts the
    training seconds done before (the data loading and dissolve cache of the resumed session
    come on top of it).
    """
    t_start = time.perf_counter()
    folder = out / CHECKPOINT_DIR
    finished = missing = None
    if distributed.is_main():
        if (out / "metrics.json").exists():
            finished = f"{out} already holds a finished run (metrics.json); nothing to resume"
        elif not ckpt.exists(folder):
            missing = _nothing_to_resume(out, folder)
    finished, missing = distributed.broadcast_object((finished, missing))
    if finished is not None:
        raise FileExistsError(finished)
    if missing is not None:
        raise FileNotFoundError(missing)
    config = load_config(out)
    config = dataclasses.replace(
        config, device=device or config.device, precision=precision or config.precision
    )
    meta = ckpt.read_meta(folder)
    command = meta.get("command", "train")
    timings = dict(meta.get("timings", {}))
    t0 = time.perf_counter()
    data = load_run_data(config)
    timings["resumed_data_s"] = time.perf_counter() - t0
    diffusion_model = None
    if config.detector.dissolve == "diffusion":
        diffusion_model = load_diffusion(out, config.device)
        if diffusion_model is None:
            raise FileNotFoundError(
                f"{out / DIFFUSION_DIR} is missing: the checkpointed training dissolved with "
                "that diffusion model"
            )
    saving = Checkpointing(folder, meta.get("every_s"), resume=True, meta=_own_meta(meta))
    if command != "run":
        train_detector_step(config, data, out, diffusion_model, progress, None, saving)
        return command, None
    metrics = _finish(
        config,
        data,
        out,
        diffusion_model,
        saving,
        progress=progress,
        deadline=None,
        timings=timings,
        t_start=t_start,
    )
    return command, metrics


def _nothing_to_resume(out: Path, folder: Path) -> str:
    """What to do instead of resuming a run folder ``out`` without a checkpoint."""
    if has_model(out, DETECTOR_DIR):
        return (
            f"nothing to resume in {out}: its detector's training finished (saved in "
            f"{out / DETECTOR_DIR}); dia evaluate --out {out} scores the test split with it"
        )
    again = "dia run or dia train"
    if has_model(out):
        again = "dia run (which reuses its diffusion model) or dia train"
    return (
        f"no checkpoint in {out} (expected {folder / ckpt.META_FILE}): the run stopped before "
        f"its detector training saved one; start it again with {again} and the same --out"
    )


def _own_meta(meta: dict) -> dict:
    """What :func:`checkpointing` put into a checkpoint's JSON, to be kept on resuming."""
    return {k: meta[k] for k in ("command", "every_s", "timings") if k in meta}
