"""AutoDisenSeq's trainer: pre-training → architecture search → fine-tuning.

The stages, each in front of RecBole's own ``fit`` loop (which runs the last one):

1. **Seq2Seq pre-training** (Algorithm 1, Eq. 13): ``pretrain_epochs`` epochs, all kept (no early
   stopping), of RecBole's ``_train_epoch`` with the Seq2Seq loss; while searching, the model
   samples one architecture per optimiser step from the supernet (single path, Eq. 21).
   ``pretrain_steps_per_batch`` optimiser steps on each mini-batch (the authors: 16,
   ``trainers.DSSPretrainer.pretrain`` loops over ``auto_arch_batch_size`` sampled architectures
   whatever the encoder, so their fixed-architecture pre-training repeats each batch too). Rows: every prefix (RecBole's) or one random cut per
   window per epoch (``pretrain_windows: random_cut``, the authors' ``datasets.PretrainDataset``);
   gradient clipping ``pretrain_clip_grad_norm``.
2. **Evolutionary search** (Eq. 22) on the pre-trained weights: architectures inherit them and
   are scored on the validation split (``search_fitness``), inference only (the authors'
   ``search.py`` evaluates each with ``finetune(do_eval=True)`` on the pre-trained checkpoint);
   the best is written to ``saved/<run>.arch.json`` (and ``.arch.png``) beside the checkpoint
   ``saved/<run>.pth``. Skipped with a fixed architecture (``--arch=FILE`` or ``--arch_search=False``).
3. **Fine-tuning**: RecBole's ``fit`` with a fresh optimiser, early stopping on the validation
   metric (``epochs``, ``stopping_step``), the best checkpoint tested; its loss is the Seq2Seq loss
   (``finetune_loss: seq2seq``, Algorithm 1) or the authors' next-item BCE against popularity
   negatives of unseen items (``bce``, ``finetuner.py``, ``trainers.FineTrainer``), on every
   prefix or each user's last training prefix (``finetune_windows: last``). ``epochs: 0`` tests
   the pre-trained (searched) model as it is.

Resume (:mod:`recbole_ext.trainer.resume`, when the run has a resume directory): pre-training
saves the resume point ``pretrain`` after every epoch, the search saves ``search`` (the
pre-trained weights and the architecture) and RecBole's ``fit`` its epochs; a rerun of the same
configuration continues the unfinished stage and never reruns a finished one. Every stage epoch
draws its windows, cuts, negatives and sampled architectures from generators seeded by
``(seed, stage, epoch)``, and the fine-tuning starts from ``seed`` again, so a resumed run trains
like an uninterrupted one. ``pre_model_path`` loads stages 1-2 from a file instead
(:meth:`AutoDisenSeqTrainer.load_pre_model`) and only fine-tunes.

What a run shows (:mod:`recbole_ext.trainer.stages`): :meth:`AutoDisenSeqTrainer.stage_plan` for
the run header; every optimiser step and every evaluated architecture counts on the stage's
progress (a tqdm bar with its ETA on a terminal, the estimated duration in the log after the
first steps); each epoch's line names its losses (S2I, S2S; BCE when fine-tuning with ``bce``)
as means per step, with the time left in the stage.
"""

from __future__ import annotations

import math
import random
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.utils import init_seed, set_color

from recbole_ext.checkpoint import load_checkpoint, other_model, restore_model
from recbole_ext.config_checks import ConfigError, check_choices
from recbole_ext.data.seq2seq import (
    FUTURE_FIELD,
    FUTURE_LENGTH_FIELD,
    NEGATIVES_FIELD,
    TrainingRows,
    shuffled_batches,
)
from recbole_ext.model.nas.evolution import evolutionary_search
from recbole_ext.model.nas.render import render_architecture
from recbole_ext.model.nas.space import arch_from_dict, arch_to_dict, save_arch
from recbole_ext.trainer import Trainer
from recbole_ext.trainer.stages import Stage, count, format_duration, loss_summary, stopping_rule

