"""The benchmark harness runs end to end on a tiny synthetic set and writes its table."""

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from dia.data.types import ImageData

BENCH = Path(__file__).parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    "data.synthetic_train=32", "data.synthetic_val=8", "data.synthetic_test=16",
    "data.image_size=16", "diffusion.resolution=16", "diffusion.block_out_channels=[8,16]",
    "diffusion.max_seconds=1", "detector.width=8", "detector.batch_size=8",
    "detector.dissolve_cache_steps=2", "score.samples=1", "device=cpu",
]  # fmt: skip


def test_budget_harness_writes_the_schema_and_resumes(tmp_path, capsys):
    budget = load("budget")
    argv = ["--data", "synthetic", "--preset", "quick", "--budget", "6", "--seeds", "0"]
    argv += ["--variants", "csi", "dia", "--out", str(tmp_path), "--curve-every", "2"]
    for setting in TINY:
        argv += ["--set", setting]
    assert budget.main(argv) == 0
    results = json.loads((tmp_path / "synthetic.json").read_text())
    assert results["budget_s"] == 6 and results["protocol"] == "last-checkpoint"
    assert results["matched"] == "time" and results["warm"] is False
    cold = results["variants"]["dia"]["runs"]["0"]  # its diffusion model trained inside the clock
    assert cold["dissolver"]["in_wall"] is True and cold["dissolver"]["kept"] is False
    assert cold["timings_s"]["dissolver_fit_s"] == cold["dissolver"]["fit_s"] > 0
    assert "dissolver" not in results["variants"]["csi"]["runs"]["0"]
    assert results["chosen_on"].startswith("the validation split")
    for key in ("cpu", "cpu_model", "amx", "cores", "torch"):
        assert key in results["machine"]
    for name in ("csi", "dia"):
        entry = results["variants"][name]
        assert entry["seeds"] == [0] and len(entry["auroc"]) == 1
        assert 0 <= entry["auroc"][0] <= 1 and entry["wall_s"][0] > 0
        assert entry["steps"] == [entry["runs"]["0"]["steps"]]
        run = entry["runs"]["0"]  # each run says where and in what precision it ran
        assert run["machine"]["cores"] > 0 and run["precision"] in ("fp32", "bf16")
        assert entry["curve"] and all(len(point) == 2 for point in entry["curve"])
        assert "encoder/cosine/shift0.0" in entry["auroc_by_score"]
        assert "encoder/cosine/shift0.0/crop1.0" in entry["auroc_by_score"]
    assert results["variants"]["dia"]["minus_csi"] == [
        round(results["variants"]["dia"]["auroc"][0] - results["variants"]["csi"]["auroc"][0], 4)
    ]
    table = (tmp_path / "synthetic.md").read_text()
    assert "| DIA (diffusion) |" in table and "| standardised-pixel kNN (k=5) |" in table
    assert "| train steps |" in table
    assert set(results["baselines"]) == {"knn_pixel_k5", "knn_standardized_k5"}
    # a second call with the same settings finds every run done and trains nothing
    capsys.readouterr()
    assert budget.main(argv) == 0
    assert "seed 0:" not in capsys.readouterr().out


def tiny_table(tmp_path, *extra: str) -> list[str]:
    """Arguments of a tiny table of seed 0 with no extra crop passes, and 10 normal validation
    images (enough to measure a dissolver's quality)."""
    argv = ["--data", "synthetic", "--preset", "quick", "--seeds", "0", "--out", str(tmp_path)]
    for setting in [*TINY, "data.synthetic_val=20"]:
        argv += ["--set", setting]
    return [*argv, "--crops", *extra]


