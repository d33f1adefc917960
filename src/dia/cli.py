"""The ``dia`` command line: ``run``, ``train-diffusion``, ``train``, ``evaluate``, ``dissolve``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from .config import DataConfig, DetectorConfig, DiffusionConfig, RunConfig, ScoreConfig
from .presets import PRESETS, apply_preset

# Flag prefix of each config section; detector and data settings need none.
SECTIONS = {
    "data": ("", DataConfig),
    "detector": ("", DetectorConfig),
    "diffusion": ("diffusion-", DiffusionConfig),
    "score": ("score-", ScoreConfig),
}
FLAG_NAMES = {("data", "spec"): "data"}
HELP = {
    ("data", "spec"): "data spec: 'synthetic' (default), a MedMNIST .npz file, "
    "'medmnist:NAME' or a folder of images",
    (
        "detector",
        "dissolve",
    ): "dissolving operator: diffusion, gaussian, median or none (CSI)",
    ("detector", "shift"): "shifting transformation: rotation or cutperm",
    ("detector", "input_norm"): "network input: fixed ([0, 1] to [-1, 1]) or image "
    "(each image standardised on its own)",
    ("detector", "mask"): "contrastive mask: shifted_removed or none",
    ("data", "val_fraction"): "hold out this fraction of the normal training images and of "
    "train/1_abnormal as a validation split, for a folder without val/ (default 0: none)",
}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _parse_type(annotation: str):
    base = annotation.replace(" | None", "")
    if base.startswith("tuple"):
        return lambda s: tuple(int(v) for v in s.split(","))
    return {"int": int, "float": float, "str": str, "bool": _parse_bool}[base]


def _add_settings(parser: argparse.ArgumentParser) -> None:
    for section, (prefix, cls) in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        for field in dataclasses.fields(cls):
            name = FLAG_NAMES.get((section, field.name), prefix + field.name.replace("_", "-"))
            group.add_argument(
                f"--{name}",
                dest=f"{section}.{field.name}",
                default=None,
                type=_parse_type(field.type),
                metavar=field.type.split(" ")[0].upper()[:5],
                help=HELP.get((section, field.name), f"default {field.default!r} (quick preset)"),
            )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="named settings; explicit flags override them (default quick)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall-clock seconds from start to a fitted detector; detector training ends in "
        "time for it (default: the preset's)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 on CUDA and AMX CPUs, else fp32",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset's config with every explicitly given flag applied on top."""
    config = apply_preset(RunConfig(), args.preset)
    for section in SECTIONS:
        given = {
            k.split(".", 1)[1]: v
            for k, v in vars(args).items()
            if k.startswith(section + ".") and v is not None
        }
        if given:
            sub = dataclasses.replace(getattr(config, section), **given)
            config = dataclasses.replace(config, **{section: sub})
    config = dataclasses.replace(
        config, seed=args.seed, device=args.device, precision=args.precision
    )
    if args.budget is not None:
        config = dataclasses.replace(config, budget_s=args.budget)
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dia", description="Fine-grained anomaly detection in medical images (DIA)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "run": "train the diffusion model (when needed) and the detector, then evaluate",
        "train-diffusion": "train only the diffusion model into OUT/diffusion",
        "train": "train the detector into OUT/detector (uses OUT/diffusion when present)",
        "evaluate": "score the test split with OUT/detector and write OUT/metrics.json",
        "dissolve": "write a PNG grid of images and their dissolved versions",
    }
    for name, text in commands.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            help="run folder (default runs/<data>-<dissolve>-seed<seed>)",
        )
        _add_settings(p)
        if name == "dissolve":
            p.add_argument(
                "--timesteps",
                default="0,30,50,100,200,400",
                help="comma-separated timesteps (default 0,30,50,100,200,400)",
            )
            p.add_argument("--count", type=int, default=8, help="how many test images (default 8)")
            p.add_argument(
                "--grid",
                type=Path,
                default=None,
                help="PNG file to write (default OUT/dissolve_grid.png)",
            )
    return parser


