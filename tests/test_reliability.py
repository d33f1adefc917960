"""Bad input, tampered files, concurrent processes and interrupted saves: every case ends in
one line on stderr with exit code 2 (no traceback) and leaves the folders as they were, or
whole. The corpus is parametrised; the counts are in ``test_the_corpus_is_large_enough``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dia.cli import main

TINY = [
    "--synthetic-train", "32", "--synthetic-val", "8", "--synthetic-test", "12",
    "--image-size", "16", "--epochs", "2", "--batch-size", "8", "--width", "4",
    "--dissolve", "none", "--score-samples", "1", "--no-progress", "--device", "cpu",
]  # fmt: skip
NAN, INF = float("nan"), float("inf")
MISSING = object()  # a key removed rather than set


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run (plain CSI), and a PNG to score with it."""
    from PIL import Image

    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    image = out.parent / "scan.png"
    Image.fromarray(np.full((16, 16), 90, dtype=np.uint8)).save(image)
    return out, image


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A dia train stopped by Ctrl-C after its first step: a folder with a checkpoint."""
    import signal

    from dia.training import DetectorTrainer

    original = DetectorTrainer._step

    def ctrl_c(self, *args):
        signal.raise_signal(signal.SIGINT)
        return original(self, *args)

    out = tmp_path_factory.mktemp("reliability") / "stopped"
    DetectorTrainer._step = ctrl_c
    try:
        assert main(["train", "--out", str(out), *TINY]) == 130
    finally:
        DetectorTrainer._step = original
    assert (out / "detector-checkpoint" / "config.json").is_file()
    return out


def one_clean_error(capsys, code: int, *said: str) -> str:
    """The command's exit code was 2 and it wrote one line to stderr, naming ``said``."""
    err = capsys.readouterr().err
    said_first = (" -> ", ": warning: ")  # where the command works, warnings: not errors
    lines = [
        line for line in err.splitlines() if line.strip() and not any(t in line for t in said_first)
    ]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    for text in said:
        assert text in lines[0], lines[0]
    return lines[0]


def tampered(path: Path, key: str, value) -> None:
    """``path``'s JSON with ``key`` (``a.b`` for a nested one) set to ``value`` or removed."""
    data = json.loads(path.read_text())
    *parents, last = key.split(".")
    target = data
    for part in parents:
        target = target[part]
    if value is MISSING:
        del target[last]
    else:
        target[last] = value
    path.write_text(json.dumps(data))  # NaN and Infinity as Python writes them


# ---------------------------------------------------------------- a saved detector's config

DETECTOR_CASES = [
    ("threshold", NAN), ("threshold", INF), ("threshold", -INF), ("threshold", "0.5"),
    ("threshold", None), ("threshold", MISSING), ("threshold", [1.0]),
    ("fpr", 0), ("fpr", 1), ("fpr", -0.1), ("fpr", "0.05"), ("fpr", NAN), ("fpr", MISSING),
    ("channels", 2), ("channels", "1"), ("channels", 1.0), ("channels", True),
    ("channels", MISSING),
    ("image_size", 100000), ("image_size", 0), ("image_size", 1), ("image_size", "16"),
    ("image_size", 16.5), ("image_size", MISSING),
    ("version", "4"), ("version", -1), ("version", 99), ("version", 2.5),
    ("seed", -1), ("seed", "0"), ("seed", 1.5),
    ("dicom_window", "a"), ("dicom_window", [1]), ("dicom_window", [1, 0]),
    ("dicom_window", [1, "x"]), ("dicom_window", [NAN, 1]),
    ("format", "other"), ("format", MISSING),
    ("detector", "x"), ("detector", MISSING), ("detector.network.width", "16"),
    ("detector.network.width", 0), ("detector.optim.lr", NAN), ("detector.unknown", 1),
    ("detector.network.stem_stride", 3), ("detector.augment.jitter_prob", 2.0),
    ("detector.optim.ema", True), ("detector.network", "x"), ("detector.network.unknown", 1),
    ("detector.width", 8),  # given twice: flat, as before the groups, and in its group
    ("score", "x"), ("score", MISSING), ("score.samples", -1), ("score.shifts", 5),
    ("score.features", 3), ("score.cosine", "yes"), ("score.crop_scale", INF),
    ("score.neighbours", 0),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), DETECTOR_CASES, ids=lambda v: repr(v)[:20])
