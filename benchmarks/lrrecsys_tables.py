"""LR-Recsys result tables on the documented ml-100k preset, every cell a mean ± std over seeds.

    # Table 2: LRRecsys vs RecBole's DeepFM, DIN, FM, xDeepFM, AutoInt, WideDeep, same rows;
    # every model picks its learning rate from {0.01, 0.001} on validation
    python benchmarks/lrrecsys_tables.py table2 --seeds=1,2,3
    # Tables 4-6 / C.5: free vectors, raw sentence embeddings, positive only, profiles, summary
    python benchmarks/lrrecsys_tables.py ablation --seeds=1,2,3
    # Table 3: learning efficiency (share of the training samples kept, same test set)
    python benchmarks/lrrecsys_tables.py efficiency --seeds=1,2,3 [--fractions=0.12,0.25,0.5,1]
        [--variants=lrrecsys,free,FM] [--tasks=classification] [--learning_rates=0.01,0.001]
        [--key=value ...]  # config overrides

Preset (``PRESET``): 40 users drawn with ``lrrecsys_subset_seed=2020``, each user's earliest 20
interactions -> 760 samples with 5-item histories, split per user in time 600 / 40 / 120
(train / valid / test) by ``properties/protocol/lrrecsys.yaml``; every model, LRRecsys and the
RecBole baselines alike, is built on that protocol (``dataset_class: LRRecsysDataset``), so all see
the same rows (``tests/test_lrrecsys_baselines.py``). The baselines get the inputs of LR-Recsys's
DNN without the explanations: user id, item id, the 5-item history and hour / weekday.

Each run is written to ``<output>/runs/<variant>__<task>[__frac<f>]__seed<k>.json`` and skipped
when that file exists (a rerun resumes); a table is written to ``<output>/<table>.json`` and
``<table>.md``. Explanations are read from the response store (``llm_store_path``); with
``lrrecsys_generate_missing=False`` (set here unless ``--generate``) a missing one is an error
instead of hours of LLM calls.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from recbole_ext.quick_start import run

STORE = "benchmarks/results/lrrecsys/llm_store.sqlite"
PRESET = {
    "lrrecsys_max_users": 40,
    "lrrecsys_max_user_interactions": 20,
    "lrrecsys_use_profiles": False,
    "llm_store_path": STORE,
    "show_progress": False,
}
RATING_SPAN = 4.0  # lrrecsys_rating_range [1, 5]
TASKS = {
    "classification": {},
    "regression": {
        "lrrecsys_task": "regression",
        "metrics": ["RMSE", "MAE"],
        "valid_metric": "RMSE",
    },
}
# Baselines: interactions only (no user / item side features): ids, item history, hour, weekday.
ID_FEATURES = {"load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}}
BASELINES = ["DeepFM", "DIN", "FM", "xDeepFM", "AutoInt", "WideDeep"]
# variant id -> (table label, model, overrides)
VARIANTS = {
    "lrrecsys": ("LR-Recsys (AE explanations, no profiles)", "LRRecsys", {}),
    **{name: (f"{name} (RecBole)", name, ID_FEATURES) for name in BASELINES},
    "free": (
        "Ablation 1: free learnable vectors",
        "LRRecsys",
        {"lrrecsys_explanation_source": "free"},
    ),
    "sentence_encoder": (
        "Ablation 2: raw MiniLM embeddings, no AE",
        "LRRecsys",
        {"lrrecsys_explanation_source": "sentence_encoder"},
    ),
    "positive_only": ("Positive explanations only", "LRRecsys", {"lrrecsys_use_negative": False}),
    "profiles": ("With CoT profile augmentation", "LRRecsys", {"lrrecsys_use_profiles": True}),
    "summary": (
        "History summarisation (C.2.4)",
        "LRRecsys",
        {"lrrecsys_explanation_mode": "summary"},
    ),
}
TABLES = {
    "table2": ["lrrecsys", *BASELINES],
    "ablation": ["lrrecsys", "free", "sentence_encoder", "positive_only", "profiles", "summary"],
    "efficiency": ["lrrecsys", "free", *BASELINES],
}
# Table 2 gives every model the same small grid, chosen on validation; the ablations and Table 3
# keep the paper's rate (C.1) so that only the named factor changes.
LEARNING_RATES = {"table2": "0.01,0.001", "ablation": "0.01", "efficiency": "0.01"}
COLUMNS = {
    "auc": "AUC ↑",
    "logloss": "LogLoss ↓",
    "rmse": "RMSE (1-5) ↓",
    "mae": "MAE (1-5) ↓",
    "rmse_norm": "RMSE (norm.) ↓",
    "mae_norm": "MAE (norm.) ↓",
}


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


def constant_predictor_row(base: dict, cmd_args: list[str]) -> dict:
    """The constant predictor on the preset's rows (built once; no training, no seed)."""
    from recbole_ext.config import Config
    from recbole_ext.utils import create_dataset

    config = Config(
        "FM",
        "ml-100k",
        config_dict={**base, **ID_FEATURES, "eval_protocol": "lrrecsys"},
        cmd_args=cmd_args,
    )
    train, _, test = create_dataset(config).build()
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
        "cells": {k: f"{v:.3f}" for k, v in metrics.items()},
        "values": metrics,
    }


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` (ddof = 1) with 3 decimals.

    >>> mean_std([0.5, 0.7, 0.6])
    '0.600 ± 0.100'
    """
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):.3f} ± {std:.3f}"


DEFAULT_LR = 0.01  # properties/protocol/lrrecsys.yaml (Appendix C.1)
VALID_METRIC = {"classification": ("auc", max), "regression": ("rmse", min)}


def run_id(variant: str, task: str, seed: int, fraction: float, lr: float = DEFAULT_LR) -> str:
    """File stem of one run.

    >>> run_id("FM", "regression", 2, 0.25, 0.001)
    'FM__regression__frac0.25__lr0.001__seed2'
    """
    frac = "" if fraction == 1.0 else f"__frac{fraction:g}"
    rate = "" if lr == DEFAULT_LR else f"__lr{lr:g}"
    return f"{variant}__{task}{frac}{rate}__seed{seed}"


def config_for(
    variant: str, task: str, seed: int, fraction: float, base: dict, lr: float = DEFAULT_LR
) -> tuple[str, dict]:
    _, model, overrides = VARIANTS[variant]
    config = {**base, **TASKS[task], **overrides, "seed": seed, "learning_rate": lr}
    if model != "LRRecsys":
        config["eval_protocol"] = "lrrecsys"  # LRRecsys's yaml sets it
    elif task == "regression":
        config["LABEL_FIELD"] = "rating"  # LRRecsys's regression head outputs the rating
    if fraction != 1.0:
        config["lrrecsys_train_fraction"] = fraction
    return model, config


def run_one(variant, task, seed, fraction, lr, base, runs_dir: Path, cmd_args: list[str]) -> dict:
    path = runs_dir / f"{run_id(variant, task, seed, fraction, lr)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, config = config_for(variant, task, seed, fraction, base, lr)
    start = time.perf_counter()
    result = run(model, "ml-100k", config_dict=config, cmd_args=cmd_args)
    record = {
        "variant": variant,
        "model": model,
        "task": task,
        "seed": seed,
        "train_fraction": fraction,
        "learning_rate": result["config"]["learning_rate"],
        "metrics": table_metrics(result["test_result"], task, model == "LRRecsys"),
        "test_result": result["test_result"],
        "valid_result": result["valid_result"],
        "seconds": round(time.perf_counter() - start, 1),
        "num_parameters": result["num_parameters"],
        "llm_usage": result["llm_usage"],
        "model_file": result["model_file"],
        "overrides": config,
        "cmd_args": cmd_args,
    }
    runs_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("variant", "task", "seed", "metrics")}), flush=True)
    return record


def select_by_validation(records: list[dict]) -> list[dict]:
    """Per (variant, train fraction, task): the runs of the learning rate whose mean validation
    score over seeds is best (AUC highest, RMSE lowest); test metrics play no part."""
    groups: dict[tuple, dict[float, list[dict]]] = {}
    for r in records:
        key = (r["variant"], r["train_fraction"], r["task"])
        groups.setdefault(key, {}).setdefault(r["learning_rate"], []).append(r)
    chosen = []
    for (_, _, task), by_lr in groups.items():
        metric, best = VALID_METRIC[task]
        lr = best(by_lr, key=lambda k: np.mean([r["valid_result"][metric] for r in by_lr[k]]))
        chosen += by_lr[lr]
    return chosen


def summarise(records: list[dict]) -> list[dict]:
    """One row per (variant, fraction): mean ± std over seeds of each metric, at the learning
    rate chosen on validation for each task."""
    rows: dict[tuple, dict] = {}
    for r in select_by_validation(records):
        row = rows.setdefault(
            (r["variant"], r["train_fraction"]),
            {"variant": r["variant"], "train_fraction": r["train_fraction"], "values": {}},
        )
        for name, value in r["metrics"].items():
            row["values"].setdefault(name, []).append(value)
        row.setdefault("seeds", set()).add(r["seed"])
        row.setdefault("learning_rate", {})[r["task"]] = r["learning_rate"]
    return [
        {
            "variant": row["variant"],
            "label": VARIANTS[row["variant"]][0],
            "train_fraction": row["train_fraction"],
            "seeds": sorted(row["seeds"]),
            "learning_rate": row["learning_rate"],
            "cells": {k: mean_std(v) for k, v in row["values"].items()},
            "values": row["values"],
        }
        for row in rows.values()
    ]


def markdown(rows: list[dict], with_fraction: bool, with_lr: bool) -> str:
    head = ["", *(["train data"] if with_fraction else []), *COLUMNS.values()]
    head += ["lr (cls / reg)"] if with_lr else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["label"]]
        if with_fraction:
            cells.append(f"{row['train_fraction']:.0%}")
        cells += [row["cells"].get(key, "") for key in COLUMNS]
        if with_lr:
            lrs = row["learning_rate"]
            cells.append(" / ".join(f"{lrs[t]:g}" if t in lrs else "-" for t in TASKS))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pivot_markdown(rows: list[dict], metric: str) -> str:
    """One metric by variant (rows) and training share (columns): the compact Table 3."""
    fractions = sorted({r["train_fraction"] for r in rows})
    lines = [
        "| " + " | ".join([COLUMNS[metric], *(f"{f:.0%} train" for f in fractions)]) + " |",
        "|" + "---|" * (len(fractions) + 1),
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = {
            r["train_fraction"]: r["cells"].get(metric, "") for r in rows if r["variant"] == variant
        }
        label = VARIANTS[variant][0]
        lines.append("| " + " | ".join([label, *(cells.get(f, "") for f in fractions)]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--output", default="benchmarks/results/lrrecsys")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds")
    parser.add_argument("--variants", default=None, help=f"subset of {sorted(VARIANTS)}")
    parser.add_argument("--tasks", default="classification,regression")
    parser.add_argument("--fractions", default="0.12,0.25,0.5,1", help="efficiency table only")
    parser.add_argument(
        "--learning_rates",
        default=None,
        help="comma-separated grid; each (variant, task) reports the rate best on validation "
        f"(default {LEARNING_RATES})",
    )
    parser.add_argument("--generate", action="store_true", help="let runs call the LLM")
    args, cmd_args = parser.parse_known_args()
    torch.set_num_threads(1)
    out = Path(args.output)
    base = {
        **PRESET,
        "checkpoint_dir": str(out / "saved"),
        "lrrecsys_generate_missing": args.generate,
    }
    variants = args.variants.split(",") if args.variants else TABLES[args.table]
    fractions = (
        [float(f) for f in args.fractions.split(",")] if args.table == "efficiency" else [1.0]
    )
    rates = [float(r) for r in (args.learning_rates or LEARNING_RATES[args.table]).split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    records = []
    for task in args.tasks.split(","):
        for variant in variants:
            for fraction, lr, seed in itertools.product(fractions, rates, seeds):
                records.append(
                    run_one(variant, task, seed, fraction, lr, base, out / "runs", cmd_args)
                )
    rows = summarise(records)
    if args.table == "table2":
        rows.append(constant_predictor_row(base, cmd_args))
    with_fraction, with_lr = args.table == "efficiency", len(rates) > 1
    (out / f"{args.table}.json").write_text(
        json.dumps({"preset": base, "cmd_args": cmd_args, "rows": rows}, indent=2) + "\n"
    )
    table = markdown(rows, with_fraction, with_lr)
    if with_fraction:
        table = "\n".join(pivot_markdown(rows, m) for m in ("auc", "rmse")) + "\n" + table
    if args.table == "table2":
        n_pos, n_neg = rows[-1]["test_high_low"]
        table += (
            f"\nTest set: {n_pos} high / {n_neg} low ratings. Hanley-McNeil standard error of an "
            f"AUC of 0.6 on it: {rows[-1]['auc_standard_error_at_0.6']:.3f}.\n"
        )
    (out / f"{args.table}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
