"""AutoDisenSeq: Eq. 4-13 against naive loops, the search space (Eq. 19, Constraints 1-2),
context-aware sharing, the evolutionary search, architecture files, and end-to-end runs."""

import doctest
import json
import math
import random
import re
from pathlib import Path

import pytest
import recbole.trainer.trainer as recbole_trainer_module
import torch
import yaml
from recbole.data import data_preparation
from recbole.utils import init_seed
from scipy.stats import chisquare

import recbole_ext
import recbole_ext.data.seq2seq as seq2seq_module
import recbole_ext.model.layers as layers_module
import recbole_ext.model.nas.space as space_module
import recbole_ext.model.sequential_recommender.autodisenseq as model_module
import recbole_ext.trainer.autodisenseq as trainer_module
from recbole_ext.config import Config
from recbole_ext.config_checks import ConfigError
from recbole_ext.data.seq2seq import (
    FUTURE_FIELD,
    FUTURE_LENGTH_FIELD,
    NEGATIVES_FIELD,
    PopularityNegatives,
    TrainingRows,
    reversed_futures,
)
from recbole_ext.model.layers import FastDropout, IntentionDisentanglement, intent_logits
from recbole_ext.model.nas.evolution import evolutionary_search
from recbole_ext.model.nas.render import render_architecture
from recbole_ext.model.nas.space import (
    AdditionLayer,
    AttentionLayer,
    SearchSpace,
    load_arch,
    save_arch,
    space_size,
)
from recbole_ext.model.nas.supernet import AttentionSupernet, arch_parameter_keys
from recbole_ext.model.sequential_recommender.autodisenseq import (
    AutoDisenSeq,
    finetune_bce_loss,
    s2i_loss,
    s2s_keep_mask,
    s2s_loss,
    s2s_terms,
)
from recbole_ext.quick_start import build, load_data_and_model, run
from recbole_ext.trainer.autodisenseq import FINETUNE, PRETRAIN, SEARCH, AutoDisenSeqTrainer
from recbole_ext.utils import create_dataset
from tests.conftest import TINY_DATA, TINY_YAML, assert_metrics_valid

METRICS = ["hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10"]


@pytest.mark.parametrize(
    "module", [seq2seq_module, layers_module, space_module, model_module, trainer_module]
)
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


# --- search space -------------------------------------------------------------------------------
@pytest.mark.parametrize("n_layers,n_ops", [(1, 2), (2, 2), (2, 3), (3, 3), (2, 4)])
def test_space_size_matches_eq19_and_enumeration(n_layers, n_ops):
    ops = ("zero", "identity", "linear", "ffn")[:n_ops]
    space = SearchSpace(n_layers, ops)
    b = n_ops
    eq19 = math.prod(b * (b - 1) * k + (b - 1) ** 3 * k for k in range(1, n_layers + 1))
    assert space_size(n_layers, n_ops) == eq19 == len(space)
    assert sum(1 for _ in space.enumerate()) == eq19
    assert len(set(space.enumerate())) == eq19  # no duplicates


def test_fast_dropout_keeps_one_minus_p_scaled_and_routes_gradients():
    torch.manual_seed(0)
    layer = FastDropout(0.25)
    x = torch.full((200, 50, 64), 2.0, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01  # 640,000 draws
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.75))  # inverted dropout scale
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # dropped elements get no gradient
    assert torch.allclose(x.grad[kept], torch.tensor(1 / 0.75))
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_space_size_hand_values():
    assert space_size(1, 2) == 3  # add(identity, 0, zero|identity), attn(identity^3)
    assert space_size(2, 3) == 14 * 28
    assert space_size(4, 6) == 155**4 * 24


def _check_constraints(arch, n_layers):
    assert len(arch) == n_layers
    for k, layer in enumerate(arch, start=1):
        if isinstance(layer, AdditionLayer):
            assert layer.input_op != "zero"  # Constraint 1: input bound to layer k-1, non-zero
            assert 0 <= layer.extra_source < k
        else:
            assert isinstance(layer, AttentionLayer)
            assert layer.query_op != "zero"  # query bound to layer k-1
            assert 0 <= layer.kv_source < k  # Constraint 2: one shared key/value source
            assert "zero" not in (layer.key_op, layer.value_op)


def test_sampled_mutated_and_crossed_architectures_satisfy_constraints():
    space, rng = SearchSpace(6), random.Random(0)
    archs = [space.sample(rng) for _ in range(300)]
    archs += [space.mutate(a, rng, 0.3) for a in archs[:100]]
    archs += [space.crossover(a, b, rng) for a, b in zip(archs[:100], archs[100:200])]
    for arch in archs:
        _check_constraints(arch, 6)
        space.validate(arch)
    kinds = {layer.type for arch in archs for layer in arch}
    assert kinds == {"addition", "attention"}
    with pytest.raises(ValueError, match="Constraint"):
        space.validate((AttentionLayer("zero", 0, "identity", "identity"),) + archs[0][1:])
    with pytest.raises(ValueError, match="source layer 3"):
        space.validate(archs[0][:2] + (AdditionLayer("ffn", 3, "identity"),) + archs[0][3:])


def test_sasrec_like_architecture():
    arch = SearchSpace(4).sasrec_like()
    assert [layer.type for layer in arch] == ["attention", "addition"] * 2
    assert arch[1] == AdditionLayer("ffn", 1, "identity")  # LN(x + FFN(x))


# --- Eq. 4-6 -------------------------------------------------------------------------------------
def _naive_disentangle(layer, z, lengths, beta_set, alpha_index=None):
    """Eq. (4)-(6) with explicit loops over sequences, positions and prototypes; Eq. 4 compares
    with the cosine or the dot product as the layer says; ``alpha_index(n, s)``: α's row for
    position s of sequence n (default s)."""
    batch, _, dim = z.shape
    K = layer.prototypes.shape[0]
    alpha_index = alpha_index or (lambda n, s: s)
    out = torch.zeros(batch, K, dim)

    def similarity(a, b):
        dot = torch.dot(a, b)
        return dot if layer.similarity == "dot" else dot / (a.norm() * b.norm())

    for n in range(batch):
        m = int(lengths[n])
        c = [layer.ln2(layer.prototypes[k]) for k in range(K)]
        z_big_m = layer.alpha.weight[alpha_index(n, m - 1)] + z[n, m - 1] + layer.b_prime
        q_logits = []
        for s in range(m):
            h = layer.ln4(layer.alpha.weight[alpha_index(n, s)] + z[n, s])
            z_prime = h + torch.relu(layer.transform(h))
            q_logits.append(torch.dot(z_prime, layer.ln3(z_big_m)) / math.sqrt(dim))
        q = torch.softmax(torch.stack(q_logits), 0)
        for k in range(K):
            acc = torch.zeros(dim)
            for i in range(m):
                logits = torch.stack(
                    [similarity(layer.ln1(z[n, i]), c[s]) / math.sqrt(dim) for s in range(K)]
                )
                acc = acc + torch.softmax(logits, 0)[k] * q[i] * z[n, i]
            out[n, k] = layer.ln5(layer.beta[beta_set[n], k] + acc)
    return out


@pytest.fixture(params=["cosine", "dot"])
def disentangle_case(request):
    torch.manual_seed(0)
    layer = IntentionDisentanglement(
        hidden_size=8, n_intents=3, max_len=5, layer_norm_eps=1e-12, similarity=request.param
    )
    with torch.no_grad():  # non-trivial parameters everywhere
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = torch.randn(3, 5, 8)
    lengths = torch.tensor([5, 3, 1])
    return layer, z, lengths