def test_a_step_matched_table_trains_every_variant_the_same_steps(tmp_path):
    budget = load("budget")
    assert budget.main(tiny_table(tmp_path, "--epochs", "2", "--variants", "csi", "median")) == 0
    results = json.loads((tmp_path / "synthetic.json").read_text())
    assert results["matched"] == "steps" and results["epochs"] == 2
    assert results["budget_s"] is None and results["warm"] is True
    csi, median = results["variants"]["csi"], results["variants"]["median"]
    assert csi["steps"] == median["steps"] == [2 * 32 // 8]  # 2 epochs of 32 images, 8 a step
    for entry in (csi, median):
        assert entry["settings"]["budget_s"] is None
        assert entry["settings"]["detector"]["optim"]["epochs"] == 2
        assert entry["settings"]["detector"]["optim"]["max_seconds"] is None
    quality = median["runs"]["0"]["dissolver_quality"]  # on the 10 normal validation images
    assert quality["t"] == [50, 100] and quality["images"] == 10
    assert len(quality["detail_ratio"]) == len(quality["share_added_detail"]) == 2
    assert quality["detail_ratio"][1] < quality["detail_ratio"][0] < 1  # a 7x7 median at 100
    assert "denoise_mse_ratio" not in quality
    assert median["dissolver_quality"] == {k: v for k, v in quality.items() if k != "images"}
    assert "dissolver_quality" not in csi["runs"]["0"] and "dissolver" not in median["runs"]["0"]
    assert set(median["minus_csi_by_score"]) == {"preset", "projection/csi/shift1.0"}
    table = (tmp_path / "synthetic.md").read_text()
    assert "2 epochs a run" in table and "## Paired differences against csi" in table
    assert "| median | 0 | " in table
    with pytest.raises(SystemExit, match="holds a step-matched .2 epochs., warm table"):
        budget.main(tiny_table(tmp_path, "--budget", "6", "--variants", "csi"))


def test_a_warm_run_fits_its_dissolver_before_its_clock_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("DIA_CACHE", str(tmp_path / "cache"))
    budget = load("budget")
    argv = tiny_table(tmp_path, "--budget", "4", "--warm", "--variants", "dia")
    runs = []
    for name in ("first", "second"):
        assert budget.main([*argv, "--name", name]) == 0
        results = json.loads((tmp_path / f"{name}.json").read_text())
        assert results["matched"] == "time" and results["warm"] is True
        runs.append(results["variants"]["dia"]["runs"]["0"])
    first, second = runs
    fitting = first["dissolver"]  # trained for its 1 s, outside the run's wall time
    assert fitting["in_wall"] is False and fitting["kept"] is False
    assert fitting["steps"] > 0 and fitting["fit_s"] >= 0.9
    assert "dissolver_fit_s" not in first["timings_s"]  # the detector had nothing to fit
    assert second["dissolver"]["kept"] is True  # the second table took the first's model
    assert second["dissolver"]["steps"] == fitting["steps"]
    assert second["dissolver"]["fit_s"] < fitting["fit_s"]
    quality = first["dissolver_quality"]
    assert quality["t"] == [50, 100] and len(quality["denoise_mse_ratio"]) == 2
    assert quality == second["dissolver_quality"]  # the same model
    table = (tmp_path / "first.md").read_text()
    assert "trained before each run, outside its wall time" in table
    with pytest.raises(SystemExit, match="holds a time-matched .budget 4.0 s., warm table"):
        budget.main(tiny_table(tmp_path, "--budget", "4", "--variants", "dia", "--name", "first"))


def test_a_table_holds_the_runs_of_one_mode(tmp_path):
    budget = load("budget")
    argv = ["--data", "synthetic", "--preset", "quick", "--seeds", "0", "--variants", "csi"]
    argv += ["--out", str(tmp_path)]
    path = tmp_path / "synthetic.json"
    old = {"budget_s": 6.0, "variants": {}}  # made before the modes: time-matched and cold
    assert budget.table_mode(old) == {"matched": "time", "warm": False, "budget_s": 6.0}
    steps = {"matched": "steps", "epochs": 3, "warm": True, "budget_s": None, "variants": {}}
    refused = [
        (old, ["--epochs", "3"], "would be step-matched .3 epochs., warm"),
        (old, ["--budget", "6", "--warm"], "would be time-matched .budget 6.0 s., warm"),
        (old, ["--budget", "7"], "would be time-matched .budget 7.0 s., cold"),
        (steps, ["--epochs", "4"], "would be step-matched .4 epochs."),
        (steps, ["--budget", "6", "--warm"], "holds a step-matched .3 epochs., warm table"),
    ]
    for stored, extra, message in refused:
        path.write_text(json.dumps(stored))
        with pytest.raises(SystemExit, match=message):
            budget.main([*argv, *extra])
        assert json.loads(path.read_text()) == stored
    with pytest.raises(SystemExit):  # steps or a budget, not both
        budget.parse_args([*argv, "--epochs", "3", "--budget", "6"])


def test_speed_bench_compares_variants_side_by_side(tmp_path):
    speed = load("speed")
    argv = ["--data", "synthetic", "--images", "16", "--epochs", "1", "--repeats", "1"]
    argv += ["--width", "8", "--cache-images", "8", "--device", "cpu", "--out", str(tmp_path)]
    assert speed.main([*argv, "--name", "speed-tiny"]) == 0
    results = json.loads((tmp_path / "speed-tiny.json").read_text())
    for name in ("csi fp32", "csi fp32, plain layout", "csi bf16", "dia fp32, UNet every step"):
        assert results["train_images_per_s"][name] > 0
    assert results["ratios"]["cache_over_unet_every_step"] > 0
    for name in ("before, fp32", "now, bf16", "now, bf16, plain layout"):
        assert results["score_images_per_s"][name] > 0
    assert results["ratios"]["score_now_over_before_fp32"] > 0
    assert (tmp_path / "speed-tiny.md").exists() and not (tmp_path / "speed.json").exists()


def test_scoring_bench_tables_every_setting_on_one_network(tmp_path):
    scoring_bench = load("scoring")
    argv = ["--data", "synthetic", "--train-seconds", "1", "--max-samples", "2", "--max-bank"]
    argv += ["48", "--timing-images", "8", "--device", "cpu", "--out", str(tmp_path)]
    assert scoring_bench.main([*argv, "--label", "a"]) == 0
    assert scoring_bench.main([*argv, "--label", "b", "--stem-stride", "2"]) == 0
    results = json.loads((tmp_path / "scoring.json").read_text())
    assert set(results["datasets"]) == {"a", "b"}  # merged, one entry a data set
    entry = results["datasets"]["b"]
    assert entry["settings"]["detector"]["network"]["stem_stride"] == 2
    assert entry["settings"]["bank_images"] == 48 and entry["settings"]["val_images"] == 200
    kinds, shifts, samples = len(scoring_bench.KINDS), len(scoring_bench.SHIFTS), 3  # 0, 1, 2
    assert len(entry["val_auroc"]) == kinds * shifts * samples * samples
    assert all(0 <= v <= 1 for v in entry["val_auroc"].values())
    assert len(entry["images_per_s"]) == shifts * samples
    table = (tmp_path / "scoring.md").read_text()
    assert "| encoder/cosine | 2 x 1 | 2 |" in table  # the table across data sets
    assert "## b, 32 px" in table


def test_scoring_bench_features_are_the_scores_own():
    """The bench's features, built a sample at a time, are what dia scores with."""
    from dia.config import RunConfig, ScoreConfig
    from dia.networks import AmplifierNet
    from dia.scoring import features

    scoring_bench = load("scoring")
    net, images, cpu = AmplifierNet(1, width=4), torch.rand(5, 1, 16, 16), torch.device("cpu")
    config = RunConfig()
    parts = scoring_bench.per_sample(net, images, config, 3, (cpu, "fp32"))
    for shifts, samples in ((1, 0), (2, 3), (4, 2)):
        score = ScoreConfig(shifts=shifts, samples=samples)
        expected = features(net, images, config.detector, score, cpu)
        got = scoring_bench.combined(parts, samples, shifts)
        for name in ("h", "z", "logits"):
            torch.testing.assert_close(getattr(got, name), getattr(expected, name))


def test_scaling_bench_measures_each_setting_in_its_own_process(tmp_path):
    scaling = load("scaling")
    argv = ["--sizes", "16", "--device", "cpu", "--out", str(tmp_path), "--name", "tiny"]
    assert scaling.main(argv) == 0
    results = json.loads((tmp_path / "tiny.json").read_text())
    for setting in ("before", "now"):
        row = results["results"][f"16|{setting}"]
        assert row["train_views_per_s"] > 0 and row["score_images_per_s"] > 0
        assert row["bank_s_per_1000"] > 0 and row["peak_rss_mb"] > 0
    # a process that needs more memory than it may take is recorded as failed, not fatal
    assert scaling.main([*argv, "--memory-gb", "0.5"]) == 0
    row = json.loads((tmp_path / "tiny.json").read_text())["results"]["16|now"]
    assert "failed" in row
    assert "did not run" in (tmp_path / "tiny.md").read_text()


def test_stored_settings_match_only_when_a_new_setting_is_at_its_default():
    budget = load("budget")
    current = json.loads(json.dumps(budget.to_dict(budget.RunConfig())))
    stored = copy.deepcopy(current)
    del stored["data"]["val_fraction"]  # a record made before the setting existed
    assert budget.same_settings(stored, current) and budget.same_settings(current, current)
    changed = copy.deepcopy(current)
    changed["data"]["val_fraction"] = 0.2
    assert not budget.same_settings(stored, changed)
    assert not budget.same_settings(current, changed)
    removed = copy.deepcopy(current)
    removed["data"]["retired_setting"] = 1
    assert not budget.same_settings(removed, current)


def test_dia_variants_dissolve_with_diffusion_whatever_the_preset_says():
    budget = load("budget")
    base = budget.apply_preset(budget.RunConfig(), "cpu")
    for spec in ("dia", "dia-t0-30", "dia-mask-none:detector.mask=none"):
        _, settings = budget.variant_settings(spec)
        assert budget.apply_settings(base, settings).detector.dissolving.dissolve == "diffusion", (
            spec
        )
    _, settings = budget.variant_settings("csi")
    assert budget.apply_settings(base, settings).detector.dissolving.dissolve == "none"
    _, settings = budget.variant_settings("x:detector.dissolve=gaussian")
    assert budget.apply_settings(base, settings).detector.dissolving.dissolve == "gaussian"


def test_every_named_variant_does_what_its_name_says():
    budget = load("budget")
    base = budget.apply_preset(budget.RunConfig(), "cpu")
    dissolve = {"dia": "diffusion", "csi": "none", "gaussian": "gaussian", "median": "median"}
    for name in budget.VARIANTS:
        _, settings = budget.variant_settings(name)
        detector = budget.apply_settings(base, settings).detector
        assert detector.dissolving.dissolve == dissolve[name.split("-")[0]], name
        assert detector.loss.shift == ("cutperm" if "cutperm" in name else "rotation"), name
    with pytest.raises(SystemExit, match="median-cutperm"):
        budget.variant_settings("median-cutprem")


def test_runs_on_another_machine_go_into_another_table(tmp_path):
    budget = load("budget")
    from dia.provenance import machine

    there = {**machine(), "cpu_model": "another processor", "amx": True}
    results = {"budget_s": 6.0, "variants": {"csi": {"runs": {"0": {"machine": there}}}}}
    (tmp_path / "synthetic.json").write_text(json.dumps(results))
    argv = ["--data", "synthetic", "--preset", "quick", "--budget", "6", "--seeds", "1"]
    argv += ["--variants", "csi", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="cpu_model 'another processor', amx True"):
        budget.main(argv)
    assert json.loads((tmp_path / "synthetic.json").read_text()) == results
    assert budget.other_machine(results, there) is None
    assert budget.other_machine({"variants": {"csi": {"runs": {"0": {}}}}}, machine()) is None


def test_runs_that_took_cpu_memory_another_way_go_into_another_table():
    budget = load("budget")
    from dia.provenance import machine

    here = {**machine(), "cpu_memory": "keep"}
    before = {k: v for k, v in here.items() if k != "cpu_memory"}  # recorded before the mode
    results = {"variants": {"csi": {"runs": {"0": {"machine": before}}}}}
    assert "cpu_memory 'system'" in budget.other_machine(results, here)
    assert budget.other_machine(results, {**here, "cpu_memory": "system"}) is None


def test_a_variant_cannot_change_the_data_that_every_variant_shares(tmp_path):
    budget = load("budget")
    argv = ["--data", "synthetic", "--preset", "quick", "--budget", "6", "--seeds", "0"]
    argv += ["--variants", "csi32:data.image_size=32", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="data settings apply to every variant"):
        budget.main(argv)
    assert not (tmp_path / "synthetic.json").exists()


def test_an_empty_crops_list_skips_the_extra_crop_passes(tmp_path):
    budget = load("budget")
    argv = ["--data", "synthetic", "--preset", "quick", "--budget", "3", "--seeds", "0"]
    argv += ["--variants", "csi", "--out", str(tmp_path), "--crops"]
    for setting in TINY:
        argv += ["--set", setting]
    assert budget.main(argv) == 0
    rows = json.loads((tmp_path / "synthetic.json").read_text())["variants"]["csi"]
    assert "encoder/cosine/shift0.0" in rows["auroc_by_score"]
    assert not any("/crop" in key for key in rows["auroc_by_score"])


def test_summary_shows_only_the_scores_every_seed_measured():
    budget = load("budget")
    run = {"test": {"auroc": 0.8, "auprc": 0.9}, "wall_s": 1.0, "steps": 2}
    run |= {"train_images_per_s": 3.0, "peak_rss_mb": 4, "curve_columns": ["seconds", "test"]}
    old = run | {"curve": [], "auroc_by_score": {"a": {"test": 0.7}}}
    new = run | {"curve": [], "auroc_by_score": {"a": {"test": 0.9}, "b": {"test": 0.6}}}
    results = {"variants": {"csi": {"runs": {"0": old, "1": new}}}}
    budget.summarise(results)
    assert results["variants"]["csi"]["auroc_by_score"] == {"a": {"test": 0.8}}


def test_split_comparison_tells_a_near_copy_validation_split_from_a_fresh_test_split():
    splits = load("splits")
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 1, 8, 8, generator=g)  # what every normal image shares
    train = (base + 0.1 * torch.rand(60, 1, 8, 8, generator=g)).clamp(0, 1)
    near = (train[:20] + 0.005 * torch.rand(20, 1, 8, 8, generator=g)).clamp(0, 1)
    fresh = (base + 0.4 * torch.rand(20, 1, 8, 8, generator=g)).clamp(0, 1)  # new variation
    abnormal = torch.rand(20, 1, 8, 8, generator=g) * 0.2  # low contrast
    labels = torch.tensor([0] * 20 + [1] * 20)
    data = ImageData(
        "toy", train, torch.cat([fresh, abnormal]), labels, torch.cat([near, abnormal]), labels
    )
    results = splits.measure(data)
    close = results["closeness"]
    assert close["val normal"]["below_train_q10"] == 0.0
    assert close["val normal"]["quantiles"][0] > 0.99 > close["test normal"]["quantiles"][-1]
    assert close["test normal"]["below_train_q10"] > 0.5
    assert 0.05 <= close["train (leave-one-out)"]["below_train_q10"] <= 0.15
    for row in results["auroc"].values():
        assert set(row) == {"val", "test"} and all(0 <= v <= 1 for v in row.values())
    assert results["auroc"]["standardised-pixel kNN, k=1, 8 px"]["val"] == 1.0
    assert results["auroc"]["low contrast (minus the pixels' standard deviation)"]["test"] == 1.0
    assert "| val normal | 20 |" in splits.markdown({"dataset": "toy", **results})


