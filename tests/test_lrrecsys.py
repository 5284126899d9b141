"""LR-Recsys: autoencoder, attention (Eq. 24), history encoder padding, samples and split,
resumable explanation generation (requests counted on a fault-injecting endpoint), missing
explanations, dry run, and end-to-end runs (fake endpoint: fast; real local SmolLM2: slow)."""

import math

import numpy as np
import pytest
import torch

import recbole_ext.data.dataset as dataset_module
from recbole_ext.config_checks import ConfigError
from recbole_ext.config_sections import yaml_section
from recbole_ext.data.lrrecsys_dataset import LRRecsysDataset
from recbole_ext.data.lrrecsys_samples import TEST, TRAIN, VALID
from recbole_ext.llm import LLMClient, LLMConfig, ResponseStore
from recbole_ext.llm.lrrecsys_explanations import (
    ExplanationConfig,
    ExplanationGenerator,
    SampleText,
    clean_reply,
)
from recbole_ext.llm.prompts import LRRECSYS_MOVIE, lrrecsys_explanation_messages
from recbole_ext.model.context_aware_recommender.lrrecsys import (
    ExplanationAutoEncoder,
    HistoryEncoder,
    MissingExplanationError,
    PaperGRUCell,
    SelfAttention,
    build_vocabulary,
    encode_words,
    explanation_attention,
)
from recbole_ext.quick_start import run
from recbole_ext.trainer.lrrecsys import train_autoencoder
from tests.conftest import TINY_DATA, TINY_YAML, assert_metrics_valid
from tests.llm_fault_server import FaultServer


@pytest.fixture(autouse=True)
def lrrecsys_dataset(monkeypatch):
    """The registry finds ``recbole_ext.data.dataset.LRRecsysDataset`` (the lead's import line)."""
    monkeypatch.setattr(dataset_module, "LRRecsysDataset", LRRecsysDataset, raising=False)


def tiny_config(workdir, **overrides):
    config = {
        "data_path": str(TINY_DATA),
        "checkpoint_dir": str(workdir / "saved"),
        "MAX_ITEM_LIST_LENGTH": 5,  # tiny.yaml says 20
        "lrrecsys_ae_epochs": 5,
        "epochs": 2,
        "eval_step": 1,
        "show_progress": False,
    }
    config.update(overrides)
    return config


# ------------------------------------------------------------------------------------------------
# Autoencoder
# ------------------------------------------------------------------------------------------------
def test_autoencoder_loss_falls_on_toy_corpus_and_bottleneck_is_8d():
    torch.manual_seed(0)
    corpus = [
        "the consumer watched this movie because the consumer likes comedies".split(),
        "the consumer did not watch this movie because it is a horror film".split(),
        "the consumer watched this movie because of the great action scenes".split(),
        "the consumer did not watch this movie because the plot is slow".split(),
    ] * 8
    vocab = build_vocabulary(corpus)
    ids = encode_words(corpus, vocab, 50)
    assert ids.shape == (32, 50) and int(ids[0, 10]) == 0  # padded
    ae = ExplanationAutoEncoder(len(vocab), max_words=50, word_dim=8, hidden=[64, 8, 64])
    weights = [m.weight.numel() for m in (*ae.encoder, *ae.decoder) if hasattr(m, "weight")]
    assert sum(weights) == 52_224  # the paper's parameter count (§3.4.2)
    losses = train_autoencoder(
        ae, ids, epochs=30, learning_rate=0.1, batch_size=128, optimizer="adagrad", seed=0
    )
    assert losses[-1] < 0.2 * losses[0], losses
    with torch.no_grad():
        code = ae.encode(ids)
        reconstructed = ae(ids).argmax(-1)
    assert code.shape == (32, 8)
    assert (reconstructed == ids).float().mean() > 0.95
    # different sentences get different codes
    assert not torch.allclose(code[0], code[1])


