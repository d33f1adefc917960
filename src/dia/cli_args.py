"""The flags of the ``dia`` command line: one per setting of the config dataclasses, and
each command's own; the settings and values they give. Parsing imports no torch (the
registries the choices come from import it only when used)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .cli_help import HELP, METAVARS
from .config import (
    DataConfig,
    DetectorConfig,
    DiffusionConfig,
    RunConfig,
    ScoreConfig,
    with_settings,
)
from .config_tree import flat_paths, get_path, leaf_field
from .presets import PRESETS, apply_preset
from .scores import SCORES
from .shifts import SHIFTS

# Flag prefix of each config section; detector and data settings need none. A setting's flag
# is its section's prefix and its flat name (dia.config_tree): --t-min, --dicom-window.
SECTIONS = {
    "data": ("", DataConfig),
    "detector": ("", DetectorConfig),
    "diffusion": ("diffusion-", DiffusionConfig),
    "score": ("score-", ScoreConfig),
}
FLAG_NAMES = {("data", "spec"): "data"}
# Settings that name a registered class: the registry itself, so that a class registered after
# the parser is built is a choice too.
CHOICES = {("detector", "shift"): SHIFTS, ("score", "kind"): SCORES}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _parse_type(annotation: str):
    """The flag's parser of a setting annotated ``annotation``; one that may be None (no
    limit, no value) takes ``none`` for it."""
    base = annotation.replace(" | None", "")
    if base.startswith("tuple"):
        kind = float if base.startswith("tuple[float") else int
        parse = lambda s: tuple(kind(v) for v in s.split(","))  # noqa: E731
    else:
        parse = {"int": int, "float": float, "str": str, "bool": _parse_bool}[base]
    return parse if base == annotation else _or_none(parse)


def _or_none(parse):
    def parse_or_none(text: str):
        return None if text.strip().lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse's error names it
    return parse_or_none


def flag(section: str, name: str) -> str:
    """The command-line flag of setting ``name`` of config section ``section``."""
    return "--" + FLAG_NAMES.get((section, name), SECTIONS[section][0] + name.replace("_", "-"))


# The dissolvers dia registers itself (dia.dissolve.DISSOLVERS), named without importing it:
# it needs torch, and parsing stays instant without.
BUILT_IN_DISSOLVERS = ("diffusion", "gaussian", "median", "none")


def dissolver_names() -> tuple[str, ...]:
    """The registered dissolvers' names: those of the registry where a program has loaded it
    (and perhaps registered its own), else dia's own."""
    registry = sys.modules.get("dia.dissolve")
    return tuple(registry.DISSOLVERS) if registry is not None else BUILT_IN_DISSOLVERS


def _help(section: str, name: str, default) -> str:
    """A setting flag's help; the dissolvers' names as registered when the parser is made."""
    if (section, name) == ("detector", "dissolve"):
        return f"dissolving operator: {', '.join(dissolver_names())} (none: plain CSI)"
    return HELP.get((section, name), f"default {default!r} (quick preset)")


# The commands whose settings come from the command line: from the preset or the file --config
# names, with the flags given on top. evaluate and maps take the saved detector's instead.
TAKES_SETTINGS = ("run", "train-diffusion", "train", "dissolve")


def _add_setting(group, section: str, name: str, text: str) -> None:
    """The flag of the setting of flat name ``name`` in config section ``section``."""
    field = leaf_field(SECTIONS[section][1], flat_paths(SECTIONS[section][1])[name])
    group.add_argument(
        flag(section, name),
        dest=f"{section}.{name}",
        default=argparse.SUPPRESS,  # not given: not in the namespace (none gives None)
        type=_parse_type(field.type),
        choices=CHOICES.get((section, name)),
        metavar=METAVARS.get((section, name), field.type.split(" ")[0].upper()[:5]),
        help=text,
    )


