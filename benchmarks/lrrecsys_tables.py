"""LR-Recsys result tables from the harness's runs on the documented ml-100k preset: Table 2, the
ablations (Tables 4-6 / C.5) and learning efficiency (Table 3), every cell a mean ± std over seeds.

    # 1. the runs: one harness suite per table (resumable; explanations from the committed store)
    python run_recbole_ext.py --benchmark --suite=properties/benchmark/lrrecsys_table2.yaml \
        --output=benchmarks/results/lrrecsys/table2
    python run_recbole_ext.py --benchmark --suite=properties/benchmark/lrrecsys_ablation.yaml \
        --output=benchmarks/results/lrrecsys/ablation
    python run_recbole_ext.py --benchmark --suite=properties/benchmark/lrrecsys_efficiency.yaml \
        --output=benchmarks/results/lrrecsys/efficiency
    # 2. the tables: benchmarks/results/lrrecsys/<table>.md and .json
    python benchmarks/lrrecsys_tables.py table2|ablation|efficiency [--runs=DIR] [--output=DIR]
    # <table>.md again from the committed <table>.json (each cell recomputed from its seeds)
    python benchmarks/lrrecsys_tables.py table2 --from_json

The suites (``properties/benchmark/lrrecsys_<table>.yaml``) hold the preset, the rows (named
``<variant> <task>[ <training share>]``), the seeds and the learning rates: Table 2 gives every
model the grid {0.01, 0.001} and the harness keeps, per row, the rate with the best mean
validation AUC / RMSE over the seeds (``learning_rates``; the test set plays no part); the
ablations and Table 3 keep the paper's 0.01. What stays here is LR-Recsys's own analysis: a
variant's classification and regression runs side by side in one table row, the baselines' RMSE /
MAE on the 1-5 scale (:func:`table_metrics`), Table 2's constant predictor and the Hanley-McNeil
standard error of its test set, and Table 3's pivots by training share.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recbole_ext.benchmark import BenchmarkSpec, chosen_runs, read_rows
from recbole_ext.tables import markdown_table, mean_std_cell
from recbole_ext.tables import mean_std as mean_and_std

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "lrrecsys"
TABLES = ("table2", "ablation", "efficiency")
RATING_SPAN = 4.0  # lrrecsys_rating_range [1, 5]
TASKS = ("classification", "regression")
# variant (a suite row's first word) -> its label in the tables
LABELS = {
    "lrrecsys": "LR-Recsys (AE explanations, no profiles)",
    **{name: f"{name} (RecBole)" for name in ("DeepFM", "DIN", "FM", "xDeepFM", "AutoInt")},
    "WideDeep": "WideDeep (RecBole)",
    "free": "Ablation 1: free learnable vectors",
    "sentence_encoder": "Ablation 2: raw MiniLM embeddings, no AE",
    "positive_only": "Positive explanations only",
    "profiles": "With CoT profile augmentation",
    "summary": "History summarisation (C.2.4)",
}
COLUMNS = {
    "auc": "AUC ↑",
    "logloss": "LogLoss ↓",
    "rmse": "RMSE (1-5) ↓",
    "mae": "MAE (1-5) ↓",
    "rmse_norm": "RMSE (norm.) ↓",
    "mae_norm": "MAE (norm.) ↓",
}


def suite_of(table: str) -> BenchmarkSpec:
    """The harness suite of ``table`` (``properties/benchmark/lrrecsys_<table>.yaml``)."""
    return BenchmarkSpec.from_suite(REPO / "properties" / "benchmark" / f"lrrecsys_{table}.yaml")


# The baselines' inputs: interactions only (ids, item history, hour, weekday), as the suites say.
ID_FEATURES = {"load_col": suite_of("table2").config_of("FM classification")["load_col"]}


def row_name(variant: str, task: str, fraction: float = 1.0) -> str:
    """A suite row's name.

    >>> row_name("FM", "regression"), row_name("free", "classification", 0.12)
    ('FM regression', 'free classification 0.12')
    """
    return f"{variant} {task}" + ("" if fraction == 1.0 else f" {fraction:g}")


def row_parts(spec: BenchmarkSpec, name: str) -> tuple[str, str, float]:
    """``(variant, task, training share)`` of a suite row: the task and the share from its
    config, the variant from its name, which must be :func:`row_name` of the three.

    Raises:
        ValueError: a row whose name disagrees with its config, or of an unknown variant.
    """
    config = spec.config_of(name)
    task = config.get("lrrecsys_task", "classification")
    fraction = float(config.get("lrrecsys_train_fraction", 1.0))
    variant = name.split(" ")[0]
    if variant not in LABELS or name != row_name(variant, task, fraction):
        raise ValueError(
            f"suite row {name!r}: expected the name {row_name(variant, task, fraction)!r} "
            f"(<variant> <task>[ <share>], variant one of {sorted(LABELS)}) for its config "
            f"lrrecsys_task={task}, lrrecsys_train_fraction={fraction:g}"
        )
    return variant, task, fraction


def table_metrics(test: dict, task: str, label_is_rating: bool, span: float = RATING_SPAN) -> dict:
    """Test metrics on both rating scales.

    LRRecsys regresses the rating itself (RMSE on 1-5); RecBole's CTR models regress the rating
    rescaled to [0, 1] (their RMSE is on the normalised scale).

    >>> table_metrics({"rmse": 0.25, "mae": 0.2}, "regression", label_is_rating=False)
    {'rmse': 1.0, 'mae': 0.8, 'rmse_norm': 0.25, 'mae_norm': 0.2}
    >>> table_metrics({"rmse": 1.0, "mae": 0.8}, "regression", label_is_rating=True)
    {'rmse': 1.0, 'mae': 0.8, 'rmse_norm': 0.25, 'mae_norm': 0.2}
    """
    if task == "classification":
        return {"auc": test["auc"], "logloss": test["logloss"]}
    scale = 1.0 if label_is_rating else span
    rmse, mae = test["rmse"] * scale, test["mae"] * scale
    return {"rmse": rmse, "mae": mae, "rmse_norm": rmse / span, "mae_norm": mae / span}


def constant_predictor_metrics(
    train_ratings: np.ndarray, test_ratings: np.ndarray, threshold: float = 4, span: float = 4
) -> dict:
    """Test metrics of predicting, for every test sample, the training mean rating (regression)
    and the training share of high ratings (classification; AUC is 0.5 by construction).

    >>> m = constant_predictor_metrics(np.array([5, 3, 4, 4]), np.array([5, 2]))
    >>> {k: round(v, 4) for k, v in m.items()}  # mean 4, share 0.75
    {'auc': 0.5, 'logloss': 0.837, 'rmse': 1.5811, 'mae': 1.5, 'rmse_norm': 0.3953, 'mae_norm': 0.375}
    """
    mean = float(np.mean(train_ratings))
    share = float(np.mean(train_ratings >= threshold))
    error = np.asarray(test_ratings, dtype=np.float64) - mean
    high = np.asarray(test_ratings) >= threshold
    logloss = -float(np.mean(np.where(high, np.log(share), np.log(1 - share))))
    rmse, mae = float(np.sqrt(np.mean(error**2))), float(np.mean(np.abs(error)))
    return {
        "auc": 0.5,
        "logloss": logloss,
        "rmse": rmse,
        "mae": mae,
        "rmse_norm": rmse / span,
        "mae_norm": mae / span,
    }


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC on ``n_pos`` positive and ``n_neg`` negative test samples
    (Hanley and McNeil 1982): the test set's own sampling noise, which seeds do not show.

    >>> round(hanley_mcneil_se(0.65, 81, 39), 4)
    0.0514
    """
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return float(np.sqrt(variance))


