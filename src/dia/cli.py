"""The ``dia`` command line: ``run``, ``train-diffusion``, ``train``, ``resume``, ``evaluate``,
``score``, ``dissolve``, ``maps``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from .config import (
    DataConfig,
    DetectorConfig,
    DiffusionConfig,
    RunConfig,
    ScoreConfig,
    check_settings,
)
from .presets import PRESETS, apply_preset

# Flag prefix of each config section; detector and data settings need none.
SECTIONS = {
    "data": ("", DataConfig),
    "detector": ("", DetectorConfig),
    "diffusion": ("diffusion-", DiffusionConfig),
    "score": ("score-", ScoreConfig),
}
FLAG_NAMES = {("data", "spec"): "data"}
METAVARS = {("data", "dicom_window"): "CENTRE,WIDTH"}
DICOM_WINDOW_HELP = (
    "show every grayscale DICOM or NIfTI file through this window, in its units after "
    "rescaling (CT: Hounsfield units, e.g. --dicom-window=-600,1500 for lung; write it with "
    "'=', or a negative centre reads as an option) instead of the file's own (default: a "
    "DICOM file's own window, a NIfTI volume's 0.5-99.5 percentile range)"
)
HELP = {
    ("data", "spec"): "data spec: 'synthetic' (default), a MedMNIST .npz file, "
    "'medmnist:NAME', a folder of images or a CSV list of image files (path,label[,split])",
    (
        "detector",
        "dissolve",
    ): "dissolving operator: diffusion, gaussian, median or none (CSI)",
    ("detector", "shift"): "shifting transformation: rotation or cutperm",
    ("detector", "input_norm"): "network input: fixed ([0, 1] to [-1, 1]) or image "
    "(each image standardised on its own)",
    ("detector", "mask"): "contrastive mask: shifted_removed or none",
    ("detector", "contrastive_per"): "the contrastive loss averaged per anchor (the two views "
    "of each image) or per view (the dissolved ones too, as the authors' DIA)",
    ("detector", "warmup_peak"): "the learning rate at the end of the warm-up, in multiples of "
    "--lr (1: from 0 to it; CSI's 10: from it to 10 times it)",
    ("data", "val_fraction"): "hold out this fraction of the normal training files and of the "
    "abnormal ones (a folder's train/1_abnormal, a CSV list's abnormal train rows) as a "
    "validation split, for data without one; whole files, so a volume's slices stay "
    "together (default 0: none)",
    ("data", "dicom_window"): DICOM_WINDOW_HELP,
    ("data", "dicom_studies"): "keep the DICOM files of one study (StudyInstanceUID) together "
    "in splits and thresholds (default true); false splits them file by file, for data whose "
    "anonymiser gave every file one study",
}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _parse_type(annotation: str):
    base = annotation.replace(" | None", "")
    if base.startswith("tuple"):
        kind = float if base.startswith("tuple[float") else int
        return lambda s: tuple(kind(v) for v in s.split(","))
    return {"int": int, "float": float, "str": str, "bool": _parse_bool}[base]


def _flag(section: str, name: str) -> str:
    """The command-line flag of setting ``name`` of config section ``section``."""
    return "--" + FLAG_NAMES.get((section, name), SECTIONS[section][0] + name.replace("_", "-"))


def _add_settings(parser: argparse.ArgumentParser) -> None:
    quick = apply_preset(RunConfig(), "quick")  # the defaults the flags' help names
    for section, (_, cls) in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        for field in dataclasses.fields(cls):
            default = getattr(getattr(quick, section), field.name)
            group.add_argument(
                _flag(section, field.name),
                dest=f"{section}.{field.name}",
                default=None,
                type=_parse_type(field.type),
                metavar=METAVARS.get((section, field.name), field.type.split(" ")[0].upper()[:5]),
                help=HELP.get((section, field.name), f"default {default!r} (quick preset)"),
            )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="named settings; explicit flags override them (default quick)",
    )
    parser.add_argument("--seed", type=int, default=None, help="default 0")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall-clock seconds from start to a fitted detector; detector training ends in "
        "time for it (default: the preset's)",
    )
    _add_runtime(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 on CUDA and AMX CPUs, else fp32",
    )


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The setting flags given on the command line, as ``{"section.field": value}``."""
    return {
        k: v
        for k, v in vars(args).items()
        if v is not None and k.split(".", 1)[0] in SECTIONS and "." in k
    }


