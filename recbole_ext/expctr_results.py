"""ExpCTR's results from stored runs: CTR metrics, Fig. 3 trajectories, Fig. 4 sensitivity records.

Yu, Zhang, Chen, "Explainable CTR Prediction via LLM Reasoning", WSDM 2025. Pure functions over
what a run leaves (:class:`recbole_ext.expctr_run.StoredRun`: store records and the folder's
``generator.pt``) and over the harness's result rows (``results.jsonl``: ``model``, ``seed``,
``test_result``, ``model_file``); ``benchmarks/expctr_report.py`` prints and plots them.

- :func:`ctr_metrics` -- AUC, LogLoss, MAE, RMSE as RecBole computes them (ExpCTR-LLM, ICL);
- :func:`same_metrics` -- equality of reported metrics (mean ± std over seeds and the markdown
  tables: :mod:`recbole_ext.tables`);
- Table 1: :func:`table1_rows`, :func:`table1_summary`;
- Fig. 3: :func:`reward_trajectory` (a run's PPO steps from its stage records; the committed
  ``reward_trajectory.csv`` regenerates from the store), :func:`write_reward_trajectory` (the
  trainer's per-run file), :func:`trajectory_summary`, :func:`trajectory_table`,
  :func:`plot_reward_trajectory`;
- Fig. 4 (β, δ): :func:`sensitivity_rows` (with :func:`run_rewards`, :func:`same_explanations`,
  :func:`adapter_change`), :func:`verified_resamples` and :func:`shared_seed_columns` (shared
  sampling seeds), :func:`sensitivity_summary`, :func:`sensitivity_table`,
  :func:`sensitivity_axes`, :func:`plot_sensitivity`.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    log_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

from recbole_ext.expctr_run import ExpCTRRun, StoredRun, is_ppo_stage, stage_names
from recbole_ext.tables import markdown_table, mean_std, mean_std_cell

METRICS = ("auc", "logloss", "mae", "rmse")
# the columns of a PPO step (ExpCTRTrainer's trajectory rows, cleanrl's statistics of ppo_step)
TRAJECTORY_FIELDS = ("stage", "reward", "epoch", "step", "raw_reward", "score", "kl", "pg_loss")
TRAJECTORY_FIELDS += ("vf_loss", "clipfrac", "approx_kl", "response_tokens")


def ctr_metrics(labels, scores) -> dict[str, float]:
    """AUC, LogLoss, MAE, RMSE as RecBole computes them (scikit-learn; scores clipped to
    [1e-15, 1 - 1e-15] for LogLoss, as RecBole does; AUC is NaN when one class is missing).

    >>> ctr_metrics([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6])["auc"]
    0.75
    """
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    auc = float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")
    return {
        "auc": auc,
        "logloss": float(log_loss(y, np.clip(s, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "mae": float(mean_absolute_error(y, s)),
        "rmse": float(root_mean_squared_error(y, s)),
    }


def mean(values: Sequence[float]) -> float:
    """Mean, NaN for no values.

    >>> mean([1.0, 2.0]), math.isnan(mean([]))
    (1.5, True)
    """
    return float(np.mean(values)) if len(values) else math.nan


def same_metrics(a: dict[str, float], b: dict[str, float], tol: float = 1e-9) -> bool:
    """Equal keys and values within ``tol`` (NaN equals NaN).

    >>> same_metrics({"auc": float("nan"), "mae": 0.5}, {"auc": float("nan"), "mae": 0.5})
    True
    """
    return set(a) == set(b) and all(
        (a[k] != a[k] and b[k] != b[k]) or abs(a[k] - b[k]) <= tol for k in a
    )


# ---------------------------------------------------------------------------------------------
# Table 1
# ---------------------------------------------------------------------------------------------
def table1_rows(
    harness_rows: list[dict], runs: list[dict], baselines: Sequence[str]
) -> dict[str, dict[int, dict[str, float]]]:
    """``{row name: {seed: {metric: value}}}`` of Table 1 in the paper's order: the ``baselines``
    (and TALLRec) from the harness's result rows, ICL / ExpCTR-LLM / ExpCTR-Aug from the ExpCTR
    runs' results (``icl_*``, ``llm_*`` and the plain test metrics).

    >>> run = {"config": {"seed": 1}, "test_result": {f"{p}{m}": v for p, v in
    ...        (("", 0.7), ("llm_", 0.6), ("icl_", 0.5)) for m in METRICS}}
    >>> fm = {"model": "FM", "seed": 1, "test_result": dict.fromkeys(METRICS, 0.4)}
    >>> rows = table1_rows([fm], [run], ["DeepFM", "FM"])
    >>> list(rows), rows["ICL"][1]["auc"], rows["ExpCTR-Aug"][1]["rmse"]
    (['FM', 'ICL', 'ExpCTR-LLM', 'ExpCTR-Aug'], 0.5, 0.7)
    """
    table: dict[str, dict[int, dict[str, float]]] = {}
    for row in harness_rows:
        table.setdefault(row["model"], {})[row["seed"]] = {
            m: row["test_result"][m] for m in METRICS
        }
    by_prefix: dict[str, dict[int, dict[str, float]]] = {"icl_": {}, "llm_": {}, "": {}}
    for run in runs:
        seed, result = run["config"]["seed"], run["test_result"]
        for prefix, per_seed in by_prefix.items():
            per_seed[seed] = {m: result[f"{prefix}{m}"] for m in METRICS}
    ordered = {m: table[m] for m in baselines if m in table}
    ordered["ICL"] = by_prefix["icl_"]
    if "TALLRec" in table:
        ordered["TALLRec"] = table["TALLRec"]
    ordered["ExpCTR-LLM"] = by_prefix["llm_"]
    ordered["ExpCTR-Aug"] = by_prefix[""]
    return ordered


def table1_summary(rows: dict[str, dict[int, dict[str, float]]]) -> tuple[dict, dict[str, str]]:
    """``(summary, best)``: per row, ``{metric: {"mean", "std"}}`` over seeds (ddof 1) with its
    ``seeds`` and ``per_seed`` values; per metric, the row with the best mean (AUC highest,
    LogLoss / MAE / RMSE lowest)."""
    summary = {
        name: {
            m: dict(zip(("mean", "std"), mean_std([per_seed[s][m] for s in per_seed]), strict=True))
            for m in METRICS
        }
        | {"seeds": sorted(per_seed), "per_seed": per_seed}
        for name, per_seed in rows.items()
    }
    best = {
        m: (min if m != "auc" else max)(summary, key=lambda n, m=m: summary[n][m]["mean"])
        for m in METRICS
    }
    return summary, best


def verified_resamples(
    run: ExpCTRRun, samples: list, reported_llm_auc: float, seeds: list[int]
) -> dict:
    """``{"labels": [...], seed: (texts, s_LC)}``: the test explanations of ``run``'s final
    generator resampled under each of ``seeds`` (:meth:`ExpCTRRun.resample`), after checking that
    its own sampling seed reproduces its stored explanations and ``reported_llm_auc`` (so the
    restored generator is the run's). Raises ``ValueError`` naming the run otherwise."""
    generator = run.final_generator()
    labels = [s.label for s in samples]
    texts, scores = run.resample(samples, generator, run.sampling_seed(generator))
    stored = run.stored_explanations(generator)
    auc = ctr_metrics(labels, scores)["auc"]
    same_texts = texts == [stored.get(s.key) for s in samples]
    if not same_texts or not same_metrics({"auc": auc}, {"auc": reported_llm_auc}, tol=1e-6):
        raise ValueError(
            f"{run.folder}: resampling with the run's own seed gives AUC {auc} (reported "
            f"{reported_llm_auc}); same explanations as stored: {same_texts}"
        )
    return {"labels": labels} | {seed: run.resample(samples, generator, seed) for seed in seeds}


# ---------------------------------------------------------------------------------------------
# Fig. 3: reward per PPO step
# ---------------------------------------------------------------------------------------------
def reward_trajectory(run: StoredRun) -> list[dict[str, Any]]:
    """A run's PPO steps in the order they ran (stage 1, then each stage 3), from its stage
    records: one row per step with :data:`TRAJECTORY_FIELDS`."""
    stages = run.stages()
    iterations = sum(name.endswith("_stage3_ic") for name in stages)
    rows = []
    for name in stage_names(iterations, final_refit=True):
        if is_ppo_stage(name) and name in stages:
            rows += [{k: row[k] for k in TRAJECTORY_FIELDS} for row in stages[name].trajectory]
    return rows


def write_reward_trajectory(rows: list[dict[str, Any]], folder: str | os.PathLike) -> None:
    """Fig. 3 of one run: ``reward_trajectory.csv`` (a row per PPO step) and ``.png`` (mean raw LC
    and IC reward per step) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = dict.fromkeys([*TRAJECTORY_FIELDS, *(k for row in rows for k in row)])
    write_csv(folder / "reward_trajectory.csv", rows, list(fields))
    curves = {
        (reward, "run"): [float(r["raw_reward"]) for r in rows if r["reward"] == reward]
        for reward in ("lc", "ic")
    }
    plot_reward_trajectory(folder / "reward_trajectory.png", curves, mean_curve=False)


def write_csv(path: str | os.PathLike, rows: list[dict], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def plot_reward_trajectory(
    path: str | os.PathLike,
    curves: dict[tuple[str, str], list[float]],
    mean_curve: bool = True,
    step_label: str = "PPO step",
) -> None:
    """Two panels (LC, IC): one line per ``(reward, label)`` curve of mean raw reward per PPO
    step, and (``mean_curve``) their mean over the steps all curves have."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, reward in zip(axes, ("lc", "ic"), strict=True):
        mine = {label: v for (r, label), v in curves.items() if r == reward and v}
        for label, values in sorted(mine.items()):
            axis.plot(range(1, len(values) + 1), values, marker="o", alpha=0.5, label=label)
        if mean_curve and mine:
            length = min(len(v) for v in mine.values())
            average = np.mean([v[:length] for v in mine.values()], axis=0)
            axis.plot(range(1, length + 1), average, color="black", linewidth=2, label="mean")
        axis.set_title("stage 1: LC alignment" if reward == "lc" else "stage 3: IC alignment")
        axis.set_xlabel(step_label)
        axis.set_ylabel(("R_LC (Eq. 9)" if reward == "lc" else "R_IC (Eq. 13)") + ", batch mean")
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trajectory_summary(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per reward (LC, IC): PPO steps, mean raw reward, the mean over seeds of the first and the
    last step's reward, max |KL|, max approx_kl, mean clipfrac and response tokens. ``rows``:
    trajectory rows with a ``seed`` column (several runs)."""
    summary = []
    for reward in ("lc", "ic"):
        mine = [r for r in rows if r["reward"] == reward]
        column = {k: np.array([float(r[k]) for r in mine]) for k in TRAJECTORY_FIELDS[4:]}
        by_seed: dict[Any, list[float]] = {}
        for r in mine:
            by_seed.setdefault(r["seed"], []).append(float(r["raw_reward"]))
        summary.append(
            {
                "reward": reward,
                "steps": len(mine),
                "raw_reward": column["raw_reward"].mean(),
                "first": float(np.mean([v[0] for v in by_seed.values()])),
                "last": float(np.mean([v[-1] for v in by_seed.values()])),
                "max_abs_kl": np.abs(column["kl"]).max(),
                "max_approx_kl": column["approx_kl"].max(),
                "clipfrac": column["clipfrac"].mean(),
                "response_tokens": column["response_tokens"].mean(),
            }
        )
    return summary


def trajectory_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of :func:`trajectory_summary` (Fig. 3's table)."""
    header = ["reward", "PPO steps", "mean raw reward", "first step", "last step", "max abs KL"]
    header += ["max approx_kl", "clipfrac", "response tokens"]
    table = [
        [
            s["reward"].upper(),
            s["steps"],
            f"{s['raw_reward']:.4f}",
            f"{s['first']:.4f}",
            f"{s['last']:.4f}",
            f"{s['max_abs_kl']:.2e}",
            f"{s['max_approx_kl']:.2e}",
            f"{s['clipfrac']:.3f}",
            f"{s['response_tokens']:.2f}",
        ]
        for s in trajectory_summary(rows)
    ]
    return markdown_table(table, header).splitlines()


# ---------------------------------------------------------------------------------------------
# Fig. 4: β / δ sensitivity, one record per (suite row, seed)
# ---------------------------------------------------------------------------------------------
SENSITIVITY_METRICS = {  # column: (label, better)
    # what the runs scored
    "aug_auc": ("ExpCTR-Aug AUC", "↑"),
    "aug_logloss": ("ExpCTR-Aug LogLoss", "↓"),
    "llm_auc": ("ExpCTR-LLM AUC", "↑"),
    "llm_logloss": ("ExpCTR-LLM LogLoss", "↓"),
    "icl_auc": ("ICL AUC", "↑"),
    "lc_reward": ("R_LC, stage 1 mean", "↑"),
    "lc_reward_last": ("R_LC, last step", "↑"),
    "ic_reward": ("R_IC, stage 3 mean", "↑"),
    "llm_auc_shared": ("ExpCTR-LLM AUC, shared sampling seeds", "↑"),
    # how far the run's generator is from the paper point's
    "kl_last": ("KL to π_init, last step", ""),
    "lora_b_norm": ("‖B‖ of LoRA", ""),
    "lora_b_change": ("‖B − B_paper‖ / ‖B_paper‖", ""),
    "same_rollouts": ("PPO rollouts = paper's", ""),
    "same_final": ("final valid/test explanations = paper's", ""),
    "same_shared": ("test explanations = paper's, shared seeds", ""),
}
SCORE_COLUMNS = ("aug_auc", "aug_logloss", "llm_auc", "llm_logloss", "icl_auc", "lc_reward")
SCORE_COLUMNS += ("lc_reward_last", "ic_reward", "llm_auc_shared")


def sensitivity_rows(rows: list[dict], points: dict, store=None) -> list[dict]:
    """One record per (row, seed) of a sensitivity suite's ``results.jsonl``: beta, delta, the
    test metrics of ExpCTR-Aug / ExpCTR-LLM / ICL and, from ``store`` (the runs' LLM store), the
    raw LC / IC rewards, the KL at the last PPO step and how many of the run's explanations equal
    those of the paper point's run of the same seed (``points``: ``{row: (beta, delta)}``, the
    paper point under ``"paper"``)."""
    paper = {r["seed"]: r for r in rows if points[r["model"]] == points["paper"]}
    records = []
    for row in rows:
        beta, delta = points[row["model"]]
        result = row["test_result"]
        record = {"name": row["model"], "seed": row["seed"], "beta": beta, "delta": delta}
        record |= {"aug_auc": result["auc"], "aug_logloss": result["logloss"]}
        record |= {k: result.get(k, math.nan) for k in ("llm_auc", "llm_logloss", "icl_auc")}
        record |= run_rewards(store, row)
        reference = paper.get(row["seed"])
        record |= same_explanations(store, row, reference)
        record |= adapter_change(store, row, reference)
        record |= {"llm_auc_shared": math.nan, "same_shared": math.nan}  # shared_seed_columns
        record["train_seconds"] = row.get("train_seconds", math.nan)
        records.append(record)
    return records


def _stored(store, row: dict | None) -> StoredRun | None:
    return (
        None if store is None or row is None else StoredRun.of_model_file(store, row["model_file"])
    )


def run_rewards(store, row: dict) -> dict[str, float]:
    """Mean raw reward of stage 1 (LC) and of the last stage 3 (IC), the LC reward of stage 1's
    last PPO step and the KL of the run's last PPO step, from the store's stage records."""
    run = _stored(store, row)
    if run is None:
        return {k: math.nan for k in ("lc_reward", "lc_reward_last", "ic_reward", "kl_last")}
    stages = run.stages()
    lc = list(stages["stage1_lc"].trajectory) if "stage1_lc" in stages else []
    ic_names = sorted(n for n in stages if n.endswith("_stage3_ic"))
    ic = list(stages[ic_names[-1]].trajectory) if ic_names else []
    steps = lc + ic
    return {
        "lc_reward": mean([r["raw_reward"] for r in lc]),
        "lc_reward_last": lc[-1]["raw_reward"] if lc else math.nan,
        "ic_reward": mean([r["raw_reward"] for r in ic]),
        "kl_last": steps[-1]["kl"] if steps else math.nan,
    }


def same_explanations(store, row: dict, reference: dict | None) -> dict[str, float]:
    """Fractions of the run's PPO rollout explanations (every stage and epoch, per training pair)
    and of its final generator's valid/test explanations that equal ``reference``'s (1.0 for
    ``reference`` itself; NaN without a store or a reference run)."""
    mine, theirs = _stored(store, row), _stored(store, reference)
    if mine is None or theirs is None:
        return {"same_rollouts": math.nan, "same_final": math.nan}

    def texts(run: StoredRun, final: bool) -> dict:
        if final:
            generator = run.final_generator()
            return {} if generator is None else run.stored_explanations(generator)
        found = {}
        for stage, record in run.stages().items():
            for epoch in range(record.epochs or 0):
                for sample, text in run.rollout_texts(stage, epoch).items():
                    found[(stage, epoch, sample)] = text
        return found

    fractions = {}
    for column, final in (("same_rollouts", False), ("same_final", True)):
        a, b = texts(mine, final), texts(theirs, final)
        shared = set(a) & set(b)
        fractions[column] = sum(a[k] == b[k] for k in shared) / len(shared) if shared else math.nan
    return fractions


def adapter_change(store, row: dict, reference: dict | None) -> dict[str, float]:
    """``‖B‖`` of the run's final LoRA ``B`` matrices (zero at π_init, so this is how far PPO moved
    them) and ``‖B − B_ref‖ / ‖B_ref‖`` against ``reference``'s run, from the ``generator.pt``
    of each run's last PPO stage in its folder; NaN where a file is missing."""
    from recbole_ext.rl.policy import saved_adapters

    def lora_b(run: StoredRun | None) -> dict | None:
        path = None if run is None else run.generator_file(run.final_generator() or "-")
        if path is None or not path.is_file():
            return None
        return {k: v.double() for k, v in saved_adapters(path).items() if "lora_B" in k}

    def norm(tensors) -> float:
        return math.sqrt(sum(float((t**2).sum()) for t in tensors))

    mine, theirs = lora_b(_stored(store, row)), lora_b(_stored(store, reference))
    result = {"lora_b_norm": math.nan if mine is None else norm(mine.values())}
    if mine is None or theirs is None or not norm(theirs.values()):
        return result | {"lora_b_change": math.nan}
    change = norm(mine[k] - theirs[k] for k in theirs) / norm(theirs.values())
    return result | {"lora_b_change": change}


def shared_seed_columns(resampled: dict, reference: dict | None, seeds: list[int]) -> dict:
    """``llm_auc_seed<s>``: test AUC of the LC scores of one run's explanations resampled with
    seed ``s``; ``llm_auc_shared``: their mean over ``seeds``; ``same_shared``: the share of the
    explanations equal to ``reference``'s (same seed, same pair). ``resampled``: ``{"labels":
    [...], seed: (texts, scores)}`` (:meth:`recbole_ext.expctr_run.ExpCTRRun.resample`).

    >>> run = {"labels": [1, 0], 7: (["a", "b"], [0.9, 0.1]), 8: (["c", "d"], [0.2, 0.3])}
    >>> other = {"labels": [1, 0], 7: (["a", "x"], [0.9, 0.5]), 8: (["c", "d"], [0.2, 0.3])}
    >>> shared_seed_columns(run, other, [7, 8])
    {'llm_auc_seed7': 1.0, 'llm_auc_seed8': 0.0, 'llm_auc_shared': 0.5, 'same_shared': 0.75}
    """
    columns = {
        f"llm_auc_seed{s}": ctr_metrics(resampled["labels"], resampled[s][1])["auc"] for s in seeds
    }
    columns["llm_auc_shared"] = mean([columns[f"llm_auc_seed{s}"] for s in seeds])
    if reference is None:
        return columns | {"same_shared": math.nan}
    pairs = [(a, b) for s in seeds for a, b in zip(resampled[s][0], reference[s][0], strict=True)]
    return columns | {"same_shared": sum(a == b for a, b in pairs) / len(pairs)}


def sensitivity_summary(records: list[dict]) -> list[dict]:
    """Mean and std (ddof 1) over seeds of every column, per row of the suite (its order)."""
    summary = []
    for name in dict.fromkeys(r["name"] for r in records):
        mine = [r for r in records if r["name"] == name]
        entry = {"name": name, "beta": mine[0]["beta"], "delta": mine[0]["delta"]}
        entry["seeds"] = sorted(r["seed"] for r in mine)
        for column in SENSITIVITY_METRICS:
            entry[column] = mean_std([r[column] for r in mine])
        summary.append(entry)
    return summary


def sensitivity_axes(summary: list[dict], paper: tuple[float, float]) -> dict[str, list[dict]]:
    """The two one-at-a-time sweeps of Fig. 4: ``beta`` (rows at the paper's delta) and ``delta``
    (rows at the paper's beta), each sorted by its value; the paper point is on both."""
    beta, delta = paper
    return {
        "beta": sorted((s for s in summary if s["delta"] == delta), key=lambda s: s["beta"]),
        "delta": sorted((s for s in summary if s["beta"] == beta), key=lambda s: s["delta"]),
    }


def sampling_span(records: list[dict], name: str) -> tuple[float, float]:
    """Min and max of a row's ``llm_auc_seed<s>`` values over sampling seeds and run seeds.

    >>> sampling_span([{"name": "a", "llm_auc_seed0": 0.5, "llm_auc_seed1": 1.0}], "a")
    (0.5, 1.0)
    """
    values = [v for r in records if r["name"] == name for k, v in r.items() if "_auc_seed" in k]
    return (min(values), max(values)) if values else (math.nan, math.nan)


def sensitivity_table(summary: list[dict], columns) -> list[str]:
    """Markdown rows of :func:`sensitivity_summary`: one per suite row, a ``mean ± std`` cell
    per column (:data:`SENSITIVITY_METRICS`; the mean alone for one seed, ``-`` for NaN)."""
    header = [f"{SENSITIVITY_METRICS[c][0]} {SENSITIVITY_METRICS[c][1]}".strip() for c in columns]
    table = [
        [s["name"], f"{s['beta']:g}", f"{s['delta']:g}", len(s["seeds"])]
        + [mean_std_cell(*s[c], n=len(s["seeds"])) for c in columns]
        for s in summary
    ]
    return markdown_table(table, ["row", "β", "δ", "seeds", *header]).splitlines()


def plot_sensitivity(path: str | os.PathLike, summary: list[dict], records: list[dict], paper):
    """Fig. 4: ExpCTR-Aug AUC, ExpCTR-LLM AUC, the stage-1 LC reward and (when resampled) the
    ExpCTR-LLM AUC under shared sampling seeds against β (at the paper's δ) and against δ (at the
    paper's β): means over run seeds with ±std bars and single seeds as dots; the shared-seed
    curve's bars span the min-max over its sampling seeds (the sampling noise of a generator)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {"aug_auc": ("C0", "o"), "llm_auc": ("C1", "s"), "lc_reward": ("C2", "^")}
    if any(r["llm_auc_shared"] == r["llm_auc_shared"] for r in records):
        curves["llm_auc_shared"] = ("C3", "D")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (param, entries) in zip(axes, sensitivity_axes(summary, paper).items(), strict=True):
        x = [e[param] for e in entries]
        names = {e["name"] for e in entries}
        for shift, (column, (color, marker)) in enumerate(curves.items()):
            nudge = 1 + 0.04 * (shift - 1.5)  # side by side on the log axis: ties stay visible
            means = [e[column][0] for e in entries]
            bars, label = [e[column][1] for e in entries], SENSITIVITY_METRICS[column][0]
            if column == "llm_auc_shared":
                spans = [sampling_span(records, e["name"]) for e in entries]
                bars = [
                    [m - lo for m, (lo, _) in zip(means, spans, strict=True)],
                    [hi - m for m, (_, hi) in zip(means, spans, strict=True)],
                ]
                label += " (mean; bars: min-max over the sampling seeds)"
            axis.errorbar(
                [v * nudge for v in x],
                means,
                yerr=bars,
                marker=marker,
                capsize=3,
                color=color,
                label=label,
            )
            dots = [(r[param] * nudge, r[column]) for r in records if r["name"] in names]
            if dots:
                axis.scatter(*zip(*dots, strict=True), s=12, alpha=0.35, color=color)
        axis.axvline(paper[0 if param == "beta" else 1], color="grey", linestyle=":", lw=1)
        axis.axhline(0.5, color="black", lw=0.5)
        axis.set_xscale("log")
        axis.set_xticks(x, [f"{v:g}" for v in x])
        axis.minorticks_off()
        fixed = f"δ = {paper[1]:g}" if param == "beta" else f"β = {paper[0]:g}"
        symbol = "β (ppo_kl_coef)" if param == "beta" else "δ (ppo_reward_clip)"
        axis.set_xlabel(f"{symbol} at {fixed}; dotted: the paper's value")
    axes[0].set_ylabel("test AUC / mean raw R_LC of stage 1")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    seeds = sorted({r["seed"] for r in records})
    fig.suptitle(
        f"ExpCTR β/δ sensitivity, ml-100k tiny preset, run seeds {seeds} "
        "(mean ± std over run seeds; dots: single run seeds)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
