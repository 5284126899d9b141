"""A small fault-injecting OpenAI-compatible server (http.server on 127.0.0.1), and a batch job.

``FaultServer(script=["429", "500", "ok"])`` answers ``POST /v1/chat/completions`` with the
scripted behaviour of each successive request (then "ok" forever):

- ``ok``: a valid completion echoing the last user message (``"echo: <content>"``, or the fixed
  ``reply_text`` when the test sets that attribute), with usage
  and, when ``top_logprobs`` is asked for, first-token log-probs p(Yes)=0.6, p(No)=0.2;
- ``timeout``: sleeps ``hang_seconds`` before answering (the client times out first);
- ``400`` / ``429`` / ``500``: an OpenAI-style error body with that status (400 is not retried);
- ``garbage``: status 200, ``application/json`` header, a body that is not JSON;
- ``no_choices``: status 200, valid JSON without ``choices``.

``python tests/llm_fault_server.py --base-url URL --store PATH --n N`` runs a batch job (used by the
kill -9 resume test).
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEHAVIOURS = ("ok", "timeout", "400", "429", "500", "garbage", "no_choices")


def ok_body(request: dict, reply_text: str | None = None) -> dict:
    user = [m["content"] for m in request.get("messages", []) if m.get("role") == "user"]
    text = f"echo: {user[-1] if user else ''}" if reply_text is None else reply_text
    choice: dict = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    if request.get("top_logprobs"):
        top = [
            {"token": "Yes", "logprob": math.log(0.6), "bytes": None},
            {"token": "No", "logprob": math.log(0.2), "bytes": None},
            {"token": "Maybe", "logprob": math.log(0.1), "bytes": None},
        ]
        choice["logprobs"] = {
            "content": [
                {"token": "Yes", "logprob": math.log(0.6), "bytes": None, "top_logprobs": top}
            ]
        }
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", "fault"),
        "choices": [choice],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


class FaultServer:
    """Context manager; ``base_url``, ``requests`` (bodies received) and ``behaviours`` (served)."""

    def __init__(self, script=(), *, delay: float = 0.0, hang_seconds: float = 3.0) -> None:
        unknown = set(script) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviours {unknown}; choose from {BEHAVIOURS}")
        self.script = list(script)
        self.delay = delay
        self.hang_seconds = hang_seconds
        self.reply_text: str | None = None
        self.requests: list[dict] = []
        self.behaviours: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # /v1/models
                self._send(200, json.dumps({"object": "list", "data": []}).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    behaviour = server.script.pop(0) if server.script else "ok"
                    server.requests.append(request)
                    server.behaviours.append(behaviour)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    if behaviour == "timeout":
                        server._stop.wait(server.hang_seconds)
                        self._send(200, json.dumps(ok_body(request, server.reply_text)).encode())
                    elif behaviour in ("400", "429", "500"):
                        error = {"error": {"message": f"injected {behaviour}", "type": "fault"}}
                        headers = {"Retry-After": "0"} if behaviour == "429" else None
                        self._send(int(behaviour), json.dumps(error).encode(), headers)
                    elif behaviour == "garbage":
                        self._send(200, b"<html>\x00 not json {{{")
                    elif behaviour == "no_choices":
                        self._send(
                            200, json.dumps({"id": "x", "object": "chat.completion"}).encode()
                        )
                    else:
                        self._send(200, json.dumps(ok_body(request, server.reply_text)).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def batch_job_prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"prompt {i}"}] for i in range(n)]


def main() -> None:
    """Batch job for the resume test: chat_batch over ``n`` prompts into the store."""
    from recbole_ext.config_sections import yaml_section
    from recbole_ext.llm import LLMClient, LLMConfig, ResponseStore

    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    config = yaml_section(
        LLMConfig,
        base_url=args.base_url,
        model="fault",
        max_concurrency=args.concurrency,
        backoff_base=0.01,
    )
    with (
        ResponseStore(args.store) as store,
        LLMClient(config, store, show_progress=False) as client,
    ):
        client.chat_batch(batch_job_prompts(args.n))
        print(json.dumps(client.usage.as_dict()), flush=True)


if __name__ == "__main__":
    main()