def test_a_tampered_detector_config_is_a_one_line_error(run, tmp_path, capsys, key, value):
    out, image = run
    copy = tmp_path / "detector"
    shutil.copytree(out / "detector", copy)
    tampered(copy / "config.json", key, value)
    code = main(["score", str(image), "--out", str(copy), "--device", "cpu"])
    line = one_clean_error(capsys, code, "dia score: error:")
    assert "config.json" in line or "does not hold a dia detector" in line or "newer" in line
    assert not list(copy.glob("scored*.csv"))  # nothing written
    with pytest.raises(ValueError):  # the library refuses it too
        from dia.detector import DIADetector

        DIADetector.from_pretrained(copy, device="cpu")


def test_a_nan_threshold_is_never_used_to_call_scans_normal(run, tmp_path, capsys):
    out, image = run
    copy = tmp_path / "detector"
    shutil.copytree(out / "detector", copy)
    tampered(copy / "config.json", "threshold", NAN)
    code = main(["score", str(image), "--out", str(copy), "--device", "cpu"])
    one_clean_error(capsys, code, "threshold=nan", "expected a finite number")


# ---------------------------------------------------------------- a run's config

RUN_CASES = [
    ("data", "x"), ("seed", "1"), ("seed", 1.5), ("budget_s", NAN), ("budget_s", "420"),
    ("data", MISSING), ("detector.network.width", "16"), ("detector.optim.batch_size", 0),
    ("detector.width", 8), ("score.shifts", 9), ("score.samples", -2),
    ("data.dicom.window", "lung"), ("data.dicom", [1]),
    ("data.image_size", "16"), ("diffusion.block_out_channels", [8, "x"]), ("device", 3),
    ("preset", None), ("unknown", 1),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), RUN_CASES, ids=lambda v: repr(v)[:20])
def test_a_tampered_run_config_is_a_one_line_error(run, tmp_path, capsys, key, value):
    out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "metrics.json").unlink()  # evaluate must read the config to rescore
    tampered(copy / "config.json", key, value)
    before = sorted(p.name for p in copy.iterdir())
    code = main(["evaluate", "--out", str(copy), "--device", "cpu"])
    one_clean_error(capsys, code, "dia evaluate: error:", "config.json")
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing written


# ---------------------------------------------------------------- a checkpoint's state

CHECKPOINT_CASES = [
    ("history", MISSING), ("history", "x"), ("history.loss", ["a"]), ("step", -1),
    ("step", "4"), ("step", MISSING), ("command", "../../etc"), ("train_s", NAN),
    ("train_s", -1), ("every_s", -5), ("next_index", -1), ("world_size", 0),
    ("optimizer_groups", []), ("format", "other"), ("format_version", 99), ("images", 0),
    ("max_seconds", INF), ("timings", {"data_s": "slow"}),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), CHECKPOINT_CASES, ids=lambda v: repr(v)[:20])
def test_a_tampered_checkpoint_is_a_one_line_error(interrupted, tmp_path, capsys, key, value):
    copy = tmp_path / "stopped"
    shutil.copytree(interrupted, copy)
    state = copy / "detector-checkpoint" / "config.json"
    tampered(state, key, value)
    saved = state.read_bytes()
    code = main(["resume", "--out", str(copy), "--no-progress"])
    one_clean_error(capsys, code, "dia resume: error:")
    assert state.read_bytes() == saved and not (copy / "detector").exists()