# ------------------------------------------------------------------------------------------------
# Attention (Eq. 6-9, 24, 26-28)
# ------------------------------------------------------------------------------------------------
def test_attention_rows_sum_to_one_and_match_hand_computation():
    attention = SelfAttention(2)
    with torch.no_grad():
        for layer in (attention.w_q, attention.w_k, attention.w_v):
            layer.weight.copy_(torch.eye(2))
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    z, alpha = attention(x)
    # hand: scores = x x^T / sqrt(2); row 0 = [1, 0, 1] / sqrt(2)
    s = 1 / math.sqrt(2)
    row0 = torch.softmax(torch.tensor([s, 0.0, s]), 0)
    torch.testing.assert_close(alpha[0, 0], row0)
    torch.testing.assert_close(z[0, 0], row0 @ x[0])
    torch.testing.assert_close(alpha.sum(-1), torch.ones(1, 3))


def test_eq24_alpha_pos_neg_on_hand_example():
    alpha = torch.tensor(
        [
            [
                [0.40, 0.10, 0.10, 0.10, 0.10, 0.20],
                [0.20, 0.30, 0.10, 0.10, 0.20, 0.10],
                [0.10, 0.10, 0.50, 0.10, 0.10, 0.10],
                [0.30, 0.20, 0.10, 0.20, 0.10, 0.10],
                [0.10, 0.40, 0.10, 0.10, 0.20, 0.10],
                [0.10, 0.10, 0.10, 0.10, 0.10, 0.50],
            ]
        ]
    )
    alpha_pos, alpha_neg = explanation_attention(alpha)
    # (1/|I|) sum_i alpha_{i,pos}: (.4+.2+.1+.3+.1+.1)/6 = 0.2; neg: (.1+.3+.1+.2+.4+.1)/6 = 0.2
    torch.testing.assert_close(alpha_pos, torch.tensor([1.2 / 6]))
    torch.testing.assert_close(alpha_neg, torch.tensor([1.2 / 6]))
    alpha_pos, alpha_neg = explanation_attention(alpha, pos_index=2, neg_index=5)
    torch.testing.assert_close(alpha_pos, torch.tensor([1.0 / 6]))
    torch.testing.assert_close(alpha_neg, torch.tensor([1.1 / 6]))


# ------------------------------------------------------------------------------------------------
# History encoder (Eq. 6-13) and padding
# ------------------------------------------------------------------------------------------------
def test_gru_cell_follows_eq_10_to_13():
    torch.manual_seed(0)
    cell = PaperGRUCell(3)
    z, h = torch.randn(2, 3), torch.randn(2, 3)
    w_r, w_u, w_h = cell.w.weight.split(3)
    b_r, b_u, b_h = cell.w.bias.split(3)
    u_r, u_u = cell.u_ru.weight.split(3)
    r = torch.sigmoid(z @ w_r.T + h @ u_r.T + b_r)
    u = torch.sigmoid(z @ w_u.T + h @ u_u.T + b_u)
    h_tilde = torch.tanh(z @ w_h.T + (r * h) @ cell.u_h.weight.T + b_h)
    torch.testing.assert_close(cell(z, h), u * h + (1 - u) * h_tilde)


def test_history_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = HistoryEncoder(8)
    real = torch.randn(1, 3, 8)
    junk_a, junk_b = torch.randn(1, 2, 8), torch.randn(1, 2, 8) * 5
    padded_a = torch.cat([real, junk_a], 1)  # (1, 5, 8)
    padded_b = torch.cat([real, junk_b], 1)
    lengths = torch.tensor([3])
    out_a, out_b = encoder(padded_a, lengths), encoder(padded_b, lengths)
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(out_a, encoder(real, lengths))  # same as no padding at all
    # the last real item does matter
    changed = padded_a.clone()
    changed[0, 2] += 1.0
    assert not torch.allclose(encoder(changed, lengths), out_a)
    # batch of different lengths == one by one
    batch = torch.cat([padded_a, padded_b], 0)
    both = encoder(batch, torch.tensor([3, 5]))
    torch.testing.assert_close(both[1:], encoder(padded_b, torch.tensor([5])))


