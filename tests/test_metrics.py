"""Metrics and significance helpers: doctests (hand-computed) and agreement with RecBole."""

import doctest

import numpy as np
from recbole.evaluator.metrics import NDCG

import recbole_ext.benchmark
import recbole_ext.compat
import recbole_ext.config
import recbole_ext.metrics
from recbole_ext.metrics import paired_t_test, per_user_ndcg


def test_doctests_pass():
    for module in (recbole_ext.metrics, recbole_ext.config, recbole_ext.benchmark):
        failed, attempted = doctest.testmod(module)
        assert attempted > 0 and failed == 0, module.__name__


def test_per_user_ndcg_equals_recbole_ndcg():
    recbole_ext.compat.apply_numpy_compatibility()  # RecBole's NDCG uses np.float
    rng = np.random.default_rng(0)
    hits = rng.random((50, 10)) < 0.15
    pos_len = rng.integers(1, 4, size=50)
    ndcg = NDCG({"topk": [10], "metric_decimal_place": 4})
    expected = ndcg.metric_info(hits, pos_len)[:, 9]  # RecBole's per-user NDCG@10
    np.testing.assert_allclose(per_user_ndcg(hits, pos_len, 10), expected)


def test_paired_t_test_detects_a_consistent_gain():
    rng = np.random.default_rng(1)
    base = rng.random(200)
    assert paired_t_test(base + 0.05 + rng.normal(0, 0.01, 200), base) < 1e-10
    assert np.isnan(paired_t_test(base, base))
