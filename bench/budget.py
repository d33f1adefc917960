"""Variants of DIA under one wall-clock budget and several seeds: a data set's accuracy table.

Every variant trains from scratch under the same budget, which covers everything a user waits
for (diffusion training, dissolve cache, detector training, feature bank; the data is loaded
once, beforehand); the detector's training ends in time for the bank (``RunConfig.budget_s``).
Each run scores the validation split (when the data has one: settings are chosen there) and the
test split (reported only), from the last checkpoint. Curve points, scored on both splits with
fewer test-time samples while training, are for reporting; nothing is chosen from them.

Two other ways to match the variants: ``--warm`` fits each learning dissolver (the diffusion
model) before the run's clock starts, taking a model kept by an earlier run with the same
images, settings and seed where there is one (``~/.cache/dia`` or ``$DIA_CACHE``); its one-time
cost is recorded apart from the run's wall time (``dissolver`` in each run's record). A cold run
(the default) trains it from scratch inside the budget. ``--epochs N`` matches steps instead of
time: no budget and no time limit, every variant trains the detector N epochs (the same steps,
batches and data), with its dissolver fitted beforehand. Every dissolving run also records its
dissolver's quality at t = 50 and 100 on held-out normal images (:mod:`dia.quality`).

Runs go one after another (two torch processes on one small CPU slow each other down many
times). Results are merged into bench/results/<name>.json after every run, so an interrupted
table resumes where it stopped: a (variant, seed) already there with the same settings is
skipped. A file holds one machine's runs of one mode (a budget buys as many steps as the
machine's speed allows): a run on another processor, with another DIA_CPU_MEMORY, another
budget or epoch count, or matched or warmed otherwise, is refused. A Markdown table is written
beside the JSON.

    python bench/budget.py --data ../shared/data/pneumoniamnist.npz --preset cpu \\
        --seeds 0 1 2 --variants dia csi gaussian median dia-t0-30 dia-t100-300 \\
        dia-cutperm csi-cutperm gaussian-cutperm median-cutperm
    python bench/budget.py --data ../shared/data/pneumoniamnist.npz --preset quick --warm \\
        --variants dia csi median --name pneumoniamnist-warm
    python bench/budget.py --data ../shared/data/pneumoniamnist.npz --preset quick --epochs 30 \\
        --variants dia csi median --name pneumoniamnist-steps
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from dia.baselines import BASELINES, knn_pixel_scores
from dia.config import DataConfig, RunConfig, replace_settings, to_dict
from dia.data import ImageData, load_data
from dia.device import resolve_device, resolve_precision, set_cpu_memory_from_env
from dia.diffusion.cache import CACHE_ENV
from dia.dissolve import IdentityDissolver
from dia.evaluation import anomaly_metrics
from dia.pipeline import held_out_normals, make_detector, make_dissolver
from dia.pipeline.steps import fitting_record
from dia.presets import apply_preset
from dia.provenance import code_commit, machine
from dia.quality import dissolver_quality
from dia.scoring import build_bank, csi_score, shifted_features

# Named variants: settings applied on top of the preset. "csi" is the reference of every claim.
DIA = {"detector.dissolve": "diffusion"}
VARIANTS: dict[str, dict[str, object]] = {
    "dia": DIA,
    "csi": {"detector.dissolve": "none"},
    "gaussian": {"detector.dissolve": "gaussian"},
    "median": {"detector.dissolve": "median"},
    "dia-t0-30": {**DIA, "detector.t_min": 0, "detector.t_max": 30},
    "dia-t100-300": {**DIA, "detector.t_min": 100, "detector.t_max": 300},
    "dia-cutperm": {**DIA, "detector.shift": "cutperm"},
    "csi-cutperm": {"detector.dissolve": "none", "detector.shift": "cutperm"},
    "gaussian-cutperm": {"detector.dissolve": "gaussian", "detector.shift": "cutperm"},
    "median-cutperm": {"detector.dissolve": "median", "detector.shift": "cutperm"},
    # A dissolved view for a quarter of each batch's images: fewer extra images a step.
    "median-f25": {"detector.dissolve": "median", "detector.dissolve_fraction": 0.25},
    "dia-f25": {**DIA, "detector.dissolve_fraction": 0.25},
}
# Score settings measured post hoc on every run (one network, many scores).
SCORE_GRID = {
    "features": ("projection", "encoder"),
    "cosine": (False, True),
    "shift_weight": (0.0, 0.25, 0.5, 1.0),
}
# Similarity averaged over more than the nearest bank feature: measured with no shift term.
GRID_NEIGHBOURS = (5, 20)
# Test-time crop areas other than the preset's, measured with no shift term (one more pass of
# features each: the crop changes what the network sees, not only how its outputs combine).
GRID_CROPS = (0.3, 1.0)
LABELS = {"dia": "DIA (diffusion)", "csi": "CSI (no dissolving)"}
# Dissolver quality of every dissolving run: at these timesteps, on at most this many held-out
# normal images (a few seconds of a diffusion model's passes on a CPU).
QUALITY_TIMESTEPS = (50, 100)
QUALITY_IMAGES = 200
# CSI's own score, whatever the preset's: projection features, CSI's norm-weighted similarity,
# shift term at weight 1 (a row of the score grid); paired differences are shown with it too.
CSI_SCORE = "projection/csi/shift1.0"


def parse_setting(text: str) -> tuple[str, object]:
    """'detector.t_min=0' -> ('detector.t_min', 0); 'device=cpu' sets a top-level field.

    Values are read as JSON when they parse (numbers, true/false, lists), else as strings.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SECTION.FIELD=VALUE or FIELD=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def variant_settings(spec: str) -> tuple[str, dict[str, object]]:
    """A variant name from VARIANTS, or 'NAME:KEY=VALUE,KEY=VALUE' built on 'dia'."""
    name, _, extra = spec.partition(":")
    base = dict(VARIANTS.get(name, DIA))
    if not extra and name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; named ones: {', '.join(VARIANTS)}")
    for item in filter(None, extra.split(",")):
        key, value = parse_setting(item)
        base[key] = value
    return name, base


