"""The operation pool of the attention search space (see :data:`.space.DEFAULT_OPS`).

Every operation maps (B, L, D) → (B, L, D) and is causal: position-wise, or (``conv``) looking
only at earlier positions, so that sequences stay left-aligned with padding at the end.
``zero`` and ``identity`` have no parameters and no module (:func:`apply_op`). Operations carry no
dropout of their own: the supernet applies it where a layer's output is formed (like SASRec,
dropout on addition-layer connections and on attention outputs, none on Q/K/V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PARAMETER_FREE_OPS = ("zero", "identity")


class FeedForward(nn.Module):
    """W2 GELU(W1 x), as SASRec's point-wise feed-forward network."""

    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class CausalConv(nn.Module):
    """1-D convolution over the current and the ``kernel_size - 1`` previous positions."""

    def __init__(self, hidden_size: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel_size)

    def forward(self, x):
        h = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # (B, D, L + kernel_size - 1)
        return self.conv(h).transpose(1, 2)  # (B, L, D)


class GatedLinear(nn.Module):
    """(x W_a) ⊙ σ(x W_b)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 2 * hidden_size)

    def forward(self, x):
        return F.glu(self.proj(x), dim=-1)  # (B, L, 2D) → (B, L, D)


class LinearOp(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        return self.proj(x)


def build_op(name: str, hidden_size: int, inner_size: int) -> nn.Module:
    """A fresh module for a parametrised operation of the pool."""
    if name == "linear":
        return LinearOp(hidden_size)
    if name == "ffn":
        return FeedForward(hidden_size, inner_size)
    if name == "conv":
        return CausalConv(hidden_size)
    if name == "glu":
        return GatedLinear(hidden_size)
    raise ValueError(
        f"unknown operation {name!r}: choose from zero, identity, linear, ffn, conv, glu"
    )


def apply_op(name: str, module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    if name == "zero":
        return torch.zeros_like(x)
    if name == "identity":
        return x
    return module(x)
