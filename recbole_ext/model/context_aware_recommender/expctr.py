"""ExpCTR's IC alignment reward model: DeepFM whose deep tower also reads the explanation.

Xiaohan Yu, Li Zhang, Chong Chen. "Explainable CTR Prediction via LLM Reasoning." WSDM 2025.

- Eq. 11: ``z_ui = MeanPooling(f_encoder(Z_ui))``, the frozen sentence encoder's mean-pooled
  embedding of the explanation (``recbole_ext.llm.encoder.SentenceEncoder``), handed in by the
  trainer through :meth:`ExpCTR.set_explanations` (pairs without one read a zero vector).
- Eq. 12: ``s^r_ui = f_bar(Concat(h_ui, z_ui))`` with DeepFM (the paper's backbone; RecBole's
  :class:`~recbole.model.context_aware_recommender.DeepFM`): ``h_ui`` is the flattened field
  embeddings that DeepFM's deep tower reads; the tower reads ``[h_ui ; z_ui]`` instead, the FM part
  is unchanged. Another backbone is a subclass overriding :meth:`forward`.
- Eq. 13's ``s~^r_ui``: the same model with ``z_ui`` set to the zero vector
  (:meth:`scores_with_and_without`).
- Eq. 15: trained with BCE on (u, i, Z_ui) -- RecBole's ``calculate_loss``.

:class:`ExpCTRConfig` holds the run's other settings (samples, generator, stages: ``expctr_*`` of
``properties/model/ExpCTR.yaml``), read by :class:`recbole_ext.expctr_run.ExpCTRRun`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from recbole.model.context_aware_recommender import DeepFM
from recbole.model.layers import MLPLayers

from recbole_ext.config_sections import preset_names
from recbole_ext.data.expctr_samples import ExpCTRSampleConfig
from recbole_ext.llm.prompts import ExpCTRPromptWords

LC_SCORE_INPUTS = ("logprob", "prob")


@dataclass
class ExpCTRConfig(ExpCTRSampleConfig):
    """ExpCTR's settings outside the CTR model's own (``embedding_size``, ``mlp_hidden_size``...):
    the §5.1 samples (:class:`~recbole_ext.data.expctr_samples.ExpCTRSampleConfig`), the prompt
    domain, the explanation generator and the three stages (keys ``expctr_<field>`` of
    ``properties/model/ExpCTR.yaml``; ``expctr_preset`` names the preset layered over it)."""

    YAML_PREFIX: ClassVar[str] = "expctr_"
    YAML_FILE: ClassVar[str] = "model/ExpCTR.yaml"

    preset: str = field(
        metadata={
            "help": "The preset layered over ExpCTR.yaml (properties/preset/expctr_<name>.yaml): "
            "tiny (a CPU run in minutes) | paper (the yaml's paper-scale values)."
        }
    )
    domain: str = field(metadata={"help": "Prompt words: book | movie | product."})
    iterations: int = field(metadata={"help": "M: repetitions of stages 2-3."})
    lc_epochs: int = field(
        metadata={"help": "Stage 1 passes over the training samples (§5.1.4: two)."}
    )
    ic_epochs: int = field(metadata={"help": "Stage 3 passes per iteration."})
    lc_temperature: float = field(metadata={"help": "T of Eq. 8."})
    lc_score_input: str = field(
        metadata={
            "help": "What Eq. 8's p(t0) is: 'logprob' (TALLRec's softmax over the Yes/No logits) "
            "or 'prob' (the literal probabilities, softmaxed again)."
        },
    )
    pos_tokens: tuple[str, ...] = field(metadata={"help": "V_pos of Eq. 8."})
    neg_tokens: tuple[str, ...] = field(metadata={"help": "V_neg of Eq. 8."})
    final_refit: bool = field(
        metadata={
            "help": "After the last stage 3, train the CTR model once more (stage 2) on "
            "the final generator's explanations (the ExpCTR-Aug that is reported)."
        },
    )
    icl_baseline: bool = field(
        metadata={"help": "Also score the frozen LLM zero-shot (ICL) on eval data."}
    )
    generation_batch_size: int = field(
        metadata={"help": "Prompts per batch when explaining valid/test samples."}
    )
    lm_path: str | None = field(
        metadata={"help": "HF dir or GGUF of the generator; None: packaged SmolLM2."}
    )
    lm_threads: int = field(metadata={"help": "torch threads of the local LM."})
    explanation_dim: int = field(
        metadata={"help": "d of the sentence encoder (all-MiniLM-L6-v2: 384)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in preset_names("expctr"):
            raise ValueError(
                f"expctr_preset={self.preset!r}: choose one of {preset_names('expctr')} "
                "(recbole_ext/properties/preset/expctr_<name>.yaml)."
            )
        ExpCTRPromptWords.named(self.domain)  # raises naming the known domains
        if self.iterations < 0 or self.lc_epochs < 0 or self.ic_epochs < 0:
            raise ValueError("expctr_iterations, expctr_lc_epochs, expctr_ic_epochs must be >= 0.")
        if self.lc_temperature <= 0:
            raise ValueError(f"expctr_lc_temperature={self.lc_temperature}: set T > 0.")
        if self.lc_score_input not in LC_SCORE_INPUTS:
            raise ValueError(f"expctr_lc_score_input: choose one of {LC_SCORE_INPUTS}.")
        if not self.pos_tokens or not self.neg_tokens:
            raise ValueError("expctr_pos_tokens / expctr_neg_tokens must name at least one token.")
        self.pos_tokens, self.neg_tokens = tuple(self.pos_tokens), tuple(self.neg_tokens)
        if self.generation_batch_size < 1 or self.lm_threads < 1:
            raise ValueError("expctr_generation_batch_size and expctr_lm_threads must be >= 1.")


class ExpCTR(DeepFM):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.explanation_dim = config["expctr_explanation_dim"]  # (int) d of z_ui (MiniLM: 384)
        assert self.explanation_dim > 0, "expctr_explanation_dim must be positive"
        # Eq. 12: the deep tower reads Concat(h_ui, z_ui)
        size_list = [
            self.embedding_size * self.num_feature_field + self.explanation_dim
        ] + self.mlp_hidden_size
        self.mlp_layers = MLPLayers(size_list, self.dropout_prob)
        self.apply(self._init_weights)
        self.n_items = dataset.item_num
        self.USER_ID = config["USER_ID_FIELD"]  # (str) the pair that keys z_ui
        self.ITEM_ID = config["ITEM_ID_FIELD"]
        # (user, item) -> z lookup; not saved in checkpoints (the explanations live in the store)
        self.register_buffer("explanation_keys", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer(
            "explanation_table", torch.zeros(0, self.explanation_dim), persistent=False
        )

    # -- explanations ------------------------------------------------------------------------
    def set_explanations(self, users: torch.Tensor, items: torch.Tensor, vectors: torch.Tensor):
        """Use ``vectors`` (N, d) as z for the pairs (users[n], items[n]); replaces the table."""
        assert vectors.shape == (users.numel(), self.explanation_dim), vectors.shape
        keys = users.long().cpu() * self.n_items + items.long().cpu()  # (N,)
        keys, order = torch.sort(keys)
        assert keys.unique().numel() == keys.numel(), "one explanation per (user, item) pair"
        device = self.explanation_table.device
        self.explanation_keys = keys.to(device)
        self.explanation_table = vectors.float()[order].to(device)

    def explanation_vectors(self, interaction) -> torch.Tensor:
        """z of each row's (user, item) pair, zero when none was set: (B, d)."""
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        keys = users.long() * self.n_items + items.long()  # (B,)
        z = torch.zeros(keys.numel(), self.explanation_dim, device=keys.device)
        if self.explanation_keys.numel():
            index = torch.searchsorted(self.explanation_keys, keys).clamp(
                max=self.explanation_keys.numel() - 1
            )
            found = self.explanation_keys[index] == keys
            z[found] = self.explanation_table[index[found]]
        return z

    # -- Eq. 12 ------------------------------------------------------------------------------
    def forward(self, interaction, explanation: torch.Tensor | None = None):
        """Logit of s^r; ``explanation`` (B, d) overrides the stored z of the batch's pairs."""
        z = self.explanation_vectors(interaction) if explanation is None else explanation
        embeddings = self.concat_embed_input_fields(interaction)  # (B, F, D)
        batch_size = embeddings.shape[0]
        h = embeddings.view(batch_size, -1)  # (B, F*D) h_ui
        y_fm = self.first_order_linear(interaction) + self.fm(embeddings)  # (B, 1)
        y_deep = self.deep_predict_layer(self.mlp_layers(torch.cat([h, z], dim=-1)))  # (B, 1)
        return (y_fm + y_deep).squeeze(-1)

    @torch.no_grad()
    def scores_with_and_without(self, interaction, explanation: torch.Tensor):
        """``(s^r, s~^r)`` of Eq. 13: the CTR score with ``explanation`` and with z = 0."""
        s_r = self.sigmoid(self.forward(interaction, explanation))
        s_tilde = self.sigmoid(self.forward(interaction, torch.zeros_like(explanation)))
        return s_r, s_tilde
