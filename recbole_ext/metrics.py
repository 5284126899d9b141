"""Per-user metrics and significance for side-by-side tables (pure functions)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def per_user_ndcg(topk_hits: np.ndarray, pos_len: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each user from RecBole's ``rec.topk`` layout.

    Args:
        topk_hits: (U, K) bool, whether the item at rank r is a positive.
        pos_len: (U,) number of positives of each user.

    >>> per_user_ndcg(np.array([[0, 1, 0], [1, 0, 0]], bool), np.array([1, 1]), 3).round(4)
    array([0.6309, 1.    ])
    """
    hits = topk_hits[:, :k].astype(float)  # (U, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = hits @ discounts
    ideal_len = np.minimum(pos_len, k)
    idcg = np.cumsum(discounts)[np.maximum(ideal_len, 1) - 1]
    return np.where(ideal_len > 0, dcg / idcg, 0.0)


def ndcg_from_ranks(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k of each user whose one held-out item sits at 1-based rank ``ranks``.

    >>> ndcg_from_ranks(np.array([1, 2, 11]), 10).round(4)
    array([1.    , 0.6309, 0.    ])
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def metrics_from_ranks(ranks: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """HR@k, NDCG@k (RecBole's names) and MRR from each user's held-out-item rank (leave-one-out).

    >>> metrics_from_ranks(np.array([1, 3]), ks=(1,))
    {'hit@1': 0.5, 'ndcg@1': 0.5, 'mrr': 0.6667}
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no users to evaluate")
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit@{k}"] = round(float((ranks <= k).mean()), 4)
        out[f"ndcg@{k}"] = round(float(ndcg_from_ranks(ranks, k).mean()), 4)
    out["mrr"] = round(float((1.0 / ranks).mean()), 4)
    return out


def per_user_from_struct(struct, k: int = 10) -> np.ndarray | None:
    """Per-user NDCG@k from a RecBole evaluation ``DataStruct`` (``None`` for value metrics)."""
    if struct is None or "rec.topk" not in struct:
        return None
    rec = struct.get("rec.topk").numpy()  # (U, maxK + 1): hits then number of positives
    if rec.shape[1] - 1 < k:  # topk was configured below k
        return None
    return per_user_ndcg(rec[:, :-1].astype(bool), rec[:, -1].astype(int), k)


def paired_t_test(ours: np.ndarray, baseline: np.ndarray) -> float:
    """Two-sided p-value of a paired t-test (``nan`` when undefined, e.g. identical inputs).

    >>> round(paired_t_test(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.9, 1.5, 2.9, 3.2])), 4)
    0.1148
    """
    ours, baseline = np.asarray(ours, float), np.asarray(baseline, float)
    if ours.shape != baseline.shape:
        raise ValueError(f"paired samples differ in size: {ours.shape} vs {baseline.shape}")
    if len(ours) < 2 or np.allclose(ours, baseline):
        return math.nan
    return float(stats.ttest_rel(ours, baseline).pvalue)


def significance_stars(p_value: float) -> str:
    """``***`` p<0.001, ``**`` p<0.01, ``*`` p<0.05, else empty (as in the papers' tables).

    >>> [significance_stars(p) for p in (0.0001, 0.005, 0.03, 0.2, float("nan"))]
    ['***', '**', '*', '', '']
    """
    if math.isnan(p_value):
        return ""
    return "***" if p_value < 0.001 else "**" if p_value < 0.01 else "*" if p_value < 0.05 else ""


def relative_improvement(ours: float, best_baseline: float, bigger_is_better: bool = True) -> float:
    """Improvement in percent over the best baseline (sign follows "better").

    >>> relative_improvement(0.55, 0.5), relative_improvement(0.9, 1.0, bigger_is_better=False)
    (10.000000000000009, 9.999999999999998)
    """
    if best_baseline == 0:
        return math.nan
    change = (ours - best_baseline) / abs(best_baseline) * 100
    return change if bigger_is_better else -change
