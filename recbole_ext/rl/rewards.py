"""ExpCTR's reward functions (Yu, Zhang, Chen, "Explainable CTR Prediction via LLM Reasoning",
WSDM 2025, §4.2.2-4.2.3), as plain functions returning ``list[float]``.

- :func:`lc_score` -- Eq. 8: s^u = softmax over the first-token "Yes"/"No" scores with temperature
  T, i.e. ``exp(a/T) / (exp(a/T) + exp(b/T)) = sigmoid((a - b)/T)``.
- :func:`lc_reward` -- Eq. 9: R_LC = 1 - |y - s^u|.
- :func:`ic_reward` -- Eq. 13: R_IC = 1 - |y - s^r| + |s^r - s~^r|, where s~^r is the CTR model's
  score with the explanation vector set to zero.
- :func:`normalize_and_clip` -- Eq. 10 (and R_IC^norm): (R - mean) / std over the batch, clipped
  to [-delta, delta]. A batch whose rewards are all equal (std 0) carries no preference between
  its samples: every normalised reward is 0, never a division by zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import expit


def lc_score(
    yes_scores: Sequence[float], no_scores: Sequence[float], temperature: float = 1.0
) -> list[float]:
    """Eq. 8: the LLM's CTR score from its first-token "Yes" and "No" scores.

    >>> lc_score([0.0, math.log(3.0)], [0.0, 0.0])
    [0.5, 0.75]
    >>> [round(s, 4) for s in lc_score([math.log(3.0)], [0.0], temperature=2.0)]  # sqrt(3)/(sqrt(3)+1)
    [0.634]
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: set a positive softmax temperature T.")
    if len(yes_scores) != len(no_scores):
        raise ValueError(f"{len(yes_scores)} Yes scores but {len(no_scores)} No scores")
    z = (np.asarray(yes_scores, float) - np.asarray(no_scores, float)) / temperature
    return expit(z).tolist()  # a stable sigmoid: no overflow for large |z|


def lc_reward(labels: Sequence[float], scores: Sequence[float]) -> list[float]:
    """Eq. 9: ``R_LC = 1 - |y - s^u|``.

    >>> lc_reward([1, 0, 1], [0.75, 0.75, 1.0])
    [0.75, 0.25, 1.0]
    """
    return [1.0 - abs(float(y) - float(s)) for y, s in zip(labels, scores, strict=True)]


def ic_reward(
    labels: Sequence[float], scores: Sequence[float], scores_without: Sequence[float]
) -> list[float]:
    """Eq. 13: ``R_IC = 1 - |y - s^r| + |s^r - s~^r|`` (``scores_without`` = s~^r, zero z).

    >>> ic_reward([1, 0], [0.75, 0.5], [0.5, 0.5])
    [1.0, 0.5]
    """
    return [
        1.0 - abs(float(y) - float(s)) + abs(float(s) - float(s0))
        for y, s, s0 in zip(labels, scores, scores_without, strict=True)
    ]


def normalize_and_clip(rewards: Sequence[float], delta: float, eps: float = 1e-8) -> list[float]:
    """Eq. 10: ``clip((R - mean(R)) / std(R), -delta, delta)`` over the batch.

    ``std`` is the population standard deviation of the batch (``numpy.std``); a batch with
    ``std <= eps`` (all rewards equal, or a single sample) gives zeros.

    >>> normalize_and_clip([1.0, 3.0], delta=5.0)   # mean 2, std 1
    [-1.0, 1.0]
    >>> normalize_and_clip([0.0, 0.0, 0.0, 4.0], delta=1.0)  # z = -0.577.., 1.732.. -> clipped
    [-0.5773502691896258, -0.5773502691896258, -0.5773502691896258, 1.0]
    >>> normalize_and_clip([0.7, 0.7], delta=1.0)
    [0.0, 0.0]
    """
    if delta <= 0:
        raise ValueError(f"delta={delta}: set a positive reward clip bound.")
    if not rewards:
        return []
    n = len(rewards)
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    if std <= eps:
        return [0.0] * n
    return [max(-delta, min(delta, (r - mean) / std)) for r in rewards]