# ------------------------------------------------------------------------------------------------
# Prompts and reply cleaning
# ------------------------------------------------------------------------------------------------
def test_movie_prompts_render_history_and_candidate():
    (message,) = lrrecsys_explanation_messages(
        LRRECSYS_MOVIE, "neg", ["Heat (1995)", "Jaws (1975)"], "Babe"
    )
    text = message["content"]
    assert '"Heat (1995)"; "Jaws (1975)"' in text and 'profile "Babe"?' in text
    assert "did not watch the following recommended movie" in text
    assert text.endswith("The consumer did not watch this movie because...")
    assert clean_reply('Explanation: "The consumer watched it because x. Also y."') == (
        "The consumer watched it because x."
    )


# ------------------------------------------------------------------------------------------------
# Explanation generation: resumable without re-asking the LLM
# ------------------------------------------------------------------------------------------------
SAMPLES = [SampleText(f"user=u|item={i}|t={i}", ("a", "b"), str(i)) for i in range(10)]
ITEMS = {"a": "Heat (1995)", "b": "Jaws (1975)", **{str(i): f"Movie {i}" for i in range(10)}}


class Interrupted(Exception):
    pass


def test_explanations_resume_after_interruption_without_reasking(tmp_path):
    config = yaml_section(ExplanationConfig, use_profiles=True, chunk_size=4)
    with FaultServer() as server:
        llm = yaml_section(LLMConfig, base_url=server.base_url, max_concurrency=2)
        store_path = tmp_path / "store.sqlite"
        with ResponseStore(store_path) as store, LLMClient(llm, store, show_progress=False) as c:
            generator = ExplanationGenerator(c, config, ITEMS)
            assert generator.plan(SAMPLES).calls == 12 + 2 * 10  # 12 profiles, 20 explanations

            def stop_after_first_chunk(done):
                raise Interrupted

            with pytest.raises(Interrupted):
                generator.explanations(SAMPLES, progress=False, on_chunk=stop_after_first_chunk)
            assert len(server.requests) == 12 + 2 * 4
        # a new process: fresh client, same store file
        with ResponseStore(store_path) as store, LLMClient(llm, store, show_progress=False) as c:
            generator = ExplanationGenerator(c, config, ITEMS)
            plan = generator.plan(SAMPLES)
            assert (plan.missing_explanations, plan.missing_profiles, plan.calls) == (6, 0, 12)
            texts = generator.explanations(SAMPLES, progress=False)
            assert len(server.requests) == 12 + 2 * 10  # only the 12 missing calls were made
            assert c.usage.requests == 12
            assert set(texts) == {s.key for s in SAMPLES}
            assert texts[SAMPLES[0].key]["pos"].startswith("echo: Given the profiles")
            assert texts[SAMPLES[0].key]["neg"].startswith("echo: Given the profiles")
            assert len(list(store.iter_records("lrrecsys.explanation"))) == 10
            again = generator.explanations(SAMPLES, progress=False)
            assert again == texts and c.usage.requests == 12  # third pass: zero requests
            assert len(server.requests) == 32


