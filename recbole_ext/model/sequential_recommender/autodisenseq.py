"""AutoDisenSeq: disentangled Seq2Seq sequence encoder with a searched attention architecture.

Paper: "Automated Disentangled Sequential Recommendation with Large Language Models", ACM
Transactions on Information Systems (TOIS) 43(2), article 29, 2025 — §4.1-4.2, Algorithm 1.
(The LLM re-ranking of §4.3 is not part of this model.)

Encoder (§4.1.1, §4.2): x_0 = LN(item embedding + trainable position embedding), then W searched
hidden layers (:class:`recbole_ext.model.nas.supernet.AttentionSupernet`) → z_1..z_m (causal).

Disentanglement (§4.1.2, Eq. 4-6, :class:`recbole_ext.model.layers.IntentionDisentanglement`):
K prototypes → φ^(1..K) ∈ R^D per sequence; two β sets (input vs. reversed label sequences).
Eq. 4 compares LN1(z_i) and LN2(c_k) by their cosine (``intent_similarity: cosine``, §4.1.2 "we use
cosine instead of dot product to reduce mode collapse"; ``dot``: the dot product), both over √D;
the β sets start at N(0, 1/D) (``beta_init: random``, the authors' code) or zero. Positions index
the position embedding and α of Eq. 5 from the oldest item (``position_from: oldest``) or from the
newest, which always sits at L - 1 (``newest``: the authors' left-padded sequences).

Seq2Seq training (§4.1.3), for a mini-batch B of (earlier s_1:i, next item h_{i+1}, reversed future
s_m:i+1) and scale 1/√D:

    Eq. (9)  L_S2I = -Σ_n ln [ max_k exp(h_n·φ^(k)(s_1:i^n)/√D)
                               / Σ_{n'∈B} Σ_{k'} exp(h_{n'}·φ^(k')(s_1:i^n)/√D) ]
    Eq. (12) ℓ(n,k) = -ln [ exp(φ^(k)(fut_n)·φ^(k)(earl_n)/√D)
                            / Σ_{n'∈B} Σ_t exp(φ^(t)(fut_{n'})·φ^(k)(earl_n)/√D) ]
    Eq. (10) L_S2S = Σ_{n,k} ℓ(n,k)·1[ℓ(n,k) ≤ τ],  τ = the ⌈λ|B|K⌉-th smallest ℓ
    Eq. (13) L = L_S2I + L_S2S      (both divided by |B| here, so the ratio of Eq. 13 is kept)

``s2i_negatives: all`` replaces the in-batch denominator of Eq. (9) by all items × K (an option,
not the paper). Scoring (§4.1.3, Fig. 2): score(item) = max_k h_item·φ^(k)/√D.

Fine-tuning (the authors' pipeline after Algorithm 1; ``pzrain/AutoDisenSeq-LLM``
``trainers.Trainer.dss_cross_entropy``), for a row with next item e⁺ and negatives e⁻_1..e⁻_J:

    s(e) = max_k e·φ^(k)      (no 1/√D; ``finetune_score_scale: sqrt_d``, ours: max_k e·φ^(k)/√D,
                              the scale of pre-training and of the ranking)
    L_FT = mean over rows of  [ -ln σ(s(e⁺)) - Σ_j ln(1 - σ(s(e⁻_j))) ]

Search (§4.2.3, Eq. 21-22) is driven by ``recbole_ext.trainer.autodisenseq.AutoDisenSeqTrainer``:
while ``sample_architectures`` is on, every training mini-batch runs one architecture drawn from
the prior (single-path one-shot); afterwards :meth:`set_architecture` fixes the searched one.

The stages (pre-training, search, fine-tuning) are the trainer's; Table 3's rows are in
``recbole_ext/properties/benchmark/autodisenseq_ml100k.yaml``.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_ext.config_checks import ConfigError, check_choices
from recbole_ext.data.seq2seq import (
    FUTURE_FIELD,
    FUTURE_LENGTH_FIELD,
    NEGATIVES_FIELD,
    attach_futures,
)
from recbole_ext.model.layers import (
    BETA_INITS,
    INTENT_SIMILARITIES,
    FastDropout,
    IntentionDisentanglement,
    causal_mask,
)
from recbole_ext.model.nas.space import Architecture, SearchSpace, load_arch
from recbole_ext.model.nas.supernet import AttentionSupernet, PrefixCache

PREFIX_CACHE_BYTES = 512 << 20  # layer outputs the search keeps for shared prefixes (all chunks)
POSITION_FROM = ("oldest", "newest")


# --- losses (pure functions) ------------------------------------------------------------------
def s2i_loss(phi: torch.Tensor, candidates: torch.Tensor, target_index: torch.Tensor):
    """Eq. (9) divided by |B|.

    Args:
        phi: (B, K, D) φ of the earlier sequences.
        candidates: (N, D) item embeddings of the denominator (in-batch: the B next items).
        target_index: (B,) row of each sequence's next item in ``candidates``.
    """
    batch, _, dim = phi.shape
    logits = torch.einsum("bkd,nd->bnk", phi, candidates) / math.sqrt(dim)  # (B, N, K)
    positive = logits[torch.arange(batch, device=phi.device), target_index].amax(-1)  # (B,)
    return (torch.logsumexp(logits.flatten(1), dim=-1) - positive).mean()  # (B, N·K) → (B,)


def s2s_terms(phi_earlier: torch.Tensor, phi_future: torch.Tensor) -> torch.Tensor:
    """ℓ(n, k) of Eq. (12): (B, K, D) × (B, K, D) → (B, K)."""
    dim = phi_earlier.size(-1)
    logits = torch.einsum("bkd,ntd->bknt", phi_earlier, phi_future) / math.sqrt(dim)  # (B,K,B,K)
    positive = (phi_earlier * phi_future).sum(-1) / math.sqrt(dim)  # (B, K)
    return torch.logsumexp(logits.flatten(2), dim=-1) - positive  # (B, K·B·K) → (B, K)


def s2s_keep_mask(terms: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. (10): True for the ⌈λ·|S|⌉ smallest of the |S| = |B|·K terms (ties: lowest index).

    >>> s2s_keep_mask(torch.tensor([[3.0, 1.0], [2.0, 5.0]]), 0.5).tolist()
    [[False, True], [True, False]]
    """
    assert 0.0 <= lam <= 1.0, lam
    n_keep = math.ceil(round(lam * terms.numel(), 9))  # round: 0.3·20 must keep 6, not 7
    mask = torch.zeros(terms.numel(), dtype=torch.bool, device=terms.device)
    if n_keep > 0:
        order = torch.sort(terms.detach().flatten(), stable=True).indices
        mask[order[:n_keep]] = True
    return mask.view_as(terms)