PRETRAIN, SEARCH, FINETUNE = "pretrain", "search", "finetune"  # stages (and resume points)
STAGE_NAMES = {PRETRAIN: "pre-training", SEARCH: "search", FINETUNE: "fine-tuning"}  # shown
SEED_OFFSETS = {PRETRAIN: 1_000_000, FINETUNE: 2_000_000}  # seed + offset + epoch per stage
WINDOWS = {PRETRAIN: ("prefixes", "random_cut"), FINETUNE: ("prefixes", "last")}
ROWS_SHOWN = {
    "prefixes": "every prefix",
    "random_cut": "a random cut per window",
    "last": "last prefixes",
}
FINETUNE_LOSSES = ("seq2seq", "bce")


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


class EpochBatches:
    """One epoch's mini-batches for RecBole's ``_train_epoch``: ``source`` (RecBole's train
    dataloader, or a list of ``Interaction``), each batch optionally completed by ``complete`` and
    yielded ``repeat`` times in a row (one optimiser step each)."""

    def __init__(self, source, repeat: int = 1, complete=None):
        self.source, self.repeat, self.complete = source, repeat, complete

    def __len__(self):
        return len(self.source) * self.repeat

    def __iter__(self):
        for batch in self.source:
            batch = batch if self.complete is None else self.complete(batch)
            for _ in range(self.repeat):
                yield batch


# --- the fitness of an architecture (stage 2) -----------------------------------------------------
def held_out_rows(model, inter) -> dict[str, torch.Tensor]:
    """The validation rows as Seq2Seq rows (all on the CPU): each held-out item is the next item
    and the whole future (``FUTURE_FIELD`` (N, L) = the item then padding, length 1)."""
    target = inter[model.POS_ITEM_ID]  # (N,)
    return {
        model.ITEM_SEQ: inter[model.ITEM_SEQ],  # (N, L)
        model.ITEM_SEQ_LEN: inter[model.ITEM_SEQ_LEN],  # (N,)
        model.POS_ITEM_ID: target,
        FUTURE_FIELD: F.pad(target.unsqueeze(1), (0, model.max_seq_length - 1)),  # (N, L)
        FUTURE_LENGTH_FIELD: torch.ones_like(target),
    }


@torch.no_grad()
def seq2seq_loss_fitness(model, rows: dict, batch_size: int, device, arch) -> float:
    """``-`` the mean Seq2Seq loss (S2I + S2S, Eq. 13) of ``arch`` over ``rows``
    (:func:`held_out_rows`), in consecutive batches of ``batch_size`` rows."""
    model.eval()
    total, count = 0.0, 0
    n_rows = rows[model.POS_ITEM_ID].numel()
    for start in range(0, n_rows, batch_size):
        batch = {k: v[start : start + batch_size].to(device) for k, v in rows.items()}
        s2i, s2s = model.seq2seq_losses(batch, arch)
        n = batch[model.POS_ITEM_ID].numel()
        total, count = total + float(s2i + s2s) * n, count + n
    return -total / count


def repeated_candidates(items: torch.Tensor) -> torch.Tensor:
    """(U, C) mask of candidates that repeat an earlier one in their row (column 0, the held-out
    item, is never masked). RecBole scatters candidate scores into an item table, so a re-sampled
    negative counts once and a negative equal to the held-out item not at all.

    >>> repeated_candidates(torch.tensor([[7, 3, 7, 3, 5]])).tolist()
    [[False, False, True, True, False]]
    """
    order = items.sort(dim=1, stable=True).indices  # equal items keep their column order
    sorted_items = items.gather(1, order)
    repeat = torch.zeros_like(items, dtype=torch.bool)  # (U, C)
    repeat.scatter_(1, order[:, 1:], sorted_items[:, 1:] == sorted_items[:, :-1])
    return repeat


