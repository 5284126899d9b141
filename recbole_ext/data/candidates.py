"""Fixed evaluation candidates: every model of a comparison ranks the same sampled negatives.

RecBole's ``pop100``/``uni100`` evaluation draws fresh negatives at every evaluation, from a global
RNG whose state depends on the model (its initialisation, dropout, ...). Two models are then
ranked against different candidates. Here the negatives of every (user, target item) pair of the
valid and test sets are drawn once, with the run's seed, and served to every evaluation of the run;
with ``eval_candidates_file`` they are saved and served to every later run that names the file.

How they are drawn is the config key ``eval_neg_sampling``:

- ``distinct`` (AutoDisenSeq §5.1, following BERT4Rec): N **distinct** negatives per target, drawn
  by popularity (or uniformly for ``uniN``) among the items that are not in the user's history (all
  its interactions, valid and test ones included) and not the target
  (:func:`draw_distinct_negatives`). Drawn with a generator of its own: the global RNG is untouched.
- ``recbole``: RecBole's own draw (with replacement; with ``repeatable: True`` only the target is
  excluded), kept for comparison with published RecBole numbers. Without a file RecBole's sampler
  stays in place (fresh negatives at each evaluation); with one, the file holds exactly what
  each of RecBole's loaders (valid, test) draws on a first pass after ``np.random.seed(seed)``.

A candidate file records its ``eval_neg_sampling``; a run asking for the other one refuses it.
Files written before that record existed were all drawn by RecBole's sampler (``recbole``).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

EVAL_NEG_SAMPLING = {
    "distinct": "distinct popularity/uniform negatives outside the user's history",
    "recbole": "RecBole's draw, with replacement",
}
LEGACY_SAMPLING = "recbole"  # files without a record were drawn by RecBole's sampler
CHUNK_VALUES = 1 << 22  # keys x items drawn at once by draw_distinct_negatives (32 MiB of float64)


class FixedCandidateSampler:
    """Drop-in for RecBole's sampler in eval dataloaders: ``sample_by_user_ids`` answers from a
    table ``{(user, item): negatives}`` in RecBole's layout (the j-th negatives of all keys are
    contiguous)."""

    def __init__(self, phase: str, users: np.ndarray, items: np.ndarray, negatives: np.ndarray):
        self.phase = phase
        self._row = {(int(u), int(i)): r for r, (u, i) in enumerate(zip(users, items))}
        self._negatives = negatives  # (N, num)

    def sample_by_user_ids(self, user_ids, item_ids, num):
        try:
            rows = [self._row[(int(u), int(i))] for u, i in zip(user_ids, item_ids)]
        except KeyError as err:
            raise ValueError(
                f"eval_candidates_file has no candidates for (user, item) {err.args[0]} in the "
                f"{self.phase} set: it was made for another dataset split"
            ) from None
        if num != self._negatives.shape[1]:
            raise ValueError(
                f"eval_candidates_file holds {self._negatives.shape[1]} negatives per target, "
                f"this run asks for {num}: use the same eval mode (e.g. pop100) as when it was made"
            )
        negatives = self._negatives[rows]  # (n, num)
        return torch.from_numpy(negatives.T.reshape(-1).copy())  # (num * n,) RecBole's layout


class _RecordingSampler:
    """Wraps RecBole's sampler and records every ``(users, items, negatives)`` it draws."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.phase = sampler.phase
        self.users, self.items, self.negatives = [], [], []

    def sample_by_user_ids(self, user_ids, item_ids, num):
        drawn = self.sampler.sample_by_user_ids(user_ids, item_ids, num)  # (num * n,)
        self.users.append(np.asarray(user_ids))
        self.items.append(np.asarray(item_ids))
        self.negatives.append(drawn.numpy().reshape(num, -1).T)  # (n, num)
        return drawn


