"""What the sampled-evaluation candidate lists hold: distinct negatives and history items.

    python benchmarks/candidate_check.py [--dataset ml-100k] [--seeds 2020] [--files A.npz ...]

For each seed, builds the ``seq_pop100`` valid/test loaders (SASRec's dataset) and draws the
candidates both ways (``eval_neg_sampling=recbole``: RecBole's draw, with replacement;
``distinct``: the protocol's), then prints per phase the mean and minimum number of distinct
negatives per list and the mean number of negatives per list that are items of the user's history.
``--files`` also reads saved candidate files (``eval_candidates_file``) of the same dataset.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from recbole.data import data_preparation

from recbole_ext.config import Config
from recbole_ext.data import candidates
from recbole_ext.utils import create_dataset


def loaders(dataset: str, sampling: str):
    config = Config(
        "SASRec",
        dataset,
        config_dict={"eval_protocol": "seq_pop100", "eval_neg_sampling": sampling},
        cmd_args=["--state=WARNING"],
    )
    _, valid, test = data_preparation(config, create_dataset(config))
    return valid, test


def describe(stored: dict, history) -> dict[str, tuple[float, int, float]]:
    """{phase: (mean distinct negatives, min distinct, mean negatives in the user's history)}."""
    out = {}
    for phase in ("valid", "test"):
        negatives = stored[f"{phase}_negatives"]  # (N, num)
        users = stored[f"{phase}_users"]
        distinct = np.array([len(set(row)) for row in negatives])
        in_history = history[users[:, None], negatives].sum(axis=1)  # (N,)
        out[phase] = (distinct.mean(), distinct.min(), in_history.mean())
    return out


def report(name: str, stats: dict) -> None:
    for phase, (mean, low, in_history) in stats.items():
        print(
            f"{name} {phase}: {mean:.2f} distinct negatives per list (min {low}), "
            f"{in_history:.2f} negatives per list in the user's history"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", default="2020", help="comma-separated seeds")
    parser.add_argument("--files", nargs="*", default=[], help="saved candidate files")
    args = parser.parse_args(argv)
    valid, _ = loaders(args.dataset, "recbole")
    history = candidates.user_item_matrix(  # (users, items) bool: all of a user's interactions
        candidates.sampler_datasets(valid._sampler),
        valid._dataset.user_num,
        valid._dataset.item_num,
    ).toarray()
    with tempfile.TemporaryDirectory() as folder:
        for seed in map(int, args.seeds.split(",")):
            for sampling in ("recbole", "distinct"):
                path = Path(folder) / f"{sampling}{seed}.npz"
                valid, test = loaders(args.dataset, sampling)
                candidates.fix_candidates(path, seed, valid=valid, test=test)
                report(f"seed {seed} {sampling}", describe(dict(np.load(path)), history))
    for file in args.files:
        report(file, describe(dict(np.load(file)), history))


if __name__ == "__main__":
    main()
