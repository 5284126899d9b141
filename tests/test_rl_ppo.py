"""PPO pieces equal plain loops; a PPO step moves only LoRA and the value head; KL starts at 0."""

import copy
import functools

import pytest
import torch

from recbole_ext.config_sections import yaml_section
from recbole_ext.llm import LoRASettings
from recbole_ext.llm.local_lm import add_lora, reference_mode
from recbole_ext.rl.ppo import (
    PPOConfig,
    ValueHead,
    forward_logprobs,
    gae,
    generate_responses,
    kl_penalised_rewards,
    make_optimizer,
    masked_whiten,
    policy_loss,
    ppo_step,
    response_mask,
    value_loss,
)


def _batch(seed=0, batch=3, length=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float)
    return (
        torch.randn(batch, length, generator=g),
        torch.randn(batch, length, generator=g),
        torch.randn(batch, length, generator=g),
        mask[:batch, :length],
    )


def test_gae_equals_a_plain_loop():
    rewards, values, _, mask = _batch()
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b in range(3):
        n = int(mask[b].sum())
        for t in range(5):
            if t >= n:
                assert advantages[b, t] == 0
                continue
            expected = 0.0
            for k in range(t, n):  # A_t = sum_k (gamma lam)^(k-t) delta_k, V after the end = 0
                next_value = values[b, k + 1].item() if k + 1 < n else 0.0
                delta = rewards[b, k].item() + gamma * next_value - values[b, k].item()
                expected += (gamma * lam) ** (k - t) * delta
            assert advantages[b, t].item() == pytest.approx(expected, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(expected + values[b, t].item(), abs=1e-5)


def test_clipped_surrogate_and_value_loss_equal_plain_loops():
    new, old, adv, mask = _batch(1)
    new = old + 0.3 * new  # ratios around 1, some outside [0.8, 1.2]
    loss, stats = policy_loss(new, old, adv, mask, cliprange=0.2)
    terms, clipped = [], []
    for b in range(3):
        for t in range(5):
            if mask[b, t]:
                ratio = torch.exp(new[b, t] - old[b, t]).item()
                a = adv[b, t].item()
                terms.append(max(-a * ratio, -a * min(max(ratio, 0.8), 1.2)))
                clipped.append(abs(ratio - 1) > 0.2)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(sum(clipped) / len(clipped))
    assert 0 < stats["clipfrac"] < 1

    v_new, v_old, ret, _ = _batch(2)
    v_loss, _ = value_loss(v_new, v_old, ret, mask, cliprange_value=0.2)
    terms = []
    for b in range(3):
        for t in range(5):
            if mask[b, t]:
                vn, vo, g = v_new[b, t].item(), v_old[b, t].item(), ret[b, t].item()
                vc = vo + min(max(vn - vo, -0.2), 0.2)
                terms.append(0.5 * max((vn - g) ** 2, (vc - g) ** 2))
    assert v_loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-6)


def test_eq7_per_token_kl_penalty_and_final_reward():
    logprobs, ref, _, mask = _batch(3)
    scores = torch.tensor([1.0, -0.5, 0.25])
    rewards, kl = kl_penalised_rewards(scores, logprobs, ref, mask, kl_coef=0.05)
    for b in range(3):
        n = int(mask[b].sum())
        for t in range(5):
            expected = -0.05 * (logprobs[b, t] - ref[b, t]).item() if t < n else 0.0
            if t == n - 1:
                expected += scores[b].item()
            assert rewards[b, t].item() == pytest.approx(expected, abs=1e-6)


def test_whiten_and_response_mask():
    values, _, _, mask = _batch(4)
    white = masked_whiten(values, mask)
    picked = values[mask.bool()]
    expected = (picked - picked.mean()) / picked.std()  # unbiased std, as TRL
    torch.testing.assert_close(white[mask.bool()], expected, rtol=1e-4, atol=1e-4)
    assert (white[~mask.bool()] == 0).all()
    responses = torch.tensor([[4, 9, 2, 2, 2], [2, 2, 2, 2, 2], [4, 5, 6, 7, 8]])
    assert response_mask(responses, 2).tolist() == [
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
    ]


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="does not divide"):
        yaml_section(PPOConfig, batch_size=8, mini_batch_size=3)
    with pytest.raises(ValueError, match="paper: 0.05"):
        yaml_section(PPOConfig, kl_coef=-1)
    with pytest.raises(ValueError, match="positive"):
        yaml_section(PPOConfig, temperature=0)


# --------------------------------------------------------------------------------------------
# On a real (tiny, random) causal LM with LoRA
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def tiny_lm():
    """A 2-layer Llama with the MiniLM word-piece tokenizer (fast to build; same code paths)."""
    from tests.test_expctr import tiny_lm as build

    return build()


def test_ppo_step_moves_only_lora_and_value_head_and_kl_starts_at_zero():
    base, tokenizer = tiny_lm()
    torch.manual_seed(0)
    policy = add_lora(copy.deepcopy(base), yaml_section(LoRASettings, r=4, alpha=8))
    policy.eval()
    value_head = ValueHead(base.config.hidden_size)
    config = yaml_section(
        PPOConfig,
        batch_size=4,
        mini_batch_size=2,
        response_length=6,
        learning_rate=1e-2,
        update_epochs=1,
    )
    optimizer = make_optimizer(policy, value_head, config)
    prompts = [[{"role": "user", "content": f"explain item {i} please"}] for i in range(4)]
    rollout = generate_responses(policy, tokenizer, prompts, config)
    assert rollout.input_ids.shape[1] == rollout.attention_mask.shape[1]
    assert rollout.response_mask.sum() > 0

    # before any update: π_φ == π_init exactly (LoRA B = 0), so the KL term is zero
    with torch.no_grad():
        logprobs, _ = forward_logprobs(policy, rollout, config.temperature)
        with reference_mode(policy):
            ref_logprobs, _ = forward_logprobs(policy, rollout, config.temperature)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=0, atol=0)

    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    head = {n: p.detach().clone() for n, p in value_head.named_parameters()}
    assert lora and all("lora_" in n for n in lora)
    stats = ppo_step(policy, value_head, optimizer, rollout, [1.0, -1.0, 0.5, -0.5], config)
    assert stats["kl"] == 0.0
    params = dict(policy.named_parameters())
    for name, before in frozen.items():
        torch.testing.assert_close(params[name], before, rtol=0, atol=0)
    assert any(not torch.equal(params[n], before) for n, before in lora.items())
    assert all(
        not torch.equal(p, head[n]) for n, p in value_head.named_parameters()
    )  # weight and bias both move
    # after the update the policy has left π_init: the next batch pays a KL penalty
    stats = ppo_step(policy, value_head, optimizer, rollout, [1.0, -1.0, 0.5, -0.5], config)
    assert stats["kl"] != 0.0
