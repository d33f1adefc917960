"""Score settings side by side on one trained network: validation AUROC and cost per image.

A network is trained once per data set (the preset's, as plain CSI, for ``--train-seconds``).
Its features are then computed one test-time sample at a time, for the training images (the
feature bank) and for the validation split, so that every combination below reuses them:
- the score's kind (features, similarity, shift term: ``KINDS``);
- how many shifts the score averages over (1: the image as it is, 4: every rotation);
- test-time samples for the bank and for the validation images, separately (0: one view that is
  not augmented; S: the mean of S augmented views).
Validation AUROC of every combination; scoring speed (images/s, a warm batch of validation
images) of every (shifts, samples). Nothing here looks at a test split. Each data set is an
entry of bench/results/<name>.json (default ``scoring``), merged with the entries there, and a
Markdown table is written beside it.

    python bench/scoring.py --data ../shared/data/pneumoniamnist.npz --label pneumoniamnist
    python bench/scoring.py --data ../shared/data/covid-ct --val-fraction 0.2 --label covid-ct
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import time
from pathlib import Path

import torch

from dia.augment import image_keys
from dia.config import DataConfig, RunConfig, ScoreConfig, replace_settings, to_dict
from dia.data import load_data
from dia.device import resolve_device, resolve_precision, set_cpu_memory_from_env
from dia.evaluation import anomaly_metrics
from dia.presets import apply_preset
from dia.provenance import code_commit, machine
from dia.scoring import ShiftedFeatures, build_bank, csi_score, features, plain_features
from dia.scoring import sample_features as one_sample
from dia.shifts import Rotation, get_shift
from dia.training import DetectorTrainer

# The score's kinds: ScoreConfig settings besides shifts and samples.
KINDS = {
    "encoder/cosine": {"features": "encoder", "cosine": True, "shift_weight": 0.0},
    "encoder/dot": {"features": "encoder", "cosine": False, "shift_weight": 0.0},
    "encoder/cosine/shift1": {"features": "encoder", "cosine": True, "shift_weight": 1.0},
    "csi": {"features": "projection", "cosine": False, "shift_weight": 1.0},
}
SHIFTS = (1, 2, Rotation.count)  # the last: every shift of the presets' family
SAMPLES = (0, 1, 2, 4, 10)  # 0: one view, not augmented


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a data spec, as dia run --data takes")
    p.add_argument("--label", required=True, help="the data set's name in the results")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--preset", default="quick", help="whose network and training settings")
    p.add_argument("--train-seconds", type=float, default=240.0)
    p.add_argument("--stem-stride", type=int, default=None, help="default: the preset's")
    p.add_argument("--max-samples", type=int, default=10, help="most test-time samples tried")
    p.add_argument("--max-bank", type=int, default=None, help="at most this many bank images")
    p.add_argument("--timing-images", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="scoring", help="writes NAME.json and NAME.md")
    return p.parse_args(argv)


def per_sample(net, images, config: RunConfig, samples: int, runtime) -> list[list]:
    """[plain, sample 0, ..., sample samples - 1]: [h, z, logits] of every shift for each."""
    device, precision = runtime
    score = replace_settings(config.score, shifts=get_shift(config.detector.loss.shift).count)
    plain = plain_features(net, images, config.detector, score, device, precision)
    out = [[plain.h, plain.z, plain.logits]]
    keys = image_keys(images)
    for s in range(samples):
        out.append(one_sample(net, images, config.detector, score, device, precision, s, keys))
    return out


def combined(parts: list[list], samples: int, shifts: int) -> ShiftedFeatures:
    """The features :func:`dia.scoring.features` gives with these samples and shifts."""
    chosen = parts[:1] if samples == 0 else parts[1 : samples + 1]
    h, z, logits = (sum(p[i] for p in chosen)[:shifts] / len(chosen) for i in range(3))
    return ShiftedFeatures(z=z, logits=logits, h=h)


def auroc_table(bank_parts, val_parts, labels, samples) -> dict[str, float]:
    """Validation AUROC, keyed 'KIND|shifts=K|bank=B|test=T'."""
    table = {}
    for kind, shifts, b, t in itertools.product(KINDS, SHIFTS, samples, samples):
        score = ScoreConfig(**KINDS[kind], shifts=shifts)
        bank = build_bank(combined(bank_parts, b, shifts), score)
        scores = csi_score(combined(val_parts, t, shifts), bank, score).numpy()
        key = f"{kind}|shifts={shifts}|bank={b}|test={t}"
        table[key] = round(anomaly_metrics(labels, -scores)["auroc"], 4)
    return table


def speed_table(net, images, config: RunConfig, samples, runtime) -> dict[str, float]:
    """Scoring images/s of every (shifts, samples), keyed 'shifts=K|samples=S': the faster of
    two timings after a warm-up."""
    device, precision = runtime
    rates = {}
    for shifts, s in itertools.product(SHIFTS, samples):
        score = replace_settings(config.score, shifts=shifts, samples=s)
        features(net, images[:8], config.detector, score, device, precision)  # warm
        seconds = []
        for _ in range(2):  # the faster of two: one slowed by another process does not count
            t0 = time.perf_counter()
            features(net, images, config.detector, score, device, precision)
            seconds.append(time.perf_counter() - t0)
        rates[f"shifts={shifts}|samples={s}"] = round(images.shape[0] / min(seconds), 2)
    return rates


def train_network(config: RunConfig, images, runtime):
    device, precision = runtime
    trainer = DetectorTrainer(
        config.detector, images, device=device, precision=precision, seed=config.seed
    )
    return trainer.train(progress=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_cpu_memory_from_env()  # as the dia command does
    base = apply_preset(RunConfig(), args.preset)
    data_cfg = DataConfig(
        spec=args.data, image_size=args.image_size, val_fraction=args.val_fraction
    )
    stem = base.detector.network.stem_stride if args.stem_stride is None else args.stem_stride
    detector = replace_settings(
        base.detector,
        dissolve="none",
        max_seconds=args.train_seconds,
        epochs=10_000,
        stem_stride=stem,
    )
    config = replace_settings(
        base, data=data_cfg, detector=detector, seed=args.seed, device=args.device
    )
    device = resolve_device(args.device)
    runtime = (device, resolve_precision(config.precision, device))
    data = load_data(data_cfg)
    if data.val is None:
        raise SystemExit(f"{args.data} has no validation split: pass --val-fraction")
    torch.manual_seed(args.seed)
    net, history = train_network(config, data.train, runtime)
    samples = tuple(s for s in SAMPLES if s <= args.max_samples)
    t0 = time.perf_counter()
    bank_images = data.train[: args.max_bank]
    bank_parts = per_sample(net, bank_images, config, max(samples), runtime)
    val_parts = per_sample(net, data.val, config, max(samples), runtime)
    features_s = time.perf_counter() - t0
    aurocs = auroc_table(bank_parts, val_parts, data.val_labels.numpy(), samples)
    timing = data.val[: args.timing_images]
    rates = speed_table(net, timing, config, samples, runtime)
    entry = {
        "command": " ".join(["python", "bench/scoring.py", *(argv or sys.argv[1:])]),
        "commit": code_commit(),
        "machine": {**machine(), "device": str(device)},
        "precision": runtime[1],
        "settings": {
            "data": to_dict(data_cfg),
            "preset": args.preset,
            "detector": to_dict(detector),
            "train_seconds": args.train_seconds,
            "bank_images": int(bank_images.shape[0]),
            "val_images": int(data.val.shape[0]),
            "image_size": data.image_size,
            "timing_images": int(timing.shape[0]),
        },
        "training": {k: history[k] for k in ("steps", "epochs", "images_per_s", "train_s")},
        "features_s": round(features_s, 1),
        "val_auroc": aurocs,
        "images_per_s": rates,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    write(args, entry)
    return 0


def write(args, entry: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    results = json.loads(path.read_text()) if path.is_file() else {"datasets": {}}
    results["datasets"][args.label] = entry
    path.write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown({"datasets": {args.label: entry}}))


def markdown(results: dict) -> str:
    """A table across data sets (the validation AUROC of every setting, the same samples for
    bank and test images), then one a data set with the cost per image beside each AUROC."""
    lines = ["# Score settings: validation AUROC and scoring speed", ""]
    lines += across(results["datasets"])
    for label, entry in results["datasets"].items():
        m, s = entry["machine"], entry["settings"]
        lines += [
            f"## {label}, {s['image_size']} px ({m['cpu_model']}, {m['cores']} threads, "
            f"{entry['precision']})",
            "",
            f"Network: preset {s['preset']}, CSI, {entry['training']['steps']} steps "
            f"({entry['training']['epochs']:.1f} epochs); bank {s['bank_images']} images, "
            f"validation {s['val_images']}. Same samples for bank and test images:",
            "",
            "| shifts | samples | passes an image | images/s | " + " | ".join(KINDS) + " |",
            "|---" * (4 + len(KINDS)) + "|",
        ]
        for key, rate in entry["images_per_s"].items():
            shifts, samples = (int(part.split("=")[1]) for part in key.split("|"))
            cells = [
                f"{entry['val_auroc'][f'{k}|shifts={shifts}|bank={samples}|test={samples}']:.3f}"
                for k in KINDS
            ]
            passes = shifts * max(samples, 1)
            lines.append(f"| {shifts} | {samples} | {passes} | {rate:.1f} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def across(datasets: dict) -> list[str]:
    """Rows 'kind, shifts x samples' with each data set's validation AUROC."""
    if len(datasets) < 2:
        return []
    names = list(datasets)
    lines = [
        "Validation AUROC across data sets (bank and test images with the same samples):",
        "",
        "| score | shifts x samples | passes | " + " | ".join(names) + " |",
        "|---" * (3 + len(names)) + "|",
    ]
    for kind, shifts, samples in itertools.product(KINDS, SHIFTS, SAMPLES):
        key = f"{kind}|shifts={shifts}|bank={samples}|test={samples}"
        cells = [datasets[n]["val_auroc"].get(key) for n in names]
        if all(c is None for c in cells):
            continue
        text = " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
        passes = shifts * max(samples, 1)
        lines.append(f"| {kind} | {shifts} x {samples} | {passes} | {text} |")
    return [*lines, ""]


if __name__ == "__main__":
    raise SystemExit(main())