class CandidateNDCG:
    """``fitness(arch)``: NDCG@10 of the held-out item (column 0 of ``items``) among each user's
    candidates, from one encoder pass per user and one scoring einsum.

    While the weights stay the same (the search), the candidates' embeddings and the layer
    outputs of architecture prefixes (per chunk of users) are computed once; a change of the
    weights (:func:`weights_version`) drops them.

    Args:
        seqs: (U, L) input sequences; lens: (U,) their lengths; items: (U, C) candidates.
    """

    def __init__(self, model, seqs: torch.Tensor, lens: torch.Tensor, items: torch.Tensor):
        self.model, self.seqs, self.lens, self.items = model, seqs, lens, items
        self.repeat = repeated_candidates(items)  # (U, C)
        self.weights = None  # weights_version of the cached tensors
        self.caches: dict = {}  # PrefixCache per chunk of users
        self.embeddings = None  # (U, C, D)

    @torch.no_grad()
    def __call__(self, arch) -> float:
        model = self.model
        model.eval()
        version = weights_version(model)
        if self.weights != version:  # first call, or the weights changed
            self.weights, self.caches = version, {}
            self.embeddings = model.item_embedding(self.items)  # (U, C, D)
        phi = model.encode_inference(self.seqs, self.lens, arch, self.caches)  # (U, K, D)
        scores = torch.einsum("ukd,ucd->ukc", phi, self.embeddings).amax(1)  # (U, C)
        scores = scores.masked_fill(self.repeat, float("-inf"))
        users = torch.arange(scores.size(0), device=scores.device)
        return ndcg_at_k(scores, users, torch.zeros_like(users), 10)


@torch.no_grad()
def recbole_ndcg_fitness(model, batches: list, eval_func, arch) -> float:
    """NDCG@10 of ``arch`` over evaluation ``batches`` scored by RecBole's ``eval_func``
    (``_neg_sample_batch_eval`` / ``_full_sort_batch_eval``), the model's architecture swapped
    for the call."""
    model.eval()
    model.architecture, saved = arch, model.architecture
    try:
        gains, users = 0.0, 0
        for batched in batches:
            _, scores, positive_u, positive_i = eval_func(batched)
            positive_u, positive_i = positive_u.to(scores.device), positive_i.to(scores.device)
            gains += ndcg_at_k(scores, positive_u, positive_i, 10) * scores.size(0)
            users += scores.size(0)
        return gains / users
    finally:
        model.architecture = saved


