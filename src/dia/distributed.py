"""Several processes under a launcher such as ``torchrun``: the process group and agreement.

A launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` for every process it starts. With
``WORLD_SIZE`` unset or 1 nothing is initialised and every helper here answers as for a single
process (rank 0 of 1, collectives are no-ops), so a plain run behaves exactly as without them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

# How long a process waits at a collective: the others wait there while rank 0 alone downloads
# data or writes the run folder, which takes longer than the launchers' defaults of 10 minutes.
TIMEOUT = datetime.timedelta(minutes=60)


def launched() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True when this process is in a process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    """This process's rank on its machine, the index of its GPU (0 without a process group)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """True for the process that writes files and reports: rank 0."""
    return rank() == 0


def uses_cuda(device: str) -> bool:
    """Whether processes started with ``--device device`` each take the GPU of their local rank."""
    if device.startswith("cuda:"):
        raise ValueError(
            f"device={device!r} under a launcher: pass 'cuda' or 'auto', and each process "
            "uses the GPU of its LOCAL_RANK"
        )
    return device in ("auto", "cuda") and torch.cuda.is_available()


def init(device: str = "auto") -> bool:
    """Join the launcher's process group (nccl for CUDA, else gloo) when there is one.

    Returns True when this call initialised the group; False for a single process or when
    the group already exists.
    """
    if not launched() or active():
        return False
    if uses_cuda(device):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return True


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[None]:
    """Inside: in the launcher's process group (if any); on leaving, the group is destroyed."""
    started = init(device)
    try:
        yield
    finally:
        if started and active():
            dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process is here (no-op without a process group)."""
    if not active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (say, a download into a shared cache), then the others."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` (any picklable value) on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj) -> list | None:
    """Every rank's ``obj`` (any picklable value) in rank order on rank 0; None elsewhere."""
    if not active():
        return [obj]
    box = [None] * world_size() if is_main() else None
    dist.gather_object(obj, box, dst=0)
    return box


def agree(*values: float) -> tuple[float, ...]:
    """Rank 0's ``values`` on every process: one small broadcast, so all decide alike."""
    if not active():
        return tuple(float(v) for v in values)
    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else "cpu"
    box = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(box, src=0)
    return tuple(box.tolist())


def on_every_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on every process: one small all-reduce, so that a check that
    fails on one process stops them all, not that one alone while the others wait for it."""
    if not active():
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else "cpu"
    box = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return bool(box.item())


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every process."""
    if not active():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def shard(perm: torch.Tensor, step: int, batch: int, rank: int = 0, world: int = 1):
    """The ``batch`` indices of ``rank`` at ``step`` of an epoch's permutation ``perm`` (N,).

    Every process draws the same permutation; step ``step`` uses ``world * batch`` of it and
    each rank takes its own consecutive ``batch`` of those, so the ranks' shares are disjoint.
    """
    start = (step * world + rank) * batch
    return perm[start : start + batch]


def merge_views(
    parts: list[torch.Tensor], group_size: int, dissolved_of: torch.Tensor | None
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Join the ranks' projections into one batch in the layout of ``contrastive_loss``.

    Each part is (2*M + D, d): view v1 (M items), v2 (M), then D dissolved items copying items
    ``dissolved_of`` (the same on every rank). Returns (v1 of all ranks, v2 of all ranks,
    dissolved of all ranks), the new group size ``W * M`` and the dissolved items' new sources.
    """
    m = group_size
    z = torch.cat(
        [p[:m] for p in parts] + [p[m : 2 * m] for p in parts] + [p[2 * m :] for p in parts]
    )
    if dissolved_of is not None:
        dissolved_of = torch.cat([dissolved_of + r * m for r in range(len(parts))])
    return z, len(parts) * m, dissolved_of


def gather_views(
    z: torch.Tensor, group_size: int, dissolved_of: torch.Tensor | None
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """:func:`merge_views` of every rank's ``z``, gathered so that gradients flow back to each
    rank's own items (the backward pass sums the ranks' gradients, as CSI's gather does)."""
    if not active():
        return z, group_size, dissolved_of
    parts = list(_Gather.apply(z).chunk(world_size()))
    return merge_views(parts, group_size, dissolved_of)


class _Gather(torch.autograd.Function):
    """Every rank's (n, ...) tensor stacked into (world * n, ...), in rank order.

    Every rank computes a loss on the gathered tensor; the gradient of its own rows is the sum
    of what each rank's loss sends back to them.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(world_size())[rank()]


def _nccl() -> bool:
    return dist.get_backend() == "nccl"
