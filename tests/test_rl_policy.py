"""LoRAPolicy (ExpCTR §4.3.1): one LM as π_φ, π_init and the frozen LC scorer; save / restore."""

import copy
import math

import pytest
import torch

from recbole_ext.config_sections import yaml_section
from recbole_ext.llm import LoRASettings
from recbole_ext.llm.local_lm import chat_prompt
from recbole_ext.rl.policy import LoRAPolicy, saved_adapters
from recbole_ext.rl.ppo import PPOConfig
from tests.test_expctr import tiny_lm

PROMPTS = [[{"role": "user", "content": f"will they like item {i}? explain"}] for i in range(4)]
PPO = yaml_section(
    PPOConfig,
    batch_size=4,
    mini_batch_size=2,
    response_length=5,
    learning_rate=1e-2,
    update_epochs=1,
)


def _policy(seed=0, lora=None, **kwargs):
    base, tokenizer = tiny_lm()
    lora = lora or yaml_section(LoRASettings, r=4, alpha=8)
    return LoRAPolicy((copy.deepcopy(base), tokenizer), lora, PPO, seed=seed, **kwargs)


def _update(policy, seed=0):
    """One rollout and one PPO step with a fixed sampling seed and minibatch order."""
    torch.manual_seed(seed)
    rollout = policy.generate(PROMPTS)
    policy.step(rollout, [1.0, -1.0, 0.5, -0.5], torch.Generator().manual_seed(seed))


def _assert_same_state(a, b):
    for name, value in a.adapters().items():
        torch.testing.assert_close(b.adapters()[name], value, rtol=0, atol=0)
    for name, value in a.value_head.state_dict().items():
        torch.testing.assert_close(b.value_head.state_dict()[name], value, rtol=0, atol=0)


def test_same_seed_same_start_and_the_callers_random_stream_is_left_alone():
    tiny_lm()  # built (and cached) with a seed of its own
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = _policy(seed=5)
    assert torch.equal(torch.rand(3), expected)  # built inside a forked RNG
    _assert_same_state(first, _policy(seed=5))
    other = _policy(seed=6).adapters()
    assert any(not torch.equal(other[n], v) for n, v in first.adapters().items() if "lora_A" in n)
    assert all(not v.any() for n, v in first.adapters().items() if "lora_B" in n)  # π_φ = π_init


def test_restore_gives_back_adapters_value_head_and_optimiser(tmp_path):
    trained = _policy()
    _update(trained)
    trained.save(tmp_path / "stage" / "generator.pt")
    fresh = _policy()
    moved = trained.adapters()
    assert any(not torch.equal(fresh.adapters()[n], v) for n, v in moved.items())
    fresh.restore(tmp_path / "stage" / "generator.pt")
    _assert_same_state(trained, fresh)
    assert saved_adapters(tmp_path / "stage" / "generator.pt").keys() == moved.keys()
    # the optimiser's moments came back too: one more identical update stays identical
    _update(trained, seed=1)
    _update(fresh, seed=1)
    _assert_same_state(trained, fresh)
    never_saved = _policy()
    _update(never_saved, seed=1)  # the same update from the initial state differs
    assert any(not torch.equal(never_saved.adapters()[n], v) for n, v in fresh.adapters().items())


def test_restore_refuses_adapters_of_other_lora_settings(tmp_path):
    _policy().save(tmp_path / "generator.pt")
    with pytest.raises(ValueError, match="other lora_\\* settings"):
        _policy(lora=yaml_section(LoRASettings, r=2, alpha=8)).restore(tmp_path / "generator.pt")
    with pytest.raises(ValueError, match="lc_score_input='logits'"):
        _policy(lc_score_input="logits")


@pytest.mark.parametrize("score_input", ["logprob", "prob"])
def test_yes_no_scores_are_eq8_of_the_frozen_base_model(score_input):
    policy = _policy(lc_temperature=2.0, lc_score_input=score_input)
    with torch.no_grad():  # adapters as after training: π_φ differs from the base model
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    scores = policy.yes_no_scores(PROMPTS[:3])
    assert policy.score_calls == 1

    base, tokenizer = tiny_lm()  # by hand: each prompt alone (no padding), the untouched base LM
    yes = tokenizer.encode("Yes", add_special_tokens=False)[0]
    no = tokenizer.encode("No", add_special_tokens=False)[0]
    expected = []
    for messages in PROMPTS[:3]:
        ids = tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(base(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
        a, b = float(logp[yes]), float(logp[no])
        if score_input == "prob":
            a, b = math.exp(a), math.exp(b)
        expected.append(math.exp(a / 2) / (math.exp(a / 2) + math.exp(b / 2)))  # Eq. 8, T = 2
    assert scores == pytest.approx(expected, abs=1e-5)