@pytest.mark.parametrize("text", ["", "{", "[]", "null", "\xff"])
def test_an_unreadable_checkpoint_is_a_one_line_error(interrupted, tmp_path, capsys, text):
    copy = tmp_path / "stopped"
    shutil.copytree(interrupted, copy)
    (copy / "detector-checkpoint" / "config.json").write_bytes(text.encode("latin-1"))
    code = main(["resume", "--out", str(copy), "--no-progress"])
    one_clean_error(capsys, code, "dia resume: error:", "config.json")


# ---------------------------------------------------------------- npz files

NPZ_CASES = {
    "no val keys": ({"val_images", "val_labels"}, None),
    "val images alone": ({"val_labels"}, "but not ['val_labels']"),
    "val labels alone": ({"val_images"}, "but not ['val_images']"),
    "no train images": ({"train_images"}, "lacks the keys ['train_images']"),
    "no test labels": ({"test_labels"}, "lacks the keys ['test_labels']"),
}


def _npz(path: Path, drop: set[str]) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 6), ("test", 10)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3 == 0).astype(np.int64)
    np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_npz_files_with_and_without_a_validation_split(tmp_path, capsys, case):
    drop, said = NPZ_CASES[case]
    data = _npz(tmp_path / "own.npz", drop)
    out = tmp_path / "run"
    args = ["run", "--data", str(data), "--out", str(out), *TINY]
    code = main(args)
    if said is None:  # a valid file: it trains and evaluates, with no validation AUROC
        assert code == 0, capsys.readouterr().err
        metrics = json.loads((out / "metrics.json").read_text())
        assert "val_auroc" not in metrics and 0 <= metrics["auroc"] <= 1
    else:
        one_clean_error(capsys, code, "own.npz", said)
        assert not out.exists()


# ---------------------------------------------------------------- one process a folder

