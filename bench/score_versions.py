"""Test-time scoring speed of two versions of dia side by side: this checkout and another one.

Each arm is a fresh process importing dia from its own source folder (``--before-src``, say a
``git worktree`` of an earlier commit, and this checkout's ``src``), with the C library's
memory settings the dia command sets (``DIA_CPU_MEMORY``). In it the network its
``build_network`` makes for the image size (untrained: the speed does not depend on the
weights) scores the same seeded random images with the preset's score settings of that
version, in the precision ``auto`` picks; the arm reports the best of ``--repeats`` timings
after a warm-up. Arms alternate for ``--rounds`` rounds and each keeps its median, so that a
slow spell of the machine falls on both. Writes bench/results/NAME.json and NAME.md.

    git worktree add /tmp/before 2aee7b4
    python bench/score_versions.py --before-src /tmp/before/src
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOW_SRC = HERE.parent / "src"

# What one arm runs: argv = size, channels, images, preset, repeats. Written against the API
# both versions share (build_network took the image size only later).
ARM = """
import inspect, sys, time
import torch
from dia.config import DetectorConfig, RunConfig
from dia.device import resolve_device, resolve_precision, set_cpu_memory_from_env
from dia.presets import apply_preset
from dia.scoring import shifted_features
from dia.training import build_network

set_cpu_memory_from_env()  # as the dia command does
size, channels, n, preset, repeats = sys.argv[1:6]
size, channels, n, repeats = int(size), int(channels), int(n), int(repeats)
config = apply_preset(RunConfig(), preset)
torch.manual_seed(0)
args = (config.detector, channels)
if "image_size" in inspect.signature(build_network).parameters:
    args += (size,)
net = build_network(*args).eval()
images = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))
device = resolve_device("auto")
precision = resolve_precision(config.precision, device)
shifted_features(net, images[:16], config.detector, config.score, device, precision)
seconds = []
for _ in range(repeats):
    t0 = time.perf_counter()
    shifted_features(net, images, config.detector, config.score, device, precision)
    seconds.append(time.perf_counter() - t0)
passes = getattr(config.score, "shifts", 4) * config.score.samples
print(n / min(seconds), precision, passes)
"""

# size x channels x images: PneumoniaMNIST's test set, knee-oa's size, covid-ct's test set
CASES = ("28x1x624", "64x1x256", "64x3x149")


def case(text: str) -> tuple[int, int, int]:
    """'SIZExCHANNELSxIMAGES' -> (size, channels, images)."""
    parts = text.split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected SIZExCHANNELSxIMAGES, e.g. 28x1x624")
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-src", type=Path, required=True, help="the other version's src")
    p.add_argument("--before-label", default="before", help="its name in the results")
    p.add_argument("--presets", nargs="+", default=["quick", "cpu"])
    p.add_argument("--cases", nargs="+", type=case, default=[case(c) for c in CASES])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--name", default="score-versions", help="writes NAME.json and NAME.md")
    return p.parse_args(argv)


def run_arm(src: Path, images: tuple, preset: str, repeats: int) -> tuple[float, str, int]:
    """(images/s, precision, passes an image) of one arm's process."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    size, channels, n = images
    argv = [str(size), str(channels), str(n), preset, str(repeats)]
    done = subprocess.run(
        [sys.executable, "-c", ARM, *argv], env=env, capture_output=True, text=True, check=True
    )
    rate, precision, passes = done.stdout.split()[-3:]
    return float(rate), precision, int(passes)


def commit_of(src: Path) -> str | None:
    """The commit a source folder's checkout is at, where it is one."""
    done = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(NOW_SRC))
    from dia.provenance import code_commit, machine

    arms = {args.before_label: args.before_src.resolve(), "now": NOW_SRC}
    rows = []
    for preset, images in itertools.product(args.presets, args.cases):
        rates: dict[str, list[float]] = {arm: [] for arm in arms}
        info = {}
        for _ in range(args.rounds):
            for arm, src in arms.items():
                rate, precision, passes = run_arm(src, images, preset, args.repeats)
                rates[arm].append(rate)
                info[arm] = {"precision": precision, "passes": passes}
        row = {"preset": preset, "size": images[0], "channels": images[1], "images": images[2]}
        for arm in arms:
            row[arm] = {"images_per_s": round(statistics.median(rates[arm]), 1), **info[arm]}
        row["ratio"] = round(row["now"]["images_per_s"] / row[args.before_label]["images_per_s"], 2)
        rows.append(row)
        print(row, flush=True)
    results = {
        "command": " ".join(["python", "bench/score_versions.py", *(argv or sys.argv[1:])]),
        "commit": code_commit(),
        "before": {
            "label": args.before_label,
            "src": str(args.before_src),
            "commit": commit_of(args.before_src),
        },
        "machine": machine(),
        "rounds": args.rounds,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    before = results["before"]["label"]
    m = results["machine"]
    lines = [
        f"# Test-time scoring speed, {before} and now",
        "",
        f"{m['cpu_model']}, {m['cores']} threads. Untrained networks of each version's preset; "
        f"images/s of one call scoring the images (median of {results['rounds']} rounds, "
        f"each the best of {results['repeats']} timings); `{before}` is "
        f"{results['before'].get('commit') or results['before']['src']}; the commands set the "
        "C library's memory as the dia command does.",
        "",
        f"| preset | image | images | {before}: passes an image | {before} images/s | "
        "now: passes an image | now images/s | now / before |",
        "|---" * 8 + "|",
    ]
    for r in results["rows"]:
        kind = f"{r['size']} px, {r['channels']} channel{'s' if r['channels'] > 1 else ''}"
        lines.append(
            f"| {r['preset']} | {kind} | {r['images']} | {r[before]['passes']} | "
            f"{r[before]['images_per_s']:.1f} | {r['now']['passes']} | "
            f"{r['now']['images_per_s']:.1f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