def with_settings(config: RunConfig, given: dict[str, object]) -> RunConfig:
    """``config`` with the settings ``given`` (``{"section.field": value}``) on top."""
    for section in SECTIONS:
        values = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith(section + ".")}
        if values:
            sub = dataclasses.replace(getattr(config, section), **values)
            config = dataclasses.replace(config, **{section: sub})
    return config


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset's config with every explicitly given flag applied on top."""
    config = with_settings(apply_preset(RunConfig(), args.preset or "quick"), given_settings(args))
    config = dataclasses.replace(
        config, seed=args.seed or 0, device=args.device, precision=args.precision
    )
    if args.budget is not None:
        if not args.budget > 0:
            raise ValueError(f"--budget {args.budget}; expected a number of seconds above 0")
        config = dataclasses.replace(config, budget_s=args.budget)
    check_settings(config.detector, config.score)
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dia", description="Fine-grained anomaly detection in medical images (DIA)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "run": "train the diffusion model (when needed) and the detector, then evaluate",
        "train-diffusion": "train only the diffusion model into OUT/diffusion",
        "train": "train the detector into OUT/detector (uses OUT/diffusion when present)",
        "evaluate": "score the test split with OUT/detector; write OUT/metrics.json, "
        "OUT/scores.csv, the ROC curve OUT/roc.png, OUT/score_histogram.png, the training "
        "losses OUT/training_curve.png, the anomaly "
        "maps of the lowest-scoring test images OUT/anomaly_maps.png, and OUT/report.html, "
        "one page with all of them",
        "dissolve": "write a PNG grid of images and their dissolved versions",
        "maps": "write a PNG of anomaly maps: where OUT/detector finds test images abnormal",
    }
    new_run = "run folder (default runs/<data>-<dissolve>-seed<seed>)"
    saved = "run folder (or its detector folder); a folder holding a detector saved by the "
    saved += "library, with --data"
    out_help = {
        "run": new_run,
        "dissolve": new_run,
        "train-diffusion": "run folder",
        "train": "run folder",
        "evaluate": saved,
        "maps": saved,
    }
    for name, text in commands.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            required=name not in ("run", "dissolve"),
            help=out_help[name],
        )
        _add_settings(p)
        _add_own_options(p, name)
    _add_resume_command(sub)
    _add_score_command(sub)
    parser.commands = sub.choices  # each command's own parser, for its error messages
    return parser


COUNT_HELP = {
    "dissolve": "how many test images, the first ones (default 8)",
    "maps": "how many test images: the lowest-scoring, i.e. the most abnormal by the "
    "detector's score; labels are not looked at (default 8)",
}


def _add_own_options(p: argparse.ArgumentParser, name: str) -> None:
    """The options command ``name`` has besides --out and the settings."""
    if name in COUNT_HELP:
        p.add_argument("--count", type=int, default=8, help=COUNT_HELP[name])
    if name in ("run", "train"):
        p.add_argument(
            "--checkpoint-every",
            type=float,
            default=None,
            metavar="SECONDS",
            help="save the detector's training every SECONDS of training, and on Ctrl-C, "
            "into OUT/detector-checkpoint for dia resume; 0: never (default 300)",
        )
    if name == "dissolve":
        p.add_argument(
            "--timesteps",
            default=None,
            help="comma-separated timesteps (default 0,30,50,100,200,400)",
        )
        p.add_argument(
            "--grid",
            type=Path,
            default=None,
            help="PNG file to write (default OUT/dissolve_grid.png)",
        )
    if name == "maps":
        p.add_argument(
            "--patch",
            type=int,
            default=None,
            help="side in pixels of the dissolved squares (default an eighth of the image)",
        )
        p.add_argument(
            "--stride",
            type=int,
            default=None,
            help="pixels between squares (default half the patch)",
        )
        p.add_argument(
            "--image",
            type=Path,
            default=None,
            help="PNG file to write (default OUT/anomaly_maps.png)",
        )


