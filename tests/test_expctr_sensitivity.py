"""Fig. 4 of ExpCTR (beta, delta): the paper's grid reaches PPOConfig; --tune refuses ExpCTR and
the benchmark suite runs the grid instead; the sensitivity report on hand-made results."""

import argparse
import csv
import importlib.util
import itertools
import json
import math

import pytest
import yaml

from recbole_ext.benchmark import BenchmarkSpec
from recbole_ext.config import Config
from recbole_ext.config_sections import read_section
from recbole_ext.expctr_results import (
    adapter_change,
    sensitivity_axes,
    sensitivity_rows,
    sensitivity_summary,
)
from recbole_ext.expctr_run import run_key
from recbole_ext.llm.store import ResponseStore
from recbole_ext.rl.ppo import PPOConfig
from recbole_ext.tune import SearchSpace, TuneSpec, run_tuning
from tests.conftest import REPO_DIR, TINY_DATA, TINY_YAML

SPACE = REPO_DIR / "properties" / "tune" / "ExpCTR.yaml"


def test_space_holds_the_papers_beta_and_delta_values():
    space = SearchSpace.from_yaml(SPACE)
    assert space.sampled == {
        "ppo_kl_coef": {"type": "choice", "values": [0.01, 0.05, 0.1, 0.5]},
        "ppo_reward_clip": {"type": "choice", "values": [0.5, 1.0, 2.0, 5.0]},
    }
    assert space.fixed == {} and (space.grace_period, space.reduction_factor) == (5, 2)


def test_every_point_of_the_space_reaches_ppo(workdir):
    space = SearchSpace.from_yaml(SPACE)
    grid = itertools.product(*(spec["values"] for spec in space.sampled.values()))
    for beta, delta in grid:
        config = Config(
            "ExpCTR",
            "tiny",
            [str(TINY_YAML)],
            {"data_path": str(TINY_DATA), "ppo_kl_coef": beta, "ppo_reward_clip": delta},
        )
        ppo = read_section(config, PPOConfig)
        assert (ppo.kl_coef, ppo.reward_clip) == (beta, delta)


# ---------------------------------------------------------------------------------------------
# Fig. 4 as a benchmark suite (--tune cannot run ExpCTR) and its report
# ---------------------------------------------------------------------------------------------
SUITE = REPO_DIR / "properties" / "benchmark" / "expctr_sensitivity.yaml"
_spec = importlib.util.spec_from_file_location(
    "expctr_report", REPO_DIR / "benchmarks/expctr_report.py"
)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_suite_moves_beta_and_delta_one_at_a_time_around_the_paper_point():
    points = report.sensitivity_points(SUITE)
    assert points.pop("paper") == (0.05, 1.0)
    assert points == {
        "beta=0.01": (0.01, 1.0),
        "beta=0.05 delta=1.0": (0.05, 1.0),
        "beta=0.1": (0.1, 1.0),
        "beta=0.5": (0.5, 1.0),
        "delta=0.5": (0.05, 0.5),
        "delta=2.0": (0.05, 2.0),
    }
    # the paper row is a plain ExpCTR run (same run key, so it resumes from a Table-1 run), the
    # others are not: the harness's own keys (seed, checkpoint_dir, candidates) change nothing
    spec = BenchmarkSpec.from_suite(SUITE)
    harness = {"eval_candidates_file": "c/seed2020.npz", "checkpoint_dir": "elsewhere"}
    keys = {
        name: run_key(
            Config(
                "ExpCTR",
                "ml-100k",
                config_dict={**spec.overrides, **spec.variants[name]["config"], **harness},
            )
        )
        for name in spec.models
    }
    plain = run_key(Config("ExpCTR", "ml-100k", config_dict={"seed": 2020}))
    assert keys["beta=0.05 delta=1.0"] == plain and len(set(keys.values())) == 6


def test_tune_refuses_expctr_before_ray_starts_and_names_the_suite(workdir):
    import ray

    spec = TuneSpec(
        model="ExpCTR",
        dataset="tiny",
        output=workdir / "t",
        search_space=SearchSpace.from_yaml(SPACE),
        config_files=[str(TINY_YAML)],
        overrides={"data_path": str(TINY_DATA)},
    )
    with pytest.raises(ValueError, match="ExpCTR cannot run under --tune") as err:
        run_tuning(spec)
    assert "expctr-<run key>/ctr.pth" in str(err.value)
    assert "--suite=properties/benchmark/expctr_sensitivity.yaml" in str(err.value)
    assert not ray.is_initialized() and not (workdir / "t").exists()