def apply_settings(config: RunConfig, settings: dict[str, object]) -> RunConfig:
    for key, value in settings.items():
        section, _, field = key.partition(".")
        if not field:
            config = replace_settings(config, **{section: value})
            continue
        if isinstance(value, list):
            value = tuple(value)
        sub = replace_settings(getattr(config, section), **{field: value})
        config = replace_settings(config, **{section: sub})
    return config


def splits(data: ImageData) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {"test": (data.test, data.test_labels)}
    if data.val is not None and data.val_labels is not None:
        out["val"] = (data.val, data.val_labels)
    return out


def features_of(net, images: torch.Tensor, config: RunConfig, samples: int):
    """Test-time-augmented features of ``images`` with S = samples."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    score = replace_settings(config.score, samples=samples)
    return shifted_features(net, images, config.detector, score, device, precision)


def labelled_features(net, data: ImageData, config: RunConfig, samples: int):
    """{split: (features, labels)} for every labelled split."""
    return {
        name: (features_of(net, images, config, samples), y)
        for name, (images, y) in splits(data).items()
    }


def auroc(feats, labels, bank, score) -> float:
    return anomaly_metrics(labels.numpy(), -csi_score(feats, bank, score).numpy())["auroc"]


def auroc_of(net, data: ImageData, config: RunConfig, samples: int) -> dict[str, float]:
    """AUROC of every labelled split, with a bank of the training images and S = samples."""
    bank = build_bank(features_of(net, data.train, config, samples), config.score)
    feats = labelled_features(net, data, config, samples)
    return {name: auroc(f, y, bank, config.score) for name, (f, y) in feats.items()}


def one_run(
    config: RunConfig,
    data: ImageData,
    curve_every: float | None,
    curve_samples: int,
    crops: tuple[float, ...] = GRID_CROPS,
    warm: bool = False,
):
    """Train and evaluate one (variant, seed); returns the record stored in the JSON.
    ``crops``: the test-time crop areas of the score grid's extra rows (a pass each).
    ``warm``: a dissolver that learns is fitted before the run's clock starts (or taken from
    the model cache), else the detector fits it from scratch inside the run's time."""
    device = resolve_device(config.device)
    dissolver = make_dissolver(config)
    fitting = fit_beforehand(dissolver, data, config) if warm and dissolver.learns else None
    detector, wall, curve = timed_fit(config, data, dissolver, curve_every, curve_samples)
    record = {
        "commit": code_commit(),
        "machine": machine(),
        "precision": resolve_precision(config.precision, device),
        "wall_s": round(wall, 1),
        "train_images_per_s": round(detector.history_["images_per_s"], 1),
        "steps": detector.history_["steps"],
        "dissolved_steps": detector.history_.get("dissolved_steps", 0),
        "epochs": round(detector.history_["epochs"], 2),
        "timings_s": {
            **{k: round(v, 1) for k, v in detector.timings_.items()},
            "dissolve_cache_s": round(detector.history_["dissolve_cache_s"], 1),
        },
        "curve_columns": ["seconds", *splits(data)],
        "curve": curve,
    }
    if dissolver.learns:
        record["dissolver"] = fitting or fitted_inside(detector)
    quality = quality_of(detector.dissolver_, data)
    if quality:
        record["dissolver_quality"] = quality
    record.update(evaluate_run(detector, data, config, crops))
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return record


