"""The ``dia`` command line: ``run``, ``train-diffusion``, ``train``, ``resume``, ``evaluate``,
``score``, ``dissolve``, ``maps``. It parses (:mod:`dia.cli_args`) and prints; the work is
done by :mod:`dia.pipeline`, which the Python API calls too."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from .cli_args import (
    build_parser,
    checkpoint_every,
    config_from_args,
    external_test_set,
    given_settings,
    timesteps_of,
)
from .config import RunConfig

# Commands that train, and so share the work under a launcher; the others run on rank 0 alone.
DISTRIBUTED = ("run", "train", "resume")
# The commands that read a run, and take its detector folder for it.
READS_RUN = ("resume", "evaluate", "score", "dissolve", "maps")


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not valid text (bytes a file system allows) is printed with
        # the odd bytes escaped, not as an encoding error.
        if hasattr(stream, "reconfigure") and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said with the command's own usage, not the top level's
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    with warnings.catch_warnings(), _terminate_as_interrupt():
        warnings.showwarning = _warning_printer(args.command, warnings.showwarning)
        return _main(args)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a scheduler's or ``kill``'s stop) ends a command as Ctrl-C does: with what it
    saved intact and a line that says so, not silently. Training installs its own handlers,
    which save a checkpoint first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _warning_printer(command: str, usual):
    """Print dia's own warnings as ``dia COMMAND: warning: ...`` lines; others as usual."""
    package = str(Path(__file__).parent)

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(package):
            print(f"dia {command}: warning: {message}", file=sys.stderr)
        else:
            usual(message, category, filename, lineno, file, line)

    return show


def _launch_device(args: argparse.Namespace) -> str:
    """The device whose backend a launcher's processes join with: ``--device``; without it the
    one of the file ``--config`` names (``run``, ``train``), else auto; for ``dia resume`` the
    run's own (a run made with ``--device cpu`` keeps gloo on a GPU machine)."""
    if args.device is not None:
        return args.device
    saved = getattr(args, "config", args.out)  # resume has no --config: its run folder
    if saved is None:
        return "auto"
    from . import pipeline

    try:
        return pipeline.read_config(saved).device
    except (ValueError, OSError):
        return "auto"  # the command itself then says what is wrong with the file