def _progress(store, key, lc, ic, generator="iter0_stage3_ic"):
    """Stage records as ExpCTRTrainer writes them: trajectories of (raw reward, kl) per step."""

    def steps(values):
        return [{"raw_reward": r, "kl": kl} for r, kl in values]

    kind = f"expctr:{key}:progress"
    store.put_record(kind, "stage1_lc", {"epochs": 1, "trajectory": steps(lc)})
    store.put_record(kind, "iter0_stage2_ctr", {"generator": "stage1_lc", "seconds": 1.0})
    store.put_record(kind, "iter0_stage3_ic", {"epochs": 1, "trajectory": steps(ic)})
    store.put_record(kind, "final_stage2_ctr", {"generator": generator, "seconds": 1.0})


def _texts(store, key, rollouts, final):
    for sample, text in rollouts["stage1_lc"].items():
        store.put_record(f"expctr:{key}:stage1_lc:epoch0", sample, {"text": text, "reward": 0.5})
    for sample, text in rollouts["iter0_stage3_ic"].items():
        store.put_record(f"expctr:{key}:iter0_stage3_ic:epoch0", sample, {"text": text})
    for sample, text in final.items():
        store.put_record(f"expctr:{key}:gen:iter0_stage3_ic", sample, text)


def _row(name, seed, key, auc, llm_auc):
    return {
        "model": name,
        "seed": seed,
        "test_result": {"auc": auc, "logloss": 0.7, "llm_auc": llm_auc, "llm_logloss": 0.6},
        "model_file": f"/x/saved/expctr-{key}/final_stage2_ctr/ctr.pth",
        "train_seconds": 100.0,
    }


def test_sensitivity_report_from_a_hand_made_results_file_and_store(tmp_path):
    store = ResponseStore(tmp_path / "store.sqlite")
    _progress(store, "k0", lc=[(0.5, 0.0), (0.7, 0.01)], ic=[(0.8, 0.02)])
    _texts(
        store,
        "k0",
        {"stage1_lc": {"s1": "x", "s2": "y"}, "iter0_stage3_ic": {"s1": "z"}},
        {"t1": "A", "t2": "B"},
    )
    _progress(store, "k1", lc=[(0.5, 0.0), (0.9, 0.03)], ic=[(0.6, 0.04), (0.7, 0.05)])
    _texts(
        store,
        "k1",
        {"stage1_lc": {"s1": "x", "s2": "Y"}, "iter0_stage3_ic": {"s1": "w"}},
        {"t1": "A", "t2": "C"},
    )
    rows = [
        _row("paper", 1, "k0", auc=0.5, llm_auc=0.25),
        _row("big beta", 1, "k1", auc=0.75, llm_auc=0.5),
        _row("big beta", 2, "k2", auc=0.25, llm_auc=1.0),  # no paper run of seed 2, no records
        _row("small delta", 1, "k3", auc=1.0, llm_auc=0.0),
    ]
    points = {"paper": (0.05, 1.0), "big beta": (0.5, 1.0), "small delta": (0.05, 0.5)}
    records = {(r["name"], r["seed"]): r for r in sensitivity_rows(rows, points, store)}

    paper, beta = records[("paper", 1)], records[("big beta", 1)]
    assert (paper["lc_reward"], paper["lc_reward_last"]) == pytest.approx((0.6, 0.7))
    assert (paper["ic_reward"], paper["kl_last"]) == pytest.approx((0.8, 0.02))
    assert (paper["same_rollouts"], paper["same_final"]) == (1.0, 1.0)
    assert (beta["beta"], beta["delta"], beta["aug_auc"], beta["llm_auc"]) == (0.5, 1.0, 0.75, 0.5)
    assert (beta["lc_reward"], beta["ic_reward"], beta["kl_last"]) == pytest.approx(
        (0.7, 0.65, 0.05)
    )
    # rollouts: (stage1, s1) equal, (stage1, s2) and (stage3, s1) differ; final: t1 equal, t2 not
    assert (beta["same_rollouts"], beta["same_final"]) == pytest.approx((1 / 3, 1 / 2))
    unseen = records[("big beta", 2)]
    assert all(math.isnan(unseen[c]) for c in ("lc_reward", "kl_last", "same_rollouts"))

    summary = {s["name"]: s for s in sensitivity_summary(list(records.values()))}
    assert summary["big beta"]["seeds"] == [1, 2]
    assert summary["big beta"]["aug_auc"] == pytest.approx((0.5, 0.5**0.5 / 2))  # ddof 1
    assert summary["big beta"]["same_final"] == pytest.approx((0.5, 0.0))  # NaN of seed 2 dropped
    axes = sensitivity_axes(list(summary.values()), points["paper"])
    assert [s["name"] for s in axes["beta"]] == ["paper", "big beta"]
    assert [s["name"] for s in axes["delta"]] == ["small delta", "paper"]
    no_store = sensitivity_rows(rows[1:2], points, None)[0]
    assert math.isnan(no_store["same_final"]) and math.isnan(no_store["lc_reward"])


