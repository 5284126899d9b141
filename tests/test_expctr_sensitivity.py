"""Fig. 4 search space of ExpCTR (beta, delta) is valid for the tuning harness and PPOConfig."""

import itertools

from recbole_ext.config import Config
from recbole_ext.rl.config import ppo_config
from recbole_ext.tune import SearchSpace
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
        ppo = ppo_config(config)
        assert (ppo.kl_coef, ppo.reward_clip) == (beta, delta)
