"""The offline default endpoint: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

``python -m recbole_ext.llm.serve [--gguf PATH] [--port N]`` runs it in the foreground;
:class:`LocalLLMServer` is the context manager code and tests use (free port, ready once one short
chat request completes, stop cleanly); :func:`llm_session` yields an :class:`LLMClient` on the
configured endpoint, starting the local server when ``llm_base_url`` is unset. When the server
process dies (a crash of the native library, the OOM killer), the client's next failed request
raises :class:`LLMServerExitedError` at once, naming the exit signal and the server's log tail,
instead of retrying a dead port.

The server answers one request at a time. Beside torch training on few cores give it one thread
(``llm_server_n_threads``) and call ``torch.set_num_threads(1)``: measured on 2 cores, torch
generation ran ~50x slower when both competed for all cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from .assets import default_gguf_path
from .client import LLMClient, LLMRequestError
from .config import LLMConfig
from .store import ResponseStore

logger = logging.getLogger(__name__)


PORTABLE_BUILD_HINT = (
    "see README 'local LLM' for the portable build "
    '(CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python)"
)
READY_PROMPT = [{"role": "user", "content": "Reply with the word OK."}]  # several tokens: a real
# prompt evaluation (llama.cpp's native AMX build only crashed on prompts longer than one token)


class LLMServerExitedError(LLMRequestError):
    """The local ``llama_cpp.server`` process is gone; retrying cannot help."""


def describe_exit(returncode: int) -> str:
    """``"signal 11 (SIGSEGV)"`` for a process killed by a signal, else ``"code N"``.

    >>> describe_exit(-11), describe_exit(1)
    ('signal 11 (SIGSEGV)', 'code 1')
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"signal {-returncode} ({name})"
    return f"code {returncode}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalLLMServer:
    """Start ``python -m llama_cpp.server`` with a GGUF; a context manager.

    Args:
        gguf_path: model file (default: the packaged SmolLM2-135M-Instruct Q4_1).
        model_alias: the name requests use (``llm_model``).
        n_ctx, n_threads: llama.cpp context length and CPU threads.
        port: fixed port, or ``None`` for a free one.
        startup_timeout: seconds to wait until one short chat request completes.
        logprobs: serve log-probabilities (the Yes/No scorer needs them). llama-cpp-python then
            computes vocabulary logits for every prompt token (``logits_all``), which slows
            prompt evaluation (``benchmarks/llm_prompt_eval.py`` times both); callers that only
            need text (the reranker) pass ``False``.
    """

    def __init__(
        self,
        gguf_path: str | None = None,
        *,
        model_alias: str = "SmolLM2-135M-Instruct",
        n_ctx: int = 2048,
        n_threads: int = 1,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 120.0,
        logprobs: bool = True,
    ) -> None:
        self.gguf_path = gguf_path or default_gguf_path()
        if not os.path.isfile(self.gguf_path):
            raise FileNotFoundError(f"GGUF model {self.gguf_path!r} does not exist.")
        self.model_alias = model_alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.logprobs = logprobs
        self.process: subprocess.Popen | None = None
        self._log = None
        self._last_tail = ""

    @classmethod
    def from_config(cls, config: LLMConfig, *, logprobs: bool = True) -> LocalLLMServer:
        return cls(
            config.gguf_path,
            model_alias=config.model,
            n_ctx=config.server_n_ctx,
            n_threads=config.server_n_threads,
            startup_timeout=config.server_startup_timeout,
            logprobs=logprobs,
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        # fmt: off
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", self.gguf_path,
            "--model_alias", self.model_alias,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--logits_all", str(self.logprobs),
            "--verbose", "False",
        ]
        # fmt: on

    def log_tail(self, chars: int = 3000) -> str:
        if self._log is None:
            return self._last_tail[-chars:]
        self._log.flush()
        with open(self._log.name, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-chars:]

    def start(self) -> LocalLLMServer:
        """Start the process and return once it has answered one short chat request.

        Raises:
            LLMServerExitedError: the process exited first (its exit code or signal and log tail).
            TimeoutError: no answer within ``startup_timeout`` seconds.
        """
        if self.port is None:
            self.port = free_port(self.host)
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            "w+", prefix="llama_server_", suffix=".log", delete=False
        )
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C in the parent is ours to forward
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self._raise_if_exited("before it was ready (is llama-cpp-python[server] installed?)")
            try:
                if self._answers_chat(timeout=max(1.0, deadline - time.monotonic())):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(
            f"llama_cpp.server did not answer a chat request on {self.base_url} within "
            f"{self.startup_timeout}s; raise llm_server_startup_timeout. Log tail:\n{tail}"
        )

    def _answers_chat(self, timeout: float) -> bool:
        """One ``max_tokens=1`` chat completion: the model is loaded and can evaluate a prompt."""
        body = json.dumps({"model": self.model_alias, "messages": READY_PROMPT, "max_tokens": 1})
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status == 200 and bool(json.load(reply).get("choices"))

    def _raise_if_exited(self, when: str) -> None:
        if self.process is None or self.process.poll() is None:
            return
        code = self.process.returncode
        tail = self.log_tail()
        self.stop()
        raise LLMServerExitedError(
            f"llama_cpp.server exited with {describe_exit(code)} {when}; log tail:\n{tail}\n"
            f"{PORTABLE_BUILD_HINT}"
        )

    def raise_if_exited(self, grace: float = 1.0) -> None:
        """Raise :class:`LLMServerExitedError` if the server process has exited (or does within
        ``grace`` seconds: a dying process closes its sockets before its exit status is ready).
        The client calls this after a connection error (``LLMClient(..., liveness=...)``)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        self._raise_if_exited("while answering")

    def stop(self) -> None:
        if self._log is not None:  # keep the tail for an error raised after stop()
            self._last_tail = self.log_tail()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def llm_session(
    config: LLMConfig, *, show_progress: bool = True, logprobs: bool = True
) -> Iterator[LLMClient]:
    """An :class:`LLMClient` with its store; starts (and stops) the local server if needed
    (``logprobs=False``: a faster local server that cannot score Yes/No)."""
    logger.info("LLM settings: %s", config.to_dict())  # holds the key's variable, not the key
    with contextlib.ExitStack() as stack:
        liveness = None
        if config.base_url is None:
            server = stack.enter_context(LocalLLMServer.from_config(config, logprobs=logprobs))
            config = dataclasses.replace(config, base_url=server.base_url)
            liveness = server.raise_if_exited
            logger.info("started llama_cpp.server with %s at %s", server.gguf_path, server.base_url)
        store = None
        if config.store_path is not None:
            store = stack.enter_context(ResponseStore(config.store_path))
        client = stack.enter_context(
            LLMClient(config, store, show_progress=show_progress, liveness=liveness)
        )
        yield client


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None, help="GGUF file (default: packaged SmolLM2)")
    # unset: LocalLLMServer's own defaults (llm_model, llm_server_n_ctx, llm_server_n_threads)
    parser.add_argument("--model-alias", default=None)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--n-ctx", type=int, default=None)
    parser.add_argument("--n-threads", type=int, default=None)
    args = parser.parse_args(argv)
    given = {"model_alias": args.model_alias, "n_ctx": args.n_ctx, "n_threads": args.n_threads}
    server = LocalLLMServer(
        args.gguf, port=args.port, **{k: v for k, v in given.items() if v is not None}
    )
    with server:
        print(
            f"llm_base_url: {server.base_url}  (model {server.model_alias}); Ctrl-C stops",
            flush=True,
        )
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
