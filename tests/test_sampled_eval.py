"""Sampled evaluation that encodes each history once (issue 16, item 3): the same results as
RecBole's per-row scoring, for every sequential model of the sweep, and RecBole's path whenever a
model's ``predict`` and ``full_sort_predict`` disagree."""

import logging

import pytest
import torch
from recbole.model.sequential_recommender import SASRec
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_ext.config import Config
from recbole_ext.quick_start import build
from recbole_ext.trainer import RecordingCollector, sampled_eval
from recbole_ext.trainer.sampled_eval import held_out_layout, scores_agree
from recbole_ext.utils import get_trainer
from tests.conftest import REPO_DIR, TINY_DATA, TINY_YAML

# Sequential models of benchmarks/model_sweep.py (RecBole's sequential_recommender) and ours.
ENCODE_ONCE_FAST = ["SASRec", "GRU4Rec", "BERT4Rec", "AutoDisenSeq"]
ENCODE_ONCE_SLOW = [
    "Caser",
    "FDSA",
    "FEARec",
    "FOSSIL",
    "FPMC",
    "GCSAN",
    "GRU4RecF",
    "HGN",
    "HRM",
    "LightSANs",
    "NARM",
    "NextItNet",
    "NPE",
    "RepeatNet",
    "S3Rec",
    "SASRecF",
    "SHAN",
    "SINE",
    "SRGNN",
    "STAMP",
    "TransRec",
]
# RecBole's own predict and full_sort_predict disagree (CORE's predict skips the F.normalize of
# the item embeddings that training and full_sort_predict apply), or there is no full_sort_predict.
FALLBACK = {"CORE": "disagree", "DIN": "no full_sort_predict", "DIEN": "no full_sort_predict"}
NOT_RUN = {
    "GRU4RecKG": "needs knowledge-graph files the tiny data lacks (fails in the sweep too)",
    "KSR": "needs knowledge-graph files the tiny data lacks (fails in the sweep too)",
    "GRU4RecCPR": "RecBole's predict is `assert False`: no sampled evaluation in RecBole either",
    "SASRecCPR": "RecBole's predict is `assert False`: no sampled evaluation in RecBole either",
}
OVERRIDES = {
    "AutoDisenSeq": {"arch_search": False, "pretrain_epochs": 0},  # fixed arch, RecBole's fit
    "S3Rec": {"train_stage": "pretrain"},  # evaluated untrained (fine-tuning needs a file)
}


class DrawnBatches(list):
    """One pass of an eval dataloader, kept: both paths score the same sampled candidates."""

    def __init__(self, loader):
        super().__init__(loader)
        self._dataset = loader._dataset


def tiny_config(model, tmp_path, **overrides):
    return Config(
        model,
        "tiny",
        config_file_list=[str(TINY_YAML)],
        config_dict={
            "data_path": str(TINY_DATA),
            "eval_protocol": "seq_pop100",
            "checkpoint_dir": str(tmp_path / "saved"),
            **OVERRIDES.get(model, {}),
            **overrides,
        },
    )


def count_predict_calls(model) -> list[int]:
    """Record the number of rows of every ``model.predict`` call from now on."""
    calls, predict = [], model.predict

    def counting(interaction):
        calls.append(len(interaction))
        return predict(interaction)

    model.predict = counting
    return calls


def evaluate_both(config, model, batches):
    """(ours, RecBole's) ``evaluate`` results and per-user top-k structs on the same batches."""
    ours = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    recbole = recbole_get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    recbole.eval_collector = RecordingCollector(config)
    results = {}
    for name, trainer in (("ours", ours), ("recbole", recbole)):
        results[name] = trainer.evaluate(batches, load_best_model=False)
        results[f"{name}_struct"] = trainer.eval_collector.last_struct
    return ours, results