# ------------------------------------------------------------------------------------------------
# Samples, split, model errors and end-to-end runs (fake endpoint: fast)
# ------------------------------------------------------------------------------------------------
def test_samples_hold_last_five_items_and_user_temporal_split(workdir):
    from recbole_ext.config import Config

    config = Config("LRRecsys", "tiny", [str(TINY_YAML)], tiny_config(workdir))
    dataset = LRRecsysDataset(config)
    train, valid, test = dataset.build()
    samples = dataset.samples
    assert set(np.unique(samples.split)) == {TRAIN, VALID, TEST}
    sizes = samples.split_sizes()
    assert sizes["test"] / len(samples) == pytest.approx(0.2, abs=0.05)
    # every sample's history = the user's (up to) 5 previous items in time, from the raw file
    raw = np.loadtxt(TINY_DATA / "tiny" / "tiny.inter", skiprows=1, dtype=np.int64)
    by_user = {}
    for user, item, _, ts in raw:
        by_user.setdefault(str(user), []).append((ts, str(item)))
    for i in range(0, len(samples), 37):
        events = sorted(by_user[samples.users[i]], key=lambda e: e[0])
        position = [k for k, (ts, it) in enumerate(events) if it == samples.items[i]][0]
        assert (
            len(samples.histories[i]) == min(5, position)
            or events[position - 1][0] == (events[position][0])
        )  # ties in time are ordered by RecBole's stable sort
        assert 1 <= len(samples.histories[i]) <= 5
    # user-temporal: within each user, test samples are not earlier than train samples
    for user in np.unique(samples.users)[:10]:
        rows = samples.users == user
        t_train = samples.timestamps[rows & (samples.split == TRAIN)]
        t_test = samples.timestamps[rows & (samples.split == TEST)]
        if len(t_train) and len(t_test):
            assert t_test.min() >= t_train.max()
    # learning efficiency (Table 3): half of the training samples, the rest unchanged
    half = LRRecsysDataset(
        Config(
            "LRRecsys", "tiny", [str(TINY_YAML)], tiny_config(workdir, lrrecsys_train_fraction=0.5)
        )
    )
    half_train, half_valid, half_test = half.build()
    assert len(half_train) == round(0.5 * len(train)) and len(half_test) == len(test)
    assert len(half.samples.used()) == len(half_train) + len(half_valid) + len(half_test)
    assert set(half_train.inter_feat["sample_id"].tolist()) <= set(
        train.inter_feat["sample_id"].tolist()
    )
    label = train.inter_feat["label"].numpy()
    rating = train.inter_feat["rating"].numpy()
    np.testing.assert_array_equal(label, (rating >= 4).astype(np.float32))


def test_missing_explanation_is_an_error_unless_free_ablation(workdir):
    from recbole_ext.config import Config
    from recbole_ext.quick_start import build

    config = Config("LRRecsys", "tiny", [str(TINY_YAML)], tiny_config(workdir))
    _, model, train_data, _, _ = build(config)
    batch = next(iter(train_data))
    with pytest.raises(MissingExplanationError, match="no explanation embedding"):
        model.calculate_loss(batch)
    n = len(train_data._dataset.samples)
    model.set_explanation_features(torch.randn(n - 1, 8), torch.randn(n - 1, 8), torch.arange(1, n))
    first_missing = (batch["sample_id"] == 0).any()
    if first_missing:
        with pytest.raises(MissingExplanationError):
            model.calculate_loss(batch)
    model.set_explanation_features(torch.randn(n, 8), torch.randn(n, 8))
    assert torch.isfinite(model.calculate_loss(batch))

    free = Config(
        "LRRecsys",
        "tiny",
        [str(TINY_YAML)],
        tiny_config(workdir, lrrecsys_explanation_source="free"),
    )
    _, free_model, free_train, _, _ = build(free)
    loss = free_model.calculate_loss(next(iter(free_train)))
    loss.backward()
    assert free_model.free_pos.grad is not None and free_model.free_pos.grad.abs().sum() > 0


def test_dry_run_reports_calls_and_makes_none(workdir, capsys):
    with FaultServer() as server:
        config = tiny_config(
            workdir,
            llm_base_url=server.base_url,
            lrrecsys_dry_run=True,
            lrrecsys_max_users=3,
            lrrecsys_use_profiles=False,
        )
        with pytest.raises(SystemExit) as stop:
            run("LRRecsys", "tiny", config_file_list=[str(TINY_YAML)], config_dict=config)
        assert stop.value.code == 0
        assert server.requests == []
    out = capsys.readouterr().out
    assert "LLM calls" in out and "min" in out
    assert out.count("LLM calls") == 1  # once, whether the console shows INFO or not


