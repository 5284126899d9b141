"""Mean ± std over seeds and markdown tables (recbole_ext.tables): hand-computed values, and the
committed result tables regenerating byte for byte from the results they were written from."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from recbole_ext.benchmark import BenchmarkSpec, read_rows, summarise, write_tables
from recbole_ext.tables import describe, markdown_table, mean_std, mean_std_cell
from tests.conftest import REPO_DIR

RESULTS = REPO_DIR / "benchmarks" / "results"


def test_mean_and_sample_std_on_hand_values():
    # [1, 2, 4]: mean 7/3; squared deviations 16/9, 1/9, 25/9 -> sample variance 42/18 = 7/3
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(7 / 3))
    assert mean_std_cell(mean, std) == "2.3333 ± 1.5275"
    assert mean_std_cell(mean, std, digits=3) == "2.333 ± 1.528"
    assert mean_std([1.0, float("nan"), 4.0]) == (2.5, pytest.approx(math.sqrt(4.5)))  # NaN out
    assert mean_std([0.25]) == (0.25, 0.0)  # one seed: no spread
    assert all(math.isnan(v) for v in mean_std([]))
    assert mean_std_cell(0.25, 0.0, n=1) == "0.2500" and mean_std_cell(math.nan, 1.0) == "-"
    frame = pd.DataFrame({"auc": [0.5, 0.7], "rmse": [1.0, math.nan]})
    assert describe(frame) == {
        "auc": (0.6, pytest.approx(math.sqrt(0.02)), 2),
        "rmse": (1.0, 0.0, 1),
    }


def test_summary_equals_numpy_to_the_last_bit_on_committed_runs():
    """pandas' mean / std (ddof 1) give numpy's floats: table.csv keeps its digits."""
    rows = read_rows(RESULTS / "seq_ml100k_1ep" / "results.jsonl")
    summary = summarise(rows, ["SASRec", "GRU4Rec", "BERT4Rec"])
    for model, metrics in summary.items():
        for metric, (mean, std, n) in metrics.items():
            values = [
                r["test_result"].get(metric, r.get(metric)) for r in rows if r["model"] == model
            ]
            assert (mean, std, n) == (np.mean(values), np.std(values, ddof=1), 3)


def test_markdown_table_writes_cells_as_given_without_padding():
    text = markdown_table(
        [["LR-Recsys (AE explanations, no profiles)", "0.10", None], ["FM", "1.0e-03", 7]],
        ["", "AUC ↑", "n"],
    )
    assert text == (
        "|  | AUC ↑ | n |\n"
        "|---|---|---|\n"
        "| LR-Recsys (AE explanations, no profiles) | 0.10 |  |\n"
        "| FM | 1.0e-03 | 7 |"
    )
    assert markdown_table([], ["a", "b"]) == "| a | b |\n|---|---|"
    with pytest.raises(ValueError, match="a table row has 1 cells for 2 columns"):
        markdown_table([["x"]], ["a", "b"])


@pytest.mark.parametrize(
    "folder, models, ours",
    [
        ("seq_ml100k_1ep", ["SASRec", "GRU4Rec", "BERT4Rec"], None),
        (
            "autodisenseq_ml100k",
            [
                "SASRec",
                "GRU4Rec",
                "AutoDisenSeq (1) S2I, no disentanglement, no search",
                "AutoDisenSeq (2) disentangled Seq2Seq, fixed architecture",
            ],
            "ours",
        ),
    ],
)
def test_committed_harness_tables_regenerate_from_their_results(tmp_path, folder, models, ours):
    committed = RESULTS / folder
    shutil.copy(committed / "results.jsonl", tmp_path)
    spec = BenchmarkSpec(
        models=models,
        seeds=[2020, 2021, 2022],
        output=tmp_path,
        ours=[m for m in models if m.startswith("AutoDisenSeq")] if ours else None,
    )
    write_tables(spec, read_rows(tmp_path / "results.jsonl"))
    for name in ("table.md", "table.csv"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.parametrize("table", ["table2", "ablation", "efficiency"])
def test_committed_lrrecsys_tables_regenerate_from_their_seeds(table):
    from lrrecsys_tables import mean_std as cell
    from lrrecsys_tables import render, suite_of

    rows = json.loads((RESULTS / "lrrecsys" / f"{table}.json").read_text())["rows"]
    for row in rows:
        if row["variant"] != "constant":
            assert {k: cell(v) for k, v in row["values"].items()} == row["cells"]
    spec = suite_of(table)
    with_lr = any(spec.learning_rates_of(m) != [None] for m in spec.models)
    assert with_lr == (table == "table2")
    assert render(table, rows, with_lr) == (RESULTS / "lrrecsys" / f"{table}.md").read_text()


def test_committed_model_sweep_and_rerank_tables_regenerate(tmp_path):
    from model_sweep import write_table
    from rerank_table import table

    write_table(json.loads((RESULTS / "model_sweep.json").read_text()), tmp_path / "sweep")
    assert (tmp_path / "sweep.md").read_text() == (RESULTS / "model_sweep.md").read_text()
    rerank = RESULTS / "rerank_ml100k"
    files = [rerank / "llm_200users.json", rerank / "llm_top5_200users.json"]
    assert table(files) + "\n" == (rerank / "table_200users.md").read_text()
    assert table([rerank / "llm.json"]) + "\n" == (rerank / "table_full.md").read_text()
