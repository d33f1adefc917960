"""Side by side on one data set: DIA, plain CSI (and other dissolving operators), raw-pixel kNN.

Each variant is a full `dia run` with the chosen preset (everything a user waits for is in its
wall time), run one after another on the same seeds; the kNN baseline scores the same test split.
Writes bench/results/<name>.json and a Markdown table beside it.

    python bench/quick_compare.py --data synthetic --seeds 0 1 --variants diffusion none
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dia.baselines import knn_pixel_scores
from dia.config import DataConfig, RunConfig, to_dict
from dia.data import load_data
from dia.evaluation import anomaly_metrics
from dia.pipeline import machine, run
from dia.presets import apply_preset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--variants",
        nargs="+",
        default=["diffusion", "none"],
        help="dissolving operators to compare (none = plain CSI)",
    )
    p.add_argument("--name", default=None, help="result name (default: the data name)")
    return p.parse_args(argv)


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    name = args.name or Path(args.data.rstrip("/")).stem.replace("medmnist:", "")
    base = apply_preset(RunConfig(data=DataConfig(spec=args.data)), args.preset)
    data = load_data(base.data)
    knn = anomaly_metrics(data.test_labels.numpy(), knn_pixel_scores(data.train, data.test))
    results: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "dataset": name,
        "preset": args.preset,
        "machine": machine(),
        "protocol": "last-checkpoint; no choice uses test labels",
        "counts": data.counts(),
        "baselines": {"knn_pixel_k5": knn},
        "variants": {},
    }
    for variant in args.variants:
        runs = []
        for seed in args.seeds:
            config = dataclasses.replace(
                base, seed=seed, detector=dataclasses.replace(base.detector, dissolve=variant)
            )
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                metrics = run(config, Path(tmp) / "run", progress=False)
                wall = time.perf_counter() - t0
            runs.append((metrics, wall))
            print(f"{variant} seed {seed}: AUROC {metrics['auroc']:.4f} ({wall:.0f} s)", flush=True)
        results["variants"][variant] = {
            "settings": to_dict(dataclasses.replace(base.detector, dissolve=variant)),
            "seeds": args.seeds,
            "auroc": [m["auroc"] for m, _ in runs],
            "auprc": [m["auprc"] for m, _ in runs],
            "fpr_at_95_tpr": [m["fpr_at_95_tpr"] for m, _ in runs],
            "wall_s": [w for _, w in runs],
            "train_images_per_s": [m["training"]["images_per_s"] for m, _ in runs],
            "test_images_per_s": [m["test_images_per_s"] for m, _ in runs],
            "wall_s_by_stage": [m["wall_s"] for m, _ in runs],
        }
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# {name}, preset {args.preset}, seeds {args.seeds}",
        "",
        "| method | AUROC | AUPRC | wall s |",
        "|---|---|---|---|",
        f"| raw-pixel kNN (k=5) | {knn['auroc']:.3f} | {knn['auprc']:.3f} | - |",
    ]
    labels = {"diffusion": "DIA (diffusion)", "none": "CSI (no dissolving)"}
    for variant, r in results["variants"].items():
        lines.append(
            f"| {labels.get(variant, variant)} | {summary(r['auroc'])} | "
            f"{summary(r['auprc'])} | {statistics.mean(r['wall_s']):.0f} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
