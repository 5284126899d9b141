"""A local causal LM for training (ExpCTR's policy) with LoRA adapters and a free reference model.

- Loads ``AutoModelForCausalLM`` from a Hugging Face directory or from a GGUF file
  (``gguf_file=`` with ``GgufConfig(dequantize=True)``: plain float32 weights, so the model can be
  trained and saved). Default: the SmolLM2-135M-Instruct GGUF the local server also serves.
- The SmolLM2 GGUF tokenizer comes with eos ``<|im_start|>``; chat turns end with ``<|im_end|>``,
  so eos and pad are set to it. Padding is on the left (decoder-only batched generation).
- :func:`add_lora` wraps the model with peft LoRA adapters; the frozen reference policy is the
  same object with adapters disabled (:func:`reference_mode`), so one copy lives in memory.
- torch threads are set deliberately (:func:`load_local_lm` ``num_threads``): beside the llama.cpp
  server on 2 cores, torch generation was measured ~50x slower with contending threads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .assets import default_gguf_path
from .config import LoRASettings

CHAT_END_TOKEN = "<|im_end|>"


def split_model_path(path: str | None) -> tuple[str, str | None]:
    """``(directory, gguf_file)`` for a directory, a ``.gguf`` file, or ``None`` (packaged)."""
    if path is None:
        path = default_gguf_path()
    if os.path.isfile(path) and path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    return path, None


def fix_chat_tokens(tokenizer: Any, model: Any | None = None) -> None:
    """Make ``<|im_end|>`` the eos and pad token when the vocabulary has it (SmolLM2 GGUF)."""
    if CHAT_END_TOKEN in tokenizer.get_vocab() and tokenizer.eos_token != CHAT_END_TOKEN:
        tokenizer.eos_token = CHAT_END_TOKEN
    if tokenizer.pad_token is None or tokenizer.pad_token != tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model is not None:
        for cfg in (model.config, model.generation_config):
            cfg.eos_token_id = tokenizer.eos_token_id
            cfg.pad_token_id = tokenizer.pad_token_id


def load_local_lm(
    path: str | None = None,
    *,
    num_threads: int | None = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from an HF directory or a GGUF file (dequantized).

    Args:
        path: HF model directory, ``.gguf`` file, or ``None`` for the packaged SmolLM2 GGUF.
        num_threads: ``torch.set_num_threads`` value (``None`` leaves torch's setting alone).
        dtype: parameter dtype (float32 trains and saves without surprises on CPU).
        device: where the model lives (``"cuda"`` on a GPU machine); inputs follow the model.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    directory, gguf_file = split_model_path(path)
    # transformers < 4.56 names the dtype argument torch_dtype
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model_kwargs: dict[str, Any] = {dtype_key: dtype, "local_files_only": True}
    tokenizer_kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        model_kwargs["gguf_file"] = gguf_file
        tokenizer_kwargs["gguf_file"] = gguf_file
        gguf_config = getattr(transformers, "GgufConfig", None)
        if gguf_config is not None:  # newer transformers may keep GGUF blocks packed; unpack
            model_kwargs["quantization_config"] = gguf_config(dequantize=True)
        # (older transformers always dequantize a GGUF to dense weights)
    tokenizer = AutoTokenizer.from_pretrained(directory, **tokenizer_kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, **model_kwargs)
    fix_chat_tokens(tokenizer, model)
    model.to(device)
    model.eval()
    return model, tokenizer


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s parameters (inputs are moved there)."""
    return next(model.parameters()).device


def add_lora(model: Any, settings: LoRASettings) -> Any:
    """Wrap ``model`` with trainable LoRA adapters (base weights frozen); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


@contextlib.contextmanager
def reference_mode(peft_model: Any) -> Iterator[Any]:
    """The frozen reference policy: the same model with adapters disabled and no gradients."""
    with peft_model.disable_adapter(), torch.no_grad():
        yield peft_model


def chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt text the chat template renders, ending with the assistant turn's header."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def first_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Ids of the first token of each word (``["Yes"]`` -> the id of ``Yes``), sorted, distinct."""
    return sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words})


def yes_no_logprobs(
    model: Any,
    tokenizer: Any,
    messages_batch: Sequence[Sequence[Mapping[str, str]]],
    pos_ids: Sequence[int],
    neg_ids: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(V_pos), log p(V_neg))`` of the first reply token of each chat prompt: (B,), (B,).

    The prompts form one left-padded batch; a word set's log-probability is the logsumexp over its
    ids. Gradients flow unless the caller is under ``torch.no_grad`` (or :func:`reference_mode`):
    TALLRec trains on these, ExpCTR's LC reward reads them from the frozen base model.
    """
    prompts = [chat_prompt(tokenizer, messages) for messages in messages_batch]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    logits = model(**inputs.to(model_device(model)), logits_to_keep=1).logits[:, -1]  # (B, V)
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    yes = torch.logsumexp(logprobs[:, list(pos_ids)], dim=-1)  # (B,)
    no = torch.logsumexp(logprobs[:, list(neg_ids)], dim=-1)  # (B,)
    return yes, no


@torch.no_grad()
def next_token_top_logprobs(
    model: Any, tokenizer: Any, messages: Sequence[Mapping[str, str]], k: int
) -> dict[str, float]:
    """``{token text: log-prob}`` of the k most likely first reply tokens (as llama.cpp reports).

    Feed to :func:`recbole_ext.llm.parsing.yes_no_probability` for the TALLRec score.
    """
    inputs = tokenizer(
        chat_prompt(tokenizer, messages), return_tensors="pt", add_special_tokens=False
    ).to(model_device(model))
    logits = model(**inputs).logits[0, -1]  # (V,)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, indices = torch.topk(logprobs, k)
    out: dict[str, float] = {}
    for value, index in zip(values.tolist(), indices.tolist(), strict=True):
        token = tokenizer.decode([index])
        # two ids with one text: merge (log-sum-exp) as llama.cpp's dict would not
        out[token] = float(np.logaddexp(out[token], value)) if token in out else value
    return out


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    batch: Sequence[Sequence[Mapping[str, str]]],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
) -> list[str]:
    """Batched (left-padded) generation of chat replies; returns the new text of each."""
    prompts = [chat_prompt(tokenizer, messages) for messages in batch]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    inputs = inputs.to(model_device(model))
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # (B, T_prompt + T_new)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
