"""End to end: the command line on a tiny synthetic set with a handful of steps."""

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dia.cli import main
from dia.config import replace_settings

TINY = [
    "--synthetic-train", "48", "--synthetic-val", "8", "--synthetic-test", "24",
    "--image-size", "16", "--diffusion-resolution", "16",
    "--diffusion-block-out-channels", "8,16", "--diffusion-epochs", "1",
    "--diffusion-batch-size", "16", "--epochs", "2", "--batch-size", "8", "--width", "4",
    "--dissolve-cache-steps", "2", "--score-samples", "2", "--no-progress", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["run", "--out", str(out), *TINY]) == 0
    return out


def test_run_writes_metrics_models_and_scores(finished_run, capsys):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    for key in ("auroc", "auprc", "fpr_at_95_tpr"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["config"]["detector"]["dissolving"]["dissolve"] == "diffusion"
    assert metrics["data"]["train"] == 48
    assert metrics["data"]["test_normal"] + metrics["data"]["test_abnormal"] == 24
    assert metrics["protocol"].startswith("last-checkpoint")
    assert metrics["seed"] == 0 and metrics["commit"]
    for key in ("diffusion_s", "detector_s", "test_scoring_s", "total_s"):
        assert metrics["wall_s"][key] > 0
    for name in ("config.json", "diffusion/config.json", "diffusion/model.safetensors",
                 "detector/config.json", "detector/model.safetensors"):  # fmt: skip
        assert (finished_run / name).is_file(), name
    from PIL import Image

    for name in ("roc.png", "score_histogram.png"):
        with Image.open(finished_run / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200, name
    # 16 px images drawn 4 times as large: 8 rows of test images (the 8 lowest-scoring with
    # their maps; the first 8 at 6 timesteps besides the input)
    with Image.open(finished_run / "anomaly_maps.png") as img:
        assert img.height > 8 * 64 and img.width > 2 * 64
    with Image.open(finished_run / "dissolve_grid.png") as img:
        assert img.height > 8 * 64 and img.width > 7 * 64
    assert metrics["wall_s"]["anomaly_maps_s"] > 0 and metrics["wall_s"]["dissolve_grid_s"] > 0
    # one page with the numbers and every picture, embedded byte for byte
    page = (finished_run / "report.html").read_text()
    assert f"AUROC {metrics['auroc']:.3f}" in page and "DIA, diffusion dissolving" in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)" alt="([^"]+)"', page)
    assert [name for _, name in embedded] == [
        "roc.png", "score_histogram.png", "training_curve.png", "anomaly_maps.png",
        "dissolve_grid.png",
    ]  # fmt: skip
    with Image.open(finished_run / "training_curve.png") as img:  # detector and diffusion
        assert img.width > 2 * img.height
    for data, name in embedded:
        assert base64.b64decode(data) == (finished_run / name).read_bytes(), name


def test_a_run_is_shown_beside_the_pixel_baselines_and_its_validation_auroc(finished_run):
    from sklearn.metrics import roc_auc_score

    from dia.baselines import BASELINES, knn_pixel_scores
    from dia.config import DataConfig
    from dia.data import load_data
    from dia.detector import DIADetector

    metrics = json.loads((finished_run / "metrics.json").read_text())
    data = load_data(replace_settings(DataConfig(), synthetic_train=48, synthetic_val=8,
                                synthetic_test=24, image_size=16))  # fmt: skip
    splits = {"test": (data.test, data.test_labels), "val": (data.val, data.val_labels)}
    assert set(metrics["baselines"]) == set(BASELINES)
    for key, standardize in (("knn_pixel_k5", False), ("knn_standardized_k5", True)):
        assert metrics["baselines"][key]["k"] == 5
        for split, (images, labels) in splits.items():
            auroc = metrics["baselines"][key][split]
            direct = roc_auc_score(labels, knn_pixel_scores(data.train, images, 5, standardize))
            assert 0.0 <= auroc <= 1.0 and auroc == pytest.approx(direct), (key, split)
    detector = DIADetector.from_pretrained(finished_run / "detector", device="cpu")
    val_scores = detector.score_samples(data.val)
    assert metrics["val_auroc"] == pytest.approx(roc_auc_score(data.val_labels, -val_scores))
    assert metrics["wall_s"]["baselines_s"] > 0 and metrics["wall_s"]["val_scoring_s"] > 0
    page = (finished_run / "report.html").read_text()
    assert "Against simple baselines" in page
    assert all(label in page for label in BASELINES.values())
    assert f"<td>{metrics['val_auroc']:.3f}</td>" in page


def test_saved_detector_gives_the_same_scores(finished_run, capsys):
    with open(finished_run / "scores.csv") as f:
        saved = np.array([float(row["score"]) for row in csv.DictReader(f)])
    before = json.loads((finished_run / "metrics.json").read_text())
    assert main(["evaluate", "--out", str(finished_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and f"validation AUROC {before['val_auroc']:.4f}" in out
    assert "baselines (test AUROC): raw-pixel kNN (k=5) " in out
    after = json.loads((finished_run / "metrics.json").read_text())
    assert after["auroc"] == pytest.approx(before["auroc"], abs=1e-9)
    assert after["baselines"] == before["baselines"]
    # what the run recorded about its training stays
    assert after["training"] == before["training"] and after["training"]["steps"] > 0
    for key in ("diffusion_s", "detector_s", "total_s"):
        assert after["wall_s"][key] == before["wall_s"][key], key
    with open(finished_run / "scores.csv") as f:
        again = np.array([float(row["score"]) for row in csv.DictReader(f)])
    np.testing.assert_allclose(again, saved, atol=1e-5)


def test_a_finished_run_is_never_overwritten(finished_run, capsys):
    before = (finished_run / "metrics.json").read_text()
    config = (finished_run / "config.json").read_text()
    for command in ("run", "train", "train-diffusion"):  # nor the settings that made it
        assert main([command, "--out", str(finished_run), *TINY, "--synthetic-train", "40"]) == 2
        assert "already holds a finished run" in capsys.readouterr().err
    assert (finished_run / "metrics.json").read_text() == before
    assert (finished_run / "config.json").read_text() == config


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    finished_run, tmp_path, monkeypatch, capsys
):
    import signal

    from dia.training import DetectorTrainer

    original, calls = DetectorTrainer._step, {"n": 0}

    def ctrl_c_at_step_4(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(DetectorTrainer, "_step", ctrl_c_at_step_4)
    assert main(["run", "--out", str(out), *TINY]) == 130
    assert f"dia resume --out {out}" in capsys.readouterr().err
    monkeypatch.undo()
    assert (out / "detector-checkpoint" / "model.safetensors").is_file()
    assert not (out / "metrics.json").exists() and not (out / "detector").exists()
    assert main(["run", "--out", str(out), *TINY]) == 2  # a new run would overwrite it
    assert "holds an interrupted training" in capsys.readouterr().err

    # a checkpoint save killed between the two renames of its swap: the previous one is found
    (out / "detector-checkpoint").rename(out / ".detector-checkpoint.old")
    assert main(["resume", "--out", str(out), "--no-progress"]) == 0
    assert "AUROC" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == 4 and metrics["training"]["steps"] == 12
    assert metrics["wall_s"]["diffusion_s"] > 0  # the first session's timings are kept
    assert not (out / "detector-checkpoint").exists()
    # the same scores as the run that was never interrupted (same settings and seed)
    assert (out / "scores.csv").read_text() == (finished_run / "scores.csv").read_text()

    assert main(["resume", "--out", str(out)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(["resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_an_interrupted_diffusion_training_resumes_to_the_uninterrupted_model(
    finished_run, tmp_path, monkeypatch, capsys
):
    import signal

    from safetensors.torch import load_file

    from dia.diffusion import train as diffusion_train

    original, calls = diffusion_train._step, {"n": 0}

    def ctrl_c_at_step_2(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)
        return original(*args)

    monkeypatch.setattr(diffusion_train, "_step", ctrl_c_at_step_2)
    out = tmp_path / "diffusion-only"
    argv = ["train-diffusion", "--out", str(out), *TINY, "--diffusion-max-seconds", "3600"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "diffusion model's training is checkpointed at step 2" in err
    assert f"dia resume --out {out}" in err
    assert (out / "diffusion-checkpoint" / "config.json").is_file()
    assert not (out / "diffusion").exists()
    for command in ("run", "train", "train-diffusion"):  # each would start it afresh
        assert main([command, *argv[1:]]) == 2
        assert "holds an interrupted training" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["resume", "--out", str(out), "--no-progress"]) == 0
    assert "diffusion model saved to" in capsys.readouterr().out
    assert not (out / "diffusion-checkpoint").exists() and not (out / "detector").exists()
    history = json.loads((out / "diffusion" / "history.json").read_text())
    assert history["resumed_at_step"] == 2 and history["steps"] == 3
    # the weights of the run that trained it in one go (same data, settings and seed)
    resumed = load_file(str(out / "diffusion" / "model.safetensors"))
    whole = load_file(str(finished_run / "diffusion" / "model.safetensors"))
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)

    # a dia run interrupted there resumes to the scores of the run never interrupted
    calls["n"] = 0
    monkeypatch.setattr(diffusion_train, "_step", ctrl_c_at_step_2)
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), *TINY]) == 130
    monkeypatch.undo()
    assert f"dia resume --out {run}" in capsys.readouterr().err
    assert main(["resume", "--out", str(run), "--no-progress"]) == 0
    assert "AUROC" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["wall_s"]["diffusion_s"] > 0 and metrics["diffusion"]["steps"] == 3
    assert not (run / "diffusion-checkpoint").exists()
    assert (run / "scores.csv").read_text() == (finished_run / "scores.csv").read_text()


def test_a_run_stopped_after_its_diffusion_training_reuses_that_model(
    finished_run, tmp_path, monkeypatch, capsys
):
    from dia.training import DetectorTrainer

    def ctrl_c(self, *args):
        raise KeyboardInterrupt  # no checkpoint to save: --checkpoint-every 0

    out = tmp_path / "stopped"
    monkeypatch.setattr(DetectorTrainer, "_step", ctrl_c)
    assert main(["run", "--out", str(out), "--checkpoint-every", "0", *TINY]) == 130
    monkeypatch.undo()
    assert (out / "diffusion" / "model.safetensors").is_file()
    saved = (out / "diffusion" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["resume", "--out", str(out)]) == 2
    assert "reuses its diffusion model" in capsys.readouterr().err
    # other settings would need another diffusion model: refused, the saved one kept
    assert main(["run", "--out", str(out), *TINY, "--seed", "1"]) == 2
    assert "seed: saved 0, now 1" in capsys.readouterr().err
    assert main(["run", "--out", str(out), *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diffusion_reused"] is True and "diffusion_s" not in metrics["wall_s"]
    assert (out / "diffusion" / "model.safetensors").read_bytes() == saved
    # the same model, so the same scores as the run that trained it in one go
    assert (out / "scores.csv").read_text() == (finished_run / "scores.csv").read_text()


def test_a_trained_model_is_never_overwritten_nor_its_training_lost(tmp_path, monkeypatch, capsys):
    from dia.pipeline import runner

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "unevaluated"
    args = ["--out", str(out), "--dissolve", "none", *TINY]
    monkeypatch.setattr(runner, "evaluate_step", crash)
    assert main(["run", *args]) == 130  # stopped after the detector was saved
    monkeypatch.undo()
    detector = (out / "detector" / "model.safetensors").read_bytes()
    capsys.readouterr()
    for command in ("run", "train", "train-diffusion", "resume"):
        assert main([command, *args] if command != "resume" else [command, "--out", str(out)]) == 2
        assert "dia evaluate --out" in capsys.readouterr().err
    assert (out / "detector" / "model.safetensors").read_bytes() == detector
    assert main(["evaluate", "--out", str(out), "--device", "cpu"]) == 0
    # the training's record comes from the detector's history, as a finished run's would
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 12 and metrics["wall_s"]["test_scoring_s"] > 0

    folder = tmp_path / "diffusion-only"
    train_diffusion = ["train-diffusion", "--out", str(folder), *TINY]
    assert main(train_diffusion) == 0
    diffusion = (folder / "diffusion" / "model.safetensors").read_bytes()
    assert main(train_diffusion) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert (folder / "diffusion" / "model.safetensors").read_bytes() == diffusion
    # dia train reuses it with the settings that made it, and refuses other ones
    for dissolve in ("diffusion", "median"):  # whatever it dissolves with
        argv = ["train", "--out", str(folder), *TINY, "--synthetic-train", "40"]
        assert main([*argv, "--dissolve", dissolve]) == 2
        assert "other settings (data.synthetic_train: saved 48, now 40)" in (
            capsys.readouterr().err
        )
    assert main(["train", "--out", str(folder), *TINY]) == 0
    assert (folder / "diffusion" / "model.safetensors").read_bytes() == diffusion


def test_a_detector_saved_alone_is_evaluated_and_mapped_on_the_data_given(
    finished_run, tmp_path, capsys
):
    import shutil

    det = tmp_path / "det"
    shutil.copytree(finished_run / "detector", det)  # its config.json is the detector's
    # its training data is not recorded: the data to score is asked for, not assumed
    for command in ("evaluate", "maps"):
        assert main([command, "--out", str(det), "--device", "cpu"]) == 2
        assert "pass --data" in capsys.readouterr().err
    assert main(["dissolve", "--out", str(det), "--dissolve", "median"]) == 2
    assert "holds a detector saved by the library" in capsys.readouterr().err
    assert main(["train", "--out", str(det), *TINY]) == 2  # nor trained over
    assert "holds a saved detector" in capsys.readouterr().err
    assert sorted(p.name for p in det.iterdir()) == sorted(
        p.name for p in (finished_run / "detector").iterdir()
    )
    data = ["--data", "synthetic", "--device", "cpu"]
    assert main(["maps", "--out", str(det), *data, "--count", "2"]) == 0
    assert (det / "anomaly_maps.png").is_file()
    for command in ("evaluate", "maps"):  # only the test set is read: no other setting flags
        with pytest.raises(SystemExit) as stop:
            main([command, "--out", str(det), *data, "--synthetic-train", "8"])
        assert stop.value.code == 2
        assert "unrecognized arguments: --synthetic-train 8" in capsys.readouterr().err
        assert main([command, "--out", str(det), "--normal-class", "1"]) == 2  # without --data
        err = capsys.readouterr().err
        assert "and the test set --data names; --normal-class would be ignored" in err
    config = json.loads((det / "config.json").read_text())
    (det / "config.json").write_text(json.dumps({**config, "seed": 7}))
    # a save killed between its renames: the earlier folder is found, as dia score finds it
    det.rename(tmp_path / ".det.old")
    assert main(["train", "--out", str(det), *TINY]) == 2  # not trained over there either
    assert "holds a saved detector" in capsys.readouterr().err
    det.rename(tmp_path / ".det.old")
    assert main(["evaluate", "--out", str(det), "--data", "synthetic", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "AUROC" in out and "warning" not in err  # its training data is unknown
    metrics = json.loads((det / "external" / "synthetic" / "metrics.json").read_text())
    assert metrics["external"] == {"run": str(det), "trained_on": None}
    assert metrics["data"]["test_abnormal"] > 0
    assert metrics["config"]["detector"]["network"]["width"] == 4  # the detector's, not the flags'
    assert metrics["seed"] == metrics["config"]["seed"] == 7
    assert metrics["config"]["diffusion"] is None and metrics["config"]["budget_s"] is None
    page = (det / "external" / "synthetic" / "report.html").read_text()
    assert "its training data not recorded" in page and "<td>unknown</td>" in page


def test_a_resume_under_a_launcher_joins_with_the_runs_device(tmp_path, monkeypatch):
    import argparse

    from dia.cli import _launch_device
    from dia.config import RunConfig
    from dia.pipeline import save_config

    save_config(RunConfig(device="cpu"), tmp_path)
    assert _launch_device(argparse.Namespace(device=None, out=tmp_path)) == "cpu"
    assert _launch_device(argparse.Namespace(device="auto", out=tmp_path)) == "auto"
    assert _launch_device(argparse.Namespace(device=None, out=tmp_path / "nothing")) == "auto"

    # given the run's detector folder, the run's device as well
    import contextlib

    from dia import distributed

    joined = []

    @contextlib.contextmanager
    def group(device):
        joined.append(device)
        yield

    monkeypatch.setattr(distributed, "process_group", group)
    (tmp_path / "detector").mkdir()
    assert main(["resume", "--out", str(tmp_path / "detector")]) == 2  # nothing to resume
    assert joined == ["cpu"]


def test_checkpoints_can_be_turned_off_and_a_train_resumes(tmp_path, monkeypatch, capsys):
    import signal

    from dia.training import DetectorTrainer

    original = DetectorTrainer._step

    def ctrl_c(self, *args):
        signal.raise_signal(signal.SIGINT)
        return original(self, *args)

    monkeypatch.setattr(DetectorTrainer, "_step", ctrl_c)
    out = tmp_path / "plain"
    train = ["train", "--out", str(out), "--dissolve", "none", *TINY]
    # Without checkpoints Ctrl-C is Python's KeyboardInterrupt: make it so even where the
    # tests run with SIGINT ignored (a background job), as a terminal's Ctrl-C would be.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main([*train, "--checkpoint-every", "0"]) == 130
    finally:
        signal.signal(signal.SIGINT, before)
    assert "resume" not in capsys.readouterr().err
    assert not (out / "detector-checkpoint").exists()
    assert main(train) == 130  # the default: a checkpoint on Ctrl-C
    assert "dia resume" in capsys.readouterr().err
    assert (out / "detector-checkpoint" / "config.json").is_file()
    config = (out / "config.json").read_text()
    for command in ("train", "train-diffusion"):
        assert main([command, *train[1:]]) == 2
        assert "dia resume --out" in capsys.readouterr().err
    assert (out / "config.json").read_text() == config
    monkeypatch.undo()
    # resuming a dia train finishes it as dia train would: a detector, no evaluation
    assert main(["resume", "--out", str(out), "--no-progress"]) == 0
    assert "detector saved to" in capsys.readouterr().out
    assert (out / "detector" / "model.safetensors").is_file()
    assert not (out / "metrics.json").exists() and not (out / "detector-checkpoint").exists()


def test_dissolve_grid(finished_run, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    # no data flags: a run folder's own settings (16 px images, its diffusion model) are used
    args = ["dissolve", "--out", str(finished_run), "--grid", str(grid), "--count", "3",
            "--timesteps", "0,50,400", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    from PIL import Image

    with Image.open(grid) as img:
        assert 4 * 16 * 4 < img.width < 4 * 32 * 4 and img.height > 3 * 16 * 4
    # a flag given on top: another operator on the same images
    median = tmp_path / "median.png"
    args = ["dissolve", "--out", str(finished_run), "--grid", str(median), "--count", "3",
            "--timesteps", "0,50,400", "--dissolve", "median", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    with Image.open(grid) as first, Image.open(median) as second:
        assert first.size == second.size
        pixels = [np.asarray(img.convert("L"), dtype=np.float64) for img in (first, second)]
        assert not np.array_equal(*pixels)
    # not a diffusion model other than the run's, which it would show under its name
    args = ["dissolve", "--out", str(finished_run), "--diffusion-epochs", "3", "--device", "cpu"]
    assert main(args) == 2
    assert "diffusion.epochs: saved 1, now 3" in capsys.readouterr().err


def test_a_dissolving_grid_without_dissolving_is_a_clear_error(tmp_path, capsys):
    args = ["dissolve", "--out", str(tmp_path / "none"), "--dissolve", "none", *TINY]
    assert main(args) == 2
    assert "--dissolve diffusion" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_diffusion_model_dissolve_trains_is_recorded_for_the_run_after(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(["dissolve", "--out", str(out), "--count", "2", *TINY]) == 0
    assert "training one" in capsys.readouterr().err and (out / "config.json").is_file()
    model = (out / "diffusion" / "model.safetensors").read_bytes()
    assert main(["dissolve", "--out", str(out), *TINY, "--diffusion-epochs", "2"]) == 2
    assert "diffusion.epochs: saved 1, now 2" in capsys.readouterr().err
    assert main(["train", "--out", str(out), *TINY]) == 0  # reuses it
    assert (out / "diffusion" / "model.safetensors").read_bytes() == model


def test_plain_csi_and_blur_controls_run(tmp_path):
    for dissolve in ("none", "median"):
        out = tmp_path / dissolve
        assert main(["run", "--out", str(out), "--dissolve", dissolve, *TINY]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["detector"]["dissolving"]["dissolve"] == dissolve
        assert not (out / "diffusion").exists()
        assert (out / "anomaly_maps.png").is_file()
        assert (out / "dissolve_grid.png").is_file() == (dissolve != "none")
        page = (out / "report.html").read_text()
        assert ("plain CSI" in page) == (dissolve == "none")
        assert page.count("data:image/png") == (4 if dissolve == "none" else 5)


def test_bad_input_gives_a_clear_error(tmp_path, capsys, monkeypatch):
    assert main(["run", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # no folder left holding the settings alone
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for _ in range(2):  # the default folder's name is free again after each failure
        assert main(["run", "--data", str(tmp_path / "empty"), *TINY]) == 2
        assert "dia run -> runs/empty-diffusion-seed0\n" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert main(["run", "--dissolve", "sideways", "--out", str(tmp_path / "s"), *TINY]) == 2
    assert "sideways" in capsys.readouterr().err
    # settings that cannot work are refused before anything is trained or written
    for flag, value, said in [
        ("--batch-size", "0", "batch_size=0; expected at least 1"),
        ("--score-samples", "-1", "score samples=-1; expected at least 0"),
        ("--score-shifts", "5", "score shifts=5; expected at most 4"),
        ("--score-shifts", "0", "score shifts=0; expected at least 1"),
        ("--stem-stride", "3", "stem_stride=3; expected a power of two, or 0 for automatic"),
        ("--score-neighbours", "0", "score neighbours=0; expected at least 1"),
        ("--temperature", "0", "temperature=0.0; expected more than 0"),
        ("--score-crop-scale", "1.5", "score crop_scale=1.5; expected a fraction in (0, 1]"),
    ]:
        assert main(["run", "--out", str(tmp_path / "t"), *TINY, flag, value]) == 2
        assert f"dia run: error: {said}" in capsys.readouterr().err
        assert not (tmp_path / "t").exists()


def test_a_diverging_training_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from dia.training import DetectorTrainer

    def diverge(self, *args):
        raise FloatingPointError("detector loss is not finite; lower the learning rate")

    monkeypatch.setattr(DetectorTrainer, "_step", diverge)
    out = tmp_path / "nan"
    assert main(["run", "--out", str(out), *TINY, "--dissolve", "none"]) == 2
    assert "dia run: error: detector loss is not finite" in capsys.readouterr().err


def test_presets_and_budget_flag_set_the_config():
    from dia.cli import build_parser, config_from_args

    def config(*argv):
        return config_from_args(build_parser().parse_args(["run", *argv]))

    assert config().budget_s is None or config().budget_s > 0
    cpu = config("--preset", "cpu")
    assert cpu.preset == "cpu" and cpu.budget_s == 1800
    assert cpu.detector.optim.schedule == "constant"
    assert config("--preset", "cpu", "--schedule", "cosine").detector.optim.schedule == "cosine"
    assert config("--preset", "cpu", "--budget", "60").budget_s == 60
    # none: no budget, and no limit where a setting may have none
    unlimited = config("--preset", "cpu", "--budget", "none", "--max-seconds", "None")
    assert unlimited.budget_s is None and unlimited.detector.optim.max_seconds is None
    assert config("--diffusion-max-seconds", "none").diffusion.max_seconds is None
    with pytest.raises(SystemExit):  # a setting that cannot be unset does not take none
        build_parser().parse_args(["run", "--width", "none"])
    assert config("--preset", "cpu", "--width", "8").detector.network.width == 8
    # cpu trains plain CSI (what measured best); --dissolve still picks DIA's diffusion
    assert cpu.detector.dissolving.dissolve == "none"
    assert (
        config("--preset", "cpu", "--dissolve", "diffusion").detector.dissolving.dissolve
        == "diffusion"
    )


def test_a_run_repeats_from_its_config_with_the_flags_given_on_top(finished_run, tmp_path, capsys):
    saved = json.loads((finished_run / "config.json").read_text())
    again = tmp_path / "again"
    argv = ["run", "--config", str(finished_run / "config.json"), "--out", str(again)]
    assert main([*argv, "--no-progress"]) == 0
    assert json.loads((again / "config.json").read_text()) == saved  # device cpu included
    first, second = (json.loads((f / "metrics.json").read_text()) for f in (finished_run, again))
    for key in ("auroc", "auprc", "fpr_at_95_tpr", "val_auroc"):
        assert second[key] == pytest.approx(first[key], abs=1e-9), key
    assert second["baselines"] == first["baselines"]
    assert (again / "scores.csv").read_text() == (finished_run / "scores.csv").read_text()
    # flags given go on top of the file, those not given keep its values (not the preset's);
    # a run folder names its config.json
    other = tmp_path / "seed4"
    argv = ["train-diffusion", "--config", str(again), "--out", str(other), "--seed", "4"]
    assert main([*argv, "--width", "8", "--no-progress"]) == 0
    changed = json.loads((other / "config.json").read_text())
    network = {**saved["detector"]["network"], "width": 8}
    assert changed == {**saved, "seed": 4, "detector": {**saved["detector"], "network": network}}
    capsys.readouterr()
    # a file that is not a run's settings is one line
    for bad, why in [
        (tmp_path / "missing.json", "does not exist"),
        (finished_run / "detector" / "config.json", "settings of a saved detector"),
        (finished_run / "metrics.json", "unknown RunConfig settings"),
    ]:
        assert main(["run", "--config", str(bad), "--out", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dia run: error: ") and err.count("\n") == 1 and why in err, err
    argv = ["train", "--config", str(again), "--preset", "cpu", "--out", str(tmp_path / "no")]
    assert main(argv) == 2
    assert "--preset and --config both give the settings" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_a_config_of_the_flat_layout_repeats_its_run(finished_run, tmp_path):
    """A run's config.json as dia wrote it before the settings were grouped (the detector's and
    the data sources' settings at the top of their sections) repeats that run."""
    from dia.config import DataConfig, DetectorConfig
    from dia.config_tree import flat_values

    saved = json.loads((finished_run / "config.json").read_text())
    flat = {**saved, "data": flat_values(DataConfig, saved["data"])}
    flat["detector"] = flat_values(DetectorConfig, saved["detector"])
    assert "width" in flat["detector"] and "synthetic_train" in flat["data"]
    (tmp_path / "old.json").write_text(json.dumps(flat))
    again = tmp_path / "again"
    argv = ["run", "--config", str(tmp_path / "old.json"), "--out", str(again), "--no-progress"]
    assert main(argv) == 0
    assert json.loads((again / "config.json").read_text()) == saved  # in the new layout
    first, second = (json.loads((f / "metrics.json").read_text()) for f in (finished_run, again))
    for key in ("auroc", "auprc", "fpr_at_95_tpr", "val_auroc"):
        assert second[key] == pytest.approx(first[key], abs=1e-9), key


def test_a_budget_too_small_for_diffusion_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "budget"
    assert main(["run", "--out", str(out), "--budget", "0.001", *TINY]) == 2
    err = capsys.readouterr().err
    assert "--budget" in err and f"dia run --out {out} with the same settings reuses it" in err
    assert (out / "diffusion" / "model.safetensors").is_file()
    assert main(["run", "--out", str(out), "--budget", "0", *TINY]) == 2
    assert "expected seconds above 0, or none" in capsys.readouterr().err
    # nothing saved: no folder left behind
    csi = tmp_path / "csi"
    assert main(["run", "--out", str(csi), "--budget", "0.001", *TINY, "--dissolve", "none"]) == 2
    assert "the time budget is spent before detector training" in capsys.readouterr().err
    assert not csi.exists()
    # a budget that ends training within its first epoch is finished, with a warning
    argv = ["run", "--out", str(csi), "--budget", "600", *TINY, "--dissolve", "none"]
    assert main([*argv, "--max-seconds", "0.001"]) == 0
    assert "dia run: warning: the detector trained for 1 step (0." in capsys.readouterr().err


def _write_pngs(folder, images):
    """(N, 1, H, W) in [0, 1] as 8-bit PNGs; returns the images as the PNGs hold them."""
    from PIL import Image

    folder.mkdir(parents=True)
    pixels = (images[:, 0].numpy() * 255).round().astype(np.uint8)
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"scan{i:02d}.png")
    return torch.from_numpy(pixels[:, None] / 255.0).float()


def test_score_new_images_agrees_with_the_library(finished_run, tmp_path, capsys):
    from dia.config import DataConfig
    from dia.data import load_data
    from dia.detector import DIADetector

    data = load_data(replace_settings(DataConfig(), synthetic_train=48, synthetic_val=8,
                                synthetic_test=24, image_size=16))  # fmt: skip
    stored = _write_pngs(tmp_path / "new", data.test[:6])
    assert main(["score", str(tmp_path / "new"), "--out", str(finished_run),
                 "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "of 6 images abnormal at threshold" in printed and "scan05.png" in printed
    with open(finished_run / "scored.csv") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == [f"scan{i:02d}.png" for i in range(6)]
    detector = DIADetector.from_pretrained(finished_run / "detector", device="cpu")
    expected = detector.score_samples(stored)
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, atol=1e-5)
    calls = [int(r["abnormal"]) for r in rows]
    assert calls == (expected < detector.threshold_).astype(int).tolist()

    # a second call keeps the first CSV; the run's detector folder names the run
    assert main(["score", str(tmp_path / "new" / "scan00.png"), "--out",
                 str(finished_run / "detector"), "--device", "cpu"]) == 0  # fmt: skip
    assert not (finished_run / "detector" / "scored.csv").exists()  # the model's folder kept
    assert (finished_run / "scored-2.csv").read_text().count("\n") == 2
    assert main(["score", str(tmp_path / "new"), "--out", str(finished_run)]) == 0
    assert (finished_run / "scored.csv").read_text().count("\n") == 7
    assert (finished_run / "scored-3.csv").is_file()

    # another operating point: call half of the normal training images' scores abnormal
    median = float(np.median(detector.train_scores_))
    assert main(["score", str(tmp_path / "new"), "--out", str(finished_run), "--fpr", "0.5",
                 "--csv", str(tmp_path / "half.csv"), "--device", "cpu"]) == 0  # fmt: skip
    assert "lets through 50% of the normal training images" in capsys.readouterr().out
    with open(tmp_path / "half.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["threshold"]) for r in rows] == [pytest.approx(median, abs=1e-6)] * 6
    assert [int(r["abnormal"]) for r in rows] == (expected < median).astype(int).tolist()
    # a --csv that names an existing file, a run's record say, leaves it as it is
    before = (finished_run / "metrics.json").read_text()
    assert main(["score", str(tmp_path / "new"), "--out", str(finished_run),
                 "--csv", str(finished_run / "metrics.json"), "--device", "cpu"]) == 0  # fmt: skip
    assert f"scores in {finished_run / 'metrics-2.json'}" in capsys.readouterr().out
    assert (finished_run / "metrics.json").read_text() == before
    (finished_run / "metrics-2.json").unlink()


def test_scoring_a_volume_counts_its_abnormal_slices(finished_run, tmp_path, capsys):
    import nibabel

    voxels = np.random.default_rng(0).integers(0, 1000, (16, 16, 5)).astype(np.int16)
    path = tmp_path / "case1.nii.gz"
    nibabel.save(nibabel.Nifti1Image(voxels, np.eye(4)), path)
    picture = tmp_path / "plain.png"
    _write_pngs(tmp_path / "pngs", torch.rand(1, 1, 16, 16))
    (tmp_path / "pngs" / "scan00.png").rename(picture)
    out = tmp_path / "scored.csv"
    assert main(["score", str(path), f"{path}#1-2", str(picture), "--out", str(finished_run),
                 "--csv", str(out), "--device", "cpu", "--fpr", "0.5"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    with open(out) as f:
        rows = list(csv.DictReader(f))
    slices = [r for r in rows if r["path"] != str(picture)]
    named = [Path(r["path"]).name for r in slices]
    assert named == [f"case1.nii.gz#{k}" for k in (0, 1, 2, 3, 4, 1, 2)]
    # Listed whole and in part, the volume's slices count under one name, each slice once;
    # the picture is no volume.
    with open(tmp_path / "scored-volumes.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["volume"] == str(path) and int(row["slices"]) == 5
    assert int(row["abnormal_slices"]) == sum(int(r["abnormal"]) for r in slices[:5])
    lowest = min(slices, key=lambda r: float(r["score"]))
    assert row["most_abnormal"] == lowest["path"]
    assert float(row["lowest_score"]) == pytest.approx(float(lowest["score"]), abs=1e-6)
    assert f"{row['abnormal_slices']:>5} of 5 slices abnormal  {path}" in printed
    assert "about 50% of a normal volume's are expected" in printed


def test_a_ct_folder_of_dicom_files_through_a_given_window(tmp_path, write_dicom, capsys):
    from dia.config import DataConfig
    from dia.data import load_data
    from dia.data.folder import load_images
    from dia.detector import DIADetector

    data = load_data(replace_settings(DataConfig(), synthetic_train=48, synthetic_val=8,
                                synthetic_test=24, image_size=16))  # fmt: skip
    root = tmp_path / "ct"

    def write(folder, images):
        # Hounsfield units that a lung window (-600 / 1500) shows as the images themselves;
        # each file's own window is a soft-tissue one, which would show them all white.
        for i, image in enumerate(images[:, 0].numpy()):
            hu = np.rint(image * 1500 - 1350).astype(np.int16)
            write_dicom(folder / f"IM{i:04d}", hu + 1024, bits=12, RescaleSlope=1,
                        RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)  # fmt: skip

    write(root / "train/0_normal", data.train)
    write(root / "test/0_normal", data.test[data.test_labels == 0])
    write(root / "test/1_abnormal", data.test[data.test_labels == 1])
    out = tmp_path / "run"
    assert main(["run", "--data", str(root), "--dicom-window=-600,1500", "--dissolve", "none",
                 "--out", str(out), *TINY]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["data"]["dicom"]["window"] == [-600.0, 1500.0]
    assert metrics["data"]["dicom_displays"] == ["given window -600/1500"]
    # no validation split: no validation AUROC, baselines on the test split alone
    assert "val_auroc" not in metrics and "val_scoring_s" not in metrics["wall_s"]
    assert set(metrics["baselines"]["knn_standardized_k5"]) == {"test", "k"}
    detector = DIADetector.from_pretrained(out / "detector", device="cpu")
    assert detector.dicom_window == (-600.0, 1500.0)

    # New files are read through the detector's window, as its training files were.
    assert main(["score", str(root / "test"), "--out", str(out), "--device", "cpu"]) == 0
    with open(out / "scored.csv") as f:
        rows = list(csv.DictReader(f))
    images, files = load_images([root / "test"], 16, 1, detector.dicom_window)
    assert [r["path"] for r in rows] == [str(f) for f in files]
    expected = torch.cat([data.test[data.test_labels == 0], data.test[data.test_labels == 1]])
    assert torch.allclose(images, expected, atol=2e-3)
    scores = detector.score_samples(images)
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, atol=1e-5)
    # the run's scores.csv names each test file: the same file, the same score
    with open(out / "scores.csv") as f:
        evaluated = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
    assert sorted(evaluated) == sorted(r["path"] for r in rows)
    for r in rows:
        assert float(r["score"]) == pytest.approx(evaluated[r["path"]], abs=1e-5), r["path"]


def test_dia_warnings_are_printed_as_plain_lines(finished_run, tmp_path, write_dicom, capsys):
    pixels = np.full((16, 16), 1000, dtype=np.uint16)
    for name, centre in (("a.dcm", 1000), ("b.dcm", 1500)):
        write_dicom(tmp_path / "mixed" / name, pixels, bits=12, WindowCenter=centre,
                    WindowWidth=500)  # fmt: skip
    assert main(["score", str(tmp_path / "mixed"), "--out", str(finished_run),
                 "--device", "cpu"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "dia score: warning: the grayscale DICOM files given are shown in 2 different" in err
    assert "UserWarning" not in err


def test_an_external_test_set_is_evaluated_apart(finished_run, tmp_path, capsys):
    from dia.config import DataConfig
    from dia.data import load_data
    from dia.detector import DIADetector

    data = load_data(replace_settings(DataConfig(), synthetic_train=48, synthetic_val=8,
                                synthetic_test=24, image_size=16, split_seed=7))  # fmt: skip
    hospital = tmp_path / "hospital-b"  # test images only: no train/ folder
    normal = _write_pngs(hospital / "test/0_normal", data.test[data.test_labels == 0])
    abnormal = _write_pngs(hospital / "test/1_abnormal", data.test[data.test_labels == 1])
    before = (finished_run / "metrics.json").read_bytes()

    assert main(["evaluate", "--out", str(finished_run), "--data", str(hospital),
                 "--device", "cpu"]) == 0  # fmt: skip
    folder = finished_run / "external" / "hospital-b"
    assert str(folder) in capsys.readouterr().out
    assert (finished_run / "metrics.json").read_bytes() == before  # the run's own results
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["external"]["run"] == str(finished_run)
    assert metrics["external"]["trained_on"]["spec"] == "synthetic"
    assert metrics["training"]["steps"] == json.loads(before)["training"]["steps"]
    assert metrics["data"]["train"] == 0 and metrics["data"]["test_abnormal"] == len(abnormal)
    assert "baselines" not in metrics and "val_auroc" not in metrics  # no training images here
    detector = DIADetector.from_pretrained(finished_run / "detector", device="cpu")
    scores = detector.score_samples(torch.cat([normal, abnormal]))
    labels = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]
    from sklearn.metrics import roc_auc_score

    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, -scores), abs=1e-6)
    # the threshold stays the one chosen on the run's own normal training images
    normal_flagged = float(np.mean(scores[: len(normal)] < detector.threshold_))
    assert metrics["test_fpr_at_threshold"] == pytest.approx(normal_flagged)
    page = (folder / "report.html").read_text()
    assert "external test set for" in page and "anomaly_maps.png" in page

    # again: a folder of its own; a flat layout or a CSV list is all test images
    table = tmp_path / "b.csv"  # labels 2 (normal) and 5, with --normal-class
    rows = [f"{p},{2 + 3 * (p.parent.name == '1_abnormal')}" for p in
            sorted(hospital.rglob("*.png"))]  # fmt: skip
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    assert main(["evaluate", "--out", str(finished_run), "--data", str(hospital)]) == 0
    assert (finished_run / "external" / "hospital-b-2" / "metrics.json").is_file()
    assert main(["evaluate", "--out", str(finished_run), "--data", str(table),
                 "--normal-class", "2"]) == 0  # fmt: skip
    listed = json.loads((finished_run / "external" / "b" / "metrics.json").read_text())
    assert listed["auroc"] == pytest.approx(metrics["auroc"], abs=1e-6)

    # larger colour images are brought to the detector's 16 px gray, as training images are
    from PIL import Image

    colour = tmp_path / "colour"
    for i, image in enumerate(torch.cat([normal, abnormal])[:, 0].numpy()):
        rgb = np.repeat((image * 255).round().astype(np.uint8)[..., None], 3, axis=2)
        rgb[..., 0] = np.minimum(255, rgb[..., 0].astype(int) + 20)  # a tint: really colour
        folder = "0_normal" if i < len(normal) else "1_abnormal"
        (colour / "test" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((40, 40)).save(colour / "test" / folder / f"{i}.png")
    capsys.readouterr()
    assert main(["evaluate", "--out", str(finished_run), "--data", str(colour)]) == 0
    tinted = json.loads((finished_run / "external" / "colour" / "metrics.json").read_text())
    assert tinted["data"]["channels"] == 1 and tinted["data"]["image_size"] == 16

    # only the settings of how an external set is read go with --data; and the run's own data
    # is no external test set: that is said, not refused
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--out", str(finished_run), "--data", "synthetic",
              "--synthetic-test", "24"])  # fmt: skip
    assert stop.value.code == 2
    assert "unrecognized arguments: --synthetic-test 24" in capsys.readouterr().err
    assert main(["evaluate", "--out", str(finished_run), "--data", "synthetic"]) == 0
    assert "warning: synthetic is the data set the detector was trained on" in (
        capsys.readouterr().err
    )


def test_flags_a_saved_run_would_ignore_are_refused(finished_run, capsys):
    for command in ("evaluate", "maps"):  # they have no setting flags: the run's settings rule
        argv = [command, "--out", str(finished_run), "--width", "8", "--seed", "0", "--budget", "9"]
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"dia {command}: error: unrecognized arguments: --width 8 --seed 0 --budget 9" in err
        # how a test set is read goes with --data, and --data with evaluate alone
        argv = [command, "--out", str(finished_run), "--normal-class", "3"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--normal-class would be ignored" in err
        assert ("--data DATA (with --normal-class" in err) == (command == "evaluate")
    assert main(["maps", "--out", str(finished_run), "--data", "synthetic"]) == 2
    assert "--data would be ignored" in capsys.readouterr().err
    argv = ["evaluate", "--out", str(finished_run), "--data", "x", "--image-size", "32"]
    with pytest.raises(SystemExit):
        main(argv)
    assert "unrecognized arguments: --image-size 32" in capsys.readouterr().err


def test_score_errors_name_the_problem(finished_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cases = [
        ([str(tmp_path / "empty"), "--out", str(finished_run)], "holds no image files"),
        ([str(tmp_path / "broken.png"), "--out", str(finished_run)], "broken.png"),
        ([str(tmp_path / "nothing.png"), "--out", str(finished_run)], "nothing.png"),
        ([str(tmp_path / "broken.png"), "--out", str(tmp_path)], "no saved detector"),
        ([str(tmp_path / "broken.png"), "--out", str(finished_run), "--csv", str(tmp_path)],
         "is a folder"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(["score", *argv, "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err
    # a big folder with a broken file: the others scored, the broken one listed with why
    folder = tmp_path / "mixed"
    _write_pngs(folder, torch.rand(2, 1, 16, 16))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = ["score", str(folder), "--out", str(finished_run), "--csv", str(tmp_path / "m.csv")]
    assert main(argv) == 2
    assert main([*argv, "--skip-unreadable"]) == 0
    assert "skipped 1 file that could not be read" in capsys.readouterr().err
    with open(tmp_path / "m.csv") as f:
        assert [Path(r["path"]).name for r in csv.DictReader(f)] == ["scan00.png", "scan01.png"]
    with open(tmp_path / "m-unreadable.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert Path(row["path"]).name == "broken.png" and "cannot read image" in row["reason"]
    argv = ["score", str(tmp_path / "broken.png"), "--out", str(finished_run), "--skip-unreadable"]
    assert main(argv) == 2
    assert "none of the 1 files given could be read" in capsys.readouterr().err


def test_maps_pick_images_by_the_scores_evaluate_wrote(finished_run, tmp_path, capsys, monkeypatch):
    import shutil

    from dia import pipeline
    from dia.pipeline import assess

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    picked = []
    write = pipeline.write_anomaly_maps
    monkeypatch.setattr(
        assess,
        "write_anomaly_maps",
        lambda det, images, scores, *rest: (
            picked.append(np.asarray(scores)) or write(det, images, scores, *rest)
        ),
    )
    args = ["maps", "--out", str(run), "--count", "2", "--patch", "4", "--device", "cpu"]
    assert main(args) == 0
    assert f"by {run / 'scores.csv'}" in capsys.readouterr().err
    # another saved detector than the one evaluated, or another precision: scored anew
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["detector_sha256"] == pipeline.detector_digest(run / "detector")
    (run / "metrics.json").write_text(json.dumps({**metrics, "detector_sha256": "0" * 64}))
    assert main(args) == 0
    assert "scoring 24 test images" in capsys.readouterr().err
    np.testing.assert_allclose(picked[0], picked[1], atol=1e-5)
    other = "fp32" if metrics["precision"] == "bf16" else "bf16"  # bf16 where a CPU has AMX
    (run / "metrics.json").write_text(json.dumps({**metrics, "precision": other}))
    assert main(args) == 0
    assert "scoring 24 test images" in capsys.readouterr().err


def test_anomaly_maps_of_the_lowest_scoring_test_images(finished_run, tmp_path, capsys):
    png = tmp_path / "maps.png"
    args = ["maps", "--out", str(finished_run), "--image", str(png), "--count", "3",
            "--patch", "4", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert str(png) in capsys.readouterr().out
    from PIL import Image

    with Image.open(png) as img:
        assert img.width > 2 * 16 * 4 and img.height > 3 * 16 * 4
    # a run's detector folder names its run, which the maps go into
    args = ["maps", "--out", str(finished_run / "detector"), "--count", "1", "--device", "cpu"]
    assert main(args) == 0
    assert str(finished_run / "anomaly_maps.png") in capsys.readouterr().out
    assert not (finished_run / "detector" / "anomaly_maps.png").exists()
    from dia.pipeline import run_folder_of

    (tmp_path / "link").symlink_to(finished_run / "detector")
    assert run_folder_of(tmp_path / "link") == finished_run.resolve()
    assert main(["maps", "--out", str(finished_run), "--patch", "0", "--device", "cpu"]) == 2
    assert "patch=0" in capsys.readouterr().err
    for command in ("maps", "evaluate"):
        missing = tmp_path / f"no-run-{command}"
        assert main([command, "--out", str(missing), "--device", "cpu"]) == 2
        assert "no saved detector" in capsys.readouterr().err
        assert not missing.exists()


def test_the_command_line_parses_without_importing_torch():
    import subprocess
    import sys

    code = "import sys, dia.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # dia --help and argument errors stay instant


def test_a_misspelt_flag_is_named_with_its_commands_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--bugdet", "30"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage: dia run" in err and "dia run: error: unrecognized arguments: --bugdet 30" in err
