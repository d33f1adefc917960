"""Optimisers, the learning-rate schedule and the weight average of detector training."""

from __future__ import annotations

import copy
import math

import torch

from .config import OPTIMIZERS, SCHEDULES


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017), as SimCLR and CSI use.

    Parameters with one dimension (biases, norm scales) get neither weight decay nor the
    trust ratio, the usual exclusion.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = p.norm(), grad.norm()
                    if p_norm > 0 and g_norm > 0:
                        grad = grad.mul(group["trust_coefficient"] * p_norm / g_norm)
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = grad.clone()
                else:
                    state["momentum"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum"], alpha=-group["lr"])
        return loss


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """'adam', 'sgd' (momentum 0.9) or 'lars' with learning rate ``lr``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r}; expected one of {OPTIMIZERS}")


def lr_factor(progress: float, warmup: float, schedule: str = "cosine", peak: float = 1.0) -> float:
    """Linear warm-up over the first ``warmup`` fraction of training, then ``cosine`` decay to
    0 or a ``constant`` rate, from ``peak``. With ``peak`` 1 the warm-up starts from 0; above
    1 it goes from 1 to ``peak``, as CSI's warm-up with its multiplier does (10 in its recipe:
    the base learning rate is where warm-up starts, ten times it where it ends)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")
    if not peak >= 1.0:
        raise ValueError(f"warmup peak={peak}; expected at least 1")
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        start = 0.0 if peak == 1.0 else 1.0
        return start + (peak - start) * progress / warmup
    if schedule == "constant":
        return peak
    rest = (progress - warmup) / max(1.0 - warmup, 1e-8)
    return peak * 0.5 * (1.0 + math.cos(math.pi * rest))


class WeightAverage:
    """An exponential moving average of a network's weights (parameters and float buffers,
    such as batch-norm statistics), updated after every optimiser step.

    ``decay`` in (0, 1): each update keeps ``decay`` of the average and adds ``1 - decay`` of
    the current weights. Early on the decay is lowered to ``(1 + n) / (10 + n)`` after ``n``
    updates, so that the average is not dominated by the random initial weights.
    """

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight-average decay={decay}; expected 0 < decay < 1")
        self.decay, self.updates = decay, 0
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        self.updates += 1
        keep = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine = self.net.state_dict()
        for name, value in net.state_dict().items():
            if value.is_floating_point():
                mine[name].lerp_(value, 1.0 - keep)
            else:
                mine[name].copy_(value)
