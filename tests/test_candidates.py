"""Sampled-evaluation candidates: distinct popularity negatives (the paper's §5.1) or RecBole's draw.

``eval_neg_sampling: distinct`` (seq_pop100): 100 distinct negatives per target, none in the user's
history or equal to the target, drawn by RecBole's popularity with the run's seed and nothing else;
``recbole``: RecBole's own draw. Candidate files record which, and refuse the other.
"""

import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from recbole.data import data_preparation
from recbole.sampler import RepeatableSampler
from scipy.stats import chisquare

from recbole_ext.config import Config
from recbole_ext.data.candidates import (
    FixedCandidateSampler,
    draw_distinct_negatives,
    fix_candidates,
    sampling_weights,
)
from recbole_ext.quick_start import build
from recbole_ext.utils import create_dataset
from tests.conftest import TINY_DATA, TINY_YAML


def _loaders(**overrides):
    config = Config(
        "SASRec",
        "tiny",
        [str(TINY_YAML)],
        {"data_path": str(TINY_DATA), "eval_protocol": "seq_pop100", **overrides},
    )
    _, valid, test = data_preparation(config, create_dataset(config))
    return valid, test


def _lists(loader) -> dict[str, tuple[str, list[str]]]:
    """{user token: (target token, negative tokens)} as the loader serves them to a model."""
    dataset = loader._dataset
    out = {}
    for data, row_user, _, _ in loader:
        users = dataset.id2token(dataset.uid_field, data[dataset.uid_field].numpy())
        items = dataset.id2token(dataset.iid_field, data[dataset.iid_field].numpy())
        for k in np.unique(row_user.numpy()):
            rows = np.flatnonzero(row_user.numpy() == k)  # target first, then its negatives
            (user,) = set(users[rows])
            out[user] = (items[rows[0]], list(items[rows[1:]]))
    return out


def _raw_histories() -> dict[str, set[str]]:
    frame = pd.read_csv(TINY_DATA / "tiny" / "tiny.inter", sep="\t", dtype=str)
    return frame.groupby("user_id:token")["item_id:token"].agg(set).to_dict()


# --------------------------------------------------------------------------------------------
# The draw itself (pure)
# --------------------------------------------------------------------------------------------
def test_distinct_draw_excludes_and_never_repeats():
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 5, size=40).astype(float)  # some items have weight 0
    excluded = sp.random(300, 40, density=0.3, format="csr", random_state=1, dtype=bool)
    drawn = draw_distinct_negatives(weights, excluded, 10, np.random.default_rng(2))
    assert drawn.shape == (300, 10)
    for row, items in zip(excluded.toarray(), drawn, strict=True):
        assert len(set(items)) == 10
        assert not row[items].any() and (weights[items] > 0).all()


def test_distinct_draw_follows_the_weights():
    """First draw ∝ weight; pairs as successive sampling without replacement: P({a, b}) =
    w_a/W * w_b/(W - w_a) + w_b/W * w_a/(W - w_b). Item 0 (weight 0) and item 6 (excluded) never."""
    weights = np.array([0.0, 1, 2, 3, 4, 5, 10])
    n = 20000
    excluded = sp.csr_matrix(
        (np.ones(n, dtype=bool), (np.arange(n), np.full(n, 6))), shape=(n, 7), dtype=bool
    )
    rng = np.random.default_rng(2020)
    singles = draw_distinct_negatives(weights, excluded, 1, rng)[:, 0]
    observed = np.bincount(singles, minlength=7)
    assert observed[0] == observed[6] == 0
    w = weights[1:6]
    assert chisquare(observed[1:6], w / w.sum() * n).pvalue > 0.01
    assert chisquare(observed[1:6], np.full(5, n / 5)).pvalue < 1e-6  # the test has power

    pairs = draw_distinct_negatives(weights, excluded, 2, rng)
    items = range(1, 6)
    total = w.sum()
    expected = {
        (a, b): weights[a] / total * weights[b] / (total - weights[a])
        + weights[b] / total * weights[a] / (total - weights[b])
        for a, b in itertools.combinations(items, 2)
    }
    counts = {key: 0 for key in expected}
    for a, b in pairs:
        counts[(min(a, b), max(a, b))] += 1
    keys = sorted(expected)
    probabilities = np.array([expected[k] for k in keys])
    assert probabilities.sum() == pytest.approx(1.0)
    assert chisquare([counts[k] for k in keys], probabilities * n).pvalue > 0.01


def test_distinct_draw_is_seeded_and_refuses_too_few_items():
    weights = np.arange(20.0)
    excluded = sp.csr_matrix((5, 20), dtype=bool)
    first = draw_distinct_negatives(weights, excluded, 8, np.random.default_rng(7))
    again = draw_distinct_negatives(weights, excluded, 8, np.random.default_rng(7))
    other = draw_distinct_negatives(weights, excluded, 8, np.random.default_rng(8))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    with pytest.raises(ValueError, match="row 0 has 19 items to draw 20"):
        draw_distinct_negatives(weights, excluded, 20, np.random.default_rng(7))