def timed_fit(config: RunConfig, data: ImageData, dissolver, curve_every, curve_samples):
    """The fitted detector, the run's wall time (curve points left out) and its curve."""
    paused = 0.0  # seconds spent on curve points, not part of the run's wall time
    curve: list[list[float]] = []
    t_start = time.perf_counter()

    def curve_point(net, _train_s):
        nonlocal paused
        c0 = time.perf_counter()
        at = c0 - t_start - paused
        scores = auroc_of(net, data, config, curve_samples)
        curve.append([round(at, 1), *(round(scores.get(s, float("nan")), 4) for s in scores)])
        paused += time.perf_counter() - c0

    detector = make_detector(config, progress=False)
    deadline = None if config.budget_s is None else t_start + config.budget_s
    with nothing_kept():  # a cold run trains its dissolver inside its time, from scratch
        detector.fit(
            data.train,
            dissolver=dissolver,
            callback=curve_point if curve_every else None,
            callback_every_s=curve_every,
            deadline=deadline,
            keep_features=True,
            groups=data.train_groups,
        )
    return detector, time.perf_counter() - t_start - paused, curve


@contextlib.contextmanager
def nothing_kept():
    """No diffusion model is taken from or put in the model cache meanwhile ($DIA_CACHE=off)."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = "off"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before


def fit_beforehand(dissolver, data: ImageData, config: RunConfig) -> dict:
    """Fit a learning ``dissolver`` on the training images before a run (or take the model
    the cache keeps for them): its one-time cost, apart from the run's wall time."""
    t0 = time.perf_counter()
    history = dissolver.fit(
        data.train, device=resolve_device(config.device), seed=config.seed, progress=False
    )
    fit_s = time.perf_counter() - t0
    return {"fit_s": round(fit_s, 1), **fitting_record(history), "in_wall": False}


def fitted_inside(detector) -> dict:
    """What the detector's own fitting of its dissolver cost, inside the run's wall time."""
    fit_s = detector.timings_.get("dissolver_fit_s", 0.0)
    history = getattr(detector, "dissolver_history_", {})
    return {"fit_s": round(fit_s, 1), **fitting_record(history), "in_wall": True}


def quality_of(dissolver, data: ImageData) -> dict | None:
    """:func:`~dia.quality.dissolver_quality` at QUALITY_TIMESTEPS on at most QUALITY_IMAGES
    normal images no model was trained on (the validation split's, else the test split's);
    None for plain CSI, or with too few images for the cross-validated separability."""
    if dissolver is None or isinstance(dissolver, IdentityDissolver):
        return None
    normals = held_out_normals(data)[:QUALITY_IMAGES]
    if len(normals) < 10:
        return None
    model = getattr(dissolver, "model", None)  # a diffusion model's denoising is measured
    quality = dissolver_quality(dissolver, normals, QUALITY_TIMESTEPS, model)
    return {**quality, "images": len(normals)}


def evaluate_run(detector, data: ImageData, config: RunConfig, crops) -> dict:
    """Each labelled split's metrics with the detector's own score, the features' speed and
    the AUROC of every score setting (``auroc_by_score``)."""
    # One pass of features serves the detector's own score (its bank, its threshold's score)
    # and the table of other score settings; the training images' are the ones fit computed.
    t0 = time.perf_counter()
    train = detector.train_features_
    feats = labelled_features(detector.net_, data, config, config.score.samples)
    record: dict = {
        "features_images_per_s": round(
            sum(len(y) for _, y in feats.values()) / (time.perf_counter() - t0), 1
        )
    }
    for name, (f, labels) in feats.items():
        anomaly = -csi_score(f, detector.bank_, config.score).numpy()
        record[name] = {k: round(v, 4) for k, v in anomaly_metrics(labels.numpy(), anomaly).items()}
    record["auroc_by_score"] = score_grid(train, feats, config)
    for crop in crops:
        record["auroc_by_score"].update(crop_grid(detector.net_, data, config, crop))
    return record


