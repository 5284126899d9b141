"""ExpCTR's policy π_φ: one causal LM with LoRA adapters, a value head and their PPO optimiser.

Yu, Zhang, Chen, "Explainable CTR Prediction via LLM Reasoning", WSDM 2025, §4.3.1: "we employ a
base LLM as both the initial model and the frozen LC alignment reward model. The explanation
generator is instantiated as the base LLM with Lora." One copy of the LM plays three parts:

- the generator π_φ (adapters on): :meth:`LoRAPolicy.generate` samples explanations,
  :meth:`LoRAPolicy.step` is one PPO update (Eq. 7, :func:`recbole_ext.rl.ppo.ppo_step`);
- π_init (adapters off, :meth:`LoRAPolicy.reference`): Eq. 7's KL anchor and the ICL generator;
- the frozen LC scorer (adapters off): :meth:`LoRAPolicy.yes_no_scores`, Eq. 8 on the first reply
  token.

:meth:`LoRAPolicy.save` / :meth:`LoRAPolicy.restore` keep what PPO trains (adapters, value head,
optimiser) in one ``torch.save`` file that loads under ``weights_only=True``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from recbole_ext.llm.config import LoRASettings
from recbole_ext.llm.local_lm import (
    add_lora,
    first_token_ids,
    model_device,
    reference_mode,
    yes_no_logprobs,
)
from recbole_ext.rl import ppo
from recbole_ext.rl.rewards import lc_score

Messages = Sequence[Mapping[str, str]]
SCORE_INPUTS = ("logprob", "prob")


class LoRAPolicy:
    """π_φ = ``lm`` with LoRA adapters and a value head; ``lm`` is ``(model, tokenizer)``.

    Args:
        lm: a causal LM and its (left-padding) tokenizer; the model gets the adapters in place.
        lora: the adapters (``lora_*`` keys).
        ppo: sampling and update settings (``ppo_*`` keys).
        seed: seeds the adapters' and the value head's initial weights, inside a forked RNG so the
            caller's random stream is the same whether the LM loads early or late (on resume).
        device: where the value head lives (the model is already there).
        pos_tokens, neg_tokens: V_pos and V_neg of Eq. 8 (the first token of each word counts).
        lc_temperature: T of Eq. 8.
        lc_score_input: what Eq. 8's p(t0) is: ``"logprob"`` (log-probabilities, TALLRec's
            softmax over the Yes/No logits) or ``"prob"`` (the probabilities, softmaxed again).

    ``generate_calls`` and ``score_calls`` count the generation and Yes/No batches run.
    """

    def __init__(
        self,
        lm: tuple[Any, Any],
        lora: LoRASettings,
        ppo_config: ppo.PPOConfig,
        *,
        seed: int,
        device: str | torch.device = "cpu",
        pos_tokens: Sequence[str] = ("Yes",),
        neg_tokens: Sequence[str] = ("No",),
        lc_temperature: float = 1.0,
        lc_score_input: str = "logprob",
    ) -> None:
        if lc_score_input not in SCORE_INPUTS:
            raise ValueError(f"lc_score_input={lc_score_input!r}: choose one of {SCORE_INPUTS}.")
        base, self.tokenizer = lm
        self.ppo = ppo_config
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = add_lora(base, lora)
            self.value_head = ppo.ValueHead(base.config.hidden_size).to(device)
        self.model.eval()  # no dropout in rollouts or updates; gradients still flow
        self.optimizer = ppo.make_optimizer(self.model, self.value_head, ppo_config)
        self.pos_ids = first_token_ids(self.tokenizer, pos_tokens)
        self.neg_ids = first_token_ids(self.tokenizer, neg_tokens)
        self.lc_temperature = lc_temperature
        self.lc_score_input = lc_score_input
        self.generate_calls = 0
        self.score_calls = 0

    # -- π_φ and π_init ------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Messages]) -> ppo.Rollout:
        """One sampled response per chat prompt (``ppo_temperature``, ``ppo_response_length``)
        from π_φ, or from π_init inside :meth:`reference`."""
        self.generate_calls += 1
        return ppo.generate_responses(self.model, self.tokenizer, prompts, self.ppo)

    def step(
        self,
        rollout: ppo.Rollout,
        scores: Sequence[float],
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One PPO update (Eq. 7) on ``rollout`` whose responses earned ``scores`` (R(Z),
        normalised); ``generator`` orders the minibatches. Returns cleanrl's statistics."""
        return ppo.ppo_step(
            self.model, self.value_head, self.optimizer, rollout, scores, self.ppo, generator
        )

    def reference(self):
        """Context manager: π_init, the same model with its adapters off and no gradients."""
        return reference_mode(self.model)

    @torch.no_grad()
    def yes_no_scores(self, messages_batch: Sequence[Messages]) -> list[float]:
        """Eq. 8: the frozen base model's p(Yes) from its first reply token, one per chat prompt
        (one left-padded batch)."""
        with self.reference():
            yes, no = yes_no_logprobs(
                self.model, self.tokenizer, messages_batch, self.pos_ids, self.neg_ids
            )  # (B,), (B,)
        if self.lc_score_input == "prob":
            yes, no = yes.exp(), no.exp()
        self.score_calls += 1
        return lc_score(yes.tolist(), no.tolist(), self.lc_temperature)

    # -- what PPO trains -------------------------------------------------------------------------
    def adapters(self) -> dict[str, torch.Tensor]:
        """A copy of the LoRA adapters: ``{parameter name: tensor}`` (the trainable weights)."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def save(self, path: str | os.PathLike) -> None:
        """Write adapters, value head and PPO optimiser to ``path`` (folders created)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        state = {
            "adapters": self.adapters(),
            "value_head": self.value_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, path)

    def restore(self, path: str | os.PathLike) -> None:
        """Load what :meth:`save` wrote; the adapters' names must match this policy's."""
        state = torch.load(path, map_location=model_device(self.model), weights_only=True)
        params = dict(self.model.named_parameters())
        foreign = sorted(
            name
            for name, value in state["adapters"].items()
            if name not in params or params[name].shape != value.shape
        )
        if foreign:
            raise ValueError(
                f"{path}: adapters {foreign[:3]} are not in this model or have another shape; "
                "they were saved with other lora_* settings or another LM (expctr_lm_path)."
            )
        with torch.no_grad():
            for name, value in state["adapters"].items():
                params[name].copy_(value)
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])


def saved_adapters(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The adapters a :meth:`LoRAPolicy.save` file holds, on the CPU, without loading an LM."""
    return torch.load(path, map_location="cpu", weights_only=True)["adapters"]
