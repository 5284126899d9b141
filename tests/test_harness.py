"""Benchmark (same candidates, tables, resume) and ASHA tuning (per-epoch pruning, one test)."""

import csv
import dataclasses
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from recbole.data import data_preparation

import run_recbole_ext
from recbole_ext.benchmark import BenchmarkSpec, expand_seeds
from recbole_ext.config import Config
from recbole_ext.data.candidates import fix_candidates
from recbole_ext.metrics import paired_t_test, significance_stars
from recbole_ext.tune import SearchSpace, TuneSpec, run_tuning
from recbole_ext.utils import create_dataset
from tests.conftest import REPO_DIR, TESTS_DIR, TINY_DATA, TINY_YAML

TINY = [f"--config_files={TINY_YAML}", f"--data_path={TINY_DATA}", "--dataset=tiny"]


def _compare_row(name, seed, ndcg, per_user, **extra):
    return {
        "model": name,
        "seed": seed,
        "eval_protocol": "seq_pop100",
        "eval_candidates": f"digest{seed}",
        "best_valid_score": ndcg + 0.01,
        "test_result": {"hit@10": 2 * ndcg, "ndcg@10": ndcg},
        "train_seconds": 600.0,
        "test_per_user_ndcg@10": per_user,
        **extra,
    }


def test_compare_runs_pools_shared_seeds_and_refuses_other_protocols(workdir):
    """benchmarks/compare_runs.py: mean ± std over seeds, the difference and the paired t-test on
    the seeds both rows have, and no test across protocols or candidate lists."""
    spec = importlib.util.spec_from_file_location(
        "compare_runs", REPO_DIR / "benchmarks/compare_runs.py"
    )
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    rng = np.random.default_rng(0)
    users = {s: rng.random(50).round(6).tolist() for s in (1, 2, 3)}
    better = {s: [min(1.0, v + 0.1) for v in users[s]] for s in (1, 2, 3)}
    main, sweep = workdir / "main", workdir / "sweep"
    rows = {
        main: [
            _compare_row("SASRec", 1, 0.30, users[1]),
            _compare_row("SASRec", 2, 0.34, users[2]),
            _compare_row("SASRec", 3, 0.50, users[3]),
            _compare_row("cold", 1, 0.20, users[1], eval_protocol="seq_pop100_coldstart"),
        ],
        sweep: [  # "ours" seed 2 before seed 1: the table lists seeds sorted
            _compare_row("ours", 2, 0.374, better[2]),
            _compare_row("ours", 1, 0.33, better[1]),
            _compare_row("other lists", 1, 0.1, users[1], eval_candidates="x"),
        ],
    }
    for folder, folder_rows in rows.items():
        folder.mkdir()
        lines = [json.dumps(r) for r in folder_rows] + [json.dumps({"model": "failed", "seed": 1})]
        (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    table = compare.table(compare.load_rows([main, sweep]), "SASRec").splitlines()
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in table[2:]}
    assert set(cells) == {"SASRec", "cold", "ours", "other lists"}
    assert cells["SASRec"][2:6] == [
        "1, 2, 3",
        "0.3900 ± 0.1058",
        "0.7600 ± 0.2117",
        "0.3800 ± 0.1058",
    ]
    assert cells["ours"][2] == "1, 2" and cells["ours"][6] == "+10.0%"  # seed 3 is not shared
    p = paired_t_test(np.array(better[1] + better[2]), np.array(users[1] + users[2]))
    assert cells["ours"][7] == f"{p:.2g}{significance_stars(p)}" and p < 0.001
    assert cells["cold"][6:8] == ["other protocol (seq_pop100_coldstart)", ""]
    assert cells["other lists"][6:8] == ["other candidates", ""]
    only = compare.table(compare.load_rows([main, sweep], seeds=[2]), "main/SASRec")
    assert "| cold |" not in only and "| 2 | 0.3500 |" in only
    with pytest.raises(SystemExit, match="matches 0 rows"):
        compare.table(compare.load_rows([main]), "GRU4Rec")
    picked = compare.table(compare.load_rows([main, sweep]), "SASRec", ["ours", "main/SASRec"])
    assert [line.split(" | ")[0][2:] for line in picked.splitlines()[2:]] == ["ours", "SASRec"]
    assert "+10.0%" in picked  # tested against the reference wherever it is listed
    alone = compare.table(compare.load_rows([main, sweep]), "SASRec", ["ours"])
    assert "+10.0%" in alone and "| SASRec |" not in alone
    with pytest.raises(SystemExit, match="--row 'BERT4Rec' matches 0 rows; names: main/SASRec"):
        compare.table(compare.load_rows([main, sweep]), "SASRec", ["ours", "BERT4Rec"])


