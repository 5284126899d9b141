"""Paper Table 4 style comparison from ``--rerank_from`` outputs (AutoDisenSeq-LLM, TOIS 2025).

    python run_recbole_ext.py --rerank_from=saved/M.pth --output=DIR/llm.json
    python run_recbole_ext.py --rerank_from=saved/M.pth --rerank_keep_top=0 --output=DIR/llm_top5.json
    python benchmarks/rerank_table.py DIR/llm.json DIR/llm_top5.json > DIR/table.md

Rows: the model before reranking (identical in every file: same checkpoint, same candidates),
then one row per file after reranking. Columns are the paper's (HR@1, HR@5, NDCG@5, HR@10,
NDCG@10), plus the paired t-test of per-user NDCG@10 after vs before (stars as in the paper), the
reply outcomes, and the LLM pass's wall time and requests/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recbole_ext.metrics import paired_t_test, significance_stars
from recbole_ext.tables import markdown_table

COLUMNS = ["hit@1", "hit@5", "ndcg@5", "hit@10", "ndcg@10"]


def variant_name(model: str, keep_top: int) -> str:
    """The paper's names: top 5 kept -> ``-LLM``; nothing kept -> ``-LLM-Top5`` (Table 4)."""
    return {5: f"{model}-LLM", 0: f"{model}-LLM-Top5"}.get(keep_top, f"{model}-LLM-keep{keep_top}")


def table(files: list[Path]) -> str:
    runs = [json.loads(f.read_text()) for f in files]
    base = runs[0]
    for run, path in zip(runs[1:], files[1:]):
        if run["test_result_before_rerank"] != base["test_result_before_rerank"]:
            raise SystemExit(f"{path}: another model or other candidates than {files[0]}")
    header = ["variant", *COLUMNS, "p (NDCG@10)", "valid / repaired / fallback", "users moved"]
    header += ["LLM wall s", "req/s"]
    before = base["test_result_before_rerank"]
    rows = [[base["model"], *(f"{before[c]:.4f}" for c in COLUMNS), None, None, None, None, None]]
    before_ndcg = np.array(base["test_per_user_ndcg@10_before_rerank"])
    for run in runs:
        info = run["rerank"]
        after = run["test_result"]
        p = paired_t_test(np.array(run["test_per_user_ndcg@10"]), before_ndcg)
        o = info["outcomes"]
        rps = info["requests_per_second"]
        rows.append(
            [
                variant_name(run["model"], info["rerank_keep_top"]),
                *(f"{after[c]:.4f}" for c in COLUMNS),
                "– (no change)" if np.isnan(p) else f"{p:.3g}{significance_stars(p)}",
                f"{o['valid']} / {o['repaired']} / {o['fallback']}",
                f"{info['moved_users']} / {info['users']}",
                f"{info['wall_seconds']:.0f}",
                "cached" if rps is None else f"{rps:.2f}",
            ]
        )
    return markdown_table(rows, header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="--rerank_from output JSON files")
    print(table(parser.parse_args().files))


if __name__ == "__main__":
    main()
