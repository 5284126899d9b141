"""ExpCTR on ml-100k: Table 1 (baselines on the same samples and split), Fig. 3, Table 2, Fig. 4.

    # 1. ExpCTR, one run per seed: ExpCTR-Aug, ExpCTR-LLM (llm_*) and ICL (icl_*) test metrics
    python run_recbole_ext.py --model=ExpCTR --dataset=ml-100k --seed=2020 \
        --checkpoint_dir=/tmp/expctr/saved \
        --llm_store_path=benchmarks/results/expctr/expctr_store.sqlite \
        --output=benchmarks/results/expctr/runs/ExpCTR-seed2020.json
    # 2. RecBole's CTR models and TALLRec on those samples and split (harness, resumable)
    python benchmarks/expctr_report.py baselines --seeds=2020,2021,2022
    # 3. Table 1, Fig. 3 (LC/IC reward per PPO step), Table 2 (ICL vs ExpCTR explanations)
    python benchmarks/expctr_report.py table
    python benchmarks/expctr_report.py trajectory
    python benchmarks/expctr_report.py case-study --seed=2020 --pairs=4
    # 4. Fig. 4: beta / delta sensitivity (a benchmark suite of ExpCTR variants, resumable)
    python run_recbole_ext.py --benchmark --suite=properties/benchmark/expctr_sensitivity.yaml \
        --output=benchmarks/results/expctr/sensitivity
    python benchmarks/expctr_report.py sensitivity

``baselines`` resolves the ExpCTR config (``--expctr_preset``, default the yaml's ``tiny``) and
runs every model with :func:`recbole_ext.data.expctr_dataset.same_samples_overrides`: for a seed,
each baseline trains, validates and tests on exactly ExpCTR's rows (tests/test_expctr_baselines.py).
The CTR baselines get the training budget of ExpCTR's own CTR model (``epochs``,
``stopping_step`` of ExpCTR.yaml); TALLRec keeps its yaml (LoRA, lr 1e-4, 2 epochs).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "expctr"
CTR_BASELINES = [
    "FM",
    "DeepFM",
    "AutoInt",
    "PNN",
    "xDeepFM",
    "FiGNN",
    "DCN",
    "DCNV2",
    "DIN",
    "DIEN",
]
METRICS = ("auc", "logloss", "mae", "rmse")
BASE_LLM = "SmolLM2-135M-Instruct (packaged GGUF, Q4_1, dequantised to float32 in transformers)"


def expctr_config(dataset: str, preset: str | None, seed: int | None = None):
    from recbole_ext.config import Config

    values = {} if preset is None else {"expctr_preset": preset}
    if seed is not None:
        values["seed"] = seed
    return Config("ExpCTR", dataset, config_dict=values)


# ---------------------------------------------------------------------------------------------
# baselines: the harness with ExpCTR's samples
# ---------------------------------------------------------------------------------------------
def baselines(args) -> None:
    from recbole_ext.benchmark import BenchmarkSpec, expand_seeds, run_benchmark
    from recbole_ext.data.expctr_dataset import same_samples_overrides

    expctr = expctr_config(args.dataset, args.expctr_preset)
    same = {**same_samples_overrides(expctr), "state": "WARNING"}
    budget = {"epochs": expctr["epochs"], "stopping_step": expctr["stopping_step"]}
    print(f"same samples and split: {same}\nCTR training budget (ExpCTR's CTR model): {budget}")
    groups = {"baselines": (CTR_BASELINES, {**same, **budget}), "tallrec": (["TALLRec"], same)}
    for name in args.groups.split(","):
        models, overrides = groups[name]
        spec = BenchmarkSpec(
            models=models,
            dataset=args.dataset,
            seeds=expand_seeds(args.seeds),
            output=args.output / name,
            overrides=overrides,
            ours=[],
            headline="auc",
        )
        run_benchmark(spec)


# ---------------------------------------------------------------------------------------------
# Table 1
# ---------------------------------------------------------------------------------------------
def expctr_runs(runs: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("ExpCTR-seed*.json"))]
    if not rows:
        raise SystemExit(f"no ExpCTR runs in {runs}: run step 1 of this script's docstring")
    return rows


def table_rows(output: Path, runs: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{row name: {seed: {metric: value}}}`` for Table 1's rows, in the paper's order."""
    from recbole_ext.benchmark import read_rows

    table: dict[str, dict[int, dict[str, float]]] = {}
    for group in ("baselines", "tallrec"):
        for row in read_rows(output / group / "results.jsonl"):
            metrics = {m: row["test_result"][m] for m in METRICS}
            table.setdefault(row["model"], {})[row["seed"]] = metrics
    ordered = {m: table[m] for m in CTR_BASELINES if m in table}
    icl, llm, aug = {}, {}, {}
    for run in expctr_runs(runs):
        seed, result = run["config"]["seed"], run["test_result"]
        icl[seed] = {m: result[f"icl_{m}"] for m in METRICS}
        llm[seed] = {m: result[f"llm_{m}"] for m in METRICS}
        aug[seed] = {m: result[m] for m in METRICS}
    ordered["ICL"] = icl
    if "TALLRec" in table:
        ordered["TALLRec"] = table["TALLRec"]
    ordered["ExpCTR-LLM"] = llm
    ordered["ExpCTR-Aug"] = aug
    return ordered


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one value), NaNs dropped.

    >>> [round(v, 4) for v in mean_std([0.5, 0.7, float("nan")])]
    [0.6, 0.1414]
    """
    kept = [v for v in values if v == v]
    if not kept:
        return float("nan"), float("nan")
    return float(np.mean(kept)), float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0


def table(args) -> None:
    from recbole_ext.rl.config import ExpCTRConfig

    rows = table_rows(args.output, args.output / "runs")
    run_config = expctr_runs(args.output / "runs")[0]["config"]
    samples = ExpCTRConfig.from_recbole_config(run_config)  # the run's resolved sample settings
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
    lines = [
        f"ml-100k, ExpCTR §5.1 samples (preset `{samples.preset}`: {samples.targets_per_user} "
        f"targets per user, history <= {samples.max_history}, {samples.max_samples or 'all'} "
        "samples per seed, split 8:1:1 by RecBole's RS); within a seed every row of the table "
        "trains and tests on the same rows. Mean ± std (ddof 1) over seeds; best mean in "
        f"**bold**. Base LLM: {BASE_LLM}.",
        "",
        "| model | seeds | AUC ↑ | LogLoss ↓ | MAE ↓ | RMSE ↓ |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        cells = []
        for m in METRICS:
            text = f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}"
            cells.append(f"**{text}**" if best[m] == name else text)
        lines.append(f"| {name} | {len(s['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", *split_sizes(args, sorted({s for r in rows.values() for s in r}))]
    lines += ["", *stage_times(args.output)]
    (args.output / "table1.md").write_text("\n".join(lines) + "\n")
    (args.output / "table1.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


def split_sizes(args, seeds: list[int]) -> list[str]:
    """Markdown rows: train/valid/test sizes and test positives of each seed's split."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_ext.utils import create_dataset

    lines = ["| seed | train | valid | test | test positives |", "|---|---|---|---|---|"]
    for seed in seeds:
        config = expctr_config(args.dataset, args.expctr_preset, seed)
        config["state"] = "WARNING"
        init_seed(seed, config["reproducibility"])
        splits = data_preparation(config, create_dataset(config))
        sizes = [len(split.dataset) for split in splits]
        positives = int(splits[2].dataset.inter_feat["label"].sum())
        lines.append(f"| {seed} | " + " | ".join(map(str, sizes)) + f" | {positives} |")
    return lines


