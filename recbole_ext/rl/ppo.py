"""PPO for a LoRA language-model policy with a value head and a KL penalty (ExpCTR, Eq. 7).

Yu, Zhang, Chen, "Explainable CTR Prediction via LLM Reasoning", WSDM 2025, §4.2.1 and §4.3.1:

    objective(phi) = E_{(x, Z) ~ pi_phi^RL} [ R(Z) - beta * log( pi_phi^RL(Z|x) / pi_init(Z|x) ) ]  (7)

implemented as in InstructGPT / TRL's PPO: the KL term is paid per response token, the
sequence-level reward R(Z) is added on the last token, advantages come from GAE over the tokens
with a learned value head, and the policy follows PPO's clipped surrogate (Schulman et al., 2017).
pi_init is the same model with its LoRA adapters disabled (one copy in memory, §4.3.1).

Read top to bottom, in the order of one update (cleanrl's ``ppo.py`` style):

1. :func:`generate_responses` -- rollout: sample one response per prompt (left-padded batch);
2. :func:`forward_logprobs` under the policy (+ values) and under pi_init (adapters off);
3. :func:`kl_penalised_rewards` -- Eq. 7 per token: ``r_t = -beta * (log pi - log pi_init)``,
   plus ``R(Z)`` on the last response token;
4. :func:`gae` -- advantages and returns;
5. :func:`policy_loss` (``pg_loss1``, ``pg_loss2``) and :func:`value_loss` over
   ``update_epochs`` x minibatches, one optimiser step per minibatch.

:func:`ppo_step` runs 2-5 and returns the statistics cleanrl logs (``approx_kl``, ``clipfrac``...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from recbole_ext.llm.local_lm import chat_prompt, model_device, reference_mode


@dataclass
class PPOConfig:
    """Settings of one PPO alignment run: keys ``ppo_<field>`` of ``properties/model/ExpCTR.yaml``
    (the paper's values, §5.1.4; read with :func:`recbole_ext.config_sections.read_section`)."""

    YAML_PREFIX: ClassVar[str] = "ppo_"
    YAML_FILE: ClassVar[str] = "model/ExpCTR.yaml"

    learning_rate: float = field(metadata={"help": "AdamW learning rate (paper)."})
    kl_coef: float = field(metadata={"help": "beta of Eq. 7, the KL penalty."})
    reward_clip: float = field(
        metadata={"help": "delta of Eq. 10: normalised rewards are clipped to ±delta."}
    )
    batch_size: int = field(metadata={"help": "Prompts per rollout (one PPO batch)."})
    mini_batch_size: int = field(
        metadata={"help": "Sequences per gradient step; divides batch_size."}
    )
    update_epochs: int = field(metadata={"help": "Passes over one rollout batch."})
    response_length: int = field(metadata={"help": "Max new tokens per response."})
    temperature: float = field(
        metadata={"help": "Sampling temperature (log-probs use the same one)."}
    )
    cliprange: float = field(metadata={"help": "epsilon of the clipped surrogate."})
    cliprange_value: float = field(
        metadata={"help": "Clip of the value update around the old values."}
    )
    vf_coef: float = field(metadata={"help": "Weight of the value loss."})
    gamma: float = field(metadata={"help": "Discount over response tokens."})
    lam: float = field(metadata={"help": "GAE lambda."})
    max_grad_norm: float = field(metadata={"help": "Gradient-norm clip."})
    whiten_advantages: bool = field(
        metadata={"help": "Normalise advantages over the batch's response tokens."}
    )

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(
                f"ppo_learning_rate={self.learning_rate}: set a positive rate (paper: 1e-5)."
            )
        if self.kl_coef < 0:
            raise ValueError(f"ppo_kl_coef={self.kl_coef}: set beta >= 0 (paper: 0.05).")
        if self.reward_clip <= 0:
            raise ValueError(f"ppo_reward_clip={self.reward_clip}: set delta > 0 (paper: 1.0).")
        if self.batch_size < 1 or self.mini_batch_size < 1:
            raise ValueError("ppo_batch_size and ppo_mini_batch_size must be at least 1.")
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"ppo_mini_batch_size={self.mini_batch_size} does not divide ppo_batch_size="
                f"{self.batch_size}: pick a divisor, e.g. {self.batch_size}."
            )
        if self.update_epochs < 1:
            raise ValueError(f"ppo_update_epochs={self.update_epochs}: set at least 1.")
        if self.response_length < 1:
            raise ValueError(f"ppo_response_length={self.response_length}: set at least 1 token.")
        if self.temperature <= 0:
            raise ValueError(
                f"ppo_temperature={self.temperature}: PPO samples responses; set a positive value."
            )
        if not 0 < self.cliprange < 1 or self.cliprange_value <= 0:
            raise ValueError(
                "ppo_cliprange must be in (0, 1) and ppo_cliprange_value > 0 (PPO: 0.2)."
            )
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(
                f"ppo_gamma={self.gamma}, ppo_lam={self.lam}: both must lie in [0, 1]."
            )

    @property
    def num_minibatches(self) -> int:
        return self.batch_size // self.mini_batch_size