class AutoDisenSeqTrainer(Trainer):
    epoch_resume = True  # stage 3 is RecBole's fit: it resumes epochs (recbole_ext.trainer.resume)
    # {key: (choices, what they mean)}: checked by Config before the data loads, and here
    option_choices = {
        "search_fitness": (("ndcg", "loss"), " (validation NDCG@10, or minus the Seq2Seq loss)"),
        "final_training": (("finetune", "retrain"), " (keep the pre-trained weights, or not)"),
        "pretrain_windows": (WINDOWS[PRETRAIN], ""),
        "finetune_windows": (WINDOWS[FINETUNE], ""),
        "finetune_loss": (FINETUNE_LOSSES, ""),
    }

    def __init__(self, config, model):
        super().__init__(config, model)
        self.pretrain_epochs = config["pretrain_epochs"]  # (int) fixed, no early stopping
        self.pretrain_windows = config["pretrain_windows"]  # (str) prefixes | random_cut
        self.pretrain_window_step = config["pretrain_window_step"]  # (float) step / L
        self.pretrain_steps_per_batch = config["pretrain_steps_per_batch"]  # (int) steps/batch
        self.pretrain_clip_grad_norm = config["pretrain_clip_grad_norm"]  # (float|None) max norm
        self.search_population = config["search_population"]  # (int) population size
        self.search_generations = config["search_generations"]  # (int) generations
        self.search_mutation_prob = config["search_mutation_prob"]  # (float) per-layer re-draw
        self.search_fitness = config["search_fitness"]  # (str) ndcg | loss
        self.final_training = config["final_training"]  # (str) finetune | retrain
        self.finetune_loss = config["finetune_loss"]  # (str) seq2seq | bce
        self.finetune_windows = config["finetune_windows"]  # (str) prefixes | last
        self.finetune_negatives = config["finetune_negatives"]  # (int) bce negatives per row
        self.render_arch = config["render_arch"]  # (bool) draw the searched architecture
        self.search_seed = config["seed"]  # (int) seeds the search and every stage's generators
        self.pre_model_path = config["pre_model_path"] or None  # (str|None) skips stages 1-2
        check_choices(self.option_choices, config)
        if self.pretrain_epochs < 0:  # the command line's value is checked by Config already
            raise ConfigError(f"pretrain_epochs={self.pretrain_epochs}: a number ≥ 0")
        if self.pretrain_steps_per_batch < 1:
            raise ConfigError(
                f"pretrain_steps_per_batch={self.pretrain_steps_per_batch}: at least 1 "
                "optimiser step per mini-batch (the authors: 16)"
            )
        if self.search_population < 2 or self.search_generations < 0:
            raise ConfigError(
                f"search_population={self.search_population}, search_generations="
                f"{self.search_generations}: the search needs a population of at least 2 and "
                "0 or more generations"
            )
        if not 0.0 < self.pretrain_window_step <= 1.0:
            raise ConfigError(
                f"pretrain_window_step={self.pretrain_window_step}: a share of the maximum "
                "length in (0, 1] (the authors: 0.5)"
            )
        if self.pre_model_path is not None:
            if self.final_training == "retrain":
                raise ConfigError(
                    f"pre_model_path={self.pre_model_path!r} with final_training=retrain: retrain "
                    "starts from new weights, so the loaded ones would be thrown away; use "
                    "final_training=finetune, or drop pre_model_path"
                )
            if not Path(self.pre_model_path).is_file():
                raise ConfigError(
                    f"pre_model_path={self.pre_model_path!r}: no such file. Give a saved "
                    "AutoDisenSeq model (saved/<run>.pth, e.g. of a run with --epochs=0) or a "
                    "resume point of the search (<output>/resume/<run>/search.pth)"
                )
        if self.finetune_loss == "bce" and self.finetune_negatives < 1:
            raise ConfigError(f"finetune_negatives={self.finetune_negatives}: at least 1 for bce")
        if self.pretrain_clip_grad_norm is not None and self.pretrain_clip_grad_norm <= 0:
            raise ConfigError(
                f"pretrain_clip_grad_norm={self.pretrain_clip_grad_norm}: a positive norm, or ~"
            )
        self.stage = FINETUNE  # the stage _train_epoch serves (RecBole's fit: fine-tuning)
        self.stage_log: list[tuple[str, str]] = []  # (stage, "ran" | "resumed" | "loaded")
        self.epoch_seconds: dict[str, list[float]] = {PRETRAIN: [], FINETUNE: []}
        self.search_seconds = None  # wall time of the search (None: not run here)
        self.search_result = None
        self.arch_file = None
        self.arch_png = None
        self._rows = None  # TrainingRows, built at first use
        self._epoch_steps = 0  # optimiser steps of the last _train_epoch

    # --- the stages ------------------------------------------------------------------------------
    def _before_fit(self, train_data, valid_data, verbose, show_progress):
        """Stages 1-2 (or their resume points), then the fine-tuning's start: the searched
        architecture with its pre-trained weights, a fresh optimiser, the seed; RecBole's ``fit``
        (the base class's) runs stage 3."""
        architecture = None
        if self.pre_model_path is not None:
            architecture = self.load_pre_model(self.pre_model_path)
            self.stage_log += [(PRETRAIN, "loaded"), (SEARCH, "loaded")]
            self._write_arch(architecture)
        elif self.model.needs_search and self.load_resume_point(SEARCH, train_data=train_data):
            architecture = arch_from_dict(self.resume_point_extra["arch"])  # stages 1-2 done
            self.stage_log += [(PRETRAIN, "resumed"), (SEARCH, "resumed")]
            self._write_arch(architecture)
        else:
            self.pretrain(train_data, verbose, show_progress)
            if self.model.needs_search:
                if not valid_data:
                    raise ValueError("the architecture search needs a validation split")
                architecture = self.search_architecture(valid_data).best
                arch = arch_to_dict(architecture, self.model.space.ops)
                self.save_resume_point(SEARCH, train_data=train_data, finished=True, arch=arch)
        if architecture is not None:  # keep the searched architecture's (pre-trained) weights
            self.model.set_architecture(architecture, self.final_training == "retrain")
        self.optimizer = self._build_optimizer()  # fresh optimiser (the authors' FineTrainer)
        init_seed(self.search_seed, self.config["reproducibility"])  # as a run without stages 1-2
        self.stage = FINETUNE
        self.stage_log.append((FINETUNE, "ran"))

    def load_pre_model(self, path: str):
        """Stages 1-2 from a file (``pre_model_path``, as RecBole's S3Rec): the weights and the
        architecture of a saved AutoDisenSeq model (``saved/<run>.pth``; ``--epochs=0`` saves the
        pre-trained, searched model) or of a search resume point (``resume/<run>/search.pth``:
        the supernet's weights and the searched architecture). Fine-tuning settings (learning
        rate, loss, windows, epochs) can then be compared on one pre-training.

        Returns the architecture to fine-tune.

        Raises:
            ConfigError: the file holds another model, weights of other sizes (``hidden_size``,
                ``n_layers``, ``n_intents``, ``ops``, ``MAX_ITEM_LIST_LENGTH`` must match the run
                that saved it), or supernet weights without an architecture.
        """
        state = load_checkpoint(path, map_location=self.device)
        if "state_dict" not in state:
            raise ConfigError(f"pre_model_path={path!r} holds no model weights ('state_dict')")
        mismatch = other_model(
            f"pre_model_path={path!r}", state.get("model", "?"), self.config["model"]
        )
        if mismatch:
            raise ConfigError(mismatch)
        try:
            restore_model(self.model, state)
        except RuntimeError as err:  # size mismatch / missing keys
            raise ConfigError(
                f"pre_model_path={path!r} does not fit this model: {str(err).splitlines()[0]} "
                "... Run with the settings of the run that saved it (hidden_size, n_layers, "
                "n_intents, ops, MAX_ITEM_LIST_LENGTH)"
            ) from err
        arch = (state.get("extra") or {}).get("arch")
        architecture = arch_from_dict(arch) if arch is not None else self.model.architecture
        if architecture is None:
            raise ConfigError(
                f"pre_model_path={path!r} holds supernet weights without a searched "
                "architecture: give a resume point of the search (search.pth) or a saved model"
            )
        saved_seed = (state.get("config") or {}).get("seed")
        if saved_seed is not None and saved_seed != self.config["seed"]:
            self.logger.warning(
                f"pre_model_path={path!r} was pre-trained and searched with seed {saved_seed}; "
                f"this run fine-tunes with seed {self.config['seed']}. Intended for a new "
                "fine-tuning seed; a per-seed comparison needs that seed's own file"
            )
        self.logger.info(f"stages 1-2 loaded from {path} (pre_model_path)")
        return architecture

    def pretrain(self, train_data, verbose=True, show_progress=False) -> None:
        """Stage 1: ``pretrain_epochs`` Seq2Seq epochs (the supernet's when searching), resumed
        from the last finished epoch of a stopped run."""
        if self.pretrain_epochs == 0:
            return
        state = self.load_resume_point(PRETRAIN, train_data=train_data)
        first = 0 if state is None else state["epoch"]
        if first >= self.pretrain_epochs:
            self.stage_log.append((PRETRAIN, "resumed"))
            return
        saved_clip, self.stage = self.clip_grad_norm, PRETRAIN
        if self.pretrain_clip_grad_norm is not None:
            self.clip_grad_norm = {"max_norm": self.pretrain_clip_grad_norm}
        self.model.sample_architectures = self.model.needs_search
        steps = (self.pretrain_epochs - first) * self.steps_per_epoch(PRETRAIN, train_data)
        self.progress.start(Stage(STAGE_NAMES[PRETRAIN], steps))
        try:
            for epoch_idx in range(first, self.pretrain_epochs):
                self.model.reseed_architecture_sampler(self._stage_seed(PRETRAIN, epoch_idx))
                start = time.time()
                loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
                done = epoch_idx + 1
                self.save_resume_point(
                    PRETRAIN,
                    train_data=train_data,
                    epoch=done,
                    finished=done == self.pretrain_epochs,
                )
                if verbose:
                    end = time.time()
                    self.logger.info(self._generate_train_loss_output(epoch_idx, start, end, loss))
        finally:
            self.progress.close()
            self.model.sample_architectures = False
            self.clip_grad_norm, self.stage = saved_clip, FINETUNE
        self.stage_log.append((PRETRAIN, "ran"))

    def _stage_seed(self, stage: str, epoch_idx: int) -> int:
        return self.search_seed + SEED_OFFSETS[stage] + epoch_idx

    # --- the rows and the loss of a stage's epoch ------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """RecBole's epoch over the current stage's rows with the stage's loss; each step counts
        on the stage's progress."""
        batches = self.epoch_batches(train_data, epoch_idx)
        if loss_func is None:
            bce = self.stage == FINETUNE and self.finetune_loss == "bce"
            loss_func = self.model.calculate_finetune_loss if bce else self.model.calculate_loss
        if self.stage == FINETUNE and self.progress.stage is None:  # RecBole's fit begins
            total = (self.epochs - epoch_idx) * len(batches)
            self.progress.start(Stage(STAGE_NAMES[FINETUNE], total, at_most=True))
        self._epoch_steps = len(batches)
        start = time.perf_counter()
        loss = super()._train_epoch(batches, epoch_idx, loss_func)  # steps counted by the base
        self.epoch_seconds[self.stage].append(time.perf_counter() - start)
        return loss

    def loss_names(self) -> tuple[str, ...]:
        """Names of the current stage's losses, in the order its loss function returns them."""
        if self.stage == FINETUNE and self.finetune_loss == "bce":
            return self.model.FINETUNE_LOSS_NAMES
        return self.model.loss_names

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        """``fine-tuning epoch 3 (of 30) [4.10 s; S2I 5.4121, S2S 9.8410 (mean per step); at
        most 1 min 50 s left in the stage]``: RecBole's epoch line, with the stage, the named
        losses and the stage's remaining time."""
        epochs = self.pretrain_epochs if self.stage == PRETRAIN else self.epochs
        decimals = self.config["loss_decimal_place"] or 4
        named = loss_summary(losses, self.loss_names(), self._epoch_steps, decimals)
        left = self.progress.remaining()
        bound = "at most " if self.stage == FINETUNE else ""
        eta = f"; {bound}{format_duration(left)} left in the stage" if left else ""
        return (
            set_color(f"{STAGE_NAMES[self.stage]} epoch {epoch_idx} (of {epochs})", "green")
            + f" [{e_time - s_time:.2f} s; "
            + set_color(named, "blue")
            + f" (mean per step){eta}]"
        )

    # --- the plan a run shows ----------------------------------------------------------------------
    def steps_per_epoch(self, stage: str, train_data) -> int:
        """Optimiser steps of one epoch of ``stage`` (:meth:`epoch_batches` without drawing it)."""
        windows = self.pretrain_windows if stage == PRETRAIN else self.finetune_windows
        if windows == "prefixes":
            batches = len(train_data)  # RecBole's dataloader: its number of batches
        else:
            rows = self.rows(train_data)
            n_rows = rows.windows.size(0) if windows == "random_cut" else len(rows.last)
            batches = math.ceil(n_rows / self.config["train_batch_size"])
        return batches * (self.pretrain_steps_per_batch if stage == PRETRAIN else 1)

    def stage_plan(self, train_data, valid_data) -> list[Stage]:
        """Pre-training, search and fine-tuning as this run's settings make them."""
        plan = []
        if self.pretrain_epochs and self.pre_model_path is None:
            steps = self.steps_per_epoch(PRETRAIN, train_data)
            detail = (
                f"{count(self.pretrain_epochs, 'epoch')} x {count(steps, 'step')} on "
                f"{ROWS_SHOWN[self.pretrain_windows]}; {' + '.join(self.model.loss_names)}"
            )
            plan.append(Stage(STAGE_NAMES[PRETRAIN], self.pretrain_epochs * steps, detail=detail))
        if self.model.needs_search and self.pre_model_path is None:
            fitness = "NDCG@10" if self.search_fitness == "ndcg" else "-Seq2Seq loss"
            detail = (
                f"population {self.search_population}, "
                f"{count(self.search_generations, 'generation')}; "
                f"{fitness} on {len(valid_data._dataset)} validation rows"
            )
            archs = self.search_population * (self.search_generations + 1)
            plan.append(Stage(STAGE_NAMES[SEARCH], archs, unit="arch", detail=detail, at_most=True))
        if self.epochs:
            steps = self.steps_per_epoch(FINETUNE, train_data)
            losses = "BCE" if self.finetune_loss == "bce" else " + ".join(self.model.loss_names)
            detail = (
                f"{count(self.epochs, 'epoch')} x {count(steps, 'step')} on "
                f"{ROWS_SHOWN[self.finetune_windows]}; {losses}; {stopping_rule(self.config)}"
            )
            if self.pre_model_path is not None:
                detail = f"from {self.pre_model_path}; {detail}"
            total = self.epochs * steps
            plan.append(Stage(STAGE_NAMES[FINETUNE], total, detail=detail, at_most=True))
        return plan

    def output_files(self) -> dict[str, str]:
        """The checkpoint and the searched architecture's JSON and PNG (those written)."""
        files = super().output_files()
        for name, path in (
            ("architecture", self.arch_file),
            ("architecture drawing", self.arch_png),
        ):
            if path is not None and Path(path).is_file():
                files[name] = str(path)
        return files

    def epoch_batches(self, train_data, epoch_idx) -> EpochBatches:
        """The mini-batches of epoch ``epoch_idx`` of the current stage (see the module docs)."""
        stage = self.stage
        windows = self.pretrain_windows if stage == PRETRAIN else self.finetune_windows
        generator = torch.Generator().manual_seed(self._stage_seed(stage, epoch_idx))
        batch_size = self.config["train_batch_size"]
        if windows == "prefixes":
            source = train_data
        elif windows == "random_cut":
            source = shuffled_batches(
                self.rows(train_data).random_cut(generator), batch_size, generator
            )
        else:
            source = shuffled_batches(self.rows(train_data).last, batch_size, generator)
        complete = None
        if stage == FINETUNE and self.finetune_loss == "bce":
            negatives = self.rows(train_data).negatives

            def complete(batch):
                users = batch[self.model.USER_ID]
                batch[NEGATIVES_FIELD] = negatives.sample(users, self.finetune_negatives, generator)
                return batch

        repeat = self.pretrain_steps_per_batch if stage == PRETRAIN else 1
        return EpochBatches(source, repeat, complete)

    def rows(self, train_data) -> TrainingRows:
        if self._rows is None:
            max_len = self.model.max_seq_length
            step = max(1, int(self.pretrain_window_step * max_len))  # the authors' int(0.5 · L)
            self._rows = TrainingRows(train_data._dataset, max_len, step)
        return self._rows

    # --- 2. evolutionary search -----------------------------------------------------------------
    def architecture_fitness(self, valid_data, batches=None):
        """``fitness(arch) -> float`` on ``valid_data`` (``search_fitness``): the negative
        Seq2Seq loss of the held-out rows, or their NDCG@10 -- from one encoder pass per user
        over a candidate table when the batches allow (:meth:`_candidate_table`), else through
        RecBole's batch scoring. The batches are collected once (or given) and reused: RecBole
        re-draws the pop100 negatives on every pass, the search must not."""
        batches = list(valid_data) if batches is None else batches
        self.tot_item_num = valid_data._dataset.item_num
        if self.search_fitness == "loss":
            rows = held_out_rows(self.model, valid_data._dataset.inter_feat)
            batch_size = self.config["train_batch_size"]  # the in-batch softmaxes depend on |B|
            return partial(seq2seq_loss_fitness, self.model, rows, batch_size, self.device)
        candidates = self._candidate_table(batches)
        if candidates is not None:  # pop100: one encoder pass per user, one scoring einsum
            return CandidateNDCG(self.model, *(t.to(self.device) for t in candidates))
        full_sort = isinstance(valid_data, FullSortEvalDataLoader)
        if full_sort and self.item_tensor is None:
            self.item_tensor = valid_data._dataset.get_item_feature().to(self.device)
        eval_func = self._full_sort_batch_eval if full_sort else self._neg_sample_batch_eval
        return partial(recbole_ndcg_fitness, self.model, batches, eval_func)

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

    def search_architecture(self, valid_data):
        """Stage 2: the evolutionary search on the current (pre-trained) weights."""
        fitness = self.architecture_fitness(valid_data)
        archs = self.search_population * (self.search_generations + 1)
        self.progress.start(Stage(STAGE_NAMES[SEARCH], archs, unit="arch", at_most=True))
        start = time.time()
        try:
            result = evolutionary_search(
                self.model.space,
                self._counting_fitness(fitness),
                self.search_population,
                self.search_generations,
                self.search_mutation_prob,
                random.Random(self.search_seed),
            )
        finally:
            self.progress.close()
        seconds = self.search_seconds = time.time() - start
        self.search_result = result
        self.stage_log.append((SEARCH, "ran"))
        self._write_arch(result.best)
        self.logger.info(
            set_color("architecture search", "green")
            + f": {len(result.history)} architectures in {seconds:.1f}s "
            f"({len(result.history) / max(seconds, 1e-9):.2f}/s), best {self.search_fitness} "
            f"{result.best_fitness:.4f}; written to {self.arch_file}: "
            f"{arch_to_dict(result.best, self.model.space.ops)['layers']}"
        )
        if not math.isfinite(result.best_fitness):
            raise FloatingPointError(f"the best architecture has fitness {result.best_fitness}")
        return result

    def _counting_fitness(self, fitness):
        """``fitness`` that advances the search's progress per evaluated architecture (the
        search evaluates each once), with the best fitness so far on the bar."""
        best = -math.inf

        def counted(arch):
            nonlocal best
            value = fitness(arch)
            best = max(best, value)
            self.progress.advance(1, {f"best {self.search_fitness}": f"{best:.4f}"})
            return value

        return counted

    def _write_arch(self, architecture) -> None:
        """``saved/<run>.arch.json`` for the checkpoint ``saved/<run>.pth`` (and ``.arch.png``
        with ``render_arch``)."""
        path = Path(self.saved_model_file).with_suffix(".arch.json")
        self.arch_file = save_arch(architecture, self.model.space.ops, path)
        if self.render_arch:
            self.arch_png = render_architecture(
                architecture, path.with_suffix(".png"), title="AutoDisenSeq"
            )