STAGES = ("stage1_lc", "iter0_stage2_ctr", "iter0_stage3_ic", "final_stage2_ctr")


def stage_times(output: Path) -> list[str]:
    """Markdown rows: wall seconds of each ExpCTR stage per seed (the store's progress records)
    and of the whole run (``train_seconds``: stages + loading; test evaluation not included)."""
    from recbole_ext.llm.store import ResponseStore

    store = ResponseStore(output / "expctr_store.sqlite")
    lines = [
        "ExpCTR wall time per stage (s), shared 2-core CPU, 1 torch thread:",
        "",
        "| seed | " + " | ".join(STAGES) + " | fit total |",
        "|---" * (len(STAGES) + 2) + "|",
    ]
    for run in expctr_runs(output / "runs"):
        kind = f"{run_dir(run).name.replace('-', ':', 1)}:progress"  # expctr:<run key>:progress
        seconds = [(store.get_record(kind, name) or {}).get("seconds") for name in STAGES]
        cells = ["-" if v is None else f"{v:.0f}" for v in seconds]
        lines.append(
            f"| {run['config']['seed']} | " + " | ".join(cells) + f" | {run['train_seconds']:.0f} |"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Fig. 3: reward trajectories
# ---------------------------------------------------------------------------------------------
def run_dir(run: dict) -> Path:
    """``<checkpoint_dir>/expctr-<run key>`` of a run, from its model file's path."""
    for parent in Path(run["model_file"]).parents:
        if parent.name.startswith("expctr-"):
            return parent
    raise ValueError(f"{run['model_file']} is not inside an expctr-<run key> directory")


def trajectory(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for run in expctr_runs(args.output / "runs"):
        seed = run["config"]["seed"]
        with open(run_dir(run) / "reward_trajectory.csv") as handle:
            rows += [{"seed": seed, **r} for r in csv.DictReader(handle)]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.output / "reward_trajectory.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, reward in zip(axes, ("lc", "ic"), strict=True):
        curves = {}
        for r in rows:
            if r["reward"] == reward:
                curves.setdefault(r["seed"], []).append(float(r["raw_reward"]))
        for seed, values in sorted(curves.items()):
            axis.plot(
                range(1, len(values) + 1), values, marker="o", alpha=0.5, label=f"seed {seed}"
            )
        length = min(len(v) for v in curves.values())
        mean = np.mean([v[:length] for v in curves.values()], axis=0)
        axis.plot(range(1, length + 1), mean, color="black", linewidth=2, label="mean")
        axis.set_title("stage 1: LC alignment" if reward == "lc" else "stage 3: IC alignment")
        axis.set_xlabel("PPO step (a new batch of 8 training samples each)")
        axis.set_ylabel(("R_LC (Eq. 9)" if reward == "lc" else "R_IC (Eq. 13)") + ", batch mean")
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output / "reward_trajectory.png", dpi=120)
    summary = [
        "| reward | PPO steps | mean raw reward | first step | last step | max abs KL "
        "| max approx_kl | clipfrac | response tokens |",
        "|---" * 9 + "|",
    ]
    for reward in ("lc", "ic"):
        mine = [r for r in rows if r["reward"] == reward]
        column = {
            k: np.array([float(r[k]) for r in mine])
            for k in mine[0]
            if k not in ("stage", "reward")
        }
        summary.append(
            f"| {reward.upper()} | {len(mine)} | {column['raw_reward'].mean():.4f} | "
            f"{_step_mean(mine, 0):.4f} | {_step_mean(mine, -1):.4f} | "
            f"{np.abs(column['kl']).max():.2e} | {column['approx_kl'].max():.2e} | "
            f"{column['clipfrac'].mean():.3f} | {column['response_tokens'].mean():.2f} |"
        )
    (args.output / "reward_trajectory.md").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    print(f"wrote {args.output / 'reward_trajectory.csv'}, .png, .md ({len(rows)} PPO steps)")


def _step_mean(rows: list[dict], index: int) -> float:
    """Mean over seeds of the raw reward at PPO step ``index`` of each seed's stage."""
    by_seed: dict = {}
    for r in rows:
        by_seed.setdefault(r["seed"], []).append(float(r["raw_reward"]))
    return float(np.mean([values[index] for values in by_seed.values()]))


# ---------------------------------------------------------------------------------------------
# Table 2: case study
# ---------------------------------------------------------------------------------------------
def open_run(args, seed: int):
    """``(run, trainer, test samples, final PPO stage)`` of the finished ExpCTR run of ``seed``,
    reading its store (no training; the LLM loads only if something must be generated)."""
    from recbole_ext.quick_start import build
    from recbole_ext.trainer.expctr import ExpCTRTrainer, run_key

    run = next(r for r in expctr_runs(args.output / "runs") if r["config"]["seed"] == seed)
    config = expctr_config(args.dataset, args.expctr_preset, seed)
    config["llm_store_path"] = str(args.output / "expctr_store.sqlite")
    config["checkpoint_dir"] = str(run_dir(run).parent)
    config["state"] = "WARNING"
    key = run_key(config)
    if run_dir(run).name != f"expctr-{key}":
        raise SystemExit(f"settings differ from the run's ({run_dir(run).name} vs {key})")
    _, model, _, _, test = build(config)
    trainer = ExpCTRTrainer(config, model)
    final = [name for name in _finished_stages(trainer) if name.endswith(("_lc", "_ic"))][-1]
    return run, trainer, trainer._samples(test), final


def case_study(args) -> None:
    run, trainer, samples, final = open_run(args, args.seed)
    positives = [s for s in samples if s["label"] == 1]
    negatives = [s for s in samples if s["label"] == 0]
    chosen = (positives[: (args.pairs + 1) // 2] + negatives[: args.pairs // 2])[: args.pairs]
    icl_texts, icl_lc = trainer.explanations_of(chosen, "init")
    exp_texts, exp_lc = trainer.explanations_of(chosen, final)
    icl_zero_shot = trainer._cached_scores("icl", chosen, None)

    records, lines = [], []
    lines += [
        f"ml-100k test pairs of seed {args.seed} (ExpCTR run `{run_dir(run).name}`). ICL: the base "
        f"LLM ({BASE_LLM}) with adapters off answering the §4.1 explanation prompt; ExpCTR: the "
        f"generator after `{final}`. Both sampled at temperature "
        f"{trainer.ppo.temperature}, at most {trainer.ppo.response_length} tokens. s_LC: p(Yes) "
        "of the frozen LLM reading the explanation (Eq. 8); p_ICL: zero-shot p(Yes) from the "
        "history prompt.",
        "",
        "| user | target | label | ICL explanation (s_LC) | ExpCTR explanation (s_LC) | p_ICL |",
        "|---|---|---|---|---|---|",
    ]
    for s, it, il, et, el, z in zip(
        chosen, icl_texts, icl_lc, exp_texts, exp_lc, icl_zero_shot, strict=True
    ):
        user = s["key"].split("|")[0]
        records.append(
            {
                "key": s["key"],
                "target": s["target_text"],
                "label": s["label"],
                "prompt": s["prompt"][0]["content"],
                "icl_explanation": it,
                "icl_lc_score": il,
                "expctr_explanation": et,
                "expctr_lc_score": el,
                "icl_zero_shot_p_yes": z,
            }
        )
        lines.append(
            f"| {user} | {s['target_text']} | {s['label']} | {_cell(it)} ({il:.3f}) | "
            f"{_cell(et)} ({el:.3f}) | {z:.3f} |"
        )
    (args.output / "case_study.md").write_text("\n".join(lines) + "\n")
    (args.output / "case_study.json").write_text(json.dumps(records, indent=2) + "\n")
    print("\n".join(lines))


def ablation(args) -> None:
    """The LC scorer on explanations of the generator before PPO (π_init) and after it, and ICL,
    on the same test pairs of every seed: did alignment change ExpCTR-LLM?"""
    from recbole_ext.trainer.expctr import ctr_metrics

    rows = {"ICL (history prompt, no explanation)": {}, "LC scorer on π_init explanations": {}}
    rows["ExpCTR-LLM (LC scorer on explanations after PPO)"] = {}
    names = list(rows)
    pooled: dict[str, list] = {name: [] for name in [*names, "labels"]}
    for run in expctr_runs(args.output / "runs"):
        seed = run["config"]["seed"]
        _, trainer, samples, final = open_run(args, seed)
        labels = [s["label"] for s in samples]
        scores = [
            trainer._cached_scores("icl", samples, None),
            trainer.explanations_of(samples, "init")[1],
            trainer.explanations_of(samples, final)[1],
        ]
        for name, values in zip(names, scores, strict=True):
            rows[name][seed] = ctr_metrics(labels, values)
            pooled[name] += values
        pooled["labels"] += labels
        reported = {m: run["test_result"][f"llm_{m}"] for m in METRICS}
        if not same_metrics(rows[names[2]][seed], reported):
            raise SystemExit(f"seed {seed}: stored ExpCTR-LLM scores differ from {reported}")
    lines = [
        f"Same test pairs ({len(pooled['labels'])} over {len(rows[names[0]])} seeds). Per seed: "
        "mean ± std over seeds; pooled: the metric over all seeds' pairs together.",
        "",
        "| scores | AUC ↑ | LogLoss ↓ | MAE ↓ | RMSE ↓ | pooled AUC | pooled LogLoss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        cells = []
        for m in METRICS:
            mean, std = mean_std([rows[name][seed][m] for seed in rows[name]])
            cells.append(f"{mean:.4f} ± {std:.4f}")
        together = ctr_metrics(pooled["labels"], pooled[name])
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {together['auc']:.4f} | "
            f"{together['logloss']:.4f} |"
        )
    (args.output / "alignment_ablation.md").write_text("\n".join(lines) + "\n")
    (args.output / "alignment_ablation.json").write_text(
        json.dumps({"per_seed": rows, "pooled_scores": pooled}, indent=2) + "\n"
    )
    print("\n".join(lines))


def same_metrics(a: dict[str, float], b: dict[str, float], tol: float = 1e-9) -> bool:
    """Equal keys and values within ``tol`` (NaN equals NaN).

    >>> same_metrics({"auc": float("nan"), "mae": 0.5}, {"auc": float("nan"), "mae": 0.5})
    True
    """
    return set(a) == set(b) and all(
        (a[k] != a[k] and b[k] != b[k]) or abs(a[k] - b[k]) <= tol for k in a
    )


def _finished_stages(trainer) -> list[str]:
    """The run's finished stages in order, from the store's progress records."""
    kind = f"expctr:{trainer.run_key}:progress"
    names = ["stage1_lc"]
    for m in range(trainer.settings.iterations):
        names += [f"iter{m}_stage2_ctr", f"iter{m}_stage3_ic"]
    names.append("final_stage2_ctr")
    return [n for n in names if trainer.store.get_record(kind, n) is not None]


# ---------------------------------------------------------------------------------------------
# Fig. 4: beta / delta sensitivity
# ---------------------------------------------------------------------------------------------
SUITE = REPO / "properties" / "benchmark" / "expctr_sensitivity.yaml"
SENSITIVITY_METRICS = {  # column: (label, better) of sensitivity.md / .csv
    # what the runs scored (table 1 of sensitivity.md)
    "aug_auc": ("ExpCTR-Aug AUC", "↑"),
    "aug_logloss": ("ExpCTR-Aug LogLoss", "↓"),
    "llm_auc": ("ExpCTR-LLM AUC", "↑"),
    "llm_logloss": ("ExpCTR-LLM LogLoss", "↓"),
    "icl_auc": ("ICL AUC", "↑"),
    "lc_reward": ("R_LC, stage 1 mean", "↑"),
    "lc_reward_last": ("R_LC, last step", "↑"),
    "ic_reward": ("R_IC, stage 3 mean", "↑"),
    "llm_auc_shared": ("ExpCTR-LLM AUC, shared sampling seeds", "↑"),
    # how far the run's generator is from the paper point's (table 2)
    "kl_last": ("KL to π_init, last step", ""),
    "lora_b_norm": ("‖B‖ of LoRA", ""),
    "lora_b_change": ("‖B − B_paper‖ / ‖B_paper‖", ""),
    "same_rollouts": ("PPO rollouts = paper's", ""),
    "same_final": ("final valid/test explanations = paper's", ""),
    "same_shared": ("test explanations = paper's, shared seeds", ""),
}
SCORE_COLUMNS = ("aug_auc", "aug_logloss", "llm_auc", "llm_logloss", "icl_auc", "lc_reward")
SCORE_COLUMNS += ("lc_reward_last", "ic_reward", "llm_auc_shared")


def sensitivity_points(suite: Path, dataset: str = "ml-100k") -> dict[str, tuple[float, float]]:
    """``{row name: (beta, delta)}`` of a suite's ExpCTR rows, resolved as each run resolves its
    config (the row's ``config`` over the suite's over ExpCTR.yaml); ``"paper"`` maps to the
    yaml's own point (no overrides)."""
    from recbole_ext.benchmark import BenchmarkSpec
    from recbole_ext.config import Config

    spec = BenchmarkSpec.from_suite(suite)
    points = {}
    for name in [*spec.models, "paper"]:
        if name == "paper":
            values = {}
        else:
            values = {**spec.overrides, **spec.variants.get(name, {}).get("config", {})}
        config = Config("ExpCTR", dataset, config_dict=values)
        points[name] = (float(config["ppo_kl_coef"]), float(config["ppo_reward_clip"]))
    return points


def sensitivity_rows(rows: list[dict], points: dict, store=None) -> list[dict]:
    """One record per (row, seed) of a sensitivity suite's ``results.jsonl``: beta, delta, the
    test metrics of ExpCTR-Aug / ExpCTR-LLM / ICL and, from ``store`` (the runs' LLM store), the
    raw LC / IC rewards, the KL at the last PPO step and how many of the run's explanations equal
    those of the paper point's run of the same seed (``points["paper"]``)."""
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
        record |= {"llm_auc_shared": math.nan, "same_shared": math.nan}  # see shared_seed_columns
        record["train_seconds"] = row.get("train_seconds", math.nan)
        records.append(record)
    return records


def _run_key(row: dict) -> str:
    return run_dir(row).name.removeprefix("expctr-")


def run_rewards(store, row: dict) -> dict[str, float]:
    """Mean raw reward of stage 1 (LC) and of the last stage 3 (IC), the LC reward of stage 1's
    last PPO step and the KL of the run's last PPO step, from the store's stage records."""
    nan = {k: math.nan for k in ("lc_reward", "lc_reward_last", "ic_reward", "kl_last")}
    if store is None:
        return nan
    kind = f"expctr:{_run_key(row)}:progress"
    stages = dict(store.iter_records(kind))
    lc = stages.get("stage1_lc", {}).get("trajectory", [])
    ic_names = sorted(n for n in stages if n.endswith("_stage3_ic"))
    ic = stages[ic_names[-1]].get("trajectory", []) if ic_names else []
    steps = lc + ic
    return {
        "lc_reward": _mean([r["raw_reward"] for r in lc]),
        "lc_reward_last": lc[-1]["raw_reward"] if lc else math.nan,
        "ic_reward": _mean([r["raw_reward"] for r in ic]),
        "kl_last": steps[-1]["kl"] if steps else math.nan,
    }


def same_explanations(store, row: dict, reference: dict | None) -> dict[str, float]:
    """Fractions of the run's PPO rollout explanations (every stage and epoch, per training pair)
    and of its final generator's valid/test explanations that equal ``reference``'s (1.0 for
    ``reference`` itself; NaN without a store or a reference run)."""
    if store is None or reference is None:
        return {"same_rollouts": math.nan, "same_final": math.nan}
    mine, theirs = _run_key(row), _run_key(reference)

    def texts(key: str, final: bool) -> dict:
        progress = dict(store.iter_records(f"expctr:{key}:progress"))
        if final:
            generator = progress.get("final_stage2_ctr", {}).get("generator")
            return dict(store.iter_records(f"expctr:{key}:gen:{generator}"))
        found = {}
        for stage, record in progress.items():
            for epoch in range(record.get("epochs", 0) if "trajectory" in record else 0):
                for sample, value in store.iter_records(f"expctr:{key}:{stage}:epoch{epoch}"):
                    found[(stage, epoch, sample)] = value["text"]
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
    of each run's last PPO stage under its checkpoint directory; NaN where a file is missing."""
    import torch

    def lora_b(run: dict | None) -> dict | None:
        if store is None or run is None:
            return None
        progress = store.get_record(f"expctr:{_run_key(run)}:progress", "final_stage2_ctr")
        path = run_dir(run) / (progress or {}).get("generator", "-") / "generator.pt"
        if not path.is_file():
            return None
        adapters = torch.load(path, map_location="cpu", weights_only=True)["adapters"]
        return {name: value.double() for name, value in adapters.items() if "lora_B" in name}

    def norm(tensors) -> float:
        return math.sqrt(sum(float((t**2).sum()) for t in tensors))

    mine, theirs = lora_b(row), lora_b(reference)
    result = {"lora_b_norm": math.nan if mine is None else norm(mine.values())}
    if mine is None or theirs is None or not norm(theirs.values()):
        return result | {"lora_b_change": math.nan}
    change = norm(mine[k] - theirs[k] for k in theirs) / norm(theirs.values())
    return result | {"lora_b_change": change}


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def resampled_explanations(trainer, samples: list[dict], generator: str, seed: int):
    """``(texts, LC scores)`` of ``samples`` explained by the generator saved at the end of PPO
    stage ``generator``, sampled as the trainer samples its evaluation explanations (chunks of
    ``expctr_generation_batch_size``, ``torch.manual_seed(seed + chunk start)`` before each) but
    with ``seed`` chosen by the caller. With the trainer's own seed (:func:`own_sampling_seed`)
    this reproduces the run's stored explanations; with one seed for every run of a sweep the
    runs' generators are compared on common random numbers. Cached in the store
    (``expctr:<run key>:resample:<generator>:seed<seed>``)."""
    import torch

    from recbole_ext.rl import ctr_messages
    from recbole_ext.rl.ppo import generate_responses

    kind = f"expctr:{trainer.run_key}:resample:{generator}:seed{seed}"
    stored = [trainer.store.get_record(kind, s["key"]) for s in samples]
    if any(v is None for v in stored):
        trainer._ensure_policy()
        trainer._restore_generator(generator)
        size = trainer.settings.generation_batch_size
        for start in range(0, len(samples), size):
            chunk = samples[start : start + size]
            torch.manual_seed(seed + start)
            texts = generate_responses(
                trainer.policy, trainer.tokenizer, [s["prompt"] for s in chunk], trainer.ppo
            ).texts
            scores = trainer._yes_no_scores(
                [ctr_messages(t, s["target_text"], trainer.domain) for s, t in zip(chunk, texts)]
            )
            for i, text, score in zip(range(start, start + len(chunk)), texts, scores):
                stored[i] = {"text": text, "score": score}
                trainer.store.put_record(kind, samples[i]["key"], stored[i])
    return [v["text"] for v in stored], [v["score"] for v in stored]


def own_sampling_seed(trainer, generator: str) -> int:
    """The seed of the trainer's first evaluation chunk for ``generator`` (``_explanations``)."""
    from recbole_ext.trainer.expctr import _stage_seed

    return trainer.config["seed"] + _stage_seed(f"expctr:{trainer.run_key}:gen:{generator}")


def resample_run(row: dict, overrides: dict, store_path: Path, dataset: str, seeds: list[int]):
    """Test explanations and LC scores of a sweep run's final generator under each of ``seeds``
    and under its own seed; the latter must reproduce the run's stored test explanations and
    its ``llm_auc`` (checked here, so the restored generator is the run's). Returns
    ``{"labels": [...], seed: (texts, scores), ...}``."""
    from recbole_ext.config import Config
    from recbole_ext.quick_start import build
    from recbole_ext.trainer.expctr import ExpCTRTrainer, ctr_metrics, run_key

    directory = run_dir(row)
    values = {**overrides, "seed": row["seed"], "checkpoint_dir": str(directory.parent)}
    values |= {"llm_store_path": str(store_path), "state": "WARNING"}
    config = Config("ExpCTR", dataset, config_dict=values)
    if f"expctr-{run_key(config)}" != directory.name:
        raise SystemExit(f"{row['model']}: settings differ from the run's ({directory.name})")
    _, model, _, _, test = build(config)
    trainer = ExpCTRTrainer(config, model)
    samples = trainer._samples(test)
    progress = f"expctr:{trainer.run_key}:progress"
    generator = trainer.store.get_record(progress, "final_stage2_ctr")["generator"]
    labels = [s["label"] for s in samples]
    own = own_sampling_seed(trainer, generator)
    texts, scores = resampled_explanations(trainer, samples, generator, own)
    kind = f"expctr:{trainer.run_key}:gen:{generator}"
    stored = [trainer.store.get_record(kind, s["key"]) for s in samples]
    auc, reported = ctr_metrics(labels, scores)["auc"], row["test_result"]["llm_auc"]
    if texts != stored or not same_metrics({"auc": auc}, {"auc": reported}, tol=1e-6):
        raise SystemExit(
            f"{row['model']} seed {row['seed']}: resampling with the run's own seed gives "
            f"AUC {auc} (reported {reported}); its explanations differ: {texts != stored}"
        )
    return {"labels": labels} | {
        seed: resampled_explanations(trainer, samples, generator, seed) for seed in seeds
    }


def shared_seed_columns(resampled: dict, reference: dict | None, seeds: list[int]) -> dict:
    """``llm_auc_seed<s>``: test AUC of the LC scores of one run's explanations resampled with
    seed ``s``; ``llm_auc_shared``: their mean over ``seeds``; ``same_shared``: the share of the
    explanations equal to ``reference``'s (same seed, same pair).

    >>> run = {"labels": [1, 0], 7: (["a", "b"], [0.9, 0.1]), 8: (["c", "d"], [0.2, 0.3])}
    >>> other = {"labels": [1, 0], 7: (["a", "x"], [0.9, 0.5]), 8: (["c", "d"], [0.2, 0.3])}
    >>> shared_seed_columns(run, other, [7, 8])
    {'llm_auc_seed7': 1.0, 'llm_auc_seed8': 0.0, 'llm_auc_shared': 0.5, 'same_shared': 0.75}
    """
    from recbole_ext.trainer.expctr import ctr_metrics

    columns = {
        f"llm_auc_seed{s}": ctr_metrics(resampled["labels"], resampled[s][1])["auc"] for s in seeds
    }
    columns["llm_auc_shared"] = _mean([columns[f"llm_auc_seed{s}"] for s in seeds])
    if reference is None:
        return columns | {"same_shared": math.nan}
    pairs = [(a, b) for s in seeds for a, b in zip(resampled[s][0], reference[s][0], strict=True)]
    return columns | {"same_shared": sum(a == b for a, b in pairs) / len(pairs)}


def sensitivity_summary(records: list[dict]) -> list[dict]:
    """Mean and std (ddof 1) over seeds of every column, per row of the suite (its order)."""
    names = list(dict.fromkeys(r["name"] for r in records))
    summary = []
    for name in names:
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


def sensitivity(args) -> None:
    from recbole_ext.benchmark import BenchmarkSpec, read_rows
    from recbole_ext.llm.store import ResponseStore

    results = args.output / "sensitivity" / "results.jsonl"
    rows = read_rows(results)
    if not rows:
        raise SystemExit(f"no rows in {results}: run step 4 of this script's docstring")
    points = sensitivity_points(args.suite, args.dataset)
    store_path = BenchmarkSpec.from_suite(args.suite).overrides.get("llm_store_path")
    store = ResponseStore(REPO / store_path) if store_path else None
    records = sensitivity_rows(rows, points, store)
    seeds = [int(v) for v in args.resample_seeds.split(",") if v]
    if seeds and store is not None:  # common random numbers: every run's generator, same seeds
        spec = BenchmarkSpec.from_suite(args.suite)
        resampled = {}
        for row in rows:
            overrides = {**spec.overrides, **spec.variants.get(row["model"], {}).get("config", {})}
            resampled[row["model"], row["seed"]] = resample_run(
                row, overrides, REPO / store_path, args.dataset, seeds
            )
        for record in records:
            paper = [r for r in rows if r["seed"] == record["seed"]]
            paper = [r for r in paper if points[r["model"]] == points["paper"]]
            reference = resampled[paper[0]["model"], record["seed"]] if paper else None
            mine = resampled[record["name"], record["seed"]]
            record |= shared_seed_columns(mine, reference, seeds)
    summary = sensitivity_summary(records)
    extra = [f"llm_auc_seed{s}" for s in seeds if any(f"llm_auc_seed{s}" in r for r in records)]
    columns = ["name", "seed", "beta", "delta", *SENSITIVITY_METRICS, *extra, "train_seconds"]
    with open(args.output / "sensitivity.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    run_seeds = sorted({r["seed"] for r in records})
    lines = [
        f"ExpCTR β/δ sensitivity on ml-100k, tiny preset, seeds {run_seeds} ({len(records)} runs); "
        "mean ± std (ddof 1) over seeds (one seed: its value). β = ppo_kl_coef, δ = "
        f"ppo_reward_clip; the paper point is β = {points['paper'][0]:g}, "
        f"δ = {points['paper'][1]:g}. Shared sampling seeds: each run's final generator "
        f"explains the test pairs again with the sampling seeds {seeds or '(not run)'}, the same "
        "for every run (its own seed, derived from its settings' hash, reproduces its llm_auc).",
        "",
        *_summary_table(summary, SCORE_COLUMNS),
        "",
        "How far each run's generator is from the paper point's run of the same seed: the sampled "
        "KL of the last PPO step, the LoRA B matrices after the last PPO stage (zero at π_init), "
        "and the share of identical explanations (PPO rollouts of every stage; the final "
        "generator's valid and test explanations).",
        "",
        *_summary_table(summary, [c for c in SENSITIVITY_METRICS if c not in SCORE_COLUMNS]),
    ]
    (args.output / "sensitivity.md").write_text("\n".join(lines) + "\n")
    plot_sensitivity(args.output / "sensitivity.png", summary, records, points["paper"])
    print("\n".join(lines))
    print(f"wrote {args.output / 'sensitivity.csv'}, .md, .png")


def _summary_table(summary: list[dict], columns) -> list[str]:
    """Markdown rows: one per suite row, a ``mean ± std`` cell per column."""
    header = [f"{SENSITIVITY_METRICS[c][0]} {SENSITIVITY_METRICS[c][1]}".strip() for c in columns]
    lines = ["| row | β | δ | seeds | " + " | ".join(header) + " |"]
    lines.append("|---" * (len(columns) + 4) + "|")
    for s in summary:
        cells = [_mean_std_cell(*s[c], len(s["seeds"])) for c in columns]
        lines.append(
            f"| {s['name']} | {s['beta']:g} | {s['delta']:g} | {len(s['seeds'])} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _mean_std_cell(mean: float, std: float, seeds: int) -> str:
    """``mean ± std``, the mean alone for one seed, ``-`` for NaN.

    >>> _mean_std_cell(0.5, 0.0, 1), _mean_std_cell(0.5, 0.25, 2), _mean_std_cell(math.nan, 0, 2)
    ('0.5000', '0.5000 ± 0.2500', '-')
    """
    if mean != mean:
        return "-"
    return f"{mean:.4f}" if seeds == 1 else f"{mean:.4f} ± {std:.4f}"


def plot_sensitivity(path: Path, summary: list[dict], records: list[dict], paper) -> None:
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
    axes_rows = sensitivity_axes(summary, paper)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (param, entries) in zip(axes, axes_rows.items(), strict=True):
        x = [e[param] for e in entries]
        names = {e["name"] for e in entries}
        for shift, (column, (color, marker)) in enumerate(curves.items()):
            nudge = 1 + 0.04 * (shift - 1.5)  # side by side on the log axis: ties stay visible
            means = [e[column][0] for e in entries]
            bars, label = [e[column][1] for e in entries], SENSITIVITY_METRICS[column][0]
            if column == "llm_auc_shared":
                spans = [_sampling_span(records, e["name"]) for e in entries]
                bars = [
                    [m - lo for m, (lo, _) in zip(means, spans)],
                    [hi - m for m, (_, hi) in zip(means, spans)],
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


def _sampling_span(records: list[dict], name: str) -> tuple[float, float]:
    """Min and max of a row's ``llm_auc_seed<s>`` values over sampling seeds and run seeds."""
    values = [v for r in records if r["name"] == name for k, v in r.items() if "_auc_seed" in k]
    return (min(values), max(values)) if values else (math.nan, math.nan)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        choices=["baselines", "table", "trajectory", "case-study", "ablation", "sensitivity"],
    )
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--expctr_preset", default=None, help="tiny | paper (default: the yaml's)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--seeds", default="2020,2021,2022", help="baselines: count or list")
    parser.add_argument("--groups", default="baselines,tallrec", help="baselines: which to run")
    parser.add_argument("--seed", type=int, default=2020, help="case-study: the run's seed")
    parser.add_argument("--pairs", type=int, default=4, help="case-study: test pairs shown")
    parser.add_argument("--suite", type=Path, default=SUITE, help="sensitivity: the suite yaml")
    parser.add_argument(
        "--resample_seeds", default="0,1,2", help="sensitivity: shared sampling seeds ('' = none)"
    )
    args = parser.parse_args()
    commands = {
        "baselines": baselines,
        "table": table,
        "trajectory": trajectory,
        "case-study": case_study,
        "ablation": ablation,
        "sensitivity": sensitivity,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