def test_map_localisation_measures_known_maps():
    maps_bench = load("maps")
    cores = torch.zeros(2, 8, 8, dtype=torch.bool)
    cores[0, 2, 2] = cores[1, 5:7, 5:7] = True
    perfect = cores.float()
    result = maps_bench.localisation(perfect, cores)
    assert result["peak_within_1px"] == 1.0 and result["peak_distance_px_median"] == 0
    assert result["pixel_auroc_mean"] == 1.0
    wrong = torch.zeros(2, 8, 8)
    wrong[:, 0, 7] = 1.0  # peaks far from both nodules
    result = maps_bench.localisation(wrong, cores)
    assert result["peak_within_2px"] == 0.0 and result["peak_distance_px_median"] == 5
    distances = maps_bench.distance_to(cores, torch.tensor([2, 0]), torch.tensor([4, 0]))
    assert distances.tolist() == [2, 5]
    # the detail map follows the fine detail, wherever it is
    images = torch.full((1, 1, 16, 16), 0.5)
    images[0, 0, 11, 4] = 1.0
    detail = maps_bench.detail_map(images, 4, 2)
    assert divmod(int(detail.flatten().argmax()), 16) in {(r, c) for r in (9, 10, 11, 12)
                                                         for c in (2, 3, 4, 5)}  # fmt: skip