def _add_settings(parser: argparse.ArgumentParser) -> None:
    quick = apply_preset(RunConfig(), "quick")  # the defaults the flags' help names
    groups: dict = {}
    for section, (_, cls) in SECTIONS.items():
        for name, path in flat_paths(cls).items():
            title = f"{section} settings" + (f": {path[0]}" if len(path) > 1 else "")
            if title not in groups:  # one group of flags a concern, as the config groups them
                groups[title] = parser.add_argument_group(title)
            default = get_path(getattr(quick, section), path)
            _add_setting(groups[title], section, name, _help(section, name, default))
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="a run's config.json (or its run folder): start from its settings instead of "
        "a preset's, to repeat that run; flags given go on top",
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
        type=_or_none(float),
        default=False,
        metavar="SECONDS",
        help="wall-clock seconds from start to a fitted detector; detector training ends in "
        "time for it (default: the preset's; none: no budget)",
    )
    _add_runtime(parser, None, " (default auto, or --config's)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


# The settings that may go with --data where a saved detector is evaluated or mapped: how the
# test set it names (an external one) is read.
EXTERNAL_SETTINGS = ("data.spec", "data.normal_class", "data.cache_dir", "data.dicom_window")
TEST_SET_HELP = {
    "spec": "score the test images of this data set (a data spec, as dia run's --data): an "
    "external test set, read at the detector's size and channels; needed for a detector saved "
    "by the library, which does not record its training data",
    "normal_class": "with --data: its label that is normal (a MedMNIST set, an .npz file or a "
    "CSV list; default 0)",
    "cache_dir": "with --data: where MedMNIST files are downloaded to (default the run's)",
    "dicom_window": "with --data: show its grayscale DICOM and NIfTI files through this window, "
    "in their units after rescaling (write it with '=': --dicom-window=-600,1500) instead of "
    "the one the detector was trained with (default; without one, each file's own)",
}


def _add_test_set(parser: argparse.ArgumentParser) -> None:
    """The options of a command that works with a saved detector and its settings (evaluate,
    maps): the test set ``--data`` names and how it is read, the device and the precision."""
    group = parser.add_argument_group("another data set's test images")
    for key in EXTERNAL_SETTINGS:
        name = key.split(".", 1)[1]
        _add_setting(group, "data", name, TEST_SET_HELP[name])
    _add_runtime(parser)


def _add_runtime(
    parser: argparse.ArgumentParser, default: str | None = "auto", note: str = ""
) -> None:
    parser.add_argument("--device", default=default, help="cpu, cuda, cuda:N or auto" + note)
    parser.add_argument(
        "--precision",
        default=default,
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 on CUDA and AMX CPUs, else fp32" + note,
    )


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The setting flags given on the command line, as ``{"section.field": value}``."""
    return {k: v for k, v in vars(args).items() if k.split(".", 1)[0] in SECTIONS and "." in k}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The settings of a command that takes them: the base (the file ``--config`` names, else
    the preset's) with every explicitly given flag on top; flags not given keep the base's
    values. For ``evaluate`` and ``maps``, which take the saved detector's settings, the quick
    preset's on ``--device`` and ``--precision``."""
    if args.command not in TAKES_SETTINGS:
        base = apply_preset(RunConfig(), "quick")
        return dataclasses.replace(base, device=args.device, precision=args.precision)
    if args.config is not None:
        if args.preset is not None:
            raise ValueError(
                "--preset and --config both give the settings to start from; pass one (the "
                "flags given go on top of either)"
            )
        from .pipeline import read_config  # torch: only once the arguments are parsed

        base = read_config(args.config)
    else:
        base = apply_preset(RunConfig(), args.preset or "quick")
    config = dataclasses.replace(
        with_settings(base, given_settings(args)),
        seed=base.seed if args.seed is None else args.seed,
        device=args.device or base.device,
        precision=args.precision or base.precision,
    )
    if args.budget is not False:  # given, a number or none
        if args.budget is not None and not args.budget > 0:
            raise ValueError(f"--budget {args.budget}; expected seconds above 0, or none")
        config = dataclasses.replace(config, budget_s=args.budget)
    return config  # checked as it was built


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
        if name in TAKES_SETTINGS:
            _add_settings(p)
        else:  # the saved detector's settings: none are flags
            _add_test_set(p)
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
    if name in ("run", "train", "train-diffusion"):
        whose, into = "the diffusion model's", "OUT/diffusion-checkpoint"
        if name != "train-diffusion":
            whose, into = f"{whose} and detector's", f"{into} and OUT/detector-checkpoint"
        p.add_argument(
            "--checkpoint-every",
            type=float,
            default=None,
            metavar="SECONDS",
            help=f"save {whose} training every SECONDS of it, and on Ctrl-C, into {into} "
            "for dia resume; 0: never (default 300)",
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
        "continue the interrupted training (the diffusion model's or the detector's) of a run "
        "folder from its checkpoint and finish what was started (dia run: evaluate too)"
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


def checkpoint_every(args: argparse.Namespace) -> float:
    """``--checkpoint-every``, or the default interval."""
    from .checkpoint import EVERY_S

    return EVERY_S if args.checkpoint_every is None else args.checkpoint_every


def timesteps_of(args: argparse.Namespace) -> list[int]:
    """``dia dissolve``'s ``--timesteps``, or the default ones."""
    from .reports import GRID_TIMESTEPS

    timesteps = list(GRID_TIMESTEPS)
    if args.timesteps is not None:
        timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]
    if not timesteps or min(timesteps) < 0:
        raise ValueError(f"--timesteps={args.timesteps!r}; expected non-negative integers")
    return timesteps


def external_test_set(args: argparse.Namespace, out: Path, run: bool) -> dict:
    """The test set ``--data`` names (its :class:`~dia.config.DataConfig` fields; ``{}``
    without ``--data``) for a command that works with the detector saved in ``out``, refusing
    the flags of how it is read where the command would ignore them.

    ``--data`` goes with ``dia evaluate`` of a run folder (``run``; an external test set), and
    with every command of a detector saved by the library, which does not record its training
    data."""
    given = given_settings(args)
    if "data.spec" in given and (args.command == "evaluate" or not run):
        return {k.split(".", 1)[1]: v for k, v in given.items()}
    if given:
        flags = ", ".join(flag(*key.split(".", 1)) for key in given)
        if not run:  # a detector saved by the library
            held, hint = "the test set --data names", ""
        else:
            held, hint = "its settings", ""
            if args.command == "evaluate":
                hint = (
                    "; --data DATA (with --normal-class, --cache-dir or --dicom-window) "
                    "evaluates the saved detector on another data set's test images"
                )
        raise ValueError(
            f"dia {args.command} works with the detector saved in {out} and {held}; "
            f"{flags} would be ignored{hint}"
        )
    return {}