def _main(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from . import pipeline
    from .checkpoint import TrainingInterrupted  # torch: imported once the arguments are valid
    from .device import set_cpu_memory_from_env

    try:
        set_cpu_memory_from_env()
        if args.command in READS_RUN and args.out is not None:
            args.out = pipeline.run_folder_of(args.out)
        if args.command not in DISTRIBUTED:
            if int(os.environ.get("RANK", "0")) != 0:
                return 0
            return _dispatch(args)
        from .distributed import process_group

        with process_group(_launch_device(args)):
            return _dispatch(args)
    except (ValueError, OSError, RuntimeError, FloatingPointError, SafetensorError) as err:
        # OSError: a full disk, a read-only folder, a file where a folder should be, ...
        print(f"dia {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            run_dir = stop.folder.parent
            print(
                f"interrupted; saved results are intact, and the {stop.training}'s training "
                f"is checkpointed at step {stop.step} in {stop.folder}: dia resume --out "
                f"{run_dir} continues it",
                file=sys.stderr,
            )
        return 130
    except KeyboardInterrupt:
        print("interrupted; saved results are intact", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from . import distributed, pipeline  # heavy imports only once the arguments are valid

    if args.command == "score":  # writes files of its own names: needs no hold on the folder
        _score(args)
        return 0
    main_process = distributed.is_main()
    if args.command == "resume":
        with _holding(args.out, main_process, args.command):
            _resume(args)
        return 0
    config = config_from_args(args)
    if args.command == "dissolve":
        base = [f for f in ("preset", "config") if getattr(args, f) is not None]
        if base and args.out is not None and pipeline.is_run_folder(args.out):
            raise ValueError(
                f"dia dissolve uses the settings saved in {args.out}; --{base[0]} would be "
                "ignored (give single settings such as --dissolve median instead)"
            )
        config = pipeline.dissolve_config(args.out, config, given_settings(args), args.seed)
    # dia run and dia dissolve without --out: rank 0's choice for all
    out = args.out or pipeline.agreed_run_dir(config)
    with _holding(out, main_process, args.command):
        COMMANDS[args.command](args, config, out)
    return 0


def _holding(out: Path, main_process: bool, command: str):
    """The main process works on run folder ``out`` as its only dia process
    (:func:`~dia.io.hold_folder`) and says what an interrupted save left there."""
    from .io import hold_folder

    if not main_process:
        return contextlib.nullcontext([])

    @contextlib.contextmanager
    def held():
        with hold_folder(out, disposable=("config.json",)) as stale:
            if stale:
                names = ", ".join(p.name for p in stale)
                print(
                    f"dia {command}: removed what interrupted saves left: {names}", file=sys.stderr
                )
            yield

    return held()


def _run(args, config: RunConfig, out: Path) -> None:
    from . import distributed, pipeline

    if distributed.is_main():
        print(f"dia run -> {out}", file=sys.stderr)
    metrics = pipeline.run(config, out, not args.no_progress, checkpoint_every(args))
    if metrics is not None:
        _print_metrics(metrics, out)


def _train_diffusion(args, config: RunConfig, out: Path) -> None:
    from . import pipeline

    pipeline.train_diffusion_only(config, out, not args.no_progress, checkpoint_every(args))
    print(f"diffusion model saved to {out / pipeline.DIFFUSION_DIR}")


def _train(args, config: RunConfig, out: Path) -> None:
    from . import distributed, pipeline

    pipeline.train(config, out, not args.no_progress, checkpoint_every(args))
    if distributed.is_main():
        print(f"detector saved to {out / pipeline.DETECTOR_DIR}")


def _resume(args: argparse.Namespace) -> None:
    from . import distributed, pipeline

    if distributed.is_main():
        print(f"dia resume -> {args.out}", file=sys.stderr)
    command, metrics = pipeline.resume(
        args.out, args.device, args.precision, progress=not args.no_progress
    )
    if metrics is not None:
        _print_metrics(metrics, args.out)
    elif command == "train" and distributed.is_main():
        print(f"detector saved to {args.out / pipeline.DETECTOR_DIR}")
    elif command == "train-diffusion" and distributed.is_main():
        print(f"diffusion model saved to {args.out / pipeline.DIFFUSION_DIR}")


def _saved_detector(args, config: RunConfig, out: Path):
    """The detector saved in ``out``, the settings it is evaluated with and the test set
    ``--data`` names (``{}`` without it)."""
    from . import pipeline

    detector = pipeline.load_detector(out, args.device, args.precision)
    test_set = external_test_set(args, out, pipeline.is_run_folder(out))
    config = pipeline.evaluation_config(out, detector, config, bool(test_set))
    return config, detector, test_set


def _evaluate(args, config: RunConfig, out: Path) -> None:
    from . import pipeline

    config, detector, test_set = _saved_detector(args, config, out)
    t0 = time.perf_counter()
    metrics, where = pipeline.evaluate(out, detector, test_set, config)
    _print_metrics(metrics, where, time.perf_counter() - t0)


def _maps(args, config: RunConfig, out: Path) -> None:
    from . import pipeline

    if args.count < 1:
        raise ValueError(f"--count={args.count}; expected at least 1")
    config, detector, test_set = _saved_detector(args, config, out)
    path, shown = pipeline.draw_anomaly_maps(
        out, detector, test_set, config, args.count, args.patch, args.stride, args.image, _say
    )
    print(f"anomaly maps of the {shown} lowest-scoring test images saved to {path}")


def _dissolve(args, config: RunConfig, out: Path) -> None:
    from . import pipeline

    timesteps = timesteps_of(args)
    path, count = pipeline.draw_dissolve_grid(
        config, out, timesteps, args.count, args.grid, not args.no_progress, _say
    )
    print(f"dissolving grid ({count} images x {len(timesteps)} timesteps) saved to {path}")


def _say(line: str) -> None:
    print(line, file=sys.stderr)  # sys.stderr as it is now: a test may have replaced it


def _score(args: argparse.Namespace) -> None:
    from . import pipeline

    summary = pipeline.score_paths(
        args.out, args.paths, args.csv, args.fpr, args.skip_unreadable, args.device, args.precision
    )
    if summary["unreadable"]:
        n = len(summary["unreadable"])
        print(
            f"skipped {n} file{'' if n == 1 else 's'} that could not be read, listed with why "
            f"in {summary['unreadable_csv']}",
            file=sys.stderr,
        )
    if summary["images"] <= 20:
        for path, score in zip(summary["files"], summary["scores"], strict=True):
            verdict = "ABNORMAL" if score < summary["threshold"] else "normal"
            print(f"{score:10.4f}  {verdict:8}  {path}")
    volumes = summary["volumes"]
    if volumes and len(volumes) <= 20:
        for v in volumes:
            print(
                f"{v['abnormal_slices']:5d} of {v['slices']} slices abnormal  {v['volume']}  "
                f"(most abnormal {Path(v['most_abnormal']).name}, score {v['lowest_score']:.4f})"
            )
    print(
        f"{summary['abnormal']} of {summary['images']} images abnormal at threshold "
        f"{summary['threshold']:.4f} (lets through "
        f"{100 * (1 - summary['threshold_fpr_target']):.3g}% "
        f"of the normal training images); scores in {summary['csv']}"
    )
    if volumes:
        share = 100 * summary["threshold_fpr_target"]
        print(
            f"per volume in {summary['volumes_csv']}: the slices called abnormal (about "
            f"{share:.3g}% of a normal volume's are expected to be) and the most abnormal one"
        )


def _print_metrics(metrics: dict, out: Path, wall: float | None = None) -> None:
    """The metrics' lines (the validation AUROC and the baselines' where recorded) and where
    the rest is; ``wall``: the seconds this command took (default: the run's recorded total)."""
    wall = metrics["wall_s"].get("total_s") if wall is None else wall
    print(
        f"AUROC {metrics['auroc']:.4f}  AUPRC {metrics['auprc']:.4f}  "
        f"FPR@95%TPR {metrics['fpr_at_95_tpr']:.4f}" + (f"  ({wall:.0f} s)" if wall else "")
    )
    if "val_auroc" in metrics:
        print(f"validation AUROC {metrics['val_auroc']:.4f}")
    if "baselines" in metrics:
        from .baselines import BASELINES

        found = [f"{BASELINES.get(k, k)} {b['test']:.3f}" for k, b in metrics["baselines"].items()]
        print(f"baselines (test AUROC): {', '.join(found)}")
    held = "metrics, scores" if "external" in metrics else "metrics, scores, models"
    print(f"{held}, ROC curve, score histograms and anomaly maps in {out}")
    print(f"all on one page: {out / 'report.html'}")


# What each command that works on a run folder does, once the folder is held.
COMMANDS = {
    "run": _run,
    "train-diffusion": _train_diffusion,
    "train": _train,
    "evaluate": _evaluate,
    "dissolve": _dissolve,
    "maps": _maps,
}

if __name__ == "__main__":
    raise SystemExit(main())