def test_disentanglement_weights_sum_to_one_and_padding_gets_zero(disentangle_case):
    layer, z, lengths = disentangle_case
    q_k, q = layer.weights(z, lengths)
    assert q_k.shape == (3, 5, 3) and q.shape == (3, 5)
    valid = torch.arange(5)[None] < lengths[:, None]
    torch.testing.assert_close(q_k.sum(-1)[valid], torch.ones(int(valid.sum())))
    assert torch.all(q_k[~valid] == 0) and torch.all(q[~valid] == 0)
    torch.testing.assert_close(q.sum(-1), torch.ones(3))  # Eq. (5): softmax over positions 1..m
    assert q[2, 0] == 1.0  # a one-item sequence puts all weight on it


def test_disentanglement_matches_naive_loops(disentangle_case):
    layer, z, lengths = disentangle_case
    beta_set = torch.tensor([0, 1, 0])
    phi = layer(z, lengths, beta_set)
    assert phi.shape == (3, 3, 8)
    torch.testing.assert_close(phi, _naive_disentangle(layer, z, lengths, beta_set))
    # α indexed from the newest item: position s of an m-item sequence uses α_{L - m + s}
    newest = (5 - lengths.unsqueeze(1) + torch.arange(5)).clamp(0, 4)  # (B, L)
    phi_newest = layer(z, lengths, beta_set, newest)
    expected = _naive_disentangle(layer, z, lengths, beta_set, lambda n, s: 5 - int(lengths[n]) + s)
    torch.testing.assert_close(phi_newest, expected)
    assert not torch.allclose(phi_newest[1:], phi[1:])  # shorter sequences move
    torch.testing.assert_close(phi_newest[0], phi[0])  # a full sequence is indexed alike


def test_eq4_cosine_on_hand_made_tensors():
    z = torch.tensor([[[3.0, 4.0], [0.0, -2.0], [0.0, 0.0]]])  # (1, 3, 2)
    c = torch.tensor([[4.0, 3.0], [0.0, 1.0], [-3.0, -4.0]])  # (3, 2)
    cosine = [[24 / 25, 4 / 5, -1.0], [-6 / 10, -1.0, 8 / 10], [0.0, 0.0, 0.0]]
    dot = [[24.0, 4.0, -25.0], [-6.0, -2.0, 8.0], [0.0, 0.0, 0.0]]
    root = math.sqrt(2)  # 1/√D, D = 2
    torch.testing.assert_close(intent_logits(z, c, "cosine"), torch.tensor([cosine]) / root)
    torch.testing.assert_close(intent_logits(z, c, "dot"), torch.tensor([dot]) / root)
    # the cosine ignores lengths, the dot product does not
    torch.testing.assert_close(intent_logits(5 * z, c / 3, "cosine"), intent_logits(z, c, "cosine"))
    torch.testing.assert_close(intent_logits(5 * z, c, "dot"), 5 * intent_logits(z, c, "dot"))
    with pytest.raises(ValueError, match="intent_similarity"):
        intent_logits(z, c, "euclidean")
    with pytest.raises(ValueError, match="intent_similarity"):
        IntentionDisentanglement(4, 2, 5, 1e-12, similarity="cos")
    # Eq. 4 of the layer: softmax_k of those logits after LN1/LN2 (identity-free inputs here)
    layer = IntentionDisentanglement(2, 3, 3, 1e-12, similarity="cosine")
    with torch.no_grad():
        layer.prototypes.copy_(c)
    q_k, _ = layer.weights(z, torch.tensor([3]))
    expected = torch.softmax(intent_logits(layer.ln1(z), layer.ln2(c), "cosine"), -1)
    torch.testing.assert_close(q_k, expected)


def test_beta_initialisation_differs_per_intent():
    torch.manual_seed(0)
    dim, intents = 64, 4
    layer = IntentionDisentanglement(dim, intents, 10, 1e-12, beta_init="random")
    beta = layer.beta.detach()  # (2, K, D)
    for s in range(2):
        for k in range(intents):
            for j in range(k):
                assert not torch.allclose(beta[s, k], beta[s, j])
    assert not torch.allclose(beta[0], beta[1])
    assert abs(float(beta.std()) * math.sqrt(dim) - 1.0) < 0.1  # the authors' std 1/√D
    assert abs(float(beta.mean())) < 0.02
    zero = IntentionDisentanglement(dim, intents, 10, 1e-12, beta_init="zero")
    assert torch.equal(zero.beta.detach(), torch.zeros(2, intents, dim))
    with pytest.raises(ValueError, match="beta_init"):
        IntentionDisentanglement(dim, intents, 10, 1e-12, beta_init="normal")
    # with the cosine's flat q^(k), zero β leaves the K outputs almost equal; random β does not
    z, lengths, rows = torch.randn(16, 10, dim), torch.full((16,), 10), torch.zeros(16).long()

    def spread(module):
        with torch.no_grad():
            phi = module(z, lengths, rows)  # (B, K, D)
        return float((phi - phi.mean(1, keepdim=True)).norm(dim=-1).mean())

    assert spread(layer) > 5 * spread(zero)


def test_padding_content_does_not_change_phi(disentangle_case):
    layer, z, lengths = disentangle_case
    beta_set = torch.zeros(3, dtype=torch.long)
    noisy = z.clone()
    noisy[1, 3:] = 100.0 * torch.randn(2, 8)
    noisy[2, 1:] = -50.0
    torch.testing.assert_close(layer(z, lengths, beta_set), layer(noisy, lengths, beta_set))


def test_two_beta_sets_differ(disentangle_case):
    layer, z, lengths = disentangle_case
    zeros, ones = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    assert not torch.allclose(layer(z, lengths, zeros), layer(z, lengths, ones))


# --- Eq. 9-12 ------------------------------------------------------------------------------------
def test_lambda_mask_keeps_exactly_ceil_lambda_b_k():
    terms = torch.tensor([[0.5, 2.0, 1.0], [3.0, 0.1, 0.7]])
    assert s2s_keep_mask(terms, 0.5).tolist() == [[True, False, False], [False, True, True]]
    assert s2s_keep_mask(terms, 0.4).sum() == 3  # ⌈2.4⌉
    assert s2s_keep_mask(terms, 0.0).sum() == 0  # λ = 0: S2I only
    assert s2s_keep_mask(terms, 1.0).all()
    torch.manual_seed(0)
    for lam in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        for batch, k in ((10, 2), (7, 3), (256, 4)):
            mask = s2s_keep_mask(torch.randn(batch, k), lam)
            assert int(mask.sum()) == math.ceil(round(lam * batch * k, 9)), (lam, batch, k)
    ties = torch.ones(4, 2)
    assert s2s_keep_mask(ties, 0.25).sum() == 2


def _naive_s2i(phi, targets_emb):
    batch, K, dim = phi.shape
    total = 0.0
    for n in range(batch):
        num = max(math.exp(float(targets_emb[n] @ phi[n, k]) / math.sqrt(dim)) for k in range(K))
        den = sum(
            math.exp(float(targets_emb[n2] @ phi[n, k2]) / math.sqrt(dim))
            for n2 in range(batch)
            for k2 in range(K)
        )
        total += -math.log(num / den)
    return total / batch