def test_version_bench_scores_with_each_versions_own_code(tmp_path):
    """Both arms run in processes of their own, each importing dia from the folder it names;
    here the 'before' folder is a copy whose presets score 1 shift x 1 sample."""
    versions = load("score_versions")
    before = tmp_path / "before" / "dia"
    src = Path(__file__).parents[1] / "src" / "dia"
    shutil.copytree(src, before, ignore=shutil.ignore_patterns("__pycache__"))
    presets = before / "presets.py"
    presets.write_text(
        presets.read_text().replace(
            '"quick": {"detector": {"max_seconds": None}}',
            '"quick": {"detector": {"max_seconds": None}, "score": {"samples": 1, "shifts": 1}}',
        )
    )
    argv = ["--before-src", str(before.parent), "--presets", "quick", "--cases", "16x1x4"]
    argv += ["--rounds", "1", "--repeats", "1", "--out", str(tmp_path), "--name", "tiny"]
    assert versions.main(argv) == 0
    (row,) = json.loads((tmp_path / "tiny.json").read_text())["rows"]
    assert row["before"]["passes"] == 1 and row["now"]["passes"] == 2 * 10
    assert row["before"]["images_per_s"] > 0 and row["now"]["images_per_s"] > 0
    assert "| quick | 16 px, 1 channel | 4 | 1 |" in (tmp_path / "tiny.md").read_text()