def test_weights_are_recboles_popularity_distribution():
    """The distinct draw uses the distribution RecBole's alias table samples from."""
    valid, _ = _loaders()
    sampler = valid._sampler
    assert isinstance(sampler, RepeatableSampler) and sampler.distribution == "popularity"
    keys = list(sampler.prob)
    recbole = np.zeros(sampler.item_num)
    for i in keys:  # P(i) = (min(p_i, 1) + sum of 1 - p_j over the j aliased to i) / K
        recbole[i] += min(sampler.prob[i], 1.0) / len(keys)
        if sampler.prob[i] < 1 and sampler.alias[i] != -1:
            recbole[sampler.alias[i]] += (1 - sampler.prob[i]) / len(keys)
    weights = sampling_weights(sampler)
    np.testing.assert_allclose(weights / weights.sum(), recbole, atol=1e-12)
    assert weights[0] == 0 and (weights > 0).sum() == len(keys)


# --------------------------------------------------------------------------------------------
# seq_pop100 on the tiny dataset
# --------------------------------------------------------------------------------------------
def test_seq_pop100_ranks_100_distinct_negatives_outside_the_history(workdir):
    valid, test = _loaders()
    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    digest = fix_candidates(None, 2020, valid=valid, test=test)  # no file: drawn in memory
    assert digest is not None
    # the global RNGs are untouched (a model's initialisation draws from them next)
    assert all(a is b or np.array_equal(a, b) for a, b in zip(np_state, np.random.get_state()))
    assert torch.equal(torch_state, torch.get_rng_state())
    history = _raw_histories()
    for loader in (valid, test):
        lists = _lists(loader)
        assert len(lists) == 40
        for user, (target, negatives) in lists.items():
            assert len(negatives) == len(set(negatives)) == 100
            assert target not in negatives and not set(negatives) & history[user]
    # the same seed draws the same lists, whatever the global RNG state; another seed others
    np.random.seed(1)
    again = fix_candidates(None, 2020, **dict(zip(("valid", "test"), _loaders(), strict=True)))
    other = fix_candidates(None, 2021, **dict(zip(("valid", "test"), _loaders(), strict=True)))
    assert again == digest != other


def test_build_serves_distinct_candidates_without_a_file(workdir):
    config = Config(
        "SASRec",
        "tiny",
        [str(TINY_YAML)],
        {"data_path": str(TINY_DATA), "eval_protocol": "seq_pop100"},
    )
    assert config["eval_neg_sampling"] == "distinct" and config["eval_candidates_file"] is None
    _, _, _, valid, test = build(config)
    assert isinstance(test._sampler, FixedCandidateSampler) and config["eval_candidates"]
    first, second = _lists(test), _lists(test)  # the same lists at every evaluation
    assert first == second


def test_recbole_option_reproduces_recboles_own_draw(workdir):
    valid, test = _loaders(eval_neg_sampling="recbole")
    assert fix_candidates(None, 2020, valid=valid, test=test) is None  # RecBole's sampler stays
    assert isinstance(valid._sampler, RepeatableSampler)

    fixed = _loaders(eval_neg_sampling="recbole")
    fix_candidates(workdir / "c.npz", 2020, valid=fixed[0], test=fixed[1])
    plain = _loaders(eval_neg_sampling="recbole")
    for phase in (0, 1):
        np.random.seed(2020)  # RecBole's loader, first pass after seeding
        expected = [batch[0]["item_id"] for batch in plain[phase]]
        np.random.seed(7)
        served = [batch[0]["item_id"] for batch in fixed[phase]]
        assert all(torch.equal(a, b) for a, b in zip(expected, served, strict=True))
    with_replacement = [len(set(n)) for _, n in _lists(fixed[1]).values()]
    assert min(with_replacement) < 100  # RecBole's draw repeats negatives


@pytest.mark.parametrize("made, asked", [("recbole", "distinct"), ("distinct", "recbole")])
def test_a_file_drawn_one_way_is_refused_by_the_other(workdir, made, asked):
    path = workdir / "c.npz"
    valid, test = _loaders(eval_neg_sampling=made)
    fix_candidates(path, 2020, valid=valid, test=test)
    valid, test = _loaders(eval_neg_sampling=asked)
    with pytest.raises(ValueError, match=f"eval_neg_sampling={made}.*--eval_neg_sampling={made}"):
        fix_candidates(path, 2020, valid=valid, test=test)


def test_files_without_a_record_count_as_recboles(workdir):
    """Candidate files written before the record (all drawn by RecBole's sampler)."""
    path = workdir / "c.npz"
    valid, test = _loaders(eval_neg_sampling="recbole")
    digest = fix_candidates(path, 2020, valid=valid, test=test)
    stored = dict(np.load(path))
    del stored["eval_neg_sampling"]
    np.savez_compressed(path, **stored)
    valid, test = _loaders(eval_neg_sampling="recbole")
    assert fix_candidates(path, 2020, valid=valid, test=test) == digest
    valid, test = _loaders()
    with pytest.raises(ValueError, match="eval_neg_sampling=recbole .*delete the file"):
        fix_candidates(path, 2020, valid=valid, test=test)


def test_bad_settings_are_refused(workdir):
    valid, test = _loaders(eval_neg_sampling="unique")
    with pytest.raises(ValueError, match="eval_neg_sampling='unique'.*distinct"):
        fix_candidates(None, 2020, valid=valid, test=test)
    mode = {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "pop600"}
    valid, test = _loaders(eval_args=mode)  # tiny has 577 items
    with pytest.raises(ValueError, match="600 distinct negatives.*eval_neg_sampling=recbole"):
        fix_candidates(None, 2020, valid=valid, test=test)
