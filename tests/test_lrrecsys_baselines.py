"""LR-Recsys's Table-2 baselines: RecBole's models on ``--eval_protocol=lrrecsys`` see exactly
LRRecsys's train / valid / test rows and labels, and read ids, the item history and the time
context only; the table script's metric conversion and aggregation."""

import numpy as np
import pytest
from lrrecsys_tables import (
    ID_FEATURES,
    constant_predictor_metrics,
    hanley_mcneil_se,
    mean_std,
    pivot_markdown,
    row_parts,
    suite_of,
    table_metrics,
)

from recbole_ext.benchmark import BenchmarkSpec, chosen_runs
from recbole_ext.config import Config
from recbole_ext.data.lrrecsys_dataset import HOUR, SAMPLE_ID, WEEKDAY
from recbole_ext.data.lrrecsys_samples import rescale_ratings
from recbole_ext.quick_start import build
from tests.conftest import TINY_DATA, TINY_YAML

SUBSET = {
    "MAX_ITEM_LIST_LENGTH": 5,  # tiny.yaml says 20
    "lrrecsys_max_users": 12,
    "lrrecsys_max_user_interactions": 25,
    "lrrecsys_train_fraction": 0.5,  # drawn with `seed`: the same half for every model
    "seed": 7,
}
REGRESSION = {"lrrecsys_task": "regression", "metrics": ["RMSE", "MAE"], "valid_metric": "RMSE"}


def built(model, workdir, **overrides):
    config = {
        "data_path": str(TINY_DATA),
        "checkpoint_dir": str(workdir / "saved"),
        **SUBSET,
        **overrides,
    }
    if model != "LRRecsys":
        config["eval_protocol"] = "lrrecsys"
    return build(Config(model, "tiny", [str(TINY_YAML)], config))


def rows(dataloader, label_field):
    """{(user token, item token, timestamp): (rating, label)} of every row a dataloader yields."""
    dataset = dataloader._dataset
    users = dataset.field2id_token[dataset.uid_field]
    items = dataset.field2id_token[dataset.iid_field]
    out = {}
    for batch in dataloader:
        batch = batch[0] if isinstance(batch, tuple) else batch  # eval loaders: (inter, ...)
        for u, i, t, r, y in zip(
            batch[dataset.uid_field].tolist(),
            batch[dataset.iid_field].tolist(),
            batch[dataset.time_field].tolist(),
            batch["rating"].tolist(),
            batch[label_field].tolist(),
            strict=True,
        ):
            out[(users[u], items[i], int(t))] = (r, y)
    return out


def split_rows(model, workdir, label_field="label", **overrides):
    _, model_obj, train, valid, test = built(model, workdir, **overrides)
    return model_obj, [rows(loader, label_field) for loader in (train, valid, test)]


@pytest.mark.parametrize("baseline", ["DeepFM", "DIN"])
def test_baselines_see_the_same_rows_and_labels_as_lrrecsys(workdir, baseline):
    _, reference = split_rows("LRRecsys", workdir)
    # the table script's baselines load no side features; the rows must not depend on that
    _, same = split_rows(baseline, workdir, **ID_FEATURES)
    _, with_side = split_rows(baseline, workdir)
    sizes = [len(part) for part in reference]
    assert sizes[0] > 0 and sizes[1] > 0 and sizes[2] > 0
    for ours, theirs, side in zip(reference, same, with_side, strict=True):
        assert theirs == ours  # same (user, item, time) keys, ratings and 0/1 labels
        assert side.keys() == ours.keys()
    for part in reference:
        assert all(label == float(rating >= 4) for rating, label in part.values())
    # another seed draws another half of the training rows, for every model alike
    _, reseeded = split_rows(baseline, workdir, seed=8, **ID_FEATURES)
    assert reseeded[2] == reference[2] and reseeded[0] != reference[0]


def test_regression_baselines_regress_the_rescaled_rating_of_the_same_rows(workdir):
    _, reference = split_rows("LRRecsys", workdir, "rating", LABEL_FIELD="rating", **REGRESSION)
    _, theirs = split_rows("FM", workdir, **REGRESSION, **ID_FEATURES)
    for ours, part in zip(reference, theirs, strict=True):
        assert part.keys() == ours.keys()
        for key, (rating, label) in part.items():
            assert ours[key][0] == rating
            assert label == pytest.approx((rating - 1) / 4)


def test_context_models_read_ids_history_and_time_context_only(workdir):
    model, _ = split_rows("DeepFM", workdir, **ID_FEATURES)
    assert model.token_field_names == ["user_id", "item_id", HOUR, WEEKDAY]
    assert model.token_field_dims[2:] == [24, 7]
    assert model.token_seq_field_names == ["item_id_list"]  # the 5-item history, mean-pooled
    assert model.token_seq_field_dims == [model.token_field_dims[1]]  # item vocabulary
    assert model.float_field_names == [] and model.float_seq_field_names == []
    dataset, din, *_ = built("DIN", workdir, **ID_FEATURES)
    assert din.max_seq_length == 5 and din.ITEM_SEQ == "item_id_list"
    # sample_id (the explanation lookup) is bookkeeping, never a feature
    assert SAMPLE_ID not in dataset.fields() and SAMPLE_ID in dataset.field2type