def test_fixed_candidates_do_not_depend_on_the_rng_state(workdir):
    def candidates(rng_seed):
        config = Config(
            "SASRec",
            "tiny",
            [str(TINY_YAML)],
            {"data_path": str(TINY_DATA), "eval_protocol": "seq_pop100"},
        )
        _, valid, test = data_preparation(config, create_dataset(config))
        digest = fix_candidates(workdir / "c.npz", 2020, valid=valid, test=test)
        np.random.seed(rng_seed)  # a model's initialisation moves the global RNG
        torch.manual_seed(rng_seed)
        items = [batch[0]["item_id"].clone() for batch in test]
        return digest, torch.cat(items)

    digest_a, items_a = candidates(1)
    digest_b, items_b = candidates(2)
    assert digest_a == digest_b
    assert torch.equal(items_a, items_b)
    assert len(items_a) == 40 * 101  # each user: its target + 100 popularity negatives


@pytest.mark.parametrize(
    "value,seeds", [("3", [2020, 2021, 2022]), ("2021", [2021]), ("2021,2022", [2021, 2022])]
)
def test_seeds_option_is_a_count_or_seeds(value, seeds):
    """``--seeds=2021`` runs seed 2021 (it once meant 2021 seeds from 2020 on)."""
    assert expand_seeds(value) == seeds
    assert BenchmarkSpec(models=["Pop"], seeds=expand_seeds(value)).seeds == seeds


def test_benchmark_two_models_two_seeds_same_candidates_and_resume(workdir):
    out = workdir / "bench"
    args = [
        "--benchmark",
        "--models=SASRec,GRU4Rec",
        "--seeds=2",
        f"--output={out}",
        "--ours=GRU4Rec",
        "--eval_protocol=seq_pop100",
        *TINY,
    ]
    run_recbole_ext.main(args)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["seed"]) for r in rows) == [
        ("GRU4Rec", 2020),
        ("GRU4Rec", 2021),
        ("SASRec", 2020),
        ("SASRec", 2021),
    ]
    digest = {(r["model"], r["seed"]): r["eval_candidates"] for r in rows}
    for seed in (2020, 2021):  # identical candidate lists across models, per seed
        assert digest[("SASRec", seed)] == digest[("GRU4Rec", seed)] is not None
    assert digest[("SASRec", 2020)] != digest[("SASRec", 2021)]
    for r in rows:
        assert 0 <= r["test_result"]["ndcg@10"] <= 1 and r["num_parameters"] > 0
        assert r["peak_memory_mib"] > 0 and len(r["test_per_user_ndcg@10"]) == 40
        assert r["eval_protocol"] == "seq_pop100"

    table = (out / "table.md").read_text()
    assert "| SASRec |" in table and "Improvement over the best baseline (SASRec" in table
    assert "**" in table and "p-value" in table
    with (out / "table.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    ndcg = [r for r in csv_rows if r["model"] == "SASRec" and r["metric"] == "ndcg@10"][0]
    mean = np.mean([r["test_result"]["ndcg@10"] for r in rows if r["model"] == "SASRec"])
    assert float(ndcg["mean"]) == pytest.approx(mean) and ndcg["n_seeds"] == "2"
    assert (out / "ndcg_at_10.png").stat().st_size > 1000

    # resume: nothing to do when complete; a missing row is rerun alone
    kept = [
        line
        for line in (out / "results.jsonl").read_text().splitlines()
        if '"GRU4Rec"' not in line or '"seed": 2021' not in line
    ]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    run_recbole_ext.main(args)
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(again) == 4 and again[:3] == rows_without(rows, "GRU4Rec", 2021)
    assert (
        again[3]["test_result"]
        == next(r for r in rows if r["model"] == "GRU4Rec" and r["seed"] == 2021)["test_result"]
    )  # same seed, same split, same candidates: same numbers


def test_benchmark_suite_variants_run_in_parallel_on_the_same_candidates(workdir):
    suite = workdir / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "models": [
                    "SASRec",
                    {"name": "SASRec 1 layer", "model": "SASRec", "config": {"n_layers": 1}},
                ],
                "seeds": [2020],
                "workers": 2,
                "ours": ["SASRec 1 layer"],
                "config": {"eval_protocol": "seq_pop100", "epochs": 1},
            }
        )
    )
    out = workdir / "bench"
    run_recbole_ext.main(["--benchmark", f"--suite={suite}", f"--output={out}", *TINY])
    rows = {
        r["model"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())
    }
    assert set(rows) == {"SASRec", "SASRec 1 layer"}
    assert rows["SASRec 1 layer"]["eval_candidates"] == rows["SASRec"]["eval_candidates"]
    # the variant's own config applied: one transformer block fewer than RecBole's default 2
    assert rows["SASRec 1 layer"]["num_parameters"] < rows["SASRec"]["num_parameters"]
    assert "| SASRec 1 layer |" in (out / "table.md").read_text()
    assert not list((out / "candidates").glob(".*"))  # no partial candidate files left


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"model": "SASRec"}, "a `models` entry is a model name or"),
        ({"name": "x", "config": {}}, "variant 'x' needs `model:`"),
        ({"name": "x", "model": "SASRec", "overrides": {}}, "variant 'x' needs `model:`"),
    ],
)
def test_benchmark_suite_rejects_malformed_variants(workdir, entry, message):
    suite = workdir / "suite.yaml"
    suite.write_text(yaml.safe_dump({"models": ["SASRec", entry]}))
    with pytest.raises(ValueError, match=message):
        BenchmarkSpec.from_suite(suite)