def run_both_paths(model_name, tmp_path, model_class=None, **overrides):
    """Train 1 epoch (validation through our trainer), then evaluate the test set both ways."""
    config = tiny_config(model_name, tmp_path, **overrides)
    _, model, train_data, valid_data, test_data = build(config)
    if model_class is not None:
        torch.manual_seed(config["seed"])
        model = model_class(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    if config["train_stage"] != "pretrain":
        trainer.fit(train_data, valid_data, saved=False)
    else:  # S3Rec's pre-training stage is never evaluated: a validation pass instead
        trainer.evaluate(valid_data, load_best_model=False)
    batches = DrawnBatches(test_data)
    calls = count_predict_calls(model)
    ours_result = trainer.evaluate(batches, load_best_model=False)
    ours_calls = len(calls)
    ours_rows = sum(calls)
    recbole = recbole_get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    recbole.eval_collector = RecordingCollector(config)
    recbole_result = recbole.evaluate(batches, load_best_model=False)
    return {
        "trainer": trainer,
        "ours": ours_result,
        "recbole": recbole_result,
        "ours_topk": trainer.eval_collector.last_struct.get("rec.topk"),
        "recbole_topk": recbole.eval_collector.last_struct.get("rec.topk"),
        "ours_predict_rows": ours_rows,
        "recbole_predict_rows": sum(calls[ours_calls:]),
        "test_rows": sum(len(b[0]) for b in batches),
    }


def assert_encoded_once_and_equal(run):
    assert run["trainer"].encode_once is True
    assert run["trainer"].first_batch_difference < 1e-6  # x the largest |score|; allowed 1e-5
    assert run["ours"] == run["recbole"]  # every metric, exactly
    assert torch.equal(run["ours_topk"], run["recbole_topk"])  # per-user hits in the top 10
    assert run["ours_predict_rows"] == 0  # the whole test pass went through full_sort_predict
    assert run["recbole_predict_rows"] == run["test_rows"] == 40 * 101  # RecBole: every row


def test_every_sequential_model_of_the_sweep_is_covered():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep", REPO_DIR / "benchmarks/model_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    sequential = {m for kind, m in sweep.recbole_models() if kind == "sequential_recommender"}
    covered = {*ENCODE_ONCE_FAST, *ENCODE_ONCE_SLOW, *FALLBACK, *NOT_RUN}
    assert sequential | {"AutoDisenSeq"} == covered


@pytest.mark.parametrize("model", ENCODE_ONCE_FAST)
def test_encode_once_equals_recbole(model, workdir):
    assert_encoded_once_and_equal(run_both_paths(model, workdir))


@pytest.mark.slow
@pytest.mark.parametrize("model", ENCODE_ONCE_SLOW)
def test_encode_once_equals_recbole_whole_sweep(model, workdir):
    assert_encoded_once_and_equal(run_both_paths(model, workdir))


def fallback_warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "falls back to RecBole's per-row" in r.getMessage()
    ]


@pytest.mark.parametrize("model", ["CORE", "DIN", pytest.param("DIEN", marks=pytest.mark.slow)])
def test_recbole_models_that_cannot_encode_once_fall_back(model, workdir, caplog):
    run = run_both_paths(model, workdir)
    warnings = fallback_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith(f"{model}:"), warnings
    assert FALLBACK[model] in warnings[0]
    assert run["trainer"].encode_once is False
    assert run["ours"] == run["recbole"]
    assert run["ours_predict_rows"] == run["test_rows"]  # RecBole's path: predict on every row


class ItemBiasSASRec(SASRec):
    """SASRec whose ``predict`` adds an item bias that its ``full_sort_predict`` leaves out."""

    def predict(self, interaction):
        return super().predict(interaction) + 1e-3 * interaction[self.ITEM_ID].float()


def test_disagreeing_model_warns_once_and_keeps_recbole_scores(workdir, caplog):
    run = run_both_paths("SASRec", workdir, model_class=ItemBiasSASRec)
    warnings = fallback_warnings(caplog)
    assert len(warnings) == 1, warnings  # one warning for the run (validation + test passes)
    assert warnings[0].startswith("ItemBiasSASRec:") and "disagree" in warnings[0]
    assert run["trainer"].encode_once is False
    assert run["ours"] == run["recbole"]
    assert torch.equal(run["ours_topk"], run["recbole_topk"])

    # without the check, encoding once would have changed this model's results
    trainer = run["trainer"]
    config = trainer.config
    batches = DrawnBatches(build(config)[4])
    unchecked = get_trainer(config["MODEL_TYPE"], "SASRec")(config, trainer.model)
    unchecked.encode_once = True
    checked = get_trainer(config["MODEL_TYPE"], "SASRec")(config, trainer.model)
    assert unchecked.evaluate(batches, load_best_model=False) != checked.evaluate(
        batches, load_best_model=False
    )


