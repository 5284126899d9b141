"""Throughput of the offline llama.cpp server (SmolLM2-135M-Instruct Q4_1) through LLMClient.

Measures, per run: requests/s, completion tokens/s and prompt tokens/s of a cold batch (every
request goes to the server), then the wall time of the same batch fully answered by the response
store, and the speed-up cold / cached. Each run uses a new template version so nothing is cached
across runs. Prints a table and one JSON line.

    python benchmarks/llm_server_throughput.py --runs 3 --requests 16 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from recbole_ext.config_sections import yaml_section
from recbole_ext.llm import LLMClient, LLMConfig, ResponseStore
from recbole_ext.llm.serve import LocalLLMServer
from recbole_ext.tables import mean_std

TOPICS = ["cats", "rivers", "jazz", "chess", "tea", "trains", "maps", "bees", "snow", "clocks"]


def prompts(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Write two sentences about {TOPICS[i % len(TOPICS)]} ({i})."}]
        for i in range(n)
    ]


def one_run(client: LLMClient, batch: list, max_tokens: int, run: int) -> dict:
    before = client.usage.as_dict()
    start = time.perf_counter()
    client.chat_batch(batch, max_tokens=max_tokens, template_version=f"bench-{run}")
    cold = time.perf_counter() - start
    after = client.usage.as_dict()
    start = time.perf_counter()
    replies = client.chat_batch(batch, max_tokens=max_tokens, template_version=f"bench-{run}")
    cached = time.perf_counter() - start
    assert all(r.cached for r in replies) and client.usage.requests == after["requests"]
    completion = after["completion_tokens"] - before["completion_tokens"]
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    return {
        "requests_per_s": len(batch) / cold,
        "completion_tokens_per_s": completion / cold,
        "prompt_tokens_per_s": prompt / cold,
        "completion_tokens": completion,
        "cold_s": cold,
        "cached_s": cached,
        "cached_speedup": cold / cached,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--n-threads", type=int, default=1, help="llama.cpp server threads")
    args = parser.parse_args()

    batch = prompts(args.requests)
    results = []
    with tempfile.TemporaryDirectory() as tmp, LocalLLMServer(n_threads=args.n_threads) as server:
        config = yaml_section(
            LLMConfig, base_url=server.base_url, max_concurrency=args.concurrency, temperature=0.0
        )
        with ResponseStore(Path(tmp) / "bench.sqlite") as store:
            client = LLMClient(config, store, show_progress=False)
            client.chat([{"role": "user", "content": "warm-up"}], max_tokens=4)
            for run in range(args.runs):
                results.append(one_run(client, batch, args.max_tokens, run))

    keys = ["requests_per_s", "completion_tokens_per_s", "prompt_tokens_per_s", "cold_s"]
    keys += ["cached_s", "cached_speedup"]
    print(
        f"llama.cpp server, {Path(server.gguf_path).name}, n_threads={args.n_threads}, "
        f"{args.requests} requests x max_tokens={args.max_tokens}, concurrency "
        f"{args.concurrency}, {args.runs} runs, {platform.processor() or platform.machine()}"
    )
    summary = {}
    for key in keys:
        mean, std = mean_std(r[key] for r in results)  # sample std (ddof 1), 0 for one run
        summary[key] = {"mean": mean, "std": std}
        print(f"  {key:<24} {mean:>10.3f} ± {std:.3f}")
    print(json.dumps({"args": vars(args), "summary": summary, "runs": results}))


if __name__ == "__main__":
    main()
