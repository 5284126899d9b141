"""ExpCTR's rewards (Eq. 8-10, 13) on hand-computed numbers, and the prompts."""

import doctest
import math

import pytest

from recbole_ext.llm import prompts
from recbole_ext.rl import rewards
from recbole_ext.rl.rewards import ic_reward, lc_reward, lc_score, normalize_and_clip


def test_doctests():
    for module in (rewards, prompts):
        assert doctest.testmod(module).failed == 0


def test_eq8_softmax_over_yes_no_with_temperature():
    # log-probs: Yes ln 0.6, No ln 0.2 -> softmax = 0.6 / 0.8 = 0.75 at T = 1
    assert lc_score([math.log(0.6)], [math.log(0.2)]) == pytest.approx([0.75])
    # T = 2: exp(ln .6 / 2) / (exp(ln .6 / 2) + exp(ln .2 / 2)) = sqrt(.6) / (sqrt(.6) + sqrt(.2))
    expected = math.sqrt(0.6) / (math.sqrt(0.6) + math.sqrt(0.2))
    assert lc_score([math.log(0.6)], [math.log(0.2)], temperature=2.0) == pytest.approx([expected])
    # the literal-probability reading of Eq. 8: exp(.6) / (exp(.6) + exp(.2))
    assert lc_score([0.6], [0.2]) == pytest.approx(
        [math.exp(0.6) / (math.exp(0.6) + math.exp(0.2))]
    )
    # extreme scores neither overflow nor give nan
    assert lc_score([1000.0, -1000.0], [-1000.0, 1000.0]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="positive"):
        lc_score([0.0], [0.0], temperature=0.0)


def test_eq9_lc_reward():
    assert lc_reward([1, 0, 1, 0], [0.75, 0.75, 0.1, 0.0]) == pytest.approx([0.75, 0.25, 0.1, 1.0])


def test_eq10_normalisation_and_clipping():
    # R = [0.2, 0.4, 0.6, 1.0]: mean 0.55, population std sqrt(0.0875) = 0.29580...
    raw = [0.2, 0.4, 0.6, 1.0]
    std = math.sqrt(((0.35**2) + (0.15**2) + (0.05**2) + (0.45**2)) / 4)
    z = [(r - 0.55) / std for r in raw]  # [-1.1832, -0.5071, 0.1690, 1.5213]
    assert normalize_and_clip(raw, delta=5.0) == pytest.approx(z)
    assert normalize_and_clip(raw, delta=1.0) == pytest.approx([-1.0, z[1], z[2], 1.0])
    assert normalize_and_clip(raw, delta=0.5) == pytest.approx([-0.5, -0.5, z[2], 0.5])


def test_eq10_zero_std_batch_gives_zero_rewards():
    assert normalize_and_clip([0.7, 0.7, 0.7], delta=1.0) == [0.0, 0.0, 0.0]
    assert normalize_and_clip([0.3], delta=1.0) == [0.0]
    assert normalize_and_clip([], delta=1.0) == []
    with pytest.raises(ValueError, match="positive"):
        normalize_and_clip([1.0, 2.0], delta=0.0)


def test_eq13_ic_reward():
    # y=1, s=.8, s~=.6: 1 - .2 + .2 = 1.0 ; y=0, s=.3, s~=.4: 1 - .3 + .1 = .8 ; y=1, s=s~=.5: .5
    assert ic_reward([1, 0, 1], [0.8, 0.3, 0.5], [0.6, 0.4, 0.5]) == pytest.approx([1.0, 0.8, 0.5])


def test_prompts_follow_the_paper_and_the_domain():
    domain = prompts.ExpCTRPromptWords.named("movie")
    text = prompts.expctr_explanation_messages(
        ["A (1995)", "B (1996)"], ["C (1990)"], "T (1997)", domain
    )
    content = text[0]["content"]
    assert 'The liked movies: "A (1995)", "B (1996)"\nThe disliked movies: "C (1990)"' in content
    assert content.endswith("The answer should be within one sentence.")
    ctr = prompts.expctr_ctr_messages("  They like it. ", "T (1997)", domain)[0]["content"]
    assert "The user thought: They like it.\n" in ctr and 'answering "Yes." or "No."' in ctr
    with pytest.raises(ValueError, match="choose one of"):
        prompts.ExpCTRPromptWords.named("music")