def _naive_s2s_terms(earlier, future):
    batch, K, dim = earlier.shape
    terms = torch.zeros(batch, K)
    for n in range(batch):
        for k in range(K):
            num = math.exp(float(future[n, k] @ earlier[n, k]) / math.sqrt(dim))
            den = sum(
                math.exp(float(future[n2, t] @ earlier[n, k]) / math.sqrt(dim))
                for n2 in range(batch)
                for t in range(K)
            )
            terms[n, k] = -math.log(num / den)
    return terms


def test_s2i_matches_naive_loop():
    torch.manual_seed(1)
    phi, targets = torch.randn(5, 3, 4), torch.randn(5, 4)
    loss = s2i_loss(phi, targets, torch.arange(5))
    assert math.isclose(float(loss), _naive_s2i(phi, targets), rel_tol=1e-5)
    # all-item candidates: the same formula over a candidate table
    table = torch.randn(9, 4)
    index = torch.tensor([3, 0, 8, 3, 5])
    naive = 0.0
    for n in range(5):
        num = max(float(table[index[n]] @ phi[n, k]) / 2 for k in range(3))
        den = torch.logsumexp((phi[n] @ table.T).flatten() / 2, 0)
        naive += float(den) - num
    assert math.isclose(float(s2i_loss(phi, table, index)), naive / 5, rel_tol=1e-5)


def test_s2s_matches_naive_loop():
    torch.manual_seed(2)
    earlier, future = torch.randn(6, 2, 4), torch.randn(6, 2, 4)
    terms = s2s_terms(earlier, future)
    naive = _naive_s2s_terms(earlier, future)
    torch.testing.assert_close(terms, naive, rtol=1e-5, atol=1e-5)
    for lam in (0.0, 0.25, 0.5, 1.0):
        n_keep = math.ceil(lam * 12)
        expected = float(naive.flatten().sort().values[:n_keep].sum()) / 6
        assert math.isclose(float(s2s_loss(earlier, future, lam)), expected, abs_tol=1e-5)


def test_reversed_futures_hand_example():
    users = torch.tensor([7, 7, 7, 7, 9, 9])
    targets = torch.tensor([1, 2, 3, 4, 5, 6])
    future, length = reversed_futures(users, targets, max_len=3)
    assert future.tolist() == [
        [3, 2, 1],  # s_{i+1} = 1 last, the 3 items closest to i kept
        [4, 3, 2],
        [4, 3, 0],
        [4, 0, 0],
        [6, 5, 0],
        [6, 0, 0],
    ]
    assert length.tolist() == [3, 3, 2, 1, 2, 1]


# --- model on the tiny dataset -------------------------------------------------------------------
def tiny_config(**overrides):
    config_dict = {
        "data_path": str(TINY_DATA),
        "n_layers": 2,
        "hidden_size": 16,
        "inner_size": 32,
        "arch_search": False,
        **overrides,
    }
    return Config("AutoDisenSeq", "tiny", [str(TINY_YAML)], config_dict)


@pytest.fixture(scope="module")
def tiny_data():
    config = tiny_config()
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    return config, data_preparation(config, dataset)


def _model(tiny_data, **overrides):
    config, (train_data, _, _) = tiny_data
    saved = {key: config[key] for key in overrides}
    for key, value in overrides.items():
        config[key] = value
    try:
        init_seed(config["seed"], True)
        return AutoDisenSeq(config, train_data._dataset)
    finally:
        for key, value in saved.items():
            config[key] = value


def test_futures_come_from_the_training_split_only(tiny_data):
    config, (train_data, valid_data, test_data) = tiny_data
    _model(tiny_data)
    inter = train_data._dataset.inter_feat
    user = inter["user_id"][0]
    rows = (inter["user_id"] == user).nonzero().flatten()
    targets = inter["item_id"][rows]
    first_future = inter[FUTURE_FIELD][rows[0]][: int(inter[FUTURE_LENGTH_FIELD][rows[0]])]
    expected = targets[: config["MAX_ITEM_LIST_LENGTH"]].flip(0)
    assert first_future.tolist() == expected.tolist()
    last = rows[-1]
    assert inter[FUTURE_LENGTH_FIELD][last] == 1 and inter[FUTURE_FIELD][last, 0] == targets[-1]
    held_out = set(
        valid_data._dataset.inter_feat["item_id"][
            valid_data._dataset.inter_feat["user_id"] == user
        ].tolist()
    ) | set(
        test_data._dataset.inter_feat["item_id"][
            test_data._dataset.inter_feat["user_id"] == user
        ].tolist()
    )
    assert not held_out & set(inter[FUTURE_FIELD][rows].flatten().tolist()) - set(targets.tolist())


def test_future_is_encoded_reversed_with_the_label_betas(tiny_data):
    _, (train_data, _, _) = tiny_data
    model = _model(tiny_data).eval()
    with torch.no_grad():
        model.disentanglement.beta[1].add_(1.0)
        batch = train_data._dataset.inter_feat[torch.arange(8)]
        phi_earlier, phi_future = model.forward_seq2seq(batch)
        future, lengths = batch[FUTURE_FIELD], batch[FUTURE_LENGTH_FIELD]
        ones = torch.ones_like(lengths)
        torch.testing.assert_close(phi_future, model.encode(future, lengths, ones))
        assert not torch.allclose(phi_future, model.encode(future, lengths, 0 * ones))
        torch.testing.assert_close(
            phi_earlier, model.forward(batch["item_id_list"], batch["item_length"])
        )


def test_predict_matches_full_sort_and_max_over_intents(tiny_data):
    _, (train_data, _, _) = tiny_data
    model = _model(tiny_data).eval()
    batch = train_data._dataset.inter_feat[torch.tensor([0, 0, 0, 5, 5, 9])]
    with torch.no_grad():
        scores = model.predict(batch)
        full = model.full_sort_predict(batch)
        phi = model.forward(batch["item_id_list"], batch["item_length"])
        h = model.item_embedding(batch["item_id"])
    expected = torch.tensor([max(float(h[b] @ phi[b, k]) for k in range(4)) for b in range(6)]) / 4
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(scores, full[torch.arange(6), batch["item_id"]])


def test_padding_never_reaches_valid_positions_for_any_sampled_architecture(tiny_data):
    """The encoder's (L, L) causal mask is exact for left-aligned sequences: filling the padding
    with real items changes no φ, whatever architecture (conv, attention from any layer) runs."""
    _, (train_data, _, _) = tiny_data
    model = _model(tiny_data, n_layers=3, arch_search=True).eval()
    inter = train_data._dataset.inter_feat[torch.arange(40)]
    seqs, lengths = inter["item_id_list"], inter["item_length"]
    assert (lengths < seqs.size(1)).any()
    padding = torch.arange(seqs.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)  # (B, L)
    filled = torch.where(padding, torch.randint_like(seqs, 1, model.n_items), seqs)
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(10):
            arch = model.space.sample(rng)
            beta = torch.zeros_like(lengths)
            torch.testing.assert_close(
                model.encode(seqs, lengths, beta, arch), model.encode(filled, lengths, beta, arch)
            )


