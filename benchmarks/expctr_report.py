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
import json
from pathlib import Path

from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_ext.benchmark import BenchmarkSpec, expand_seeds, read_rows, run_benchmark
from recbole_ext.config import Config
from recbole_ext.config_sections import read_section
from recbole_ext.data.expctr_dataset import same_samples_overrides
from recbole_ext.expctr_results import (
    METRICS,
    SCORE_COLUMNS,
    SENSITIVITY_METRICS,
    TRAJECTORY_FIELDS,
    ctr_metrics,
    plot_reward_trajectory,
    plot_sensitivity,
    reward_trajectory,
    same_metrics,
    sensitivity_rows,
    sensitivity_summary,
    sensitivity_table,
    shared_seed_columns,
    table1_rows,
    table1_summary,
    trajectory_table,
    verified_resamples,
    write_csv,
)
from recbole_ext.expctr_run import (
    FOLDER_PREFIX,
    ExpCTRRun,
    ExpCTRSample,
    StoredRun,
    run_folder,
    run_key,
    stage_names,
)
from recbole_ext.llm.store import ResponseStore
from recbole_ext.model.context_aware_recommender.expctr import ExpCTRConfig
from recbole_ext.quick_start import build
from recbole_ext.rl.ppo import PPOConfig
from recbole_ext.tables import markdown_table, mean_std, mean_std_cell
from recbole_ext.utils import create_dataset

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "expctr"
SUITE = REPO / "properties" / "benchmark" / "expctr_sensitivity.yaml"
CTR_BASELINES = "FM DeepFM AutoInt PNN xDeepFM FiGNN DCN DCNV2 DIN DIEN".split()
BASE_LLM = "SmolLM2-135M-Instruct (packaged GGUF, Q4_1, dequantised to float32 in transformers)"
STAGES = stage_names(iterations=1, final_refit=True)  # the tiny preset's
METRIC_HEADER = ["AUC ↑", "LogLoss ↓", "MAE ↓", "RMSE ↓"]  # of METRICS
# case_study.json: a record per test pair
CASE_FIELDS = """key target label prompt icl_explanation icl_lc_score expctr_explanation
    expctr_lc_score icl_zero_shot_p_yes""".split()


def expctr_config(dataset: str, preset: str | None, seed: int | None = None, **values) -> Config:
    if preset is not None:
        values["expctr_preset"] = preset
    if seed is not None:
        values["seed"] = seed
    return Config("ExpCTR", dataset, config_dict=values)


def expctr_runs(runs: Path) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("ExpCTR-seed*.json"))]
    if not rows:
        raise SystemExit(f"no ExpCTR runs in {runs}: run step 1 of this script's docstring")
    return rows


def run_settings(args, run: dict) -> Config:
    """The config of a recorded ExpCTR run: its seed under this script's ``--expctr_preset``,
    checked to have the run's key (the folder of its model file)."""
    config = expctr_config(args.dataset, args.expctr_preset, run["config"]["seed"], state="WARNING")
    folder = run_folder(run["model_file"])
    if folder.name != f"{FOLDER_PREFIX}{run_key(config)}":
        raise SystemExit(f"settings differ from the run's ({folder.name} vs key {run_key(config)})")
    return config


def stored_run(output: Path, run: dict) -> StoredRun:
    """The records of an ExpCTR run (its result file ``run``) in the store of ``output``."""
    return StoredRun.of_model_file(ResponseStore(output / "expctr_store.sqlite"), run["model_file"])


# ---------------------------------------------------------------------------------------------
# baselines: the harness with ExpCTR's samples
# ---------------------------------------------------------------------------------------------
def baselines(args) -> None:
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
def table_rows(output: Path, runs: Path) -> dict[str, dict[int, dict[str, float]]]:
    """Table 1's rows (:func:`table1_rows`) from the harness's and the ExpCTR runs' result files."""
    harness = [r for g in ("baselines", "tallrec") for r in read_rows(output / g / "results.jsonl")]
    return table1_rows(harness, expctr_runs(runs), CTR_BASELINES)


