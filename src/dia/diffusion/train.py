"""Training loop of the dissolving DDPM on the normal training images, on the training clock
(:mod:`dia.clock`) and checkpointed as it goes where asked (:mod:`dia.checkpoint`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import checkpoint as ckpt
from .. import distributed
from ..checkpoint import Checkpointing, TrainingInterrupted, stops_of
from ..clock import TrainingClock
from ..config import DiffusionConfig, to_dict
from .model import DiffusionModel


@dataclasses.dataclass
class _Run:
    """A diffusion training under way: what its steps use, and where it is."""

    model: DiffusionModel
    config: DiffusionConfig
    identity: dict  # what a checkpoint must match to continue it
    data: torch.Tensor  # the images in model space, on the device
    optimizer: torch.optim.Optimizer
    loss_of: Callable  # the model's loss, or its synchronising wrapper in a process group
    order: torch.Generator  # the epochs' permutations, the same in every process
    gen: torch.Generator  # flips and noise: each process its own
    batch: int  # each process's images a step
    world: int
    rank: int
    steps_per_epoch: int
    history: dict
    perm: torch.Tensor | None = None  # the current epoch's order
    first: int = 0  # its first step still to take
    total: torch.Tensor | None = None  # its summed loss
    count: int = 0  # its steps taken
    seen: int = 0  # the images this process trained on


def train_diffusion(
    model: DiffusionModel,
    images: torch.Tensor,
    config: DiffusionConfig,
    *,
    device: str | torch.device,
    seed: int,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    checkpoint: Checkpointing | None = None,
) -> dict:
    """Fit ``model`` to normal images (N, C, H, W) in [0, 1]; returns the history dict.

    Runs ``config.epochs`` epochs or until ``config.max_seconds`` training seconds have
    passed, whichever comes first. History: ``steps``, ``epochs`` (float, partial epochs
    count), ``seconds`` (of training), ``images_per_s`` and ``loss`` (mean per epoch, the last
    one possibly partial). ``log`` receives one line per epoch. The model is left in eval mode
    on ``device``.

    ``checkpoint`` saves the training state (weights, AdamW's moments, random generators,
    position in the epoch) every ``checkpoint.every_s`` training seconds and on an interrupt
    (then raising :class:`~dia.checkpoint.TrainingInterrupted`), or continues from a saved
    state (``checkpoint.resume``): trained for a number of epochs, the continued training
    gives exactly the weights of an uninterrupted one; a time limit counts the training
    seconds done before.

    In a process group (:mod:`dia.distributed`) every process calls this with the same images
    and seed: each takes its own ``batch_size`` images of every step, gradients are averaged,
    and rank 0's clock ends training (and places the checkpoints) for all; history counts are
    rank 0's (``images_per_s``: all processes').
    """
    _check_settings(config)
    run = _prepare(model, images, config, torch.device(device), seed)
    step, train_s, max_seconds = 0, 0.0, config.max_seconds
    if checkpoint is not None and checkpoint.resume:
        tensors, meta = ckpt.load(checkpoint.folder)
        ckpt.refuse_other_training(meta, run.identity)
        step, train_s, max_seconds = _restore(run, tensors, meta)
    every_s = checkpoint.every_s if checkpoint is not None else None
    total_steps = config.epochs * run.steps_per_epoch
    clock = TrainingClock(total_steps, max_seconds, every_s, None, step, train_s)
    quiet = not progress or not distributed.is_main()
    bar = tqdm(total=total_steps, initial=step, desc="diffusion", disable=quiet)
    model.train()
    with bar, stops_of(checkpoint) as stops:
        more = True
        while more:
            more = _epoch(run, clock, stops, checkpoint, bar)
            if run.count:  # steps were taken in it: the epoch's loss, possibly partial
                _end_epoch(run, clock, log)
            run.perm, run.first = None, 0
    model.eval()
    run.history.update(
        steps=clock.step,
        epochs=clock.step / run.steps_per_epoch,
        seconds=clock.train_s,
        images_per_s=run.world * run.seen / max(clock.train_s, 1e-9),
        world_size=run.world,
    )
    return run.history


def _prepare(model, images, config: DiffusionConfig, device: torch.device, seed: int) -> _Run:
    """Everything a training's steps need, at the start of its first epoch."""
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
    identity = {
        "config": to_dict(config),
        "images": n,
        "image_shape": list(images.shape[1:]),
        "seed": seed,
        "world_size": world,
    }
    return _Run(
        model, config, identity, data, optimizer, loss_of, order, gen, batch, world, rank,
        steps_per_epoch, history={"loss": []},
    )  # fmt: skip