def test_sensitivity_command_writes_csv_markdown_and_figure(tmp_path):
    store_path = tmp_path / "store.sqlite"
    store = ResponseStore(store_path)
    _progress(store, "k0", lc=[(0.5, 0.0)], ic=[(0.8, 0.02)])
    _progress(store, "k1", lc=[(0.75, 0.0)], ic=[(0.6, 0.04)])
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": "paper", "model": "ExpCTR", "config": {}},
                    {"name": "beta=0.5", "model": "ExpCTR", "config": {"ppo_kl_coef": 0.5}},
                ],
                "config": {"llm_store_path": str(store_path)},
            }
        )
    )
    (tmp_path / "sensitivity").mkdir()
    rows = [_row("paper", 1, "k0", 0.5, 0.25), _row("beta=0.5", 1, "k1", 0.75, 0.5)]
    (tmp_path / "sensitivity" / "results.jsonl").write_text("\n".join(map(json.dumps, rows)))
    args = argparse.Namespace(output=tmp_path, suite=suite, dataset="ml-100k", resample_seeds="")
    report.sensitivity(args)

    with open(tmp_path / "sensitivity.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [(r["name"], float(r["beta"]), float(r["lc_reward"])) for r in written] == [
        ("paper", 0.05, 0.5),
        ("beta=0.5", 0.5, 0.75),
    ]
    lines = (tmp_path / "sensitivity.md").read_text().splitlines()
    assert lines[2].startswith("| row | β | δ | seeds | ExpCTR-Aug AUC ↑ | ExpCTR-Aug LogLoss ↓ |")
    # one seed: values without std; ICL absent from the rows: "-"
    assert lines[5] == (
        "| beta=0.5 | 0.5 | 1 | 1 | 0.7500 | 0.7000 | 0.5000 | 0.6000 | - | 0.7500 | 0.7500 "
        "| 0.6000 | - |"
    )
    assert lines[9].startswith("| row | β | δ | seeds | KL to π_init, last step | ‖B‖ of LoRA |")
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000


def test_adapter_change_compares_the_lora_b_matrices_of_the_last_ppo_stage(tmp_path):
    import torch

    store = ResponseStore(tmp_path / "store.sqlite")
    rows = {}
    for key, b in (("k0", [3.0, 4.0]), ("k1", [3.0, 4.5]), ("k2", None)):
        _progress(store, key, lc=[(0.5, 0.0)], ic=[(0.5, 0.0)])
        stage = tmp_path / "saved" / f"expctr-{key}" / "iter0_stage3_ic"
        stage.mkdir(parents=True)
        if b is not None:  # A matrices are left out of the comparison: only B starts at zero
            adapters = {
                "q.lora_A.w": torch.tensor([9.0, key == "k1"]),
                "q.lora_B.w": torch.tensor(b),
            }
            torch.save({"adapters": adapters}, stage / "generator.pt")
        rows[key] = {"model_file": str(stage.parent / "final_stage2_ctr" / "ctr.pth")}
    same = adapter_change(store, rows["k0"], rows["k0"])
    assert same == {"lora_b_norm": 5.0, "lora_b_change": 0.0}
    moved = adapter_change(store, rows["k1"], rows["k0"])
    assert moved["lora_b_norm"] == pytest.approx(math.hypot(3, 4.5))
    assert moved["lora_b_change"] == pytest.approx(0.5 / 5.0)
    missing = adapter_change(store, rows["k2"], rows["k0"])
    assert math.isnan(missing["lora_b_norm"]) and math.isnan(missing["lora_b_change"])
    assert math.isnan(adapter_change(store, rows["k1"], None)["lora_b_change"])


def test_resampling_with_the_runs_own_seed_reproduces_its_test_explanations(workdir, monkeypatch):
    from tests.test_expctr import _trainer, tiny_config

    config = tiny_config(workdir)
    trainer, train, valid, test = _trainer(config)
    trainer.fit(train, valid)
    trainer.evaluate(test)
    generator = trainer.run.generator
    samples = trainer.run.samples(test)
    kind = f"expctr:{trainer.run.key}:gen:{generator}"
    stored = [trainer.run.store.get_record(kind, s.key) for s in samples]
    llm_scores = trainer.run.lc_scores(samples, stored)

    fresh, _, _, test = _trainer(config)  # a new process: the generator comes from the run's files
    samples = fresh.run.samples(test)
    own = fresh.run.sampling_seed(generator)
    texts, scores = fresh.run.resample(samples, generator, own)
    assert generator == "iter0_stage3_ic" and texts == stored
    assert scores == pytest.approx(llm_scores)
    other, _ = fresh.run.resample(samples, generator, own + 1)
    assert other != texts  # another sampling seed, other explanations of the same generator

    import recbole_ext.rl.ppo as ppo

    monkeypatch.setattr(ppo, "generate_responses", None)  # cached now: no generation at all
    assert fresh.run.resample(samples, generator, own) == (texts, scores)
