"""LLM backbone of recbole-ext: client, response store, local server, encoder and local LM; the
prompts of LR-Recsys and ExpCTR (:mod:`~recbole_ext.llm.prompts`), LR-Recsys' explanation
generation (:mod:`~recbole_ext.llm.lrrecsys_explanations`) and the LLM reranking of a ranked
window (:mod:`~recbole_ext.llm.rerank_window`).

Data flows CLI -> quick_start -> config -> data -> model -> llm; this package imports none of the
layers above it. Heavy dependencies (sentence-transformers, transformers models, peft,
llama-cpp-python) load only when their module is used.
"""

from .client import RAISE, ChatReply, LLMClient, LLMRequestError, LLMResponseError, LLMUsage
from .config import LLMConfig, LoRASettings
from .store import ResponseStore, StoreError, request_key

__all__ = [
    "RAISE",
    "ChatReply",
    "LLMClient",
    "LLMConfig",
    "LLMRequestError",
    "LLMResponseError",
    "LLMUsage",
    "LoRASettings",
    "ResponseStore",
    "StoreError",
    "request_key",
]
