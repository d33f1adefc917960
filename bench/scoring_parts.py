"""The parts of test-time scoring, each against what it replaced, side by side in one process:
kornia's hue turn against dia's, kornia's crops one image at a time against one interpolation a
batch, the network as trained against its batch norms folded, and (``--compile``) the folded
network compiled by ``torch.compile`` with frozen weights. Each rate is the best of
``--repeats`` timings after a warm-up; the largest difference between the two outputs is kept
beside it. Writes bench/results/NAME.json and NAME.md.

    python bench/scoring_parts.py --compile
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import kornia.augmentation as K
import torch
from kornia.enhance import adjust_hue as kornias_hue

from dia.augment import adjust_hue
from dia.device import autocast, resolve_precision, set_cpu_memory_from_env
from dia.inference import inference_network
from dia.networks import AmplifierNet
from dia.provenance import code_commit, machine

# (size, channels, stem stride) of the networks timed: PneumoniaMNIST's and covid-ct's.
NETWORKS = ((28, 1, 1), (64, 3, 2))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--width", type=int, default=16, help="the network's (quick: 16)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="time a compiled network too")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="scoring-parts", help="writes NAME.json and NAME.md")
    return p.parse_args(argv)


def rate(fn, count: int, repeats: int) -> float:
    """Items a second of ``fn()`` (``count`` items a call): the best of ``repeats``."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(count / best, 1)


def pair(name: str, old, new, count: int, repeats: int) -> dict:
    """Both callables' rates and outputs' largest difference."""
    with torch.inference_mode():
        diff = (old().float() - new().float()).abs().max().item()
        return {
            "part": name,
            "before_per_s": rate(old, count, repeats),
            "now_per_s": rate(new, count, repeats),
            "max_abs_diff": diff,
        }


def trained_like(size: int, channels: int, stride: int, width: int) -> AmplifierNet:
    """A network in evaluation mode whose batch norms hold statistics and affine weights away
    from their initial ones, as a trained network's do (what folding works with)."""
    torch.manual_seed(0)
    net = AmplifierNet(channels, width, 128, "fixed", stride)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return net.eval().to(memory_format=torch.channels_last)


def network_rows(args, precision: str) -> list[dict]:
    rows = []
    cpu = torch.device("cpu")
    for size, channels, stride in NETWORKS:
        net = trained_like(size, channels, stride, args.width)
        folded = inference_network(net).to(memory_format=torch.channels_last)
        x = torch.rand(args.images, channels, size, size).contiguous(
            memory_format=torch.channels_last
        )
        label = f"network {size} px, {channels} channel(s), stride {stride}"
        with autocast(cpu, precision):
            row = pair(
                label,
                lambda n=net, x=x: n.forward_features(x)[0],
                lambda n=folded, x=x: n.forward_features(x)[0],
                args.images,
                args.repeats,
            )
            if args.compile and size == NETWORKS[0][0]:
                row.update(compiled(folded, x, args))
        rows.append(row)
    return rows


def compiled(folded, x, args) -> dict:
    """The folded network compiled with frozen weights: seconds to its first result, rate."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    fn = torch.compile(folded.forward_features, dynamic=False)
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn(x)
        first_s = time.perf_counter() - t0
        return {
            "compiled_per_s": rate(lambda: fn(x)[0], args.images, args.repeats),
            "compile_s": round(first_s, 1),
        }


def augmentation_rows(args) -> list[dict]:
    torch.manual_seed(0)
    n = args.images
    rgb = torch.rand(n, 3, 64, 64)
    turn = (torch.rand(n) * 2 - 1) * 0.1 * 2 * math.pi  # hue jitter 0.1, in radians
    rows = [pair("hue turn, 64 px colour", lambda: kornias_hue(rgb, turn),
                 lambda: adjust_hue(rgb, turn), n, args.repeats)]  # fmt: skip
    for size, channels in ((64, 3), (28, 1)):
        x = torch.rand(n, channels, size, size)
        ops = {
            mode: K.RandomResizedCrop((size, size), scale=(0.54, 0.54), cropping_mode=mode)
            for mode in ("slice", "resample")
        }
        params = ops["slice"].forward_parameters(x.shape)
        rows.append(
            pair(
                f"crop, {size} px, {channels} channel(s)",
                lambda op=ops["slice"], x=x, p=params: op(x, params=p),
                lambda op=ops["resample"], x=x, p=params: op(x, params=p),
                n,
                args.repeats,
            )
        )
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    set_cpu_memory_from_env()
    precision = resolve_precision("auto", torch.device("cpu"))
    rows = augmentation_rows(args) + network_rows(args, precision)
    results = {
        "command": " ".join(["python", "bench/scoring_parts.py", *(argv or sys.argv[1:])]),
        "commit": code_commit(),
        "machine": machine(),
        "precision": precision,
        "images": args.images,
        "width": args.width,
        "rows": rows,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# The parts of test-time scoring, before and now",
        "",
        f"{m['cpu_model']}, {m['cores']} threads, {results['precision']}; "
        f"{results['images']} images a call, networks of width {results['width']}. Before: "
        "kornia's hue turn, kornia's crops image by image (`slice`), the network as trained; "
        "now: dia's hue turn, one interpolation a batch (`resample`), batch norms folded.",
        "",
        "| part | before /s | now /s | now / before | largest difference | compiled /s "
        "(compile s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        extra = f"{r['compiled_per_s']} ({r['compile_s']} s)" if "compiled_per_s" in r else "-"
        lines.append(
            f"| {r['part']} | {r['before_per_s']} | {r['now_per_s']} | "
            f"{r['now_per_s'] / r['before_per_s']:.2f} | {r['max_abs_diff']:.2g} | {extra} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