def score_grid(
    train, feats, config: RunConfig, shift_weights=SCORE_GRID["shift_weight"], suffix: str = ""
) -> dict[str, dict[str, float]]:
    """AUROC of every split under every score setting of SCORE_GRID (shift weights as given),
    from one set of features: what the score settings are chosen from (on the validation
    split). ``suffix`` ends every key, e.g. '/crop0.3' for features made with that crop."""
    grid: dict[str, dict[str, float]] = {}
    for features, cosine, weight in itertools.product(
        SCORE_GRID["features"], SCORE_GRID["cosine"], shift_weights
    ):
        score = replace_settings(
            config.score, features=features, cosine=cosine, shift_weight=weight
        )
        bank = build_bank(train, score)
        key = f"{features}/{'cosine' if cosine else 'csi'}/shift{weight}"
        grid[key + suffix] = {
            name: round(auroc(f, y, bank, score), 4) for name, (f, y) in feats.items()
        }
        for neighbours in GRID_NEIGHBOURS if weight == 0 and not suffix else ():
            more = replace_settings(score, neighbours=neighbours)
            grid[f"{key}/k{neighbours}"] = {
                name: round(auroc(f, y, bank, more), 4) for name, (f, y) in feats.items()
            }
    return grid


def crop_grid(net, data: ImageData, config: RunConfig, crop: float) -> dict[str, dict]:
    """The no-shift rows of :func:`score_grid` with the test-time crop area fixed at ``crop``
    for the bank and the scored images alike (one more pass of features)."""
    config = replace_settings(config, score=replace_settings(config.score, crop_scale=crop))
    train = features_of(net, data.train, config, config.score.samples)
    feats = labelled_features(net, data, config, config.score.samples)
    return score_grid(train, feats, config, shift_weights=(0.0,), suffix=f"/crop{crop}")


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def by_score(runs: dict, seed: str, key: str, split: str) -> float:
    return runs[seed]["auroc_by_score"][key][split]


def summarise(results: dict) -> None:
    """Per-variant lists over seeds (the schema of the issue), paired differences against csi."""
    reference = results["variants"].get("csi", {}).get("runs", {})
    for entry in results["variants"].values():
        runs = entry["runs"]
        seeds = sorted(runs, key=int)
        entry["seeds"] = [int(s) for s in seeds]
        entry["auroc"] = [runs[s]["test"]["auroc"] for s in seeds]
        entry["auprc"] = [runs[s]["test"]["auprc"] for s in seeds]
        entry["val_auroc"] = [runs[s]["val"]["auroc"] for s in seeds if "val" in runs[s]]
        entry["wall_s"] = [runs[s]["wall_s"] for s in seeds]
        entry["steps"] = [runs[s]["steps"] for s in seeds]
        entry["train_images_per_s"] = statistics.mean(runs[s]["train_images_per_s"] for s in seeds)
        entry["peak_rss_mb"] = max(runs[s]["peak_rss_mb"] for s in seeds)
        entry["curve"] = mean_curve(runs, seeds)
        entry["auroc_by_score"] = mean_scores(runs, seeds)
        entry.update(against_reference(runs, reference, seeds))
        fits = [runs[s]["dissolver"]["fit_s"] for s in seeds if "dissolver" in runs[s]]
        entry["dissolver_fit_s"] = fits
        quality = mean_quality([runs[s].get("dissolver_quality") for s in seeds])
        if quality:
            entry["dissolver_quality"] = quality


def against_reference(runs: dict, reference: dict, seeds: list[str]) -> dict:
    """A variant's per-seed AUROC minus the reference's (csi's) runs of the same seeds."""
    paired = [s for s in seeds if s in reference]
    return {
        "minus_csi": [
            round(runs[s]["test"]["auroc"] - reference[s]["test"]["auroc"], 4) for s in paired
        ],
        "val_minus_csi": [
            round(runs[s]["val"]["auroc"] - reference[s]["val"]["auroc"], 4)
            for s in paired
            if "val" in runs[s]
        ],
        "paired_seeds": [int(s) for s in paired],
        "minus_csi_by_score": paired_differences(runs, reference, paired),
    }