def test_dissolver_bench_measures_every_dissolver_at_every_timestep(tmp_path):
    dissolvers = load("dissolvers")
    argv = ["--data", "synthetic", "--label", "tiny", "--image-size", "16", "--seconds", "1"]
    argv += ["--set", "resolution=16", "--set", "block_out_channels=[8, 16]"]
    argv += ["--images", "32", "--timesteps", "30", "100", "--device", "cpu"]
    argv += ["--variant", "eps:prediction=epsilon,train_t_max=null"]
    assert dissolvers.main([*argv, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "dissolvers-tiny.json").read_text())
    assert set(results["dissolvers"]) == {"median", "gaussian", "diffusion-1s", "eps-1s"}
    eps = results["trained"]["eps-1s"]["config"]
    assert (eps["prediction"], eps["train_t_max"], eps["resolution"]) == ("epsilon", None, 16)
    default = results["trained"]["diffusion-1s"]["config"]
    assert (default["prediction"], default["train_t_max"]) == ("sample", 200)
    diffusion = results["dissolvers"]["diffusion-1s"]
    assert diffusion["t"] == [30, 100] and len(diffusion["denoise_mse_ratio"]) == 2
    assert results["measured_on"] == {"split": "val", "normal_images": 32}
    assert "| diffusion-1s | 100 |" in (tmp_path / "dissolvers-tiny.md").read_text()


