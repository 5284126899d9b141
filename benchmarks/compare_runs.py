"""Rows of several harness result folders in one table, each tested against a reference row.

    python benchmarks/compare_runs.py benchmarks/results/autodisenseq_ml100k_cpu \
        benchmarks/results/autodisenseq_ml100k_finetune_cpu --reference SASRec --seed 2020

For suites run into different folders on the same protocol (e.g. a fine-tuning sweep that loads one
pre-trained model, beside the suite that trained it). A row is compared only when it ranked the
same candidate lists as the reference (the ``eval_candidates`` digest each row records); the
p-value is the paired t-test of per-user test NDCG@10 (``recbole_ext.metrics.paired_t_test``).
Columns: best validation NDCG@10 (what a choice may use), test HR@10 and NDCG@10, the relative
NDCG@10 difference to the reference, its p-value, and training time (minutes, as recorded; runs
that resumed add their earlier sessions' time).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recbole_ext.metrics import paired_t_test, significance_stars
from recbole_ext.tables import markdown_table

PER_USER_KEY = "test_per_user_ndcg@10"


def load_rows(folders: list[Path], seed: int) -> list[dict]:
    """Every finished row of ``seed`` in the folders' ``results.jsonl``, in file order."""
    rows = []
    for folder in folders:
        path = folder / "results.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: no results (run the suite into {folder} first)")
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("seed", seed) == seed and row.get("test_result"):
                rows.append({**row, "folder": folder.name})
    return rows


def table(rows: list[dict], reference: str) -> str:
    """The markdown table of ``rows`` against the row named ``reference``."""
    matches = [r for r in rows if r["model"] == reference]
    if len(matches) != 1:
        raise SystemExit(
            f"--reference {reference!r} matches {len(matches)} rows; names: "
            + ", ".join(sorted({r["model"] for r in rows}))
        )
    ref = matches[0]
    header = [
        "row",
        "folder",
        "valid NDCG@10",
        "test HR@10",
        "test NDCG@10",
        "vs reference",
        "p (NDCG@10)",
        "train min",
    ]
    lines = []
    for row in rows:
        test = row["test_result"]
        if row is ref:
            diff, p_cell = "reference", ""
        elif row["eval_candidates"] != ref["eval_candidates"]:
            diff, p_cell = "other candidates", ""
        else:
            diff = f"{test['ndcg@10'] / ref['test_result']['ndcg@10'] - 1:+.1%}"
            p = paired_t_test(row[PER_USER_KEY], ref[PER_USER_KEY])
            p_cell = f"{p:.2g}{significance_stars(p)}"
        lines.append(
            [
                row["model"],
                row["folder"],
                f"{row['best_valid_score']:.4f}",
                f"{test['hit@10']:.4f}",
                f"{test['ndcg@10']:.4f}",
                diff,
                p_cell,
                f"{row['train_seconds'] / 60:.0f}",
            ]
        )
    return markdown_table(lines, header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="harness --output folders")
    parser.add_argument("--reference", required=True, help="the row the others are tested against")
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    print(table(load_rows(args.folders, args.seed), args.reference))


if __name__ == "__main__":
    main()
