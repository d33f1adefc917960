"""Do anomaly maps point at the anomaly? Measured on the built-in synthetic set, whose nodules
are known pixel by pixel.

Takes the detector of a finished run on ``synthetic`` (``dia run --out DIR``), computes the
anomaly map (``DIADetector.anomaly_map``) of every abnormal image of the validation split (where
the maps' settings are chosen) or the test split (which only reports) at several patch sizes,
and compares each map with the nodule it should find (``dia.data.synthetic.synthetic_lesions``;
the nodule's core is where it adds at least half its peak):

- *pointing*: the share of images whose map peaks within 1 or 2 pixels of the nodule's core,
  and the median distance in pixels from the map's peak to the core;
- *pixel AUROC*: per image, how well the map's values separate the core's pixels from the rest,
  averaged over images.

Two maps without the detector run through the same measurement: *detail*, the amount of fine
detail each patch loses to the same dissolving (where there is detail at all, normal or not),
and *random*, a seeded uniform map (chance).

    dia run --out runs/maps-synthetic
    python bench/maps.py --run runs/maps-synthetic --split val --patches 3,4,6,8
    python bench/maps.py --run runs/maps-synthetic
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from dia.data import load_data
from dia.data.synthetic import synthetic_lesions
from dia.detector import MAP_TIMESTEP
from dia.dissolve import median_dissolve
from dia.maps import check_patch, patch_masks
from dia.pipeline import load_config, load_detector
from dia.provenance import code_commit, machine

CORE = 0.5  # the nodule's core: pixels where it adds at least this share of its peak
TOLERANCES = (1, 2)  # pixels


def lesion_cores(lesions: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: where each (N, 1, H, W) nodule adds at least ``CORE`` of its peak."""
    peak = lesions.flatten(1).amax(dim=1).clamp_min(1e-12)
    return lesions[:, 0] >= CORE * peak[:, None, None]


def distance_to(cores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N,) Chebyshev distance in pixels from (rows[i], cols[i]) to the nearest core pixel."""
    h, w = cores.shape[-2:]
    rr = torch.arange(h)[None, :, None]
    cc = torch.arange(w)[None, None, :]
    dist = torch.maximum((rr - rows[:, None, None]).abs(), (cc - cols[:, None, None]).abs())
    return dist.masked_fill(~cores, h + w).flatten(1).amin(dim=1)


def localisation(maps: torch.Tensor, cores: torch.Tensor) -> dict:
    """Pointing and pixel AUROC of (N, H, W) maps against (N, H, W) bool cores."""
    flat = maps.flatten(1).argmax(dim=1)
    rows, cols = flat // maps.shape[-1], flat % maps.shape[-1]
    dist = distance_to(cores, rows, cols).float()
    pixel_auroc = [
        roc_auc_score(c.flatten().numpy(), m.flatten().double().numpy())
        for m, c in zip(maps, cores, strict=True)
    ]
    return {
        **{f"peak_within_{t}px": round(float((dist <= t).float().mean()), 4) for t in TOLERANCES},
        "peak_distance_px_median": float(dist.median()),
        "pixel_auroc_mean": round(float(np.mean(pixel_auroc)), 4),
        "pixel_auroc_sd": round(float(np.std(pixel_auroc)), 4),
    }


def detail_map(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(N, H, W): the fine detail each patch loses to the maps' dissolving (the total absolute
    change of its pixels), spread over the image as a map spreads its patches' values; no
    detector involved."""
    change = (images - median_dissolve(images, MAP_TIMESTEP)).abs().sum(dim=1)
    masks = patch_masks(*images.shape[-2:], patch, stride)
    per_patch = torch.einsum("nhw,phw->np", change, masks)
    return torch.einsum("np,phw->nhw", per_patch, masks) / masks.sum(dim=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished run folder on synthetic")
    p.add_argument(
        "--patches",
        default="4,8",
        help="comma-separated patch sides in pixels; the stride is half the patch (default 4,8)",
    )
    p.add_argument(
        "--split",
        choices=("val", "test"),
        default="test",
        help="where to measure: choose settings on val, report on test (default test)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--name", default=None, help="result name (default maps-synthetic-<split>)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)

    config = load_config(args.run)
    run_metrics = json.loads((args.run / "metrics.json").read_text())
    if config.data.spec != "synthetic":
        raise SystemExit(f"{args.run} was trained on {config.data.spec!r}; only synthetic has "
                         "known nodule positions")  # fmt: skip
    data = load_data(config.data)
    images, labels = (
        (data.val, data.val_labels) if args.split == "val" else (data.test, data.test_labels)
    )
    if images is None:
        raise SystemExit(f"the run's data have no {args.split} split")
    size = images.shape[-1]
    lesions = synthetic_lesions(args.split, len(labels), size, config.data.split_seed)
    present = lesions.flatten(1).amax(dim=1) > 0
    if present.tolist() != labels.bool().tolist():
        raise SystemExit("the nodules do not match the labels; was the run's data changed?")
    abnormal = images[present]
    cores = lesion_cores(lesions[present])
    detector = load_detector(args.run, args.device)

    results: dict = {}
    timings: dict = {}
    for patch in (int(v) for v in args.patches.split(",")):
        patch, stride = check_patch(size, size, patch, None)
        key = f"patch {patch}, stride {stride}"
        t0 = time.perf_counter()
        maps = torch.from_numpy(detector.anomaly_map(abnormal, patch, stride))
        timings[key] = time.perf_counter() - t0
        results[f"detector, {key}"] = localisation(maps, cores)
        results[f"detail, {key}"] = localisation(detail_map(abnormal, patch, stride), cores)
    rng = torch.Generator().manual_seed(0)
    results["random"] = localisation(torch.rand(cores.shape, generator=rng), cores)

    report = {
        "command": " ".join(["python", "bench/maps.py", *(argv or sys.argv[1:])]),
        "run": str(args.run),
        "split": args.split,
        "run_config": json.loads((args.run / "config.json").read_text()),
        "run_metrics": {k: run_metrics.get(k) for k in ("auroc", "commit", "precision")},
        "commit": code_commit(),
        "machine": machine(),
        "abnormal_images": int(present.sum()),
        "image_size": size,
        "core": f"pixels where the nodule adds at least {CORE} of its peak",
        "core_pixels_mean": round(float(cores.flatten(1).sum(1).float().mean()), 2),
        "map_seconds": {k: round(v, 1) for k, v in timings.items()},
        "map_images_per_s": {k: round(len(abnormal) / v, 1) for k, v in timings.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "results": results,
    }
    name = args.name or f"maps-synthetic-{args.split}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        f"# Do anomaly maps point at the nodule? (synthetic {report['split']} split)",
        "",
        f"`{report['command']}`; {report['abnormal_images']} abnormal {report['split']} images of "
        f"{report['image_size']} px, nodule core {report['core_pixels_mean']} pixels on average "
        f"({report['core']}); detector test AUROC {report['run_metrics']['auroc']:.3f}.",
        "",
        "| map | peak within 1 px | peak within 2 px | median peak distance (px) "
        "| pixel AUROC (mean ± sd) |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['peak_within_1px']:.3f} | {r['peak_within_2px']:.3f} | "
            f"{r['peak_distance_px_median']:.0f} | "
            f"{r['pixel_auroc_mean']:.3f} ± {r['pixel_auroc_sd']:.3f} |"
        )
    seconds = ", ".join(f"{k}: {v} images/s" for k, v in report["map_images_per_s"].items())
    lines += ["", f"Map throughput ({report['machine']['cpu_model']}): {seconds}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