def table(args) -> None:
    rows = table_rows(args.output, args.output / "runs")
    first = expctr_runs(args.output / "runs")[0]
    samples = read_section(run_settings(args, first), ExpCTRConfig)  # the run's sample settings
    summary, best = table1_summary(rows)
    lines = [
        f"ml-100k, ExpCTR §5.1 samples (preset `{samples.preset}`: {samples.targets_per_user} "
        f"targets per user, history <= {samples.max_history}, {samples.max_samples or 'all'} "
        "samples per seed, split 8:1:1 by RecBole's RS); within a seed every row of the table "
        "trains and tests on the same rows. Mean ± std (ddof 1) over seeds; best mean in "
        f"**bold**. Base LLM: {BASE_LLM}.",
        "",
    ]
    table = []
    for name, s in summary.items():
        cells = [mean_std_cell(s[m]["mean"], s[m]["std"]) for m in METRICS]
        cells = [f"**{c}**" if best[m] == name else c for m, c in zip(METRICS, cells, strict=True)]
        table.append([name, len(s["seeds"]), *cells])
    lines.append(markdown_table(table, ["model", "seeds", *METRIC_HEADER]))
    lines += ["", *split_sizes(args, sorted({s for r in rows.values() for s in r}))]
    lines += ["", *stage_times(args.output)]
    (args.output / "table1.md").write_text("\n".join(lines) + "\n")
    (args.output / "table1.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


def split_sizes(args, seeds: list[int]) -> list[str]:
    """Markdown rows: train/valid/test sizes and test positives of each seed's split."""
    table = []
    for seed in seeds:
        config = expctr_config(args.dataset, args.expctr_preset, seed, state="WARNING")
        init_seed(seed, config["reproducibility"])
        splits = data_preparation(config, create_dataset(config))
        sizes = [len(split.dataset) for split in splits]
        positives = int(splits[2].dataset.inter_feat["label"].sum())
        table.append([seed, *sizes, positives])
    return markdown_table(table, ["seed", "train", "valid", "test", "test positives"]).splitlines()


def stage_times(output: Path) -> list[str]:
    """Markdown rows: wall seconds of each ExpCTR stage per seed (the store's progress records)
    and of the whole run (``train_seconds``: stages + loading; test evaluation not included)."""
    table = []
    for run in expctr_runs(output / "runs"):
        stages = stored_run(output, run).stages()
        seconds = [stages[name].seconds if name in stages else None for name in STAGES]
        cells = ["-" if v is None else f"{v:.0f}" for v in seconds]
        table.append([run["config"]["seed"], *cells, f"{run['train_seconds']:.0f}"])
    return [
        "ExpCTR wall time per stage (s), shared 2-core CPU, 1 torch thread:",
        "",
        *markdown_table(table, ["seed", *STAGES, "fit total"]).splitlines(),
    ]


# ---------------------------------------------------------------------------------------------
# Fig. 3: reward trajectories, from the runs' stage records
# ---------------------------------------------------------------------------------------------
def trajectory(args) -> None:
    rows = []
    for run in expctr_runs(args.output / "runs"):
        steps = reward_trajectory(stored_run(args.output, run))
        rows += [{"seed": run["config"]["seed"], **step} for step in steps]
    write_csv(args.output / "reward_trajectory.csv", rows, ["seed", *TRAJECTORY_FIELDS])
    batch = read_section(
        run_settings(args, expctr_runs(args.output / "runs")[0]), PPOConfig
    ).batch_size
    curves: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        curves.setdefault((r["reward"], f"seed {r['seed']}"), []).append(float(r["raw_reward"]))
    plot_reward_trajectory(
        args.output / "reward_trajectory.png",
        curves,
        step_label=f"PPO step (a new batch of {batch} training samples each)",
    )
    lines = trajectory_table(rows)
    (args.output / "reward_trajectory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.output / 'reward_trajectory.csv'}, .png, .md ({len(rows)} PPO steps)")


# ---------------------------------------------------------------------------------------------
# Table 2: case study, and the alignment ablation
# ---------------------------------------------------------------------------------------------
def open_run(config: Config, model_file: str) -> tuple[ExpCTRRun, list[ExpCTRSample]]:
    """The ExpCTR run of ``config``, checked to be the one whose model file is ``model_file``,
    and its test samples. It reads its store: no training; the LLM loads only if something must
    be generated."""
    folder = run_folder(model_file)
    config["checkpoint_dir"], config["state"] = str(folder.parent), "WARNING"
    run = ExpCTRRun(config)
    if run.folder != folder:
        raise SystemExit(f"settings differ from the run's ({folder.name} vs {run.folder.name})")
    _, _, _, _, test = build(config)
    return run, run.samples(test)


def seed_run(args, result: dict) -> tuple[ExpCTRRun, list[ExpCTRSample]]:
    """:func:`open_run` of the Table-1 run whose result file is ``result``."""
    store = str(args.output / "expctr_store.sqlite")
    seed = result["config"]["seed"]
    config = expctr_config(args.dataset, args.expctr_preset, seed, llm_store_path=store)
    return open_run(config, result["model_file"])


def case_study(args) -> None:
    result = next(r for r in expctr_runs(args.output / "runs") if r["config"]["seed"] == args.seed)
    run, samples = seed_run(args, result)
    final = run.last_generator()
    positives = [s for s in samples if s.label == 1]
    negatives = [s for s in samples if s.label == 0]
    chosen = (positives[: (args.pairs + 1) // 2] + negatives[: args.pairs // 2])[: args.pairs]
    icl_texts, icl_lc = run.explanations_of(chosen, "init")
    exp_texts, exp_lc = run.explanations_of(chosen, final)
    icl_zero_shot = run.icl_scores(chosen)

    scored = zip(chosen, icl_texts, icl_lc, exp_texts, exp_lc, icl_zero_shot, strict=True)
    case = [[s.key, s.target_text, s.label, s.prompt[0]["content"], *r] for s, *r in scored]
    records = [dict(zip(CASE_FIELDS, values, strict=True)) for values in case]
    table = [
        [k.split("|")[0], t, y, f"{cell(it)} ({il:.3f})", f"{cell(et)} ({el:.3f})", f"{z:.3f}"]
        for k, t, y, _, it, il, et, el, z in case
    ]
    header = ["user", "target", "label", "ICL explanation (s_LC)", "ExpCTR explanation (s_LC)"]
    lines = [
        f"ml-100k test pairs of seed {args.seed} (ExpCTR run `{run.folder.name}`). ICL: the base "
        f"LLM ({BASE_LLM}) with adapters off answering the §4.1 explanation prompt; ExpCTR: the "
        f"generator after `{final}`. Both sampled at temperature "
        f"{run.ppo.temperature}, at most {run.ppo.response_length} tokens. s_LC: p(Yes) "
        "of the frozen LLM reading the explanation (Eq. 8); p_ICL: zero-shot p(Yes) from the "
        "history prompt.",
        "",
        markdown_table(table, [*header, "p_ICL"]),
    ]
    (args.output / "case_study.md").write_text("\n".join(lines) + "\n")
    (args.output / "case_study.json").write_text(json.dumps(records, indent=2) + "\n")
    print("\n".join(lines))


def cell(text: str) -> str:
    """One line of a markdown table cell."""
    return " ".join(text.split()).replace("|", "/")


def ablation(args) -> None:
    """The LC scorer on explanations of the generator before PPO (π_init) and after it, and ICL,
    on the same test pairs of every seed: did alignment change ExpCTR-LLM?"""
    rows = {"ICL (history prompt, no explanation)": {}, "LC scorer on π_init explanations": {}}
    rows["ExpCTR-LLM (LC scorer on explanations after PPO)"] = {}
    names = list(rows)
    pooled: dict[str, list] = {name: [] for name in [*names, "labels"]}
    for result in expctr_runs(args.output / "runs"):
        seed = result["config"]["seed"]
        run, samples = seed_run(args, result)
        final = run.last_generator()
        labels = [s.label for s in samples]
        scores = [
            run.icl_scores(samples),
            run.explanations_of(samples, "init")[1],
            run.explanations_of(samples, final)[1],
        ]
        for name, values in zip(names, scores, strict=True):
            rows[name][seed] = ctr_metrics(labels, values)
            pooled[name] += values
        pooled["labels"] += labels
        reported = {m: result["test_result"][f"llm_{m}"] for m in METRICS}
        if not same_metrics(rows[names[2]][seed], reported):
            raise SystemExit(f"seed {seed}: stored ExpCTR-LLM scores differ from {reported}")
    lines = [
        f"Same test pairs ({len(pooled['labels'])} over {len(rows[names[0]])} seeds). Per seed: "
        "mean ± std over seeds; pooled: the metric over all seeds' pairs together.",
        "",
    ]
    table = []
    for name in names:
        cells = [
            mean_std_cell(*mean_std([rows[name][seed][m] for seed in rows[name]])) for m in METRICS
        ]
        together = ctr_metrics(pooled["labels"], pooled[name])
        table.append([name, *cells, f"{together['auc']:.4f}", f"{together['logloss']:.4f}"])
    header = ["scores", *METRIC_HEADER, "pooled AUC", "pooled LogLoss"]
    lines.append(markdown_table(table, header))
    (args.output / "alignment_ablation.md").write_text("\n".join(lines) + "\n")
    (args.output / "alignment_ablation.json").write_text(
        json.dumps({"per_seed": rows, "pooled_scores": pooled}, indent=2) + "\n"
    )
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Fig. 4: beta / delta sensitivity
# ---------------------------------------------------------------------------------------------
def sensitivity_points(suite: Path, dataset: str = "ml-100k") -> dict[str, tuple[float, float]]:
    """``{row name: (beta, delta)}`` of a suite's ExpCTR rows, resolved as each run resolves its
    config (the row's ``config`` over the suite's over ExpCTR.yaml); ``"paper"`` maps to the
    yaml's own point (no overrides)."""
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


def resample_run(row: dict, overrides: dict, store_path: Path, dataset: str, seeds: list[int]):
    """:func:`verified_resamples` of a sweep run (a row of the suite's ``results.jsonl``)."""
    values = {**overrides, "seed": row["seed"], "llm_store_path": str(store_path)}
    run, samples = open_run(Config("ExpCTR", dataset, config_dict=values), row["model_file"])
    try:
        return verified_resamples(run, samples, row["test_result"]["llm_auc"], seeds)
    except ValueError as error:
        raise SystemExit(f"{row['model']} seed {row['seed']}: {error}") from error


def sensitivity(args) -> None:
    results = args.output / "sensitivity" / "results.jsonl"
    rows = read_rows(results)
    if not rows:
        raise SystemExit(f"no rows in {results}: run step 4 of this script's docstring")
    points = sensitivity_points(args.suite, args.dataset)
    spec = BenchmarkSpec.from_suite(args.suite)
    store_path = spec.overrides.get("llm_store_path")
    store = ResponseStore(REPO / store_path) if store_path else None
    records = sensitivity_rows(rows, points, store)
    seeds = [int(v) for v in args.resample_seeds.split(",") if v]
    if seeds and store is not None:  # common random numbers: every run's generator, same seeds
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
    write_csv(args.output / "sensitivity.csv", records, columns)
    run_seeds = sorted({r["seed"] for r in records})
    lines = [
        f"ExpCTR β/δ sensitivity on ml-100k, tiny preset, seeds {run_seeds} ({len(records)} runs); "
        "mean ± std (ddof 1) over seeds (one seed: its value). β = ppo_kl_coef, δ = "
        f"ppo_reward_clip; the paper point is β = {points['paper'][0]:g}, "
        f"δ = {points['paper'][1]:g}. Shared sampling seeds: each run's final generator "
        f"explains the test pairs again with the sampling seeds {seeds or '(not run)'}, the same "
        "for every run (its own seed, derived from its settings' hash, reproduces its llm_auc).",
        "",
        *sensitivity_table(summary, SCORE_COLUMNS),
        "",
        "How far each run's generator is from the paper point's run of the same seed: the sampled "
        "KL of the last PPO step, the LoRA B matrices after the last PPO stage (zero at π_init), "
        "and the share of identical explanations (PPO rollouts of every stage; the final "
        "generator's valid and test explanations).",
        "",
        *sensitivity_table(summary, [c for c in SENSITIVITY_METRICS if c not in SCORE_COLUMNS]),
    ]
    (args.output / "sensitivity.md").write_text("\n".join(lines) + "\n")
    plot_sensitivity(args.output / "sensitivity.png", summary, records, points["paper"])
    print("\n".join(lines))
    print(f"wrote {args.output / 'sensitivity.csv'}, .md, .png")


def main() -> None:
    commands = {
        "baselines": baselines,
        "table": table,
        "trajectory": trajectory,
        "case-study": case_study,
        "ablation": ablation,
        "sensitivity": sensitivity,
    }
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=list(commands))
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
    commands[args.command](args)


if __name__ == "__main__":
    main()
