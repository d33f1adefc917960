"""torch.compile against eager execution for the detector's training step, side by side.

One step as training takes it, without the data pipeline: ResNet-18 forward on 2 views x 4
shifts x ``--batch`` images (channels_last, autocast in ``--precision``), the contrastive and
shift losses, backward and an Adam step. Both variants start from the same weights; their
steps alternate, and the median over rounds of each one's mean step time is kept. The
compiled variant's first two steps include compiling, reported on their own: in a budgeted run
that time comes out of training (run with a fresh ``TORCHINDUCTOR_CACHE_DIR`` to time a first
compile rather than a cached one).
Writes bench/results/NAME.json and NAME.md.

    python bench/compile.py --name compile-amx
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from dia.config import DetectorConfig, replace_settings
from dia.device import (
    autocast,
    memory_format,
    resolve_device,
    resolve_precision,
    set_cpu_memory_from_env,
)
from dia.losses import contrastive_loss, shift_loss
from dia.provenance import machine
from dia.shifts import get_shift
from dia.training import build_network


def make_step(config, x, labels, device, precision, compiled: bool):
    """A training step on the fixed batch ``x``; the network is compiled when asked."""
    torch.manual_seed(0)
    net = build_network(config, x.shape[1], x.shape[-1])
    net = net.to(device, memory_format=memory_format(config.network.width))
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.optim.lr)
    model = torch.compile(net) if compiled else net
    group = x.shape[0] // 2

    def step() -> float:
        with autocast(device, precision):
            z, logits = model(x)
        loss = contrastive_loss(z, group, config.loss.temperature) + shift_loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="images a step (before views, shifts)")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="compile")
    args = p.parse_args(argv)
    set_cpu_memory_from_env()  # as the dia command does
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    config = replace_settings(DetectorConfig(), width=args.width)
    shifts = get_shift(config.loss.shift).count
    n = 2 * shifts * args.batch
    x = torch.rand(n, 1, args.size, args.size, generator=torch.Generator().manual_seed(0))
    x = x.to(device).contiguous(memory_format=memory_format(args.width))
    labels = torch.arange(shifts, device=device).repeat_interleave(n // shifts)
    steps, first_two = {}, {}
    for name in ("eager", "compiled"):
        steps[name] = make_step(config, x, labels, device, precision, name == "compiled")
        t0 = time.perf_counter()
        steps[name]()
        steps[name]()
        first_two[name] = time.perf_counter() - t0
    # Steps alternate between the variants, so that a shared machine's changing load falls
    # on both alike; a round's time is its mean step.
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        spent = dict.fromkeys(steps, 0.0)
        for _ in range(args.steps):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                spent[name] += time.perf_counter() - t0
        for name in steps:
            times[name].append(spent[name] / args.steps)
    median = {name: statistics.median(t) for name, t in times.items()}
    # Paired by round (the rounds' load differs more than the variants do)
    paired = [e / c for e, c in zip(times["eager"], times["compiled"], strict=True)]
    results = {
        "command": " ".join(["python", "bench/compile.py", *(argv or sys.argv[1:])]),
        "machine": {**machine(), "device": str(device)},
        "settings": {**vars(args), "out": str(args.out), "precision": precision, "views": n},
        "first_two_steps_s": first_two,
        "step_s": times,
        "median_step_s": median,
        "images_per_s": {name: n / s for name, s in median.items()},
        "compiled_over_eager_per_round": paired,
        "compiled_over_eager": statistics.median(paired),
        # None when compiled steps are not faster: compiling is never repaid
        "steps_to_repay_compiling": (first_two["compiled"] - first_two["eager"])
        / (median["eager"] * (1 - 1 / statistics.median(paired)))
        if statistics.median(paired) > 1
        else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    repay = results["steps_to_repay_compiling"]
    repaid = "never repaid" if repay is None else f"compiling is repaid after {repay:.0f} steps"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f"# torch.compile, {results['machine']['cpu_model'] or results['machine']['cpu']}, "
        f"{results['machine']['cores']} threads, device {device}, {precision}",
        "",
        f"One training step of ResNet-18 width {args.width} on {n} images of {args.size} px "
        f"(2 views x {shifts} shifts x {args.batch}); median of {args.repeats} rounds of "
        f"{args.steps} alternating steps.",
        "",
        "| variant | first two steps (s) | step (ms) | images/s |",
        "|---|---|---|---|",
        *(
            f"| {name} | {first_two[name]:.1f} | {1000 * median[name]:.0f} | "
            f"{results['images_per_s'][name]:.0f} |"
            for name in steps
        ),
        "",
        f"Compiled over eager, median of the rounds' ratios: "
        f"{results['compiled_over_eager']:.2f}x (rounds {min(paired):.2f} to {max(paired):.2f}); "
        f"{repaid}. Peak RSS "
        f"{results['peak_rss_mb']:.0f} MB.",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
