"""Evolutionary search over a supernet's architectures (AutoDisenSeq Eq. 22, single-path one-shot).

Architectures inherit the supernet weights and are only evaluated (inference), never trained:
``fitness(arch) -> float`` (higher is better; the trainer passes validation NDCG@10 or the negative
validation Seq2Seq loss). Each generation keeps the ``population_size`` fittest architectures seen,
then breeds children: half by uniform crossover of two parents followed by mutation, half by
mutation of one parent; parents are the fittest half. Every architecture is evaluated once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from recbole_ext.model.nas.space import Architecture, SearchSpace


@dataclass
class SearchResult:
    best: Architecture
    best_fitness: float
    history: dict[Architecture, float] = field(default_factory=dict)  # every evaluated arch


def evolutionary_search(
    space: SearchSpace,
    fitness: Callable[[Architecture], float],
    population_size: int,
    generations: int,
    mutation_prob: float,
    rng: random.Random,
    show_progress: bool = False,
    max_tries: int = 50,
) -> SearchResult:
    """Search ``space`` for the architecture of highest ``fitness``.

    Args:
        population_size: architectures kept per generation (≥ 2).
        generations: breeding rounds after the random initial population.
        mutation_prob: probability of re-drawing each layer's gene in a mutation.
        rng: the only source of randomness (seeded by the caller).
        max_tries: draws per child before giving up on finding an unseen architecture.
    """
    if population_size < 2:
        raise ValueError(f"population_size={population_size}: the search needs at least 2")
    history: dict[Architecture, float] = {}
    bar = tqdm(
        total=population_size * (generations + 1),
        desc="arch search",
        disable=None if show_progress else True,
    )

    def evaluate(arch):
        if arch not in history:
            history[arch] = float(fitness(arch))
            bar.update(1)
        return history[arch]

    def unseen(draw):
        for _ in range(max_tries):
            arch = draw()
            if arch not in history:
                return arch
        return None

    for _ in range(population_size):
        arch = unseen(lambda: space.sample(rng))
        if arch is not None:
            evaluate(arch)
    population = sorted(history, key=history.get, reverse=True)[:population_size]
    for _ in range(generations):
        parents = population[: max(2, population_size // 2)]
        for child_idx in range(population_size):
            if child_idx % 2 == 0:
                child = unseen(
                    lambda parents=parents: space.mutate(
                        space.crossover(*rng.sample(parents, 2), rng), rng, mutation_prob
                    )
                )
            else:
                child = unseen(
                    lambda parents=parents: space.mutate(rng.choice(parents), rng, mutation_prob)
                )
            if child is not None:
                evaluate(child)
        population = sorted(history, key=history.get, reverse=True)[:population_size]
    bar.close()
    best = max(history, key=history.get)
    return SearchResult(best, history[best], history)