def test_dissolver_bench_measures_one_model_dissolving_several_ways(tmp_path):
    dissolvers = load("dissolvers")
    argv = ["--data", "synthetic", "--label", "ways", "--image-size", "16", "--seconds", "1"]
    argv += ["--set", "resolution=16", "--set", "block_out_channels=[8, 16]"]
    argv += ["--images", "16", "--timesteps", "100", "--device", "cpu", "--noise-draws", "0", "2"]
    assert dissolvers.main([*argv, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "dissolvers-ways.json").read_text())
    assert set(results["trained"]) == {"diffusion-1s"}  # one model, measured twice
    measured = results["dissolvers"]
    assert {"diffusion-1s-draws0", "diffusion-1s-draws2"} <= set(measured)
    first, second = (measured[f"diffusion-1s-draws{k}"] for k in (0, 2))
    assert first["denoise_mse_ratio"] == second["denoise_mse_ratio"]  # the same weights
    assert first["detail_ratio"] != second["detail_ratio"]


def test_scoring_parts_bench_times_each_part_against_what_it_replaced(tmp_path):
    parts = load("scoring_parts")
    argv = ["--images", "8", "--width", "4", "--repeats", "1", "--out", str(tmp_path)]
    assert parts.main([*argv, "--name", "tiny"]) == 0
    rows = json.loads((tmp_path / "tiny.json").read_text())["rows"]
    names = [r["part"].split(" ")[0] for r in rows]
    assert names == ["hue", "crop,", "crop,", "network", "network"]
    for row in rows:
        assert row["before_per_s"] > 0 and row["now_per_s"] > 0
    # the same functions, faster: to float rounding, or bf16's in the network where it is used
    assert all(row["max_abs_diff"] < 1e-4 for row in rows[:3])
    assert all(row["max_abs_diff"] < 0.05 for row in rows[3:])
