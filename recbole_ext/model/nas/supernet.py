"""Weight-sharing supernet with context-aware parameter sharing (AutoDisenSeq §4.2.3-4.2.4).

Every connection of every architecture of a :class:`~.space.SearchSpace` is a module of this
supernet. A connection's parameters are keyed by its **place** (target layer k, source layer j),
its **context** — the source layer's type {addition, attention} × the target role {addition,
query, key, value}, 8 contexts — and the operation:

    l{k}_s{j}_{add|attn}2{add|q|k|v}_{op}      (operation parameters)
    l{k}_s{j}_{add|attn}2{q|k|v}               (the attention projection W^Q/W^K/W^V of Eq. 14)

so two architectures share a connection's weights only when the source layer has the same type
and the connection plays the same role (§4.2.4). The embedding layer 0 counts as an addition
layer. Per-layer parts (W_O and the LayerNorm of layer k, by layer type) are keyed ``l{k}`` /
``l{k}_{type}``. Single-path one-shot training (Eq. 21) runs one sampled architecture per
mini-batch: only its modules get gradients.

Built with ``archs=[a]`` the module holds only the parameters that ``a`` uses, under the same names,
so a searched architecture inherits the supernet's weights with ``load_state_dict(strict=False)``.
In the search, a :class:`PrefixCache` lets an architecture start from the stored outputs of the
longest prefix of layers it shares with one already evaluated (inference only, exact).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recbole_ext.model.layers import FastDropout
from recbole_ext.model.nas.ops import PARAMETER_FREE_OPS, apply_op, build_op
from recbole_ext.model.nas.space import AdditionLayer, Architecture, SearchSpace

ROLES = ("add", "q", "k", "v")
SOURCE_TYPES = ("add", "attn")


def source_type(arch: Architecture, j: int) -> str:
    """Type of layer j of ``arch`` as a connection context (layer 0, the input, is 'add')."""
    return "add" if j == 0 or isinstance(arch[j - 1], AdditionLayer) else "attn"


def connection_key(k: int, j: int, src: str, role: str, op: str | None = None) -> str:
    base = f"l{k}_s{j}_{src}2{role}"
    return base if op is None else f"{base}_{op}"


def arch_connections(arch: Architecture) -> list[tuple[int, int, str, str, str]]:
    """``(k, j, source type, role, op)`` of every connection of ``arch``, layer by layer."""
    out = []
    for k, layer in enumerate(arch, start=1):
        if isinstance(layer, AdditionLayer):
            out.append((k, k - 1, source_type(arch, k - 1), "add", layer.input_op))
            if layer.extra_op != "zero":
                j = layer.extra_source
                out.append((k, j, source_type(arch, j), "add", layer.extra_op))
        else:
            j = layer.kv_source
            out.append((k, k - 1, source_type(arch, k - 1), "q", layer.query_op))
            out.append((k, j, source_type(arch, j), "k", layer.key_op))
            out.append((k, j, source_type(arch, j), "v", layer.value_op))
    return out


def arch_parameter_keys(arch: Architecture) -> set[str]:
    """Names of the modules (connections, projections, per-layer parts) that ``arch`` uses."""
    keys = set()
    for k, j, src, role, op in arch_connections(arch):
        if role != "add":
            keys.add(connection_key(k, j, src, role))
        if op not in PARAMETER_FREE_OPS:
            keys.add(connection_key(k, j, src, role, op))
    for k, layer in enumerate(arch, start=1):
        keys.add(f"l{k}_{layer.type}")
        if layer.type == "attention":
            keys.add(f"l{k}")
    return keys


def all_parameter_keys(space: SearchSpace) -> set[str]:
    """Names of every module of the full supernet of ``space``."""
    keys = set()
    for k in range(1, space.n_layers + 1):
        keys.update({f"l{k}_addition", f"l{k}_attention", f"l{k}"})
        for j in range(k):
            for src in SOURCE_TYPES if j > 0 else ("add",):
                for role in ROLES:
                    if role == "q" and j != k - 1:
                        continue  # Constraint 1: the query comes from the previous layer
                    if role != "add":
                        keys.add(connection_key(k, j, src, role))
                    for op in space.ops:
                        if op not in PARAMETER_FREE_OPS:
                            keys.add(connection_key(k, j, src, role, op))
    return keys


class AttentionSupernet(nn.Module):
    """Encoder over a search space; ``forward(x0, attn_mask, arch)`` runs one architecture.

    Args:
        space: the search space (W hidden layers, operation pool).
        hidden_size: D.
        inner_size: hidden size of the ``ffn`` operation.
        hidden_dropout: dropout on the outputs of an addition layer's parametrised operations
            and of attention (after W_O), as SASRec's FFN and attention outputs.
        attn_dropout: dropout on attention probabilities.
        layer_norm_eps: LayerNorm epsilon.
        archs: build only the modules these architectures use (None: the whole supernet).
    """

    def __init__(
        self,
        space: SearchSpace,
        hidden_size: int,
        inner_size: int,
        hidden_dropout: float,
        attn_dropout: float,
        layer_norm_eps: float,
        archs: list[Architecture] | None = None,
    ):
        super().__init__()
        self.space = space
        self.hidden_size = hidden_size
        keys = (
            all_parameter_keys(space)
            if archs is None
            else set().union(*(arch_parameter_keys(a) for a in archs))
        )
        self.connections = nn.ModuleDict()  # operation modules, by connection_key(..., op)
        self.projections = nn.ModuleDict()  # W^Q / W^K / W^V, by connection_key(...)
        self.out_proj = nn.ModuleDict()  # W_O of attention layer k, by "l{k}"
        self.norms = nn.ModuleDict()  # LayerNorm of layer k, by "l{k}_{type}"
        for key in sorted(keys):
            parts = key.split("_")  # l{k} | l{k}_{type} | l{k}_s{j}_{ctx} | l{k}_s{j}_{ctx}_{op}
            if len(parts) == 1:
                self.out_proj[key] = nn.Linear(hidden_size, hidden_size)
            elif len(parts) == 2:
                self.norms[key] = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
            elif len(parts) == 3:
                self.projections[key] = nn.Linear(hidden_size, hidden_size)
            else:
                self.connections[key] = build_op(parts[3], hidden_size, inner_size)
        self.hidden_dropout = FastDropout(hidden_dropout)
        self.attn_dropout = FastDropout(attn_dropout)

    def _connect(self, k, j, src, role, op, x):
        if role != "add":
            x = self.projections[connection_key(k, j, src, role)](x)  # S = X W (Eq. 14)
        if op in PARAMETER_FREE_OPS:
            return apply_op(op, None, x)
        out = apply_op(op, self.connections[connection_key(k, j, src, role, op)], x)  # O(S), Eq. 15
        return self.hidden_dropout(out) if role == "add" else out

    def forward(
        self,
        x0: torch.Tensor,
        attn_mask: torch.Tensor,
        arch: Architecture,
        cache: PrefixCache | None = None,
    ):
        """Args:
            x0: (B, L, D) input layer.
            attn_mask: (L, L) or (B, L, L) additive mask (0 where query i may attend key j,
                else -1e9; :func:`recbole_ext.model.layers.causal_mask`).
            arch: the architecture to run.
            cache: outputs of architecture prefixes already run on this same ``x0`` (inference
                only, see :class:`PrefixCache`); the longest cached prefix of ``arch`` is reused
                and the new prefixes are stored.

        Returns:
            (B, L, D) output of hidden layer W.
        """
        outputs, done = [x0], 0
        if cache is not None:
            outputs, done = cache.longest(arch, x0)
        for k in range(done + 1, len(arch) + 1):
            outputs.append(self._layer(k, arch, outputs, attn_mask))
            if cache is not None and k < len(arch):  # a full architecture is evaluated once
                cache.put(arch[:k], outputs)
        return outputs[-1]

    def _layer(self, k: int, arch: Architecture, outputs: list[torch.Tensor], attn_mask):
        """Output of hidden layer k of ``arch`` from the outputs of layers 0..k-1."""
        layer, prev = arch[k - 1], outputs[k - 1]
        if isinstance(layer, AdditionLayer):
            h = self._connect(k, k - 1, source_type(arch, k - 1), "add", layer.input_op, prev)
            if layer.extra_op != "zero":
                j = layer.extra_source
                h = h + self._connect(k, j, source_type(arch, j), "add", layer.extra_op, outputs[j])
            return self.norms[f"l{k}_addition"](h)
        j, src_kv = layer.kv_source, source_type(arch, layer.kv_source)
        q = self._connect(k, k - 1, source_type(arch, k - 1), "q", layer.query_op, prev)
        key = self._connect(k, j, src_kv, "k", layer.key_op, outputs[j])
        value = self._connect(k, j, src_kv, "v", layer.value_op, outputs[j])
        scores = q @ key.transpose(1, 2) / math.sqrt(self.hidden_size)  # (B, L, L), Eq. 17
        probs = self.attn_dropout(torch.softmax(scores + attn_mask, dim=-1))
        attended = self.out_proj[f"l{k}"](probs @ value)  # (B, L, D), Eq. 18
        return self.norms[f"l{k}_attention"](prev + self.hidden_dropout(attended))


class PrefixCache:
    """Hidden-layer outputs of architecture prefixes, for evaluating many architectures on the
    same inputs (the evolutionary search). Layer k's output depends only on the genes of layers
    1..k and the input, so an architecture whose first k layers equal an evaluated one's starts
    at layer k + 1 (children of a mutation keep a parent's first layer with probability 1 - p).

    Valid only while the weights do not change and without dropout (``model.eval()``), and only
    for one input ``x0``: an entry remembers the input it was computed from and is ignored for
    any other. Least recently used entries are dropped beyond ``max_bytes`` of distinct tensors.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: dict[Architecture, list[torch.Tensor]] = {}  # insertion order = LRU order
        self._x0: torch.Tensor | None = None
        self.hits = self.misses = 0

    def longest(self, arch: Architecture, x0: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """``(outputs of layers 0..k, k)`` for the longest cached prefix of ``arch`` (k = 0: none)."""
        if self._x0 is None or self._x0.shape != x0.shape or not torch.equal(self._x0, x0):
            self._entries.clear()  # another input (or the first call)
            self._x0 = x0
        for k in range(len(arch) - 1, 0, -1):
            hit = self._entries.pop(arch[:k], None)
            if hit is not None:
                self._entries[arch[:k]] = hit  # most recently used
                self.hits += 1
                return list(hit), k
        self.misses += 1
        return [x0], 0

    def put(self, prefix: Architecture, outputs: list[torch.Tensor]) -> None:
        self._entries[prefix] = list(outputs[: len(prefix) + 1])
        while len(self._entries) > 1 and self.nbytes() > self.max_bytes:
            del self._entries[next(iter(self._entries))]

    def nbytes(self) -> int:
        tensors = {id(t): t for outs in self._entries.values() for t in outs[1:]}
        return sum(t.numel() * t.element_size() for t in tensors.values())