def test_end_to_end_classification_and_regression_on_fake_endpoint(workdir):
    from recbole_ext.quick_start import load_data_and_model

    with FaultServer() as server:
        common = {"llm_base_url": server.base_url, "lrrecsys_max_users": 20}
        result = run(
            "LRRecsys",
            "tiny",
            config_file_list=[str(TINY_YAML)],
            config_dict=tiny_config(workdir, **common),
        )
        assert_metrics_valid(result["test_result"], ["auc", "logloss"])
        calls = len(server.requests)
        assert calls > 0
        regression = tiny_config(
            workdir,
            **common,
            lrrecsys_task="regression",
            LABEL_FIELD="rating",
            metrics=["RMSE", "MAE"],
            valid_metric="RMSE",
        )
        reg = run("LRRecsys", "tiny", config_file_list=[str(TINY_YAML)], config_dict=regression)
        assert len(server.requests) == calls  # same samples: every explanation came from the store
    test = reg["test_result"]
    assert_metrics_valid(test, ["rmse", "mae", "rmse_normalised", "mae_normalised"])
    assert test["rmse_normalised"] == pytest.approx(test["rmse"] / 4)
    assert test["rmse"] <= 4.0 and test["mae"] <= test["rmse"] + 1e-9
    # the checkpoint carries the explanation embeddings: the reloaded model predicts, no LLM
    _, model, _, _, _, test_data = load_data_and_model(reg["model_file"])
    assert bool(model.explained.all())
    batch = next(iter(test_data))[0]
    prediction = model.predict(batch)
    assert ((prediction >= 1) & (prediction <= 5)).all()


def test_regression_needs_rating_label_with_clear_fix(workdir):
    # a ConfigError: the command line prints it as one line, without a traceback
    with pytest.raises(ConfigError, match="--LABEL_FIELD=rating"):
        run(
            "LRRecsys",
            "tiny",
            config_file_list=[str(TINY_YAML)],
            config_dict=tiny_config(workdir, lrrecsys_task="regression"),
        )


# ------------------------------------------------------------------------------------------------
# Real local server (SmolLM2-135M through llama.cpp): slow
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_end_to_end_tiny_run_through_real_local_server(workdir):
    from tests.llm_fixtures import require_gguf

    require_gguf()
    config = tiny_config(
        workdir,
        lrrecsys_task="regression",
        LABEL_FIELD="rating",
        metrics=["RMSE", "MAE"],
        valid_metric="RMSE",
        lrrecsys_max_users=3,
        lrrecsys_max_user_interactions=11,
        lrrecsys_use_profiles=False,
        lrrecsys_explanation_max_tokens=24,
        epochs=1,
    )
    result = run("LRRecsys", "tiny", config_file_list=[str(TINY_YAML)], config_dict=config)
    assert_metrics_valid(result["test_result"], ["rmse", "mae", "rmse_normalised"])
    assert result["test_result"]["rmse"] <= 4.0


def test_ablations_raw_sentence_embeddings_and_positive_only(workdir):
    from recbole_ext.quick_start import load_data_and_model

    regression = {
        "lrrecsys_task": "regression",
        "LABEL_FIELD": "rating",
        "metrics": ["RMSE", "MAE"],
        "valid_metric": "RMSE",
        "lrrecsys_max_users": 8,
        "lrrecsys_use_profiles": False,
        "epochs": 1,
    }
    with FaultServer() as server:
        raw = run(
            "LRRecsys",
            "tiny",
            config_file_list=[str(TINY_YAML)],
            config_dict=tiny_config(
                workdir,
                llm_base_url=server.base_url,
                **regression,
                lrrecsys_explanation_source="sentence_encoder",
            ),
        )
        pos_only = run(
            "LRRecsys",
            "tiny",
            config_file_list=[str(TINY_YAML)],
            config_dict=tiny_config(
                workdir, llm_base_url=server.base_url, **regression, lrrecsys_use_negative=False
            ),
        )
    assert_metrics_valid(raw["test_result"], ["rmse", "mae"])
    assert_metrics_valid(pos_only["test_result"], ["rmse", "mae"])
    _, model, _, _, _, _ = load_data_and_model(raw["model_file"])
    assert model.explanation_pos.shape[1] == 384 and bool(model.explained.all())
    assert model.explanation_pos.abs().sum() > 0
    _, model, _, _, _, test_data = load_data_and_model(pos_only["model_file"])
    assert model.components == ["pos", "c", "p", "seq", "context"]
    read_out = model.attention(next(iter(test_data))[0])
    shares = torch.stack([read_out[f"share_{c}"] for c in model.components], 1)
    torch.testing.assert_close(shares.sum(1), torch.ones(len(shares)))


