"""Checkpoints: an interrupted detector or diffusion training continues to exactly the
uninterrupted result."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from dia import checkpoint as ckpt
from dia.checkpoint import Checkpointing, StopRequests, TrainingInterrupted
from dia.config import DetectorConfig, DiffusionConfig, replace_settings
from dia.diffusion import DiffusionModel, train_diffusion
from dia.diffusion import train as diffusion_train
from dia.dissolve import build_dissolver
from dia.training import DetectorTrainer

# Gaussian dissolving from a cache (the cache's draws and the flips use the trainer's generator,
# the augmentations torch's), Adam moments and a weight average: every state a checkpoint keeps.
CONFIG = replace_settings(
    DetectorConfig(),
    dissolve="gaussian",
    width=4,
    batch_size=8,
    epochs=2,
    dissolve_cache_steps=2,
    ema=0.9,
)
CPU = torch.device("cpu")


def _images() -> torch.Tensor:
    return torch.rand(48, 1, 16, 16, generator=torch.Generator().manual_seed(3))


def _trainer(config: DetectorConfig = CONFIG) -> DetectorTrainer:
    blur = build_dissolver(config.dissolving.dissolve)
    return DetectorTrainer(config, _images(), dissolver=blur, device=CPU, seed=5)


def _weights(net) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted():
    net, history = _trainer().train(progress=False)
    assert history["steps"] == 12  # 2 epochs of 48 // 8 steps
    return _weights(net), history


def _fail_at(monkeypatch, step: int, action) -> None:
    """Make the trainer's ``step``-th step (counting from 1) run ``action`` first."""
    original = DetectorTrainer._step
    calls = {"n": 0}

    def counted(self, *args):
        calls["n"] += 1
        if calls["n"] == step:
            action()
        return original(self, *args)

    monkeypatch.setattr(DetectorTrainer, "_step", counted)