def test_models_option_selects_suite_rows_whose_names_hold_commas(workdir):
    """--models=A,B splits at commas, but not inside a suite row's name (the CLI passes the text)."""
    suite = workdir / "suite.yaml"
    lr = {"name": "SASRec, lr 0.01", "model": "SASRec", "config": {"learning_rate": 0.01}}
    suite.write_text(yaml.safe_dump({"models": ["SASRec", lr, "GRU4Rec"]}))
    spec = BenchmarkSpec.from_suite(suite, models="SASRec, lr 0.01,GRU4Rec", ours="SASRec, lr 0.01")
    assert spec.models == ["SASRec, lr 0.01", "GRU4Rec"]
    assert spec.ours == ["SASRec, lr 0.01"]
    assert spec.model_of("SASRec, lr 0.01") == "SASRec"
    assert BenchmarkSpec.from_suite(suite, models="SASRec").models == ["SASRec"]


def rows_without(rows, model, seed):
    return [r for r in rows if (r["model"], r["seed"]) != (model, seed)]


@pytest.mark.parametrize(
    "space, message",
    [
        ({"lr": {"type": "normal", "low": 0, "high": 1}}, "key 'lr': unknown type 'normal'"),
        ({"learning_rate": {"type": "loguniform", "low": 0, "high": 1}}, "needs low > 0"),
        ({"learning_rate": {"type": "uniform", "low": 1, "high": 0.1}}, "must be below high"),
        ({"hidden_size": {"type": "choice", "values": []}}, "non-empty list"),
        ({"n_layers": {"type": "randint", "low": 1}}, "missing \\['high'\\]"),
        ({"epochs": 3}, "nothing to tune"),
        ({"n_layers": {"type": "choice", "values": [1]}, "asha": {"eta": 3}}, "unknown keys"),
    ],
)
def test_invalid_search_space_fails_naming_the_key(space, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.from_dict(space, source="space.yaml")


def test_unknown_config_key_fails_before_ray_starts(workdir):
    import ray

    spec = TuneSpec(
        model="SASRec",
        dataset="tiny",
        output=workdir / "t",
        search_space=SearchSpace.from_dict({"hiden_size": {"type": "choice", "values": [8]}}),
        config_files=[str(TINY_YAML)],
        overrides={"data_path": str(TINY_DATA)},
    )
    with pytest.raises(ValueError, match=r"\['hiden_size'\] are not config keys"):
        run_tuning(spec)
    assert not ray.is_initialized()


def test_asha_prunes_on_validation_and_tests_only_the_best(workdir):
    """Also: the dataset sits at the default, relative data_path (dataset/tiny/ in the working
    folder), which every Ray trial, started in its own folder, must still find."""
    shutil.copytree(TINY_DATA / "tiny", workdir / "dataset" / "tiny")
    space = yaml.safe_load((TESTS_DIR / "data" / "tune_space.yaml").read_text())
    space["hidden_size"]["values"] = [16, 32, 15]  # 15 is not a multiple of n_heads=2: crashes
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    out = workdir / "tune"
    run_recbole_ext.main(
        [
            "--tune",
            "--model=SASRec",
            "--search_space=space.yaml",
            "--num_samples=8",
            f"--output={out}",
            "--epochs=3",
            "--eval_protocol=seq_pop100",
            f"--config_files={TINY_YAML}",
            "--dataset=tiny",
        ]
    )
    with (out / "trials.csv").open() as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 8
    statuses = {t["status"] for t in trials}
    assert "stopped early" in statuses  # ASHA stopped a trial before max_t = 3 epochs
    stopped = [t for t in trials if t["status"] == "stopped early"]
    assert all(int(t["stopped_at_epoch"]) < 3 for t in stopped)
    crashed = [t for t in trials if t["hidden_size"] == "15"]
    assert crashed and all(t["status"] == "error" for t in crashed)  # reported, run went on
    for t in crashed:  # the exception's type and message, not Ray's wrapper line
        assert t["error"].startswith("ValueError: The hidden size (15) is not a multiple"), t
        assert "ray::" not in t["error"] and "\x1b" not in t["error"]
    assert all(t["error"] == "" for t in trials if t["hidden_size"] != "15")
    for t in trials:  # one validation score per epoch reached
        assert len(json.loads(t["valid_curve"])) == int(t["stopped_at_epoch"])

    best = json.loads((out / "best.json").read_text())
    finished = [t for t in trials if t["status"] != "error"]
    assert best["best_valid_score"] == pytest.approx(
        max(float(t["best_valid_score"]) for t in finished)
    )
    assert best["config"]["hidden_size"] in (16, 32) and best["config"]["inner_size"] == 64
    assert set(best["test_result"]) >= {"hit@10", "ndcg@10"}
    assert all(0 <= v <= 1 for v in best["test_result"].values())
    assert (out / "valid_curves.png").stat().st_size > 1000


def test_table_of_labelled_ctr_rows_bolds_by_metric_direction_and_names_no_candidates(workdir):
    # ExpCTR-style rows (no sampled candidates; prefixed metrics): no training, hand-made values
    from recbole_ext.benchmark import candidates_note, smaller_is_better, write_tables

    def row(model, seed, auc, llm_logloss):
        return {
            "model": model,
            "seed": seed,
            "eval_candidates": None,
            "test_result": {"auc": auc, "llm_auc": 1 - auc, "llm_logloss": llm_logloss},
            "train_seconds": 10.0,
            "peak_memory_mib": 100.0,
            "num_parameters": 7,
        }

    rows = [row("a", 1, 0.5, 0.7), row("a", 2, 0.7, 0.9), row("b", 1, 0.25, 0.6)]
    spec = BenchmarkSpec(models=["a", "b"], output=workdir, ours=[], headline="auc", seeds=[1, 2])
    write_tables(spec, rows)
    lines = (workdir / "table.md").read_text().splitlines()
    assert (
        lines[1] == "best in **bold**; no sampled candidates (full ranking or labelled test rows)."
    )
    assert lines[3] == "| model | auc | llm_auc | llm_logloss | train s | peak MiB | params |"
    # a: auc 0.6 ± 0.1414 (best), llm_auc 0.4, llm_logloss 0.8; b: 0.25, 0.75 (best), 0.6 (best)
    assert lines[5] == (
        "| a | **0.6000 ± 0.1414** | 0.4000 ± 0.1414 | 0.8000 ± 0.1414 | 10.0 | 100 | 7 |"
    )
    # one seed: its value, no "± 0.0000" (a spread that was never measured)
    assert lines[6] == "| b | 0.2500 | **0.7500** | **0.6000** | 10.0 | 100 | 7 |"
    assert (workdir / "auc.png").stat().st_size > 1000
    assert [smaller_is_better(m) for m in ("llm_logloss", "icl_mae", "rmse", "llm_auc")] == [
        True,
        True,
        True,
        False,
    ]
    same = [{"seed": 1, "eval_candidates": "d1"}, {"seed": 1, "eval_candidates": "d1"}]
    assert candidates_note(same) == "all models ranked the same candidate lists per seed."
    mixed = [*same, {"seed": 1, "eval_candidates": "d2"}]
    assert candidates_note(mixed).startswith("candidate lists differ between rows of a seed")


def test_partial_rows_are_named_and_improvement_uses_only_shared_seeds(workdir):
    # a resumed benchmark: the baseline has finished seed 2 only, ours seeds 1 and 2
    from recbole_ext.benchmark import write_tables

    def row(model, seed, ndcg):
        return {
            "model": model,
            "seed": seed,
            "eval_candidates": f"d{seed}",
            "test_result": {"ndcg@10": ndcg},
            "train_seconds": 1.0,
            "peak_memory_mib": 1.0,
            "num_parameters": 1,
            "test_per_user_ndcg@10": [ndcg, ndcg / 2, ndcg / 4],
        }

    rows = [row("ours", 1, 0.1), row("ours", 2, 0.3), row("base", 2, 0.2)]
    spec = BenchmarkSpec(models=["base", "ours"], output=workdir, ours=["ours"], seeds=[1, 2])
    write_tables(spec, rows)
    table = (workdir / "table.md").read_text()
    assert "Rows with fewer seeds (± 0 means one seed): base: seeds 2." in table
    # on seed 2 only: 0.3 vs 0.2 = +50 %; the all-seed means (0.2 vs 0.2) would give +0 %
    assert "| ours | +50.00%" in table


def test_tables_show_every_suite_row_and_seed_when_a_run_selects_some(workdir):
    """``--models``/``--seeds`` choose what runs; the tables still describe the whole suite's
    results (a subset run once rewrote table.md with its own rows only)."""
    from recbole_ext.benchmark import write_tables

    suite = workdir / "suite.yaml"
    suite.write_text(
        yaml.safe_dump({"models": ["base", {"name": "ours, v2", "model": "SASRec"}], "seeds": 2})
    )
    rows = [
        {
            "model": model,
            "seed": seed,
            "eval_candidates": f"d{seed}",
            "test_result": {"ndcg@10": value},
            "train_seconds": 1.0,
            "peak_memory_mib": 1.0,
            "num_parameters": 1,
            "test_per_user_ndcg@10": [value, value / 2],
        }
        for model, seed, value in (
            ("base", 2020, 0.2),
            ("base", 2021, 0.3),
            ("ours, v2", 2021, 0.4),
        )
    ]
    spec = BenchmarkSpec.from_suite(
        suite, models="ours, v2", seeds=[2021], output=workdir, ours=["ours, v2"]
    )
    assert spec.models == ["ours, v2"] and spec.table_models == ["base", "ours, v2"]
    write_tables(spec, rows)
    table = (workdir / "table.md").read_text()
    assert "seeds [2020, 2021]" in table
    assert "| base | 0.2500 ± 0.0707 |" in table and "| ours, v2 | **0.4000** |" in table
    assert "Rows with fewer seeds (± 0 means one seed): ours, v2: seeds 2021." in table
    assert "| ours, v2 | +33.33%" in table  # against base on the seed both have (0.4 vs 0.3)


def test_learning_rate_grid_keeps_per_row_the_rate_best_on_validation(workdir):
    """A row's grid runs every (seed, rate) of BPR for one epoch on tiny; the tables use only the
    runs of the rate whose mean validation metric over the seeds is best, and name it; every run
    stays in results.jsonl and a rerun runs nothing."""
    suite = workdir / "suite.yaml"
    grid = [0.5, 0.0001]
    suite.write_text(
        yaml.safe_dump(
            {
                "models": [{"name": "BPR", "model": "BPR", "learning_rates": grid}],
                "seeds": [2020, 2021],
                "workers": 2,
                "config": {"epochs": 1},
            }
        )
    )
    out = workdir / "bench"
    args = ["--benchmark", f"--suite={suite}", f"--output={out}", *TINY]
    run_recbole_ext.main(args)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["seed"], r["learning_rate"]) for r in rows) == [
        ("BPR", 2020, 0.0001),
        ("BPR", 2020, 0.5),
        ("BPR", 2021, 0.0001),
        ("BPR", 2021, 0.5),
    ]
    assert {r["valid_metric"] for r in rows} == {"mrr@10"}  # RecBole's default valid_metric

    def mean_of(rate, result, metric):
        return np.mean([r[result][metric] for r in rows if r["learning_rate"] == rate])

    valid = {rate: mean_of(rate, "valid_result", "mrr@10") for rate in grid}
    assert valid[0.5] != valid[0.0001]  # the rates train different models
    chosen = max(grid, key=valid.get)
    test = {rate: mean_of(rate, "test_result", "ndcg@10") for rate in grid}
    assert test[0.5] != test[0.0001]

    with (out / "table.csv").open() as f:
        ndcg = next(r for r in csv.DictReader(f) if r["metric"] == "ndcg@10")
    assert ndcg["n_seeds"] == "2"  # the chosen rate's two runs, not all four
    assert float(ndcg["mean"]) == pytest.approx(test[chosen])
    assert float(ndcg["learning_rate"]) == chosen
    lines = (out / "table.md").read_text().splitlines()
    assert lines[2].startswith(
        "learning rate (`lr`) chosen on validation per row among 0.5, 0.0001"
    )
    assert lines[4].endswith("| lr |") and lines[6].endswith(f" | {chosen:g} |")

    run_recbole_ext.main(args)  # complete: the rerun runs nothing (each rate's runs are known)
    assert len((out / "results.jsonl").read_text().splitlines()) == 4


