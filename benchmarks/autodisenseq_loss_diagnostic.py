"""Which part of AutoDisenSeq's loss moves validation NDCG@10 early in training (issue 5).

    python benchmarks/autodisenseq_loss_diagnostic.py [--batches 600] [--every 150] \
        [--output benchmarks/results/autodisenseq_ml100k/loss_diagnostic.json]

Trains four settings of the fixed SASRec-like architecture (Table 3 row 2 without search) on
ml-100k for the same first ``--batches`` mini-batches of 256 (seed 2020, Adam lr 0.001) and
prints, every ``--every`` batches, the S2I and S2S losses of the last mini-batch and the
validation NDCG@10 under pop100 (the search's fitness, on one fixed set of candidates):

- A: disentangled (K = 4) + S2S (λ = 0.5)      — Table 3 row (2)
- B: disentangled (K = 4), S2I only (λ = 0)
- C: not disentangled, S2I only                — Table 3 row (1)
- D: not disentangled + S2S (λ = 0.5)
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

SETTINGS = {
    "A disentangled + S2S": {},
    "B disentangled, S2I only": {"lambda_s2s": 0.0},
    "C not disentangled, S2I only": {"disentangle": False, "lambda_s2s": 0.0},
    "D not disentangled + S2S": {"disentangle": False},
}


def run_setting(overrides: dict, batches: int, every: int) -> list[dict]:
    trainer, train_data, valid_data = setup(
        "AutoDisenSeq", "ml-100k", {"n_layers": 4, "arch_search": False, **overrides}
    )
    model, arch = trainer.model, trainer.model.architecture
    valid_batches = list(valid_data)  # one draw of the pop100 candidates for every evaluation
    epochs = (batches + len(train_data) - 1) // len(train_data)
    stream = itertools.chain.from_iterable(iter(train_data) for _ in range(epochs))
    curve = [{"batch": 0, "ndcg@10": trainer.architecture_fitness(valid_data, valid_batches)(arch)}]
    for step, batch in enumerate(itertools.islice(stream, batches), 1):
        model.train()
        s2i, s2s = model.seq2seq_losses(batch.to(model.item_embedding.weight.device))
        trainer.optimizer.zero_grad()
        (s2i + s2s).backward()
        trainer.optimizer.step()
        if step % every == 0:
            ndcg = trainer.architecture_fitness(valid_data, valid_batches)(arch)
            point = {"batch": step, "s2i": s2i.item(), "s2s": s2s.item(), "ndcg@10": ndcg}
            curve.append(point)
            print(json.dumps(point), flush=True)
    return curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--every", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="JSON file for the curves")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    curves = {}
    for name, overrides in SETTINGS.items():
        start = time.perf_counter()
        print(name, flush=True)
        curves[name] = run_setting(overrides, args.batches, args.every)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    print("\nsetting | " + " | ".join(f"NDCG@10 @{p['batch']}" for p in curves[name]))
    for name, curve in curves.items():
        print(f"{name} | " + " | ".join(f"{p['ndcg@10']:.4f}" for p in curve))
    if args.output:
        Path(args.output).write_text(json.dumps(curves, indent=2) + "\n")


if __name__ == "__main__":
    main()
