"""The amplifying network as scoring runs it: batch norms folded into the convolutions before
them and, on a CPU with oneDNN, each convolution fused with the sum and the activation after
it. The same function as the trained network (to within float rounding), in fewer passes
over memory (``bench/RESULTS.md``, "Fused convolutions")."""

from __future__ import annotations

import weakref
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from .networks import BasicBlock, ResNet18

# oneDNN's convolution with its result summed and activated in the same call (what
# torch.compile fuses a CPU convolution into); absent from builds without oneDNN.
_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


def _onednn(x: torch.Tensor) -> bool:
    """Whether the fused convolution takes ``x``: a CPU tensor in the channels_last layout by
    its strides (channels innermost, which a 1 x 1 image in the plain layout also passes for
    in ``is_contiguous``), with oneDNN present. In the plain layout its bf16 sum with
    activation fails (torch 2.13)."""
    return (
        _POINTWISE is not None
        and x.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.stride(-1) == x.shape[1]
    )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the convolution computes in: autocast's where it is on, else ``x``'s."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


class FusedConv(nn.Module):
    """``relu(conv(x) + add)``, ``relu(conv(x))`` or ``conv(x)`` (``relu``, ``add`` given or
    not) in one call; where oneDNN cannot take it, the convolution, sum and activation run one
    after the other. (B, C, H, W) in, (B, C', H', W') out."""

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        self.conv, self.relu = conv, relu
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        if not (_onednn(x) and (add is None or _onednn(add))):
            out = self.conv(x)
            out = out if add is None else out.add_(add)
            return F.relu(out, inplace=True) if self.relu else out
        dtype = _compute_dtype(x)
        x, weight = x.to(dtype), self.conv.weight.to(dtype)
        bias = None if self.conv.bias is None else self.conv.bias.to(dtype)
        if add is None:
            act = "relu" if self.relu else "none"
            return _POINTWISE(x, weight, bias, *self.args, act, [], "")
        act = "relu" if self.relu else None
        add = add.to(dtype)
        return _POINTWISE.binary(x, add, weight, bias, *self.args, "add", 1.0, act, [], "")


class FusedBlock(nn.Module):
    """A :class:`~dia.networks.BasicBlock` with folded batch norms, in two or three fused
    convolutions: relu(conv1 x), then relu(conv2 out + skip(x))."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1 = FusedConv(_folded(block.conv1, block.bn1), relu=True)
        self.conv2 = FusedConv(_folded(block.conv2, block.bn2), relu=True)
        self.skip = None
        if isinstance(block.skip, nn.Sequential):
            self.skip = FusedConv(_folded(block.skip[0], block.skip[1]), relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skip(x)
        return self.conv2(self.conv1(x), add=skip)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution (with a bias) computing ``bn(conv(x))`` with ``bn``'s running
    statistics."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding
    ).to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        shift = bn.bias - bn.running_mean * scale
        fused.bias.copy_(shift if conv.bias is None else shift + conv.bias * scale)
    return fused


# Each network's scoring copy and the state it was made from (see inference_network).
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_network(net: nn.Module) -> nn.Module:
    """``net`` for scoring: a copy in evaluation mode with each batch norm of its ResNet-18
    folded into the convolution before it and every convolution fused with what follows it
    (:class:`FusedConv`), or ``net`` itself when it is not an
    :class:`~dia.networks.AmplifierNet` (its own ``forward_features`` is kept either way), or
    one already made so. The copy is kept while ``net``'s weights and statistics stay as they
    were."""
    if getattr(net, "batchnorms_folded", False) or not isinstance(
        getattr(net, "encoder", None), ResNet18
    ):
        return net
    # The weights and statistics as they are now, summed tensor by tensor: a cheap check
    # that they are still those the kept copy was made from.
    state = torch.stack([t.detach().double().sum() for t in net.state_dict().values()])
    kept = _KEPT.get(net)
    if kept is None or not torch.equal(kept[0], state):
        kept = (state, _fold(net))
        _KEPT[net] = kept
    return kept[1]


def _fold(net: nn.Module) -> nn.Module:
    """A copy of an :class:`~dia.networks.AmplifierNet` with its batch norms folded and its
    convolutions fused."""
    copy = deepcopy(net).eval()
    stem, layers = list(copy.encoder.stem), []
    while stem:
        conv, bn, act = stem.pop(0), stem.pop(0), stem.pop(0)
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            raise TypeError(f"a stem of conv, batch norm, ReLU expected; got {type(conv)}")
        if not isinstance(act, nn.ReLU):
            raise TypeError(f"a stem of conv, batch norm, ReLU expected; got {type(act)}")
        layers.append(FusedConv(_folded(conv, bn), relu=True))
    copy.encoder.stem = nn.Sequential(*layers)
    copy.encoder.stages = nn.Sequential(*(FusedBlock(b) for b in copy.encoder.stages))
    copy.batchnorms_folded = True
    return copy
