"""LLMClient against a fault-injecting OpenAI-compatible server: retries, fallback, error, store
integrity, accounting, and a kill -9 / resume batch job."""

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from recbole_ext.config_sections import yaml_section
from recbole_ext.llm import RAISE, LLMClient, LLMConfig, LLMRequestError, ResponseStore
from tests.llm_fault_server import FaultServer, batch_job_prompts

HELPER = os.path.join(os.path.dirname(__file__), "llm_fault_server.py")
PROMPT = [{"role": "user", "content": "hello"}]


def make_client(server, store=None, **overrides) -> LLMClient:
    settings = {
        "base_url": server.base_url,
        "model": "fault",
        "timeout": 0.5,
        "max_retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        **overrides,
    }
    return LLMClient(yaml_section(LLMConfig, **settings), store, show_progress=False)


@pytest.fixture
def store(tmp_path):
    with ResponseStore(tmp_path / "store.sqlite") as s:
        yield s


def test_retries_through_429_500_garbage_timeout_then_succeeds(store):
    script = ["429", "500", "garbage", "timeout"]
    with FaultServer(script) as server, make_client(server, store, max_retries=4) as client:
        start = time.perf_counter()
        reply = client.chat(PROMPT)
        elapsed = time.perf_counter() - start
    assert reply.text == "echo: hello" and not reply.cached
    assert server.behaviours == ["429", "500", "garbage", "timeout", "ok"]
    usage = client.usage
    assert (usage.requests, usage.retries, usage.failures) == (5, 4, 0)
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 3)  # only the answered request
    assert elapsed < 3.0  # one 0.5 s timeout + tiny backoffs, no hang
    assert len(store) == 1 and store.integrity_check() == "ok"


@pytest.mark.parametrize("fault", ["429", "500", "garbage", "no_choices", "timeout"])
def test_fallback_after_last_retry_is_returned_and_not_stored(store, fault):
    with FaultServer([fault] * 3) as server, make_client(server, store, max_retries=2) as client:
        sentinel = object()
        assert client.chat(PROMPT, fallback=sentinel) is sentinel
        assert len(server.requests) == 3  # 1 try + 2 retries
        assert (client.usage.retries, client.usage.failures) == (2, 1)
        assert len(store) == 0 and store.integrity_check() == "ok"
        # the endpoint recovered: the next call is answered and stored
        assert client.chat(PROMPT).text == "echo: hello"
    assert len(store) == 1


def test_error_after_last_retry_names_endpoint_and_attempts(store):
    with FaultServer(["500"] * 2) as server, make_client(server, store, max_retries=1) as client:
        with pytest.raises(LLMRequestError, match=r"127\.0\.0\.1.*'fault'.*2 attempt\(s\)"):
            client.chat(PROMPT)
    assert len(store) == 0


def test_non_retryable_status_fails_at_once_even_with_fallback(store):
    with FaultServer(["400", "400"]) as server, make_client(server, store) as client:
        with pytest.raises(LLMRequestError, match=r"1 attempt\(s\): BadRequestError"):
            client.chat(PROMPT, fallback="a fallback does not hide a bad request")
    assert len(server.requests) == 1 and client.usage.failures == 1


def test_yes_no_scoring_and_cache_hits_make_no_requests(store):
    with FaultServer() as server, make_client(server, store) as client:
        p = client.score_yes_no(PROMPT)
        assert p == pytest.approx(0.75)  # 0.6 / (0.6 + 0.2)
        body = server.requests[0]
        assert body["logprobs"] is True and body["top_logprobs"] == 10 and body["max_tokens"] == 1
        assert client.score_yes_no(PROMPT) == pytest.approx(0.75)
        assert len(server.requests) == 1 and client.usage.cache_hits == 1
    config = yaml_section(
        LLMConfig, base_url=server.base_url, model="fault", yes_no_temperature=2.0
    )
    with FaultServer() as server2, make_client(server2, store, yes_no_temperature=2.0) as client:
        expected = math.sqrt(0.6) / (math.sqrt(0.6) + math.sqrt(0.2))
        assert client.score_yes_no(PROMPT) == pytest.approx(expected)
    assert config.yes_no_temperature == 2.0


