r"""LR-Recsys: LLM contrastive explanations -> autoencoder -> DNN.

Yuyan Wang, Pan Li, Minmin Chen. "The Blessing of Reasoning: LLM-Based Contrastive Explanations
in Black-Box Recommender Systems" (Stanford GSB / Georgia Tech / Google; submitted to a
management-science journal, 2025). Implemented here:

- §3.4.2, Appendix A.1 -- text autoencoder. Word ids (maxlen 50) -> 8-d word embeddings,
  flattened (400) -> 64 -> 8 -> 64 -> 400, reshaped to (50, 8) and scored against the (tied) word
  embedding table to give per-position vocabulary logits :math:`w_{k,l,v}`; reconstruction loss
  (Eq. 2-3, 25) :math:`\mathcal{L} = -\sum_k\sum_l \log softmax(w_{k,l})_{y_{k,l}}`. The four
  weight matrices hold 400*64 + 64*8 + 8*64 + 64*400 = 52,224 parameters, the paper's count.
  The bottleneck is :math:`AE(\cdot)` (:meth:`ExplanationAutoEncoder.encode`).
- §3.5.1, Eq. 4 -- user / item embedding tables :math:`E_c, E_p`.
- §3.5.2, Eq. 6-13 -- history encoder: self-attention over the last n item embeddings
  (:math:`Q=SW^Q, K=SW^K, V=SW^V`, :math:`\alpha = softmax(QK^T/\sqrt{d_k})`, :math:`Z=\alpha V`)
  then the paper's GRU: :math:`h_1 = z_1`; for t >= 2
  :math:`r_t=\sigma(W_r z_t+U_r h_{t-1}+b_r)`, :math:`u_t=\sigma(W_u z_t+U_u h_{t-1}+b_u)`,
  :math:`\tilde h_t=\tanh(W_h z_t+U_h(r_t\odot h_{t-1})+b_h)`,
  :math:`h_t=u_t\odot h_{t-1}+(1-u_t)\odot\tilde h_t`; :math:`E_{seq}=h_n` at the last real item
  (padding is masked out of both layers).
- §3.5.3, A.2-A.3, Eq. 26-28 -- input self-attention over
  :math:`X=[E_{pos},E_{neg},E_c,E_p,E_{seq},E_{context}]` (d_k = 8), then MLP [64, 8, 1] with ReLU;
  classification: sigmoid + BCE (Eq. 14); regression (C.1): MSE on the sigmoid output against the
  rating rescaled to [0, 1], predictions mapped back to the rating scale.
- §5.5.2, Eq. 24 -- :math:`\bar\alpha_{pos}=\frac{1}{|I|}\sum_i\alpha_{i,pos}` (and neg):
  :func:`explanation_attention`; every component's share (Fig. 10): :func:`component_attention`.

Explanation embeddings are precomputed by ``LRRecsysTrainer`` (LLM -> autoencoder) for every
sample and held in buffers indexed by the ``sample_id`` field; a sample without one raises
:class:`MissingExplanationError` (only the ``free`` ablation needs none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType, ModelType
from torch import nn

from recbole_ext.config_checks import ConfigError, check_choices
from recbole_ext.data.lrrecsys_dataset import HOUR, SAMPLE_ID, WEEKDAY
from recbole_ext.data.lrrecsys_samples import HOURS, WEEKDAYS

TASKS = ("classification", "regression")
SOURCES = ("autoencoder", "sentence_encoder", "free")
PAD, UNK = 0, 1


class MissingExplanationError(RuntimeError):
    """A batch holds samples whose explanation embeddings were never computed."""


# ------------------------------------------------------------------------------------------------
# Attention (Eq. 6-9 and 26-28) and its read-outs (Eq. 24, Fig. 10)
# ------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Single-head scaled dot-product self-attention without biases (Eq. 6-9 / 26-28)."""

    def __init__(self, dim: int):
        super().__init__()
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)  # d_k = dim

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None):
        """``x`` (B, n, d); ``key_mask`` (B, n) True for real elements.

        Returns ``(z, alpha)``: (B, n, d) outputs and (B, n, n) weights whose rows sum to 1.
        """
        q, k, v = self.w_q(x), self.w_k(x), self.w_v(x)  # (B, n, d) each
        scores = q @ k.transpose(1, 2) * self.scale  # (B, n, n)   Eq. 7
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        alpha = torch.softmax(scores, dim=-1)  # (B, n, n)   Eq. 8
        return alpha @ v, alpha  # (B, n, d)   Eq. 9