def mean_curve(runs: dict, seeds: list[str]) -> list[list[float]]:
    """[seconds, test AUROC] of the curves, averaged over seeds point by point."""
    test = runs[seeds[0]]["curve_columns"].index("test")
    points = min(len(runs[s]["curve"]) for s in seeds)
    return [
        [round(statistics.mean(runs[s]["curve"][i][j] for s in seeds), 4) for j in (0, test)]
        for i in range(points)
    ]


def mean_scores(runs: dict, seeds: list[str]) -> dict[str, dict[str, float]]:
    """The mean over seeds of each score setting's AUROC on every split: the settings every
    seed measured (a grid row added later is missing in older runs)."""
    keys = runs[seeds[0]].get("auroc_by_score", {})
    keys = {k: v for k, v in keys.items() if all(k in runs[s]["auroc_by_score"] for s in seeds)}
    return {
        key: {
            split: round(statistics.mean(by_score(runs, s, key, split) for s in seeds), 4)
            for split in keys[key]
        }
        for key in keys
    }


def paired_differences(runs: dict, reference: dict, seeds: list[str]) -> dict:
    """Per seed, a variant's AUROC minus the reference's on every split: with each run's own
    score (``preset``) and with CSI's (:data:`CSI_SCORE`) where both runs measured it."""

    def own(run: dict, split: str) -> float | None:
        return run.get(split, {}).get("auroc")

    def csi(run: dict, split: str) -> float | None:
        return run.get("auroc_by_score", {}).get(CSI_SCORE, {}).get(split)

    out: dict = {}
    for score, value in (("preset", own), (CSI_SCORE, csi)):
        for split in ("val", "test"):
            pairs = [(value(runs[s], split), value(reference[s], split)) for s in seeds]
            if pairs and all(a is not None and b is not None for a, b in pairs):
                out.setdefault(score, {})[split] = [round(a - b, 4) for a, b in pairs]
    return out


def mean_quality(records: list[dict | None]) -> dict | None:
    """The mean over seeds of each dissolver-quality measure at each timestep (None unless
    every seed measured its dissolver at the same timesteps)."""
    if not records or any(r is None or r["t"] != records[0]["t"] for r in records):
        return None
    fields = [k for k, v in records[0].items() if isinstance(v, list) and k != "t"]
    fields = [k for k in fields if all(k in r for r in records)]
    out = {"t": records[0]["t"]}
    for key in fields:
        out[key] = [
            round(statistics.mean(v), 4) for v in zip(*(r[key] for r in records), strict=True)
        ]
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(results: dict) -> str:
    steps = table_mode(results)["matched"] == "steps"
    lines = [
        f"# {results['dataset']}: "
        + (
            f"{results['epochs']} epochs a run"
            if steps
            else f"budget {results['budget_s']:.0f} s a run"
        )
        + f", preset {results['preset']}, last checkpoint",
        "",
        f"Machine: {results['machine']['cpu']}"
        + (f" ({model})" if (model := results["machine"].get("cpu_model")) else "")
        + (", AMX" if results["machine"].get("amx") else "")
        + f", {results['machine']['cores']} threads, "
        f"torch {results['machine']['torch']}. Settings chosen on: {results['chosen_on']}. "
        "Paired differences are per seed against `csi`. " + mode_text(results),
        "",
        *variant_table(results),
        *score_table(results),
        *paired_table(results),
    ]
    return "\n".join(lines) + "\n"


def mode_text(results: dict) -> str:
    """How the table's variants were matched, in a sentence or two."""
    mode = table_mode(results)
    if mode["matched"] == "steps":
        text = (
            f"Step-matched: no time limit, every variant trains the detector {mode['epochs']} "
            "epochs (the same steps, batch size and data)"
        )
    else:
        text = "Time-matched: every run has the same wall-clock budget"
    if mode["warm"]:
        return text + (
            "; a learning dissolver (the diffusion model) is trained before each run, outside "
            "its wall time, or taken from the model cache (each run's `dissolver` record)."
        )
    return text + "; the diffusion model is trained from scratch inside each run's budget."


def quality_cell(entry: dict, field: str) -> str:
    """A variant's mean dissolver-quality ``field`` at each timestep, '-' where not measured."""
    values = entry.get("dissolver_quality", {}).get(field)
    return " / ".join(f"{v:.3f}" for v in values) if values else "-"