class ValueHead(nn.Module):
    """V(s_t) from the policy's last hidden state: one linear layer (TRL's value head)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden).squeeze(-1)  # (B, T, H) -> (B, T)


@dataclass
class Rollout:
    """One batch of prompts and sampled responses, ready for :func:`forward_logprobs`.

    ``input_ids``/``attention_mask`` are ``[left-padded prompt | response]``; the last
    ``response_length`` columns are the response, ``response_mask`` marks its real tokens (up to
    and including the first end-of-turn token).
    """

    input_ids: torch.Tensor  # (B, Tq + Tr)
    attention_mask: torch.Tensor  # (B, Tq + Tr)
    response_mask: torch.Tensor  # (B, Tr)
    texts: list[str]

    @property
    def response_length(self) -> int:
        return self.response_mask.shape[1]

    def select(self, index: torch.Tensor) -> Rollout:
        return Rollout(
            self.input_ids[index],
            self.attention_mask[index],
            self.response_mask[index],
            [self.texts[i] for i in index.tolist()],
        )


# --------------------------------------------------------------------------------------------
# Pure tensor pieces (each has a test against a plain loop)
# --------------------------------------------------------------------------------------------
def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) for each position: (B, T, V), (B, T) -> (B, T)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as TRL); zero where masked."""
    mean = masked_mean(values, mask)
    n = mask.sum()
    var = ((values - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def response_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for the tokens up to and including the first ``eos_token_id`` of each row, else 0.

    >>> response_mask(torch.tensor([[5, 7, 2, 2], [5, 6, 7, 8]]), eos_token_id=2).tolist()
    [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    """
    is_eos = (responses == eos_token_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # (B, Tr) number of eos strictly before t
    return (eos_before == 0).float()


def kl_penalised_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 per token: ``r_t = -beta * kl_t`` with ``kl_t = log pi(a_t) - log pi_init(a_t)``;
    the sequence reward ``R(Z)`` is added on each row's last response token.

    Returns ``(rewards, kl)``, both (B, Tr) and zero outside ``mask``.
    """
    kl = (logprobs - ref_logprobs) * mask  # (B, Tr)
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores * (mask.sum(dim=1) > 0)
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (the episode ends at the last one).

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    ``V`` and ``r`` zero past the mask. Returns ``(advantages, returns = advantages + values)``.
    """
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    lastgaelam = torch.zeros_like(rewards[:, 0])
    advantages_reversed = []
    for t in reversed(range(length)):
        nextvalues = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask  # (B, Tr)
    returns = advantages + values
    return advantages, returns


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate, averaged over response tokens (as cleanrl, per token)."""
    logratio = new_logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - logratio, mask)  # http://joschu.net/blog/kl-approx
        clipfrac = masked_mean(((ratio - 1.0).abs() > cliprange).float(), mask)
    return pg_loss, {"approx_kl": float(approx_kl), "clipfrac": float(clipfrac)}


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss: ``0.5 * max((V - G)^2, (V_clipped - G)^2)`` over response tokens."""
    v_clipped = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    v_loss_unclipped = (new_values - returns) ** 2
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((v_loss_clipped > v_loss_unclipped).float(), mask)
    return v_loss, {"vf_clipfrac": float(vf_clipfrac)}


# --------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_responses(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Mapping[str, str]]],
    config: PPOConfig,
    *,
    do_sample: bool = True,
) -> Rollout:
    """1. Rollout: one response per chat prompt, sampled from ``policy`` (left-padded batch)."""
    texts = [chat_prompt(tokenizer, messages) for messages in prompts]
    query = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    query = query.to(model_device(policy))
    sampling = (
        {"do_sample": True, "temperature": config.temperature, "top_k": 0, "top_p": 1.0}
        if do_sample
        else {"do_sample": False}
    )
    output = policy.generate(
        input_ids=query["input_ids"],
        attention_mask=query["attention_mask"],
        max_new_tokens=config.response_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )  # (B, Tq + Tr)
    responses = output[:, query["input_ids"].shape[1] :]  # (B, Tr)
    mask = response_mask(responses, tokenizer.eos_token_id)
    return Rollout(
        input_ids=output,
        attention_mask=torch.cat([query["attention_mask"], mask.long()], dim=1),
        response_mask=mask,
        texts=[t.strip() for t in tokenizer.batch_decode(responses, skip_special_tokens=True)],
    )


def forward_logprobs(
    policy: Any,
    rollout: Rollout,
    temperature: float,
    value_head: ValueHead | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """2. log pi(a_t | s_t) of the response tokens (B, Tr), and V(s_t) when ``value_head`` is given.

    Under :func:`recbole_ext.llm.local_lm.reference_mode` the same call gives pi_init. Logits are
    computed only for the response positions (the vocabulary projection dominates CPU time).
    """
    causal_lm = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    decoder = causal_lm.get_decoder()
    position_ids = (rollout.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding
    hidden = decoder(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=position_ids,
    ).last_hidden_state  # (B, Tq + Tr, H)
    length = rollout.response_length
    hidden = hidden[:, -length - 1 : -1]  # (B, Tr, H) the states that emit the response tokens
    logits = causal_lm.get_output_embeddings()(hidden) / temperature  # (B, Tr, V)
    logprobs = logprobs_from_logits(logits, rollout.input_ids[:, -length:])
    values = value_head(hidden) if value_head is not None else None
    return logprobs, values


def trainable_parameters(policy: nn.Module, value_head: ValueHead) -> list[nn.Parameter]:
    """The LoRA adapters and the value head: the only parameters PPO changes."""
    return [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())


def make_optimizer(policy: nn.Module, value_head: ValueHead, config: PPOConfig):
    return torch.optim.AdamW(
        trainable_parameters(policy, value_head), lr=config.learning_rate, weight_decay=0.0
    )


def ppo_step(
    policy: Any,
    value_head: ValueHead,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    scores: Sequence[float],
    config: PPOConfig,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One PPO update on a rollout batch whose responses earned ``scores`` (R(Z), normalised)."""
    scores_t = torch.tensor(list(scores), dtype=torch.float32, device=rollout.input_ids.device)
    mask = rollout.response_mask
    # 2. behaviour policy, values and pi_init (adapters disabled), all without gradients
    with torch.no_grad():
        old_logprobs, old_values = forward_logprobs(policy, rollout, config.temperature, value_head)
        with reference_mode(policy):
            ref_logprobs, _ = forward_logprobs(policy, rollout, config.temperature)
        # 3. Eq. 7 per token
        rewards, kl = kl_penalised_rewards(
            scores_t, old_logprobs, ref_logprobs, mask, config.kl_coef
        )
        # 4. advantages and returns
        advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

    # 5. optimise the clipped surrogate and the value loss over minibatches
    params = trainable_parameters(policy, value_head)
    clipfracs, approx_kls, pg_losses, v_losses = [], [], [], []
    for _ in range(config.update_epochs):
        order = torch.randperm(
            len(rollout.texts), generator=generator
        )  # the last batch may be short
        for start in range(0, len(order), config.mini_batch_size):
            mb = order[start : start + config.mini_batch_size]
            new_logprobs, new_values = forward_logprobs(
                policy, rollout.select(mb), config.temperature, value_head
            )
            pg_loss, pg_stats = policy_loss(
                new_logprobs, old_logprobs[mb], advantages[mb], mask[mb], config.cliprange
            )
            v_loss, _ = value_loss(
                new_values, old_values[mb], returns[mb], mask[mb], config.cliprange_value
            )
            loss = pg_loss + config.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            pg_losses.append(pg_loss.item())
            v_losses.append(v_loss.item())
            clipfracs.append(pg_stats["clipfrac"])
            approx_kls.append(pg_stats["approx_kl"])

    return {
        "score": float(scores_t.mean()),
        "kl": float((kl.sum(dim=1)).mean()),  # sum over tokens of log pi/pi_init, batch mean
        "pg_loss": sum(pg_losses) / len(pg_losses),
        "vf_loss": sum(v_losses) / len(v_losses),
        "clipfrac": sum(clipfracs) / len(clipfracs),
        "approx_kl": sum(approx_kls) / len(approx_kls),
        "response_tokens": float(mask.sum(dim=1).mean()),
    }
