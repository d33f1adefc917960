"""Does an image's score depend on the other images scored with it? A saved detector scores a
run's test and validation images three ways: all at once in their order, all at once in a
seeded shuffled order, and the first ``--single`` images one at a time. Reported per split:
AUROC of the first two, the largest score difference from the first, and how many decisions at
the detector's threshold differ.

Run it with the code to be measured on the path; each code commit keeps its own record in the
JSON, so two versions of the scoring compare side by side on one saved detector:

    python bench/scoring_order.py --run runs/pneumoniamnist-none-seed0

Writes bench/results/scoring-order.json and .md (``--name`` changes the name).
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

from dia import pipeline, provenance
from dia.config import to_dict


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a dia run folder (or its detector)")
    p.add_argument("--single", type=int, default=32, help="images scored one at a time")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--name", default="scoring-order")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p.parse_args(argv)


def measure(detector, images: torch.Tensor, labels: np.ndarray, single: int, seed: int) -> dict:
    t0 = time.perf_counter()
    ordered = detector.score_samples(images)
    score_s = time.perf_counter() - t0
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(images)))
    shuffled = np.empty_like(ordered)
    shuffled[order.numpy()] = detector.score_samples(images[order])
    n = min(single, len(images))
    alone = np.array([detector.score_samples(images[i : i + 1])[0] for i in range(n)])
    threshold = detector.threshold_

    def flips(other: np.ndarray, upto: int) -> int:
        return int(((ordered[:upto] < threshold) != (other < threshold)).sum())

    return {
        "images": len(images),
        "auroc_in_order": float(roc_auc_score(labels, -ordered)),
        "auroc_shuffled": float(roc_auc_score(labels, -shuffled)),
        "max_diff_shuffled": float(np.abs(shuffled - ordered).max()),
        "decisions_changed_shuffled": flips(shuffled, len(images)),
        "single": n,
        "max_diff_single": float(np.abs(alone - ordered[:n]).max()),
        "decisions_changed_single": flips(alone, n),
        "score_spread": float(ordered.std()),
        "images_per_s": len(images) / score_s,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    run = args.run if (args.run / "config.json").is_file() else args.run.parent
    detector = pipeline.load_detector(args.run, args.device, args.precision)
    config = pipeline.load_config(run)
    data = pipeline.load_run_data(config)
    t0 = time.perf_counter()
    splits = {"test": (data.test, data.test_labels)}
    if data.val is not None:
        splits["val"] = (data.val, data.val_labels)
    record = {
        "command": " ".join(["python", "bench/scoring_order.py", *(argv or sys.argv[1:])]),
        "code": str(Path(provenance.__file__).parent),
        "commit": provenance.code_commit(),
        "machine": provenance.machine(),
        "run": str(run.resolve()),
        "run_config": to_dict(config),
        "threshold": detector.threshold_,
        "splits": {
            name: measure(detector, images, labels.numpy(), args.single, args.seed)
            for name, (images, labels) in splits.items()
        },
    }
    record["wall_s"] = time.perf_counter() - t0
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = args.out / f"{args.name}.json"
    results = json.loads(path.read_text()) if path.is_file() else {"records": {}}
    # One record a code commit; each says which run and machine it measured.
    results["records"][record["commit"]] = record
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    lines = [
        "# Scoring order: one saved detector, its images scored in order, shuffled and alone",
        "",
        "| code | run | split | AUROC in order | AUROC shuffled | largest score change shuffled "
        "| decisions changed shuffled | largest change alone | decisions changed alone |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for commit, record in results["records"].items():
        for split, m in record["splits"].items():
            lines.append(
                f"| {commit[:12]} | `{record['run']}` | {split} ({m['images']}) | "
                f"{m['auroc_in_order']:.4f} | "
                f"{m['auroc_shuffled']:.4f} | {m['max_diff_shuffled']:.2g} | "
                f"{m['decisions_changed_shuffled']} | {m['max_diff_single']:.2g} | "
                f"{m['decisions_changed_single']} of {m['single']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