@pytest.mark.parametrize("chunk", [1, 7, 0])
def test_chunked_inference_equals_one_pass_and_keeps_row_order(tiny_data, chunk):
    """Length-sorted chunks, each cut to its longest sequence, give every row the φ of one
    full-width pass, in the input order, for any architecture."""
    _, (train_data, _, _) = tiny_data
    model = _model(tiny_data, n_layers=3, arch_search=True, inference_chunk=chunk).eval()
    assert model.inference_chunk == chunk
    inter = train_data._dataset.inter_feat[torch.randperm(len(train_data._dataset))[:40]]
    seqs, lengths = inter["item_id_list"], inter["item_length"]
    assert len(set(lengths.tolist())) > 3  # mixed lengths: chunks are cut to different widths
    rng = random.Random(1)
    with torch.no_grad():
        for _ in range(5):
            arch = model.space.sample(rng)
            torch.testing.assert_close(
                model.encode_inference(seqs, lengths, arch),
                model.encode(seqs, lengths, torch.zeros_like(lengths), arch),
            )


@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "intent_similarity",
            "cosin",
            "intent_similarity='cosin': choose one of ('cosine', 'dot') (did you mean 'cosine'?) (Eq. 4)",
        ),
        (
            "beta_init",
            "zeros",
            "beta_init='zeros': choose one of ('random', 'zero') (did you mean 'zero'?)",
        ),
        (
            "s2i_negatives",
            "al",
            "s2i_negatives='al': choose one of ('batch', 'all') (did you mean 'all'?)",
        ),
        ("lambda_s2s", 1.5, "lambda_s2s=1.5 must lie in [0, 1]"),
    ],
)
def test_bad_model_options_name_the_option_and_the_closest_choice(tiny_data, key, value, message):
    # a ConfigError: the command line prints it as one line (test_main_job.py), no traceback
    with pytest.raises(ConfigError, match=re.escape(message)):
        _model(tiny_data, **{key: value})


def test_inference_chunk_auto_and_bad_value(tiny_data):
    assert _model(tiny_data).inference_chunk == 64  # auto on the CPU
    with pytest.raises(ConfigError, match="inference_chunk"):
        _model(tiny_data, inference_chunk=-1)


def test_prefix_cache_reuses_shared_layers_exactly_and_stays_bounded(tiny_data):
    _, (train_data, _, _) = tiny_data
    model = _model(tiny_data, n_layers=4, arch_search=True, inference_chunk=16).eval()
    inter = train_data._dataset.inter_feat[torch.arange(40)]
    seqs, lengths = inter["item_id_list"], inter["item_length"]
    rng = random.Random(2)
    first = model.space.sample(rng)
    other = model.space.sample(rng)
    while other[0] == first[0]:
        other = model.space.sample(rng)
    sharing_two = first[:2] + other[2:]  # the first two layers of `first`
    caches = {}
    with torch.no_grad():
        for arch in (first, sharing_two, other):
            expected = model.encode(seqs, lengths, torch.zeros_like(lengths), arch)
            torch.testing.assert_close(
                model.encode_inference(seqs, lengths, arch, caches), expected
            )
    n_chunks = math.ceil(40 / 16)
    assert len(caches) == n_chunks
    assert sum(c.hits for c in caches.values()) == n_chunks  # `sharing_two`, once per chunk
    assert sum(c.misses for c in caches.values()) == 2 * n_chunks  # `first` and `other`
    # an entry is only used for the input it was computed from
    cache = caches[0]
    x0 = torch.randn(3, 5, model.hidden_size)
    assert cache.longest(first, x0) == ([x0], 0) and not cache._entries
    # least recently used entries go once the distinct tensors exceed the budget
    tensor = lambda: torch.randn_like(x0)  # noqa: E731
    small = model_module.PrefixCache(max_bytes=2 * x0.numel() * 4)  # two layer outputs
    a, b, c = tensor(), tensor(), tensor()
    small.longest(first, x0)
    small.put(first[:1], [x0, a])
    small.put(other[:1], [x0, b])
    assert len(small._entries) == 2
    assert small.longest(first, x0)[1] == 1  # now the most recently used
    small.put(first[:2], [x0, a, c])  # 3 distinct tensors: `other[:1]`, the least recent, goes
    assert list(small._entries) == [first[:1], first[:2]]
    assert small.nbytes() == 2 * x0.numel() * 4  # `a` is shared, counted once


def test_a_training_step_lowers_the_loss_and_lambda_zero_is_s2i_only(tiny_data):
    _, (train_data, _, _) = tiny_data
    model = _model(tiny_data, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    batch = train_data._dataset.inter_feat[torch.arange(64)]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = sum(model.calculate_loss(batch))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    s2i_only = _model(tiny_data, lambda_s2s=0.0)
    assert torch.is_tensor(s2i_only.calculate_loss(batch))  # a single S2I term
    _, s2s = s2i_only.seq2seq_losses(batch)
    assert float(s2s) == 0.0


# --- supernet --------------------------------------------------------------------------------------
def test_context_aware_sharing():
    space = SearchSpace(3, ("zero", "identity", "ffn"))
    # layer 3 takes an ffn extra connection from layer 1; layer 1 is attention in a, b, addition in c
    attn1 = AttentionLayer("identity", 0, "identity", "identity")
    add1 = AdditionLayer("identity", 0, "zero")
    layer2 = AdditionLayer("identity", 0, "zero")
    layer3 = AdditionLayer("identity", 1, "ffn")
    a = (attn1, layer2, layer3)
    b = (AttentionLayer("ffn", 0, "ffn", "identity"), layer2, layer3)
    c = (add1, layer2, layer3)
    assert "l3_s1_attn2add_ffn" in arch_parameter_keys(a) & arch_parameter_keys(b)  # same context
    assert "l3_s1_add2add_ffn" in arch_parameter_keys(c) - arch_parameter_keys(a)  # other context

    torch.manual_seed(0)
    net = AttentionSupernet(space, 8, 16, 0.0, 0.0, 1e-12)
    x, mask = torch.randn(2, 4, 8), torch.zeros(2, 4, 4)
    modules = dict(net.connections.items())
    assert modules["l3_s1_attn2add_ffn"] is not modules["l3_s1_add2add_ffn"]

    def grads_after(arch):
        net.zero_grad(set_to_none=True)
        net(x, mask, arch).sum().backward()
        return {
            name.split(".")[1]
            for name, p in net.named_parameters()
            if p.grad is not None and p.grad.abs().sum() > 0
        }

    used_a, used_c = grads_after(a), grads_after(c)
    assert "l3_s1_attn2add_ffn" in used_a and "l3_s1_add2add_ffn" not in used_a
    assert "l3_s1_add2add_ffn" in used_c and "l3_s1_attn2add_ffn" not in used_c
    assert used_a <= arch_parameter_keys(a) and used_c <= arch_parameter_keys(c)
    # query/key/value of one attention layer never share parameters
    assert {"l1_s0_add2q", "l1_s0_add2k", "l1_s0_add2v"} <= used_a


def test_pruned_supernet_inherits_the_same_weights():
    space = SearchSpace(3)
    arch = space.sample(random.Random(4))
    torch.manual_seed(0)
    full = AttentionSupernet(space, 8, 16, 0.0, 0.0, 1e-12).eval()
    pruned = AttentionSupernet(space, 8, 16, 0.0, 0.0, 1e-12, archs=[arch]).eval()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in full.parameters())
    state = full.state_dict()
    pruned.load_state_dict({k: v for k, v in state.items() if k in pruned.state_dict()})
    x, mask = torch.randn(2, 5, 8), torch.zeros(2, 5, 5)
    torch.testing.assert_close(pruned(x, mask, arch), full(x, mask, arch))


