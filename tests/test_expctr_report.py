"""Table 1 assembly from run files, and Table 2's ICL explanations (base LM, adapters off)."""

import copy
import importlib.util
import json

import pytest
import torch

from recbole_ext.expctr_results import mean_std
from recbole_ext.expctr_run import stage_seed
from recbole_ext.llm.prompts import expctr_ctr_messages
from recbole_ext.quick_start import build
from recbole_ext.rl.ppo import generate_responses
from recbole_ext.trainer.expctr import ExpCTRTrainer
from tests.conftest import REPO_DIR
from tests.test_expctr import HashEncoder, tiny_config, tiny_lm

spec = importlib.util.spec_from_file_location(
    "expctr_report", REPO_DIR / "benchmarks/expctr_report.py"
)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _metrics(prefix, base):
    return {f"{prefix}{m}": base + i / 10 for i, m in enumerate(("auc", "logloss", "mae", "rmse"))}


def test_table_rows_take_icl_llm_aug_from_the_runs_and_baselines_from_the_harness(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, base in ((1, 0.5), (2, 0.7)):
        result = {**_metrics("", base), **_metrics("llm_", base + 1), **_metrics("icl_", base + 2)}
        (runs / f"ExpCTR-seed{seed}.json").write_text(
            json.dumps({"config": {"seed": seed}, "test_result": result})
        )
    for group, model in (("baselines", "DeepFM"), ("tallrec", "TALLRec")):
        (tmp_path / group).mkdir()
        rows = [
            {"model": model, "seed": seed, "test_result": _metrics("", base)}
            for seed, base in ((1, 0.25), (2, 0.75))
        ]
        (tmp_path / group / "results.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")

    rows = report.table_rows(tmp_path, runs)
    assert list(rows) == ["DeepFM", "ICL", "TALLRec", "ExpCTR-LLM", "ExpCTR-Aug"]
    assert rows["ICL"][2]["auc"] == pytest.approx(2.7) and rows["ExpCTR-LLM"][1]["mae"] == 1.7
    assert rows["ExpCTR-Aug"][1] == pytest.approx(
        {"auc": 0.5, "logloss": 0.6, "mae": 0.7, "rmse": 0.8}
    )
    mean, std = mean_std([rows["TALLRec"][s]["auc"] for s in (1, 2)])
    assert (mean, std) == pytest.approx((0.5, 0.5**0.5 * 0.5))  # ddof 1: sqrt(2 * 0.25^2)


def test_icl_explanations_are_the_base_models_whatever_the_adapters(workdir):
    config = tiny_config(workdir)
    _, model, _, _, test = build(config)
    base, tokenizer = tiny_lm()
    trainer = ExpCTRTrainer(
        config, model, lm=(copy.deepcopy(base), tokenizer), encoder=HashEncoder()
    )
    samples = trainer.run.samples(test)[:3]
    trainer.run.load_policy()
    with torch.no_grad():  # adapters as after training: the policy now differs from the base LM
        for name, p in trainer.run.policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)

    texts, scores = trainer.run.explanations_of(samples, "init")
    kind = f"expctr:{trainer.run.key}:gen:init"
    torch.manual_seed(config["seed"] + stage_seed(kind) + 0)
    expected = generate_responses(
        copy.deepcopy(base), tokenizer, [s.prompt for s in samples], trainer.run.ppo
    ).texts
    assert texts == expected
    torch.manual_seed(config["seed"] + stage_seed(kind) + 0)
    adapted = generate_responses(
        trainer.run.policy.model, tokenizer, [s.prompt for s in samples], trainer.run.ppo
    ).texts
    assert adapted != expected  # the adapters do change the policy's explanations
    lc = trainer.run.policy.yes_no_scores(
        [expctr_ctr_messages(t, s.target_text, trainer.run.domain) for s, t in zip(samples, texts)]
    )
    assert scores == pytest.approx(lc)
    assert trainer.run.generator == "init"
    calls = trainer.generate_calls
    assert trainer.run.explanations_of(samples, "init") == (texts, scores)  # from the store
    assert trainer.generate_calls == calls
    with pytest.raises(ValueError, match="no stored explanation of 'stage1_lc'"):
        trainer.run.explanations_of(samples, "stage1_lc")
