"""Amplifying training (docs/method.md, section 3): three views, shifts, augmentation, losses."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed
from .augment import SimCLRAugment, random_hflip
from .checkpoint import Checkpointing, TrainingInterrupted, stops_of
from .clock import TrainingClock, time_limit
from .config import DetectorConfig, to_dict
from .config_tree import nest
from .device import autocast, memory_format
from .dissolve import DissolveCache, Dissolver, timestep_grid
from .losses import contrastive_loss, shift_loss
from .networks import AmplifierNet, build_network
from .optim import WeightAverage, lr_factor, make_optimizer
from .shifts import get_shift

Callback = Callable[[AmplifierNet, float], None]
# The per-step losses a history keeps (and a checkpoint carries over).
LOSSES = ("loss", "contrastive", "shift")


def _timed_callback(callback: Callback, trained, net: AmplifierNet, clock) -> float:
    """``callback(trained, train_s)``, with ``net`` put back in training mode; its seconds."""
    c0 = time.perf_counter()
    callback(trained, clock.train_s)
    net.train()
    return time.perf_counter() - c0


BUDGET_SPENT = (
    "the time budget is spent before detector training starts; give a larger budget "
    "(--budget) or a shorter diffusion training (--diffusion-max-seconds)"
)


@dataclasses.dataclass
class _State:
    """What a checkpoint saves and restores besides the position in training."""

    net: AmplifierNet
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None
    order: torch.Generator  # the epochs' permutations, the same in every process
    gen: torch.Generator  # flips, timesteps, cached dissolved copies: each process its own
    history: dict
    max_seconds: float | None

    def modules(self) -> tuple:
        return self.net, self.optimizer, self.average, self.order, self.gen


@dataclasses.dataclass
class _Run:
    """A training under way: its state, what its steps use, and where it is."""

    state: _State
    model: torch.nn.Module  # the network, or its synchronising wrapper in a process group
    augment: SimCLRAugment
    fmt: torch.memory_format
    batch: int  # each process's images a step
    world: int
    rank: int
    steps_per_epoch: int = 0
    total_steps: int = 0
    train_s: float = 0.0  # a resumed training's start
    step: int = 0
    perm: torch.Tensor | None = None  # the current epoch's order
    first: int = 0  # its first step still to take

    @property
    def trained(self) -> AmplifierNet:
        """What the callback and the caller get: the network, or its moving average."""
        return self.state.net if self.state.average is None else self.state.average.net


class DetectorTrainer:
    """Trains an :class:`AmplifierNet` on normal (N, C, H, W) images in [0, 1].

    ``dissolver`` makes the third view; it is required unless the dissolver the config names
    is ``none`` (plain CSI). With ``dissolve_cache_steps > 0`` the dissolved images are computed
    once on a grid of timesteps and looked up each step instead of calling the operator. The
    config checked its own values as it was built (:mod:`dia.config`).

    In a process group (:mod:`dia.distributed`) every process runs ``train`` with the same
    images and seed: each takes its own ``batch_size`` images of every step (so a step sees
    ``world_size * batch_size`` images), the contrastive negatives span all processes' images,
    and rank 0's clock decides the learning rate and the end for all.
    """

    def __init__(
        self,
        config: DetectorConfig,
        images: torch.Tensor,
        *,
        dissolver: Dissolver | None = None,
        device: torch.device,
        precision: str = "fp32",
        seed: int = 0,
    ) -> None:
        if images.ndim != 4 or images.shape[0] < 2:
            raise ValueError(f"images must be (N>=2, C, H, W); got shape {tuple(images.shape)}")
        self.config, self.images = config, images
        self.device, self.precision, self.seed = device, precision, seed
        self.dissolver = None if config.dissolving.dissolve == "none" else dissolver
        if config.dissolving.dissolve != "none" and dissolver is None:
            raise ValueError(f"dissolve={config.dissolving.dissolve!r} needs a dissolver")
        self.shifts = get_shift(config.loss.shift)  # the shift family
        self.cache: DissolveCache | None = None

    def train(
        self,
        progress: bool = True,
        callback: Callback | None = None,
        callback_every_s: float | None = None,
        deadline: float | None = None,
        checkpoint: Checkpointing | None = None,
    ) -> tuple[AmplifierNet, dict]:
        """Train; returns the last network (with ``ema`` > 0, the moving average of its
        weights) and a history dict. ``callback(net, seconds)`` may evaluate that network every
        ``callback_every_s`` training seconds (its own time not counted).
        ``deadline`` (a ``time.perf_counter()`` value) ends training by then at the latest, with
        the learning-rate schedule fitted to the time left once the dissolve cache is built.
        ``checkpoint`` saves the training state as it goes and on an interrupt (then raising
        :class:`~dia.checkpoint.TrainingInterrupted`), or continues from a saved state: without
        a time limit a continued training takes exactly the steps the uninterrupted one would
        have; a time limit counts the training seconds done before (``deadline`` is then
        unused), and the steps then depend on the clock.
        In a process group the callback and the progress bar are rank 0's alone, rank 0
        writes the checkpoints (every process's random generators in them), and the returned
        network is the same in every process.
        """
        world, rank = distributed.world_size(), distributed.rank()
        saved = None
        if checkpoint is not None and checkpoint.resume:
            saved = ckpt.load(checkpoint.folder)
            self._check_resumable(saved[1], world)
        run = self._prepare(saved, deadline, world, rank)
        clock = TrainingClock(
            run.total_steps,
            run.state.max_seconds,
            checkpoint.every_s if checkpoint else None,
            callback_every_s if callback else None,
            run.step,
            run.train_s,
        )
        quiet = not progress or not distributed.is_main()
        bar = tqdm(
            total=run.total_steps, initial=clock.step, disable=quiet, desc="detector", leave=False
        )
        with bar, stops_of(checkpoint) as stops:
            while self._epoch(run, clock, stops, checkpoint, bar, callback):
                run.perm, run.first = None, 0
        return self._finished(run, clock)

    def _prepare(self, saved, deadline: float | None, world: int, rank: int) -> _Run:
        """Everything a training's steps need, from a checkpoint's state where ``saved``."""
        cfg, device = self.config, self.device
        torch.manual_seed(self.seed)
        n, channels, size = self.images.shape[0], self.images.shape[1], self.images.shape[-1]
        if n < world:
            raise ValueError(f"{n} training images cannot be shared by {world} processes")
        order, gen = self._generators(world, rank)
        cache_s = self._build_cache()
        max_seconds = self._time_limit(saved, deadline)
        fmt = memory_format(cfg.network.width)
        net = build_network(cfg, channels, size).to(device=device, memory_format=fmt)
        net.train()
        optimizer = make_optimizer(
            cfg.optim.optimizer, net.parameters(), cfg.optim.lr, cfg.optim.weight_decay
        )
        average = WeightAverage(net, cfg.optim.ema) if cfg.optim.ema > 0 else None
        history: dict = {**{k: [] for k in LOSSES}, "dissolve_cache_s": cache_s}
        history["dissolved_steps"] = 0
        state = _State(net, optimizer, average, order, gen, history, max_seconds)
        augment = SimCLRAugment(
            size, channels, (cfg.augment.crop_scale_min, 1.0),
            cfg.augment.jitter_strength, cfg.augment.jitter_prob, cfg.augment.gray_prob,
        )  # fmt: skip
        batch = min(cfg.optim.batch_size, n // world)
        run = _Run(state, self._synchronised(net, world, rank), augment, fmt, batch, world, rank)
        run.steps_per_epoch = n // (batch * world)
        run.total_steps = cfg.optim.epochs * run.steps_per_epoch
        if saved is not None:
            run.train_s, run.step, run.perm, run.first = self._restore(*saved, state)
        return run

    def _epoch(self, run: _Run, clock: TrainingClock, stops, checkpoint, bar, callback) -> bool:
        """The steps of the current epoch from ``run.first`` on; False once training is over."""
        if run.perm is None:
            run.perm = torch.randperm(self.images.shape[0], generator=run.state.order)
        for i in range(run.first, run.steps_per_epoch):
            turn = clock.turn(stops.requested)  # rank 0's, the same on every process
            if turn.over:
                return False
            if turn.save:  # its time counts as training time: a budget is wall-clock time
                self._save(checkpoint, run.state, run.perm, i, clock.step, clock.train_s)
                clock.saved()
            if turn.stop:
                raise TrainingInterrupted(checkpoint.folder, clock.step)
            losses = self._step_at(run, i, turn.done)
            clock.tick()
            bar.total = clock.expected_steps()
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.3f}", s=f"{clock.train_s:.0f}")
            if distributed.is_main() and clock.callback_due():
                # Rank 0 alone; the others wait at the next step's agreement, and since rank
                # 0's clock leaves this time out, so does the schedule of all.
                clock.called_back(_timed_callback(callback, run.trained, run.state.net, clock))
        return True

    def _step_at(self, run: _Run, i: int, fraction: float) -> dict:
        """Step ``i`` of the epoch, ``fraction`` of the training done: the learning rate,
        the step, the moving average and the history."""
        cfg, state = self.config, run.state
        warmup = cfg.optim.warmup_epochs / cfg.optim.epochs if cfg.optim.epochs else 0.0
        for group in state.optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_factor(
                fraction, warmup, cfg.optim.schedule, cfg.optim.warmup_peak
            )
        idx = distributed.shard(run.perm, i, run.batch, run.rank, run.world)
        dissolving = self.dissolver is not None and fraction >= cfg.dissolving.dissolve_start
        losses = self._step(
            run.model, state.optimizer, run.augment, idx, state.gen, run.fmt, dissolving
        )
        state.history["dissolved_steps"] += dissolving
        if state.average is not None:
            state.average.update(state.net)
        for key, value in losses.items():
            state.history[key].append(value)
        return losses

    def _finished(self, run: _Run, clock: TrainingClock) -> tuple[AmplifierNet, dict]:
        """The trained network, the same in every process, and the history."""
        # Batch-norm statistics are each process's own since the last step's forward pass;
        # rank 0's make the returned network the same everywhere (the weights already are).
        distributed.broadcast_module(run.trained)
        run.trained.eval()
        history, batch = run.state.history, run.batch
        images = 2 * batch * clock.step + self._dissolved_count(batch) * history["dissolved_steps"]
        history.update(
            steps=clock.step,
            epochs=clock.step / max(run.steps_per_epoch, 1),
            train_s=clock.train_s,
            images_per_s=run.world * images * self.shifts.count / max(clock.train_s, 1e-9),
            world_size=run.world,
        )
        return run.trained, history

    def _generators(self, world: int, rank: int) -> tuple[torch.Generator, torch.Generator]:
        """(order, gen): every process draws the same permutations from ``order`` and its own
        flips, timesteps and augmentations from ``gen`` (and torch's generator); one process
        uses one generator for all."""
        gen = torch.Generator().manual_seed(self.seed)
        if world == 1:
            return gen, gen
        order = torch.Generator().manual_seed(self.seed)
        return order, torch.Generator().manual_seed(self.seed + 1_000_003 * (rank + 1))

    def _build_cache(self) -> float:
        """Dissolve every training image on the timestep grid once, when the config caches;
        returns the seconds it took."""
        cfg, start = self.config, time.perf_counter()
        if self.dissolver is not None and cfg.dissolving.dissolve_cache_steps > 0:
            grid = timestep_grid(
                cfg.dissolving.t_min, cfg.dissolving.t_max, cfg.dissolving.dissolve_cache_steps
            )
            self.cache = DissolveCache.build(self.dissolver, self.images, grid, device=self.device)
        return time.perf_counter() - start

    def _time_limit(self, saved, deadline: float | None) -> float | None:
        """Training seconds allowed: the config's, cut to what ``deadline`` leaves, or a
        resumed training's first limit (deadline included); rank 0's for every process. A
        deadline already passed is refused."""
        if saved is not None:
            return distributed.broadcast_object(saved[1]["max_seconds"])
        max_seconds, spent = time_limit(self.config.optim.max_seconds, deadline)
        if spent:
            raise ValueError(BUDGET_SPENT)
        return max_seconds

    def _synchronised(self, net: AmplifierNet, world: int, rank: int) -> torch.nn.Module:
        """What the steps call: ``net``, or under a process group its synchronising wrapper
        (after which each process draws its own augmentations)."""
        if world == 1:
            return net
        # Same seed, same initial weights; DDP also copies rank 0's weights to the others.
        ids = [self.device.index] if self.device.type == "cuda" else None
        model = DistributedDataParallel(net, device_ids=ids)
        torch.manual_seed(self.seed + 1_000_003 * (rank + 1))
        return model

    def _check_resumable(self, meta: dict, world: int) -> None:
        """Refuse a checkpoint of another training: its steps would not continue this one."""
        if isinstance(meta.get("config"), dict):  # one saved before the settings were grouped
            meta = {**meta, "config": nest(DetectorConfig, meta["config"])}
        ckpt.refuse_other_training(meta, self._identity(world))

    def _identity(self, world: int) -> dict:
        """What a checkpoint must match to continue this training."""
        return {
            "config": to_dict(self.config),
            "images": int(self.images.shape[0]),
            "image_shape": list(self.images.shape[1:]),
            "seed": self.seed,
            "world_size": world,
        }

    def _save(self, checkpoint, state: _State, perm, next_index, step, train_s) -> None:
        """Save the state before step ``next_index`` of the epoch ordered by ``perm``. Rank 0
        writes, every process's random generators included; all wait until the file is whole."""
        net, optimizer, average, order, gen = state.modules()
        generators = ckpt.generator_states(order, gen, self.device)
        if distributed.is_main():
            tensors = ckpt.with_prefix("net.", net.state_dict())
            if average is not None:
                tensors.update(ckpt.with_prefix("average.", average.net.state_dict()))
            moments, groups = ckpt.optimizer_state(optimizer)
            tensors.update({**moments, **generators, "perm": perm})
            meta = {
                **checkpoint.meta,
                **self._identity(distributed.world_size()),
                "step": step,
                "next_index": next_index,
                "train_s": train_s,
                "max_seconds": state.max_seconds,
                "average_updates": average.updates if average is not None else 0,
                "optimizer_groups": groups,
                "history": {
                    **{k: state.history[k] for k in LOSSES},
                    "dissolved_steps": state.history["dissolved_steps"],
                },
            }
            ckpt.save(checkpoint.folder, tensors, meta)
        distributed.barrier()

    def _restore(self, tensors, meta, state: _State):
        """Load a checkpoint's state, each process its own random generators, and its
        history of losses; returns (train_s, step, perm, next_index)."""
        net, optimizer, average, order, gen = state.modules()
        try:
            state.history.update({k: meta["history"][k] for k in LOSSES})
            state.history["dissolved_steps"] = meta["history"]["dissolved_steps"]
            state.history["resumed_at_step"] = int(meta["step"])
            net.load_state_dict(ckpt.under_prefix("net.", tensors))
            if average is not None:
                average.net.load_state_dict(ckpt.under_prefix("average.", tensors))
                average.updates = meta["average_updates"]
            ckpt.load_optimizer_state(optimizer, tensors, meta["optimizer_groups"])
            ckpt.restore_generators(tensors, order, gen, self.device)
            step = int(meta["step"])
            return float(meta["train_s"]), step, tensors["perm"], int(meta["next_index"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(f"the checkpoint cannot be read back: {err}") from err

    def _step(self, net, optimizer, augment, idx, gen, fmt, dissolving: bool) -> dict:
        cfg = self.config
        x = self.images[idx].to(self.device, non_blocking=True)
        views = [random_hflip(x, gen), random_hflip(x, gen)]
        dissolved_of = None
        if dissolving:
            b = self._dissolved_count(x.shape[0])
            views.append(self._dissolved(x[:b], idx[:b], gen))
            # Shift-major layout: dissolved item (k, j) copies item (k, j) of v1 and v2.
            first = torch.arange(self.shifts.count)[:, None] * x.shape[0]
            dissolved_of = (first + torch.arange(b)).ravel()
        shifted, labels = zip(*(self.shifts.all(v) for v in views), strict=True)
        group_size = shifted[0].shape[0]
        inputs = augment(torch.cat(shifted)).contiguous(memory_format=fmt)
        with autocast(self.device, self.precision):
            z, logits = net(inputs)
        # Negatives span every process's images, as in CSI; the gather sends each process's
        # share of the gradient back to it, so after DDP's averaging the weights follow the
        # gradient of one contrastive loss over the whole batch.
        z, group_size, dissolved_of = distributed.gather_views(z, group_size, dissolved_of)
        l_con = contrastive_loss(z, group_size, cfg.loss.temperature, cfg.loss.mask, dissolved_of)
        if cfg.loss.contrastive_per == "view":  # the sum over the anchors, over every view
            l_con = l_con * (2 * group_size / z.shape[0])
        l_shift = shift_loss(logits, torch.cat(labels))
        loss = l_con + l_shift
        if not distributed.on_every_rank(math.isfinite(loss.item())):
            raise FloatingPointError("detector loss is not finite; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "contrastive": l_con.item(), "shift": l_shift.item()}

    def _dissolved_count(self, batch: int) -> int:
        """How many of a batch's images get a dissolved view (the first ones: batches are
        random)."""
        return max(1, round(self.config.dissolving.dissolve_fraction * batch))

    def _dissolved(self, x, idx, gen) -> torch.Tensor:
        cfg = self.config
        if self.cache is not None:
            return random_hflip(self.cache.sample(idx, gen).to(self.device), gen)
        t = torch.randint(
            cfg.dissolving.t_min, cfg.dissolving.t_max + 1, (x.shape[0],), generator=gen
        )
        return self.dissolver(random_hflip(x, gen), t.to(self.device))
