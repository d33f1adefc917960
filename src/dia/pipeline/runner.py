"""The commands that train, from the data to a finished run folder: ``run``, ``resume``,
``train``, ``train-diffusion``, and ``dissolve`` (which trains a diffusion model where the
run folder lacks one).

Under a launcher (:mod:`dia.distributed`) every process runs the training steps, and rank 0
alone writes the run folder and evaluates.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .. import checkpoint as ckpt
from .. import distributed
from ..checkpoint import Checkpointing
from ..config import RunConfig, with_settings
from ..detector import DIADetector
from ..device import resolve_device
from ..dissolve import DiffusionDissolver, dissolver_class
from ..io import write_json
from ..reports import GRID_TIMESTEPS, PICTURE_COUNT
from .assess import dissolve_grid_step, evaluate_step, finish_run
from .folders import (
    DETECTOR_DIR,
    DIFFUSION_CHECKPOINT_DIR,
    DIFFUSION_DIR,
    TIMINGS_NAME,
    checkpoint_folder,
    diffusion_settings_differ,
    has_model,
    holds_detector,
    in_the_way,
    is_run_folder,
    load_config,
    model_in_the_way,
    save_config,
)
from .pictures import refresh_report, write_dissolve_grid
from .steps import (
    checkpointing,
    fit_dissolver_step,
    load_dissolver,
    load_run_data,
    make_dissolver,
    saved_fitting,
    train_detector_step,
)


def run(
    config: RunConfig,
    out: Path,
    progress: bool = True,
    checkpoint_every: float | None = ckpt.EVERY_S,
) -> dict | None:
    """Everything: data, diffusion (when needed), detector, evaluation. Returns the metrics
    (None on the other processes under a launcher: rank 0 evaluates and writes).

    The diffusion model's and the detector's trainings are checkpointed every
    ``checkpoint_every`` training seconds and on Ctrl-C (0 or None: never); :func:`resume`
    finishes an interrupted run.
    """
    t_start = time.perf_counter()
    deadline = None if config.budget_s is None else t_start + config.budget_s
    error = reuse = None
    created = False
    if distributed.is_main():
        error = in_the_way(out, config)
        learns = dissolver_class(config.detector.dissolving.dissolve).learns
        reuse = error is None and learns and has_model(out)
        if error is None:
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            save_config(config, out)
    # every process stops, or reuses the diffusion model, not just rank 0
    error, reuse = distributed.broadcast_object((error, reuse))
    if error is not None:
        raise FileExistsError(error)
    timings: dict = {}
    try:
        t0 = time.perf_counter()
        data = load_run_data(config)
        timings["data_s"] = time.perf_counter() - t0
        dissolver = _run_dissolver(config, data, out, progress, reuse, checkpoint_every, timings)
        saving = checkpointing(out, checkpoint_every, command="run", timings=dict(timings))
        return _finish(
            config,
            data,
            out,
            dissolver,
            saving,
            progress=progress,
            deadline=deadline,
            timings=timings,
            t_start=t_start,
        )
    except BaseException as err:
        # A run that failed before saving anything (data that cannot be read, a budget too
        # small) leaves no folder behind holding its settings alone (the next would be -2).
        if created and distributed.is_main() and {p.name for p in out.iterdir()} <= {"config.json"}:
            shutil.rmtree(out, ignore_errors=True)
        elif (
            isinstance(err, Exception)
            and has_model(out, DETECTOR_DIR)
            and not (out / "metrics.json").exists()
        ):
            raise RuntimeError(
                f"{err}. The trained detector is saved: once that is put right, dia evaluate "
                f"--out {out} evaluates it"
            ) from err
        elif (
            isinstance(err, ValueError)
            and "diffusion_s" in timings
            and not has_model(out, DETECTOR_DIR)
        ):
            raise ValueError(
                f"{err}. The diffusion model it trained is saved: dia run --out {out} with the "
                "same settings reuses it"
            ) from err
        raise


def _run_dissolver(config, data, out, progress, reuse, checkpoint_every, timings: dict):
    """:func:`run`'s dissolver: the one saved in ``out`` where ``reuse``, else fitted (a
    diffusion model checkpointed into ``out/diffusion-checkpoint`` as it trains); what it
    took goes into ``timings``."""
    if reuse:
        dissolver = load_dissolver(out, config)
        timings["diffusion_reused"] = True
        return dissolver
    t0 = time.perf_counter()
    saving = checkpointing(
        out, checkpoint_every, DIFFUSION_CHECKPOINT_DIR, command="run", timings=dict(timings)
    )
    dissolver, made = fit_dissolver_step(config, data, out, progress, None, saving)
    if made:  # a dissolver that learns: its fitting, or loading the kept one
        timings["diffusion_s"] = time.perf_counter() - t0
    return dissolver


def _finish(
    config, data, out, dissolver, saving, *, progress, deadline, timings, t_start, command="run"
):
    """Train the detector and, for ``dia run`` on rank 0, evaluate (returning the metrics):
    the end of :func:`run` and of :func:`resume`. ``timings`` (wall seconds so far) is
    completed and kept in the metrics; ``t_start`` is when the session began."""
    t0 = time.perf_counter()
    detector = train_detector_step(config, data, out, dissolver, progress, deadline, saving)
    if command != "run":  # dia train: the saved detector is all
        return None
    timings["detector_s"] = time.perf_counter() - t0
    timings.update({f"detector_{k}": v for k, v in detector.timings_.items()})
    timings["dissolve_cache_s"] = detector.history_.get("dissolve_cache_s", 0.0)
    if not distributed.is_main():
        return None
    # a flag, not seconds: the diffusion model came from an earlier session, its time not counted
    reused = timings.pop("diffusion_reused", False)
    # its dissolver's one-time fitting, in this run or an earlier one (out/diffusion)
    made = saved_fitting(out) if dissolver is not None and dissolver.learns else None
    # kept apart until metrics.json holds them: a crash while evaluating does not lose them
    write_json(
        out / TIMINGS_NAME, {"wall_s": timings, "diffusion_reused": reused, "diffusion": made}
    )
    metrics = evaluate_step(config, data, detector, out, timings, finish=False)
    dissolve_grid_step(config, data, out, dissolver, metrics)
    metrics["wall_s"]["total_s"] = time.perf_counter() - t_start
    if reused:
        metrics["diffusion_reused"] = True
    if made:
        metrics["diffusion"] = made
    if "resumed_at_step" in detector.history_:
        metrics["resumed_at_step"] = detector.history_["resumed_at_step"]
    finish_run(out, metrics)
    return metrics


def resume(
    out: Path, device: str | None = None, precision: str | None = None, progress: bool = True
) -> tuple[str, dict | None]:
    """Continue the interrupted training of run folder ``out`` from its checkpoint (the
    detector's, or the diffusion model's) and finish what was started: a ``dia run`` is
    evaluated as well. ``device`` and ``precision`` default to the run's own. Returns the
    command finished (``run``, ``train`` or ``train-diffusion``) and, for ``run`` on rank 0,
    the metrics.

    Trained for a number of epochs, the continued training takes exactly the steps, and gives
    exactly the weights, of an uninterrupted one (with the same number of processes). Under a
    time budget the steps depend on the clock, interrupted or not: the budget counts the
    training seconds done before (the data loading and dissolve cache of the resumed session
    come on top of it).
    """
    t_start = time.perf_counter()
    folder = finished = missing = None
    if distributed.is_main():
        folder = checkpoint_folder(out)
        if (out / "metrics.json").exists():
            finished = f"{out} already holds a finished run (metrics.json); nothing to resume"
        elif not ckpt.exists(folder):
            missing = _nothing_to_resume(out, folder)
    folder, finished, missing = distributed.broadcast_object((folder, finished, missing))
    if finished is not None:
        raise FileExistsError(finished)
    if missing is not None:
        raise FileNotFoundError(missing)
    config = load_config(out)
    config = dataclasses.replace(
        config, device=device or config.device, precision=precision or config.precision
    )
    meta = ckpt.read_meta(folder)
    command = meta.get("command", "train")
    timings = dict(meta.get("timings", {}))
    t0 = time.perf_counter()
    data = load_run_data(config)
    timings["resumed_data_s"] = time.perf_counter() - t0
    if folder.name == DIFFUSION_CHECKPOINT_DIR:
        return command, _resume_diffusion(config, data, out, meta, timings, progress, t_start)
    dissolver = load_dissolver(out, config)
    if dissolver is None:
        raise FileNotFoundError(
            f"{out / DIFFUSION_DIR} is missing: the checkpointed training dissolved with "
            "that diffusion model"
        )
    saving = Checkpointing(folder, meta.get("every_s"), resume=True, meta=_own_meta(meta))
    metrics = _finish(
        config,
        data,
        out,
        dissolver,
        saving,
        progress=progress,
        deadline=None,
        timings=timings,
        t_start=t_start,
        command=command,
    )
    return command, metrics


def _resume_diffusion(config, data, out: Path, meta: dict, timings: dict, progress, t_start):
    """Finish the diffusion training checkpointed in run folder ``out`` (``meta``: its JSON)
    and save the model, then do what its command does next: ``dia train`` trains the
    detector, ``dia run`` trains and evaluates it (returning the metrics on rank 0). A time
    budget counts the first session's data loading and diffusion training."""
    command = meta.get("command", "train")
    folder = out / DIFFUSION_CHECKPOINT_DIR
    saving = Checkpointing(folder, meta.get("every_s"), resume=True, meta=_own_meta(meta))
    t0 = time.perf_counter()
    diffusion = DiffusionDissolver.create(config.diffusion)
    dissolver, _ = fit_dissolver_step(config, data, out, progress, diffusion, saving)
    if command == "train-diffusion":
        return None
    before = meta.get("timings", {}).values()
    spent = meta["train_s"] + sum(v for v in before if not isinstance(v, bool))
    timings["diffusion_s"] = meta["train_s"] + time.perf_counter() - t0
    deadline = None if config.budget_s is None else t_start + config.budget_s - spent
    saving = checkpointing(out, meta.get("every_s"), command=command, timings=dict(timings))
    return _finish(
        config,
        data,
        out,
        dissolver,
        saving,
        progress=progress,
        deadline=deadline,
        timings=timings,
        t_start=t_start,
        command=command,
    )


