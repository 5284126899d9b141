"""AutoDisenSeq's trainer: supernet training → evolutionary search → final training (Algorithm 1).

Only ``fit`` is extended, and only in front of RecBole's own loop:

1. supernet training (Eq. 21): ``supernet_epochs`` calls of RecBole's ``_train_epoch`` while the
   model samples one architecture per mini-batch;
2. evolutionary search (Eq. 22): architectures inherit the supernet weights and are scored on the
   validation split (``search_fitness``: NDCG@10, or minus the Seq2Seq loss), inference only;
   the best is written to ``<checkpoint>.arch.json`` (and ``.arch.png``);
3. final training: RecBole's ``fit`` on the searched architecture, inheriting the supernet weights
   (``final_training: finetune``) or from scratch (``retrain``), with a fresh optimiser.

Skipped (straight to 3) when the model has a fixed architecture (``--arch=FILE`` or
``--arch_search=False``).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.utils import set_color

from recbole_ext.data.seq2seq import FUTURE_FIELD, FUTURE_LENGTH_FIELD
from recbole_ext.model.nas.evolution import evolutionary_search
from recbole_ext.model.nas.render import render_architecture
from recbole_ext.model.nas.space import arch_to_dict, save_arch
from recbole_ext.trainer import Trainer


def ndcg_at_k(scores: torch.Tensor, positive_u: torch.Tensor, positive_i: torch.Tensor, k: int):
    """Mean NDCG@k with one held-out item per user (leave-one-out); ties rank in its favour.

    Args:
        scores: (U, N) scores, -inf for items that are not candidates.
        positive_u, positive_i: (U,) row and item of each user's held-out item.

    >>> s = torch.tensor([[0.0, 3.0, 1.0, 2.0], [0.0, 1.0, 5.0, 2.0]])
    >>> round(ndcg_at_k(s, torch.tensor([0, 1]), torch.tensor([2, 2]), 10), 4)  # ranks 3 and 1
    0.75
    """
    positive = scores[positive_u, positive_i]  # (U,)
    rank = (scores[positive_u] > positive.unsqueeze(1)).sum(1)  # (U,), 0 = first
    gain = torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros_like(positive))
    return float(gain.mean())


def weights_version(model: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Identity and in-place version counter of every parameter: changes whenever a parameter is
    replaced or updated in place (optimiser steps, ``load_state_dict``, ``weight.mul_``)."""
    return tuple((id(p), p._version) for p in model.parameters())


class AutoDisenSeqTrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.supernet_epochs = config["supernet_epochs"]  # (int) single-path one-shot epochs
        self.search_population = config["search_population"]  # (int) population size
        self.search_generations = config["search_generations"]  # (int) generations
        self.search_mutation_prob = config["search_mutation_prob"]  # (float) per-layer re-draw
        self.search_fitness = config["search_fitness"]  # (str) ndcg | loss
        self.final_training = config["final_training"]  # (str) finetune | retrain
        self.render_arch = config["render_arch"]  # (bool) draw the searched architecture
        self.search_seed = config["seed"]  # (int) seeds the evolutionary search
        if self.search_fitness not in ("ndcg", "loss"):
            raise ValueError(f"search_fitness={self.search_fitness!r}: choose 'ndcg' or 'loss'")
        if self.final_training not in ("finetune", "retrain"):
            raise ValueError(f"final_training={self.final_training!r}: use finetune or retrain")
        self.search_result = None
        self.arch_file = None

    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        if self.model.needs_search:
            self.train_supernet(train_data, verbose, show_progress)
            if not valid_data:
                raise ValueError("the architecture search needs a validation split")
            result = self.search_architecture(valid_data, show_progress)
            self.model.set_architecture(result.best, reinitialise=self.final_training == "retrain")
            self.optimizer = self._build_optimizer()  # the encoder's parameters were replaced
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    # --- 1. supernet ----------------------------------------------------------------------------
    def train_supernet(self, train_data, verbose=True, show_progress=False):
        self.model.sample_architectures = True
        try:
            for epoch_idx in range(self.supernet_epochs):
                start = time.time()
                loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
                if verbose:
                    self.logger.info(
                        "supernet "
                        + self._generate_train_loss_output(epoch_idx, start, time.time(), loss)
                    )
        finally:
            self.model.sample_architectures = False

    # --- 2. evolutionary search -----------------------------------------------------------------
    def architecture_fitness(self, valid_data, batches=None):
        """``fitness(arch) -> float`` on ``valid_data``. Its batches are collected once (or given)
        and reused: RecBole re-draws the pop100 negatives on every pass, the search must not."""
        batches = list(valid_data) if batches is None else batches
        self.tot_item_num = valid_data._dataset.item_num
        model = self.model

        if self.search_fitness == "loss":
            inter = valid_data._dataset.inter_feat
            target = inter[model.POS_ITEM_ID]
            rows = {
                model.ITEM_SEQ: inter[model.ITEM_SEQ],
                model.ITEM_SEQ_LEN: inter[model.ITEM_SEQ_LEN],
                model.POS_ITEM_ID: target,
                FUTURE_FIELD: torch.nn.functional.pad(
                    target.unsqueeze(1), (0, model.max_seq_length - 1)
                ),
                FUTURE_LENGTH_FIELD: torch.ones_like(
                    target
                ),  # the future of a held-out row: itself
            }
            step = self.config["train_batch_size"]  # the in-batch softmaxes depend on |B|

            @torch.no_grad()
            def fitness(arch):
                model.eval()
                total, count = 0.0, 0
                for start in range(0, target.numel(), step):
                    batch = {k: v[start : start + step].to(self.device) for k, v in rows.items()}
                    s2i, s2s = model.seq2seq_losses(batch, arch)
                    n = batch[model.POS_ITEM_ID].numel()
                    total, count = total + float(s2i + s2s) * n, count + n
                return -total / count

            return fitness

        candidates = self._candidate_table(batches)
        if candidates is not None:  # pop100: one encoder pass per user, one scoring einsum
            seqs, lens, items = (t.to(self.device) for t in candidates)
            # RecBole scatters candidate scores into an item table: a re-sampled negative counts once
            order = items.sort(1).indices
            repeat = torch.zeros_like(items, dtype=torch.bool)  # (U, C)
            sorted_items = items.gather(1, order)
            repeat.scatter_(1, order[:, 1:], sorted_items[:, 1:] == sorted_items[:, :-1])
            repeat[:, 1:] |= items[:, 1:] == items[:, :1]  # a negative equal to the held-out item
            # while the weights stay the same (the search), the candidates' embeddings and the
            # layer outputs of architecture prefixes (per chunk of users) are computed once
            memo = {"weights": None, "caches": {}, "h": None}

            @torch.no_grad()
            def fitness(arch):
                model.eval()
                version = weights_version(model)
                if memo["weights"] != version:  # first call, or the weights changed
                    h = model.item_embedding(items)  # (U, C, D), column 0 = held-out item
                    memo.update(weights=version, caches={}, h=h)
                phi = model.encode_inference(seqs, lens, arch, memo["caches"])  # (U, K, D)
                scores = torch.einsum("ukd,ucd->ukc", phi, memo["h"]).amax(1)  # (U, C)
                scores = scores.masked_fill(repeat, float("-inf"))
                users = torch.arange(scores.size(0), device=scores.device)
                return ndcg_at_k(scores, users, torch.zeros_like(users), 10)

            return fitness

        full_sort = isinstance(valid_data, FullSortEvalDataLoader)
        if full_sort and self.item_tensor is None:
            self.item_tensor = valid_data._dataset.get_item_feature().to(self.device)
        eval_func = self._full_sort_batch_eval if full_sort else self._neg_sample_batch_eval

        @torch.no_grad()
        def fitness(arch):
            model.eval()
            model.architecture, saved = arch, model.architecture
            try:
                gains, users = 0.0, 0
                for batched in batches:
                    _, scores, positive_u, positive_i = eval_func(batched)
                    n = scores.size(0)
                    positive_u, positive_i = (
                        positive_u.to(scores.device),
                        positive_i.to(scores.device),
                    )
                    gains += ndcg_at_k(scores, positive_u, positive_i, 10) * n
                    users += n
                return gains / users
            finally:
                model.architecture = saved

        return fitness

    def _candidate_table(self, batches):
        """``(sequences (U, L), lengths (U,), candidates (U, C))`` with the held-out item first,
        from negative-sampling evaluation batches where every user has one held-out item and the
        same number of candidates; None otherwise (RecBole's scoring path is used then)."""
        model = self.model
        seqs, lens, items = [], [], []
        for batched in batches:
            interaction, row_idx, positive_u, positive_i = batched
            if row_idx is None or positive_u.numel() != int(positive_u.max()) + 1:
                return None
            n_users = positive_u.numel()
            counts = torch.bincount(row_idx, minlength=n_users)
            if counts.min() != counts.max():
                return None
            first = torch.ones_like(row_idx, dtype=torch.bool)
            first[1:] = row_idx[1:] != row_idx[:-1]
            cand = interaction[model.ITEM_ID].view(n_users, -1)  # rows of a user are contiguous
            if not torch.equal(cand[:, 0], positive_i):
                return None
            seqs.append(interaction[model.ITEM_SEQ][first])
            lens.append(interaction[model.ITEM_SEQ_LEN][first])
            items.append(cand)
        if len({t.size(1) for t in items}) != 1:
            return None
        return torch.cat(seqs), torch.cat(lens), torch.cat(items)

    def search_architecture(self, valid_data, show_progress=False):
        fitness = self.architecture_fitness(valid_data)
        start = time.time()
        result = evolutionary_search(
            self.model.space,
            fitness,
            self.search_population,
            self.search_generations,
            self.search_mutation_prob,
            random.Random(self.search_seed),
            show_progress=show_progress,
        )
        seconds = time.time() - start
        self.search_result = result
        self.arch_file = save_arch(
            result.best, self.model.space.ops, Path(self.saved_model_file).with_suffix(".arch.json")
        )
        self.logger.info(
            set_color("architecture search", "green")
            + f": {len(result.history)} architectures in {seconds:.1f}s "
            f"({len(result.history) / max(seconds, 1e-9):.2f}/s), best {self.search_fitness} "
            f"{result.best_fitness:.4f}; written to {self.arch_file}: "
            f"{arch_to_dict(result.best, self.model.space.ops)['layers']}"
        )
        if self.render_arch:
            render_architecture(
                result.best, self.arch_file.with_suffix(".png"), title="AutoDisenSeq"
            )
        if not math.isfinite(result.best_fitness):
            raise FloatingPointError(f"the best architecture has fitness {result.best_fitness}")
        return result
