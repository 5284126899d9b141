"""Typed settings of ExpCTR's data sampling, explanation generator and three-stage training.

Every default lives in ``recbole_ext/properties/model/ExpCTR.yaml`` (keys ``expctr_<field>``,
``ppo_<field>`` for :class:`~recbole_ext.rl.ppo.PPOConfig`, ``lora_<field>`` for
:class:`~recbole_ext.llm.LoRASettings`); :meth:`ExpCTRConfig.from_recbole_config` reads them.

Presets: ``expctr_preset: paper`` keeps the yaml's paper-scale values; ``expctr_preset: tiny``
applies the ``expctr_tiny_preset`` mapping of the yaml on top (short responses, few samples, one
iteration: a CPU run in minutes). A key the user sets explicitly (command line, config dict or
file) always wins over the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from recbole_ext.llm.config import LoRASettings

PRESETS = ("paper", "tiny")
LC_SCORE_INPUTS = ("logprob", "prob")


@dataclass
class ExpCTRConfig:
    """ExpCTR settings outside the CTR model's own (``embedding_size``, ``mlp_hidden_size``...)."""

    preset: str = field(default="tiny", metadata={"help": "paper | tiny (see module docstring)."})
    targets_per_user: int = field(
        default=1, metadata={"help": "§5.1: random interacted targets drawn per user."}
    )
    max_history: int = field(
        default=10, metadata={"help": "§5.1: chronologically preceding items shown per target."}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many samples (random); None: all."}
    )
    domain: str = field(default="movie", metadata={"help": "Prompt words: book | movie | product."})
    iterations: int = field(default=1, metadata={"help": "M: repetitions of stages 2-3."})
    lc_epochs: int = field(
        default=2, metadata={"help": "Stage 1 passes over the training samples (§5.1.4: two)."}
    )
    ic_epochs: int = field(default=2, metadata={"help": "Stage 3 passes per iteration."})
    lc_temperature: float = field(default=1.0, metadata={"help": "T of Eq. 8."})
    lc_score_input: str = field(
        default="logprob",
        metadata={
            "help": "What Eq. 8's p(t0) is: 'logprob' (TALLRec's softmax over the Yes/No logits) "
            "or 'prob' (the literal probabilities, softmaxed again)."
        },
    )
    pos_tokens: tuple[str, ...] = field(default=("Yes",), metadata={"help": "V_pos of Eq. 8."})
    neg_tokens: tuple[str, ...] = field(default=("No",), metadata={"help": "V_neg of Eq. 8."})
    final_refit: bool = field(
        default=True,
        metadata={
            "help": "After the last stage 3, train the CTR model once more (stage 2) on "
            "the final generator's explanations (the ExpCTR-Aug that is reported)."
        },
    )
    icl_baseline: bool = field(
        default=True, metadata={"help": "Also score the frozen LLM zero-shot (ICL) on eval data."}
    )
    generation_batch_size: int = field(
        default=8, metadata={"help": "Prompts per batch when explaining valid/test samples."}
    )
    lm_path: str | None = field(
        default=None, metadata={"help": "HF dir or GGUF of the generator; None: packaged SmolLM2."}
    )
    lm_threads: int = field(default=1, metadata={"help": "torch threads of the local LM."})
    explanation_dim: int = field(
        default=384, metadata={"help": "d of the sentence encoder (all-MiniLM-L6-v2: 384)."}
    )

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"expctr_preset={self.preset!r}: choose one of {PRESETS}.")
        if self.targets_per_user < 1:
            raise ValueError("expctr_targets_per_user must be at least 1.")
        if self.max_history < 0:
            raise ValueError("expctr_max_history must be >= 0 (the paper uses 10).")
        if self.max_samples is not None and self.max_samples < 10:
            raise ValueError(
                f"expctr_max_samples={self.max_samples}: an 8:1:1 split needs at least 10; "
                "set ~ (all samples) or a larger number."
            )
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

    @classmethod
    def from_recbole_config(cls, config: Any) -> ExpCTRConfig:
        return cls(**read_prefixed(config, "expctr_", cls))


def read_prefixed(config: Any, prefix: str, cls: type) -> dict[str, Any]:
    """``{field: value}`` of dataclass ``cls`` from the ``<prefix><field>`` keys of ``config``
    (ExpCTR's ``expctr_tiny_preset`` applied when ``expctr_preset: tiny``); fields without a key
    keep their dataclass default."""
    preset = config["expctr_preset"] if "expctr_preset" in config else "paper"
    overrides: Mapping[str, Any] = {}
    if preset == "tiny" and "expctr_tiny_preset" in config:
        overrides = config["expctr_tiny_preset"] or {}
    explicit = _explicit_keys(config)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        key = prefix + f.name
        if key in overrides and key not in explicit:
            kwargs[f.name] = overrides[key]
        elif key in config:
            kwargs[f.name] = config[key]
    return kwargs


def _explicit_keys(config: Any) -> set[str]:
    """Keys the user set (file, dict or command line) on a recbole-ext ``Config``."""
    external = getattr(config, "external_config_dict", None)
    return set(external) if external is not None else set()


def ppo_config(config: Any):
    """:class:`~recbole_ext.rl.ppo.PPOConfig` from the ``ppo_*`` keys (preset applied)."""
    from recbole_ext.rl.ppo import PPOConfig

    return PPOConfig(**read_prefixed(config, "ppo_", PPOConfig))


def lora_settings(config: Any) -> LoRASettings:
    return LoRASettings(**read_prefixed(config, "lora_", LoRASettings))