# Commands that train, and so share the work under a launcher; the others run on rank 0 alone.
DISTRIBUTED = ("run", "train")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command not in DISTRIBUTED:
            if int(os.environ.get("RANK", "0")) != 0:
                return 0
            return _dispatch(args)
        from .distributed import process_group

        with process_group(args.device):
            return _dispatch(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"dia {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; saved results are intact", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from . import distributed, pipeline  # heavy imports only once the arguments are valid

    config = config_from_args(args)
    main_process = distributed.is_main()
    progress = not args.no_progress
    out = args.out
    if args.command == "run":
        if out is None:  # rank 0's choice for all: a later process would see its folder taken
            out = distributed.broadcast_object(
                pipeline.default_run_dir(config) if main_process else None
            )
        if main_process:
            print(f"dia run -> {out}", file=sys.stderr)
        metrics = pipeline.run(config, out, progress)
        if metrics is not None:
            _print_metrics(metrics, out)
        return 0
    if args.command == "dissolve" and config.detector.dissolve == "none":
        raise ValueError(
            "--dissolve none dissolves nothing (the cpu preset trains without dissolving); "
            "pass --dissolve diffusion, gaussian or median"
        )
    if out is None:
        if args.command != "dissolve":
            raise ValueError(f"dia {args.command} needs --out, the run folder")
        out = pipeline.default_run_dir(config)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    if args.command == "train-diffusion":
        pipeline.save_config(config, out)
        data = pipeline.load_run_data(config)
        pipeline.train_diffusion_step(config, data, out, progress)
        print(f"diffusion model saved to {out / pipeline.DIFFUSION_DIR}")
    elif args.command == "train":
        start = time.perf_counter()
        deadline = None if config.budget_s is None else start + config.budget_s
        if main_process:
            pipeline.save_config(config, out)
        data = pipeline.load_run_data(config)
        diffusion = None
        if config.detector.dissolve == "diffusion":
            diffusion = pipeline.load_diffusion(out, config.device)
            if diffusion is None:
                diffusion = pipeline.train_diffusion_step(config, data, out, progress)
        pipeline.train_detector_step(config, data, out, diffusion, progress, deadline)
        if main_process:
            print(f"detector saved to {out / pipeline.DETECTOR_DIR}")
    elif args.command == "evaluate":
        from .detector import DIADetector

        if (out / "config.json").exists():
            config = pipeline.load_config(out)
            config = dataclasses.replace(config, device=args.device)
        detector = DIADetector.from_pretrained(
            out / pipeline.DETECTOR_DIR, device=args.device, precision=args.precision
        )
        t0 = time.perf_counter()
        metrics = pipeline.evaluate_step(config, pipeline.load_run_data(config), detector, out)
        metrics["wall_s"]["total_s"] = time.perf_counter() - t0
        _print_metrics(metrics, out)
    elif args.command == "dissolve":
        _dissolve(args, config, out, progress)
    return 0


def _dissolve(args, config: RunConfig, out: Path, progress: bool) -> None:
    from . import pipeline
    from .device import resolve_device
    from .dissolve import build_dissolver
    from .reports import dissolve_grid

    timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]
    if not timesteps or min(timesteps) < 0:
        raise ValueError(f"--timesteps={args.timesteps!r}; expected non-negative integers")
    data = pipeline.load_run_data(config)
    device = resolve_device(config.device)
    diffusion = None
    if config.detector.dissolve == "diffusion":
        diffusion = pipeline.load_diffusion(out, config.device)
        if diffusion is None:
            print(f"no diffusion model in {out}; training one", file=sys.stderr)
            diffusion = pipeline.train_diffusion_step(config, data, out, progress)
    dissolver = build_dissolver(config.detector.dissolve, diffusion).to(device)
    images = data.test[: args.count].to(device)
    grid = dissolve_grid(images, dissolver, timesteps)
    path = args.grid or out / "dissolve_grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    print(f"dissolving grid ({len(images)} images x {len(timesteps)} timesteps) saved to {path}")


def _print_metrics(metrics: dict, out: Path) -> None:
    wall = metrics["wall_s"].get("total_s")
    print(
        f"AUROC {metrics['auroc']:.4f}  AUPRC {metrics['auprc']:.4f}  "
        f"FPR@95%TPR {metrics['fpr_at_95_tpr']:.4f}" + (f"  ({wall:.0f} s)" if wall else "")
    )
    print(f"metrics, scores and models in {out}")


if __name__ == "__main__":
    raise SystemExit(main())