HOLD = """
import sys, time
from dia.io import hold_folder
with hold_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held_elsewhere(tmp_path):
    """Hold a folder from another process, as a running dia would."""

    def hold(folder: Path):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    procs: list[subprocess.Popen] = []
    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "command", ["run", "train", "train-diffusion", "evaluate", "resume", "dissolve", "maps"]
)
def test_a_folder_in_use_by_another_process_is_refused(run, tmp_path, capsys, held_elsewhere,
                                                        command):  # fmt: skip
    out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    held_elsewhere(copy)
    args = TINY if command in ("run", "train", "train-diffusion") else ["--device", "cpu"]
    args = ["--dissolve", "median"] if command == "dissolve" else args  # the run dissolved none
    code = main([command, "--out", str(copy), *args])
    one_clean_error(capsys, code, f"dia {command}: error:", "in use by another dia process")
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before


def test_two_runs_on_one_folder_one_runs_and_the_other_stops(tmp_path, capsys, held_elsewhere):
    out = tmp_path / "same"
    proc = held_elsewhere(out)  # the first run, still going
    code = main(["run", "--out", str(out), *TINY])
    one_clean_error(capsys, code, "in use by another dia process")
    proc.kill()
    proc.wait()  # the kernel lets go of a killed process's lock
    assert main(["run", "--out", str(out), *TINY]) == 0
    assert (out / "metrics.json").is_file()


def test_concurrent_scores_each_write_a_file_of_their_own(run, tmp_path):
    out, image = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    argv = [sys.executable, "-m", "dia.cli", "score", str(image), "--out", str(copy)]
    procs = [
        subprocess.Popen([*argv, "--device", "cpu"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    written = sorted(line.rsplit(" ", 1)[-1] for o in outputs for line in o.splitlines())
    written = [w for w in written if w.endswith(".csv")]
    files = sorted(str(p) for p in copy.glob("scored*.csv"))
    assert written == files and len(files) == 3  # scored.csv, scored-2.csv, scored-3.csv
    for file in files:
        assert len(Path(file).read_text().splitlines()) == 2  # the header and the one image


# ---------------------------------------------------------------- interrupted saves


def test_what_a_killed_save_left_is_removed_at_the_next_start(run, tmp_path, capsys):
    out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / ".detector-checkpoint.k1ll3d00.tmp").mkdir()
    (copy / ".detector-checkpoint.k1ll3d00.tmp" / "state.safetensors").write_bytes(b"x" * 100)
    (copy / ".scores.csv.abcd1234.tmp").write_text("index,path\n0,")
    assert main(["evaluate", "--out", str(copy), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "removed what interrupted saves left" in err and ".scores.csv.abcd1234.tmp" in err
    assert not list(copy.glob(".*.tmp"))


def test_file_names_that_are_not_utf8_round_trip_through_the_csv(run, tmp_path, capsys):
    from PIL import Image

    out, _ = run
    folder = tmp_path / "odd"
    folder.mkdir()
    name = os.fsdecode(b"ab\xffn.png")  # a name no UTF-8 text can spell
    Image.fromarray(np.full((16, 16), 70, dtype=np.uint8)).save(folder / name)
    Image.fromarray(np.full((16, 16), 90, dtype=np.uint8)).save(folder / "plain.png")
    csv_path = tmp_path / "odd.csv"
    assert main(["score", str(folder), "--out", str(out), "--csv", str(csv_path)]) == 0
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = f.read().splitlines()[1:]
    paths = sorted(row.split(",")[0] for row in rows)
    assert paths == sorted([str(folder / name), str(folder / "plain.png")])
    assert Path(paths[0]).exists() or Path(paths[1]).exists()
    assert all(Path(p).exists() for p in paths)  # the names lead back to the files


def test_the_corpus_is_large_enough():
    """At least 100 bad inputs and tampered files, each a case of its own."""
    module = sys.modules[__name__]
    counts = [
        len(item.pytestmark[0].args[1]) if hasattr(item, "pytestmark") else 1
        for name, item in vars(module).items()
        if name.startswith("test_") and name != "test_the_corpus_is_large_enough"
    ]
    assert sum(counts) >= 100, counts


# ---------------------------------------------------------------- a full disk

ENOSPC = OSError(28, "No space left on device")


def _full_disk_at(point: str, monkeypatch) -> None:
    """Make the write at ``point`` of a run fail as a full disk fails it."""
    from safetensors import SafetensorError

    import dia.saved
    from dia.pipeline import assess, pictures, runner

    def fail(*args, **kwargs):
        if point == "saving":
            raise SafetensorError("Error while serializing: IoError(Os { code: 28 })")
        raise ENOSPC

    target = {
        "before training": (runner, "save_config"),
        "saving": (dia.saved, "save_file"),
        "scoring": (assess, "write_csv"),
        "report": (pictures, "write_text"),
    }[point]
    monkeypatch.setattr(*target, fail)


@pytest.mark.parametrize("point", ["before training", "saving", "scoring", "report"])
def test_a_full_disk_never_leaves_a_run_that_looks_finished(tmp_path, capsys, monkeypatch,
                                                             point):  # fmt: skip
    out = tmp_path / "run"
    _full_disk_at(point, monkeypatch)
    code = main(["run", "--out", str(out), *TINY])
    line = one_clean_error(capsys, code, "dia run: error:")
    assert not (out / "metrics.json").exists()  # not finished, and it does not say it is
    assert not list(out.glob(".*.tmp")) if out.exists() else True
    monkeypatch.undo()  # space again
    if (out / "detector" / "model.safetensors").is_file():  # trained: evaluate finishes it
        assert f"dia evaluate --out {out}" in line
        assert main(["evaluate", "--out", str(out), "--device", "cpu"]) == 0
    else:  # nothing to keep: the run starts again
        assert main(["run", "--out", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "report.html").is_file() and (out / "scores.csv").is_file()
    assert 0 <= metrics["auroc"] <= 1


def test_a_crash_while_plotting_loses_neither_timings_nor_pictures(tmp_path, capsys, monkeypatch):
    from dia.pipeline import assess

    def crash(*args, **kwargs):
        raise RuntimeError("the plotting library crashed")

    out = tmp_path / "run"
    monkeypatch.setattr(assess, "write_anomaly_maps", crash)
    args = ["median" if a == "none" else a for a in TINY]  # a run that dissolves
    code = main(["run", "--out", str(out), *args])
    one_clean_error(capsys, code, "the plotting library crashed", f"dia evaluate --out {out}")
    assert not (out / "metrics.json").exists() and not (out / "dissolve_grid.png").exists()
    monkeypatch.undo()
    assert main(["evaluate", "--out", str(out), "--device", "cpu"]) == 0
    wall = json.loads((out / "metrics.json").read_text())["wall_s"]
    assert wall["detector_s"] > 0 and wall["data_s"] > 0 and wall["dissolve_grid_s"] > 0
    assert (out / "dissolve_grid.png").is_file() and not (out / "timings.json").exists()


# ---------------------------------------------------------------- paths that cannot be


@pytest.mark.parametrize(
    "command", ["run", "train", "train-diffusion", "evaluate", "score --csv", "score --out"]
)
def test_a_file_where_a_folder_should_be_is_named(run, tmp_path, capsys, command):
    out, image = run
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    place = blocker / "inside"
    argv = {
        "run": ["run", "--out", str(place), *TINY],
        "train": ["train", "--out", str(place), *TINY],
        "train-diffusion": ["train-diffusion", "--out", str(place), *TINY],
        "evaluate": ["evaluate", "--out", str(place), "--device", "cpu"],
        "score --csv": ["score", str(image), "--out", str(out), "--csv", str(place / "s.csv")],
        "score --out": ["score", str(image), "--out", str(place)],
    }[command]
    line = one_clean_error(capsys, main(argv), "a-file")
    assert blocker.read_text() == "not a folder"
    assert "is a file, not a folder" in line or "does not exist" in line or "no saved" in line


def test_images_too_small_to_hold_detail_are_refused(tmp_path, capsys):
    arrays = {}
    for split, n in (("train", 8), ("test", 4)):
        arrays[f"{split}_images"] = np.zeros((n, 1, 1), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(n) % 2
    np.savez(tmp_path / "dots.npz", **arrays)
    code = main(["run", "--data", str(tmp_path / "dots.npz"), "--out", str(tmp_path / "r"),
                 *[a for a in TINY if a not in ("--image-size", "16")]])  # fmt: skip
    one_clean_error(capsys, code, "1x1 px, too small to hold detail")


def test_a_test_image_whose_name_is_not_utf8_is_scored_and_listed(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "data"
    for split, cls, n in (
        ("train", "0_normal", 12),
        ("test", "0_normal", 3),
        ("test", "1_abnormal", 3),
    ):
        (folder / split / cls).mkdir(parents=True)
        for i in range(n):
            value = 60 + 5 * i + (100 if cls == "1_abnormal" else 0)
            Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(
                folder / split / cls / f"{i}.png"
            )
    odd = folder / "test" / "1_abnormal" / os.fsdecode(b"scan\xff.png")
    Image.fromarray(np.full((16, 16), 230, dtype=np.uint8)).save(odd)
    out = tmp_path / "run"
    assert main(["run", "--data", str(folder), "--out", str(out), *TINY]) == 0
    with open(out / "scores.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        paths = [line.split(",")[1] for line in f.read().splitlines()[1:]]
    assert str(odd) in paths and len(paths) == 7
    capsys.readouterr()
    assert main(["evaluate", "--out", str(out), "--device", "cpu"]) == 0  # and again


# ---------------------------------------------------------------- killed, stopped, read-only

ENV = {
    **os.environ,
    "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    "OMP_NUM_THREADS": "1",  # the same arithmetic in every process
}


def _dia(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dia.cli", *argv], env=ENV, stderr=subprocess.PIPE, **kwargs
    )


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "detector" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability") / "whole"
    assert _dia("train", "--out", str(out), *TINY).wait(timeout=300) == 0
    return _weights(out)


@pytest.mark.parametrize("extra_s", [0.0, 0.15, 0.4])
def test_kill_9_at_any_point_then_resume_gives_the_same_weights(uninterrupted, tmp_path,
                                                                 extra_s):  # fmt: skip
    """A checkpoint after every step; killed (SIGKILL: nothing runs after it) when the first
    checkpoint is there, or a little later, wherever that falls (mid-step, mid-save)."""
    import time

    out = tmp_path / "killed"
    train = ["train", "--out", str(out), *TINY, "--checkpoint-every", "0"]
    proc = _dia(*train)
    while proc.poll() is None and not (out / "detector-checkpoint").exists():
        time.sleep(0.01)
    time.sleep(extra_s)
    proc.kill()
    proc.wait(timeout=60)
    if (out / "detector" / "model.safetensors").is_file():
        pass  # it finished first
    elif list(out.glob("*checkpoint*")):
        assert _dia("resume", "--out", str(out), "--no-progress").wait(timeout=300) == 0
    else:  # killed before its first checkpoint: it starts again
        shutil.rmtree(out)
        assert _dia(*train).wait(timeout=300) == 0
    weights = _weights(out)
    assert weights.keys() == uninterrupted.keys()
    assert all(torch_equal(weights[k], uninterrupted[k]) for k in weights)
    assert not list(out.glob(".*.tmp"))


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_sigterm_during_diffusion_training_says_what_was_kept(tmp_path, capsys, monkeypatch):
    import signal

    import dia.diffusion.model as model

    original = model.DiffusionModel.loss

    def terminated(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model.DiffusionModel, "loss", terminated)
    args = [
        "--synthetic-train", "16", "--synthetic-test", "8", "--image-size", "16",
        "--diffusion-resolution", "16", "--diffusion-block-out-channels", "8,16",
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(["train-diffusion", "--out", str(tmp_path / "d"), *args]) == 130
    assert "interrupted; saved results are intact" in capsys.readouterr().err


def test_an_identical_diffusion_model_saves_to_identical_bytes(tmp_path):
    from dia.config import DiffusionConfig
    from dia.diffusion import DiffusionModel

    model = DiffusionModel(DiffusionConfig(resolution=16, block_out_channels=(8, 16)), 1)
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("command", ["run", "train-diffusion", "dissolve", "score --csv"])
def test_a_read_only_file_system_is_one_line(run, tmp_path, capsys, monkeypatch, command):
    """Every folder dia writes is made through one function; here it fails as it does on a
    read-only file system (root ignores a folder's permissions, so that is how a test can)."""
    import dia.io

    out, image = run

    def read_only(path):
        raise OSError(30, "Read-only file system", str(path.parent))

    monkeypatch.setattr(dia.io, "make_parent", read_only)
    place = tmp_path / "ro" / "run"
    argv = {
        "run": ["run", "--out", str(place), *TINY],
        "train-diffusion": ["train-diffusion", "--out", str(place), *TINY],
        "dissolve": ["dissolve", "--out", str(place), *TINY[:-7], "--dissolve", "median"],
        "score --csv": ["score", str(image), "--out", str(out), "--csv", str(place / "s.csv")],
    }[command]
    one_clean_error(capsys, main(argv), "Read-only file system")
    assert not place.exists()


def test_a_suite_started_with_sigint_ignored_still_passes_the_ctrl_c_test():
    """nohup and background jobs start processes with SIGINT ignored."""
    code = (
        "import signal, subprocess, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "sys.exit(subprocess.call([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', "
        "'tests/test_checkpoint.py::test_ctrl_c_saves_and_resuming_gives_the_uninterrupted_weights']))"
    )
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=ENV, capture_output=True)
    assert done.returncode == 0, done.stdout.decode()[-2000:]
