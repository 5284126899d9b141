"""Prompt evaluation speed of the packaged GGUF with and without ``logits_all``.

    python benchmarks/llm_prompt_eval.py --runs 3 --threads 2

llama-cpp-python's server starts models with ``logits_all=True`` (needed for log-probabilities),
which also computes vocabulary logits for every prompt token. The reranker's local server turns
it off (``llm_session(..., logprobs=False)``). This times ``Llama.eval`` of a rerank-sized prompt
(the same Fig. 3 prompt the reranker sends, ~650 tokens) both ways and prints tokens/s per run.
"""

from __future__ import annotations

import argparse
import statistics
import time

from llama_cpp import Llama

from recbole_ext.config_sections import yaml_section
from recbole_ext.llm.assets import default_gguf_path
from recbole_ext.llm.rerank_window import RerankConfig, build_messages

TITLES = [
    "Schindler's List (1993) Drama, War",
    "Client, The (1994) Drama, Mystery, Thriller",
    "Groundhog Day (1993) Comedy, Romance",
    "Lion King, The (1994) Animation, Children's, Musical",
    "Starship Troopers (1997) Action, Adventure, Sci-Fi, War",
]


def prompt_text() -> str:
    cfg = yaml_section(RerankConfig, item_noun="movie")
    window = [(p, TITLES[p % len(TITLES)]) for p in cfg.positions]
    messages = build_messages(TITLES * 2, window, cfg, structured=True)
    return "\n".join(m["content"] for m in messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    text = prompt_text()
    for logits_all in (True, False):
        llm = Llama(
            default_gguf_path(),
            n_ctx=2048,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            logits_all=logits_all,
            verbose=False,
        )
        tokens = llm.tokenize(text.encode())
        speeds = []
        for _ in range(args.runs + 1):  # the first run warms up and is not counted
            llm.reset()
            start = time.perf_counter()
            llm.eval(tokens)
            speeds.append(len(tokens) / (time.perf_counter() - start))
        speeds = speeds[1:]
        print(
            f"logits_all={logits_all}: {len(tokens)} prompt tokens, "
            f"{statistics.mean(speeds):.0f} ± {statistics.pstdev(speeds):.0f} tokens/s "
            f"({args.runs} runs: {', '.join(f'{s:.0f}' for s in speeds)})",
            flush=True,
        )
        del llm


if __name__ == "__main__":
    main()
