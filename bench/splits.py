"""How alike are the validation and test splits? Whether validation can stand in for test.

Two measurements, no training, a few seconds:

- *Distance to the training images.* For every image of every labelled split, the cosine
  similarity of its per-image standardised pixels to those of the most similar normal training
  image (training images themselves leave-one-out), summarised per split and class as
  quantiles, and as the share of normal images less similar than the 10% quantile of the
  training images (0.10 when a split's normals are as close to the training images as the
  training images are to each other).
- *Simple detectors on each split.* AUROC (abnormal positive) of the standardised-pixel kNN
  (the baseline of ``bench/budget.py``) at several neighbour counts and resolutions, and of
  single image statistics.

A validation split drawn from the same pool as the training images (as MedMNIST's is) can
hold normal images closer to the training images than the test split's; then it overrates
every detector that measures closeness to the training images, and a setting chosen on it
need not help on test.

    python bench/splits.py --data ../shared/data/pneumoniamnist.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dia.baselines import knn_pixel_scores
from dia.config import DataConfig
from dia.data import load_data
from dia.evaluation import anomaly_metrics
from dia.networks import normalize_input
from dia.provenance import code_commit, machine

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
NEIGHBOURS = (1, 5, 20)
SHRINK = (1, 2, 4)  # resolutions: the native size divided by these


def pixel_mean(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).mean(1)


def pixel_sd(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).std(1)


# Image statistics read as anomaly scores in a direction fixed beforehand (so a row can be far
# from 0.5 on either side: a guess at what the abnormal class does, not a one-class detector) ...
STATISTICS = {
    "low contrast (minus the pixels' standard deviation)": lambda x: -pixel_sd(x),
    "low maximum (minus the brightest pixel)": lambda x: -x.flatten(1).amax(1),
    "brightness (mean pixel)": pixel_mean,
}
# ... and as one-class detectors: how many of the normal training images' standard deviations an
# image's statistic lies from their mean, either way.
ONE_CLASS = {
    "unusual brightness, one-class (mean pixel's distance from training)": pixel_mean,
    "unusual contrast, one-class (pixel sd's distance from training)": pixel_sd,
}


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, D) per-image standardised pixels scaled to unit length."""
    return F.normalize(normalize_input(images.double(), "image").flatten(1), dim=1)


def nearest_similarity(query: torch.Tensor, bank: torch.Tensor, self_bank: bool = False):
    """(N,) cosine similarity of each query row to its most similar bank row; with
    ``self_bank`` the query is the bank and each row's own entry is left out."""
    sim = query @ bank.T
    if self_bank:
        sim.fill_diagonal_(float("-inf"))
    return sim.amax(dim=1)


def auroc(labels: torch.Tensor, anomaly) -> float:
    return round(anomaly_metrics(labels.numpy(), anomaly)["auroc"], 4)


def measure(data) -> dict:
    splits = {"test": (data.test, data.test_labels)}
    if data.val is not None and data.val_labels is not None:
        splits = {"val": (data.val, data.val_labels), **splits}
    bank = unit_pixels(data.train)
    own = nearest_similarity(bank, bank, self_bank=True)
    low = torch.quantile(own, 0.1)
    closeness = {"train (leave-one-out)": summary(own, low)}
    for split, (images, labels) in splits.items():
        nearest = nearest_similarity(unit_pixels(images), bank)
        for cls, name in ((0, "normal"), (1, "abnormal")):
            closeness[f"{split} {name}"] = summary(nearest[labels == cls], low)
    detectors: dict[str, dict[str, float]] = {}
    for shrink in SHRINK:
        train, *queries = (
            F.interpolate(x, scale_factor=1 / shrink, mode="area")
            for x in (data.train, *(images for images, _ in splits.values()))
        )
        for k in NEIGHBOURS:
            key = f"standardised-pixel kNN, k={k}, {train.shape[-1]} px"
            detectors[key] = {
                split: auroc(labels, knn_pixel_scores(train, query, k, standardize=True))
                for (split, (_, labels)), query in zip(splits.items(), queries, strict=True)
            }
    for key, statistic in STATISTICS.items():
        detectors[key] = {
            split: auroc(labels, statistic(images).numpy())
            for split, (images, labels) in splits.items()
        }
    for key, statistic in ONE_CLASS.items():
        reference = statistic(data.train).double()
        centre, spread = reference.mean(), reference.std()
        detectors[key] = {
            split: auroc(labels, ((statistic(images).double() - centre) / spread).abs().numpy())
            for split, (images, labels) in splits.items()
        }
    return {"closeness": closeness, "auroc": detectors}


def summary(similarity: torch.Tensor, low: torch.Tensor) -> dict:
    q = torch.quantile(similarity, torch.tensor(QUANTILES, dtype=similarity.dtype))
    return {
        "count": int(similarity.numel()),
        "quantiles": [round(float(v), 4) for v in q],
        "below_train_q10": round(float((similarity < low).double().mean()), 4),
    }


def markdown(results: dict) -> str:
    closeness, detectors = results["closeness"], results["auroc"]
    splits = list(next(iter(detectors.values())))
    lines = [
        f"# {results['dataset']}: how alike the splits are",
        "",
        "Similarity of each image to its most similar normal training image (cosine of "
        "per-image standardised pixels; training images leave-one-out). The last column is "
        "the share of a group less similar than the training images' 10% quantile.",
        "",
        "| group | images | "
        + " | ".join(f"q{round(q * 100)}" for q in QUANTILES)
        + " | below train q10 |",
        "|---|---|" + "---|" * (len(QUANTILES) + 1),
    ]
    for group, s in closeness.items():
        cells = " | ".join(f"{v:.3f}" for v in s["quantiles"])
        lines.append(f"| {group} | {s['count']} | {cells} | {s['below_train_q10']:.3f} |")
    lines += [
        "",
        "AUROC (abnormal positive) of simple detectors on each split. The kNN and one-class "
        "rows know only the normal training images; the other statistics are read in a "
        "direction fixed beforehand (a guess at what the abnormal class does).",
        "",
        "| detector | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
    ]
    for key, row in detectors.items():
        lines.append(f"| {key} | " + " | ".join(f"{row[s]:.3f}" for s in splits) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/pneumoniamnist.npz")
    p.add_argument("--val-fraction", type=float, default=0.0, help="for sources without one")
    p.add_argument("--name", default=None, help="result name (default: <data name>-splits)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    data = load_data(DataConfig(spec=args.data, val_fraction=args.val_fraction))
    dataset = Path(args.data.rstrip("/")).stem.replace("medmnist:", "")
    results = {
        "dataset": dataset,
        "data_spec": args.data,
        "command": " ".join(["python", "bench/splits.py", *(argv or sys.argv[1:])]),
        "commit": code_commit(),
        "machine": machine(),
        "counts": data.counts(),
        **measure(data),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{dataset}-splits"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