def test_several_held_out_rows_per_user_and_small_chunks(workdir, monkeypatch):
    """A random split holds several rows per user (each with its own history), several users
    share a batch, and one history per ``full_sort_predict`` call: still RecBole's results."""
    monkeypatch.setattr(sampled_eval, "SCORE_CHUNK_BYTES", 1)  # 1 held-out row per chunk
    split = {"split": {"RS": [0.7, 0.15, 0.15]}, "order": "TO", "group_by": "user"}
    config = tiny_config(
        "SASRec", workdir, eval_args={**split, "mode": "pop100"}, eval_batch_size=2048
    )
    _, model, _, _, test_data = build(config)
    batches = DrawnBatches(test_data)
    held_out = [torch.bincount(b[2]) for b in batches]
    assert max(int(k.max()) for k in held_out) > 1 and max(len(k) for k in held_out) > 1
    ours, results = evaluate_both(config, model, batches)
    assert ours.encode_once is True
    assert results["ours"] == results["recbole"]
    assert torch.equal(results["ours_struct"]["rec.topk"], results["recbole_struct"]["rec.topk"])


def test_value_metrics_on_sampled_rows(workdir):
    """AUC/LogLoss over uni100 rows: RecBole's hook returns per-row scores, not a table."""
    split = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user"}
    config = tiny_config(
        "SASRec",
        workdir,
        metrics=["AUC", "LogLoss"],
        valid_metric="AUC",
        eval_args={**split, "mode": "uni100"},
    )
    _, model, _, _, test_data = build(config)
    ours, results = evaluate_both(config, model, DrawnBatches(test_data))
    assert ours.encode_once is True
    assert results["ours"] == results["recbole"] and set(results["ours"]) == {"auc", "logloss"}


def test_a_batch_not_laid_out_as_recbole_does_is_scored_row_by_row(workdir, caplog):
    config = tiny_config("SASRec", workdir)
    _, model, _, _, test_data = build(config)
    model.eval()
    batches = DrawnBatches(test_data)
    ours, _ = evaluate_both(config, model, batches)  # the check passes: encoding once
    assert ours.encode_once is True
    interaction, row_idx, positive_u, positive_i = batches[0]
    # swap the first user's last row with the second user's first: the users' rows interleave
    n = int((row_idx == 0).sum())
    order = torch.arange(len(row_idx))
    order[n - 1], order[n] = n, n - 1
    shuffled = (interaction[order], row_idx[order], positive_u, positive_i)
    recbole = recbole_get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    recbole.tot_item_num = ours.tot_item_num  # set by evaluate
    with torch.no_grad():
        table = ours._neg_sample_batch_eval(shuffled)[1]
        expected = recbole._neg_sample_batch_eval(shuffled)
    assert torch.equal(table, expected[1])  # RecBole's own path, bit for bit
    assert any("not laid out as RecBole's" in r.getMessage() for r in caplog.records)
    assert ours.encode_once is True  # later, well-formed batches still encode once


def test_non_sequential_models_keep_recbole_path(workdir):
    config = Config(
        "BPR",
        "tiny",
        config_file_list=[str(TINY_YAML)],
        config_dict={"data_path": str(TINY_DATA), "eval_args": {"mode": "uni100"}},
    )
    _, model, _, _, test_data = build(config)
    trainer = get_trainer(config["MODEL_TYPE"], "BPR")(config, model)
    assert trainer.encode_once is False
    batches = DrawnBatches(test_data)
    calls = count_predict_calls(model)
    trainer.evaluate(batches, load_best_model=False)
    assert sum(calls) == sum(len(b[0]) for b in batches)  # predict on every candidate row


def test_held_out_layout_rejects_other_layouts():
    positive_u = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="contiguous"):  # user 1's rows before user 0's
        held_out_layout(torch.tensor([1, 1, 0, 0]), positive_u, 4)
    with pytest.raises(ValueError, match="contiguous"):  # a user cut short (rows straddling)
        held_out_layout(torch.tensor([0, 0, 0, 1]), positive_u, 4)
    with pytest.raises(ValueError, match="whole number"):
        held_out_layout(torch.tensor([0, 0, 1]), positive_u, 3)


def test_scores_agree_is_relative_to_the_largest_score():
    inf = float("inf")
    reference = torch.tensor([[2e-6, -inf, -1e-6], [0.0, 1e-6, -inf]])
    assert scores_agree(reference * (1 + 1e-6), reference)[0]
    # 1e-9 is far below RecBole's 1e-5 rounding noise in absolute terms, but 5e-4 of this scale
    off = reference.clone()
    off[0, 0] += 1e-9
    assert scores_agree(off, reference) == (False, pytest.approx(5e-4, rel=1e-3))
    moved = reference.clone()
    moved[0, 1], moved[0, 0] = 1.0, -inf  # another set of candidates
    assert scores_agree(moved, reference) == (False, inf)
