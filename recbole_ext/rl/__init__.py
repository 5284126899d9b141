"""Reinforcement learning for LLM explanation generators (ExpCTR, WSDM 2025).

- :mod:`recbole_ext.rl.rewards` -- pure reward functions (Eq. 8-10, 13);
- :mod:`recbole_ext.rl.ppo` -- PPO with a value head and a KL penalty against the adapters-off
  model (Eq. 7), one readable module;
- :mod:`recbole_ext.rl.policy` -- the LoRA generator π_φ.

ExpCTR's prompts (§4.1, §4.2.2, ICL) are in :mod:`recbole_ext.llm.prompts`. Torch/transformers
load only when :mod:`~recbole_ext.rl.ppo` is imported.
"""

from .rewards import ic_reward, lc_reward, lc_score, normalize_and_clip

__all__ = [
    "ic_reward",
    "lc_reward",
    "lc_score",
    "normalize_and_clip",
]
