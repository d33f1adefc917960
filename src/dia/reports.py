"""Pictures of a run (ROC curve, score histograms, dissolving grids, anomaly maps) and the page
that shows them with its numbers."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score, roc_curve

from .baselines import BASELINES
from .config import DetectorConfig
from .config_tree import flat_values
from .io import write_png

# What a run draws besides its curves: how many test images, and the dissolving timesteps.
PICTURE_COUNT = 8
GRID_TIMESTEPS = (0, 30, 50, 100, 200, 400)


def to_pil(images: torch.Tensor, scale: int = 4) -> list[Image.Image]:
    """(N, C, H, W) in [0, 1] -> N PIL images, upscaled ``scale`` times (nearest neighbour)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().byte().cpu()
    out = []
    for img in arr:
        mode = "L" if img.shape[0] == 1 else "RGB"
        pixels = img[0].numpy() if mode == "L" else img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(pixels, mode=mode).convert("RGB")
        out.append(pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST))
    return out


def image_grid(
    columns: list[torch.Tensor],
    titles: list[str],
    scale: int = 4,
    pad: int = 2,
    row_labels: list[str] | None = None,
) -> Image.Image:
    """A grid whose column j shows the (N, C, H, W) images ``columns[j]`` under ``titles[j]``.

    ``row_labels``, one per image, are written to the right of their rows.
    """
    if len(columns) != len(titles) or not columns:
        raise ValueError("need one title per column and at least one column")
    cols = [to_pil(c, scale) for c in columns]
    n = len(cols[0])
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"{len(row_labels)} row labels for {n} rows; expected one per row")
    w, h = cols[0][0].size
    header = 14
    label_w = 0
    if row_labels:
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_w = 6 + max(int(measure.textlength(label)) for label in row_labels)
    width = len(cols) * (w + pad) + pad + label_w
    grid = Image.new("RGB", (width, header + n * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, (col, title) in enumerate(zip(cols, titles, strict=True)):
        x = pad + j * (w + pad)
        draw.text((x + 2, 1), title, fill="black")
        for i, img in enumerate(col):
            grid.paste(img, (x, header + pad + i * (h + pad)))
    for i, label in enumerate(row_labels or []):
        top = header + pad + i * (h + pad)
        draw.text((len(cols) * (w + pad) + pad + 2, top + 2), label, fill="black")
    return grid


def dissolve_grid(images: torch.Tensor, dissolver, timesteps: list[int], scale: int = 4):
    """Each image (a row) next to its dissolved versions at every timestep (columns)."""
    columns, titles = [images], ["input"]
    for t in timesteps:
        columns.append(dissolver(images, t))
        titles.append(f"t={t}")
    return image_grid(columns, titles, scale)


def _figure(width: float = 5.0, height: float = 4.0, columns: int = 1):
    # A bare Figure draws with the Agg canvas and never touches pyplot's global backend, so
    # writing a plot does not disturb a notebook's or a GUI's own figures.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    return fig, fig.subplots(1, columns)


def roc_plot(
    labels: np.ndarray,
    scores: np.ndarray,
    path: str | Path,
    threshold: float | None = None,
    title: str = "ROC",
) -> Path:
    """Write the ROC curve of normality ``scores`` (N,) (higher = more normal) against
    ``labels`` (N,) (1 = abnormal, the positive class) to the PNG ``path``.

    With ``threshold``, the operating point of calling every score below it abnormal is marked.
    """
    labels, anomaly = np.asarray(labels).ravel(), -np.asarray(scores, dtype=np.float64).ravel()
    fpr, tpr, _ = roc_curve(labels, anomaly)
    fig, ax = _figure(4.6, 4.4)
    ax.plot(fpr, tpr, color="tab:blue", label=f"AUROC {roc_auc_score(labels, anomaly):.3f}")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    if threshold is not None:
        called = anomaly > -threshold
        point = (called[labels == 0].mean(), called[labels == 1].mean())
        ax.plot(*point, "o", color="tab:red", label=f"threshold {threshold:.4g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title=title, aspect="equal")
    ax.set(xlabel="false-positive rate (normal called abnormal)")
    ax.set(ylabel="true-positive rate (abnormal found)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def score_histogram(
    labels: np.ndarray,
    scores: np.ndarray,
    path: str | Path,
    threshold: float | None = None,
    title: str = "scores",
) -> Path:
    """Write overlaid histograms of the normality ``scores`` (N,) of the normal (label 0) and
    abnormal (label 1) images to the PNG ``path``, with ``threshold`` as a vertical line."""
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, len(scores) // 10)))
    fig, ax = _figure(6.0, 3.6)
    for value, name, colour in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red")):
        chosen = scores[labels == value]
        ax.hist(chosen, bins=bins, alpha=0.55, color=colour, label=f"{name} ({len(chosen)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set(xlabel="score (higher = more normal)", ylabel="images", title=title)
    ax.legend()
    return _save(fig, path)


def training_plot(
    detector_history: dict, path: str | Path, diffusion_history: dict | None = None
) -> Path:
    """Write the detector's training losses per step (``detector_history``: lists ``loss``,
    ``contrastive``, ``shift``) and, beside them, the diffusion model's loss per epoch
    (``diffusion_history["loss"]``, when given) to the PNG ``path``.

    Per-step losses are noisy, so each is drawn as a moving average over a fiftieth of the
    steps, the total's raw values faint behind it.
    """
    panels = 2 if diffusion_history and diffusion_history.get("loss") else 1
    fig, axes = _figure(5.0 * panels, 3.6, columns=panels)
    axes = np.atleast_1d(axes)
    total = np.asarray(detector_history.get("loss", []), dtype=np.float64)
    steps = np.arange(1, len(total) + 1)
    ax = axes[0]
    if len(total):
        ax.plot(steps, total, color="0.8", linewidth=0.6)
    colours = {"loss": "black", "contrastive": "tab:blue", "shift": "tab:orange"}
    for key, colour in colours.items():
        values = np.asarray(detector_history.get(key, []), dtype=np.float64)
        if len(values):
            name = "total" if key == "loss" else key
            ax.plot(
                np.arange(1, len(values) + 1), _moving_average(values), color=colour, label=name
            )
    ax.set(xlabel="step", ylabel="loss", title="detector training")
    if len(total):
        ax.legend()
    if panels == 2:
        loss = np.asarray(diffusion_history["loss"], dtype=np.float64)
        axes[1].plot(np.arange(1, len(loss) + 1), loss, color="tab:green", marker=".")
        axes[1].set(xlabel="epoch", ylabel="noise-prediction loss", title="diffusion training")
    return _save(fig, path)


def _moving_average(values: np.ndarray) -> np.ndarray:
    """The mean of each value and the ones before it over a fiftieth of the series (at least 1)."""
    window = max(1, len(values) // 50)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _save(fig, path: str | Path) -> Path:
    return write_png(path, fig)


def heat_overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.7) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] tinted red where maps (N, H, W) are positive, (N, 3, H, W).

    Each map is divided by its own largest positive value, so the reddest pixel of every image
    marks that image's most abnormal region (colours compare regions within an image, not
    across images); zero and negative values leave the image as it is.
    """
    rgb = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
    heat = maps.float().clamp_min(0)
    peak = heat.flatten(1).amax(dim=1).clamp_min(1e-12)
    weight = alpha * (heat / peak[:, None, None])[:, None]
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return (rgb * (1 - weight) + red * weight).clamp(0, 1)


def anomaly_map_grid(
    images: torch.Tensor,
    maps,
    scores=None,
    threshold: float | None = None,
    scale: int = 4,
) -> Image.Image:
    """Rows of: image (N, C, H, W), its map (N, H, W) as a red overlay (:func:`heat_overlay`,
    normalised per image), and a caption with the map's largest value and, when given, the score
    and the decision (abnormal when the score is below ``threshold``)."""
    maps = torch.as_tensor(maps).float()
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"maps have shape {tuple(maps.shape)}; expected (N, H, W) = "
            f"{(images.shape[0], *images.shape[-2:])}"
        )
    if scores is not None and len(scores) != images.shape[0]:
        raise ValueError(f"{len(scores)} scores for {images.shape[0]} images")
    labels = []
    for i in range(images.shape[0]):
        parts = []
        if scores is not None:
            parts.append(f"score {float(scores[i]):.3f}")
            if threshold is not None:
                parts.append("called abnormal" if float(scores[i]) < threshold else "called normal")
        parts.append(f"map max {float(maps[i].max()):+.3g}")
        labels.append("  ".join(parts))
    overlay = heat_overlay(images.cpu(), maps)
    return image_grid([images.cpu(), overlay], ["input", "map"], scale, row_labels=labels)


# The pictures of a run folder the report page shows, in this order, with what each shows.
REPORT_PICTURES = (
    (
        "roc.png",
        "ROC curve of the test split, abnormal as the positive class; the red dot is the "
        "decision threshold.",
    ),
    (
        "score_histogram.png",
        "Scores of the normal and abnormal test images (higher = more normal); the dashed line "
        "is the threshold, chosen on the normal training images alone.",
    ),
    (
        "training_curve.png",
        "Training losses: the detector's per step (moving averages; the total's raw values "
        "faint) and, when the run dissolves with diffusion, the diffusion model's per epoch.",
    ),
    (
        "anomaly_maps.png",
        "The lowest-scoring test images, i.e. the most abnormal by the detector's score (no "
        "label chose them), and where it finds them abnormal: red marks the detail whose "
        "dissolving makes the image look most normal, scaled per image.",
    ),
    (
        "dissolve_grid.png",
        "Test images dissolved at increasing timesteps: the fine detail dissolving removes is "
        "what a detector trained with dissolved negatives learns to notice.",
    ),
)


def _number(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(pairs) -> str:
    return "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs
    )


def _result_rows(metrics: dict) -> list[tuple[str, str]]:
    """The report's test-split results: the metrics and the threshold's operating point."""
    return [
        ("AUROC (abnormal = positive)", _number(metrics.get("auroc"))),
        ("AUPRC", _number(metrics.get("auprc"))),
        ("FPR at 95% TPR", _number(metrics.get("fpr_at_95_tpr"))),
        ("threshold (score)", _number(metrics.get("threshold"), 4)),
        (
            "test FPR at the threshold",
            f"{_number(metrics.get('test_fpr_at_threshold'))} "
            f"(target {metrics.get('threshold_fpr_target', '-')} on normal training images)",
        ),
        ("test TPR at the threshold", _number(metrics.get("test_tpr_at_threshold"))),
        ("protocol", metrics.get("protocol", "-")),
    ]


def _run_rows(metrics: dict) -> list[tuple[str, str]]:
    """The report's description of the run: data, method, budget, training, machine."""
    data, config = metrics.get("data", {}), metrics.get("config", {})
    # by the settings' flat names, whether the run grouped them or not
    detector = flat_values(DetectorConfig, config.get("detector") or {})
    training, wall = metrics.get("training", {}), metrics.get("wall_s", {})
    dissolve = detector.get("dissolve", "-")
    method = "plain CSI (no dissolving)" if dissolve == "none" else f"DIA, {dissolve} dissolving"
    external = metrics.get("external")
    # a library's detector evaluated on an external set: how it was trained is not recorded
    budget_unset = "unknown" if external and not external.get("trained_on") else "none"
    test_images = (
        f"test {data.get('test_normal', '-')} normal, {data.get('test_abnormal', '-')} abnormal"
    )
    run = [
        ("data", config.get("data", {}).get("spec", data.get("name", "-"))),
        (
            "images",
            test_images if external else f"{data.get('train', '-')} normal training; {test_images}",
        ),
        ("method", f"{method}, {detector.get('shift', '-')} shifts"),
        ("preset, seed", f"{config.get('preset') or '-'}, {metrics.get('seed', '-')}"),
        ("budget", f"{config.get('budget_s')} s" if config.get("budget_s") else budget_unset),
        (
            "training",
            f"{training.get('steps', '-')} steps, {_number(training.get('images_per_s'), 0)} "
            "images/s",
        ),
        ("wall time", f"{wall['total_s']:.0f} s" if "total_s" in wall else "-"),
        ("device, precision", f"{metrics.get('device', '-')}, {metrics.get('precision', '-')}"),
        ("machine", _machine_text(metrics.get("machine", {}))),
        ("dia version, commit", f"{metrics.get('version', '-')}, {metrics.get('commit', '-')}"),
    ]
    if "resumed_at_step" in metrics:
        run.append(("resumed", f"at step {metrics['resumed_at_step']} (wall time: since then)"))
    if metrics.get("diffusion_reused"):
        run.append(("diffusion model", "reused: trained by an earlier start of this run"))
    elif metrics.get("diffusion"):
        run.append(("diffusion model", _diffusion_text(metrics["diffusion"])))
    if external:
        trained_on = external.get("trained_on")
        trained = (
            f"the detector of run {external.get('run')}, trained on "
            f"{trained_on.get('spec', '-')}; its threshold from those normal training images"
            if trained_on
            else f"the detector saved in {external.get('run')} (its training data not "
            "recorded); its threshold from its normal training images"
        )
        run.insert(2, ("external test set for", trained))
    return run


def _diffusion_text(made: dict) -> str:
    """Where the run's diffusion model came from and what its training cost, once."""
    where = "kept from an earlier run on the same images: " if made.get("kept") else ""
    return f"{where}trained {made.get('steps', '-')} steps, {_number(made.get('train_s'), 0)} s"


def _figures(pictures: dict[str, bytes]) -> str:
    """The pictures, embedded, in :data:`REPORT_PICTURES` order."""
    figures = []
    for name, caption in REPORT_PICTURES:
        if name in pictures:
            encoded = base64.b64encode(pictures[name]).decode("ascii")
            figures.append(
                f'<figure><img src="data:image/png;base64,{encoded}" alt="{name}">'
                f"<figcaption>{html.escape(caption)} ({name})</figcaption></figure>"
            )
    return "".join(figures) or "<p>none in this folder</p>"


def report_html(metrics: dict, pictures: dict[str, bytes]) -> str:
    """A self-contained HTML page of a run: its ``metrics`` (the content of ``metrics.json``)
    and ``pictures`` (file name -> PNG bytes, shown in :data:`REPORT_PICTURES` order, embedded
    so that the page can be moved or mailed alone)."""
    name = metrics.get("data", {}).get("name", "run")
    settings = "metrics.json" if metrics.get("external") else "metrics.json, config.json"
    title = html.escape(f"dia: {name}, AUROC {_number(metrics.get('auroc'))}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 1em 0.25em 0; vertical-align: top; }}
th {{ font-weight: normal; color: #555; }}
figure {{ margin: 0 0 2em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
<h1>{title}</h1>
<h2>Results on the test split</h2>
<table>
{_rows(_result_rows(metrics))}
</table>
{_against_baselines(metrics)}
<h2>Run</h2>
<table>
{_rows(_run_rows(metrics))}
</table>
<h2>Pictures</h2>
{_figures(pictures)}
<p>Per-image scores: scores.csv; every number and setting: {settings}.</p>
</body></html>
"""


def _against_baselines(metrics: dict) -> str:
    """A table of the detector's AUROC beside the pixel kNN baselines', on the test and
    validation splits ('' when ``metrics`` hold neither baselines nor a validation AUROC)."""
    baselines = metrics.get("baselines", {})
    if not baselines and "val_auroc" not in metrics:
        return ""
    rows = [("this detector", metrics.get("auroc"), metrics.get("val_auroc"))]
    rows += [(BASELINES.get(k, k), b.get("test"), b.get("val")) for k, b in baselines.items()]
    cells = "\n".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{_number(v)}</td>" for v in (test, val))
        + "</tr>"
        for name, test, val in rows
    )
    return f"""<h2>Against simple baselines (AUROC)</h2>
<table>
<tr><th></th><th>test</th><th>validation</th></tr>
{cells}
</table>"""


def _machine_text(machine: dict) -> str:
    """The machine of ``metrics.json`` in words: GPU or CPU model, threads, torch."""
    device = machine.get("cuda") or machine.get("cpu_model") or machine.get("cpu") or "-"
    parts = [device]
    if machine.get("amx"):
        parts.append("AMX")
    if machine.get("cores"):
        threads = machine["cores"]
        parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    return ", ".join(parts)