def _nothing_to_resume(out: Path, folder: Path) -> str:
    """What to do instead of resuming a run folder ``out`` without a checkpoint."""
    if has_model(out, DETECTOR_DIR):
        return (
            f"nothing to resume in {out}: its detector's training finished (saved in "
            f"{out / DETECTOR_DIR}); dia evaluate --out {out} scores the test split with it"
        )
    again = "dia run or dia train"
    if has_model(out):
        again = "dia run (which reuses its diffusion model) or dia train"
    return (
        f"no checkpoint in {out} (expected {folder / ckpt.META_FILE}): the run stopped before "
        f"its training saved one; start it again with {again} and the same --out"
    )


def _own_meta(meta: dict) -> dict:
    """What :func:`checkpointing` put into a checkpoint's JSON, to be kept on resuming."""
    return {k: meta[k] for k in ("command", "every_s", "timings") if k in meta}


def train(
    config: RunConfig,
    out: Path,
    progress: bool = True,
    checkpoint_every: float | None = ckpt.EVERY_S,
) -> DIADetector:
    """``dia train``: the detector of run folder ``out``, trained and saved without being
    evaluated, with the diffusion model found there (trained and saved first where it is
    needed and missing). Checkpointed as :func:`run` is; ``config.budget_s`` counts from now.
    """
    start = time.perf_counter()
    deadline = None if config.budget_s is None else start + config.budget_s
    main_process = distributed.is_main()
    error = distributed.broadcast_object(in_the_way(out, config) if main_process else None)
    if error is not None:
        raise FileExistsError(error)
    if main_process:
        save_config(config, out)
    data = load_run_data(config)
    dissolver = load_dissolver(out, config)
    if dissolver is None:  # one that learns, not saved in the folder yet
        saving = checkpointing(out, checkpoint_every, DIFFUSION_CHECKPOINT_DIR, command="train")
        dissolver, _ = fit_dissolver_step(config, data, out, progress, None, saving)
    saving = checkpointing(out, checkpoint_every, command="train")
    return train_detector_step(config, data, out, dissolver, progress, deadline, saving)