# --------------------------------------------------------------------------------------------
# Pure parts: weights, histories, the distinct draw
# --------------------------------------------------------------------------------------------
def sampling_weights(sampler) -> np.ndarray:
    """(item_num,) float64 weights of RecBole's eval sampler ``sampler`` (``Sampler`` or
    ``RepeatableSampler`` of a loader): its own distribution, unnormalised.

    ``popularity`` (``popN``): ``count(i) ** alpha`` where ``count`` counts item ``i`` in RecBole's
    ``_get_candidates_list()``, the item column of the interaction tables the sampler was built on
    (``repeatable: True``: the whole dataset; ``False``: the train, valid and test parts, the same
    rows). For sequential models these tables hold the augmented rows, one per interaction except
    each user's first, so an item counts the times it is a next item. ``alpha`` is the sampler's
    (1 unless ``train_neg_sample_args`` sets one). ``uniform`` (``uniN``): 1 for every item but the
    padding id 0, as RecBole's ``randint(1, item_num)``.
    """
    weights = np.zeros(sampler.item_num)
    if sampler.distribution == "uniform":
        weights[1:] = 1.0
        return weights
    if sampler.distribution != "popularity":
        raise ValueError(f"no distinct draw for the {sampler.distribution!r} distribution")
    counts = np.bincount(np.asarray(sampler._get_candidates_list()), minlength=sampler.item_num)
    return counts.astype(np.float64) ** float(sampler.alpha)


def user_item_matrix(datasets, user_num: int, item_num: int) -> sp.csr_matrix:
    """(user_num, item_num) bool CSR: ``[u, i]`` when user ``u`` interacted with item ``i`` in any
    of ``datasets`` (RecBole datasets after ``build``).

    Reads the item column and, for sequential datasets, the item history list: their augmented
    rows drop each user's first interaction as a next item, but it is in the first row's history.
    """
    users, items = [], []
    for dataset in datasets:
        feat = dataset.inter_feat
        user = feat[dataset.uid_field].numpy()  # (R,)
        users.append(user)
        items.append(feat[dataset.iid_field].numpy())
        list_field = getattr(dataset, "item_id_list_field", None)
        if list_field is not None and list_field in feat:
            lists = feat[list_field].numpy()  # (R, L), 0-padded
            rows, cols = np.nonzero(lists)
            users.append(user[rows])
            items.append(lists[rows, cols])
    users, items = np.concatenate(users), np.concatenate(items)
    ones = np.ones(len(users), dtype=bool)
    matrix = sp.csr_matrix((ones, (users, items)), shape=(user_num, item_num), dtype=bool)
    matrix.sum_duplicates()
    return matrix