def explanation_attention(
    alpha: torch.Tensor, pos_index: int = 0, neg_index: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Eq. 24: :math:`\bar\alpha_{pos} = \frac{1}{|I|}\sum_{i\in I}\alpha_{i,pos}` (same for neg).

    ``alpha`` (B, |I|, |I|) -> two (B,) tensors.

    >>> a = torch.tensor([[[.5, .3, .2], [.1, .6, .3], [.3, .3, .4]]])
    >>> [round(float(v), 4) for v in explanation_attention(a)]
    [0.3, 0.4]
    """
    return alpha[:, :, pos_index].mean(dim=1), alpha[:, :, neg_index].mean(dim=1)


def component_attention(alpha: torch.Tensor) -> torch.Tensor:
    """Average attention each input component receives (Fig. 10): (B, n, n) -> (B, n), rows sum
    to 1 because every row of ``alpha`` does."""
    return alpha.mean(dim=1)


# ------------------------------------------------------------------------------------------------
# History encoder (Eq. 6-13)
# ------------------------------------------------------------------------------------------------
class PaperGRUCell(nn.Module):
    """The GRU of Eq. 10-13 (reset gate applied before :math:`U_h`, as written in Eq. 12)."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Linear(dim, 3 * dim)  # W_r, W_u, W_h and b_r, b_u, b_h
        self.u_ru = nn.Linear(dim, 2 * dim, bias=False)  # U_r, U_u
        self.u_h = nn.Linear(dim, dim, bias=False)  # U_h

    def forward(self, z_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        wr, wu, wh = self.w(z_t).chunk(3, dim=-1)  # (B, d) each
        ur, uu = self.u_ru(h_prev).chunk(2, dim=-1)
        r_t = torch.sigmoid(wr + ur)  # Eq. 10
        u_t = torch.sigmoid(wu + uu)  # Eq. 11
        h_tilde = torch.tanh(wh + self.u_h(r_t * h_prev))  # Eq. 12
        return u_t * h_prev + (1 - u_t) * h_tilde  # Eq. 13


class HistoryEncoder(nn.Module):
    """Self-attention then GRU over a right-padded history; returns :math:`h_n` (B, d)."""

    def __init__(self, dim: int):
        super().__init__()
        self.attention = SelfAttention(dim)
        self.gru = PaperGRUCell(dim)

    def forward(self, seq_emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``seq_emb`` (B, n, d) item embeddings, positions >= ``lengths`` (B,) are padding."""
        n = seq_emb.size(1)
        mask = torch.arange(n, device=seq_emb.device)[None, :] < lengths[:, None]  # (B, n)
        # A history of length 0 attends to its (padding) first slot rather than to nothing.
        mask[:, 0] = True
        z, _ = self.attention(seq_emb, key_mask=mask)  # (B, n, d)
        h = z[:, 0]  # h_1 = z_1
        for t in range(1, n):
            h_next = self.gru(z[:, t], h)
            h = torch.where(mask[:, t, None], h_next, h)  # padding keeps h_{t-1}
        return h


# ------------------------------------------------------------------------------------------------
# Autoencoder (§3.4.2, A.1, Eq. 2-3, 25)
# ------------------------------------------------------------------------------------------------
def build_vocabulary(sentences: Iterable[Sequence[str]], min_count: int = 1) -> dict[str, int]:
    """Word -> id, ``<pad>`` = 0, ``<unk>`` = 1, then words by frequency (ties alphabetical).

    >>> build_vocabulary([["b", "a"], ["a"]])
    {'<pad>': 0, '<unk>': 1, 'a': 2, 'b': 3}
    """
    counts: dict[str, int] = {}
    for sentence in sentences:
        for word in sentence:
            counts[word] = counts.get(word, 0) + 1
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return {"<pad>": PAD, "<unk>": UNK, **{w: i + 2 for i, w in enumerate(words)}}


def encode_words(
    sentences: Sequence[Sequence[str]], vocabulary: dict[str, int], max_words: int
) -> torch.Tensor:
    """(N, max_words) word ids, truncated / padded with 0.

    >>> encode_words([["a", "zz"]], {"<pad>": 0, "<unk>": 1, "a": 2}, 3).tolist()
    [[2, 1, 0]]
    """
    ids = torch.zeros(len(sentences), max_words, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        words = [vocabulary.get(w, UNK) for w in sentence[:max_words]]
        ids[row, : len(words)] = torch.tensor(words, dtype=torch.long)
    return ids


class ExplanationAutoEncoder(nn.Module):
    """MLP autoencoder of word ids; ``encode`` is the 8-d bottleneck AE(.)."""

    def __init__(self, vocab_size: int, max_words: int, word_dim: int, hidden: Sequence[int]):
        super().__init__()
        assert len(hidden) == 3 and hidden[0] == hidden[2], "hidden is [h, bottleneck, h]"
        self.max_words, self.word_dim = max_words, word_dim
        self.words = nn.Embedding(vocab_size, word_dim)
        nn.init.normal_(self.words.weight, std=0.1)  # small tied logits at the start
        flat = max_words * word_dim  # 8 * 50 = 400
        self.encoder = nn.Sequential(
            nn.Linear(flat, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1])
        )
        self.decoder = nn.Sequential(
            nn.Linear(hidden[1], hidden[2]), nn.ReLU(), nn.Linear(hidden[2], flat)
        )
        self.bottleneck_dim = hidden[1]

    def encode(self, word_ids: torch.Tensor) -> torch.Tensor:
        """(B, maxlen) ids -> (B, 8) AE(z)."""
        return self.encoder(self.words(word_ids).flatten(1))  # (B, L*D) -> (B, 8)

    def forward(self, word_ids: torch.Tensor) -> torch.Tensor:
        """(B, maxlen) ids -> (B, maxlen, V) logits w_{k,l,v} (tied to the word embeddings)."""
        out = self.decoder(self.encode(word_ids))  # (B, L*D)
        out = out.view(-1, self.max_words, self.word_dim)  # (B, L, D)
        return out @ self.words.weight.T  # (B, L, V)

    def reconstruction_loss(self, word_ids: torch.Tensor) -> torch.Tensor:
        """Eq. 25 per sentence, averaged over the batch: mean_k sum_l CE(w_{k,l}, y_{k,l})."""
        logits = self(word_ids)  # (B, L, V)
        ce = F.cross_entropy(logits.flatten(0, 1), word_ids.flatten(), reduction="none")
        return ce.view(word_ids.shape).sum(dim=1).mean()


# ------------------------------------------------------------------------------------------------
# The recommender
# ------------------------------------------------------------------------------------------------
class LRRecsys(AbstractRecommender):
    """DNN recommendation component of LR-Recsys over precomputed explanation embeddings."""

    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE
    # {key: (choices, what they mean)}: checked by Config before the data loads, and here
    option_choices = {
        "lrrecsys_task": (TASKS, " (0/1 CTR label, or the rating)"),
        "lrrecsys_explanation_source": (
            SOURCES,
            " (the paper's autoencoder, raw sentence embeddings, or learnt vectors: C.5)",
        ),
    }

    def __init__(self, config, dataset):
        super().__init__()
        self.task = config["lrrecsys_task"]  # (str) classification | regression
        self.dim = config["embedding_size"]  # (int) 8: every input element and d_k
        mlp_hidden = config["lrrecsys_mlp_hidden"]  # (list) [64, 8]
        self.use_negative = config["lrrecsys_use_negative"]  # (bool)
        self.use_context = config["lrrecsys_use_context"]  # (bool)
        self.source = config["lrrecsys_explanation_source"]  # (str) see SOURCES
        encoder_dim = config["lrrecsys_encoder_dim"]  # (int) sentence-encoder width
        self.rating_min, self.rating_max = (float(v) for v in config["lrrecsys_rating_range"])
        self.LABEL = config["LABEL_FIELD"]
        self.RATING = config["RATING_FIELD"]
        self.USER_ID = config["USER_ID_FIELD"]
        self.ITEM_ID = config["ITEM_ID_FIELD"]
        self.ITEM_SEQ = self.ITEM_ID + config["LIST_SUFFIX"]
        self.ITEM_SEQ_LEN = config["ITEM_LIST_LENGTH_FIELD"]
        self._check_settings()

        if not hasattr(dataset, "samples"):
            raise TypeError(
                f"LRRecsys needs an LRRecsysDataset, got {type(dataset).__name__}: "
                "recbole_ext/data/dataset.py must import LRRecsysDataset from lrrecsys_dataset."
            )
        n_samples = len(dataset.samples)
        self.n_users, self.n_items = dataset.num(self.USER_ID), dataset.num(self.ITEM_ID)
        self.user_embedding = nn.Embedding(self.n_users, self.dim)  # E_c
        self.item_embedding = nn.Embedding(self.n_items, self.dim, padding_idx=0)  # E_p
        self.history_encoder = HistoryEncoder(self.dim)
        if self.use_context:
            self.hour_embedding = nn.Embedding(HOURS, self.dim)
            self.weekday_embedding = nn.Embedding(WEEKDAYS, self.dim)
        self.components = ["pos", "neg", "c", "p", "seq", "context"]
        if not self.use_negative:
            self.components.remove("neg")
        if not self.use_context:
            self.components.remove("context")

        if self.source == "free":  # C.5 Ablation 1: learnable vectors instead of explanations
            self.free_pos = nn.Parameter(torch.empty(self.dim))
            self.free_neg = nn.Parameter(torch.empty(self.dim))
        else:
            width = self.dim if self.source == "autoencoder" else encoder_dim
            self.register_buffer("explanation_pos", torch.zeros(n_samples, width))
            self.register_buffer("explanation_neg", torch.zeros(n_samples, width))
            self.register_buffer("explained", torch.zeros(n_samples, dtype=torch.bool))
            if self.source == "sentence_encoder":  # Ablation 2: raw embeddings, projected to d
                self.project_pos = nn.Linear(width, self.dim)
                self.project_neg = nn.Linear(width, self.dim)

        self.input_attention = SelfAttention(self.dim)  # Eq. 26-28
        sizes = [len(self.components) * self.dim, *mlp_hidden]
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))  # [64, 8, 1]
        self.apply(self._init_weights)
        self.reset_free_vectors()

    def _check_settings(self) -> None:
        values = {"lrrecsys_task": self.task, "lrrecsys_explanation_source": self.source}
        check_choices(self.option_choices, values)
        if self.task == "regression" and self.LABEL != self.RATING:
            raise ConfigError(
                f"lrrecsys_task=regression predicts {self.RATING!r}: pass --LABEL_FIELD="
                f"{self.RATING} --metrics=\"['RMSE','MAE']\" --valid_metric=RMSE."
            )
        if self.task == "classification" and self.LABEL == self.RATING:
            raise ConfigError(
                "lrrecsys_task=classification needs the derived 0/1 label: pass "
                "--LABEL_FIELD=label (or --lrrecsys_task=regression)."
            )
        if not self.rating_min < self.rating_max:
            raise ConfigError("lrrecsys_rating_range: give [min, max] with min < max, e.g. [1, 5].")

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.1)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def reset_free_vectors(self) -> None:
        if self.source == "free":
            nn.init.normal_(self.free_pos, std=0.1)
            nn.init.normal_(self.free_neg, std=0.1)

    # -- explanation embeddings ---------------------------------------------------------------
    def set_explanation_features(
        self, pos: torch.Tensor, neg: torch.Tensor, sample_ids: torch.Tensor | None = None
    ) -> None:
        """Store explanation embeddings (rows of ``sample_ids``, or all samples) in the buffers."""
        if self.source == "free":
            raise ValueError("lrrecsys_explanation_source=free uses no explanation embeddings.")
        if pos.shape != neg.shape or pos.shape[1] != self.explanation_pos.shape[1]:
            raise ValueError(
                f"explanation embeddings of shape {tuple(pos.shape)} / {tuple(neg.shape)} do not "
                f"fit ({self.explanation_pos.shape[1]} columns expected)."
            )
        if sample_ids is None:
            sample_ids = torch.arange(self.explanation_pos.shape[0])
        sample_ids = sample_ids.to(self.explained.device)
        self.explanation_pos[sample_ids] = pos.to(self.explanation_pos)
        self.explanation_neg[sample_ids] = neg.to(self.explanation_neg)
        self.explained[sample_ids] = True

    def explanation_inputs(self, sample_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) E_pos and E_neg of a batch; raises for samples without explanations."""
        if self.source == "free":
            batch = sample_id.shape[0]
            return self.free_pos.expand(batch, -1), self.free_neg.expand(batch, -1)
        explained = self.explained[sample_id]
        if not bool(explained.all()):
            missing = sample_id[~explained][:5].tolist()
            raise MissingExplanationError(
                f"{int((~explained).sum())} sample(s) in this batch have no explanation "
                f"embedding (sample_id {missing}...). Explanations are made by LRRecsysTrainer "
                "before fitting; a reloaded model carries them in its checkpoint. Use "
                "--lrrecsys_explanation_source=free for the ablation without explanations."
            )
        pos, neg = self.explanation_pos[sample_id], self.explanation_neg[sample_id]
        if self.source == "sentence_encoder":
            pos, neg = self.project_pos(pos), self.project_neg(neg)
        return pos, neg

    # -- forward ------------------------------------------------------------------------------
    def forward(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the logit (B,) and the input attention weights (B, |I|, |I|)."""
        e_pos, e_neg = self.explanation_inputs(interaction[SAMPLE_ID])  # (B, d) each
        e_c = self.user_embedding(interaction[self.USER_ID])  # (B, d)
        e_p = self.item_embedding(interaction[self.ITEM_ID])  # (B, d)
        seq = self.item_embedding(interaction[self.ITEM_SEQ])  # (B, n, d)
        e_seq = self.history_encoder(seq, interaction[self.ITEM_SEQ_LEN])  # (B, d)
        parts = {"pos": e_pos, "neg": e_neg, "c": e_c, "p": e_p, "seq": e_seq}
        if self.use_context:
            parts["context"] = self.hour_embedding(interaction[HOUR]) + self.weekday_embedding(
                interaction[WEEKDAY]
            )
        x = torch.stack([parts[name] for name in self.components], dim=1)  # (B, |I|, d)
        z, alpha = self.input_attention(x)  # (B, |I|, d), (B, |I|, |I|)
        logit = self.mlp(z.flatten(1)).squeeze(-1)  # (B,)
        return logit, alpha

    def calculate_loss(self, interaction):
        logit, _ = self.forward(interaction)
        if self.task == "classification":
            return F.binary_cross_entropy_with_logits(logit, interaction[self.LABEL].float())
        target = (interaction[self.RATING].float() - self.rating_min) / (
            self.rating_max - self.rating_min
        )
        return F.mse_loss(torch.sigmoid(logit), target)

    def predict(self, interaction):
        probability = torch.sigmoid(self.forward(interaction)[0])
        if self.task == "classification":
            return probability
        return self.rating_min + (self.rating_max - self.rating_min) * probability

    @torch.no_grad()
    def attention(self, interaction) -> dict[str, torch.Tensor]:
        """Per-sample read-outs: Eq. 24 ᾱ_pos / ᾱ_neg and each component's share (Fig. 10)."""
        _, alpha = self.forward(interaction)
        shares = component_attention(alpha)  # (B, |I|)
        out = {f"share_{name}": shares[:, i] for i, name in enumerate(self.components)}
        out["alpha_pos"] = shares[:, self.components.index("pos")]
        if self.use_negative:
            out["alpha_neg"] = shares[:, self.components.index("neg")]
        return out
