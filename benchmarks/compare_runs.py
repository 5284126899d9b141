"""Rows of several harness result folders in one table, each tested against a reference row.

    python benchmarks/compare_runs.py benchmarks/results/autodisenseq_ml100k_cpu \
        benchmarks/results/autodisenseq_ml100k_finetune_cpu --reference SASRec --seeds 2020

For suites run into different folders on the same protocol (e.g. a fine-tuning sweep that loads one
pre-trained model, beside the suite that trained it). Cells are mean ± std over the seeds a row has
(``--seeds``: which to use; default every seed found; the ``seeds`` column lists them). A row is
compared with the reference on the seeds both have, and only when, on each of them, it ranked the
same candidate lists (the ``eval_candidates`` digest each row records) under the same
``eval_protocol`` (recorded since 2026-12-01; older rows are assumed to share it). "vs reference":
relative difference of test NDCG@10 averaged over those shared seeds; p: paired t-test of per-user
test NDCG@10 pooled over them (``recbole_ext.metrics.paired_t_test``, as the suite tables).
Columns: best validation NDCG@10 (what a choice may use), test HR@10 and NDCG@10, the comparison,
and training time (minutes per run, as recorded; runs that resumed add their earlier sessions').
``--row NAME`` (repeated) lists only those rows, in that order: one table per paper table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recbole_ext.benchmark import common_seed_means, paired_users, shared_seeds
from recbole_ext.metrics import paired_t_test, significance_stars
from recbole_ext.tables import markdown_table, mean_std, mean_std_cell

HEADER = [
    "row",
    "folder",
    "seeds",
    "valid NDCG@10",
    "test HR@10",
    "test NDCG@10",
    "vs reference",
    "p (NDCG@10)",
    "train min",
]


def load_rows(folders: list[Path], seeds: list[int] | None = None) -> list[dict]:
    """Every finished row (of ``seeds``; None: all) in the folders' ``results.jsonl``, in file
    order, with ``folder`` (the folder's name) and ``row`` (the suite row's name) added; ``model``
    becomes ``folder/row`` so that equal row names of two folders stay apart."""
    rows = []
    for folder in folders:
        path = folder / "results.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: no results (run the suite into {folder} first)")
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("test_result") and (seeds is None or row.get("seed") in seeds):
                name = row["model"]
                rows.append(
                    {**row, "folder": folder.name, "row": name, "model": f"{folder.name}/{name}"}
                )
    return rows


def incomparable(rows: list[dict], key: str, ref_key: str) -> str | None:
    """Why row ``key`` cannot be tested against ``ref_key`` (None: it can): no shared seed, or on
    a shared seed another ``eval_protocol`` or other candidate lists.

    >>> rows = [{"model": "a", "seed": 1, "eval_candidates": "x", "eval_protocol": "p"},
    ...         {"model": "r", "seed": 1, "eval_candidates": "x"},
    ...         {"model": "c", "seed": 1, "eval_candidates": "x", "eval_protocol": "cold"},
    ...         {"model": "r2", "seed": 1, "eval_candidates": "x", "eval_protocol": "p"}]
    >>> incomparable(rows, "a", "r"), incomparable(rows, "c", "r2"), incomparable(rows, "a", "c")
    (None, 'other protocol (cold)', 'other protocol (p)')
    >>> rows[0]["eval_candidates"] = "y"; incomparable(rows, "a", "r")
    'other candidates'
    """
    seeds = shared_seeds(rows, key, ref_key)
    if not seeds:
        return "no shared seed"
    by_run = {(r["model"], r["seed"]): r for r in rows}
    for seed in seeds:
        row, ref = by_run[(key, seed)], by_run[(ref_key, seed)]
        theirs, ours = row.get("eval_protocol"), ref.get("eval_protocol")
        if theirs is not None and ours is not None and theirs != ours:
            return f"other protocol ({theirs})"
        if row.get("eval_candidates") != ref.get("eval_candidates"):
            return "other candidates"
    return None


def seed_cell(values: list[float]) -> str:
    """Mean ± std of one value per seed; the mean alone for one seed.

    >>> seed_cell([0.5]), seed_cell([0.5, 0.7])
    ('0.5000', '0.6000 ± 0.1414')
    """
    return mean_std_cell(*mean_std(values), n=len(values))


def row_key(keys: list[str], name: str, option: str) -> str:
    """The one key of ``keys`` (``folder/row``) that ``name`` names: a suite row's name, or
    ``folder/row`` when two folders hold that name. SystemExit naming ``option`` and every row
    name otherwise.

    >>> row_key(["a/SASRec", "b/ours"], "ours", "--row"), row_key(["a/x", "b/x"], "b/x", "--row")
    ('b/ours', 'b/x')
    """
    matches = [k for k in keys if name in (k, k.split("/", 1)[1])]
    if len(matches) != 1:
        raise SystemExit(
            f"{option} {name!r} matches {len(matches)} rows; names: " + ", ".join(sorted(keys))
        )
    return matches[0]


def table(rows: list[dict], reference: str, shown: list[str] | None = None) -> str:
    """The markdown table of ``rows`` (from :func:`load_rows`) against the row named
    ``reference`` (a suite row's name, or ``folder/row`` when two folders hold that name).
    ``shown``: the rows to list, in that order, named the same way (None: every row, in file
    order); the reference is tested against whether shown or not."""
    keys = list(dict.fromkeys(r["model"] for r in rows))
    ref_key = row_key(keys, reference, "--reference")
    if shown is not None:
        keys = [row_key(keys, name, "--row") for name in shown]
    lines = []
    for key in keys:
        runs = sorted((r for r in rows if r["model"] == key), key=lambda r: r["seed"])

        if key == ref_key:
            diff, p_cell = "reference", ""
        elif why := incomparable(rows, key, ref_key):
            diff, p_cell = why, ""
        else:
            ours, theirs = common_seed_means(rows, key, ref_key, "ndcg@10")
            diff = f"{ours / theirs - 1:+.1%}"
            p = paired_t_test(*paired_users(rows, key, ref_key))
            p_cell = f"{p:.2g}{significance_stars(p)}"
        lines.append(
            [
                runs[0]["row"],
                runs[0]["folder"],
                ", ".join(str(r["seed"]) for r in runs),
                seed_cell([r["best_valid_score"] for r in runs]),
                seed_cell([r["test_result"]["hit@10"] for r in runs]),
                seed_cell([r["test_result"]["ndcg@10"] for r in runs]),
                diff,
                p_cell,
                f"{mean_std(r['train_seconds'] / 60 for r in runs)[0]:.0f}",
            ]
        )
    return markdown_table(lines, HEADER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="harness --output folders")
    parser.add_argument("--reference", required=True, help="the row the others are tested against")
    parser.add_argument(
        "--seeds",
        type=lambda s: [int(x) for x in s.split(",")],
        help="e.g. 2020,2021 (default: all)",
    )
    parser.add_argument(
        "--row",
        action="append",
        dest="rows",
        metavar="NAME",
        help="a row to list (repeat it; in that order; default: every row). Names may hold commas",
    )
    args = parser.parse_args()
    print(table(load_rows(args.folders, args.seeds), args.reference, args.rows))


if __name__ == "__main__":
    main()