def test_ctrl_c_saves_and_resuming_gives_the_uninterrupted_weights(
    uninterrupted, tmp_path, monkeypatch
):
    folder = tmp_path / "ckpt"
    before = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN under nohup
    _fail_at(monkeypatch, 9, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as stop:
        _trainer().train(progress=False, checkpoint=Checkpointing(folder, every_s=None))
    # the step that was running when the signal came is finished, the next one is not begun
    assert stop.value.step == 9 and stop.value.folder == folder
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == [ckpt.META_FILE, ckpt.STATE_FILE]
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    assert meta["step"] == 9 and meta["next_index"] == 3 and len(meta["history"]["loss"]) == 9
    assert "optim.0.exp_avg" in load_file(str(folder / ckpt.STATE_FILE))  # no pickle: safetensors

    net, history = _trainer().train(progress=False, checkpoint=Checkpointing(folder, resume=True))
    weights, full = uninterrupted
    assert history["steps"] == 12 and history["resumed_at_step"] == 9
    assert history["loss"] == full["loss"]
    assert _same(_weights(net), weights)


def test_a_crash_loses_only_the_steps_since_the_last_checkpoint(
    uninterrupted, tmp_path, monkeypatch
):
    folder = tmp_path / "ckpt"

    def crash():
        raise OSError("the machine went away")

    _fail_at(monkeypatch, 7, crash)
    with pytest.raises(OSError):
        # a checkpoint after every step
        _trainer().train(progress=False, checkpoint=Checkpointing(folder, every_s=0))
    monkeypatch.undo()
    meta = ckpt.read_meta(folder)
    assert meta["step"] == 6 and meta["next_index"] == 0  # the second epoch's start
    net, history = _trainer().train(progress=False, checkpoint=Checkpointing(folder, resume=True))
    assert history["resumed_at_step"] == 6
    assert _same(_weights(net), uninterrupted[0])


def test_a_checkpoint_of_the_first_format_is_resumed(uninterrupted, tmp_path, monkeypatch):
    """Checkpoints are now saved as every component is (config.json, model.safetensors, the
    weights' digest); one left by an earlier dia (state.json, state.safetensors) resumes."""
    from safetensors.torch import save_file

    folder = tmp_path / "ckpt"
    _fail_at(monkeypatch, 9, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted):
        _trainer().train(progress=False, checkpoint=Checkpointing(folder, every_s=None))
    monkeypatch.undo()
    saved = json.loads((folder / ckpt.META_FILE).read_text())
    assert saved["format"] == ckpt.FORMAT and saved["format_version"] == 2
    assert "weights_digest" in saved
    tensors, meta = ckpt.load(folder)
    for name in (ckpt.META_FILE, ckpt.STATE_FILE):
        (folder / name).unlink()
    save_file(tensors, str(folder / ckpt.OLD_STATE_FILE))
    old = {"format": ckpt.FORMAT, "version": 1, **meta}
    (folder / ckpt.OLD_META_FILE).write_text(json.dumps(old))
    assert ckpt.exists(folder) and ckpt.read_meta(folder)["step"] == 9
    net, history = _trainer().train(progress=False, checkpoint=Checkpointing(folder, resume=True))
    assert history["resumed_at_step"] == 9
    assert _same(_weights(net), uninterrupted[0])


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_the_other_optimizers_resume_exactly(optimizer, tmp_path, monkeypatch):
    config = replace_settings(CONFIG, optimizer=optimizer, lr=0.1, ema=0.0)
    weights = _weights(_trainer(config).train(progress=False)[0])
    folder = tmp_path / "ckpt"
    _fail_at(monkeypatch, 5, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted):
        _trainer(config).train(progress=False, checkpoint=Checkpointing(folder, every_s=None))
    monkeypatch.undo()
    net, _ = _trainer(config).train(progress=False, checkpoint=Checkpointing(folder, resume=True))
    assert _same(_weights(net), weights)


def test_the_training_seconds_before_count_against_a_time_limit(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    limited = replace_settings(CONFIG, max_seconds=3600.0)
    _fail_at(monkeypatch, 4, lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(TrainingInterrupted):
        _trainer(limited).train(progress=False, checkpoint=Checkpointing(folder, every_s=None))
    monkeypatch.undo()
    tensors, meta = ckpt.load(folder)
    assert meta["max_seconds"] == 3600.0
    meta["train_s"] = 3600.0  # as if the first session had used up the time
    ckpt.save(folder, tensors, {k: v for k, v in meta.items() if k not in ("format", "version")})
    _, history = _trainer(limited).train(
        progress=False, checkpoint=Checkpointing(folder, resume=True)
    )
    assert history["steps"] == 4  # nothing more to train


def test_a_checkpoint_of_another_training_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    _fail_at(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted):
        _trainer().train(progress=False, checkpoint=Checkpointing(folder, every_s=None))
    monkeypatch.undo()
    other = replace_settings(CONFIG, lr=0.01)
    with pytest.raises(ValueError, match="another training.*config"):
        _trainer(other).train(progress=False, checkpoint=Checkpointing(folder, resume=True))
    (folder / ckpt.STATE_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read"):
        _trainer().train(progress=False, checkpoint=Checkpointing(folder, resume=True))


def test_a_second_ctrl_c_interrupts_at_once():
    stops = StopRequests()
    before = signal.getsignal(signal.SIGINT)
    with stops.installed():
        signal.raise_signal(signal.SIGINT)
        assert stops.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_the_authors_contrastive_weighting_divides_by_every_view():
    """Over every view (the authors' DIA), the first step's contrastive loss is that over the
    anchors times 2/3: three views an image, two of them anchors."""
    one_step = replace_settings(CONFIG, epochs=1, max_seconds=None)
    _, anchor = _trainer(one_step).train(progress=False)
    _, view = _trainer(replace_settings(one_step, contrastive_per="view")).train(progress=False)
    assert view["contrastive"][0] == pytest.approx(anchor["contrastive"][0] * 2 / 3, rel=1e-5)
    assert view["shift"][0] == pytest.approx(anchor["shift"][0], rel=1e-5)


# 30 images in batches of 7: 5 steps an epoch, the last one of 2 images.
DIFFUSION = DiffusionConfig(
    resolution=16, block_out_channels=(8, 16), epochs=3, batch_size=7, max_seconds=None
)


def _diffusion(config: DiffusionConfig = DIFFUSION, checkpoint=None, log=None):
    """A diffusion model trained on 30 images, and its history."""
    images = torch.rand(30, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    model = DiffusionModel(config, 1, seed=2)
    history = train_diffusion(
        model, images, config, device="cpu", seed=2, progress=False, log=log, checkpoint=checkpoint
    )
    return _weights(model), history


@pytest.fixture(scope="module")
def uninterrupted_diffusion():
    weights, history = _diffusion()
    assert history["steps"] == 15 and len(history["loss"]) == 3
    return weights, history


def _diffusion_fails_at(monkeypatch, step: int, action) -> None:
    """Make the diffusion training's ``step``-th step (counting from 1) run ``action`` first."""
    original, calls = diffusion_train._step, {"n": 0}

    def counted(*args):
        calls["n"] += 1
        if calls["n"] == step:
            action()
        return original(*args)

    monkeypatch.setattr(diffusion_train, "_step", counted)


def test_an_interrupted_diffusion_training_resumes_to_the_uninterrupted_weights(
    uninterrupted_diffusion, tmp_path, monkeypatch
):
    folder = tmp_path / "ckpt"
    saving = Checkpointing(folder, every_s=None, meta={"command": "train-diffusion"})
    _diffusion_fails_at(monkeypatch, 8, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as stop:
        _diffusion(checkpoint=saving)
    assert stop.value.step == 8 and stop.value.training == "diffusion model"
    monkeypatch.undo()
    meta = ckpt.read_meta(folder)  # the detector's checks hold for it too
    assert meta["command"] == "train-diffusion" and meta["step"] == 8
    assert meta["next_index"] == 3 and len(meta["history"]["loss"]) == 1  # epoch 2, step 4
    assert "optim.0.exp_avg_sq" in load_file(str(folder / ckpt.STATE_FILE))

    lines = []
    saving.resume = True
    weights, history = _diffusion(checkpoint=saving, log=lines.append)
    full_weights, full = uninterrupted_diffusion
    assert history["steps"] == 15 and history["resumed_at_step"] == 8
    # the second epoch's mean loss sums steps of both sessions
    assert history["loss"] == full["loss"] and history["epochs"] == full["epochs"]
    assert [line.split()[2] for line in lines] == ["2/3", "3/3"]
    assert _same(weights, full_weights)


def test_a_crashed_diffusion_training_resumes_from_its_last_checkpoint(
    uninterrupted_diffusion, tmp_path, monkeypatch
):
    folder = tmp_path / "ckpt"

    def crash():
        raise OSError("the machine went away")

    _diffusion_fails_at(monkeypatch, 6, crash)
    with pytest.raises(OSError):
        _diffusion(checkpoint=Checkpointing(folder, every_s=0))  # one before every step
    monkeypatch.undo()
    meta = ckpt.read_meta(folder)
    assert meta["step"] == 5 and meta["next_index"] == 0  # the second epoch's start
    weights, history = _diffusion(checkpoint=Checkpointing(folder, resume=True))
    assert history["resumed_at_step"] == 5
    assert _same(weights, uninterrupted_diffusion[0])


def test_a_diffusion_checkpoint_of_another_training_or_time_spent_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    limited = replace_settings(DIFFUSION, max_seconds=3600.0)
    _diffusion_fails_at(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(TrainingInterrupted):
        _diffusion(limited, checkpoint=Checkpointing(folder, every_s=None))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="another training.*lr"):
        _diffusion(
            replace_settings(limited, lr=1e-3), checkpoint=Checkpointing(folder, resume=True)
        )
    with pytest.raises(ValueError, match="another training"):  # a detector's checkpoint
        _trainer().train(progress=False, checkpoint=Checkpointing(folder, resume=True))
    tensors, meta = ckpt.load(folder)
    meta["train_s"] = 3600.0  # as if the first session had used up the time
    ckpt.save(folder, tensors, {k: v for k, v in meta.items() if k not in ("format", "version")})
    _, history = _diffusion(limited, checkpoint=Checkpointing(folder, resume=True))
    assert history["steps"] == 3 and history["seconds"] >= 3600.0  # nothing more to train


def test_a_checkpoint_keeps_the_flags_among_its_timings(tmp_path):
    """A run that reused its diffusion model records that among its timings; its detector's
    checkpoint must still be read back."""
    meta = {"step": 0, "next_index": 0, "train_s": 0.0, "optimizer_groups": [{}], "history": {}}
    timings = {"data_s": 1.5, "diffusion_reused": True}
    ckpt.save(tmp_path / "ckpt", {"x": torch.zeros(1)}, {**meta, "timings": timings})
    assert ckpt.read_meta(tmp_path / "ckpt")["timings"] == timings