def test_table_of_a_grid_uses_the_chosen_runs_beside_rows_without_a_grid(workdir):
    # hand-made rows, no training: "g" has a grid, "p" one rate of its own
    from recbole_ext.benchmark import write_tables

    def row(model, seed, valid, test, lr=None):
        return {
            "model": model,
            "seed": seed,
            **({} if lr is None else {"learning_rate": lr, "valid_metric": "rmse"}),
            "valid_result": {"rmse": valid},
            "eval_candidates": None,
            "test_result": {"rmse": test},
            "train_seconds": 1.0,
            "peak_memory_mib": 1.0,
            "num_parameters": 1,
        }

    rows = [
        row("g", 1, 1.0, 0.1, 0.1),  # lr 0.1: mean valid RMSE 1.0, best test
        row("g", 1, 0.8, 0.9, 0.01),  # lr 0.01: mean valid RMSE (0.8 + 0.9) / 2 = 0.85, chosen
        row("g", 2, 1.0, 0.1, 0.1),
        row("g", 2, 0.9, 0.5, 0.01),
        row("g", 3, 5.0, 0.0, 0.01),  # lr 0.01 only: left out of the choice (with it: lr 0.1)
        row("p", 1, 0.5, 0.3),
        row("p", 2, 0.5, 0.5),
    ]
    spec = BenchmarkSpec(
        models=["g", "p"],
        seeds=[1, 2, 3],
        output=workdir,
        ours=[],
        headline="rmse",
        variants={"g": {"model": "g", "learning_rates": [0.1, 0.01]}},
    )
    write_tables(spec, rows)
    lines = (workdir / "table.md").read_text().splitlines()
    assert lines[2].endswith("Grid not complete yet: g (5 of 6 runs).")
    # g: test RMSE of the lr-0.01 runs, seeds 1-3: mean 0.4667, std 0.4509; p: 0.4 ± 0.1414
    assert lines[6] == "| g | 0.4667 ± 0.4509 | 1.0 | 1 | 1 | 0.01 |"
    assert lines[7] == "| p | **0.4000 ± 0.1414** | 1.0 | 1 | 1 |  |"
    with (workdir / "table.csv").open() as f:
        rates = {r["model"]: r["learning_rate"] for r in csv.DictReader(f)}
    assert rates == {"g": "0.01", "p": ""}
    # a later run of seed 1 only (--seeds=1): the grid still counts every seed recorded (it
    # counted seed 1 alone and called the grid complete)
    write_tables(dataclasses.replace(spec, seeds=[1]), rows)
    lines = (workdir / "table.md").read_text().splitlines()
    assert lines[2].endswith("Grid not complete yet: g (5 of 6 runs).")


@pytest.mark.parametrize(
    "suite, message",
    [
        (
            {"models": ["BPR"], "learning_rates": [0.01], "config": {"learning_rate": 0.1}},
            "row 'BPR' has the grid learning_rates=\\[0.01\\] and also learning_rate=0.1",
        ),
        ({"models": ["BPR"], "learning_rates": [0.01, 0.01]}, "listed twice"),
        ({"models": ["BPR"], "learning_rates": []}, "list of positive numbers"),
        (
            {"models": [{"name": "x", "model": "BPR", "learning_rates": ["fast"]}]},
            "`learning_rates` of the row 'x' must be a list of positive numbers",
        ),
    ],
)
def test_learning_rate_grid_is_checked_when_the_suite_is_read(workdir, suite, message):
    path = workdir / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ValueError, match=message):
        BenchmarkSpec.from_suite(path)