def train_diffusion_only(
    config: RunConfig,
    out: Path,
    progress: bool = True,
    checkpoint_every: float | None = ckpt.EVERY_S,
) -> DiffusionDissolver:
    """``dia train-diffusion``: the diffusion model of run folder ``out`` alone, trained and
    saved into ``out/diffusion`` (never over a trained model or a result). Its training is
    checkpointed into ``out/diffusion-checkpoint`` every ``checkpoint_every`` training
    seconds and on Ctrl-C (0 or None: never); :func:`resume` finishes it."""
    # Its config.json would replace the one of whatever the folder holds.
    error = in_the_way(out, config) or model_in_the_way(out, DIFFUSION_DIR)
    if error is not None:
        raise FileExistsError(error)
    save_config(config, out)
    data = load_run_data(config)
    dissolver = DiffusionDissolver.create(config.diffusion)
    saving = checkpointing(
        out, checkpoint_every, DIFFUSION_CHECKPOINT_DIR, command="train-diffusion"
    )
    return fit_dissolver_step(config, data, out, progress, dissolver, saving)[0]


def dissolve_config(
    out: Path | None,
    config: RunConfig,
    given: dict[str, object] | None = None,
    seed: int | None = None,
) -> RunConfig:
    """What ``dia dissolve`` dissolves with: ``config`` without a run folder ``out``; with
    one, its own settings on ``config``'s device, with the settings ``given`` (``{"section.
    field": value}``) and ``seed`` on top."""
    if out is not None and holds_detector(out):
        raise ValueError(
            f"{out} holds a detector saved by the library, not a run; dia dissolve writes its "
            "grid (and a diffusion model it trains) into a run folder or a new one"
        )
    if out is not None and is_run_folder(out):
        saved = load_config(out)
        saved = dataclasses.replace(
            saved, device=config.device, seed=saved.seed if seed is None else seed
        )
        given = given or {}
        config = with_settings(saved, given)
        if config.detector.dissolving.dissolve == "none" and "detector.dissolve" not in given:
            raise ValueError(
                f"the run in {out} was trained without dissolving (--dissolve none); pass "
                "--dissolve diffusion, gaussian or median to see one"
            )
    if config.detector.dissolving.dissolve == "none":
        raise ValueError(
            "--dissolve none dissolves nothing (the cpu preset trains without dissolving); "
            "pass --dissolve diffusion, gaussian or median"
        )
    return config


