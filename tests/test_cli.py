"""End to end: the command line on a tiny synthetic set with a handful of steps."""

import csv
import json

import numpy as np
import pytest

from dia.cli import main

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
    assert metrics["config"]["detector"]["dissolve"] == "diffusion"
    assert metrics["data"]["train"] == 48
    assert metrics["data"]["test_normal"] + metrics["data"]["test_abnormal"] == 24
    assert metrics["protocol"].startswith("last-checkpoint")
    assert metrics["seed"] == 0 and metrics["commit"]
    for key in ("diffusion_s", "detector_s", "test_scoring_s", "total_s"):
        assert metrics["wall_s"][key] > 0
    for name in ("config.json", "diffusion/config.json", "diffusion/model.safetensors",
                 "detector/config.json", "detector/model.safetensors"):  # fmt: skip
        assert (finished_run / name).is_file(), name


def test_saved_detector_gives_the_same_scores(finished_run, capsys):
    with open(finished_run / "scores.csv") as f:
        saved = np.array([float(row["score"]) for row in csv.DictReader(f)])
    before = json.loads((finished_run / "metrics.json").read_text())
    assert main(["evaluate", "--out", str(finished_run), "--device", "cpu"]) == 0
    assert "AUROC" in capsys.readouterr().out
    after = json.loads((finished_run / "metrics.json").read_text())
    assert after["auroc"] == pytest.approx(before["auroc"], abs=1e-9)
    with open(finished_run / "scores.csv") as f:
        again = np.array([float(row["score"]) for row in csv.DictReader(f)])
    np.testing.assert_allclose(again, saved, atol=1e-5)


def test_a_finished_run_is_never_overwritten(finished_run, capsys):
    before = (finished_run / "metrics.json").read_text()
    assert main(["run", "--out", str(finished_run), *TINY]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (finished_run / "metrics.json").read_text() == before


def test_dissolve_grid(finished_run, tmp_path):
    grid = tmp_path / "grid.png"
    args = ["dissolve", "--out", str(finished_run), "--grid", str(grid), "--count", "3",
            "--timesteps", "0,50,400", *TINY]  # fmt: skip
    assert main(args) == 0
    from PIL import Image

    with Image.open(grid) as img:
        assert img.width > 4 * 16 * 4 and img.height > 3 * 16 * 4


def test_a_dissolving_grid_without_dissolving_is_a_clear_error(tmp_path, capsys):
    args = ["dissolve", "--out", str(tmp_path / "none"), "--dissolve", "none", *TINY]
    assert main(args) == 2
    assert "--dissolve diffusion" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_plain_csi_and_blur_controls_run(tmp_path):
    for dissolve in ("none", "median"):
        out = tmp_path / dissolve
        assert main(["run", "--out", str(out), "--dissolve", dissolve, *TINY]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["config"]["detector"]["dissolve"] == dissolve
        assert not (out / "diffusion").exists()


def test_bad_input_gives_a_clear_error(tmp_path, capsys):
    assert main(["run", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["run", "--dissolve", "sideways", "--out", str(tmp_path / "s"), *TINY]) == 2
    assert "sideways" in capsys.readouterr().err


def test_presets_and_budget_flag_set_the_config():
    from dia.cli import build_parser, config_from_args

    def config(*argv):
        return config_from_args(build_parser().parse_args(["run", *argv]))

    assert config().budget_s is None or config().budget_s > 0
    cpu = config("--preset", "cpu")
    assert cpu.preset == "cpu" and cpu.budget_s == 1800
    assert cpu.detector.schedule == "constant"
    assert config("--preset", "cpu", "--schedule", "cosine").detector.schedule == "cosine"
    assert config("--preset", "cpu", "--budget", "60").budget_s == 60
    assert config("--preset", "cpu", "--width", "8").detector.width == 8
    # cpu trains plain CSI (what measured best); --dissolve still picks DIA's diffusion
    assert cpu.detector.dissolve == "none"
    assert config("--preset", "cpu", "--dissolve", "diffusion").detector.dissolve == "diffusion"


def test_a_budget_too_small_for_diffusion_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "budget"
    assert main(["run", "--out", str(out), "--budget", "0.001", *TINY]) == 2
    assert "budget" in capsys.readouterr().err


def test_anomaly_maps_of_the_lowest_scoring_test_images(finished_run, tmp_path, capsys):
    png = tmp_path / "maps.png"
    args = ["maps", "--out", str(finished_run), "--image", str(png), "--count", "3",
            "--patch", "4", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert str(png) in capsys.readouterr().out
    from PIL import Image

    with Image.open(png) as img:
        assert img.width > 2 * 16 * 4 and img.height > 3 * 16 * 4
    assert main(["maps", "--out", str(finished_run), "--patch", "0", "--device", "cpu"]) == 2
    assert "patch=0" in capsys.readouterr().err
