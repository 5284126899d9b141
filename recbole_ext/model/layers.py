"""Building blocks shared by recbole-ext's models."""

from __future__ import annotations

import math

import torch
from torch import nn

MASK_VALUE = -1e9  # additive mask for softmax logits (finite: a row never becomes NaN)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper CPU mask: one in-place ``uniform_`` + threshold.

    PyTorch's CPU dropout draws its mask with ``bernoulli_``, which is about 2.4× slower than this
    for a (512, 50, 64) activation (forward + backward, one thread; measured in
    ``benchmarks/autodisenseq_speed.py --dropout``). Same distribution: each element is kept with
    probability 1 − p and scaled by 1/(1 − p). On other devices it is ``nn.Dropout`` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = torch.empty_like(x).uniform_().ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * keep


def causal_mask(length: int, device=None) -> torch.Tensor:
    """(L, L) additive attention mask: query i may attend key j iff j ≤ i.

    For **left-aligned** sequences (items at 0..m-1, padding after) this is exact without a padding
    mask: a valid query i < m only sees keys j ≤ i < m, which are all items, so padding never
    reaches a valid position (and the causal operations of the pool look back only). Outputs at
    padding positions are finite garbage that the disentanglement layer gives zero weight. One
    (L, L) mask broadcast over the batch replaces a (B, L, L) one built per mini-batch.

    >>> causal_mask(3).eq(0).int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return torch.zeros(length, length, device=device).masked_fill(~allowed, MASK_VALUE)


class IntentionDisentanglement(nn.Module):
    """Disentanglement layer of AutoDisenSeq (TOIS 2025, §4.1.2, Eq. 4-6).

    Given encoder outputs z_1..z_m (left-aligned, padding after position m):

    - Eq. (4) intention clustering: q_i^(k) = softmax_k( LN1(z_i) · LN2(c_k) / √D ) over K
      trainable prototypes c_k;
    - Eq. (5) relation to the future intention: q_i = softmax_i( z'_i · LN3(z_M) / √D ) over the
      m valid positions, with z_M = α_m + z_m + b' and
      z'_s = LN4(α_s + z_s) + ReLU(Wᵀ LN4(α_s + z_s) + b), α a positional embedding;
    - Eq. (6) aggregation: φ^(k) = LN5( β_k + Σ_i q_i^(k) q_i z_i ), with one set of biases β per
      kind of sequence (set 0: input sequences, set 1: reversed label sequences).

    Padding positions get q_i = q_i^(k) = 0.
    """

    def __init__(
        self, hidden_size: int, n_intents: int, max_len: int, layer_norm_eps: float, n_beta_sets=2
    ):
        super().__init__()
        assert n_intents >= 1 and hidden_size >= 1
        self.hidden_size = hidden_size
        self.prototypes = nn.Parameter(torch.randn(n_intents, hidden_size) * 0.02)  # c_k (K, D)
        self.alpha = nn.Embedding(max_len, hidden_size)  # α_s
        self.b_prime = nn.Parameter(torch.zeros(hidden_size))  # b'
        self.transform = nn.Linear(hidden_size, hidden_size)  # Wᵀ x + b
        self.beta = nn.Parameter(torch.zeros(n_beta_sets, n_intents, hidden_size))  # β (S, K, D)
        self.ln1, self.ln2, self.ln3, self.ln4, self.ln5 = (
            nn.LayerNorm(hidden_size, eps=layer_norm_eps) for _ in range(5)
        )

    def weights(self, z: torch.Tensor, lengths: torch.Tensor):
        """q^(k) (B, L, K) of Eq. (4) and q (B, L) of Eq. (5), zero at padding positions."""
        batch, length, dim = z.shape
        valid = torch.arange(length, device=z.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
        scale = 1.0 / math.sqrt(dim)
        # Eq. (4): (B, L, D) · (K, D) → (B, L, K), softmax over the K prototypes
        q_k = torch.softmax(self.ln1(z) @ self.ln2(self.prototypes).T * scale, dim=-1)
        q_k = q_k * valid.unsqueeze(-1)
        # Eq. (5)
        alpha = self.alpha.weight[:length].unsqueeze(0)  # (1, L, D): α_1..α_L
        h = self.ln4(alpha + z)  # (B, L, D)
        z_prime = h + torch.relu(self.transform(h))  # (B, L, D)
        last = (lengths - 1).clamp(min=0)  # index of position m
        z_m = z[torch.arange(batch, device=z.device), last]  # (B, D)
        z_big_m = self.alpha(last) + z_m + self.b_prime  # (B, D): z_M
        logits = (z_prime @ self.ln3(z_big_m).unsqueeze(-1)).squeeze(-1) * scale  # (B, L)
        q = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
        q = torch.nan_to_num(q, nan=0.0)  # an empty sequence (length 0) gets no weight at all
        return q_k, q

    def forward(self, z: torch.Tensor, lengths: torch.Tensor, beta_set: torch.Tensor):
        """Args:
            z: (B, L, D) encoder outputs; lengths: (B,) number of valid positions m;
            beta_set: (B,) which β set each row uses (0 input, 1 reversed label sequence).

        Returns:
            φ: (B, K, D).
        """
        q_k, q = self.weights(z, lengths)
        pooled = torch.einsum("blk,bl,bld->bkd", q_k, q, z)  # (B, K, D): Σ_i q_i^(k) q_i z_i
        return self.ln5(self.beta[beta_set] + pooled)  # Eq. (6)