def draw_dissolve_grid(
    config: RunConfig,
    out: Path,
    timesteps=GRID_TIMESTEPS,
    count: int = PICTURE_COUNT,
    path: Path | None = None,
    progress: bool = True,
    note: Callable[[str], None] | None = None,
) -> tuple[Path, int]:
    """``dia dissolve``: a PNG (``path``, default ``out/dissolve_grid.png``) of the first
    ``count`` test images and their versions dissolved at ``timesteps``, with the diffusion
    model of run folder ``out`` (trained and saved there first when missing; ``note`` is told).
    ``config``: as :func:`dissolve_config` gives it. Returns the path and how many images."""
    timesteps = list(timesteps)
    if not timesteps or min(timesteps) < 0:
        raise ValueError(f"timesteps={timesteps}; expected non-negative integers")
    data = load_run_data(config)
    dissolver = make_dissolver(config)
    if dissolver.learns:
        # a run folder's config.json says how its diffusion model is (or would be) made
        recorded = (out / "config.json").is_file()
        differ = recorded and diffusion_settings_differ(out, config, ("diffusion",))
        if differ:
            raise ValueError(
                f"{out} records other diffusion settings ({differ}); dia dissolve uses the "
                "run's diffusion model as it is: leave those flags out, or choose another --out"
            )
        dissolver = load_dissolver(out, config)
        if dissolver is None:
            if note is not None:
                note(f"no diffusion model in {out}; training one")
            dissolver, _ = fit_dissolver_step(config, data, out, progress)
            if not recorded:  # how it was made, as dia train-diffusion records it
                save_config(config, out)
    images = data.test[:count]
    path = path or out / "dissolve_grid.png"
    write_dissolve_grid(dissolver, images, path, resolve_device(config.device), timesteps)
    refresh_report(out)
    return path, len(images)