# --- evolutionary search ---------------------------------------------------------------------------
def test_search_returns_the_best_of_what_it_evaluated():
    space = SearchSpace(4)
    calls = []

    def fitness(arch):  # prefers attention layers whose key/value come from far back
        calls.append(arch)
        return sum(
            (2 + layer.kv_source) if layer.type == "attention" else 0 for layer in arch
        ) + 0.01 * sum(layer.type == "addition" and layer.extra_op == "ffn" for layer in arch)

    result = evolutionary_search(space, fitness, 8, 6, 0.3, random.Random(0))
    assert len(calls) == len(set(calls)) == len(result.history)  # each arch evaluated once
    assert result.best_fitness == max(result.history.values()) == fitness(result.best)
    initial_best = max(fitness(a) for a in calls[:8])
    assert result.best_fitness >= initial_best
    for arch in result.history:
        space.validate(arch)


# --- architecture files ----------------------------------------------------------------------------
def test_arch_json_round_trip_and_render(tmp_path):
    space = SearchSpace(5)
    arch = space.sample(random.Random(1))
    path = save_arch(arch, space.ops, tmp_path / "a.json")
    doc = json.loads(path.read_text())
    assert doc["n_layers"] == 5 and doc["layers"][0]["type"] == arch[0].type
    loaded, ops = load_arch(path)
    assert loaded == arch and tuple(ops) == space.ops
    assert space.from_genes(space.to_genes(arch)) == arch
    png = render_architecture(arch, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


# --- end to end ------------------------------------------------------------------------------------
def _tiny_run(tiny_cli, *args):
    overrides = [arg for arg in tiny_cli if arg.startswith(("--data_path", "--checkpoint_dir"))]
    return run("AutoDisenSeq", "tiny", [str(TINY_YAML)], cmd_args=[*overrides, *args])


def test_search_run_then_fixed_arch_reproduces(tiny_cli, workdir):
    small = ["--n_layers=2", "--hidden_size=16", "--inner_size=32", "--epochs=1"]
    small += ["--pretrain_epochs=1"]
    search = _tiny_run(tiny_cli, *small, "--search_population=3", "--search_generations=1")
    assert_metrics_valid(search["test_result"], METRICS)
    arch_file = search["model_file"].replace(".pth", ".arch.json")
    arch, _ = load_arch(arch_file)
    SearchSpace(2).validate(arch)
    assert list((workdir / "saved").glob("*.arch.png"))
    # the checkpoint rebuilds the searched (pruned) encoder when reloaded
    _, model, *_ = load_data_and_model(search["model_file"])
    assert model.architecture == arch

    fixed = [f"--arch={arch_file}", "--final_training=retrain"]
    first = _tiny_run(tiny_cli, *small, *fixed)
    second = _tiny_run(tiny_cli, *small, *fixed)
    assert_metrics_valid(first["test_result"], METRICS)
    assert first["test_result"] == second["test_result"]
    assert first["valid_result"] == second["valid_result"]


def test_s2i_only_row_runs(tiny_cli):
    result = _tiny_run(
        tiny_cli,
        "--disentangle=False",
        "--lambda_s2s=0",
        "--arch_search=False",
        "--pretrain_epochs=0",
        "--n_layers=2",
    )
    assert_metrics_valid(result["test_result"], METRICS)
    assert result["config"]["n_intents"] == 4  # K is ignored: φ = z_m


def test_presets_cold_start_and_tune_space():
    config = tiny_config()
    assert config["learning_rate"] == 0.001 and config["train_batch_size"] == 256
    assert config["eval_args"]["mode"] == {"valid": "pop100", "test": "pop100"}
    assert Config("AutoDisenSeq", "ml-100k")["MAX_ITEM_LIST_LENGTH"] == 50
    cold = Config("AutoDisenSeq", "ml-100k", config_dict={"eval_protocol": "seq_pop100_coldstart"})
    assert cold["MAX_ITEM_LIST_LENGTH"] == 5 and cold["topk"] == [1, 5, 10]
    tune = yaml.safe_load(
        (Path(recbole_ext.__file__).parent / "properties/tune/AutoDisenSeq.yaml").read_text()
    )
    assert tune["hidden_size"] == {"type": "choice", "values": [64, 128, 256]}
    assert tune["n_layers"]["values"] == [2, 3, 4, 5, 6]
    assert tune["lambda_s2s"]["values"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert set(tune["asha"]) == {"grace_period", "reduction_factor"}


def test_search_fitness_equals_recbole_scoring_on_the_same_candidates(tiny_data, monkeypatch):
    config, (_, valid_data, _) = tiny_data
    model = _model(tiny_data, arch_search=True)  # the whole supernet
    model.architecture = model.space.sasrec_like()
    trainer = AutoDisenSeqTrainer(config, model)
    batches = list(valid_data)  # RecBole re-draws pop100 negatives on every pass
    fast = trainer.architecture_fitness(valid_data, batches)
    monkeypatch.setattr(trainer, "_candidate_table", lambda batches: None)
    recbole_path = trainer.architecture_fitness(valid_data, batches)  # _neg_sample_batch_eval
    other = model.space.sample(random.Random(3))
    for arch in (model.architecture, other):
        assert math.isclose(fast(arch), recbole_path(arch), abs_tol=1e-6)
    assert fast(other) != fast(model.architecture)  # the architecture is really swapped
    assert model.architecture != other
    # a fitness made before the weights change scores the current weights, not a stale copy
    with torch.no_grad():
        model.item_embedding.weight.mul_(torch.randn_like(model.item_embedding.weight))
    fresh = trainer.architecture_fitness(valid_data, batches)
    assert math.isclose(fast(other), fresh(other), abs_tol=1e-6)
    assert math.isclose(fast(other), recbole_path(other), abs_tol=1e-6)


# --- the authors' pipeline: fine-tuning loss, negatives, rows, stages -------------------------------
def test_finetune_bce_matches_naive_loop(tiny_data):
    torch.manual_seed(3)
    phi, positive, negatives = torch.randn(4, 3, 5), torch.randn(4, 5), torch.randn(4, 6, 5)

    def naive(phi, positive, negatives):
        def score(b, e):  # max over the K intents of e·φ^(k)
            return max(float(e @ phi[b, k]) for k in range(phi.size(1)))

        total = 0.0
        for b in range(phi.size(0)):
            total -= math.log(1 / (1 + math.exp(-score(b, positive[b]))))
            for j in range(negatives.size(1)):
                total -= math.log(1 - 1 / (1 + math.exp(-score(b, negatives[b, j]))))
        return total / phi.size(0)

    loss = finetune_bce_loss(phi, positive, negatives)
    assert math.isclose(float(loss), naive(phi, positive, negatives), rel_tol=1e-5)
    assert math.isfinite(float(finetune_bce_loss(100 * phi, positive, negatives)))  # softplus
    # the model's loss: its φ, its item embeddings, the negatives the trainer put in the batch
    _, (train_data, _, _) = tiny_data
    model = _model(tiny_data).eval()
    batch = train_data._dataset.inter_feat[torch.arange(6)]
    batch[NEGATIVES_FIELD] = torch.randint(1, model.n_items, (6, 5))
    with torch.no_grad():
        phi = model.forward(batch["item_id_list"], batch["item_length"])
        expected = naive(
            phi,
            model.item_embedding(batch["item_id"]),
            model.item_embedding(batch[NEGATIVES_FIELD]),
        )
        assert math.isclose(float(model.calculate_finetune_loss(batch)), expected, rel_tol=1e-5)
    # finetune_score_scale: sqrt_d (ours) scores every item e·φ/√D, as pre-training and ranking
    scaled = _model(tiny_data, finetune_score_scale="sqrt_d").eval()
    assert scaled.finetune_score_divisor == math.sqrt(scaled.hidden_size) == 4.0  # D = 16
    with torch.no_grad():
        phi = scaled.forward(batch["item_id_list"], batch["item_length"])
        positive = scaled.item_embedding(batch["item_id"])
        negatives = scaled.item_embedding(batch[NEGATIVES_FIELD])
        expected = naive(phi / 4.0, positive, negatives)
        assert math.isclose(float(scaled.calculate_finetune_loss(batch)), expected, rel_tol=1e-5)
        assert not math.isclose(expected, naive(phi, positive, negatives), rel_tol=1e-2)
    with pytest.raises(
        ConfigError, match="finetune_score_scale='sqrtd': choose one of .*did you mean 'sqrt_d'"
    ):
        _model(tiny_data, finetune_score_scale="sqrtd")


def test_popularity_negatives_are_unseen_and_popularity_distributed():
    history = {0: [1, 2], 1: [1, 3, 5], 2: [3, 4, 5], 3: [1, 5, 6], 4: [5, 3]}
    users = torch.tensor([u for u, items in history.items() for _ in items])
    items = torch.tensor([i for items in history.values() for i in items])
    sampler = PopularityNegatives(users, items, n_items=8)  # item 7 never occurs: never drawn
    assert sampler.frequency.tolist() == [0, 3, 1, 3, 1, 4, 1, 0]
    draws = sampler.sample(torch.tensor([0, 2, 0]), 6000, torch.Generator().manual_seed(0))
    assert draws.shape == (3, 6000)
    for row, user in enumerate([0, 2, 0]):
        assert not set(draws[row].tolist()) & set(history[user]), user  # never seen
        assert not set(draws[row].tolist()) & {0, 7}  # padding and unseen-by-anyone items
    # user 0: items 3, 4, 5, 6 with weights 3, 1, 4, 1 (χ² goodness of fit, 12,000 draws)
    counts = torch.bincount(draws[[0, 2]].flatten(), minlength=8)[[3, 4, 5, 6]].double()
    expected = torch.tensor([3.0, 1.0, 4.0, 1.0], dtype=torch.float64) / 9 * counts.sum()
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 0.01
    uniform = torch.full(
        (4,), counts.sum().item() / 4, dtype=torch.float64
    )  # the test has power: not uniform
    assert chisquare(counts.numpy(), uniform.numpy()).pvalue < 1e-6
    # user 2: items 1, 2, 6 with weights 3, 1, 1
    counts = torch.bincount(draws[1], minlength=8)[[1, 2, 6]].double()
    expected = torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64) / 5 * counts.sum()
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 0.01
    # same generator seed, same draws
    again = sampler.sample(torch.tensor([0, 2, 0]), 6000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    everything = PopularityNegatives(torch.zeros(6).long(), torch.arange(1, 7), n_items=7)
    with pytest.raises(ValueError, match="user 0 interacted with every item"):
        everything.sample(torch.tensor([0]), 1)


def test_training_rows_rebuild_sequences_windows_cuts_and_last_prefixes(tiny_data):
    config, (train_data, valid_data, _) = tiny_data
    dataset = train_data._dataset
    inter = dataset.inter_feat
    max_len, step = config["MAX_ITEM_LIST_LENGTH"], 10
    rows = TrainingRows(dataset, max_len, step)
    valid = valid_data._dataset.inter_feat
    long_users = 0
    for user in inter["user_id"].unique().tolist():
        mine = (inter["user_id"] == user).nonzero().flatten()
        sequence = [int(inter["item_id_list"][mine[0], 0])] + inter["item_id"][mine].tolist()
        # the last prefix row, and the validation row's history, end with the same items
        last = mine[-1]
        history = inter["item_id_list"][last, : int(inter["item_length"][last])].tolist()
        assert sequence[-len(history) - 1 :] == history + [int(inter["item_id"][last])]
        v = (valid["user_id"] == user).nonzero().flatten()[0]
        assert (
            valid["item_id_list"][v, : int(valid["item_length"][v])].tolist()
            == (sequence[-max_len:])
        )
        # fine-tuning row: the user's last training prefix
        row = (rows.last["user_id"] == user).nonzero().flatten()
        assert row.numel() == 1 and int(rows.last["item_id"][row]) == sequence[-1]
        # windows: contiguous slices of L items every `step` from the newest, and one from 0
        n = len(sequence)
        windows = [
            rows.windows[w, : int(rows.window_lengths[w])].tolist()
            for w in (rows.window_users == user).nonzero().flatten()
        ]
        starts = [0] if n <= max_len else [*range(n - max_len, 0, -step), 0][::-1]
        assert windows == [sequence[a : a + max_len] for a in starts]
        long_users += n > max_len
    assert long_users > 5  # several users have more than one window
    # every window is cut once per epoch; the same generator seed gives the same cuts
    first = rows.random_cut(torch.Generator().manual_seed(1))
    second = rows.random_cut(torch.Generator().manual_seed(2))
    again = rows.random_cut(torch.Generator().manual_seed(1))
    assert len(first) == rows.windows.size(0)
    assert torch.equal(first["item_length"], again["item_length"])
    assert not torch.equal(first["item_length"], second["item_length"])
    for w in range(len(first)):
        t, n = int(first["item_length"][w]), int(rows.window_lengths[w])
        window = rows.windows[w, :n].tolist()
        assert 1 <= t <= max(1, n - 2)
        assert first["item_id_list"][w, :t].tolist() == window[:t]
        assert int(first["item_id"][w]) == window[t]
        future = first[FUTURE_FIELD][w, : int(first[FUTURE_LENGTH_FIELD][w])].tolist()
        assert future == window[t:][::-1]
    # the negatives' popularity is the training interactions'
    items = torch.cat([
        torch.tensor([int(inter["item_id_list"][m[0], 0])] + inter["item_id"][m].tolist())
        for m in (
            (inter["user_id"] == u).nonzero().flatten() for u in inter["user_id"].unique()
        )
    ])  # fmt: skip
    assert torch.equal(
        rows.negatives.frequency[1:], torch.bincount(items, minlength=dataset.item_num)[1:].double()
    )


def stage_config(tmp_path, **overrides):
    """The authors' recipe on the tiny dataset, small and quick."""
    return Config(
        "AutoDisenSeq",
        "tiny",
        [str(TINY_YAML)],
        {
            "data_path": str(TINY_DATA),
            "checkpoint_dir": str(tmp_path / "saved"),
            "preset": "autodisenseq_authors",
            "n_layers": 2,
            "hidden_size": 16,
            "inner_size": 32,
            "pretrain_epochs": 2,
            "pretrain_steps_per_batch": 2,
            "search_population": 3,
            "search_generations": 1,
            "epochs": 2,
            "finetune_negatives": 10,
            "render_arch": False,
            **overrides,
        },
    )


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def staged_trainer(config, snapshots):
    """A built trainer whose stage boundaries record the model (and the optimiser's state)."""
    _, model, train_data, valid_data, test_data = build(config)
    trainer = AutoDisenSeqTrainer(config, model)
    snapshots["init"] = state(model)
    pretrain, search, train_epoch = (
        trainer.pretrain,
        trainer.search_architecture,
        trainer._train_epoch,
    )

    def pretrain_and_record(*args, **kwargs):
        pretrain(*args, **kwargs)
        snapshots["pretrained"] = state(model)
        snapshots["pretrain_steps"] = trainer.optimizer.state_dict()["state"][0]["step"].item()

    def search_and_record(*args, **kwargs):
        result = search(*args, **kwargs)
        snapshots["searched"] = state(model)
        return result

    def epoch_and_record(train, epoch_idx, *args, **kwargs):
        if trainer.stage == FINETUNE and "finetune_start" not in snapshots:
            snapshots["finetune_start"] = state(model)
            snapshots["finetune_optimizer"] = len(trainer.optimizer.state_dict()["state"])
        return train_epoch(train, epoch_idx, *args, **kwargs)

    trainer.pretrain = pretrain_and_record
    trainer.search_architecture = search_and_record
    trainer._train_epoch = epoch_and_record
    return trainer, model, train_data, valid_data, test_data


def changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix) and k in after]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def test_pretrain_search_finetune_pass_weights_between_stages(tmp_path, workdir):
    config = stage_config(tmp_path)
    snapshots = {}
    trainer, model, train_data, valid_data, _ = staged_trainer(config, snapshots)
    trainer.fit(train_data, valid_data, saved=True)
    init, pre, searched = snapshots["init"], snapshots["pretrained"], snapshots["searched"]
    start, end = snapshots["finetune_start"], state(model)
    assert trainer.stage_log == [(PRETRAIN, "ran"), (SEARCH, "ran"), (FINETUNE, "ran")]
    # 1. pre-training moves the embeddings, the supernet and the disentanglement layer; it ran
    #    2 epochs x (random-cut batches) x 2 steps, each with its sampled architecture
    for prefix in ("item_embedding", "encoder.", "disentanglement.beta", "disentanglement.alpha"):
        assert changed(init, pre, prefix), prefix
    batches = math.ceil(trainer.rows(train_data).windows.size(0) / config["train_batch_size"])
    assert snapshots["pretrain_steps"] == 2 * batches * 2
    assert len(trainer.epoch_seconds[PRETRAIN]) == 2 and len(trainer.epoch_seconds[FINETUNE]) == 2
    # 2. the search is inference only: the pre-trained weights are untouched
    assert searched.keys() == pre.keys()
    for key in pre:
        assert torch.equal(pre[key], searched[key]), key
    # 3. fine-tuning starts from the pre-trained weights of the searched architecture (a fresh
    #    optimiser), and moves them
    assert model.architecture == trainer.search_result.best
    assert set(start) < set(pre)  # the supernet pruned to the searched architecture
    for key in start:
        if key != "arch_genes":
            assert torch.equal(start[key], pre[key]), key
    assert snapshots["finetune_optimizer"] == 0
    for prefix in ("item_embedding", "encoder.", "disentanglement."):
        assert changed(start, end, prefix), prefix
    # the tested checkpoint is the fine-tuned model with the searched architecture
    _, loaded, *_ = load_data_and_model(trainer.saved_model_file)
    assert loaded.architecture == trainer.search_result.best