def _add_score_command(sub) -> None:
    text = (
        "score new image files (or every image under folders) with the detector of a run "
        "folder and call each normal or abnormal at the threshold chosen on normal data"
    )
    p = sub.add_parser("score", help=text, description=text)
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="image files, folders of images or CSV lists of image files (a path column); "
        "FILE#K or FILE#FIRST-LAST scores only those slices of a volume",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run folder holding detector/ (or a detector folder itself)",
    )
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="CSV file to write (default OUT/scored.csv; either way -2, -3, ... rather than "
        "overwrite a file)",
    )
    p.add_argument(
        "--fpr",
        type=float,
        default=None,
        help="the share of normal scans to call abnormal: set the threshold so that this "
        "fraction of the normal training images would be (default: the detector's, 0.05)",
    )
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="score the files that can be read and list the others, with why, in a "
        "-unreadable.csv file beside the CSV (default: the first one is an error)",
    )
    _add_runtime(p)


def _add_resume_command(sub) -> None:
    text = (
        "continue the interrupted detector training of a run folder from its checkpoint and "
        "finish what was started (dia run: evaluate too)"
    )
    p = sub.add_parser("resume", help=text, description=text)
    p.add_argument("--out", type=Path, required=True, help="the interrupted run folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default the run's)")
    p.add_argument(
        "--precision",
        default=None,
        choices=("auto", "fp32", "bf16"),
        help="default the run's; another one changes the numbers a little",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


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
    """The device whose backend a launcher's processes join with: ``--device``, or for ``dia
    resume`` without it the run's own (a run made with ``--device cpu`` keeps gloo on a GPU
    machine)."""
    if args.device is not None:
        return args.device
    from . import pipeline

    try:
        return pipeline.load_config(args.out).device
    except (ValueError, FileNotFoundError):
        return "auto"  # dia resume itself then says what is wrong with the folder


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
                f"interrupted at step {stop.step} of the detector's training; its checkpoint "
                f"is in {stop.folder}: dia resume --out {run_dir} continues it",
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
        config = _dissolve_config(args, config, args.out)
    out = args.out
    if out is None:  # dia run and dia dissolve: rank 0's choice for all
        out = distributed.broadcast_object(
            pipeline.default_run_dir(config) if main_process else None
        )
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
    metrics = pipeline.run(config, out, not args.no_progress, _checkpoint_every(args))
    if metrics is not None:
        _print_metrics(metrics, out)


def _train_diffusion(args, config: RunConfig, out: Path) -> None:
    from . import pipeline

    # Its config.json would replace the one of whatever the folder holds.
    error = pipeline.in_the_way(out, config) or pipeline.model_in_the_way(
        out, pipeline.DIFFUSION_DIR
    )
    if error is not None:
        raise FileExistsError(error)
    pipeline.save_config(config, out)
    data = pipeline.load_run_data(config)
    pipeline.train_diffusion_step(config, data, out, not args.no_progress)
    print(f"diffusion model saved to {out / pipeline.DIFFUSION_DIR}")


def _train(args, config: RunConfig, out: Path) -> None:
    from . import distributed, pipeline

    start, progress = time.perf_counter(), not args.no_progress
    deadline = None if config.budget_s is None else start + config.budget_s
    main_process = distributed.is_main()
    error = distributed.broadcast_object(pipeline.in_the_way(out, config) if main_process else None)
    if error is not None:
        raise FileExistsError(error)
    if main_process:
        pipeline.save_config(config, out)
    data = pipeline.load_run_data(config)
    diffusion = None
    if config.detector.dissolve == "diffusion":
        diffusion = pipeline.load_diffusion(out, config.device)
        if diffusion is None:
            diffusion = pipeline.train_diffusion_step(config, data, out, progress)
    saving = pipeline.checkpointing(out, _checkpoint_every(args), command="train")
    pipeline.train_detector_step(config, data, out, diffusion, progress, deadline, saving)
    if main_process:
        print(f"detector saved to {out / pipeline.DETECTOR_DIR}")


def _checkpoint_every(args: argparse.Namespace) -> float:
    from .checkpoint import EVERY_S

    return EVERY_S if args.checkpoint_every is None else args.checkpoint_every


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


def _evaluate(args, config: RunConfig, out: Path) -> None:
    """Score the test split with the run's detector, or with ``--data`` another data set's
    test images (an external test set) into ``out/external/NAME``."""
    from . import pipeline

    config, detector, test_set = _saved_detector(args, config, out)
    run = pipeline.is_run_folder(out)
    t0 = time.perf_counter()
    if run and not test_set:
        metrics = pipeline.evaluate_saved(config, detector, out)
        where = out
    else:
        trained_on = config.data if run else None
        metrics, where = pipeline.evaluate_external(config, detector, out, test_set, trained_on)
    _print_metrics(metrics, where, time.perf_counter() - t0)


# What --data may come with in dia evaluate: how the external test set is read.
EXTERNAL_SETTINGS = ("data.spec", "data.normal_class", "data.cache_dir", "data.dicom_window")


def _saved_detector(args, config: RunConfig, out: Path):
    """The detector saved in ``out``, its settings and the test set ``--data`` names (its
    :class:`~dia.config.DataConfig` fields, ``{}`` without ``--data``), refusing setting flags
    the command would ignore.

    A run folder gives the run's own config, on this command's device; ``--data`` goes with
    ``dia evaluate`` only (an external test set). A detector saved by the library does not
    record its training data: ``--data`` is required, and the config is the flags' with the
    detector's own settings."""
    from . import pipeline

    detector = pipeline.load_detector(out, args.device, args.precision)
    given = given_settings(args)
    run = pipeline.is_run_folder(out)
    test_set = {}
    if "data.spec" in given and (args.command == "evaluate" or not run):
        test_set = {k.split(".", 1)[1]: given.pop(k) for k in EXTERNAL_SETTINGS if k in given}
    _refuse_ignored(args, given, out, test_set_only=not run)
    if run:
        config = dataclasses.replace(pipeline.load_config(out), device=args.device)
        return config, detector, test_set
    if not test_set:
        raise ValueError(
            f"{out} holds a detector saved without the data it was trained on; pass --data "
            "with the images to score"
        )
    config = dataclasses.replace(
        config, detector=detector.detector_config, score=detector.score_config, seed=detector.seed
    )
    return config, detector, test_set


def _refuse_ignored(args, given: dict[str, object], out: Path, test_set_only: bool) -> None:
    """Refuse setting flags that a command would ignore: every one for a run folder (its saved
    settings rule), every one but how ``--data``'s test set is read where ``test_set_only``
    (a detector saved by the library; ``given`` holds the others)."""
    flags = [_flag(*key.split(".", 1)) for key in given]
    flags += [f"--{n}" for n in ("preset", "seed", "budget") if getattr(args, n) is not None]
    if not flags:
        return
    if test_set_only:
        held, hint = "the test set --data names", ""
    else:
        held, hint = "its settings", ""
        if args.command == "evaluate":
            hint = (
                "; --data DATA (with --normal-class, --cache-dir or --dicom-window) evaluates "
                "the saved detector on another data set's test images"
            )
    raise ValueError(
        f"dia {args.command} works with the detector saved in {out} and {held}; "
        f"{', '.join(flags)} would be ignored{hint}"
    )


def _maps(args, config: RunConfig, out: Path) -> None:
    from . import pipeline
    from .maps import check_patch

    if args.count < 1:
        raise ValueError(f"--count={args.count}; expected at least 1")
    config, detector, test_set = _saved_detector(args, config, out)
    size = detector.image_size_
    check_patch(size, size, args.patch, args.stride)  # before scoring the whole test split
    scores = None
    if test_set:  # a library's detector: the test images dia evaluate scores
        data = pipeline.load_test_set(pipeline.external_data_config(detector, test_set))
    else:
        data = pipeline.load_run_data(config)
        scores = pipeline.saved_test_scores(out, data, detector)
    if scores is None:
        print(f"scoring {len(data.test)} test images to pick the lowest-scoring", file=sys.stderr)
        scores = detector.score_samples(data.test)
    else:
        print(f"the lowest-scoring test images by {out / 'scores.csv'}", file=sys.stderr)
    path = args.image or out / "anomaly_maps.png"
    shown = pipeline.write_anomaly_maps(
        detector, data.test, scores, path, args.count, args.patch, args.stride
    )
    print(f"anomaly maps of the {shown} lowest-scoring test images saved to {path}")
    pipeline.refresh_report(out)


def _dissolve_config(args, config: RunConfig, out: Path | None) -> RunConfig:
    """What ``dia dissolve`` dissolves with: a run folder's own settings with the flags given
    on top (the flags' settings alone without a run folder)."""
    from . import pipeline

    if out is not None and pipeline.holds_detector(out):
        raise ValueError(
            f"{out} holds a detector saved by the library, not a run; dia dissolve writes its "
            "grid (and a diffusion model it trains) into a run folder or a new one"
        )
    if out is not None and pipeline.is_run_folder(out):
        if args.preset is not None:
            raise ValueError(
                f"dia dissolve uses the settings saved in {out}; --preset would be ignored "
                "(give single settings such as --dissolve median instead)"
            )
        saved = pipeline.load_config(out)
        saved = dataclasses.replace(
            saved, device=args.device, seed=saved.seed if args.seed is None else args.seed
        )
        given = given_settings(args)
        config = with_settings(saved, given)
        if config.detector.dissolve == "none" and "detector.dissolve" not in given:
            raise ValueError(
                f"the run in {out} was trained without dissolving (--dissolve none); pass "
                "--dissolve diffusion, gaussian or median to see one"
            )
    if config.detector.dissolve == "none":
        raise ValueError(
            "--dissolve none dissolves nothing (the cpu preset trains without dissolving); "
            "pass --dissolve diffusion, gaussian or median"
        )
    return config


def _dissolve(args, config: RunConfig, out: Path) -> None:
    from . import pipeline
    from .device import resolve_device
    from .reports import GRID_TIMESTEPS

    progress = not args.no_progress

    timesteps = list(GRID_TIMESTEPS)
    if args.timesteps is not None:
        timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]
    if not timesteps or min(timesteps) < 0:
        raise ValueError(f"--timesteps={args.timesteps!r}; expected non-negative integers")
    data = pipeline.load_run_data(config)
    diffusion = None
    if config.detector.dissolve == "diffusion":
        # a run folder's config.json says how its diffusion model is (or would be) made
        recorded = (out / "config.json").is_file()
        differ = recorded and pipeline.diffusion_settings_differ(out, config, ("diffusion",))
        if differ:
            raise ValueError(
                f"{out} records other diffusion settings ({differ}); dia dissolve uses the "
                "run's diffusion model as it is: leave those flags out, or choose another --out"
            )
        diffusion = pipeline.load_diffusion(out, config.device)
        if diffusion is None:
            print(f"no diffusion model in {out}; training one", file=sys.stderr)
            diffusion = pipeline.train_diffusion_step(config, data, out, progress)
            if not recorded:  # how it was made, as dia train-diffusion records it
                pipeline.save_config(config, out)
    images = data.test[: args.count]
    path = args.grid or out / "dissolve_grid.png"
    pipeline.write_dissolve_grid(
        config.detector.dissolve, diffusion, images, path, resolve_device(config.device), timesteps
    )
    print(f"dissolving grid ({len(images)} images x {len(timesteps)} timesteps) saved to {path}")
    pipeline.refresh_report(out)


def _score(args: argparse.Namespace) -> None:
    from . import pipeline

    detector = pipeline.load_detector(args.out, args.device, args.precision)
    if args.csv is not None and args.csv.is_dir():
        raise ValueError(f"--csv {args.csv} is a folder; give the CSV file's name")
    csv_path = args.csv or args.out / "scored.csv"
    summary = pipeline.score_files(detector, args.paths, csv_path, args.fpr, args.skip_unreadable)
    csv_path = summary["csv"]
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
        f"of the normal training images); scores in {csv_path}"
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
