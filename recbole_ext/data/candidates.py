"""Fixed evaluation candidates: every model of a comparison ranks the same sampled negatives.

RecBole's ``pop100``/``uni100`` evaluation draws fresh negatives at every evaluation, from a global
RNG whose state depends on the model (its initialisation, dropout, ...). Two models are then
ranked against different candidates. Here the negatives of every (user, target item) pair of the
valid and test sets are drawn once, with the run's seed, saved to a file, and served from that
file to every later run that names it (config key ``eval_candidates_file``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch


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


def fix_candidates(path, seed: int, **dataloaders) -> str | None:
    """Serve ``dataloaders`` (``valid=..., test=...``) from the candidates saved at ``path``,
    drawing and saving them first (seeded) if the file does not exist. Returns the candidates'
    digest (equal digests ⇔ identical candidate lists), or ``None`` for full-ranking/labelled
    evaluation, which has no sampled candidates."""
    dataloaders = {p: d for p, d in dataloaders.items() if d and uses_sampled_candidates(d)}
    if not dataloaders:
        return None
    path = Path(path)
    first = next(iter(dataloaders.values()))
    vocabulary = _vocabulary_hash(first._dataset)
    if path.is_file():
        stored = dict(np.load(path))
        if str(stored["vocabulary"]) != vocabulary:
            raise ValueError(
                f"{path} was made for another dataset or item filtering (vocabulary differs); "
                f"delete it or point eval_candidates_file elsewhere"
            )
    else:
        state = np.random.get_state()
        np.random.seed(seed)
        stored = {"vocabulary": np.array(vocabulary)}
        for phase, loader in dataloaders.items():
            users, items = _keys(loader)
            drawn = loader._sampler.sample_by_user_ids(users, items, loader.neg_sample_num)
            stored[f"{phase}_users"], stored[f"{phase}_items"] = users, items
            stored[f"{phase}_negatives"] = drawn.numpy().reshape(-1, len(users)).T  # (N, num)
        np.random.set_state(state)
        path.parent.mkdir(parents=True, exist_ok=True)
        # parallel benchmark runs of one seed draw the same lists: whole-file replace, no torn file
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