def draw_distinct_negatives(
    weights: np.ndarray, excluded: sp.csr_matrix, num: int, rng: np.random.Generator
) -> np.ndarray:
    """``num`` distinct items per row, drawn in proportion to ``weights`` without replacement
    (successive sampling: each next item ∝ its weight among the items not drawn yet), never an
    item of weight 0 or one marked in that row of ``excluded``.

    Gumbel-top-k: the ``num`` largest ``log w_i + G_i`` (``G`` standard Gumbel) have exactly that
    distribution, listed in draw order.

    Args:
        weights: (I,) non-negative item weights.
        excluded: (N, I) bool CSR, the items each row may not draw.
        num: negatives per row.
        rng: the generator to draw from (nothing else is touched).

    Returns:
        (N, num) int64 item ids.

    Raises:
        ValueError: a row has fewer than ``num`` items to draw from.
    """
    log_weights = np.full(len(weights), -np.inf)
    np.log(weights, out=log_weights, where=weights > 0)
    chunk = max(1, CHUNK_VALUES // len(weights))
    drawn = np.empty((excluded.shape[0], num), dtype=np.int64)
    for start in range(0, excluded.shape[0], chunk):
        block = excluded[start : start + chunk].toarray()  # (n, I)
        keys = log_weights + rng.gumbel(size=block.shape)  # (n, I)
        keys[block] = -np.inf
        eligible = np.isfinite(keys).sum(axis=1)  # (n,)
        if (eligible < num).any():
            row = start + int(np.argmax(eligible < num))
            raise ValueError(
                f"row {row} has {eligible.min()} items to draw {num} distinct negatives from"
            )
        top = np.argpartition(-keys, num - 1, axis=1)[:, :num]  # (n, num), unordered
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        drawn[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return drawn


# --------------------------------------------------------------------------------------------
# Dataloaders
# --------------------------------------------------------------------------------------------
def _keys(dataloader) -> tuple[np.ndarray, np.ndarray]:
    dataset = dataloader._dataset
    return (
        dataset.inter_feat[dataset.uid_field].numpy(),
        dataset.inter_feat[dataset.iid_field].numpy(),
    )


def _vocabulary_hash(dataset) -> str:
    tokens = "\n".join(dataset.field2id_token[dataset.iid_field][1:])
    tokens += "|" + "\n".join(dataset.field2id_token[dataset.uid_field][1:])
    return hashlib.sha256(tokens.encode()).hexdigest()[:16]


def uses_sampled_candidates(dataloader) -> bool:
    args = getattr(dataloader, "neg_sample_args", None) or {}
    return args.get("distribution", "none") != "none" and args.get("sample_num", "none") != "none"


def eval_neg_sampling(config) -> str:
    """The run's ``eval_neg_sampling``, checked."""
    sampling = config["eval_neg_sampling"]  # (str) distinct | recbole, see overall.yaml
    if sampling not in EVAL_NEG_SAMPLING:
        raise ValueError(
            f"eval_neg_sampling={sampling!r}: choose one of {list(EVAL_NEG_SAMPLING)} "
            f"(distinct: the paper's protocol; recbole: RecBole's draw with replacement)"
        )
    return sampling


def sampler_datasets(sampler) -> list:
    """The datasets RecBole's sampler was built on (``RepeatableSampler``: the whole dataset)."""
    return [sampler.dataset] if hasattr(sampler, "dataset") else list(sampler.datasets)


def _draw_distinct(phase: str, loader, seed: int) -> dict[str, np.ndarray]:
    sampler, dataset = loader._sampler, loader._dataset
    users, items = _keys(loader)
    history = user_item_matrix(sampler_datasets(sampler), dataset.user_num, dataset.item_num)
    target = sp.csr_matrix(
        (np.ones(len(items), dtype=bool), (np.arange(len(items)), items)),
        shape=(len(items), dataset.item_num),
    )
    excluded = (history[users] + target).astype(bool)  # (N, I): the user's items and the target
    weights = sampling_weights(sampler)
    num = loader.neg_sample_num
    eligible = (weights > 0).sum() - excluded[:, weights > 0].sum(axis=1).A1  # (N,)
    if (eligible < num).any():
        row = int(np.argmax(eligible < num))
        raise ValueError(
            f"user {dataset.id2token(dataset.uid_field, users[row])!r} ({phase} target "
            f"{dataset.id2token(dataset.iid_field, items[row])!r}) has {eligible[row]} items outside "
            f"its history to draw {num} distinct negatives from: ask for fewer (eval_args mode, "
            f"e.g. pop50), filter such users (user_inter_num_interval), or set "
            f"eval_neg_sampling=recbole (draws with replacement)"
        )
    # one stream per phase: a phase's lists do not depend on whether the other one is sampled
    rng = np.random.default_rng([seed, zlib.crc32(phase.encode())])
    negatives = draw_distinct_negatives(weights, excluded, num, rng)  # (N, num)
    return {f"{phase}_users": users, f"{phase}_items": items, f"{phase}_negatives": negatives}


def _draw_as_recbole(phase: str, loader, seed: int) -> dict[str, np.ndarray]:
    """What RecBole's loader draws on its first pass after ``np.random.seed(seed)``."""
    states = np.random.get_state(), torch.get_rng_state()  # a loader pass draws from both
    recorder = _RecordingSampler(loader._sampler)
    loader._sampler = recorder
    try:
        np.random.seed(seed)
        for _ in loader:
            pass
    finally:
        loader._sampler = recorder.sampler
        np.random.set_state(states[0])
        torch.set_rng_state(states[1])
    return {
        f"{phase}_users": np.concatenate(recorder.users),
        f"{phase}_items": np.concatenate(recorder.items),
        f"{phase}_negatives": np.concatenate(recorder.negatives),  # (N, num)
    }


def _check_sampling(path: Path, stored: dict, sampling: str) -> None:
    made = str(stored["eval_neg_sampling"]) if "eval_neg_sampling" in stored else LEGACY_SAMPLING
    if made != sampling:
        raise ValueError(
            f"{path} holds candidates drawn with eval_neg_sampling={made} "
            f"({EVAL_NEG_SAMPLING[made]}), but this run asks for eval_neg_sampling={sampling} "
            f"({EVAL_NEG_SAMPLING[sampling]}): delete the file or point eval_candidates_file "
            f"elsewhere to draw new ones, or run with --eval_neg_sampling={made} to rank these"
        )


def fix_candidates(path, seed: int, **dataloaders) -> str | None:
    """Serve ``dataloaders`` (``valid=..., test=...``) fixed candidates drawn with ``seed`` the
    way their config's ``eval_neg_sampling`` says (see the module docstring).

    With a ``path``, the candidates are read from it, or drawn and saved there first if the file
    does not exist. Without one (``None``), ``distinct`` candidates are drawn in memory, and
    ``recbole`` leaves RecBole's samplers as they are.

    Returns:
        the candidates' digest (equal digests ⇔ identical candidate lists), or ``None`` when
        nothing is fixed: full-ranking/labelled evaluation (no sampled candidates), or
        ``recbole`` without a file.

    Raises:
        ValueError: the file was made for another dataset, split or ``eval_neg_sampling``, or a
            user has too few items outside its history for distinct negatives.
    """
    dataloaders = {p: d for p, d in dataloaders.items() if d and uses_sampled_candidates(d)}
    if not dataloaders:
        return None
    first = next(iter(dataloaders.values()))
    sampling = eval_neg_sampling(first.config)
    if not path and sampling == "recbole":
        return None
    vocabulary = _vocabulary_hash(first._dataset)
    path = Path(path) if path else None
    if path is not None and path.is_file():
        stored = dict(np.load(path))
        if str(stored["vocabulary"]) != vocabulary:
            raise ValueError(
                f"{path} was made for another dataset or item filtering (vocabulary differs); "
                f"delete it or point eval_candidates_file elsewhere"
            )
        _check_sampling(path, stored, sampling)
    else:
        draw = _draw_distinct if sampling == "distinct" else _draw_as_recbole
        stored = {"vocabulary": np.array(vocabulary), "eval_neg_sampling": np.array(sampling)}
        for phase, loader in dataloaders.items():
            stored.update(draw(phase, loader, seed))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # parallel benchmark runs of one seed draw the same lists: whole-file replace
            partial = path.with_name(f".{path.stem}.{os.getpid()}.npz")
            np.savez_compressed(partial, **stored)
            os.replace(partial, path)
    digest = hashlib.sha256()
    for phase, loader in dataloaders.items():
        if f"{phase}_negatives" not in stored:
            raise ValueError(f"{path} has no {phase} candidates; delete it to redraw")
        negatives = stored[f"{phase}_negatives"]
        loader._sampler = FixedCandidateSampler(
            phase, stored[f"{phase}_users"], stored[f"{phase}_items"], negatives
        )
        digest.update(negatives.tobytes())
    return digest.hexdigest()[:16]
