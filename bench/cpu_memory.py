"""How the process takes CPU memory (``dia.device.set_cpu_memory``), modes side by side.

Each measurement is a fresh process (a malloc setting cannot be undone within one), running
the detector's real training loop and the scoring of the feature bank on one data set at one
network width: ``system`` (glibc's malloc as it comes), ``hugepages`` (the same, with torch
asked for transparent huge pages on its blocks of 2 MiB and more: ``THP_MEM_ALLOC_ENABLE=1``
in the process's environment from its start) and ``keep`` (every block from the heap, freed
memory kept). Modes run interleaved, ``--repeats`` rounds, and the median of each is kept;
read the ratios, since absolute times move with the machine's load. Images of the shape each
case names are real ones, for speed only. Writes bench/results/cpu-memory.json and .md.

    python bench/cpu_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dia import training
from dia.config import DataConfig, DetectorConfig, ScoreConfig, replace_settings
from dia.data import load_data
from dia.device import set_cpu_memory
from dia.provenance import machine
from dia.scoring import shifted_features

# The usual first: the speed-up is over it.
MODES = ["system", "hugepages", "keep"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# name: (data spec, image size, width): PneumoniaMNIST under the cpu preset, and a folder of
# scans at the folder default of 64 px under the quick and the cpu preset.
CASES = {
    "pneumoniamnist 28 px, width 32": (str(SHARED / "pneumoniamnist.npz"), None, 32),
    "covid-ct 64 px, width 16": (str(SHARED / "covid-ct"), 64, 16),
    "covid-ct 64 px, width 32": (str(SHARED / "covid-ct"), 64, 32),
}


def measure(images: torch.Tensor, width: int, steps: int, score_images: int) -> dict:
    """Training step time and scoring rate in this process, as it is set up."""
    batch = DetectorConfig().batch_size
    config = replace_settings(
        DetectorConfig(), width=width, epochs=1, max_seconds=None, dissolve="none"
    )
    # Two steps first, so that one-off costs (and the heap's growth) are not measured.
    training.DetectorTrainer(config, images[: 2 * batch], device=torch.device("cpu")).train(
        progress=False
    )
    cpu0 = os.times()
    net, history = training.DetectorTrainer(
        config, images[: steps * batch], device=torch.device("cpu")
    ).train(progress=False)
    cpu1 = os.times()
    done = history["steps"]
    t0 = time.perf_counter()
    shifted_features(net, images[:score_images], config, ScoreConfig(), torch.device("cpu"))
    score_s = time.perf_counter() - t0
    return {
        "step_s": history["train_s"] / done,
        "train_images_per_s": history["images_per_s"],
        "user_s_per_step": (cpu1.user - cpu0.user) / done,
        "system_s_per_step": (cpu1.system - cpu0.system) / done,
        "score_images_per_s": score_images / score_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(argv: list[str]) -> int:
    """``--child MODE FILE WIDTH STEPS SCORE``: set MODE, measure, print one JSON line."""
    mode, file, width, steps, score = argv
    in_force = set_cpu_memory("system" if mode == "hugepages" else mode)
    if mode == "hugepages":
        in_force = "hugepages" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "system"
    images = load_file(file)["images"]
    result = measure(images, int(width), int(steps), int(score))
    print(json.dumps({"mode": mode, "in_force": in_force, **result}))
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--steps", type=int, default=6, help="training steps measured per process")
    p.add_argument("--score-images", type=int, default=64, help="images scored per process")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="cpu-memory", help="writes NAME.json and NAME.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    args = parse_args(argv)
    runs: dict[str, dict[str, list[dict]]] = {c: {m: [] for m in args.modes} for c in args.cases}
    settings = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        needed = max(args.steps, 2) * DetectorConfig().batch_size
        for i, case in enumerate(args.cases):
            spec, size, width = CASES[case]
            data = load_data(DataConfig(spec=spec, image_size=size))
            images = data.train[:needed].contiguous()
            files[case] = str(Path(tmp) / f"{i}.safetensors")
            save_file({"images": images}, files[case])
            settings[case] = {
                "data": spec,
                "image_shape": list(images.shape[1:]),
                "width": width,
                "images": int(images.shape[0]),
            }
        for r in range(args.repeats):
            for case in args.cases:
                for mode in args.modes:
                    command = [sys.executable, __file__, "--child", mode, files[case]]
                    command += [str(CASES[case][2]), str(args.steps), str(args.score_images)]
                    env = dict(os.environ, DIA_CPU_MEMORY="system")
                    if mode == "hugepages":  # torch reads it at its first large block
                        env["THP_MEM_ALLOC_ENABLE"] = "1"
                    out = subprocess.run(
                        command, capture_output=True, text=True, check=True, env=env
                    )
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    runs[case][mode].append(row)
                    print(
                        f"round {r} {case} {mode}: step {row['step_s']:.2f} s, "
                        f"system {row['system_s_per_step']:.2f} s, "
                        f"peak {row['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
    keys = ("step_s", "system_s_per_step", "score_images_per_s", "peak_rss_mb")
    medians = {
        case: {
            mode: {k: statistics.median(row[k] for row in rows) for k in keys}
            for mode, rows in by_mode.items()
        }
        for case, by_mode in runs.items()
    }
    results = {
        "command": " ".join(["python", "bench/cpu_memory.py", *argv]),
        "machine": machine(),
        "settings": {
            "cases": settings,
            "steps": args.steps,
            "score_images": args.score_images,
            "repeats": args.repeats,
            "batch_size": DetectorConfig().batch_size,
            "score_samples": ScoreConfig().samples,
            "precision": "fp32",
        },
        "medians": medians,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


def render(results: dict) -> str:
    m = results["machine"]
    s = results["settings"]
    lines = [
        f"# CPU memory modes, {m.get('cpu_model') or m['cpu']}, {m['cores']} threads, "
        f"AMX {m['amx']}, {s['precision']}",
        "",
        f"Plain CSI training steps of {s['batch_size']} images (2 views x 4 shifts: "
        f"{8 * s['batch_size']} images a step) and scoring ({s['score_samples']} test-time "
        f"samples x 4 shifts); each a fresh process, {s['steps']} steps after 2 warm-up steps; "
        f"median of {s['repeats']} interleaved rounds. Speed-up: `system` step time over the "
        "mode's.",
        "",
        "| case | mode | step s | system CPU s a step | speed-up | scoring img/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, by_mode in results["medians"].items():
        base = by_mode.get("system")
        for mode, row in by_mode.items():
            ratio = f"{base['step_s'] / row['step_s']:.2f}" if base else "-"
            lines.append(
                f"| {case} | {mode} | {row['step_s']:.2f} | {row['system_s_per_step']:.2f} "
                f"| {ratio} | {row['score_images_per_s']:.1f} | {row['peak_rss_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
