"""Against the REAL local llama.cpp server with SmolLM2-135M-Instruct (started once per module):
chat, Yes/No probability agreeing with the transformers-loaded GGUF, structured permutation,
zero requests on a cached rerun; a server that dies (killed mid-request, or crashing on its first
prompt) is reported at once with its exit signal."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from recbole_ext.config_sections import yaml_section
from recbole_ext.llm import LLMClient, LLMConfig, ResponseStore
from recbole_ext.llm.local_lm import next_token_top_logprobs
from recbole_ext.llm.parsing import extract_json, is_permutation, yes_no_probability
from recbole_ext.llm.serve import LLMServerExitedError, LocalLLMServer, free_port, llm_session
from tests.llm_fixtures import require_gguf, smollm2

YES_NO = [
    {"role": "user", "content": "Answer with Yes or No only. Is Paris the capital of France?"}
]
RANK = [
    {
        "role": "user",
        "content": "A user loves horror films. Rank these movies for them, most relevant first: "
        '3: Alien, 1: Up, 4: Heat, 2: Cars, 5: Jaws. Reply as JSON {"ranking": [ids]}.',
    }
]
CANDIDATES = [3, 1, 4, 2, 5]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    require_gguf()
    store_path = tmp_path_factory.mktemp("llm") / "store.sqlite"
    config = yaml_section(LLMConfig, base_url=None, store_path=str(store_path), max_tokens=48)
    with llm_session(config, show_progress=False) as client:  # starts llama_cpp.server
        yield client


def test_server_started_on_loopback_and_chat_completion(session):
    assert session.config.base_url.startswith("http://127.0.0.1:")
    before = dataclasses.replace(session.usage)
    reply = session.chat([{"role": "user", "content": "Say hello in five words."}], max_tokens=24)
    assert isinstance(reply.text, str) and reply.text.strip() and not reply.cached
    usage = reply.response["usage"]
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 24
    assert session.usage.requests == before.requests + 1
    assert session.usage.completion_tokens == before.completion_tokens + usage["completion_tokens"]


def test_yes_no_probability_agrees_with_transformers_gguf(session):
    p_server = session.score_yes_no(YES_NO)
    assert 0.0 < p_server < 1.0
    model, tokenizer = smollm2()
    top = next_token_top_logprobs(model, tokenizer, YES_NO, k=session.config.top_logprobs)
    assert {"Yes", "No"} <= set(top)  # both answers are real log-probs, not the floor
    p_torch = yes_no_probability(top, session.config.yes_no_temperature)
    assert abs(p_server - p_torch) < 0.05, (p_server, p_torch)


def test_structured_output_is_a_valid_permutation(session):
    ranking = session.rank(RANK, CANDIDATES, max_tokens=48)
    assert is_permutation(ranking, CANDIDATES)
    # the grammar-constrained raw reply itself parses as the schema's object of known ids
    (raw,) = [
        response["choices"][0]["message"]["content"]
        for request, response in session.store.iter_responses()
        if request["messages"] == RANK
    ]
    value = extract_json(raw)
    assert set(value) == {"ranking"} and len(value["ranking"]) == len(CANDIDATES)
    assert set(value["ranking"]) <= set(CANDIDATES)


def test_cached_rerun_makes_zero_requests(session):
    prompts = [[{"role": "user", "content": f"Name a colour. ({i})"}] for i in range(3)]
    first = session.chat_batch(prompts, max_tokens=8)
    # a second client on the same store whose endpoint is a closed port: any request would fail
    dead = dataclasses.replace(session.config, base_url=f"http://127.0.0.1:{free_port()}/v1")
    with ResponseStore(session.config.store_path) as store:
        with LLMClient(dead, store, show_progress=False) as offline:
            again = offline.chat_batch(prompts, max_tokens=8)
            p_again = offline.score_yes_no(YES_NO)
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    assert offline.usage.requests == 0 and offline.usage.cache_hits == 4
    assert p_again == session.score_yes_no(YES_NO)


def test_serve_cli_runs_and_stops_cleanly_on_ctrl_c():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "recbole_ext.llm.serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = process.stdout.readline()  # printed once the server answers
        assert f"llm_base_url: http://127.0.0.1:{port}/v1" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as reply:
            assert json.load(reply)["data"][0]["id"] == "SmolLM2-135M-Instruct"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    with pytest.raises(OSError):  # the llama.cpp child is gone too
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_server_start_failures_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LocalLLMServer(str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    with pytest.raises(RuntimeError, match="exited with code .* before it was ready"):
        LocalLLMServer(str(not_gguf), startup_timeout=60).start()


def test_server_killed_mid_request_names_the_signal():
    """A crash while answering (the AMX SIGSEGV of a native llama.cpp build) is reported at once,
    with the signal and the portable-build hint, not after every retry as a 'Connection error'."""
    config = yaml_section(
        LLMConfig, base_url=None, store_path=None, max_retries=4, backoff_base=5.0
    )
    with LocalLLMServer.from_config(config, logprobs=False) as server:
        config = dataclasses.replace(config, base_url=server.base_url)
        long_reply = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]
        # Unconstrained, SmolLM2 stops after "10" (51 tokens, 0.9 s: the kill came too late on an
        # idle machine). A schema of at least 1000 numbers makes every reply run to max_tokens
        # (400 tokens, about 10 s here), so the kill at 1 s always lands while it is answering.
        at_least_1000 = {
            "type": "object",
            "properties": {"n": {"type": "array", "items": {"type": "integer"}, "minItems": 1000}},
            "required": ["n"],
        }
        killer = threading.Timer(1.0, os.kill, (server.process.pid, signal.SIGSEGV))
        with LLMClient(config, liveness=server.raise_if_exited, show_progress=False) as client:
            killer.start()
            start = time.monotonic()
            with pytest.raises(LLMServerExitedError) as raised:
                client.chat(
                    long_reply,
                    max_tokens=400,
                    schema=at_least_1000,
                    fallback="a fallback never hides this",
                )
            elapsed = time.monotonic() - start
            killer.join()
            with pytest.raises(LLMServerExitedError):  # every later request: the same cause
                client.chat(YES_NO, max_tokens=4)
    message = str(raised.value)
    assert "llama_cpp.server exited with signal 11 (SIGSEGV) while answering" in message
    assert "log tail" in message and "README 'local LLM'" in message
    assert elapsed < 10  # no retries with 5, 10, 20 s back-off before saying so
    assert client.usage.retries == 0


FAKE_CRASHING_SERVER = """
import http.server, json, os, signal, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # /v1/models answers, as a server whose model loaded
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def do_POST(self):  # the first prompt evaluation crashes the process
        print("evaluating prompt", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


class CrashOnFirstPromptServer(LocalLLMServer):
    """Fault injection: lists its model, then dies on the first chat request (as llama.cpp's
    native AMX build did); the real server cannot be made to do that on demand."""

    def command(self):
        return [sys.executable, "-c", FAKE_CRASHING_SERVER, str(self.port)]


def test_readiness_check_completes_a_chat_request(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"unused by the fake server")
    with pytest.raises(LLMServerExitedError) as raised:
        CrashOnFirstPromptServer(str(gguf), startup_timeout=30).start()
    message = str(raised.value)
    assert "exited with signal 11 (SIGSEGV) before it was ready" in message
    assert "evaluating prompt" in message  # the log tail