def test_pretraining_clips_gradients_and_fine_tuning_does_not(tmp_path, workdir, monkeypatch):
    calls = []
    real = recbole_trainer_module.clip_grad_norm_

    def recording(parameters, **kwargs):
        calls.append((trainer.stage, kwargs))
        return real(parameters, **kwargs)

    monkeypatch.setattr(recbole_trainer_module, "clip_grad_norm_", recording)
    config = stage_config(
        tmp_path, arch_search=False, pretrain_epochs=1, pretrain_clip_grad_norm=0.25, epochs=1
    )
    trainer, _, train_data, valid_data, _ = staged_trainer(config, {})
    trainer.fit(train_data, valid_data, saved=False)
    batches = math.ceil(trainer.rows(train_data).windows.size(0) / config["train_batch_size"])
    assert calls == [(PRETRAIN, {"max_norm": 0.25})] * (batches * 2)  # 2 steps per batch
    assert trainer.clip_grad_norm is None  # RecBole's own setting is back for fine-tuning


def test_a_stopped_run_resumes_its_stage_and_skips_finished_ones(tmp_path, workdir, monkeypatch):
    config = stage_config(tmp_path)
    # uninterrupted
    whole = {}
    trainer, _, train_data, valid_data, test_data = staged_trainer(config, whole)
    trainer.enable_resume(tmp_path / "whole")
    trainer.fit(train_data, valid_data)
    whole_test = trainer.evaluate(test_data)

    # stopped in the second pre-training epoch, then resumed by a fresh process-like trainer
    class Stop(Exception):
        pass

    stopped, _, train_data, valid_data, _ = staged_trainer(config, {})
    stopped.enable_resume(tmp_path / "stopped")
    train_epoch = stopped._train_epoch

    def stop_in_second_epoch(train, epoch_idx, *args, **kwargs):
        if stopped.stage == PRETRAIN and epoch_idx == 1:
            raise Stop
        return train_epoch(train, epoch_idx, *args, **kwargs)

    stopped._train_epoch = stop_in_second_epoch
    with pytest.raises(Stop):
        stopped.fit(train_data, valid_data)
    resumed_snapshots = {}
    resumed, _, train_data, valid_data, test_data = staged_trainer(config, resumed_snapshots)
    resumed.enable_resume(tmp_path / "stopped")
    resumed.fit(train_data, valid_data)
    assert len(resumed.epoch_seconds[PRETRAIN]) == 1  # only the second epoch ran again
    assert resumed.search_result.best == trainer.search_result.best
    for key, value in whole["finetune_start"].items():
        assert torch.equal(value, resumed_snapshots["finetune_start"][key]), key
    assert resumed.evaluate(test_data) == whole_test

    # a finished run: neither pre-training nor the search runs again, the same test result
    again, _, train_data, valid_data, test_data = staged_trainer(config, {})
    again.enable_resume(tmp_path / "whole")
    again.fit(train_data, valid_data)
    assert again.stage_log[:2] == [(PRETRAIN, "resumed"), (SEARCH, "resumed")]
    assert again.epoch_seconds == {PRETRAIN: [], FINETUNE: []}
    assert again.evaluate(test_data) == whole_test