def constant_predictor_row(spec: BenchmarkSpec) -> dict:
    """The constant predictor on the suite's rows (built once; no training, no seed)."""
    from recbole_ext.config import Config
    from recbole_ext.utils import create_dataset

    config = {**spec.overrides, **ID_FEATURES, "eval_protocol": "lrrecsys"}
    train, _, test = create_dataset(Config("FM", spec.dataset, config_dict=config)).build()
    test_ratings = test.inter_feat["rating"].numpy()
    metrics = constant_predictor_metrics(train.inter_feat["rating"].numpy(), test_ratings)
    n_pos = int((test_ratings >= 4).sum())
    n_neg = len(test_ratings) - n_pos
    return {
        "test_high_low": [n_pos, n_neg],
        "auc_standard_error_at_0.6": hanley_mcneil_se(0.6, n_pos, n_neg),
        "variant": "constant",
        "label": "Constant: training mean rating / share of high ratings",
        "train_fraction": 1.0,
        "seeds": [],
        "learning_rate": {},
        "cells": {k: mean_std_cell(v, 0.0, digits=3, n=1) for k, v in metrics.items()},
        "values": metrics,
    }


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` (ddof = 1) with 3 decimals (:mod:`recbole_ext.tables`).

    >>> mean_std([0.5, 0.7, 0.6])
    '0.600 ± 0.100'
    """
    return mean_std_cell(*mean_and_std(values), digits=3)


def records(spec: BenchmarkSpec, rows: list[dict]) -> list[dict]:
    """One record per run the tables use (the harness's :func:`chosen_runs`: for a row with a
    learning-rate grid, the runs of the rate chosen on validation), with the row's variant, task,
    training share, learning rate and :func:`table_metrics`, ordered by seed."""
    kept, chosen = chosen_runs(spec, rows)
    out = []
    for row in sorted(kept, key=lambda r: r["seed"]):
        if row["model"] not in spec.models:
            continue
        variant, task, fraction = row_parts(spec, row["model"])
        model = spec.model_of(row["model"])
        out.append(
            {
                "variant": variant,
                "task": task,
                "train_fraction": fraction,
                "seed": row["seed"],
                "learning_rate": chosen.get(
                    row["model"], spec.config_of(row["model"]).get("learning_rate")
                ),
                "metrics": table_metrics(row["test_result"], task, model == "LRRecsys"),
            }
        )
    return out


def summarise(records: list[dict]) -> list[dict]:
    """One row per (variant, training share), in the variants' order and by share: mean ± std
    over seeds of each metric (its classification and regression runs side by side)."""
    rows: dict[tuple, dict] = {}
    for r in records:
        row = rows.setdefault(
            (r["variant"], r["train_fraction"]),
            {"variant": r["variant"], "train_fraction": r["train_fraction"], "values": {}},
        )
        for name, value in r["metrics"].items():
            row["values"].setdefault(name, []).append(value)
        row.setdefault("seeds", set()).add(r["seed"])
        row.setdefault("learning_rate", {})[r["task"]] = r["learning_rate"]
    order = list(dict.fromkeys(r["variant"] for r in records))
    return [
        {
            "variant": row["variant"],
            "label": LABELS[row["variant"]],
            "train_fraction": row["train_fraction"],
            "seeds": sorted(row["seeds"]),
            "learning_rate": row["learning_rate"],
            "cells": {k: mean_std(v) for k, v in row["values"].items()},
            "values": row["values"],
        }
        for _, row in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1]))
    ]


def markdown(rows: list[dict], with_fraction: bool, with_lr: bool) -> str:
    head = ["", *(["train data"] if with_fraction else []), *COLUMNS.values()]
    head += ["lr (cls / reg)"] if with_lr else []
    table = []
    for row in rows:
        cells = [row["label"]]
        if with_fraction:
            cells.append(f"{row['train_fraction']:.0%}")
        cells += [row["cells"].get(key, "") for key in COLUMNS]
        if with_lr:
            lrs = row["learning_rate"]
            cells.append(" / ".join(f"{lrs[t]:g}" if t in lrs else "-" for t in TASKS))
        table.append(cells)
    return markdown_table(table, head) + "\n"


def pivot_markdown(rows: list[dict], metric: str) -> str:
    """One metric by variant (rows) and training share (columns): the compact Table 3."""
    fractions = sorted({r["train_fraction"] for r in rows})
    table = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = {
            r["train_fraction"]: r["cells"].get(metric, "") for r in rows if r["variant"] == variant
        }
        table.append([LABELS[variant], *(cells.get(f, "") for f in fractions)])
    return markdown_table(table, [COLUMNS[metric], *(f"{f:.0%} train" for f in fractions)]) + "\n"


def render(table: str, rows: list[dict], with_lr: bool) -> str:
    """``<table>.md``: the rows (Table 3: its AUC and RMSE pivots first), Table 2's test-set note."""
    text = markdown(rows, table == "efficiency", with_lr)
    if table == "efficiency":
        text = "\n".join(pivot_markdown(rows, m) for m in ("auc", "rmse")) + "\n" + text
    if table == "table2":
        n_pos, n_neg = rows[-1]["test_high_low"]
        text += (
            f"\nTest set: {n_pos} high / {n_neg} low ratings. Hanley-McNeil standard error of an "
            f"AUC of 0.6 on it: {rows[-1]['auc_standard_error_at_0.6']:.3f}.\n"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=TABLES)
    parser.add_argument(
        "--runs", type=Path, default=None, help="the suite's harness output (<output>/<table>)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where <table>.md/json go")
    parser.add_argument(
        "--from_json",
        action="store_true",
        help="rewrite <table>.md from <output>/<table>.json (cells recomputed from their seeds)",
    )
    args = parser.parse_args()
    spec = suite_of(args.table)
    with_lr = any(spec.learning_rates_of(m) != [None] for m in spec.models)
    if args.from_json:
        rows = json.loads((args.output / f"{args.table}.json").read_text())["rows"]
        for row in rows:
            if row["variant"] != "constant":
                row["cells"] = {k: mean_std(v) for k, v in row["values"].items()}
    else:
        runs = args.runs or args.output / args.table
        results = read_rows(runs / "results.jsonl")
        if not results:
            raise SystemExit(f"no runs in {runs}/results.jsonl: run step 1 of this script's help")
        rows = summarise(records(spec, results))
        if args.table == "table2":
            rows.append(constant_predictor_row(spec))
        suite = f"properties/benchmark/lrrecsys_{args.table}.yaml"
        (args.output / f"{args.table}.json").write_text(
            json.dumps({"suite": suite, "config": spec.overrides, "rows": rows}, indent=2) + "\n"
        )
    text = render(args.table, rows, with_lr)
    (args.output / f"{args.table}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
