"""Settings grouped by concern (:mod:`dia.config`, :mod:`dia.config_tree`): flat names, the
flat layout of earlier versions, and checks made once, where a config is built."""

import json

import pytest

from dia.config import (
    DataConfig,
    DetectorConfig,
    RunConfig,
    from_dict,
    replace_settings,
    to_dict,
    with_settings,
)
from dia.config_tree import flat_paths, flat_values, nest
from dia.pipeline import read_config
from dia.presets import apply_preset

# config.json as ``dia run --data synthetic --budget none --epochs 2 --width 4 ...`` wrote it
# before the settings were grouped.
FLAT_RUN = (
    '{"data": {"spec": "synthetic", "normal_class": 0, "image_size": null, "channels": null, '
    '"split_seed": 0, "test_fraction": 0.2, "val_fraction": 0.0, "contamination": 0.0, '
    '"max_train": null, "cache_dir": null, "dicom_window": null, "dicom_studies": true, '
    '"synthetic_train": 200, "synthetic_val": 50, "synthetic_test": 100}, '
    '"diffusion": {"resolution": 32, "block_out_channels": [32, 64, 64], '
    '"layers_per_block": 1, "num_train_timesteps": 1000, "beta_start": 0.0001, '
    '"beta_end": 0.02, "epochs": 1, "max_seconds": 90.0, "batch_size": 64, "lr": 0.0002, '
    '"prediction": "sample", "schedule": "linear", "loss": "mse", "train_t_max": 200}, '
    '"detector": {"dissolve": "diffusion", "t_min": 30, "t_max": 100, "shift": "rotation", '
    '"mask": "shifted_removed", "width": 4, "stem_stride": 0, "input_norm": "fixed", '
    '"proj_dim": 128, "temperature": 0.5, "batch_size": 16, "epochs": 2, '
    '"max_seconds": null, "optimizer": "adam", "lr": 0.001, "weight_decay": 1e-06, '
    '"warmup_epochs": 0, "warmup_peak": 1.0, "schedule": "cosine", '
    '"contrastive_per": "anchor", "crop_scale_min": 0.08, "jitter_strength": 0.4, '
    '"jitter_prob": 0.8, "gray_prob": 0.2, "dissolve_cache_steps": 2, '
    '"dissolve_fraction": 1.0, "dissolve_start": 0.0, "ema": 0.0}, "score": {"kind": "csi", '
    '"samples": 1, "shifts": 2, "crop_scale": 0.54, "features": "encoder", "cosine": false, '
    '"shift_weight": 0.0, "neighbours": 1, "batch_size": 256}, "seed": 0, "budget_s": null, '
    '"device": "auto", "precision": "auto", "preset": "quick"}'
)


def test_a_config_json_of_the_flat_layout_reads_into_the_groups(tmp_path):
    (tmp_path / "config.json").write_text(FLAT_RUN)
    config = read_config(tmp_path)
    assert config.detector.network.width == 4 and config.detector.optim.epochs == 2
    assert config.detector.dissolving.dissolve_cache_steps == 2
    assert config.detector.optim.max_seconds is None and config.detector.loss.shift == "rotation"
    assert config.data.synthetic.train == 200 and config.data.dicom.window is None
    assert config.data.dicom.studies is True and config.score.samples == 1
    # every setting where it was, by its flat name
    old = json.loads(FLAT_RUN)
    new = json.loads(json.dumps(to_dict(config)))  # tuples as JSON holds them: lists
    assert flat_values(DetectorConfig, new["detector"]) == old["detector"]
    assert flat_values(DataConfig, new["data"]) == old["data"]
    assert new["diffusion"].pop("noise_draws") == 0  # a later setting: as the run was made
    assert {k: new[k] for k in ("diffusion", "score", "seed", "budget_s")} == {
        k: old[k] for k in ("diffusion", "score", "seed", "budget_s")
    }
    assert from_dict(RunConfig, new) == config  # and back (noise_draws: its default)


def test_flat_names_are_the_names_before_the_groups():
    old = json.loads(FLAT_RUN)
    assert list(flat_paths(DetectorConfig)) == sorted(
        old["detector"], key=list(flat_paths(DetectorConfig)).index
    )
    assert set(flat_paths(DetectorConfig)) == set(old["detector"])
    assert set(flat_paths(DataConfig)) == set(old["data"])
    assert flat_paths(DataConfig)["dicom_window"] == ("dicom", "window")
    assert flat_paths(DetectorConfig)["t_min"] == ("dissolving", "t_min")


def test_settings_are_set_by_flat_name_or_by_path():
    a = replace_settings(DetectorConfig(), width=8, t_min=0)
    b = replace_settings(DetectorConfig(), **{"network.width": 8, "dissolving.t_min": 0})
    assert a == b and a.network.width == 8 and a.dissolving.t_min == 0
    run = with_settings(RunConfig(), {"detector.lr": 0.01, "data.dicom_studies": False})
    assert run.detector.optim.lr == 0.01 and run.data.dicom.studies is False
    with pytest.raises(ValueError, match="unknown DetectorConfig setting 'widht'"):
        replace_settings(DetectorConfig(), widht=8)
    with pytest.raises(ValueError, match="given twice"):
        nest(DetectorConfig, {"width": 8, "network": {"width": 4}})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"width": 0}, "width=0; expected at least 1"),
        ({"stem_stride": 3}, "stem_stride=3; expected a power of two"),
        ({"t_min": 50, "t_max": 10}, "t_min=50, t_max=10; need 0 <= min <= max"),
        ({"lr": 0.0}, "lr=0.0; expected more than 0"),
        ({"warmup_peak": 0.5}, "warmup_peak=0.5; expected at least 1"),
        ({"jitter_prob": 2.0}, r"jitter_prob=2.0; expected a fraction in \[0, 1\]"),
        ({"contrastive_per": "x"}, "contrastive_per='x'; expected one of"),
        ({"ema": 1.0}, "ema=1.0; expected 0 \\(off\\)"),
        ({"optimizer": "x"}, "optimizer='x'; expected one of"),
    ],
)
def test_a_detector_config_is_checked_as_it_is_built(settings, message):
    with pytest.raises(ValueError, match=message):
        replace_settings(DetectorConfig(), **settings)


def test_a_run_config_checks_what_needs_two_sections():
    with pytest.raises(ValueError, match="score shifts=5; expected at most 4"):
        with_settings(apply_preset(RunConfig(), "cpu"), {"score.shifts": 5})
    # several settings at once are checked together, once: t_min above the old t_max is fine
    run = with_settings(RunConfig(), {"detector.t_min": 200, "detector.t_max": 300})
    assert run.detector.dissolving.t_min == 200


def test_commands_that_read_a_run_take_no_setting_flags():
    """evaluate, maps, score and resume work with a run's saved settings: the only settings
    they take are how an external test set is read (--data and its reading)."""
    from dia.cli_args import EXTERNAL_SETTINGS, build_parser

    parser = build_parser()
    for name in ("evaluate", "maps", "score", "resume"):
        dests = {a.dest for a in parser.commands[name]._actions if "." in a.dest}
        assert dests <= set(EXTERNAL_SETTINGS), name
        usage = parser.commands[name].format_help()
        assert "--width" not in usage and "--config" not in usage and "--preset" not in usage
