"""AutoDisenSeq: Eq. 4-13 against naive loops, the search space (Eq. 19, Constraints 1-2),
context-aware sharing, the evolutionary search, architecture files, and end-to-end runs."""

import doctest
import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from recbole.data import data_preparation
from recbole.utils import init_seed

import recbole_ext
import recbole_ext.data.seq2seq as seq2seq_module
import recbole_ext.model.layers as layers_module
import recbole_ext.model.nas.space as space_module
import recbole_ext.model.sequential_recommender.autodisenseq as model_module
import recbole_ext.trainer.autodisenseq as trainer_module
from recbole_ext.config import Config
from recbole_ext.data.seq2seq import FUTURE_FIELD, FUTURE_LENGTH_FIELD, reversed_futures
from recbole_ext.model.layers import FastDropout, IntentionDisentanglement
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
    s2i_loss,
    s2s_keep_mask,
    s2s_loss,
    s2s_terms,
)
from recbole_ext.quick_start import load_data_and_model, run
from recbole_ext.trainer.autodisenseq import AutoDisenSeqTrainer
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
def _naive_disentangle(layer, z, lengths, beta_set):
    """Eq. (4)-(6) with explicit loops over sequences, positions and prototypes."""
    batch, _, dim = z.shape
    K = layer.prototypes.shape[0]
    out = torch.zeros(batch, K, dim)
    for n in range(batch):
        m = int(lengths[n])
        c = [layer.ln2(layer.prototypes[k]) for k in range(K)]
        z_big_m = layer.alpha.weight[m - 1] + z[n, m - 1] + layer.b_prime
        q_logits = []
        for s in range(m):
            h = layer.ln4(layer.alpha.weight[s] + z[n, s])
            z_prime = h + torch.relu(layer.transform(h))
            q_logits.append(torch.dot(z_prime, layer.ln3(z_big_m)) / math.sqrt(dim))
        q = torch.softmax(torch.stack(q_logits), 0)
        for k in range(K):
            acc = torch.zeros(dim)
            for i in range(m):
                logits = torch.stack(
                    [torch.dot(layer.ln1(z[n, i]), c[s]) / math.sqrt(dim) for s in range(K)]
                )
                acc = acc + torch.softmax(logits, 0)[k] * q[i] * z[n, i]
            out[n, k] = layer.ln5(layer.beta[beta_set[n], k] + acc)
    return out


@pytest.fixture
def disentangle_case():
    torch.manual_seed(0)
    layer = IntentionDisentanglement(hidden_size=8, n_intents=3, max_len=5, layer_norm_eps=1e-12)
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


def test_inference_chunk_auto_and_bad_value(tiny_data):
    assert _model(tiny_data).inference_chunk == 64  # auto on the CPU
    with pytest.raises(ValueError, match="inference_chunk"):
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
    search = _tiny_run(
        tiny_cli, *small, "--supernet_epochs=1", "--search_population=3", "--search_generations=1"
    )
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


def test_table3_ablation_row1_runs(tiny_cli):
    result = _tiny_run(
        tiny_cli, "--disentangle=False", "--lambda_s2s=0", "--arch_search=False", "--n_layers=2"
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
