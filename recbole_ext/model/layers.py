"""Building blocks shared by recbole-ext's models."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


INTENT_SIMILARITIES = ("cosine", "dot")  # Eq. (4): the paper's cosine, or a plain dot product
BETA_INITS = ("random", "zero")  # Eq. (6) biases: the authors' N(0, 1/D) per intent, or zeros
COSINE_EPS = 1e-6  # torch.nn.CosineSimilarity's eps in the authors' code


def intent_logits(z: torch.Tensor, prototypes: torch.Tensor, similarity: str) -> torch.Tensor:
    """Logits of Eq. (4): ``sim(z_i, c_k) / √D`` for every position and prototype.

    ``cosine`` (§4.1.2, "we use cosine instead of dot product to reduce mode collapse"; the
    authors' ``modules.py`` ``DSSEncoder._intention_clustering``, ``nn.CosineSimilarity(eps=1e-6)``,
    still divided by √D): ``z·c / (max(‖z‖, ε) max(‖c‖, ε))``; ``dot``: ``z·c``. The caller
    passes the layer-normed vectors LN1(z_i) and LN2(c_k).

    Args:
        z: (B, L, D); prototypes: (K, D).

    Returns:
        (B, L, K).

    Raises:
        ValueError: for another ``similarity``.
    """
    if similarity == "cosine":
        z = F.normalize(z, dim=-1, eps=COSINE_EPS)
        prototypes = F.normalize(prototypes, dim=-1, eps=COSINE_EPS)
    elif similarity != "dot":
        raise ValueError(f"intent_similarity={similarity!r}: choose one of {INTENT_SIMILARITIES}")
    return z @ prototypes.T / math.sqrt(z.size(-1))  # (B, L, D) · (D, K) → (B, L, K)


class IntentionDisentanglement(nn.Module):
    """Disentanglement layer of AutoDisenSeq (TOIS 2025, §4.1.2, Eq. 4-6).

    Given encoder outputs z_1..z_m (left-aligned, padding after position m):

    - Eq. (4) intention clustering: q_i^(k) = softmax_k( sim(LN1(z_i), LN2(c_k)) / √D ) over K
      trainable prototypes c_k, ``sim`` the cosine (the paper, default) or the dot product
      (:func:`intent_logits`);
    - Eq. (5) relation to the future intention: q_i = softmax_i( z'_i · LN3(z_M) / √D ) over the
      m valid positions, with z_M = α_m + z_m + b' and
      z'_s = LN4(α_s + z_s) + ReLU(Wᵀ LN4(α_s + z_s) + b), α a positional embedding indexed by
      ``positions`` (default 0..L-1 from the oldest item);
    - Eq. (6) aggregation: φ^(k) = LN5( β_k + Σ_i q_i^(k) q_i z_i ), with one set of biases β per
      kind of sequence (set 0: input sequences, set 1: reversed label sequences), initialised
      ``random`` (N(0, 1/D) per element, so the K intents start apart: the authors'
      ``DSSEncoder.__init__``, std 1/√D) or ``zero``.

    Padding positions get q_i = q_i^(k) = 0.
    """

    def __init__(
        self,
        hidden_size: int,
        n_intents: int,
        max_len: int,
        layer_norm_eps: float,
        n_beta_sets: int = 2,
        similarity: str = "cosine",
        beta_init: str = "random",
    ):
        super().__init__()
        assert n_intents >= 1 and hidden_size >= 1
        if similarity not in INTENT_SIMILARITIES:
            raise ValueError(
                f"intent_similarity={similarity!r}: choose one of {INTENT_SIMILARITIES}"
            )
        if beta_init not in BETA_INITS:
            raise ValueError(f"beta_init={beta_init!r}: choose one of {BETA_INITS}")
        self.hidden_size = hidden_size
        self.similarity = similarity
        self.beta_init = beta_init
        self.prototypes = nn.Parameter(torch.randn(n_intents, hidden_size) * 0.02)  # c_k (K, D)
        self.alpha = nn.Embedding(max_len, hidden_size)  # α_s
        self.b_prime = nn.Parameter(torch.zeros(hidden_size))  # b'
        self.transform = nn.Linear(hidden_size, hidden_size)  # Wᵀ x + b
        self.beta = nn.Parameter(torch.empty(n_beta_sets, n_intents, hidden_size))  # β (S, K, D)
        self.reset_beta()
        self.ln1, self.ln2, self.ln3, self.ln4, self.ln5 = (
            nn.LayerNorm(hidden_size, eps=layer_norm_eps) for _ in range(5)
        )

    def reset_beta(self) -> None:
        """(Re-)initialise both β sets as ``beta_init`` says."""
        with torch.no_grad():
            if self.beta_init == "random":
                self.beta.normal_(0.0, 1.0 / math.sqrt(self.hidden_size))
            else:
                self.beta.zero_()

    def weights(self, z: torch.Tensor, lengths: torch.Tensor, positions=None):
        """q^(k) (B, L, K) of Eq. (4) and q (B, L) of Eq. (5), zero at padding positions.

        ``positions``: (B, L) or (1, L) index of α for each slot (default 0..L-1)."""
        batch, length, dim = z.shape
        valid = torch.arange(length, device=z.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
        if positions is None:
            positions = torch.arange(length, device=z.device).unsqueeze(0)  # (1, L)
        # Eq. (4): (B, L, D) · (K, D) → (B, L, K), softmax over the K prototypes
        logits_k = intent_logits(self.ln1(z), self.ln2(self.prototypes), self.similarity)
        q_k = torch.softmax(logits_k, dim=-1) * valid.unsqueeze(-1)
        # Eq. (5)
        h = self.ln4(self.alpha(positions) + z)  # (B, L, D): LN4(α_s + z_s)
        z_prime = h + torch.relu(self.transform(h))  # (B, L, D)
        rows = torch.arange(batch, device=z.device)
        last = (lengths - 1).clamp(min=0)  # index of position m
        last_position = positions.expand(batch, -1)[rows, last]  # (B,): α index of position m
        z_big_m = self.alpha(last_position) + z[rows, last] + self.b_prime  # (B, D): z_M
        logits = (z_prime @ self.ln3(z_big_m).unsqueeze(-1)).squeeze(-1) / math.sqrt(dim)  # (B, L)
        q = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
        q = torch.nan_to_num(q, nan=0.0)  # an empty sequence (length 0) gets no weight at all
        return q_k, q

    def forward(
        self, z: torch.Tensor, lengths: torch.Tensor, beta_set: torch.Tensor, positions=None
    ):
        """Args:
            z: (B, L, D) encoder outputs; lengths: (B,) number of valid positions m;
            beta_set: (B,) which β set each row uses (0 input, 1 reversed label sequence);
            positions: (B, L) or (1, L) α index of each slot (default 0..L-1).

        Returns:
            φ: (B, K, D).
        """
        q_k, q = self.weights(z, lengths, positions)
        pooled = torch.einsum("blk,bl,bld->bkd", q_k, q, z)  # (B, K, D): Σ_i q_i^(k) q_i z_i
        return self.ln5(self.beta[beta_set] + pooled)  # Eq. (6)