def variant_table(results: dict) -> list[str]:
    """The main table: the baselines and every variant's AUROC, dissolver quality and cost."""
    at = " / ".join(str(t) for t in QUALITY_TIMESTEPS)
    lines = [
        "| variant | test AUROC per seed | test AUROC | minus csi (paired) | val AUROC | "
        f"val minus csi | AUPRC | detail ratio t={at} | denoise ratio t={at} | wall s | "
        "train steps | train img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in BASELINES.items():
        if key in results["baselines"]:
            b = results["baselines"][key]
            lines.append(
                f"| {label} | - | {b['test']['auroc']:.3f} | - | "
                f"{_fmt(b.get('val', {}).get('auroc'))} | - | {b['test']['auprc']:.3f} | "
                "- | - | - | - | - |"
            )
    for name, r in results["variants"].items():
        per_seed = ", ".join(f"{a:.3f}" for a in r["auroc"])
        lines.append(
            f"| {LABELS.get(name, name)} | {per_seed} | {mean_sd(r['auroc'])} | "
            f"{mean_sd(r['minus_csi']) if name != 'csi' else '-'} | {mean_sd(r['val_auroc'])} | "
            f"{mean_sd(r['val_minus_csi']) if name != 'csi' else '-'} | {mean_sd(r['auprc'])} | "
            f"{quality_cell(r, 'detail_ratio')} | {quality_cell(r, 'denoise_mse_ratio')} | "
            f"{statistics.mean(r['wall_s']):.0f} | {statistics.mean(r['steps']):.0f} | "
            f"{r['train_images_per_s']:.0f} |"
        )
    return [
        *lines,
        "",
        "Detail ratio: the dissolved images' high-frequency energy over the originals' (below "
        "1: detail removed); denoise ratio: the diffusion model's one-step denoising error over "
        f"the noise's (`dia.quality`); both on up to {QUALITY_IMAGES} held-out normal "
        "images, mean over seeds.",
    ]


def score_table(results: dict) -> list[str]:
    """Every score setting's mean AUROC, one column a variant."""
    names = list(results["variants"])
    keys = list(dict.fromkeys(k for n in names for k in results["variants"][n]["auroc_by_score"]))
    has_val = "val" in results["baselines"]["knn_pixel_k5"]
    splits_shown = "validation / test" if has_val else "test (no validation split)"
    lines = [
        "",
        "Score settings (features / similarity / shift-term weight / bank neighbours averaged, "
        "1 when not shown / test-time crop area, the preset's when not shown), measured on "
        f"the same networks after training: mean AUROC over seeds, {splits_shown}.",
        "",
        "| score | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in keys:
        cells = []
        for name in names:
            cell = results["variants"][name]["auroc_by_score"].get(key, {})
            cells.append(" / ".join(f"{cell[s]:.3f}" for s in ("val", "test") if s in cell) or "-")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def paired_table(results: dict) -> list[str]:
    """Each variant's per-seed AUROC minus csi's (the same seed), with the preset's score and
    with CSI's own; nothing without csi runs."""
    others = {n: e for n, e in results["variants"].items() if n != "csi"}
    if "csi" not in results["variants"] or not others:
        return []
    lines = [
        "",
        "## Paired differences against csi",
        "",
        "AUROC minus csi's with the same seed, mean ± sd over the seeds both ran: with the "
        "preset's score (each run's own, as above) and with CSI's own score (projection "
        f"features, CSI's norm-weighted similarity, shift-term weight 1: `{CSI_SCORE}`), "
        "measured on the same networks.",
        "",
        "| variant | paired seeds | preset score, val | preset score, test | CSI score, val | "
        "CSI score, test |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in others.items():
        diffs = entry.get("minus_csi_by_score", {})
        cells = [
            mean_sd(diffs.get(score, {}).get(split, []))
            for score in ("preset", CSI_SCORE)
            for split in ("val", "test")
        ]
        seeds = ", ".join(str(s) for s in entry.get("paired_seeds", [])) or "-"
        lines.append(f"| {LABELS.get(name, name)} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/pneumoniamnist.npz")
    p.add_argument("--preset", default="cpu")
    matched = p.add_mutually_exclusive_group()
    matched.add_argument(
        "--budget", type=float, default=None, help="seconds a run (default: the preset's)"
    )
    matched.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="step-matched: no budget or time limit, every variant trains the detector N "
        "epochs, with its dissolver fitted beforehand",
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="fit a learning dissolver before each run's clock starts (or take the model "
        "cache's), its cost recorded apart from the run's wall time",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["dia", "csi", "gaussian", "median"])
    p.add_argument(
        "--set",
        type=parse_setting,
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="a setting applied to every variant, e.g. data.image_size=32",
    )
    p.add_argument("--curve-every", type=float, default=None, help="training seconds")
    p.add_argument("--curve-samples", type=int, default=4, help="test-time samples of a point")
    p.add_argument(
        "--crops",
        type=float,
        nargs="*",
        default=list(GRID_CROPS),
        help="test-time crop areas measured besides the preset's (none: skip those passes)",
    )
    p.add_argument("--name", default=None, help="result name (default: the data name)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def same_settings(stored: dict, current: dict) -> bool:
    """True if a stored variant was run with the current settings. A setting the stored
    record lacks (one added to the code since) matches when it is at its default value."""
    defaults = json.loads(json.dumps(to_dict(RunConfig())))

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    old, new, default = flat(stored), flat(current), flat(defaults)
    if set(old) - set(new):
        return False
    return all(old[k] == v if k in old else default.get(k, object()) == v for k, v in new.items())


def chosen_on(data: ImageData) -> str:
    if data.val is None:
        return (
            "no validation split here, so the preset's settings as they are; "
            "the test split reports only"
        )
    held = data.info.get("val_held_out")
    where = (
        f"the validation split held out of the training folders ({held['normal']} normal, "
        f"{held['abnormal']} abnormal images)"
        if held
        else "the validation split"
    )
    return f"{where}; the test split reports only"


# What makes two machines alike for a budget: the same processor, cores and accelerator, and
# the same way of taking CPU memory (runs that predate the record took it the system's way).
MACHINE_KEYS = ("cpu_model", "amx", "cores", "cuda", "cpu_memory")
MACHINE_DEFAULTS = {"cpu_memory": "system"}


def machine_text(m: dict) -> str:
    return ", ".join(f"{key} {_machine_value(m, key)!r}" for key in MACHINE_KEYS)


def _machine_value(m: dict, key: str):
    return m.get(key, MACHINE_DEFAULTS.get(key))


def other_machine(results: dict, current: dict) -> str | None:
    """The first machine unlike ``current`` that a run in ``results`` records (None when
    every run that records one ran on a machine like it)."""
    for entry in results.get("variants", {}).values():
        for run in entry.get("runs", {}).values():
            ran_on = run.get("machine")
            if ran_on and any(
                _machine_value(ran_on, k) != _machine_value(current, k) for k in MACHINE_KEYS
            ):
                return machine_text(ran_on)
    return None


def table_mode(results: dict) -> dict:
    """How a results file's runs are matched: ``matched`` ("time" or "steps"), ``warm``
    (dissolvers fitted before the runs), ``budget_s`` and, step-matched, ``epochs``. A file
    made before these modes existed is time-matched and cold."""
    mode = {
        "matched": results.get("matched", "time"),
        "warm": bool(results.get("warm", False)),
        "budget_s": results.get("budget_s"),
    }
    if mode["matched"] == "steps":
        mode["epochs"] = results.get("epochs")
    return mode


def requested_mode(args: argparse.Namespace, base: RunConfig) -> dict:
    """:func:`table_mode` of the runs the arguments ask for (step-matched runs are warm)."""
    if args.epochs is not None:
        return {"matched": "steps", "warm": True, "budget_s": None, "epochs": args.epochs}
    return {"matched": "time", "warm": args.warm, "budget_s": base.budget_s}


def mode_label(mode: dict) -> str:
    """A :func:`table_mode` in words: 'time-matched (budget 420.0 s), cold'."""
    clock = (
        f"step-matched ({mode['epochs']} epochs)"
        if mode["matched"] == "steps"
        else f"time-matched (budget {mode['budget_s']} s)"
    )
    return f"{clock}, {'warm' if mode['warm'] else 'cold'}"


def step_matched(config: RunConfig, epochs: int | None) -> RunConfig:
    """``config`` with no budget and no time limit and ``epochs`` detector epochs (as it is
    where ``epochs`` is None)."""
    if epochs is None:
        return config
    detector = replace_settings(config.detector, epochs=epochs, max_seconds=None)
    return replace_settings(config, budget_s=None, detector=detector)


def base_config(args: argparse.Namespace) -> RunConfig:
    """Every variant's settings before its own: the preset's, ``--set``'s, the budget's."""
    base = apply_preset(RunConfig(data=DataConfig(spec=args.data)), args.preset)
    base = apply_settings(base, dict(args.set))
    if args.budget is not None:
        base = replace_settings(base, budget_s=args.budget)
    base = step_matched(base, args.epochs)
    if base.budget_s is None and args.epochs is None:
        raise SystemExit("no budget: pass --budget SECONDS, a preset that sets one, or --epochs N")
    return base


def open_table(path: Path, mode: dict) -> dict:
    """The results stored at ``path`` (empty when there are none); runs of another mode, or
    made on another machine, are refused."""
    results = json.loads(path.read_text()) if path.exists() else {}
    if results and table_mode(results) != mode:
        raise SystemExit(
            f"{path} holds a {mode_label(table_mode(results))} table, and these runs "
            f"would be {mode_label(mode)}; use another --name"
        )
    elsewhere = other_machine(results, machine())
    if elsewhere:
        why = (
            "a budget buys as many steps as a machine's speed allows"
            if mode["matched"] == "time"
            else "its wall times and speeds are one machine's"
        )
        raise SystemExit(
            f"{path} holds runs made on {elsewhere}, and this is {machine_text(machine())}: "
            f"{why}, so a table holds one machine's runs; use another --name"
        )
    return results


def baselines_of(data: ImageData) -> dict:
    """Pixel-kNN AUROCs of every labelled split, raw and standardised pixels."""
    return {
        f"knn_{kind}_k5": {
            split: anomaly_metrics(
                labels.numpy(), knn_pixel_scores(data.train, images, 5, kind == "standardized")
            )
            for split, (images, labels) in splits(data).items()
        }
        for kind in ("pixel", "standardized")
    }


def write_table(results: dict, out: Path, name: str) -> None:
    """Summarise ``results`` and write them to ``out/<name>.json`` and its Markdown table."""
    summarise(results)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(results))


def run_variant(spec: str, base: RunConfig, args, data: ImageData, results: dict, name: str):
    """Every seed of one variant not in ``results`` yet, written after each run."""
    vname, settings = variant_settings(spec)
    if any(key.startswith("data.") for key in settings):
        # the data are loaded once for all variants, so a variant cannot change them
        raise SystemExit(f"{spec}: data settings apply to every variant; pass them with --set")
    config = step_matched(apply_settings(base, settings), args.epochs)
    entry = results["variants"].setdefault(vname, {"runs": {}})
    config_dict = json.loads(json.dumps({k: v for k, v in to_dict(config).items() if k != "seed"}))
    if entry.get("settings") is not None and not same_settings(entry["settings"], config_dict):
        raise SystemExit(
            f"variant {vname} in {args.out / name}.json has other settings; use another --name"
        )
    entry["settings"] = config_dict
    for seed in args.seeds:
        if str(seed) in entry["runs"]:
            continue
        record = one_run(
            replace_settings(config, seed=seed),
            data,
            args.curve_every,
            args.curve_samples,
            tuple(args.crops),
            warm=results["warm"],
        )
        entry["runs"][str(seed)] = record
        val = record.get("val", {}).get("auroc")
        print(
            f"{vname} seed {seed}: test AUROC {record['test']['auroc']:.4f}, "
            f"val {_fmt(val)}, {record['wall_s']:.0f} s",
            flush=True,
        )
        write_table(results, args.out, name)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_cpu_memory_from_env()  # as the dia command does: runs take the speed users get
    name = args.name or Path(args.data.rstrip("/")).stem.replace("medmnist:", "")
    base = base_config(args)
    mode = requested_mode(args, base)
    results = open_table(args.out / f"{name}.json", mode)
    data = load_data(base.data)
    results.update(
        dataset=name,
        data_spec=args.data,
        preset=args.preset,
        **mode,
        machine=machine(),
        commit=code_commit(),  # of the latest invocation; each run records its own
        protocol="last-checkpoint",
        chosen_on=chosen_on(data),
        counts=data.counts(),
        baselines=baselines_of(data),
    )
    results.setdefault("variants", {})
    results.setdefault("commands", [])
    command = " ".join(["python", "bench/budget.py", *(argv or sys.argv[1:])])
    if command not in results["commands"]:
        results["commands"].append(command)
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.variants:
        run_variant(spec, base, args, data, results, name)
    write_table(results, args.out, name)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
