"""One client for any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp).

- ``chat`` -- text completion; ``score_yes_no`` -- p(Yes) from the first token's top
  log-probabilities (``logprobs=True`` *and* ``top_logprobs=k``: llama.cpp returns none without
  ``top_logprobs``), TALLRec re-softmax in :func:`recbole_ext.llm.parsing.yes_no_probability`;
  ``structured`` / ``rank`` -- JSON-schema-constrained replies where the endpoint supports it, the
  tolerant parser of :mod:`recbole_ext.llm.parsing` otherwise.
- ``a*`` coroutines and ``*_batch`` methods: bounded concurrency (``max_concurrency``) and a tqdm
  progress bar.
- Every request goes through the store first (zero calls for stored keys); misses are retried with
  exponential backoff (at least the server's ``Retry-After``) on timeouts, connection errors,
  408/409/429, 5xx and unreadable bodies: one ``tenacity`` policy serves the sync and async paths.
  After the last retry the call raises :class:`LLMRequestError` -- or returns the caller's
  ``fallback``, which is never stored.
- :class:`LLMUsage` counts requests, tokens, cache hits, retries, failures and seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import openai
import tenacity
from tqdm.auto import tqdm

from .config import LLMConfig
from .parsing import (
    extract_json,
    parse_ranking,
    permutation_schema,
    repair_permutation,
    yes_no_probability,
)
from .store import ResponseStore, request_key

T = TypeVar("T")
Messages = Sequence[Mapping[str, Any]]


class _Raise:
    def __repr__(self) -> str:
        return "RAISE"


RAISE: Any = _Raise()
"""Default ``fallback``: raise :class:`LLMRequestError` after the last retry."""
_MISS = object()  # store lookup found nothing


class LLMRequestError(RuntimeError):
    """A request failed after all retries (or with a non-retryable status)."""


class LLMResponseError(ValueError):
    """A reply arrived but cannot be used (no choices, no log-probs, ...); retried like a 5xx."""


@dataclass
class LLMUsage:
    """Accounting of one client; ``as_dict()`` goes into run outputs."""

    requests: int = 0  # HTTP attempts sent (retries included)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0  # calls answered by the store
    retries: int = 0
    failures: int = 0  # calls that ended in the fallback or an error
    seconds: float = 0.0  # wall time waiting for the endpoint

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ChatReply:
    """One reply: the text, the raw response (as stored) and where it came from."""

    text: str
    response: Mapping[str, Any]
    cached: bool = False


_RETRYABLE_STATUS = {408, 409, 429}


def _is_retryable(error: BaseException) -> bool:
    if isinstance(error, openai.APIStatusError):
        return error.status_code in _RETRYABLE_STATUS or error.status_code >= 500
    return isinstance(
        error,
        openai.APIConnectionError  # includes APITimeoutError
        | openai.APIResponseValidationError
        | LLMResponseError
        | json.JSONDecodeError,
    )


def _response_dict(completion: Any) -> dict[str, Any]:
    """The completion as a plain dict, checked to hold a message; else :class:`LLMResponseError`."""
    if not hasattr(completion, "model_dump"):
        raise LLMResponseError(f"endpoint returned a non-JSON body: {str(completion)[:200]!r}")
    response = completion.model_dump(exclude_unset=True)
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMResponseError(f"reply has no choices: {json.dumps(response)[:200]}")
    message = choices[0].get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise LLMResponseError(f"reply has no message content: {json.dumps(response)[:200]}")
    return response


def reply_text(response: Mapping[str, Any]) -> str:
    return response["choices"][0]["message"]["content"]


def first_token_top_logprobs(response: Mapping[str, Any]) -> dict[str, float]:
    """``{token: logprob}`` of the first generated token (duplicated strings merged by logsumexp)."""
    logprobs = response["choices"][0].get("logprobs") or {}
    content = logprobs.get("content") or []
    if not content or not content[0].get("top_logprobs"):
        raise LLMResponseError(
            "reply has no top_logprobs: the endpoint must support logprobs=True with top_logprobs=k"
        )
    merged: dict[str, float] = {}
    for entry in content[0]["top_logprobs"]:
        token, logprob = entry["token"], float(entry["logprob"])
        merged[token] = float(np.logaddexp(merged[token], logprob)) if token in merged else logprob
    return merged


class LLMClient:
    """OpenAI-compatible client with a response store, retries and accounting.

    Args:
        config: the :class:`LLMConfig`; ``config.base_url`` must be set (see
            :func:`recbole_ext.llm.serve.llm_session` for the local-server default).
        store: response store; ``None`` disables caching.
        show_progress: show tqdm bars in batch calls.
        liveness: called after a connection error, before any retry; raises when the endpoint
            is gone for good (``LocalLLMServer.raise_if_exited``: the local server process
            died), so the caller learns why at once instead of after every retry. That error is
            never replaced by a ``fallback``.
    """

    def __init__(
        self,
        config: LLMConfig,
        store: ResponseStore | None = None,
        *,
        show_progress: bool = True,
        liveness: Callable[[], None] | None = None,
    ) -> None:
        if not config.base_url:
            raise ValueError(
                "LLMClient needs llm_base_url; leave it unset only through "
                "recbole_ext.llm.serve.llm_session, which starts the local server."
            )
        self.config = config
        self.store = store
        self.show_progress = show_progress
        self.liveness = liveness
        self.usage = LLMUsage()
        # Our own retry loop counts and backs off; the SDK's is switched off.
        self._sync = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key,
            timeout=config.timeout,
            max_retries=0,
        )

    def _async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=self.config.api_key,
            timeout=self.config.timeout,
            max_retries=0,
        )

    def close(self) -> None:
        self._sync.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- request building --------------------------------------------------------------------
    def _params(self, **overrides: Any) -> dict[str, Any]:
        """Generation parameters sent with (and hashed into the key of) a request."""
        cfg = self.config
        params: dict[str, Any] = {
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.seed is not None:
            params["seed"] = cfg.seed
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params

    def _response_format(self, schema: Mapping[str, Any]) -> dict[str, Any] | None:
        mode = self.config.structured_output
        if mode == "json_object":  # llama.cpp / llama-cpp-python: schema -> grammar
            return {"type": "json_object", "schema": dict(schema)}
        if mode == "json_schema":  # OpenAI, vLLM
            return {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": dict(schema), "strict": True},
            }
        return None

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        """Seconds before retry ``n``: ``backoff_base·2^(n-1)`` with jitter, at least the
        server's ``Retry-After``, at most ``backoff_max``."""
        cfg = self.config
        error = retry_state.outcome.exception()
        retry_after = None
        if isinstance(error, openai.APIStatusError):
            header = error.response.headers.get("retry-after")
            try:
                retry_after = float(header) if header is not None else None
            except ValueError:
                retry_after = None
        wait = (
            cfg.backoff_base * 2 ** (retry_state.attempt_number - 1) * (0.5 + random.random() / 2)
        )
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, cfg.backoff_max)

    def _should_retry(self, error: BaseException) -> bool:
        self._check_endpoint(error)  # a dead local server raises here, before any retry
        return _is_retryable(error)

    def _retry_policy(self, retrying_class: type[T]) -> T:
        """The one retry policy of every request, for ``tenacity.Retrying`` (sync) or
        ``tenacity.AsyncRetrying``: ``max_retries`` retries of retryable errors with
        :meth:`_wait` between them; the last error is re-raised."""

        def count_retry(_state: tenacity.RetryCallState) -> None:
            self.usage.retries += 1

        return retrying_class(
            stop=tenacity.stop_after_attempt(self.config.max_retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self._should_retry),
            before_sleep=count_retry,
            reraise=True,
        )

    @contextlib.contextmanager
    def _timed_attempt(self) -> Iterator[None]:
        """Count one HTTP attempt and the seconds spent on it, whatever its outcome."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.usage.requests += 1
            self.usage.seconds += time.perf_counter() - start

    def _lookup(self, key: str, parse: Callable[[dict[str, Any]], T]) -> Any:
        """The parsed stored reply of ``key``, or ``_MISS``."""
        if self.store is None:
            return _MISS
        response = self.store.get(key)
        if response is None:
            return _MISS
        self.usage.cache_hits += 1
        value = parse(response)
        return dataclasses.replace(value, cached=True) if isinstance(value, ChatReply) else value

    def _record(
        self,
        key: str,
        messages: Messages,
        params: Mapping[str, Any],
        template_version: str,
        response: dict[str, Any],
    ) -> None:
        usage = response.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        if self.store is not None:
            self.store.put(
                key,
                model=self.config.model,
                template_version=template_version,
                request={"messages": list(messages), "params": dict(params)},
                response=response,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )

    def _check_endpoint(self, error: BaseException) -> None:
        """After a connection error (the server closed the socket, or never answered), let the
        endpoint's owner raise if it is gone for good."""
        if self.liveness is not None and isinstance(error, openai.APIConnectionError):
            self.liveness()

    def _give_up(self, error: BaseException, attempts: int, fallback: Any) -> Any:
        self.usage.failures += 1
        if fallback is not RAISE:
            return fallback
        raise LLMRequestError(
            f"LLM request to {self.config.base_url} (model {self.config.model!r}) failed after "
            f"{attempts} attempt(s): {type(error).__name__}: {error}. Check the endpoint, raise "
            "llm_timeout / llm_max_retries, or pass a fallback."
        ) from error

    # -- the request: one retry policy, driven synchronously or from an event loop ------------
    def _request(
        self,
        messages: Messages,
        params: dict[str, Any],
        template_version: str,
        parse: Callable[[dict[str, Any]], T],
        fallback: Any,
    ) -> T:
        key = request_key(self.config.model, messages, params, template_version)
        cached = self._lookup(key, parse)
        if cached is not _MISS:
            return cached
        policy = self._retry_policy(tenacity.Retrying)
        try:
            for attempt in policy:
                with attempt, self._timed_attempt():
                    completion = self._sync.chat.completions.create(
                        model=self.config.model, messages=list(messages), **params
                    )
                    response = _response_dict(completion)
                    value = parse(response)
        except Exception as error:  # noqa: BLE001 - _fail tells a fallback case from a raise
            return self._fail(error, fallback, policy.statistics["attempt_number"])
        self._record(key, messages, params, template_version, response)
        return value

    async def _arequest(
        self,
        client: openai.AsyncOpenAI,
        messages: Messages,
        params: dict[str, Any],
        template_version: str,
        parse: Callable[[dict[str, Any]], T],
        fallback: Any,
    ) -> T:
        key = request_key(self.config.model, messages, params, template_version)
        cached = self._lookup(key, parse)
        if cached is not _MISS:
            return cached
        policy = self._retry_policy(tenacity.AsyncRetrying)
        try:
            async for attempt in policy:
                with attempt, self._timed_attempt():
                    completion = await client.chat.completions.create(
                        model=self.config.model, messages=list(messages), **params
                    )
                    response = _response_dict(completion)
                    value = parse(response)
        except Exception as error:  # noqa: BLE001 - _fail tells a fallback case from a raise
            return self._fail(error, fallback, policy.statistics["attempt_number"])
        self._record(key, messages, params, template_version, response)
        return value

    def _fail(self, error: Exception, fallback: Any, attempts: int) -> Any:
        """After the policy gave up: a retryable error ran out of retries (``fallback`` applies);
        any other error is raised as :class:`LLMRequestError` (a dead server's error as is)."""
        if isinstance(error, LLMRequestError):
            self.usage.failures += 1
            raise error
        return self._give_up(error, attempts, fallback if _is_retryable(error) else RAISE)

    # -- request kinds: (params, parser) --------------------------------------------------------
    def _chat_spec(
        self,
        max_tokens: int | None,
        temperature: float | None,
        schema: Mapping[str, Any] | None = None,
    ):
        response_format = None if schema is None else self._response_format(schema)
        params = self._params(
            max_tokens=max_tokens, temperature=temperature, response_format=response_format
        )

        def parse(response: dict[str, Any]) -> ChatReply:
            return ChatReply(reply_text(response), response)

        return params, parse

    def _yes_no_spec(self):
        # One token is enough; log-probs come from the raw logits whatever the temperature.
        params = self._params(max_tokens=1, logprobs=True, top_logprobs=self.config.top_logprobs)
        temperature = self.config.yes_no_temperature

        def parse(response: dict[str, Any]) -> float | None:
            return yes_no_probability(first_token_top_logprobs(response), temperature)

        return params, parse

    def _structured_spec(self, schema: Mapping[str, Any], max_tokens: int | None):
        params = self._params(max_tokens=max_tokens, response_format=self._response_format(schema))

        def parse(response: dict[str, Any]) -> Any:
            value = extract_json(reply_text(response))
            return {"__unparsed__": reply_text(response)} if value is None else value

        return params, parse

    def _rank_spec(self, candidate_ids: Sequence[Hashable], max_tokens: int | None):
        schema = permutation_schema(list(candidate_ids))
        params = self._params(max_tokens=max_tokens, response_format=self._response_format(schema))

        def parse(response: dict[str, Any]) -> list[Hashable]:
            return repair_permutation(
                parse_ranking(reply_text(response), candidate_ids), candidate_ids
            )

        return params, parse

    # -- public sync API ------------------------------------------------------------------------
    def chat(
        self,
        messages: Messages,
        *,
        template_version: str = "v1",
        max_tokens: int | None = None,
        temperature: float | None = None,
        schema: Mapping[str, Any] | None = None,
        fallback: Any = RAISE,
    ) -> ChatReply:
        """Chat completion; ``fallback`` (any value) is returned instead of raising. With
        ``schema`` the reply is constrained where the endpoint supports it (text returned as is)."""
        params, parse = self._chat_spec(max_tokens, temperature, schema)
        return self._request(messages, params, template_version, parse, fallback)

    def score_yes_no(
        self, messages: Messages, *, template_version: str = "v1", fallback: Any = RAISE
    ) -> float:
        """p(Yes) in [0, 1] for a prompt whose answer starts with Yes or No.

        A reply whose top-k holds neither Yes nor No also ends in ``fallback`` (or an error).
        """
        params, parse = self._yes_no_spec()
        value = self._request(messages, params, template_version, parse, fallback)
        return self._check_yes_no(value, fallback)

    def structured(
        self,
        messages: Messages,
        schema: Mapping[str, Any],
        *,
        template_version: str = "v1",
        max_tokens: int | None = None,
        fallback: Any = RAISE,
    ) -> Any:
        """A JSON value constrained by ``schema`` (tolerantly parsed; unparsable text is returned
        as ``{"__unparsed__": text}``)."""
        params, parse = self._structured_spec(schema, max_tokens)
        return self._request(messages, params, template_version, parse, fallback)

    def rank(
        self,
        messages: Messages,
        candidate_ids: Sequence[Hashable],
        *,
        template_version: str = "v1",
        max_tokens: int | None = None,
        fallback: Any = RAISE,
    ) -> list[Hashable]:
        """A permutation of ``candidate_ids`` (schema-constrained reply, parsed and repaired)."""
        params, parse = self._rank_spec(candidate_ids, max_tokens)
        return self._request(messages, params, template_version, parse, fallback)

    def _check_yes_no(self, value: float | None, fallback: Any) -> float:
        if value is not None:
            return value
        if fallback is not RAISE:
            return fallback
        raise LLMRequestError(
            "the first reply token's top_logprobs hold neither 'Yes' nor 'No': raise "
            "llm_top_logprobs, make the prompt ask for Yes/No, or pass a fallback."
        )

    # -- public async / batch API ---------------------------------------------------------------
    def _run_batch(
        self, jobs: Sequence[Callable[[openai.AsyncOpenAI], Awaitable[T]]], desc: str
    ) -> list[T]:
        """Run coroutine factories with at most ``max_concurrency`` in flight, in input order."""

        async def main() -> list[T]:
            semaphore = asyncio.Semaphore(self.config.max_concurrency)
            progress = tqdm(
                total=len(jobs), desc=desc, disable=None if self.show_progress else True
            )
            async with self._async_client() as client:

                async def one(job: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> T:
                    async with semaphore:
                        result = await job(client)
                    progress.update(1)
                    return result

                try:
                    return await asyncio.gather(*(one(job) for job in jobs))
                finally:
                    progress.close()

        return asyncio.run(main())

    def chat_batch(
        self,
        batch: Sequence[Messages],
        *,
        template_version: str = "v1",
        max_tokens: int | None = None,
        temperature: float | None = None,
        schema: Mapping[str, Any] | None = None,
        fallback: Any = RAISE,
    ) -> list[ChatReply]:
        params, parse = self._chat_spec(max_tokens, temperature, schema)
        jobs = [
            lambda c, m=m: self._arequest(c, m, params, template_version, parse, fallback)
            for m in batch
        ]
        return self._run_batch(jobs, "llm chat")

    def score_yes_no_batch(
        self, batch: Sequence[Messages], *, template_version: str = "v1", fallback: Any = RAISE
    ) -> list[float]:
        params, parse = self._yes_no_spec()
        jobs = [
            lambda c, m=m: self._arequest(c, m, params, template_version, parse, fallback)
            for m in batch
        ]
        return [self._check_yes_no(v, fallback) for v in self._run_batch(jobs, "llm yes/no")]

    def rank_batch(
        self,
        batch: Sequence[tuple[Messages, Sequence[Hashable]]],
        *,
        template_version: str = "v1",
        max_tokens: int | None = None,
        fallback: Any = RAISE,
    ) -> list[list[Hashable]]:
        jobs = []
        for messages, candidate_ids in batch:
            params, parse = self._rank_spec(candidate_ids, max_tokens)
            jobs.append(
                lambda c, m=messages, p=params, f=parse: self._arequest(
                    c, m, p, template_version, f, fallback
                )
            )
        return self._run_batch(jobs, "llm rank")

    async def achat(
        self,
        client: openai.AsyncOpenAI,
        messages: Messages,
        *,
        template_version: str = "v1",
        max_tokens: int | None = None,
        temperature: float | None = None,
        fallback: Any = RAISE,
    ) -> ChatReply:
        """Coroutine form of :meth:`chat` for callers with their own event loop; pass an
        ``openai.AsyncOpenAI`` made by :meth:`async_client` (bounded by the caller)."""
        params, parse = self._chat_spec(max_tokens, temperature)
        return await self._arequest(client, messages, params, template_version, parse, fallback)

    def async_client(self) -> openai.AsyncOpenAI:
        """A fresh ``openai.AsyncOpenAI`` for :meth:`achat` (use as ``async with``)."""
        return self._async_client()
