"""Training loop of the dissolving DDPM on the normal training images."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed
from ..config import DiffusionConfig
from ..progress import expected_steps
from .model import DiffusionModel


def train_diffusion(
    model: DiffusionModel,
    images: torch.Tensor,
    config: DiffusionConfig,
    *,
    device: str | torch.device,
    seed: int,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Fit ``model`` to normal images (N, C, H, W) in [0, 1]; returns the history dict.

    Runs ``config.epochs`` epochs or until ``config.max_seconds`` have passed, whichever comes
    first. History: ``steps``, ``epochs`` (float, partial epochs count), ``seconds``,
    ``images_per_s`` and ``loss`` (mean per epoch, the last one possibly partial). ``log``
    receives one line per epoch. The model is left in eval mode on ``device``.

    In a process group (:mod:`dia.distributed`) every process calls this with the same images
    and seed: each takes its own ``batch_size`` images of every step, gradients are averaged,
    and rank 0's clock ends training for all; history counts are rank 0's (``images_per_s``:
    all processes').
    """
    _check_settings(config)
    device = torch.device(device)
    start = time.perf_counter()
    data = _model_space(model, images, device)
    world, rank = distributed.world_size(), distributed.rank()
    n = data.shape[0]
    if n < world:
        raise ValueError(f"{n} training images cannot be shared by {world} processes")
    order, gen, loss_of = _randomness_and_loss(model, seed, device)
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=config.lr)
    batch = min(config.batch_size, n // world)
    # One process keeps the last, smaller batch; several drop it, as a share could be empty.
    steps_per_epoch = math.ceil(n / batch) if world == 1 else n // (batch * world)

    model.train()
    history: dict = {"loss": []}
    steps = seen = 0
    out_of_time = False
    main = distributed.is_main()
    bar_total = config.epochs * steps_per_epoch
    bar = tqdm(total=bar_total, desc="diffusion", disable=not progress or not main)
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=order, device=device)
        total, count = torch.zeros((), device=device), 0
        for i in range(steps_per_epoch):
            x0 = data[distributed.shard(perm, i, batch, rank, world)]
            total += _step(model, optimizer, loss_of, x0, gen)
            count += 1
            steps += 1
            seen += x0.shape[0]
            elapsed = time.perf_counter() - start
            bar.total = expected_steps(steps, elapsed, config.max_seconds, bar_total)
            bar.update(1)
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{(total / count).item():.4f}")
            out_of_time = _out_of_time(elapsed, config.max_seconds)
            if out_of_time:
                break
        history["loss"].append((total / count).item())
        _check_finite(history["loss"][-1], bar, model)
        if log is not None and main:
            log(
                f"diffusion epoch {epoch + 1}/{config.epochs} loss {history['loss'][-1]:.4f} "
                f"{time.perf_counter() - start:.0f}s"
            )
        if out_of_time:
            break
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    history.update(
        steps=steps,
        epochs=steps / steps_per_epoch,
        seconds=seconds,
        images_per_s=world * seen / max(seconds, 1e-9),
        world_size=world,
    )
    return history


def _model_space(model: DiffusionModel, images: torch.Tensor, device: torch.device):
    """``images`` as the UNet trains on them, on ``device`` (with the model): converted once,
    since padding and resizing every batch would cost as much as a small UNet step."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty tensor (N, C, H, W), got {shape}")
    model.to(device)
    with torch.no_grad():
        return model.to_model_space(images.to(device=device, dtype=torch.float32))


def _randomness_and_loss(model: DiffusionModel, seed: int, device: torch.device):
    """(order, gen, loss): every process draws the same permutations from ``order`` and its
    own flips and noise from ``gen``; ``loss`` averages gradients across processes."""
    world, rank = distributed.world_size(), distributed.rank()
    gen = torch.Generator(device=device).manual_seed(seed)
    if world == 1:
        return gen, gen, model.loss
    order = torch.Generator(device=device).manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed + 1_000_003 * (rank + 1))
    ids = [device.index] if device.type == "cuda" else None
    # The UNet's only buffer is the noise schedule, the same everywhere: nothing to sync.
    loss = DistributedDataParallel(_Loss(model), device_ids=ids, broadcast_buffers=False)
    return order, gen, loss


def _out_of_time(elapsed: float, max_seconds: float | None) -> bool:
    """Whether training is out of time; rank 0's clock decides for all, so that every process
    takes the same steps."""
    return max_seconds is not None and distributed.agree(elapsed)[0] >= max_seconds


def _check_finite(loss: float, bar, model: DiffusionModel) -> None:
    """Stop, on every process, when the epoch's loss of any process is not finite."""
    if not distributed.on_every_rank(math.isfinite(loss)):
        bar.close()
        model.eval()
        raise FloatingPointError("diffusion loss is not finite; lower DiffusionConfig.lr")


def _step(model, optimizer, loss_of, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One optimiser step on the images ``x0``, each flipped at random; returns the loss."""
    flip = torch.rand(x0.shape[0], generator=gen, device=x0.device) < 0.5
    x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
    loss = loss_of(x0, generator=gen)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Standard for DDPMs: the rare large-t batches otherwise cause loss spikes.
    torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


class _Loss(nn.Module):
    """The model's DDPM loss as a module's forward, which DistributedDataParallel wraps."""

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model.loss(x0, generator=generator)


def _check_settings(config: DiffusionConfig) -> None:
    if config.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {config.epochs}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")
    if config.max_seconds is not None and not config.max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {config.max_seconds}")
