"""AutoDisenSeq speed and memory, as ratios to RecBole's SASRec (issue 5), in one process.

    python benchmarks/autodisenseq_speed.py [--dataset ml-100k] [--batches N] [--archs 20]
    python benchmarks/autodisenseq_speed.py --dropout      # FastDropout vs nn.Dropout only
    python benchmarks/autodisenseq_speed.py --pipeline [--stage-epochs 2]   # the preset's stages

Times one training epoch (or its first N mini-batches, the same N for every model) of
1. RecBole's SASRec (hidden 64, 2 single-head blocks, inner 256, batch 256, max length 50),
2. the AutoDisenSeq supernet (single-path sampling, W = 4 hidden layers = 2 blocks),
3. AutoDisenSeq with the fixed SASRec-like architecture (the final-training cost),
then the number of architectures evaluated per second by the search's fitness (validation NDCG@10
under the pop100 protocol): for ``--archs`` random architectures, and over one whole evolutionary
search with the model's defaults (population 20, 5 generations; children reuse the cached layer
outputs of the prefixes they share with evaluated architectures), and the process's peak resident
memory.
Targets (issue 5): ratios ≤ 2.0, ≥ 5 architectures/s, peak ≤ 4 GiB.

``--pipeline`` runs the authors' recipe (``--preset=autodisenseq_authors``) end to end for the
DSSRec row (fixed architecture) and the AutoDisenSeq row (supernet, search), ``--stage-epochs``
epochs per stage, and prints the seconds of every pre-training epoch, the search, every
fine-tuning epoch and every validation, with what the preset's 300 + 300 epochs would take.
"""

from __future__ import annotations

import argparse
import itertools
import random
import resource
import time
from statistics import mean

import torch

from recbole_ext.config import Config
from recbole_ext.model.layers import FastDropout
from recbole_ext.model.nas.evolution import evolutionary_search
from recbole_ext.quick_start import build
from recbole_ext.utils import get_trainer

COMMON = {
    "hidden_size": 64,
    "inner_size": 256,
    "train_batch_size": 256,
    "MAX_ITEM_LIST_LENGTH": 50,
    "eval_protocol": "seq_pop100",
    "hidden_dropout_prob": 0.2,
    "attn_dropout_prob": 0.2,
    "show_progress": False,
    "state": "WARNING",
}


