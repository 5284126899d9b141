"""Benchmark (same candidates, tables, resume) and ASHA tuning (per-epoch pruning, one test)."""

import csv
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
from recbole_ext.tune import SearchSpace, TuneSpec, run_tuning
from recbole_ext.utils import create_dataset
from tests.conftest import TESTS_DIR, TINY_DATA, TINY_YAML

TINY = [f"--config_files={TINY_YAML}", f"--data_path={TINY_DATA}", "--dataset=tiny"]


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
    assert (
        lines[6]
        == "| b | 0.2500 ± 0.0000 | **0.7500 ± 0.0000** | **0.6000 ± 0.0000** | 10.0 | 100 | 7 |"
    )
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