def _epoch(run: _Run, clock: TrainingClock, stops, checkpoint, bar) -> bool:
    """The steps of the current epoch from ``run.first`` on; False once training is over."""
    if run.perm is None:
        n, device = run.data.shape[0], run.data.device
        run.perm = torch.randperm(n, generator=run.order, device=device)
        run.total, run.count = torch.zeros((), device=device), 0
    for i in range(run.first, run.steps_per_epoch):
        turn = clock.turn(stops.requested)  # rank 0's, the same on every process
        if turn.over:
            return False
        if turn.save:
            _save(checkpoint, run, i, clock)
            clock.saved()
        if turn.stop:
            raise TrainingInterrupted(checkpoint.folder, clock.step, "diffusion model")
        x0 = run.data[distributed.shard(run.perm, i, run.batch, run.rank, run.world)]
        run.total += _step(run.model, run.optimizer, run.loss_of, x0, run.gen)
        run.count += 1
        run.seen += x0.shape[0]
        clock.tick()
        bar.total = clock.expected_steps()
        bar.update(1)
        if clock.step % 20 == 0:
            bar.set_postfix(loss=f"{(run.total / run.count).item():.4f}")
    return True


def _end_epoch(run: _Run, clock: TrainingClock, log) -> None:
    """Record the epoch's mean loss (stopping every process where one's is not finite) and
    log it."""
    run.history["loss"].append((run.total / run.count).item())
    if not distributed.on_every_rank(math.isfinite(run.history["loss"][-1])):
        run.model.eval()
        raise FloatingPointError("diffusion loss is not finite; lower DiffusionConfig.lr")
    if log is not None and distributed.is_main():
        epoch = math.ceil(clock.step / run.steps_per_epoch)
        log(
            f"diffusion epoch {epoch}/{run.config.epochs} loss {run.history['loss'][-1]:.4f} "
            f"{clock.train_s:.0f}s"
        )


def _save(checkpoint: Checkpointing, run: _Run, next_index: int, clock: TrainingClock) -> None:
    """Save the state before step ``next_index`` of the current epoch. Rank 0 writes, every
    process's random generators included; all wait until the file is whole."""
    generators = ckpt.generator_states(run.order, run.gen, run.data.device)
    if distributed.is_main():
        tensors = ckpt.with_prefix("model.", run.model.state_dict())
        moments, groups = ckpt.optimizer_state(run.optimizer)
        tensors.update({**moments, **generators, "perm": run.perm, "epoch_loss": run.total})
        meta = {
            **checkpoint.meta,
            **run.identity,
            "step": clock.step,
            "next_index": next_index,
            "train_s": clock.train_s,
            "max_seconds": clock.max_seconds,
            "optimizer_groups": groups,
            # the finished epochs' losses; the current one's sum is a tensor (epoch_loss)
            "history": {"loss": run.history["loss"], "epoch_steps": run.count, "seen": run.seen},
        }
        ckpt.save(checkpoint.folder, tensors, meta)
    distributed.barrier()


def _restore(run: _Run, tensors: dict, meta: dict) -> tuple[int, float, float | None]:
    """Load a checkpoint's state into ``run``, each process its own random generators;
    returns (step, train_s, max_seconds)."""
    device = run.data.device
    try:
        run.model.load_state_dict(ckpt.under_prefix("model.", tensors))
        ckpt.load_optimizer_state(run.optimizer, tensors, meta["optimizer_groups"])
        ckpt.restore_generators(tensors, run.order, run.gen, device)
        run.perm, run.first = tensors["perm"].to(device), int(meta["next_index"])
        run.total = tensors["epoch_loss"].to(device)
        history = meta["history"]
        run.history["loss"] = list(history["loss"])
        run.count, run.seen = int(history["epoch_steps"]), int(history["seen"])
        run.history["resumed_at_step"] = int(meta["step"])
        return int(meta["step"]), float(meta["train_s"]), meta["max_seconds"]
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"the checkpoint cannot be read back: {err}") from err


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