def s2s_loss(phi_earlier: torch.Tensor, phi_future: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. (10)-(12) divided by |B|."""
    terms = s2s_terms(phi_earlier, phi_future)  # (B, K)
    return (terms * s2s_keep_mask(terms, lam)).sum() / terms.size(0)


def finetune_bce_loss(
    phi: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, scale: float = 1.0
):
    """The authors' fine-tuning loss (``trainers.Trainer.dss_cross_entropy``), mean over rows.

    Each item is scored ``max_k e·φ^(k) / scale`` (the authors: ``scale`` 1, unscaled); the
    positive is pushed up and every negative down with a binary cross-entropy, summed over the J
    negatives: ``mean_b [softplus(-s⁺_b) + Σ_j softplus(s⁻_bj)]`` (= -ln σ(s⁺) - Σ_j ln(1 - σ(s⁻_j))).

    Args:
        phi: (B, K, D) φ of the input sequences.
        positive: (B, D) embedding of each row's next item.
        negatives: (B, J, D) embeddings of its negatives.
        scale: divides every score (√D: the pre-training's and the ranking's scale).
    """
    positive_logit = torch.einsum("bkd,bd->bk", phi, positive).amax(-1) / scale  # (B,)
    negative_logits = torch.einsum("bkd,bjd->bjk", phi, negatives).amax(-1) / scale  # (B, J)
    loss = F.softplus(-positive_logit) + F.softplus(negative_logits).sum(-1)  # (B,)
    return loss.mean()


FINETUNE_SCORE_SCALES = ("unscaled", "sqrt_d")  # finetune_score_scale: e·φ | e·φ/√D


class AutoDisenSeq(SequentialRecommender):
    """See the module docstring."""

    # options with fixed choices: {key: (choices, what they mean)}; Config checks a user's value
    # before the data loads, __init__ checks the merged one
    option_choices = {
        "intent_similarity": (INTENT_SIMILARITIES, " (Eq. 4)"),
        "beta_init": (BETA_INITS, " (Eq. 6's β per intent: random N(0, 1/D), or zero)"),
        "s2i_negatives": (("batch", "all"), " (Eq. 9's negatives)"),
        "finetune_score_scale": (
            FINETUNE_SCORE_SCALES,
            " (the fine-tuning BCE's e·φ as is, the authors', or over √D)",
        ),
        "position_from": (
            POSITION_FROM,
            " (the item that gets position 0, or the newest item at position L - 1)",
        ),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # --- config, read once ---
        self.hidden_size = config["hidden_size"]  # (int) D
        self.inner_size = config["inner_size"]  # (int) hidden size of the ffn operation
        self.n_layers = config["n_layers"]  # (int) W, searched hidden layers
        self.hidden_dropout_prob = config["hidden_dropout_prob"]  # (float)
        self.attn_dropout_prob = config["attn_dropout_prob"]  # (float)
        self.layer_norm_eps = config["layer_norm_eps"]  # (float)
        self.initializer_range = config["initializer_range"]  # (float) std of normal init
        self.disentangle = config["disentangle"]  # (bool) False: φ = z_m, one vector (S2I row)
        self.n_intents = config["n_intents"] if self.disentangle else 1  # (int) K
        self.intent_similarity = config["intent_similarity"]  # (str) Eq. 4: cosine | dot
        self.beta_init = config["beta_init"]  # (str) β of Eq. 6: random N(0, 1/D) | zero
        self.position_from = config["position_from"]  # (str) position index: oldest | newest
        self.lambda_s2s = config["lambda_s2s"]  # (float) λ ∈ [0, 1] of Eq. (10); 0 = S2I only
        self.s2i_negatives = config["s2i_negatives"]  # (str) batch (Eq. 9) | all items
        score_scale = config["finetune_score_scale"]  # (str) BCE scores: unscaled | sqrt_d
        self.search = config["arch_search"]  # (bool) supernet + evolutionary search before training
        arch_file = config["arch"]  # (str|None) fixed architecture JSON; skips the search
        ops = config["ops"]  # (list[str]) operation pool, "zero" first
        chunk = config["inference_chunk"]  # (int|None) rows per encoder pass when scoring
        seed = config["seed"]  # (int) seeds the architecture sampler

        if not 0.0 <= self.lambda_s2s <= 1.0:
            raise ConfigError(f"lambda_s2s={self.lambda_s2s} must lie in [0, 1] (Eq. 10)")
        check_choices(self.option_choices, config)
        # divides the fine-tuning BCE's scores: 1 (the authors') or √D (pre-training's scale)
        self.finetune_score_divisor = (
            math.sqrt(self.hidden_size) if score_scale == "sqrt_d" else 1.0
        )
        assert self.hidden_size > 0 and self.n_intents >= 1

        self.space = SearchSpace(self.n_layers, ops)
        architecture = None if self.search else self.space.sasrec_like()
        if arch_file:
            architecture, file_ops = load_arch(arch_file)
            missing = set(file_ops) - set(ops)
            if missing:
                raise ConfigError(f"{arch_file} uses operations {sorted(missing)} not in --ops")
            self.space.validate(architecture)
            self.search = False
        if chunk is not None and chunk < 0:
            raise ConfigError(f"inference_chunk={chunk}: a number of rows ≥ 1, 0 or ~ (auto)")
        if chunk is None:  # auto: cache-sized passes on CPU, the whole batch on a GPU
            chunk = 64 if torch.device(config["device"]).type == "cpu" else 0
        self.inference_chunk = chunk
        self.sample_architectures = False  # set by the trainer during supernet training
        self._arch_rng = random.Random(seed)

        # --- layers ---
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.input_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.input_dropout = FastDropout(self.hidden_dropout_prob)
        self.encoder = self._build_encoder(architecture)
        self.disentanglement = IntentionDisentanglement(
            self.hidden_size,
            self.n_intents,
            self.max_seq_length,
            self.layer_norm_eps,
            similarity=self.intent_similarity,
            beta_init=self.beta_init,
        )
        self.architecture: Architecture | None = architecture
        self.register_buffer("arch_genes", self.space.to_genes(architecture))
        self.apply(self._init_weights)

        if self.lambda_s2s > 0:  # the S2S loss needs each training row's reversed future
            attach_futures(dataset, self.max_seq_length)

    # --- construction -------------------------------------------------------------------------
    def _build_encoder(self, architecture):
        return AttentionSupernet(
            self.space,
            self.hidden_size,
            self.inner_size,
            self.hidden_dropout_prob,
            self.attn_dropout_prob,
            self.layer_norm_eps,
            archs=None if architecture is None else [architecture],
        )

    def _init_weights(self, module):
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    @property
    def needs_search(self) -> bool:
        return self.search and self.architecture is None

    def set_architecture(self, architecture: Architecture, reinitialise: bool = False) -> None:
        """Fix the encoder to ``architecture``, keeping only its parameters.

        ``reinitialise=False`` inherits the supernet's weights (fine-tune); True re-initialises the
        whole model (retrain from scratch).
        """
        self.space.validate(architecture)
        device = self.item_embedding.weight.device
        old = self.encoder.state_dict()
        self.encoder = self._build_encoder(architecture).to(device)
        if reinitialise:
            self.apply(self._init_weights)
            self.disentanglement.prototypes.data.normal_(0.0, self.initializer_range)
            self.disentanglement.reset_beta()
            self.disentanglement.b_prime.data.zero_()
        else:
            self.encoder.load_state_dict(
                {k: v for k, v in old.items() if k in self.encoder.state_dict()}
            )
        self.architecture = architecture
        self.arch_genes.copy_(self.space.to_genes(architecture))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Rebuild the encoder for the architecture stored in ``arch_genes`` first."""
        genes = state_dict.get("arch_genes")
        if genes is not None and not torch.equal(genes.cpu(), self.arch_genes.cpu()):
            architecture = self.space.from_genes(genes.cpu())
            if architecture is not None:
                self.set_architecture(architecture)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def reseed_architecture_sampler(self, seed: int) -> None:
        """Restart the single-path sampler of Eq. (21) from ``seed`` (per pre-training epoch, so
        that a resumed epoch draws the architectures of an uninterrupted run)."""
        self._arch_rng.seed(seed)

    # --- encoding -----------------------------------------------------------------------------
    def positions(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """Position-embedding index of each slot of left-aligned sequences of ``lengths``.

        ``oldest``: (1, W) = 0, 1, ..., W - 1. ``newest``: (B, W), item i of an m-item sequence at
        L - m + i, so the newest item is always at L - 1, as in the authors' left-padded
        sequences (``models.SASRecModel._add_position_embedding``, ``DSSEncoder.alphas[-1]``);
        padding slots are clamped to L - 1 (their outputs never reach a valid position).

        >>> class M: max_seq_length, position_from = 4, "newest"
        >>> AutoDisenSeq.positions(M, torch.tensor([2, 4]), 3).tolist()
        [[2, 3, 3], [0, 1, 2]]
        """
        slots = torch.arange(width, device=lengths.device).unsqueeze(0)  # (1, W)
        if self.position_from == "oldest":
            return slots
        newest = self.max_seq_length - lengths.unsqueeze(1) + slots  # (B, W)
        return newest.clamp(0, self.max_seq_length - 1)

    def _batch_architecture(self) -> Architecture:
        if self.training and self.sample_architectures:
            return self.space.sample(self._arch_rng)  # single path of Eq. (21)
        if self.architecture is None:
            raise RuntimeError(
                "the supernet has no fixed architecture: run the search (AutoDisenSeqTrainer), "
                "call set_architecture, or pass --arch=FILE / --arch_search=False"
            )
        return self.architecture

    def encode(self, item_seq, lengths, beta_set, architecture=None, cache=None) -> torch.Tensor:
        """(B, L) left-aligned item ids → φ (B, K, D); ``beta_set`` (B,) picks β per row.
        ``cache``: a :class:`~recbole_ext.model.nas.supernet.PrefixCache` (inference only)."""
        architecture = architecture or self._batch_architecture()
        positions = self.positions(lengths, item_seq.size(1))  # (1, L) or (B, L)
        x = self.item_embedding(item_seq) + self.position_embedding(positions)
        x = self.input_dropout(self.input_norm(x))  # (B, L, D)
        mask = causal_mask(item_seq.size(1), item_seq.device)  # (L, L): exact for left alignment
        z = self.encoder(x, mask, architecture, cache)  # (B, L, D)
        if not self.disentangle:
            return self.gather_indexes(z, (lengths - 1).clamp(min=0)).unsqueeze(1)  # (B, 1, D)
        return self.disentanglement(z, lengths, beta_set, positions)

    def encode_inference(self, item_seq, lengths, architecture=None, caches=None) -> torch.Tensor:
        """φ (B, K, D) of input sequences for scoring, as :meth:`encode` with β set 0.

        The rows are sorted by length and encoded ``inference_chunk`` at a time, each chunk cut to
        its longest sequence. Exact: the encoder is causal and the sequences left-aligned, so the
        positions past a chunk's longest sequence never reach the kept ones. On a CPU, chunks of
        64 rows keep a layer's working set in cache (``benchmarks/autodisenseq_speed.py``).
        ``caches``: a dict, filled with one :class:`PrefixCache` per chunk (the search reuses it
        across architectures; valid only in eval mode with unchanged weights).
        """
        chunk = self.inference_chunk or max(1, item_seq.size(0))
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
        n_chunks = math.ceil(order.numel() / chunk)
        phi = []
        for start in range(0, order.numel(), chunk):
            rows = order[start : start + chunk]
            width = max(1, int(lengths[rows[0]]))  # the chunk's longest sequence
            if caches is not None and start not in caches:
                caches[start] = PrefixCache(PREFIX_CACHE_BYTES // n_chunks)
            cache = None if caches is None else caches[start]
            beta = torch.zeros_like(rows)
            phi.append(
                self.encode(item_seq[rows, :width], lengths[rows], beta, architecture, cache)
            )
        return torch.cat(phi)[torch.argsort(order)]  # back to the input order

    @property
    def parameters_note(self) -> str:
        """What the run header's parameter count covers (:func:`recbole_ext.run_report.run_header`)."""
        if self.search:
            return "the supernet: every candidate operation; the searched model keeps fewer"
        return ""

    def forward(self, item_seq, item_seq_len):
        """φ (B, K, D) of input sequences."""
        return self.encode(item_seq, item_seq_len, torch.zeros_like(item_seq_len))

    def forward_seq2seq(self, interaction, architecture=None):
        """φ of the earlier sequences and of the reversed futures, through one encoder pass.

        Returns ``(phi_earlier (B, K, D), phi_future (B, K, D) or None when λ = 0)``.
        """
        item_seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        batch = item_seq.size(0)
        if self.lambda_s2s == 0:
            beta = torch.zeros_like(lengths)
            return self.encode(item_seq, lengths, beta, architecture), None
        seqs = torch.cat([item_seq, interaction[FUTURE_FIELD]])  # (2B, L)
        lens = torch.cat([lengths, interaction[FUTURE_LENGTH_FIELD]])  # (2B,)
        beta = torch.cat([torch.zeros_like(lengths), torch.ones_like(lengths)])  # input | label
        phi = self.encode(seqs, lens, beta, architecture)  # (2B, K, D)
        return phi[:batch], phi[batch:]

    # --- RecBole interface --------------------------------------------------------------------
    def seq2seq_losses(self, interaction, architecture=None):
        """``(L_S2I, L_S2S)`` of Eq. (9)-(12) for one mini-batch (L_S2S = 0 when λ = 0)."""
        phi_earlier, phi_future = self.forward_seq2seq(interaction, architecture)
        target = interaction[self.POS_ITEM_ID]
        if self.s2i_negatives == "batch":
            candidates = self.item_embedding(target)  # (B, D)
            index = torch.arange(target.numel(), device=target.device)
        else:
            candidates, index = self.item_embedding.weight[1:], target - 1  # (N - 1, D)
        loss_s2i = s2i_loss(phi_earlier, candidates, index)
        if phi_future is None:
            return loss_s2i, torch.zeros_like(loss_s2i)
        return loss_s2i, s2s_loss(phi_earlier, phi_future, self.lambda_s2s)

    FINETUNE_LOSS_NAMES = ("BCE",)  # what calculate_finetune_loss returns (logs, progress bars)

    @property
    def loss_names(self) -> tuple[str, ...]:
        """Names of what :meth:`calculate_loss` returns, in order (logs, progress bars)."""
        return ("S2I", "S2S") if self.lambda_s2s > 0 else ("S2I",)

    def calculate_loss(self, interaction):
        """The Seq2Seq loss of Eq. (13) (pre-training, and Algorithm 1's training)."""
        loss_s2i, loss_s2s = self.seq2seq_losses(interaction)
        return (loss_s2i, loss_s2s) if self.lambda_s2s > 0 else loss_s2i  # Eq. (13)

    def calculate_finetune_loss(self, interaction):
        """:func:`finetune_bce_loss` of the rows' next items against their negatives
        (``interaction[NEGATIVES_FIELD]`` (B, J), drawn by the trainer)."""
        phi = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # (B,K,D)
        positive = self.item_embedding(interaction[self.POS_ITEM_ID])  # (B, D)
        negatives = self.item_embedding(interaction[NEGATIVES_FIELD])  # (B, J, D)
        return finetune_bce_loss(phi, positive, negatives, self.finetune_score_divisor)

    def predict(self, interaction):
        """max_k h_item·φ^(k)/√D for each row's item. Consecutive rows with the same sequence
        (RecBole's pop100 evaluation repeats each user 101 times) are encoded once."""
        item_seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        new = torch.ones(item_seq.size(0), dtype=torch.bool, device=item_seq.device)
        new[1:] = (item_seq[1:] != item_seq[:-1]).any(-1) | (lengths[1:] != lengths[:-1])
        group = new.long().cumsum(0) - 1  # (B,) row → unique sequence
        phi = self.encode_inference(item_seq[new], lengths[new])[group]  # (B, K, D)
        item = self.item_embedding(interaction[self.ITEM_ID])  # (B, D)
        return torch.einsum("bkd,bd->bk", phi, item).amax(-1) / math.sqrt(self.hidden_size)

    def full_sort_predict(self, interaction):
        phi = self.encode_inference(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        scores = torch.einsum("bkd,nd->bkn", phi, self.item_embedding.weight)  # (B, K, N)
        return scores.amax(1) / math.sqrt(self.hidden_size)  # (B, N)