def test_explanation_stats_on_hand_example():
    from lrrecsys_analysis import explanation_stats, naming_shares, title_of

    texts = [
        {"pos": "He likes comedies.", "neg": "The plot is slow"},  # neg cut off
        {"pos": "He likes comedies.", "neg": "It is too long."},
        {"pos": "Great cast!", "neg": "Great cast!"},
        {"pos": "", "neg": 'He skipped "Heat"'},  # closing quote counts as an ending
    ]
    stats = explanation_stats(texts, top=1)
    assert stats["samples"] == 4 and stats["pos_equals_neg_share"] == 0.25
    assert stats["pos"]["empty_share"] == 0.25 and stats["pos"]["cut_off_share"] == 0.0
    assert stats["pos"]["distinct_share"] == 3 / 4  # "He likes comedies." twice
    assert stats["pos"]["most_repeated"] == [("He likes comedies.", 2)]
    assert stats["neg"]["cut_off_share"] == 0.25 and stats["neg"]["distinct_share"] == 1.0
    assert stats["neg"]["mean_words"] == (4 + 4 + 2 + 3) / 4
    # which movie an explanation talks about: the candidate, or only one from the history
    assert title_of("Heat (1995) Action, Crime") == "Heat"
    shares = naming_shares(
        [
            {"pos": "He liked HEAT.", "neg": "He skipped Jaws and Heat."},  # candidate wins
            {"pos": "He loves Jaws.", "neg": "Too long."},
        ],
        candidates=["Heat", "Babe"],
        histories=[["Jaws"], ["Jaws", "Heat"]],
    )
    assert shares["pos"] == {"names_candidate": 0.5, "names_history_only": 0.5}
    assert shares["neg"] == {"names_candidate": 0.5, "names_history_only": 0.0}


def test_autoencoder_is_seeded_alone_and_cached_by_its_inputs(workdir):
    from recbole_ext.config import Config
    from recbole_ext.quick_start import build
    from recbole_ext.trainer.lrrecsys import LRRecsysTrainer, autoencoder_cache_key

    config = Config("LRRecsys", "tiny", [str(TINY_YAML)], tiny_config(workdir, seed=5))
    _, model, _, _, _ = build(config)
    trainer = LRRecsysTrainer(config, model)
    pos = ["the consumer likes comedies", "he watched it for the cast", "a slow plot"]
    neg = ["it is too long", "the plot is slow", "he dislikes horror"]
    mask = np.array([True, True, False])
    torch.manual_seed(1)
    first = trainer.autoencode(pos, neg, mask)
    assert first[0].shape == (3, 8) and trainer.autoencoder is not None
    assert len(list((workdir / "saved" / "lrrecsys_ae").glob("*.pt"))) == 1
    losses = trainer.autoencoder_losses
    torch.manual_seed(2)
    again = trainer.autoencode(pos, neg, mask)  # read back, not retrained
    assert trainer.autoencoder is None and trainer.autoencoder_losses == losses
    torch.testing.assert_close(again, first)
    # without the cache, another global RNG state trains the same AE: it is seeded from `seed`
    trainer.ae_cache = False
    torch.manual_seed(3)
    fresh = trainer.autoencode(pos, neg, mask)
    assert trainer.autoencoder is not None
    torch.testing.assert_close(fresh, first)
    # the key follows seed, texts and training rows, and nothing else
    settings = trainer.ae_settings
    key = autoencoder_cache_key(settings, 5, pos, neg, mask)
    assert key == autoencoder_cache_key(dict(settings), 5, list(pos), list(neg), mask.copy())
    assert key != autoencoder_cache_key(settings, 6, pos, neg, mask)
    assert key != autoencoder_cache_key(settings, 5, pos, neg[::-1], mask)
    assert key != autoencoder_cache_key(settings, 5, pos, neg, ~mask)
    assert key != autoencoder_cache_key({**settings, "epochs": 6}, 5, pos, neg, mask)
