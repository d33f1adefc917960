"""Scoring a test split with a trained detector: ``scores.csv``, ``metrics.json`` and the
pictures beside them, for a run's own test split or another data set's (an external one)."""

from __future__ import annotations

import csv
import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import __version__, distributed
from ..baselines import baseline_aurocs
from ..config import DataConfig, RunConfig, replace_settings, to_dict
from ..data import ImageData, load_test_set
from ..detector import DIADetector
from ..device import resolve_device, resolve_precision
from ..dissolve import Dissolver, IdentityDissolver
from ..evaluation import anomaly_metrics
from ..io import new_folder, read_json, write_csv, write_json
from ..maps import check_patch
from ..provenance import code_commit, machine
from ..quality import dissolver_quality
from ..reports import PICTURE_COUNT, roc_plot, score_histogram
from .folders import (
    DETECTOR_DIR,
    EXTERNAL_DIR,
    TIMINGS_NAME,
    detector_digest,
    is_run_folder,
    load_config,
)
from .pictures import (
    refresh_report,
    write_anomaly_maps,
    write_dissolve_grid,
    write_report,
    write_training_curve,
)
from .steps import held_out_normals, load_detector, load_dissolver, load_run_data

# How a run's dissolver is measured: on this many held-out normal images, at these timesteps.
QUALITY_IMAGES = 64
QUALITY_TIMESTEPS = (50, 100)


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


def dissolve_grid_step(
    config: RunConfig, data: ImageData, out: Path, dissolver: Dissolver, metrics: dict
) -> None:
    """``dissolve_grid.png`` of a run that dissolves, and how well its dissolver dissolves
    (:func:`~dia.quality.dissolver_quality` at t = 50 and 100 on normal images it was not
    trained on), timed into ``metrics``."""
    if isinstance(dissolver, IdentityDissolver):
        return
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    images = data.test[:PICTURE_COUNT]
    write_dissolve_grid(dissolver, images, out / "dissolve_grid.png", device)
    normals = held_out_normals(data)[:QUALITY_IMAGES].to(device)
    if len(normals) >= 10:  # enough for the cross-validated separability
        model = getattr(dissolver, "model", None)  # a diffusion model's denoising is measured
        quality = dissolver_quality(dissolver, normals, QUALITY_TIMESTEPS, model)
        metrics["dissolver_quality"] = {**quality, "images": len(normals)}
    metrics["wall_s"]["dissolve_grid_s"] = time.perf_counter() - t0


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
    kept = ("resumed_at_step", "diffusion_reused", "diffusion", "dissolver_quality")
    extra = {k: earlier[k] for k in kept if earlier.get(k)}
    data = load_run_data(config)
    metrics = evaluate_step(config, data, detector, out, timings, extra, finish=False)
    if not (out / "dissolve_grid.png").is_file():  # the run stopped before drawing it
        dissolver = load_dissolver(out, config)
        if dissolver is not None:  # a learned one is not there when the run kept none
            dissolve_grid_step(config, data, out, dissolver, metrics)
    finish_run(out, metrics)
    return metrics


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

    ``settings`` are :class:`~dia.config.DataConfig` settings by their flat names: ``spec``
    and, optionally, ``normal_class``, ``cache_dir`` (else the run's) and ``dicom_window``
    (else the detector's). Images are read at the detector's size and channels, and the
    threshold stays the one chosen on the run's own normal training images.
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
    """How an external test set (``settings``: :class:`~dia.config.DataConfig` settings by
    their flat names) is read for ``detector``: at its size and channels, DICOM files through
    its window unless ``settings`` give another."""
    settings = {"dicom_window": detector.dicom_window, **settings}
    size, channels = detector.image_size_, detector.channels_
    return replace_settings(DataConfig(), **settings, image_size=size, channels=channels)


def _same_data(spec: str, other: str) -> bool:
    """Whether two data specs name the same data set (the same path, however written)."""
    paths = [Path(s.strip()).expanduser() for s in (spec, other)]
    if all(p.exists() for p in paths):
        return paths[0].resolve() == paths[1].resolve()
    return spec.strip().lower() == other.strip().lower()


def evaluation_config(
    out: Path, detector: DIADetector, config: RunConfig, external: bool = False
) -> RunConfig:
    """The settings that the detector saved in ``out`` is evaluated with: a run folder's own,
    on ``config``'s device; for a detector saved by the library, which does not record its
    training data (``external``: a test set is named), ``config`` with the detector's own."""
    if is_run_folder(out):
        return dataclasses.replace(load_config(out), device=config.device)
    if not external:
        raise ValueError(
            f"{out} holds a detector saved without the data it was trained on; pass --data "
            "with the images to score"
        )
    return dataclasses.replace(
        config, detector=detector.detector_config, score=detector.score_config, seed=detector.seed
    )


def evaluate(
    out: Path,
    detector: DIADetector | None = None,
    test_set: dict | None = None,
    config: RunConfig | None = None,
) -> tuple[dict, Path]:
    """``dia evaluate``: score the test split of run ``out`` with its saved detector
    (:func:`evaluate_saved`), or with ``test_set`` (:class:`~dia.config.DataConfig` fields)
    another data set's test images (:func:`evaluate_external`). ``detector``: the one saved in
    ``out``, loaded already; ``config``: as :func:`evaluation_config` gives it. Returns the
    metrics and the folder that holds them."""
    detector = detector or load_detector(out)
    config = config or evaluation_config(out, detector, RunConfig(), bool(test_set))
    run = is_run_folder(out)
    if run and not test_set:
        return evaluate_saved(config, detector, out), out
    trained_on = config.data if run else None
    return evaluate_external(config, detector, out, test_set or {}, trained_on)


def draw_anomaly_maps(
    out: Path,
    detector: DIADetector | None = None,
    test_set: dict | None = None,
    config: RunConfig | None = None,
    count: int = PICTURE_COUNT,
    patch: int | None = None,
    stride: int | None = None,
    path: Path | None = None,
    note: Callable[[str], None] | None = None,
) -> tuple[Path, int]:
    """``dia maps``: the anomaly maps of the ``count`` lowest-scoring test images of run
    ``out`` (by its ``scores.csv`` while they are its detector's, else scored anew), or of
    ``test_set``'s, into ``path`` (default ``out/anomaly_maps.png``); ``note`` is told which
    scores pick them. Returns the picture's path and how many images it shows."""
    detector = detector or load_detector(out)
    config = config or evaluation_config(out, detector, RunConfig(), bool(test_set))
    say = note or (lambda line: None)
    size = detector.image_size_
    check_patch(size, size, patch, stride)  # before scoring the whole test split
    scores = None
    if test_set:  # a library's detector: the test images dia evaluate scores
        data = load_test_set(external_data_config(detector, test_set))
    else:
        data = load_run_data(config)
        scores = saved_test_scores(out, data, detector)
    if scores is None:
        say(f"scoring {len(data.test)} test images to pick the lowest-scoring")
        scores = detector.score_samples(data.test)
    else:
        say(f"the lowest-scoring test images by {out / 'scores.csv'}")
    path = path or out / "anomaly_maps.png"
    shown = write_anomaly_maps(detector, data.test, scores, path, count, patch, stride)
    refresh_report(out)
    return path, shown
