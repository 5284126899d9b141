"""Side-by-side benchmark: several models × seeds on identical splits and candidate lists.

    python run_recbole_ext.py --benchmark --models=SASRec,GRU4Rec,BERT4Rec --dataset=ml-100k \
        --seeds=3 --output=DIR [--suite=properties/benchmark/NAME.yaml] [--key=value ...]

For each seed every model trains on the same split (same seed) and is evaluated on the same
sampled candidates (``eval_candidates_file`` = ``DIR/candidates/seed<seed>.npz``, drawn once).
Each (model, seed) runs in a fresh process (isolated crashes, true peak memory), ``workers`` of
them at a time (``--workers=N``: on a GPU or a many-core machine), and its row is appended to
``DIR/results.jsonl`` as soon as it finishes, so rerunning the command resumes.
Writes ``table.md`` (mean ± std, best in bold, improvement of our models over the best baseline
with paired t-test stars on per-user NDCG@10), ``table.csv`` and ``<headline>.png``.

A suite's ``models`` may also list **variants** (ablation rows), each a named model with its own
config on top of the suite's::

    models:
      - SASRec
      - {name: "AutoDisenSeq (2) fixed arch", model: AutoDisenSeq, config: {arch_search: False}}
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import resource
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path

import numpy as np
import yaml

from recbole_ext.metrics import paired_t_test, relative_improvement, significance_stars

SMALLER_IS_BETTER = {"logloss", "mae", "rmse"}
PER_USER_KEY = "test_per_user_ndcg@10"


@dataclass
class BenchmarkSpec:
    """What to compare; a suite yaml under ``properties/benchmark/`` holds the same fields."""

    models: list[str] = field(metadata={"help": "model names, ours or RecBole's"})
    dataset: str = field(default="ml-100k", metadata={"help": "dataset name"})
    seeds: list[int] = field(default_factory=lambda: [2020, 2021, 2022])
    output: Path = field(default=Path("benchmark"), metadata={"help": "output directory"})
    config_files: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict, metadata={"help": "config overrides"})
    ours: list[str] | None = field(
        default=None, metadata={"help": "models to compare against the best baseline"}
    )
    headline: str = field(default="ndcg@10", metadata={"help": "metric of the bar chart"})
    variants: dict[str, dict] = field(
        default_factory=dict,
        metadata={"help": "row name → {model, config}: a model run with its own overrides"},
    )
    workers: int = field(default=1, metadata={"help": "(model, seed) runs at a time"})

    def __post_init__(self):
        if not self.models:
            raise ValueError("benchmark: no models; pass --models=A,B or a suite with `models:`")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"benchmark: a model is listed twice in {self.models}")
        if not self.seeds:
            raise ValueError("benchmark: --seeds must be a count >= 1 or a list of seeds")
        if self.workers < 1:
            raise ValueError(f"benchmark: --workers={self.workers} must be at least 1")
        for name, variant in self.variants.items():
            unknown = set(variant) - {"model", "config"}
            if unknown or "model" not in variant:
                raise ValueError(
                    f"benchmark: variant {name!r} needs `model:` and may have `config:` "
                    f"(got keys {sorted(variant)})"
                )
        self.output = Path(self.output)

    def model_of(self, name: str) -> str:
        """The model class a row runs (a variant's ``model``, else the name itself)."""
        return self.variants.get(name, {}).get("model", name)

    @classmethod
    def from_suite(cls, path, **cli) -> BenchmarkSpec:
        """A suite yaml (``models``, ``dataset``, ``seeds``, ``config``...) with CLI values on top."""
        suite = yaml.safe_load(Path(path).read_text()) or {}
        known = {"models", "dataset", "seeds", "config", "ours", "headline", "workers"}
        unknown = set(suite) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        names, variants = [], {}
        for entry in suite.get("models", []):
            if isinstance(entry, str):
                names.append(entry)
                continue
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError(
                    f"{path}: a `models` entry is a model name or "
                    f"{{name: ..., model: ..., config: {{...}}}}, got {entry!r}"
                )
            names.append(entry["name"])
            variants[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
        values = {
            "models": names,
            "variants": variants,
            "workers": suite.get("workers", 1),
            "dataset": suite.get("dataset", "ml-100k"),
            "seeds": expand_seeds(suite.get("seeds", 3)),
            "overrides": suite.get("config", {}),
            "ours": suite.get("ours"),
            "headline": suite.get("headline", "ndcg@10"),
        }
        for key, value in cli.items():
            if value is None:
                continue
            values[key] = {**values["overrides"], **value} if key == "overrides" else value
        return cls(**values)


MAX_SEED_COUNT = 100  # a single number above this is a seed, not a count


def expand_seeds(seeds, first: int = 2020) -> list[int]:
    """``3`` → ``[2020, 2021, 2022]`` (a count); ``2021`` → ``[2021]`` (a single number above
    :data:`MAX_SEED_COUNT` is one seed); a list, or ``"1,4"``, is kept.

    >>> expand_seeds(2), expand_seeds([7, 9]), expand_seeds("1,4"), expand_seeds("2021")
    ([2020, 2021], [7, 9], [1, 4], [2021])
    """
    if isinstance(seeds, str):
        seeds = [int(s) for s in seeds.split(",") if s.strip()] if "," in seeds else int(seeds)
    if isinstance(seeds, int):
        return [seeds] if seeds > MAX_SEED_COUNT else [first + i for i in range(seeds)]
    return [int(s) for s in seeds]


def _run_one(spec: BenchmarkSpec, model: str, seed: int) -> dict:
    """One (model or variant, seed) training run; executed in a fresh process."""
    from recbole_ext.quick_start import run

    overrides = {
        **spec.overrides,
        **spec.variants.get(model, {}).get("config", {}),
        "seed": seed,
        "eval_candidates_file": str(spec.output / "candidates" / f"seed{seed}.npz"),
        "checkpoint_dir": str(spec.output / "saved"),
    }
    result = run(spec.model_of(model), spec.dataset, spec.config_files or None, overrides)
    result.pop("config")
    result["model"] = model  # the row's name (a variant's, for ablations)
    result["seed"] = seed
    result["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _run_isolated(spec, model, seed):
    try:
        return _run_one(spec, model, seed)
    except Exception as err:  # reported in errors.jsonl, never stops the benchmark
        return {"model": model, "seed": seed, "error": repr(err), "trace": traceback.format_exc()}


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a row cut by a kill: it will be rerun
                continue
    return rows


def run_benchmark(spec: BenchmarkSpec) -> Path:
    """Run what is missing from ``spec.output/results.jsonl``, then write the tables."""
    logger = getLogger()
    spec.output.mkdir(parents=True, exist_ok=True)
    results_file = spec.output / "results.jsonl"
    done = {(r["model"], r["seed"]) for r in read_rows(results_file)}
    todo = [(m, s) for s in spec.seeds for m in spec.models if (m, s) not in done]
    logger.info(f"benchmark: {len(done)} runs done, {len(todo)} to go, {spec.workers} at a time")
    context = multiprocessing.get_context("spawn")
    # max_tasks_per_child=1: every run gets a fresh process; rows are written here, by one writer
    with ProcessPoolExecutor(spec.workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_run_isolated, spec, m, s): (m, s) for m, s in todo}
        for index, future in enumerate(as_completed(futures), 1):
            model, seed = futures[future]
            row = future.result()
            target = spec.output / ("errors.jsonl" if "error" in row else "results.jsonl")
            with target.open("a") as f:
                f.write(json.dumps(row) + "\n")
            status = f"failed: {row['error']} (see {target})" if "error" in row else "done"
            print(f"[{index}/{len(todo)}] {model} seed={seed} {status}", flush=True)
    write_tables(spec, read_rows(results_file))
    return spec.output


def smaller_is_better(metric: str) -> bool:
    """LogLoss, MAE, RMSE, also under a prefix (ExpCTR's ``llm_logloss``); ranking metrics not.

    >>> [smaller_is_better(m) for m in ("logloss", "llm_rmse", "ndcg@10", "icl_auc")]
    [True, True, False, False]
    """
    name = metric.split("@")[0]
    return name in SMALLER_IS_BETTER or name.rsplit("_", 1)[-1] in SMALLER_IS_BETTER


def candidates_note(rows: list[dict]) -> str:
    """How the rows were evaluated: on one sampled candidate list per seed (equal
    ``eval_candidates`` digests), or without sampled candidates (full ranking, labelled CTR rows).

    >>> same = {"seed": 1, "eval_candidates": "ab"}
    >>> candidates_note([same, same])
    'all models ranked the same candidate lists per seed.'
    >>> candidates_note([{"seed": 1, "eval_candidates": None}])
    'no sampled candidates (full ranking or labelled test rows).'
    """
    digests: dict[int, set] = {}
    for row in rows:
        digests.setdefault(row["seed"], set()).add(row.get("eval_candidates"))
    if all(None not in d and len(d) == 1 for d in digests.values()):
        return "all models ranked the same candidate lists per seed."
    if all(d == {None} for d in digests.values()):
        return "no sampled candidates (full ranking or labelled test rows)."
    return "candidate lists differ between rows of a seed (see `eval_candidates` in results.jsonl)."


def our_models(spec: BenchmarkSpec, models: list[str]) -> list[str]:
    from recbole_ext.utils import get_model

    return [m for m in models if get_model(spec.model_of(m)).__module__.startswith("recbole_ext.")]


def summarise(rows: list[dict], models: list[str]) -> dict:
    """``{model: {metric: (mean, std, n)}}`` over seeds, plus train seconds, memory, parameters."""
    summary = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        if not mine:
            continue
        values: dict[str, list[float]] = {}
        for r in mine:
            for metric, value in r["test_result"].items():
                values.setdefault(metric, []).append(value)
            for extra in ("train_seconds", "peak_memory_mib", "num_parameters"):
                values.setdefault(extra, []).append(r[extra])
        summary[model] = {
            k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in values.items()
        }
    return summary


def shared_seeds(rows: list[dict], model: str, other: str) -> list[int]:
    """Seeds that have a row of both models, in order.

    >>> shared_seeds([{"model": "a", "seed": 2}, {"model": "a", "seed": 1},
    ...               {"model": "b", "seed": 2}], "a", "b")
    [2]
    """
    seeds = {m: {r["seed"] for r in rows if r["model"] == m} for m in (model, other)}
    return sorted(seeds[model] & seeds[other])


def paired_users(rows: list[dict], model: str, other: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-user NDCG@10 of two models, concatenated over the seeds both have."""
    by_seed = {(r["model"], r["seed"]): r.get(PER_USER_KEY) for r in rows}
    ours, theirs = [], []
    for seed in shared_seeds(rows, model, other):
        a, b = by_seed[(model, seed)], by_seed[(other, seed)]
        if a is not None and b is not None:
            ours.extend(a)
            theirs.extend(b)
    return np.array(ours), np.array(theirs)


def common_seed_means(rows: list[dict], model: str, other: str, metric: str) -> tuple[float, float]:
    """Test ``metric`` of two models, each averaged over the seeds that both have (so a resumed,
    partial benchmark never compares a 1-seed row with a 3-seed mean).

    >>> rows = [{"model": "a", "seed": s, "test_result": {"m": v}} for s, v in ((1, 1.0), (2, 3.0))]
    >>> rows.append({"model": "b", "seed": 2, "test_result": {"m": 2.0}})
    >>> common_seed_means(rows, "a", "b", "m")
    (3.0, 2.0)
    """
    seeds = shared_seeds(rows, model, other)
    if not seeds:
        return math.nan, math.nan
    values = {(r["model"], r["seed"]): r["test_result"][metric] for r in rows}
    return (
        float(np.mean([values[(model, s)] for s in seeds])),
        float(np.mean([values[(other, s)] for s in seeds])),
    )


def write_tables(spec: BenchmarkSpec, rows: list[dict]) -> None:
    models = [m for m in spec.models if any(r["model"] == m for r in rows)]
    summary = summarise(rows, models)
    if not summary:
        return
    metrics = list(next(iter(summary.values())))
    metrics = [
        m for m in metrics if m not in ("train_seconds", "peak_memory_mib", "num_parameters")
    ]
    ours = spec.ours if spec.ours is not None else our_models(spec, models)
    baselines = [m for m in models if m not in ours]

    def better(metric):
        return min if smaller_is_better(metric) else max

    best = {m: better(m)(summary, key=lambda model: summary[model][m][0]) for m in metrics}
    head = spec.headline if spec.headline in metrics else metrics[0]
    best_baseline = (
        better(head)(baselines, key=lambda b: summary[b][head][0]) if baselines else None
    )

    lines = [
        f"Dataset `{spec.dataset}`, seeds {spec.seeds}; mean ± std over seeds of the test metrics;",
        f"best in **bold**; {candidates_note(rows)}",
        "",
        "| model | " + " | ".join(metrics) + " | train s | peak MiB | params |",
        "|---" * (len(metrics) + 4) + "|",
    ]
    for model in models:
        cells = []
        for metric in metrics:
            mean, std, _ = summary[model][metric]
            text = f"{mean:.4f} ± {std:.4f}"
            cells.append(f"**{text}**" if best[metric] == model else text)
        s = summary[model]
        lines.append(
            f"| {model} | " + " | ".join(cells) + f" | {s['train_seconds'][0]:.1f} | "
            f"{s['peak_memory_mib'][0]:.0f} | {int(s['num_parameters'][0])} |"
        )
    partial = {
        model: sorted({r["seed"] for r in rows if r["model"] == model})
        for model in models
        if summary[model][head][2] < len(spec.seeds)
    }
    if partial:
        lines += [
            "",
            "Rows with fewer seeds (± 0 means one seed): "
            + "; ".join(f"{m}: seeds {', '.join(map(str, s))}" for m, s in partial.items())
            + ".",
        ]
    if best_baseline and ours:
        lines += [
            "",
            f"Improvement over the best baseline ({best_baseline}, by {head}), on the seeds both "
            "rows have; stars: paired t-test on per-user NDCG@10 pooled over those seeds "
            "(* p<0.05, ** p<0.01, *** p<0.001).",
            "",
            "| model | " + " | ".join(metrics) + " | p-value |",
            "|---" * (len(metrics) + 2) + "|",
        ]
        for model in ours:
            if model not in summary:
                continue
            a, b = paired_users(rows, model, best_baseline)
            p_value = paired_t_test(a, b) if len(a) else math.nan
            stars = significance_stars(p_value)
            cells = []
            for metric in metrics:
                mine, theirs = common_seed_means(rows, model, best_baseline, metric)
                gain = relative_improvement(mine, theirs, better(metric) is max)
                cells.append(f"{gain:+.2f}%" + (stars if metric == "ndcg@10" else ""))
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {p_value:.3g} |")
    (spec.output / "table.md").write_text("\n".join(lines) + "\n")

    with (spec.output / "table.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "metric", "mean", "std", "n_seeds"])
        for model in models:
            for metric, (mean, std, n) in summary[model].items():
                writer.writerow([model, metric, mean, std, n])
    plot_headline(spec.output / f"{head.replace('@', '_at_')}.png", summary, models, head)


def plot_headline(path: Path, summary: dict, models: list[str], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [summary[m][metric][0] for m in models]
    stds = [summary[m][metric][1] for m in models]
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 2, 3.5))
    ax.bar(models, means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{metric}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
