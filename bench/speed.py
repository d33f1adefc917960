"""Speed of the detector's training step and of scoring, variants side by side in one process.

Compared on the same images, the same network and the same number of steps:
- numeric precision: fp32 against bf16 autocast (both channels_last), and the memory layout:
  channels_last against the plain one;
- dissolving: looked up in a precomputed cache against calling the UNet every step
  (the cache's one-off build time is reported beside it);
- scoring (the feature bank and test images) with the presets' score against the one dia used
  before (every shift, 10 test-time samples), in fp32 and bf16.
Variants run interleaved, ``--repeats`` rounds, and the median of each is kept; ratios between
variants of the same run are what to read, since absolute times move with the machine's load.
Writes bench/results/speed.json and speed.md (``--name`` changes the name).

    python bench/speed.py --data ../shared/data/pneumoniamnist.npz
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from dia import scoring, training
from dia.config import (
    DataConfig,
    DetectorConfig,
    DiffusionConfig,
    RunConfig,
    ScoreConfig,
    replace_settings,
)
from dia.data import load_data
from dia.device import resolve_device, set_cpu_memory_from_env
from dia.diffusion import DiffusionModel
from dia.dissolve import DissolveCache, build_dissolver, timestep_grid
from dia.presets import apply_preset
from dia.provenance import machine
from dia.scoring import features
from dia.training import build_network


@contextlib.contextmanager
def plain_layout(active: bool):
    """Train and score with the plain (contiguous) memory layout instead of channels_last."""
    if not active:
        yield
        return
    originals = training.memory_format, scoring.memory_format
    training.memory_format = scoring.memory_format = lambda width: torch.contiguous_format
    try:
        yield
    finally:
        training.memory_format, scoring.memory_format = originals


def train_rate(config, images, dissolver, device, precision, seed=0, contiguous=False) -> dict:
    """Images/s of the training loop (cache build excluded, reported separately)."""
    trainer = training.DetectorTrainer(
        config, images, dissolver=dissolver, device=device, precision=precision, seed=seed
    )
    with plain_layout(contiguous):
        _, history = trainer.train(progress=False)
    return {
        "train_images_per_s": history["images_per_s"],
        "steps": history["steps"],
        "train_s": history["train_s"],
        "cache_build_s": history["dissolve_cache_s"],
    }


def score_rate(config, score, images, device, precision, contiguous=False) -> dict:
    net = build_network(config, images.shape[1], images.shape[-1]).to(device)
    with plain_layout(contiguous):
        features(net, images[:8], config, score, device, precision)  # warm: the tables drawn
        t0 = time.perf_counter()
        features(net, images, config, score, device, precision)
        seconds = time.perf_counter() - t0
    return {"score_images_per_s": images.shape[0] / seconds, "seconds": seconds}


def scoring_variants() -> dict[str, tuple]:
    """name: (score settings, precision, plain layout): the presets' score ("now") against the
    one dia used before (every shift, 10 samples), and inference settings around "now, bf16"."""
    before = ScoreConfig(samples=10, shifts=4)
    now = apply_preset(RunConfig(), "quick").score
    return {
        "before, fp32": (before, "fp32", False),
        "before, bf16": (before, "bf16", False),
        "now, fp32": (now, "fp32", False),
        "now, bf16": (now, "bf16", False),
        "now, bf16, batch 64": (replace_settings(now, batch_size=64), "bf16", False),
        "now, bf16, batch 1024": (replace_settings(now, batch_size=1024), "bf16", False),
        "now, bf16, plain layout": (now, "bf16", True),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/pneumoniamnist.npz")
    p.add_argument("--images", type=int, default=320, help="training images used")
    p.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--cache-images", type=int, default=None, help="images in the cache timing (default all)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="speed", help="result name: writes NAME.json and NAME.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_cpu_memory_from_env()  # as the dia command does
    device = resolve_device(args.device)
    data = load_data(DataConfig(spec=args.data))
    images = data.train[: args.images]
    base = replace_settings(
        DetectorConfig(),
        width=args.width,
        epochs=args.epochs,
        max_seconds=None,
        dissolve_cache_steps=4,
    )
    # An untrained UNet costs the same per call as a trained one; speed is all we measure.
    unet = DiffusionModel(DiffusionConfig(), images.shape[1]).to(device)
    dissolver = build_dissolver("diffusion", unet).to(device)
    csi = replace_settings(base, dissolve="none")
    variants = {  # name: (config, dissolver, precision, plain layout)
        "csi fp32": (csi, None, "fp32", False),
        "csi fp32, plain layout": (csi, None, "fp32", True),
        "csi bf16": (csi, None, "bf16", False),
        "dia fp32, cached dissolving": (base, dissolver, "fp32", False),
        "dia fp32, UNet every step": (
            replace_settings(base, dissolve_cache_steps=0),
            dissolver,
            "fp32",
            False,
        ),
        "dia bf16, cached dissolving": (base, dissolver, "bf16", False),
    }
    score_variants = scoring_variants()
    now = score_variants["now, bf16"][0]
    measured: dict[str, list[dict]] = {name: [] for name in variants}
    scored: dict[str, list[dict]] = {name: [] for name in score_variants}
    for r in range(args.repeats):
        for name, (config, diss, precision, plain) in variants.items():
            rate = train_rate(config, images, diss, device, precision, seed=r, contiguous=plain)
            measured[name].append(rate)
            print(f"round {r} {name}: {measured[name][-1]['train_images_per_s']:.0f} img/s")
        for name, (score, precision, plain) in score_variants.items():
            scored[name].append(score_rate(base, score, images, device, precision, plain))
    grid = timestep_grid(
        base.dissolving.t_min, base.dissolving.t_max, base.dissolving.dissolve_cache_steps
    )
    cache_images = data.train[: args.cache_images]
    t0 = time.perf_counter()
    DissolveCache.build(dissolver, cache_images, grid, device=device)
    cache_full_s = time.perf_counter() - t0

    def median(rows, key):
        return statistics.median(row[key] for row in rows)

    train = {name: median(rows, "train_images_per_s") for name, rows in measured.items()}
    score_rates = {name: median(rows, "score_images_per_s") for name, rows in scored.items()}
    results = {
        "command": " ".join(["python", "bench/speed.py", *(argv or sys.argv[1:])]),
        "machine": {**machine(), "device": str(device)},
        "settings": {
            "data": args.data,
            "images": images.shape[0],
            "image_size": images.shape[-1],
            "width": args.width,
            "batch_size": base.optim.batch_size,
            "epochs_per_measurement": args.epochs,
            "repeats": args.repeats,
            "scores": {
                name: {**dataclasses.asdict(score), "precision": precision, "plain_layout": plain}
                for name, (score, precision, plain) in score_variants.items()
            },
        },
        "train_images_per_s": train,
        "train_runs": measured,
        "ratios": {
            "bf16_over_fp32": train["csi bf16"] / train["csi fp32"],
            "channels_last_over_plain_fp32": train["csi fp32"] / train["csi fp32, plain layout"],
            "cache_over_unet_every_step": train["dia fp32, cached dissolving"]
            / train["dia fp32, UNet every step"],
            "dia_over_csi_fp32": train["dia fp32, cached dissolving"] / train["csi fp32"],
            "score_bf16_over_fp32": score_rates["now, bf16"] / score_rates["now, fp32"],
            **{
                f"score_now_over_before_{p}": score_rates[f"now, {p}"] / score_rates[f"before, {p}"]
                for p in ("fp32", "bf16")
            },
        },
        "score_images_per_s": score_rates,
        "dissolve_cache_build_s": cache_full_s,
        "dissolve_cache_images": int(cache_images.shape[0]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f"# Speed, {results['machine']['cpu']}, {results['machine']['cores']} threads, "
        f"device {device}, AMX {results['machine']['amx']}",
        "",
        "Images/s count every augmented view the network sees (3 views x 4 shifts per image "
        "with dissolving, 2 x 4 without); channels_last layout unless 'plain layout'; bf16 is "
        f"autocast; ResNet-18 width {args.width}, batch {base.optim.batch_size}, "
        f"{images.shape[-1]} px; median of {args.repeats} interleaved rounds.",
        "",
        "| training variant | images/s | ratio to csi fp32 |",
        "|---|---|---|",
    ]
    for name, rate in train.items():
        lines.append(f"| {name} | {rate:.0f} | {rate / train['csi fp32']:.2f} |")
    lines += [
        "",
        "| scoring (before: 4 shifts x 10 samples; now: the presets' "
        f"{now.shifts} x {now.samples}) | images/s | ratio to before, same precision |",
        "|---|---|---|",
        *(
            f"| {name} | {rate:.1f} | "
            f"{rate / score_rates['before, ' + score_variants[name][1]]:.2f} |"
            for name, rate in score_rates.items()
        ),
        "",
        f"Dissolve cache for {cache_images.shape[0]} training images, "
        f"{len(grid)} timesteps: {cache_full_s:.1f} s. Peak RSS {results['peak_rss_mb']:.0f} MB.",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
