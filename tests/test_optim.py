import math

import pytest
import torch

from dia.config import replace_settings
from dia.optim import WeightAverage, lr_factor, make_optimizer


def test_cosine_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0.5, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_constant_schedule_keeps_the_rate_after_warm_up():
    assert lr_factor(0.05, 0.1, "constant") == pytest.approx(0.5)
    assert [lr_factor(p, 0.1, "constant") for p in (0.1, 0.6, 1.0)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0.5, 0.0, "linear")


@pytest.mark.parametrize("name", ["adam", "sgd", "lars"])
def test_every_optimizer_lowers_a_quadratic(name):
    w = torch.nn.Parameter(torch.full((3, 3), 2.0))
    opt = make_optimizer(name, [w], lr=0.1 if name != "lars" else 1.0, weight_decay=0.0)
    before = float((w.detach() ** 2).sum())
    for _ in range(20):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < before


def test_an_unknown_schedule_is_refused_where_the_settings_are_made():
    from dia.config import DetectorConfig

    with pytest.raises(ValueError, match="schedule='linear'"):
        replace_settings(DetectorConfig(), dissolve="none", schedule="linear")


def test_the_weight_average_follows_the_weights_with_its_decay():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        net[0].weight.fill_(0.0)
    average = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    net[1].num_batches_tracked.fill_(7)
    average.update(net)  # early on the decay is (1 + 1) / (10 + 1), not 0.9
    assert torch.allclose(average.net[0].weight, torch.full((2, 2), 9 / 11))
    assert int(average.net[1].num_batches_tracked) == 7  # integer buffers are copied
    for _ in range(200):
        average.update(net)
    with torch.no_grad():
        net[0].weight.fill_(2.0)
    average.update(net)  # now the full decay: 0.9 of the average, 0.1 of the weights
    assert torch.allclose(average.net[0].weight, torch.full((2, 2), 1.1), atol=1e-5)
    assert not any(p.requires_grad for p in average.net.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, decay=1.0)


def test_training_with_a_weight_average_returns_the_average():
    from dia.config import DetectorConfig
    from dia.training import DetectorTrainer

    images = torch.rand(16, 1, 8, 8)
    base = replace_settings(
        DetectorConfig(), dissolve="none", width=4, batch_size=8, epochs=2, max_seconds=None
    )
    seen = []
    plain, _ = DetectorTrainer(base, images, device=torch.device("cpu")).train(progress=False)
    averaged, history = DetectorTrainer(
        replace_settings(base, ema=0.5), images, device=torch.device("cpu")
    ).train(progress=False, callback=lambda net, s: seen.append(net), callback_every_s=0.0)
    assert history["steps"] == 4
    assert not averaged.training
    # the same seed gives the same last weights; the average of them lies elsewhere
    pairs = zip(plain.parameters(), averaged.parameters(), strict=True)
    assert not all(torch.allclose(last, mean) for last, mean in pairs)
    assert seen and all(net is averaged for net in seen)  # the curve measures the average
    with pytest.raises(ValueError, match="ema"):
        DetectorTrainer(replace_settings(base, ema=-0.1), images, device=torch.device("cpu"))


def test_the_paper_presets_learning_rate_peaks_at_ten_times_its_base():
    """CSI's warm-up multiplier 10: from the base rate to ten times it, then the decay."""
    from dia.config import RunConfig
    from dia.optim import lr_factor
    from dia.presets import apply_preset

    cfg = apply_preset(RunConfig(), "paper").detector
    warmup = cfg.optim.warmup_epochs / cfg.optim.epochs
    rates = [
        cfg.optim.lr * lr_factor(p / 1000, warmup, cfg.optim.schedule, cfg.optim.warmup_peak)
        for p in range(1001)
    ]
    assert rates[0] == pytest.approx(cfg.optim.lr)  # 0.1 at the start, not 0
    assert max(rates) == pytest.approx(10 * cfg.optim.lr)  # 1.0 at the end of the warm-up
    assert rates.index(max(rates)) == round(warmup * 1000) and rates[-1] == pytest.approx(0)
    # the other presets warm up from 0 to their rate, as before
    assert lr_factor(0.0, 0.1, "cosine") == 0.0 and lr_factor(0.1, 0.1, "cosine") == 1.0
    assert cfg.loss.contrastive_per == "view"