def test_rescale_ratings_and_table_metrics_on_hand_values():
    np.testing.assert_allclose(rescale_ratings(np.array([1, 2, 4, 5]), 1, 5), [0, 0.25, 0.75, 1])
    with pytest.raises(ValueError, match="min < max"):
        rescale_ratings(np.array([1]), 5, 1)
    # a baseline's RMSE 0.3 on [0, 1] is 1.2 stars; LRRecsys's 1.2 stars is 0.3 normalised
    baseline = table_metrics({"rmse": 0.3, "mae": 0.25}, "regression", label_is_rating=False)
    ours = table_metrics({"rmse": 1.2, "mae": 1.0}, "regression", label_is_rating=True)
    for metrics in (baseline, ours):
        assert metrics == pytest.approx(
            {"rmse": 1.2, "mae": 1.0, "rmse_norm": 0.3, "mae_norm": 0.25}
        )
    assert table_metrics({"auc": 0.7, "logloss": 0.6}, "classification", True) == {
        "auc": 0.7,
        "logloss": 0.6,
    }
    # constant predictor: training mean 4 and share of high ratings 0.75, test ratings 5 and 2
    constant = constant_predictor_metrics(np.array([5, 3, 4, 4]), np.array([5, 2]))
    assert constant == pytest.approx(
        {
            "auc": 0.5,
            "logloss": -(np.log(0.75) + np.log(0.25)) / 2,
            "rmse": np.sqrt((1 + 4) / 2),
            "mae": 1.5,
            "rmse_norm": np.sqrt(2.5) / 4,
            "mae_norm": 1.5 / 4,
        }
    )
    # Hanley-McNeil: one positive and one negative at AUC 0.5 -> variance 0.25 / 1
    assert hanley_mcneil_se(0.5, 1, 1) == pytest.approx(0.5)
    assert hanley_mcneil_se(0.65, 81, 39) == pytest.approx(0.0514, abs=1e-4)
    assert hanley_mcneil_se(0.65, 810, 390) < hanley_mcneil_se(0.65, 81, 39) / 3
    assert mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000"  # sample std
    assert mean_std([0.5]) == "0.500 ± 0.000"


def test_learning_rate_is_chosen_on_validation_not_test():
    def record(task, lr, seed, valid, test):
        metric = "auc" if task == "classification" else "rmse"
        return {  # a harness result row of the Table-2 suite's learning-rate grid
            "model": f"FM {task}",
            "task": task,
            "learning_rate": lr,
            "seed": seed,
            "valid_metric": metric,
            "valid_result": {metric: valid},
            "test_result": {metric: test},
        }

    records = [
        # classification: lr 0.01 has the higher mean validation AUC (0.7 vs 0.65), worse test
        record("classification", 0.01, 1, 0.8, 0.5),
        record("classification", 0.01, 2, 0.6, 0.5),
        record("classification", 0.001, 1, 0.65, 0.9),
        record("classification", 0.001, 2, 0.65, 0.9),
        # regression: lower validation RMSE wins (0.9 < 1.0)
        record("regression", 0.01, 1, 1.0, 0.1),
        record("regression", 0.001, 1, 0.9, 2.0),
    ]
    spec = BenchmarkSpec(
        models=["FM classification", "FM regression"], seeds=[1, 2], learning_rates=[0.01, 0.001]
    )
    chosen, _ = chosen_runs(spec, records)
    assert sorted((r["task"], r["learning_rate"], r["seed"]) for r in chosen) == [
        ("classification", 0.01, 1),
        ("classification", 0.01, 2),
        ("regression", 0.001, 1),
    ]


def test_table_configs_put_every_model_on_the_protocol():
    efficiency, table2 = suite_of("efficiency"), suite_of("table2")
    assert table2.learning_rates_of("DIN regression") == [0.01, 0.001]
    config = table2.run_config("DIN regression", 3, 0.001)
    assert table2.model_of("DIN regression") == "DIN" and config["eval_protocol"] == "lrrecsys"
    assert config["learning_rate"] == 0.001
    assert config["lrrecsys_task"] == "regression" and config["seed"] == 3
    assert config["load_col"] == ID_FEATURES["load_col"]
    config = efficiency.run_config("DIN regression 0.25", 3)
    assert config["lrrecsys_train_fraction"] == 0.25 and "LABEL_FIELD" not in config
    assert row_parts(efficiency, "DIN regression 0.25") == ("DIN", "regression", 0.25)
    config = efficiency.config_of("free regression")
    assert (
        efficiency.model_of("free regression") == "LRRecsys" and config["LABEL_FIELD"] == "rating"
    )
    assert config["lrrecsys_explanation_source"] == "free"
    assert "lrrecsys_train_fraction" not in config and "eval_protocol" not in config
    # every suite: the committed store's time order, and only rows named after their config
    for spec in (efficiency, table2, suite_of("ablation")):
        assert spec.overrides["time_order"] == "recbole" and spec.seeds == [1, 2, 3]
        assert all(row_parts(spec, name) for name in spec.models)


def test_efficiency_pivot_puts_each_training_share_in_its_column():
    rows = [
        {"variant": "FM", "train_fraction": 1.0, "cells": {"auc": "0.650 ± 0.010"}},
        {"variant": "FM", "train_fraction": 0.25, "cells": {"auc": "0.600 ± 0.020"}},
        {"variant": "free", "train_fraction": 0.25, "cells": {"auc": "0.550 ± 0.030"}},
    ]
    lines = pivot_markdown(rows, "auc").splitlines()
    assert lines[0] == "| AUC ↑ | 25% train | 100% train |"
    assert lines[2] == "| FM (RecBole) | 0.600 ± 0.020 | 0.650 ± 0.010 |"
    assert lines[3] == "| Ablation 1: free learnable vectors | 0.550 ± 0.030 |  |"
