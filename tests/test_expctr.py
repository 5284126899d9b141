"""ExpCTR: §5.1 samples, the IC reward model (Eq. 12-13), three-stage order and resume.

The stage tests use a 2-layer random Llama with the MiniLM tokenizer and a hashing encoder so that
they run in seconds; the real SmolLM2 run is ``benchmarks/expctr_speed.py --stages``.
"""

import functools
import hashlib

import numpy as np
import pytest
import torch

from recbole_ext.config import Config
from recbole_ext.config_sections import read_section
from recbole_ext.data.expctr_samples import build_samples
from recbole_ext.expctr_results import ctr_metrics
from recbole_ext.model.context_aware_recommender.expctr import ExpCTRConfig
from recbole_ext.quick_start import build
from recbole_ext.rl.ppo import PPOConfig
from recbole_ext.trainer.expctr import ExpCTRTrainer
from tests.conftest import TINY_DATA, TINY_YAML

CHAT = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_lm():
    """``(model, tokenizer)``: a random 2-layer Llama over MiniLM's word pieces, left padding."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from recbole_ext.llm.assets import default_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path(), local_files_only=True)
    tokenizer.chat_template = CHAT
    tokenizer.eos_token = tokenizer.pad_token = "[SEP]"
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


class HashEncoder:
    """Deterministic 384-d vectors per text (stands in for MiniLM); counts encoded texts."""

    dimension = 384

    def __init__(self):
        self.encoded_texts = 0

    def encode(self, texts):
        self.encoded_texts += len(texts)
        rows = [
            np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            .standard_normal(self.dimension)
            .astype(np.float32)
            for t in texts
        ]
        return np.stack(rows) if rows else np.zeros((0, self.dimension), np.float32)


# --------------------------------------------------------------------------------------------
# §5.1 samples
# --------------------------------------------------------------------------------------------
def test_samples_target_history_and_liked_split_by_threshold():
    # user 1: items 10..15 at times 6,1,2,3,4,5 (file order is not time order); user 2: one item
    users = [1, 1, 1, 1, 1, 1, 2]
    items = [15, 10, 11, 12, 13, 14, 20]
    ratings = [5, 4, 2, 5, 3, 4, 1]
    times = [6, 1, 2, 3, 4, 5, 9]
    samples = build_samples(
        users,
        items,
        ratings,
        times,
        targets_per_user=6,
        max_history=3,
        threshold=4,
        rng=np.random.default_rng(0),
    )
    by_target = {s.item: s for s in samples}
    assert len(samples) == 7  # every interaction is a target when targets_per_user >= count
    s = by_target[15]  # last in time: history = the 3 preceding items 12 (5), 13 (3), 14 (4)
    assert s.label == 1 and s.liked == (12, 14) and s.disliked == (13,)
    assert by_target[10].liked == () and by_target[10].disliked == ()  # first: no history
    assert by_target[11].label == 0 and by_target[11].liked == (10,)
    assert by_target[20].user == 2 and by_target[20].label == 0

    one = build_samples(
        users,
        items,
        ratings,
        times,
        targets_per_user=1,
        max_history=10,
        threshold=4,
        rng=np.random.default_rng(3),
    )
    assert sorted(s.user for s in one) == [1, 2]
    capped = build_samples(
        users,
        items,
        ratings,
        times,
        targets_per_user=6,
        max_history=10,
        threshold=4,
        rng=np.random.default_rng(3),
        max_samples=4,
    )
    assert len(capped) == 4 and len({(s.user, s.item) for s in capped}) == 4


def tiny_config(workdir, **overrides):
    values = {
        "data_path": str(TINY_DATA),
        "checkpoint_dir": str(workdir / "saved"),
        "expctr_targets_per_user": 1,
        "expctr_max_samples": 40,
        "ppo_response_length": 4,
        "ppo_batch_size": 8,
        "epochs": 2,
    }
    values.update(overrides)
    return Config("ExpCTR", "tiny", [str(TINY_YAML)], values)


def test_dataset_holds_the_samples_split_8_1_1(workdir):
    config = tiny_config(workdir)
    dataset, model, train, valid, test = build(config)
    assert len(dataset.inter_feat) == 40  # one target for each of the 40 users
    assert (len(train.dataset), len(valid.dataset), len(test.dataset)) == (32, 4, 4)
    assert "timestamp" not in dataset.inter_feat and "label" in dataset.inter_feat
    users = dataset.inter_feat["user_id"].tolist()
    assert len(set(users)) == 40
    for user, item in zip(users, dataset.inter_feat["item_id"].tolist()):
        liked, disliked = dataset.expctr_history[(user, item)]
        assert len(liked) + len(disliked) <= 10 and item not in liked + disliked
    settings = read_section(config, ExpCTRConfig)
    assert settings.preset == "tiny" and settings.iterations == 1  # from preset/expctr_tiny.yaml
    assert settings.targets_per_user == 1  # the explicit setting wins over the preset's 3
    ppo = read_section(config, PPOConfig)
    assert (ppo.kl_coef, ppo.learning_rate, ppo.reward_clip) == (0.05, 1e-5, 1.0)  # paper
    assert ppo.response_length == 4 and ppo.batch_size == 8


# --------------------------------------------------------------------------------------------
# Eq. 12-13: the IC reward model
# --------------------------------------------------------------------------------------------
def test_model_concatenates_z_and_ic_reward_zeroes_it_exactly(workdir):
    config = tiny_config(workdir)
    _, model, train, _, _ = build(config)
    model.eval()
    interaction = train.dataset[torch.arange(6)]
    users, items = interaction["user_id"], interaction["item_id"]
    z = torch.randn(6, 384)
    model.set_explanations(users[:4], items[:4], z[:4])
    stored = model.explanation_vectors(interaction)
    torch.testing.assert_close(stored[:4], z[:4])
    assert (stored[4:] == 0).all()  # pairs without an explanation read z = 0

    # Eq. 12 by hand: FM part + deep tower over [h ; z]
    with torch.no_grad():
        emb = model.concat_embed_input_fields(interaction)  # (B, F, D)
        fm = model.first_order_linear(interaction) + model.fm(emb)

        def by_hand(zz):
            deep = model.deep_predict_layer(model.mlp_layers(torch.cat([emb.flatten(1), zz], 1)))
            return torch.sigmoid((fm + deep).squeeze(-1))

        s_r, s_tilde = model.scores_with_and_without(interaction, z)
        torch.testing.assert_close(s_r, by_hand(z))
        torch.testing.assert_close(s_tilde, by_hand(torch.zeros_like(z)))
        assert (s_r - s_tilde).abs().max() > 0  # z does reach the prediction

    # the trainer's IC reward: the second model call receives exactly the zero vector
    trainer = ExpCTRTrainer(config, model, lm=tiny_lm(), encoder=HashEncoder())
    samples = trainer.run.samples(train)[:6]
    texts = [f"explanation {i}" for i in range(6)]
    calls = []
    forward = model.forward

    def spy(interaction, explanation=None):
        calls.append(None if explanation is None else explanation.clone())
        return forward(interaction, explanation)

    model.forward = spy
    s_r, s_tilde = trainer.ic_scores(samples, texts)
    encoded = torch.from_numpy(HashEncoder().encode(texts))
    assert len(calls) == 2
    torch.testing.assert_close(calls[0], encoded)
    assert calls[1].shape == encoded.shape and torch.count_nonzero(calls[1]) == 0
    rewards = trainer._ic_rewards(samples, texts)
    labels = [s.label for s in samples]
    expected = [1 - abs(y - a) + abs(a - b) for y, a, b in zip(labels, s_r, s_tilde)]
    assert rewards == pytest.approx(expected)


def test_ctr_metrics_match_hand_numbers():
    m = ctr_metrics([1, 0, 1, 0], [0.8, 0.4, 0.4, 0.2])
    assert m["auc"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert m["mae"] == pytest.approx((0.2 + 0.4 + 0.6 + 0.2) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((0.04 + 0.16 + 0.36 + 0.04) / 4))
    assert m["logloss"] == pytest.approx(
        -(np.log(0.8) + np.log(0.6) + np.log(0.4) + np.log(0.8)) / 4
    )


# --------------------------------------------------------------------------------------------
# Three stages: order, outputs, resume
# --------------------------------------------------------------------------------------------
ORDER = ["stage1_lc", "iter0_stage2_ctr", "iter0_stage3_ic", "final_stage2_ctr"]
AUG_LLM_ICL = [f"{p}{m}" for p in ("", "llm_", "icl_") for m in ("auc", "logloss", "mae", "rmse")]


def _trainer(config):
    import copy

    _, model, train, valid, test = build(config)
    base, tokenizer = tiny_lm()
    trainer = ExpCTRTrainer(
        config, model, lm=(copy.deepcopy(base), tokenizer), encoder=HashEncoder()
    )
    return trainer, train, valid, test


def _adapters(trainer):
    params = trainer.run.policy.model.named_parameters()
    return {n: p.detach().clone() for n, p in params if p.requires_grad}


def test_stage_order_outputs_and_resume_without_asking_the_llm(workdir):
    config = tiny_config(workdir)
    trainer, train, valid, test = _trainer(config)
    best, valid_result = trainer.fit(train, valid)
    assert trainer.stage_log == [(s, "ran") for s in ORDER]
    assert [r["stage"] for r in trainer.trajectory] == ["stage1_lc"] * 4 + ["iter0_stage3_ic"] * 4
    assert all(r["kl"] == 0.0 for r in trainer.trajectory[:1])  # first update: π_φ = π_init
    assert trainer.generate_calls >= 8 and trainer.score_calls >= 4
    result = trainer.evaluate(test, load_best_model=True)
    for name in AUG_LLM_ICL:
        assert np.isfinite(result[name]) or name.endswith("auc"), (name, result[name])
    assert (trainer.run.folder / "reward_trajectory.csv").is_file()
    assert (trainer.run.folder / "reward_trajectory.png").is_file()

    again, train, valid, test = _trainer(config)  # same settings, fresh process state
    best2, valid_result2 = again.fit(train, valid)
    result2 = again.evaluate(test, load_best_model=True)
    assert again.stage_log == [(s, "resumed") for s in ORDER]
    assert again.generate_calls == 0 and again.score_calls == 0 and again.run.policy is None
    assert best2 == pytest.approx(best) and valid_result2 == pytest.approx(valid_result)
    assert dict(result2) == pytest.approx(dict(result), nan_ok=True)


def test_interrupted_run_resumes_at_the_stage_that_failed(workdir, monkeypatch):
    config = tiny_config(workdir, expctr_final_refit=False)
    reference, train, valid, _ = _trainer(config)
    reference.run.folder = workdir / "uninterrupted"  # same seeds, its own files
    reference.run.store = __import__("recbole_ext.llm.store", fromlist=["x"]).ResponseStore(
        workdir / "uninterrupted.sqlite"
    )
    reference.fit(train, valid)
    expected = _adapters(reference)

    align = ExpCTRTrainer._align

    def failing(self, stage, *args):
        if stage == "iter0_stage3_ic":
            raise RuntimeError("killed")
        return align(self, stage, *args)

    monkeypatch.setattr(ExpCTRTrainer, "_align", failing)
    first, train, valid, _ = _trainer(config)
    with pytest.raises(RuntimeError, match="killed"):
        first.fit(train, valid)
    assert first.stage_log == [("stage1_lc", "ran"), ("iter0_stage2_ctr", "ran")]
    monkeypatch.setattr(ExpCTRTrainer, "_align", align)

    second, train, valid, _ = _trainer(config)
    second.fit(train, valid)
    assert second.stage_log == [
        ("stage1_lc", "resumed"),
        ("iter0_stage2_ctr", "resumed"),
        ("iter0_stage3_ic", "ran"),
    ]
    # stage 3 restarted from the saved stage-1 generator and stage-2 CTR model: same adapters
    for name, value in _adapters(second).items():
        torch.testing.assert_close(value, expected[name])


def test_stage2_keeps_the_last_epoch_when_the_valid_metric_is_nan(workdir):
    """A one-class valid split has no AUC: RecBole saves no checkpoint; stage 2 keeps the last
    epoch instead of failing (or silently loading an earlier stage's file)."""
    config = tiny_config(workdir, expctr_iterations=0, expctr_lc_epochs=0)
    trainer, train, valid, _ = _trainer(config)
    trainer.run.folder.mkdir(parents=True)
    stale = trainer.run.folder / "ctr.pth"
    stale.write_bytes(b"an earlier stage's checkpoint")
    trainer._valid_epoch = lambda *args, **kwargs: (float("nan"), {"auc": float("nan")})
    best, result = trainer.fit(train, valid)
    assert trainer.stage_log == [("stage1_lc", "ran"), ("final_stage2_ctr", "ran")]
    assert best == -np.inf and result == {}  # RecBole's "never improved"
    saved = torch.load(stale, weights_only=True)["state_dict"]  # the last epoch's weights
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(saved[name], value)
