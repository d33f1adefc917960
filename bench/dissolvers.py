"""Dissolver quality: how much detail each dissolver removes (or adds), how well a diffusion
model denoises at the low-noise end, and how easily dissolved images are told from clean ones.

Diffusion models are trained on the training split (the preset's diffusion settings, changed
with ``--set field=value``; one model for each ``--seconds``), then every dissolver (those
models, median and Gaussian blur) is measured (:func:`dia.quality.dissolver_quality`) on normal
images none of them was trained on: the validation split's, or the test split's where there is
none. Writes bench/results/dissolvers-<label>.json, ``{"dissolvers": {NAME: {"t": [...],
FIELD: [one value a t]}}}`` with the command, settings, machine and timings, and a Markdown
table beside it.

    python bench/dissolvers.py --data ../shared/data/pneumoniamnist.npz --label pneumoniamnist

``--noise-draws 0 4`` measures each model dissolving both ways (``DiffusionConfig.noise_draws``:
the clean image taken as x_t, or the mean of 4 estimates from the image noised to t for real).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import resource
import sys
import time
from pathlib import Path

from dia.config import DataConfig, RunConfig, to_dict
from dia.data import load_data
from dia.device import resolve_device, set_cpu_memory_from_env
from dia.diffusion import DiffusionModel, train_diffusion
from dia.dissolve import DiffusionDissolver, GaussianDissolver, MedianDissolver
from dia.pipeline import held_out_normals
from dia.presets import apply_preset
from dia.provenance import code_commit, machine
from dia.quality import dissolver_quality

TIMESTEPS = (30, 50, 75, 100)
FIELDS = ("denoise_mse_ratio", "detail_ratio", "share_added_detail", "separability_auroc")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a data spec, as dia run --data takes")
    p.add_argument("--label", required=True, help="the data set's name: dissolvers-LABEL.json")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--preset", default="quick", help="whose diffusion settings")
    p.add_argument("--seconds", type=float, nargs="+", default=[90.0], help="training times")
    p.add_argument("--epochs", type=int, default=None,
                   help="train every model this many epochs instead (no time limit)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a diffusion setting changed for every model, e.g. lr=1e-4")  # fmt: skip
    p.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                   help="a diffusion model to train besides the preset's, with these settings "
                   "changed, e.g. x0:prediction=sample,train_t_max=200")  # fmt: skip
    p.add_argument("--noise-draws", type=int, nargs="+", default=None, metavar="K",
                   help="measure every model dissolving each of these ways (its name then "
                   "ends in -drawsK; default: its own setting)")  # fmt: skip
    p.add_argument("--images", type=int, default=256, help="normal images measured on")
    p.add_argument("--timesteps", type=int, nargs="+", default=list(TIMESTEPS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def value_of(text: str):
    """A setting's value: JSON where it parses (numbers, null, lists), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def diffusion_config(base, settings: list[str]):
    changes = {}
    for item in settings:
        field, _, value = item.partition("=")
        changes[field] = value_of(value)
    return dataclasses.replace(base, **changes)


def variants(args) -> dict[str, list[str]]:
    """Each diffusion model's name and its settings (``--set`` for all, then its own)."""
    out = {"diffusion": list(args.set)}
    for spec in args.variant:
        name, _, settings = spec.partition(":")
        out[name] = list(args.set) + [s for s in settings.split(",") if s]
    return out


def train_variants(args, config, data, device) -> tuple[dict, dict]:
    """The trained models as dissolvers, and what their training did."""
    dissolvers, trained = {}, {}
    lengths = [None] if args.epochs else args.seconds
    for (label, settings), seconds in itertools.product(variants(args).items(), lengths):
        cfg = diffusion_config(config.diffusion, settings)
        cfg = dataclasses.replace(cfg, max_seconds=seconds, epochs=args.epochs or 100_000)
        model = DiffusionModel(cfg, data.channels, seed=args.seed)
        history = train_diffusion(
            model, data.train, cfg, device=device, seed=args.seed, progress=False
        )
        name = label if args.epochs else f"{label}-{seconds:g}s"
        for draws, dissolving in dissolving_ways(model, args.noise_draws):
            named = name if draws is None else f"{name}-draws{draws}"
            dissolvers[named] = (DiffusionDissolver(dissolving).to(device), model)
        trained[name] = {
            "config": to_dict(cfg),
            **{k: history[k] for k in ("steps", "epochs", "seconds")},
            "final_loss": history["loss"][-1] if history["loss"] else None,
        }
        print(name, trained[name]["steps"], "steps", flush=True)
    return dissolvers, trained


def dissolving_ways(model: DiffusionModel, noise_draws: list[int] | None):
    """(K, the model dissolving with K noise draws) for each K of ``noise_draws`` (the same
    weights, another ``noise_draws`` setting), or (None, the model) when none are given."""
    if not noise_draws:
        return [(None, model)]
    ways = []
    for draws in noise_draws:
        twin = copy.copy(model)  # shares the weights; only how it dissolves differs
        twin.config = dataclasses.replace(model.config, noise_draws=draws)
        ways.append((draws, twin))
    return ways


def main(argv=None) -> int:
    args = parse_args(argv)
    set_cpu_memory_from_env()
    config = apply_preset(RunConfig(), args.preset)
    data_cfg = DataConfig(spec=args.data, image_size=args.image_size)
    data = load_data(data_cfg)
    device = resolve_device(args.device)
    images = held_out_normals(data)[: args.images]
    split = "val" if data.val is not None and (data.val_labels == 0).any() else "test"
    dissolvers = {"median": (MedianDissolver(), None), "gaussian": (GaussianDissolver(), None)}
    models, trained = train_variants(args, config, data, device)
    dissolvers.update(models)
    results, timings = {}, {}
    for name, (dissolver, model) in dissolvers.items():
        t0 = time.perf_counter()
        results[name] = dissolver_quality(dissolver, images, args.timesteps, model, args.seed)
        timings[name] = round(time.perf_counter() - t0, 1)
    entry = {
        "command": " ".join(["python", "bench/dissolvers.py", *(argv or sys.argv[1:])]),
        "commit": code_commit(),
        "machine": {**machine(), "device": str(device)},
        "settings": {"data": to_dict(data_cfg), "preset": args.preset, "seed": args.seed},
        "measured_on": {"split": split, "normal_images": int(images.shape[0])},
        "trained": trained,
        "measure_s": timings,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "dissolvers": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dissolvers-{args.label}.json"
    path.write_text(json.dumps(entry, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(entry, args.label))
    print(markdown(entry, args.label))
    return 0


def markdown(entry: dict, label: str) -> str:
    m, on = entry["machine"], entry["measured_on"]
    lines = [
        f"# Dissolver quality, {label}",
        "",
        f"{on['normal_images']} normal {on['split']} images (none trained on); "
        f"{m['cpu_model']}, {m['cores']} threads. Diffusion models: "
        + "; ".join(
            f"{n} {v['steps']} steps ({v['epochs']:.1f} epochs)"
            for n, v in entry["trained"].items()
        )  # fmt: skip
        + ".",
        "",
        "| dissolver | t | " + " | ".join(FIELDS) + " |",
        "|---" * (2 + len(FIELDS)) + "|",
    ]
    for name, values in entry["dissolvers"].items():
        for i, t in enumerate(values["t"]):
            cells = [f"{values[f][i]:.3f}" if f in values else "-" for f in FIELDS]
            lines.append(f"| {name} | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