def test_async_batch_bounded_concurrency_in_order(store):
    prompts = batch_job_prompts(12)
    with FaultServer(["429", "500"], delay=0.05) as server:
        with make_client(server, store, max_concurrency=3) as client:
            replies = client.chat_batch(prompts)
            assert [r.text for r in replies] == [f"echo: prompt {i}" for i in range(12)]
            assert client.usage.requests == 14 and client.usage.retries == 2
            again = client.chat_batch(prompts)
            assert all(r.cached for r in again) and client.usage.cache_hits == 12
    assert len(server.requests) == 14 and len(store) == 12 and store.integrity_check() == "ok"
    assert server.max_in_flight == 3  # bounded by max_concurrency, and actually concurrent


def test_rank_uses_json_schema_response_format_and_repairs(store):
    with FaultServer() as server, make_client(server, store) as client:
        # the fault server echoes "echo: pick 3 2 3": parsed [3, 2, 3] -> repaired [3, 2, 1]
        ranking = client.rank([{"role": "user", "content": "pick 3 2 3"}], [1, 2, 3])
    assert ranking == [3, 2, 1]
    response_format = server.requests[0]["response_format"]
    assert response_format["type"] == "json_object"
    assert response_format["schema"]["properties"]["ranking"]["items"]["enum"] == [1, 2, 3]


def count_rows(path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_batch_job_killed_midway_resumes_without_loss_or_duplicates(tmp_path):
    n = 60
    path = tmp_path / "resume.sqlite"
    with FaultServer(delay=0.04) as server:
        command = [sys.executable, HELPER, "--base-url", server.base_url, "--store", str(path)]
        command += ["--n", str(n), "--concurrency", "2"]
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while count_rows(path) < 10 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait()
        assert job.returncode == -signal.SIGKILL, job.stderr.read().decode()[-2000:]
        done_before = count_rows(path)
        assert 10 <= done_before < n
        # a request the killed job sent may still be read by a server thread: count once settled
        first_run_requests, settle = len(server.requests), time.monotonic() + 10
        while time.monotonic() < settle:
            time.sleep(0.3)
            if len(server.requests) == first_run_requests:
                break
            first_run_requests = len(server.requests)

        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        second_run_requests = len(server.requests) - first_run_requests

    assert second_run_requests == n - done_before  # finished rows are not asked again
    with ResponseStore(path) as store:
        assert store.integrity_check() == "ok"
        pairs = list(store.iter_responses())
    contents = []
    for request, response in pairs:
        content = request["messages"][0]["content"]
        assert response["choices"][0]["message"]["content"] == f"echo: {content}"
        contents.append(content)
    assert sorted(contents) == sorted(f"prompt {i}" for i in range(n))  # each exactly once


@pytest.mark.parametrize("mode", ["json_object", "json_schema", "none"])
def test_structured_output_request_shape_per_endpoint_kind(store, mode):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with FaultServer() as server, make_client(server, store, structured_output=mode) as client:
        # the fault server echoes the prompt: 'echo: {"a": 1}' -> tolerant parse -> {"a": 1}
        value = client.structured([{"role": "user", "content": '{"a": 1}'}], schema)
        unparsed = client.structured([{"role": "user", "content": "no json"}], schema)
    assert value == {"a": 1} and unparsed == {"__unparsed__": "echo: no json"}
    body = server.requests[0]
    if mode == "json_object":  # llama.cpp: schema -> grammar
        assert body["response_format"] == {"type": "json_object", "schema": schema}
    elif mode == "json_schema":  # OpenAI / vLLM
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema, "strict": True},
        }
    else:
        assert "response_format" not in body


def test_reply_without_logprobs_is_retried_then_reported(store):
    with FaultServer() as server, make_client(server, store, max_retries=1) as client:
        # the fault server sends log-probs only when top_logprobs is asked for: leave it out
        params, parse = client._yes_no_spec()
        del params["top_logprobs"]
        with pytest.raises(LLMRequestError, match="no top_logprobs"):
            client._request(PROMPT, params, "v1", parse, RAISE)
    assert len(store) == 0 and len(server.requests) == 2
