import math

import pytest
import torch

from dia.optim import lr_factor, make_optimizer


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


def test_trainer_names_an_unknown_schedule_before_training():
    from dia.config import DetectorConfig
    from dia.training import DetectorTrainer

    config = DetectorConfig(dissolve="none", schedule="linear")
    with pytest.raises(ValueError, match="schedule='linear'"):
        DetectorTrainer(config, torch.rand(4, 1, 8, 8), device=torch.device("cpu"))
