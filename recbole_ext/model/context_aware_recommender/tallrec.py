"""TALLRec: LoRA instruction tuning of the local LM on Yes/No labels (ExpCTR's Table-1 baseline).

Keqin Bao, Jizhi Zhang, Yang Zhang, Wenjie Wang, Fuli Feng, Xiangnan He. "TALLRec: An Effective
and Efficient Tuning Framework to Align Large Language Model with Recommendation." RecSys 2023;
as compared in Yu, Zhang, Chen, "Explainable CTR Prediction via LLM Reasoning", WSDM 2025, Table 1.

- Instruction: the sample's history prompt (:func:`recbole_ext.llm.prompts.expctr_icl_messages`:
  liked and disliked items, the target, answer "Yes." or "No.") on ExpCTR's §5.1 samples
  (``dataset_class: ExpCTRDataset``), so it is trained and tested on ExpCTR's rows.
- Score: ``s = softmax_T(log p(Yes), log p(No))`` of the first reply token
  (:func:`recbole_ext.llm.local_lm.yes_no_logprobs` + :func:`recbole_ext.rl.rewards.lc_score`, the
  scorer of ExpCTR's LC reward and ICL baseline).
- Loss: the Yes/No cross-entropy ``-[y log s + (1 - y) log(1 - s)]`` of that two-way softmax.
  (TALLRec's code trains the LM loss of the answer tokens over the whole vocabulary; the two-way
  form trains exactly the score that is evaluated.)
- Only the LoRA adapters (``lora_*`` keys, :func:`recbole_ext.llm.local_lm.add_lora`) train;
  checkpoints hold only them. Before any step the adapters are zero, so TALLRec with ``epochs: 0``
  is ICL: the frozen LM's zero-shot p(Yes) on the same prompt.

RecBole's own ``Trainer`` fits it (``train_batch_size`` prompts per step) and evaluates it with its
AUC, LogLoss, MAE and RMSE, as every other CTR model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType, ModelType

from recbole_ext.config_sections import read_section
from recbole_ext.data.expctr_dataset import history_texts
from recbole_ext.data.item_text import item_texts
from recbole_ext.llm.config import LoRASettings
from recbole_ext.llm.local_lm import add_lora, first_token_ids, load_local_lm, yes_no_logprobs
from recbole_ext.llm.prompts import EXPCTR_WORDS, ExpCTRPromptWords, expctr_icl_messages
from recbole_ext.rl.rewards import lc_score


@dataclass
class TALLRecConfig:
    """TALLRec settings besides RecBole's training keys and the ``lora_*`` adapters (keys
    ``tallrec_<field>`` of ``properties/model/TALLRec.yaml``)."""

    YAML_PREFIX: ClassVar[str] = "tallrec_"
    YAML_FILE: ClassVar[str] = "model/TALLRec.yaml"

    lm_path: str | None = field(
        metadata={"help": "HF dir or GGUF of the LM; None: packaged SmolLM2."}
    )
    lm_threads: int = field(metadata={"help": "torch threads of the local LM."})
    domain: str = field(metadata={"help": "Prompt words: book | movie | product."})
    pos_tokens: tuple[str, ...] = field(metadata={"help": "Answer words of 1."})
    neg_tokens: tuple[str, ...] = field(metadata={"help": "Answer words of 0."})
    temperature: float = field(metadata={"help": "T of the Yes/No softmax."})

    def __post_init__(self) -> None:
        if self.lm_threads < 1:
            raise ValueError(f"tallrec_lm_threads={self.lm_threads}: set at least 1.")
        if self.domain not in EXPCTR_WORDS:
            raise ValueError(
                f"tallrec_domain={self.domain!r}: choose one of {sorted(EXPCTR_WORDS)} (the prompt "
                "words TALLRec shares with ExpCTR's expctr_domain)."
            )
        if not self.pos_tokens or not self.neg_tokens:
            raise ValueError("tallrec_pos_tokens / tallrec_neg_tokens must name at least one word.")
        self.pos_tokens, self.neg_tokens = tuple(self.pos_tokens), tuple(self.neg_tokens)
        if set(self.pos_tokens) & set(self.neg_tokens):
            raise ValueError("a word is in both tallrec_pos_tokens and tallrec_neg_tokens.")
        if self.temperature <= 0:
            raise ValueError(f"tallrec_temperature={self.temperature}: set T > 0 (1.0: TALLRec).")


class TALLRec(AbstractRecommender):
    """p(Yes) of a LoRA-tuned causal LM reading the sample's history prompt.

    ``lm=(model, tokenizer)`` may be handed in (tests); otherwise ``tallrec_lm_path`` is loaded.
    """

    type = ModelType.CONTEXT
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset, *, lm: tuple[Any, Any] | None = None):
        super().__init__()
        if not hasattr(dataset, "expctr_history"):
            raise TypeError(
                "TALLRec reads ExpCTR's §5.1 samples: set dataset_class: ExpCTRDataset "
                "(properties/model/TALLRec.yaml does; check that no override unsets it)."
            )
        self.settings = read_section(config, TALLRecConfig)
        self.USER_ID = config["USER_ID_FIELD"]  # (str) user field of the interaction
        self.ITEM_ID = config["ITEM_ID_FIELD"]  # (str) target item field
        self.LABEL = config["LABEL_FIELD"]  # (str) 0/1 label (rating >= threshold)
        self.domain = ExpCTRPromptWords.named(self.settings.domain)
        self.history = dataset.expctr_history  # (user, item) -> (liked, disliked) item ids
        self.item_text = item_texts(dataset, config["item_text_fields"])  # item id -> text
        if lm is None:
            lm = load_local_lm(self.settings.lm_path, num_threads=self.settings.lm_threads)
        base, self.tokenizer = lm
        self.lm = add_lora(
            base, read_section(config, LoRASettings)
        )  # base frozen, adapters trainable
        self.pos_ids = first_token_ids(self.tokenizer, self.settings.pos_tokens)
        self.neg_ids = first_token_ids(self.tokenizer, self.settings.neg_tokens)
        assert not set(self.pos_ids) & set(self.neg_ids), "Yes/No words share a first token"

    def messages(self, interaction) -> list[list[dict[str, str]]]:
        """The history prompt of each (user, target) row."""
        users = interaction[self.USER_ID].tolist()
        items = interaction[self.ITEM_ID].tolist()
        return [
            expctr_icl_messages(*history_texts(self.history, self.item_text, u, i), self.domain)
            for u, i in zip(users, items, strict=True)
        ]

    def yes_no(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(Yes), log p(No))`` of the first reply token: (B,), (B,)."""
        return yes_no_logprobs(
            self.lm, self.tokenizer, self.messages(interaction), self.pos_ids, self.neg_ids
        )

    def forward(self, interaction) -> torch.Tensor:
        """Logit of s: ``(log p(Yes) - log p(No)) / T``, (B,)."""
        yes, no = self.yes_no(interaction)
        return (yes - no) / self.settings.temperature

    def calculate_loss(self, interaction) -> torch.Tensor:
        """Yes/No cross-entropy: BCE of sigmoid(logit) = the two-way softmax's p(Yes)."""
        label = interaction[self.LABEL].float()  # (B,)
        return F.binary_cross_entropy_with_logits(self.forward(interaction), label)

    @torch.no_grad()
    def predict(self, interaction) -> torch.Tensor:
        """p(Yes) (B,), the score ExpCTR's LC reward and ICL baseline also use."""
        yes, no = self.yes_no(interaction)
        scores = lc_score(yes.tolist(), no.tolist(), self.settings.temperature)
        return torch.tensor(scores, device=yes.device)

    # -- checkpoints: the adapters only (the base LM is the packaged file, never trained) --------
    def _adapter_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        names = self._adapter_names()
        for key in [k for k in state if k not in names]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        names = self._adapter_names()
        missing, unexpected = names - set(state_dict), set(state_dict) - names
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"TALLRec checkpoint: missing adapters {sorted(missing)[:3]}, unexpected keys "
                f"{sorted(unexpected)[:3]} (was it saved with other lora_* settings?)"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)