class FirstBatches:
    """The first ``n`` mini-batches of a RecBole dataloader (all of them when ``n`` is None)."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self):
        return len(self.loader) if self.n is None else min(self.n, len(self.loader))

    def __getattr__(self, name):
        return getattr(self.loader, name)


def setup(model_name, dataset, overrides):
    """Trainer, train and validation data of one run, built as ``run_recbole_ext.py`` builds
    them (:func:`recbole_ext.quick_start.build`: the evaluation's fixed candidates included)."""
    config = Config(model_name, dataset, config_dict={**COMMON, **overrides})
    _, model, train_data, valid_data, _ = build(config)
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    return trainer, train_data, valid_data


def pipeline_seconds(dataset: str, stage_epochs: int, arch_search: bool) -> dict:
    """Run the preset's stages with ``stage_epochs`` epochs each; their seconds."""
    overrides = {
        "preset": "autodisenseq_authors",
        "hidden_dropout_prob": 0.5,  # the preset's, over COMMON's
        "attn_dropout_prob": 0.5,
        "arch_search": arch_search,
        "pretrain_epochs": stage_epochs,
        "epochs": stage_epochs,
        "render_arch": False,
    }
    trainer, train_data, valid_data = setup("AutoDisenSeq", dataset, overrides)
    valid_seconds, valid_epoch = [], trainer._valid_epoch

    def timed_valid_epoch(*args, **kwargs):
        start = time.perf_counter()
        result = valid_epoch(*args, **kwargs)
        valid_seconds.append(time.perf_counter() - start)
        return result

    trainer._valid_epoch = timed_valid_epoch
    start = time.perf_counter()
    trainer.fit(train_data, valid_data, verbose=False, saved=False)
    rows = trainer.rows(train_data)
    return {
        "total": time.perf_counter() - start,
        "pretrain": trainer.epoch_seconds["pretrain"],
        "windows": rows.windows.size(0),
        "users": len(rows.last),
        "search": trainer.search_seconds,
        "searched": 0 if trainer.search_result is None else len(trainer.search_result.history),
        "finetune": trainer.epoch_seconds["finetune"],
        "valid": valid_seconds,
        "steps_per_batch": trainer.pretrain_steps_per_batch,
        "batch_size": trainer.config["train_batch_size"],
    }


def print_pipeline(name: str, t: dict, full_epochs: int = 300) -> None:
    batches = -(-t["windows"] // t["batch_size"])
    steps = batches * t["steps_per_batch"]
    pre, fine, valid = mean(t["pretrain"]), mean(t["finetune"]), mean(t["valid"])
    print(f"{name}: {t['total']:.0f} s in all")
    print(
        f"  pre-training epoch  {pre:7.1f} s  ({t['windows']} windows = {batches} batches x "
        f"{t['steps_per_batch']} = {steps} steps; epochs: "
        + ", ".join(f"{x:.1f}" for x in t["pretrain"])
        + ")"
    )
    if t["search"] is not None:
        print(f"  search              {t['search']:7.1f} s  ({t['searched']} architectures)")
    print(
        f"  fine-tuning epoch   {fine:7.1f} s  ({t['users']} rows: each user's last prefix; "
        "epochs: " + ", ".join(f"{x:.1f}" for x in t["finetune"]) + ")"
    )
    print(f"  validation          {valid:7.1f} s  (per fine-tuning epoch)")
    hours = (full_epochs * (pre + fine + valid) + (t["search"] or 0.0)) / 3600
    print(f"  the preset's {full_epochs} + {full_epochs} epochs: about {hours:.1f} h")


def epoch_seconds(trainer, train_data, n_batches, sample=False):
    loader = FirstBatches(train_data, n_batches)
    trainer.model.sample_architectures = sample
    start = time.perf_counter()
    trainer._train_epoch(loader, 0)
    trainer.model.sample_architectures = False
    return time.perf_counter() - start, len(loader)


def dropout_ms(module, shape=(512, 50, 64), repeats=20):
    """Milliseconds of one forward + backward of ``module`` in training mode."""
    x = torch.randn(shape, requires_grad=True)
    module.train()
    module(x).sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        module(x).sum().backward()
    return (time.perf_counter() - start) / repeats * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--batches", type=int, default=None, help="first N batches per epoch")
    parser.add_argument("--archs", type=int, default=20, help="architectures to evaluate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--dropout", action="store_true", help="time the dropout layers only")
    parser.add_argument("--pipeline", action="store_true", help="time the preset's stages")
    parser.add_argument("--stage-epochs", type=int, default=2, help="--pipeline: epochs/stage")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pipeline:
        print(
            f"--preset=autodisenseq_authors on {args.dataset}, {args.stage_epochs} epochs per "
            f"stage, {args.threads} thread(s)"
        )
        for name, search in (("DSSRec row (fixed architecture)", False), ("AutoDisenSeq", True)):
            print_pipeline(name, pipeline_seconds(args.dataset, args.stage_epochs, search))
        return
    if args.dropout:
        slow, fast = dropout_ms(torch.nn.Dropout(0.2)), dropout_ms(FastDropout(0.2))
        print(
            f"(512, 50, 64) forward+backward, {args.threads} thread(s): nn.Dropout {slow:.1f} ms,"
        )
        print(f"FastDropout {fast:.1f} ms ({slow / fast:.2f}x faster)")
        return

    sasrec, train_data, _ = setup("SASRec", args.dataset, {"n_layers": 2, "n_heads": 1})
    t_sasrec, n = epoch_seconds(sasrec, train_data, args.batches)
    del sasrec

    supernet, train_data, valid_data = setup("AutoDisenSeq", args.dataset, {"n_layers": 4})
    t_super, _ = epoch_seconds(supernet, train_data, args.batches, sample=True)
    space, rng = supernet.model.space, random.Random(0)
    fitness = supernet.architecture_fitness(valid_data)
    archs = [space.sample(rng) for _ in range(args.archs)]
    start = time.perf_counter()
    scores = [fitness(a) for a in archs]
    per_second = len(archs) / (time.perf_counter() - start)
    fitness = supernet.architecture_fitness(valid_data)  # fresh prefix caches
    population, generations = supernet.search_population, supernet.search_generations
    start = time.perf_counter()
    result = evolutionary_search(
        space,
        fitness,
        population,
        generations,
        supernet.search_mutation_prob,
        random.Random(supernet.search_seed),
    )
    search_seconds = time.perf_counter() - start
    del supernet

    final, train_data, _ = setup(
        "AutoDisenSeq", args.dataset, {"n_layers": 4, "arch_search": False}
    )
    t_final, _ = epoch_seconds(final, train_data, args.batches)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(f"dataset {args.dataset}, {n} mini-batches of 256 per model, {args.threads} thread(s)")
    print(f"SASRec epoch                     {t_sasrec:8.2f} s")
    print(f"AutoDisenSeq supernet epoch      {t_super:8.2f} s   ratio {t_super / t_sasrec:5.2f}x")
    print(f"AutoDisenSeq final-arch epoch    {t_final:8.2f} s   ratio {t_final / t_sasrec:5.2f}x")
    print(
        f"fitness of {len(archs)} random architectures: {per_second:.2f}/s on validation NDCG@10 "
        f"(range {min(scores):.4f}..{max(scores):.4f})"
    )
    print(
        f"evolutionary search (population {population}, {generations} generations): "
        f"{len(result.history)} architectures in "
        f"{search_seconds:.1f} s = {len(result.history) / search_seconds:.2f}/s"
    )
    print(f"peak resident memory {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
