"""Named settings: ``quick`` (minutes on a laptop CPU), ``cpu`` (30 minutes on a 2-core CPU)
and ``paper`` (the authors' recipe, for a GPU)."""

from __future__ import annotations

import dataclasses

from .config import NUM_SHIFTS, RunConfig

PRESETS: dict[str, dict] = {
    # The dataclass defaults (a 420 s budget, width-16 ResNet-18, 32 px) with detector
    # training given whatever the budget leaves: a first result in minutes on a 2-core CPU.
    # Both CPU presets take the stem's stride from the image size (the first stage at 32 to
    # 63 px): on knee-oa the stride scored within 0.02 of CIFAR's stem at 64 px with training
    # steps 2.9 times as fast, and at 128 px it trained 7.7 epochs in 180 s where CIFAR's stem
    # trained 0.8. quick scores the first two shifts with 10 test-time samples each: with its
    # dot product that scored as all four shifts did on the validation splits of
    # PneumoniaMNIST, knee-oa and the synthetic set, at half the cost (bench/RESULTS.md, "Score
    # settings and the stem").
    "quick": {"detector": {"max_seconds": None}},
    # A 30-minute budget on a 2-core CPU for data loading, detector training and feature bank
    # (and diffusion training and dissolve cache with --dissolve diffusion), with detector
    # training taking whatever is left at a constant learning rate. Chosen on PneumoniaMNIST's
    # validation split (bench/results/pneumoniamnist*.json). 30 minutes at a constant rate
    # gave the highest mean validation AUROC of every setting tried: 0.948 +- 0.011 over three
    # seeds against 0.940 +- 0.005 for the earlier preset (10 minutes, cosine schedule; paired
    # +0.009 +- 0.010, ahead on two seeds of three: pneumoniamnist-1800s.json,
    # pneumoniamnist-600s.json), while 30 minutes under the cosine schedule, or 10 at a
    # constant rate, did not beat the earlier preset (-1800s.json, -search.json). No dissolving,
    # since plain CSI scored at least as well as every dissolving variant tried (diffusion at
    # three timestep ranges, with 60, 180 and 360 s of diffusion training and without the loss
    # mask; Gaussian and median blur); the encoder features with cosine and no shift term
    # scored best; colour jitter 0.4 beat 0, 0.2 and 0.6; the fixed input beat per-image
    # standardisation; width 32 beat 16 and 64; a warm-up and averaging the score over 5 or 20
    # neighbours did not help, nor did 64 images a step, Adam at 3e-4 or 3e-3, 32 px, or a
    # test-time crop area of 0.3 or 1.0 (pneumoniamnist-search.json, -s32.json). All of that
    # was measured in fp32 on a CPU without AMX; on a CPU with AMX, where bf16 bought CSI 2.2
    # to 3.1 times the steps, the same preset gave CSI test 0.917 +- 0.010 and val
    # 0.958 +- 0.003 over three seeds; DIA stayed behind it. With cut-permutation shifts
    # instead of rotation (three seeds each) DIA led CSI on test (+0.011 +- 0.007) but not on
    # validation (+0.003 +- 0.006), and both fell far behind rotation CSI on test while level
    # with it on validation, so rotation stays. Dissolving only in the last fifth of training
    # (--dissolve-start 0.8) was the best DIA (test 0.895 +- 0.014, val 0.953 +- 0.007) and
    # still behind CSI on both; median blur started as late was behind it on every seed
    # (pneumoniamnist-amx.json).
    "cpu": {
        "budget_s": 1800.0,
        "diffusion": {"max_seconds": 180.0},
        "detector": {
            "dissolve": "none",
            "width": 32,
            "epochs": 1000,
            "max_seconds": None,
            "schedule": "constant",
        },
        # All four shifts: with the cosine, two lost 0.018 and 0.015 on knee-oa's and the
        # synthetic set's validation splits and gained nothing on PneumoniaMNIST's
        # (bench/results/scoring.md); a 30-minute run can afford the passes.
        "score": {"features": "encoder", "cosine": True, "shift_weight": 0.0, "shifts": 4},
    },
    # The authors' settings (docs/method.md, section 3): ResNet-18 at full width, 32 images a step,
    # LARS at lr 0.1 warmed up to 1.0 over 10 epochs (CSI's multiplier 10), the contrastive
    # loss over every view, up to 1000 epochs, no time limit. Meant for a GPU: on a 2-core CPU
    # it would take days.
    "paper": {
        "budget_s": None,
        "diffusion": {"epochs": 100, "max_seconds": None},
        "detector": {
            "width": 64,
            "batch_size": 32,
            "epochs": 1000,
            "max_seconds": None,
            "optimizer": "lars",
            "lr": 0.1,
            "warmup_epochs": 10,
            "warmup_peak": 10.0,
            "contrastive_per": "view",
            "dissolve_cache_steps": 0,
        },
        "score": {
            "features": "projection",
            "cosine": False,
            "shift_weight": 1.0,
            "samples": 10,
            "shifts": NUM_SHIFTS,
        },
    },
}


def apply_preset(config: RunConfig, name: str) -> RunConfig:
    """A copy of ``config`` with the preset's settings applied."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}; expected one of {sorted(PRESETS)}")
    for key, values in PRESETS[name].items():
        if isinstance(values, dict):  # a section: DataConfig, DetectorConfig, ...
            values = dataclasses.replace(getattr(config, key), **values)
        config = dataclasses.replace(config, **{key: values})
    return dataclasses.replace(config, preset=name)
