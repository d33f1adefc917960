"""How cost grows with image size: training speed, scoring speed, the feature bank's time and
peak memory at 28, 64, 128 and 224 px, settings side by side.

Every (size, setting) is measured in a fresh process, since peak RSS is a process's own, on
synthetic images drawn at that size, with the ``quick`` preset's network (plain CSI: DIA's
dissolved view adds half a step on top) and DIA_CPU_MEMORY as the dia command takes it.
Settings (``SETTINGS``): ``before``, the network and score dia used before the stem and the
score were fitted to the image size (CIFAR's stem at every size; 4 shifts x 10 test-time
samples an image), and ``now``, the presets' as they are. A process that would need more
memory than ``--memory-gb`` stops with a memory error, which is recorded as such. The feature
bank's seconds for 1,000 images follow from the scoring speed. Writes bench/results/scaling.json
and .md (``--name`` changes the name).

    python bench/scaling.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from dia.config import RunConfig, replace_settings
from dia.data.synthetic import make_synthetic
from dia.device import resolve_device, resolve_precision, set_cpu_memory_from_env
from dia.presets import apply_preset
from dia.provenance import code_commit, machine
from dia.scoring import features
from dia.training import DetectorTrainer, build_network

SIZES = (28, 64, 128, 224)
# Settings on top of the quick preset, as (detector fields, score fields).
SETTINGS = {
    "before": ({"stem_stride": 1}, {"samples": 10, "shifts": 4}),
    "now": ({}, {}),
}
TRAIN_STEPS = 3  # after one step of warm-up
SCORE_IMAGES = 64


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--memory-gb", type=float, default=16.0, help="address space per process")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="scaling", help="writes NAME.json and NAME.md")
    p.add_argument("--one", nargs=2, metavar=("SIZE", "SETTING"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def config_of(setting: str) -> RunConfig:
    detector, score = SETTINGS[setting]
    config = apply_preset(RunConfig(), "quick")
    return replace_settings(
        config,
        detector=replace_settings(config.detector, dissolve="none", **detector),
        score=replace_settings(config.score, **score),
    )


def measure(size: int, setting: str, device_name: str) -> dict:
    """One (size, setting) in this process: training views/s, scoring images/s, peak RSS."""
    set_cpu_memory_from_env()  # as the dia command does
    config = config_of(setting)
    device = resolve_device(device_name)
    precision = resolve_precision(config.precision, device)
    batch = config.detector.optim.batch_size
    images = make_synthetic(batch * (TRAIN_STEPS + 1), 0, 2, image_size=size).train
    record = {"precision": precision}
    try:
        warm = replace_settings(config.detector, epochs=1, max_seconds=None)
        DetectorTrainer(warm, images[:batch], device=device, precision=precision).train(False)
        trainer = DetectorTrainer(warm, images[batch:], device=device, precision=precision)
        _, history = trainer.train(progress=False)
        record["train_views_per_s"] = round(history["images_per_s"], 1)  # every shifted view
        net = build_network(config.detector, images.shape[1], size).to(device)
        scored = images[:SCORE_IMAGES]
        features(net, scored[:4], config.detector, config.score, device, precision)  # warm
        t0 = time.perf_counter()
        features(net, scored, config.detector, config.score, device, precision)
        rate = scored.shape[0] / (time.perf_counter() - t0)
        record["score_images_per_s"] = round(rate, 2)
        record["bank_s_per_1000"] = round(1000 / rate, 1)
    except (MemoryError, RuntimeError) as err:  # an allocation over --memory-gb
        record["failed"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return record


def run_one(size: int, setting: str, args) -> dict:
    """:func:`measure` in a fresh process whose address space is capped at --memory-gb."""
    limit = int(args.memory_gb * 2**30)
    command = [sys.executable, __file__, "--one", str(size), setting, "--device", args.device]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"failed": f"exit {done.returncode}: {last[:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.device)))
        return 0
    rows = {}
    for size in args.sizes:
        for setting in args.settings:
            rows[f"{size}|{setting}"] = run_one(size, setting, args)
            print(size, setting, rows[f"{size}|{setting}"], flush=True)
    results = {
        "command": " ".join(["python", "bench/scaling.py", *(argv or sys.argv[1:])]),
        "commit": code_commit(),
        "machine": {**machine(), "device": str(resolve_device(args.device))},
        "settings": {
            name: {"detector": d, "score": s, "preset": "quick", "dissolve": "none"}
            for name, (d, s) in SETTINGS.items()
            if name in args.settings
        },
        "memory_gb_cap": args.memory_gb,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# Cost by image size ({m['cpu_model']}, {m['cores']} threads, AMX {m['amx']})",
        "",
        "The quick preset's network as plain CSI; training views/s count every shifted view "
        "(2 views x 4 shifts an image); the bank's seconds for 1,000 images follow from the "
        "scoring speed; peak RSS of the process.",
        "",
        "| px | setting | training views/s | scoring images/s | bank s / 1,000 images | "
        "peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in results["results"].items():
        size, setting = key.split("|")
        if "failed" in row:
            cells = [f"did not run: {row['failed']}", "-", "-"]
        else:
            cells = [str(row[k]) for k in ("train_views_per_s", "score_images_per_s")]
            cells.append(str(row["bank_s_per_1000"]))
        lines.append(
            f"| {size} | {setting} | {' | '.join(cells)} | {row.get('peak_rss_mb', '-')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
