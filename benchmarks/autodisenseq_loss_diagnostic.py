"""Which part of AutoDisenSeq's loss moves validation NDCG@10 early in training (issue 5).

    python benchmarks/autodisenseq_loss_diagnostic.py [--batches 600] [--every 150] \
        [--settings A,B,...] [--output benchmarks/results/autodisenseq_ml100k/loss_diagnostic.json]

Run from the repository root (the benchmark imports ``autodisenseq_speed`` beside it).

Trains four settings of the fixed SASRec-like architecture (Table 3 row 2 without search) on
ml-100k for the same first ``--batches`` mini-batches of 256 (seed 2020, Adam lr 0.001) and
prints, every ``--every`` batches, the S2I and S2S losses of the last mini-batch and the
validation NDCG@10 under pop100 (the search's fitness, on one fixed set of candidates) and
``pop_corr``, the Spearman correlation between an item's training frequency and its mean score over
one fixed mini-batch of training sequences (does the model rank by (inverse) popularity?):

- A: disentangled (K = 4) + S2S (λ = 0.5)      — Table 3 row (2)
- B: disentangled (K = 4), S2I only (λ = 0)
- C: not disentangled, S2I only                — Table 3 row (1)
- D: not disentangled + S2S (λ = 0.5)
- E: disentangled + S2S with λ = 0.1
- F: disentangled, S2I only, S2I softmax over all items (``s2i_negatives: all``)
- G: disentangled + S2S (λ = 0.5), S2I softmax over all items

A-G compare LN1(z)·LN2(c)/√D in Eq. 4 (``intent_similarity: dot``) and start both β sets at zero
(``beta_init: zero``), as they were first measured. H-K use the paper's cosine (§4.1.2):

- H: disentangled, S2I only, cosine, β from zero
- I: disentangled, S2I only, cosine, random β (the authors' N(0, 1/D))
- J: disentangled + S2S (λ = 0.5), cosine, random β — Table 3 row (2)'s model as the paper has it
- K: disentangled + S2S (λ = 0.5), cosine, β from zero

``--output`` adds each setting's curve to the file as soon as it is done (same name: replaced).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from autodisenseq_speed import setup  # noqa: E402

DOT = {"intent_similarity": "dot", "beta_init": "zero"}  # Eq. 4 as first implemented
COSINE = {"intent_similarity": "cosine"}
SETTINGS = {
    "A disentangled + S2S": {**DOT},
    "B disentangled, S2I only": {**DOT, "lambda_s2s": 0.0},
    "C not disentangled, S2I only": {**DOT, "disentangle": False, "lambda_s2s": 0.0},
    "D not disentangled + S2S": {**DOT, "disentangle": False},
    "E disentangled + S2S, lambda 0.1": {**DOT, "lambda_s2s": 0.1},
    "F disentangled, S2I only over all items": {**DOT, "lambda_s2s": 0.0, "s2i_negatives": "all"},
    "G disentangled + S2S, S2I over all items": {**DOT, "s2i_negatives": "all"},
    "H disentangled, S2I only, cosine, zero beta": {**COSINE, "beta_init": "zero", "lambda_s2s": 0},
    "I disentangled, S2I only, cosine, random beta": {
        **COSINE,
        "beta_init": "random",
        "lambda_s2s": 0,
    },
    "J disentangled + S2S, cosine, random beta": {**COSINE, "beta_init": "random"},
    "K disentangled + S2S, cosine, zero beta": {**COSINE, "beta_init": "zero"},
}


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by position).

    >>> round(spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])), 6)
    1.0
    >>> round(spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])), 6)
    -1.0
    """
    rx = x.argsort().argsort().double()
    ry = y.argsort().argsort().double()
    return torch.corrcoef(torch.stack([rx, ry]))[0, 1].item()


def popularity_correlation(model, probe, frequency: torch.Tensor) -> float:
    """Spearman(item training frequency, mean full-sort score over the ``probe`` sequences)."""
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(probe).mean(0)[1:]  # (N - 1,) padding item dropped
    return spearman(frequency[1:].to(scores), scores)


def run_setting(overrides: dict, batches: int, every: int) -> list[dict]:
    trainer, train_data, valid_data = setup(
        "AutoDisenSeq",
        "ml-100k",
        {"n_layers": 4, "arch_search": False, "pretrain_epochs": 0, **overrides},
    )
    model, arch = trainer.model, trainer.model.architecture
    valid_batches = list(valid_data)  # one draw of the pop100 candidates for every evaluation
    dataset = train_data._dataset
    frequency = torch.bincount(  # training targets per item id
        dataset.inter_feat[dataset.iid_field], minlength=dataset.item_num
    ).double()
    # 256 training sequences spread over the users, picked without touching the RNG (the
    # training stream, hence every curve, stays that of a run without the probe)
    rows = torch.linspace(0, len(dataset) - 1, 256).long()
    probe = dataset.inter_feat[rows].to(model.item_embedding.weight.device)
    epochs = (batches + len(train_data) - 1) // len(train_data)
    stream = itertools.chain.from_iterable(iter(train_data) for _ in range(epochs))
    curve = [
        {
            "batch": 0,
            "ndcg@10": trainer.architecture_fitness(valid_data, valid_batches)(arch),
            "pop_corr": popularity_correlation(model, probe, frequency),
        }
    ]
    for step, batch in enumerate(itertools.islice(stream, batches), 1):
        model.train()
        s2i, s2s = model.seq2seq_losses(batch.to(model.item_embedding.weight.device))
        trainer.optimizer.zero_grad()
        (s2i + s2s).backward()
        trainer.optimizer.step()
        if step % every == 0:
            ndcg = trainer.architecture_fitness(valid_data, valid_batches)(arch)
            point = {"batch": step, "s2i": s2i.item(), "s2s": s2s.item(), "ndcg@10": ndcg}
            point["pop_corr"] = popularity_correlation(model, probe, frequency)
            curve.append(point)
            print(json.dumps(point), flush=True)
    return curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--every", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", default=None, help="letters to run, e.g. E,F (all)")
    parser.add_argument("--output", default=None, help="JSON file for the curves")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = args.settings.split(",") if args.settings else [name[0] for name in SETTINGS]
    unknown = set(chosen) - {name[0] for name in SETTINGS}
    if unknown:
        parser.error(
            f"--settings: unknown {sorted(unknown)}; choose from {[n[0] for n in SETTINGS]}"
        )
    curves = {}
    for name, overrides in SETTINGS.items():
        if name[0] not in chosen:
            continue
        start = time.perf_counter()
        print(name, flush=True)
        curves[name] = run_setting(overrides, args.batches, args.every)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
        if args.output:  # after every setting: a stopped run keeps the finished curves
            path = Path(args.output)
            stored = json.loads(path.read_text()) if path.is_file() else {}
            path.write_text(json.dumps({**stored, name: curves[name]}, indent=2) + "\n")
    first = next(iter(curves.values()))
    print("\nsetting | " + " | ".join(f"NDCG@10 (pop_corr) @{p['batch']}" for p in first))
    for name, curve in curves.items():
        cells = (f"{p['ndcg@10']:.4f} ({p['pop_corr']:+.2f})" for p in curve)
        print(f"{name} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