def test_positions_from_the_newest_item(tiny_data):
    _, (train_data, _, _) = tiny_data
    oldest = _model(tiny_data, position_from="oldest").eval()
    newest = _model(tiny_data, position_from="newest").eval()
    for key, value in oldest.state_dict().items():  # same seed: the same weights
        assert torch.equal(value, newest.state_dict()[key]), key
    inter = train_data._dataset.inter_feat
    full = inter["item_length"] == inter["item_id_list"].size(1)
    assert full.any() and (~full).any()
    seqs, lengths = inter["item_id_list"], inter["item_length"]
    with torch.no_grad():
        a, b = oldest.forward(seqs, lengths), newest.forward(seqs, lengths)
        torch.testing.assert_close(a[full], b[full])  # a full sequence is indexed alike
        assert not torch.allclose(a[~full], b[~full])
        torch.testing.assert_close(  # chunks cut to their longest sequence stay exact
            newest.encode_inference(seqs[:50], lengths[:50]), b[:50]
        )
    with pytest.raises(ConfigError, match="position_from"):
        _model(tiny_data, position_from="last")


def test_preset_layers_the_authors_recipe_under_the_users_settings():
    plain = tiny_config()  # the defaults: the authors' pipeline but for two options (ours)
    assert (plain["pretrain_windows"], plain["finetune_loss"], plain["position_from"]) == (
        "random_cut",
        "bce",
        "newest",
    )
    assert (plain["intent_similarity"], plain["beta_init"]) == ("cosine", "random")
    assert (plain["pretrain_steps_per_batch"], plain["finetune_windows"]) == (1, "prefixes")
    authors = tiny_config(preset="autodisenseq_authors", epochs=3)
    assert authors["pretrain_windows"] == "random_cut" and authors["finetune_loss"] == "bce"
    assert authors["pretrain_steps_per_batch"] == 16 and authors["pretrain_epochs"] == 300
    assert authors["pretrain_clip_grad_norm"] == 50 / 256  # 50 on the loss summed over 256 rows
    assert authors["finetune_negatives"] == 50 and authors["position_from"] == "newest"
    assert (authors["pretrain_steps_per_batch"], authors["finetune_windows"]) == (16, "last")
    assert authors["epochs"] == 3  # the user's value wins over the preset's 300
    with pytest.raises(ValueError, match="preset='nope' is unknown"):
        tiny_config(preset="nope")


@pytest.mark.parametrize(
    "key,value",
    [
        ("pretrain_windows", "every"),
        ("finetune_windows", "first"),
        ("finetune_loss", "bpr"),
        ("pretrain_window_step", 0.0),
        ("pretrain_steps_per_batch", 0),
        ("pretrain_clip_grad_norm", -1.0),
        ("pretrain_epochs", -1),
        ("search_fitness", "ndgc"),
        ("final_training", "re-train"),
        ("search_population", 1),
        ("finetune_negatives", 0),
    ],
)
def test_bad_stage_options_name_the_option(tiny_data, key, value):
    config, _ = tiny_data
    model = _model(tiny_data)
    saved = config[key]
    config[key] = value
    try:
        with pytest.raises(ConfigError, match=key):  # one line on the command line
            AutoDisenSeqTrainer(config, model)
    finally:
        config[key] = saved


def test_pre_model_path_fine_tunes_a_saved_model_without_pre_training_or_search(tmp_path, workdir):
    """``pre_model_path`` (RecBole's S3Rec option) loads stages 1-2 from a file: a run's checkpoint
    (``epochs: 0`` saves the pre-trained, searched model) or a search resume point."""
    snapshots = {}
    first, model, train_data, valid_data, test_data = staged_trainer(
        stage_config(tmp_path, epochs=0), snapshots
    )
    first.enable_resume(tmp_path / "first")
    first.fit(train_data, valid_data, saved=True)
    saved_test = first.evaluate(test_data)
    searched = first.search_result.best
    search_state = tmp_path / "first" / "search.pth"
    assert search_state.is_file() and Path(first.saved_model_file).is_file()

    for source in (first.saved_model_file, str(search_state)):
        loaded = {}
        config = stage_config(tmp_path, pre_model_path=source, pretrain_epochs=5, epochs=1)
        trainer, model, train_data, valid_data, test_data = staged_trainer(config, loaded)
        trainer.fit(train_data, valid_data, saved=True)
        assert trainer.stage_log == [(PRETRAIN, "loaded"), (SEARCH, "loaded"), (FINETUNE, "ran")]
        assert "pretrained" not in loaded and "searched" not in loaded  # neither stage ran
        assert model.architecture == searched
        # fine-tuning starts from the saved weights (a fresh optimiser) and moves them
        start = loaded["finetune_start"]
        _, reference, *_ = load_data_and_model(first.saved_model_file)
        for key, value in reference.state_dict().items():
            assert torch.equal(start[key], value), key
        assert loaded["finetune_optimizer"] == 0
        assert changed(start, state(model), "item_embedding")
        assert [s.name for s in trainer.stage_plan(train_data, valid_data)] == ["fine-tuning"]
        # with no fine-tuning epoch the loaded model is tested as saved
        config = stage_config(tmp_path, pre_model_path=source, epochs=0)
        again, _, train_data, valid_data, test_data = staged_trainer(config, {})
        score, valid_result = again.fit(train_data, valid_data, saved=True)
        assert again.evaluate(test_data) == saved_test
        # ... and validated once: a real result, the same as the saved model's, not (-inf, None)
        assert valid_result == first.best_valid_result == again.evaluate(valid_data)
        assert score == valid_result["ndcg@10"] and 0 < score <= 1
        assert torch.load(again.saved_model_file, weights_only=False)["best_valid_score"] == score


def test_fine_tuning_a_loaded_search_point_equals_the_self_contained_run(tmp_path, workdir):
    """Pre-training and search do not depend on the fine-tuning options, and the fine-tuning
    starts from ``seed`` again: fine-tuning another run's search point (``pre_model_path``, the
    fine-tuning suite) gives exactly the result of one run doing all stages with the same seed."""
    small = {"pretrain_steps_per_batch": 1, "epochs": 2}
    authors, _, train_data, valid_data, _ = staged_trainer(
        stage_config(tmp_path, finetune_windows="last", **small), {}
    )
    authors.enable_resume(tmp_path / "authors")
    authors.fit(train_data, valid_data, saved=True)
    results = []
    for source in (None, str(tmp_path / "authors" / "search.pth")):
        config = stage_config(tmp_path, finetune_windows="prefixes", pre_model_path=source, **small)
        trainer, _, train_data, valid_data, test_data = staged_trainer(config, {})
        trainer.fit(train_data, valid_data, saved=True)
        results.append((trainer.best_valid_result, trainer.evaluate(test_data)))
    assert results[0] == results[1]
    assert results[0][0] != authors.best_valid_result  # the fine-tuning options did matter


def test_pre_model_path_errors_name_the_file_and_the_fix(tmp_path, workdir):
    # a user's missing file: refused by Config, before the data loads
    with pytest.raises(ConfigError, match=r"pre_model_path=.*nope\.pth.*no such file.*epochs=0"):
        stage_config(tmp_path, pre_model_path=str(tmp_path / "nope.pth"))
    (tmp_path / "x").write_bytes(b"")
    retrain = stage_config(tmp_path, pre_model_path=str(tmp_path / "x"), final_training="retrain")
    _, model, *_ = build(retrain)
    with pytest.raises(ConfigError, match="final_training=retrain"):
        AutoDisenSeqTrainer(retrain, model)
    # a file gone after the config was made: the trainer says so too
    retrain["final_training"], retrain["pre_model_path"] = "finetune", str(tmp_path / "gone.pth")
    with pytest.raises(ConfigError, match=r"gone\.pth.*no such file.*search\.pth"):
        AutoDisenSeqTrainer(retrain, model)
    # a model saved with other sizes
    small = stage_config(tmp_path, arch_search=False, pretrain_epochs=1, epochs=0)
    trainer, _, train_data, valid_data, _ = staged_trainer(small, {})
    trainer.fit(train_data, valid_data, saved=True)
    other = stage_config(tmp_path, pre_model_path=trainer.saved_model_file, hidden_size=8)
    trainer, _, train_data, valid_data, _ = staged_trainer(other, {})
    with pytest.raises(ConfigError, match="does not fit this model.*hidden_size"):
        trainer.fit(train_data, valid_data)
