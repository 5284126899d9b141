"""ExpCTR's data samples (Yu et al., WSDM 2025, §5.1), as pure functions.

"Following [TALLRec], we randomly select one item a user interacted with as the target item for
prediction. The remaining interacted items, up to a maximum of 10 items chronologically preceding
the target item, are considered the user's historical interactions. [...] we binarize the ratings
using a threshold" -- and (§4.1) history items rated at or above the threshold are *liked*, the
others *disliked*.

The 8:1:1 split of the samples is RecBole's random split (``eval_args.split: RS [0.8,0.1,0.1]``,
``order: RO`` of the ``ctr`` protocol), so ExpCTR and the RecBole baselines split alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


@dataclass
class ExpCTRSampleConfig:
    """§5.1's sample settings, read by :class:`~recbole_ext.data.expctr_dataset.ExpCTRDataset`
    (keys ``expctr_<field>``: ``properties/model/ExpCTR.yaml``, and TALLRec's yaml, which trains
    on the same samples)."""

    YAML_PREFIX: ClassVar[str] = "expctr_"
    YAML_FILE: ClassVar[str] = "model/ExpCTR.yaml"

    targets_per_user: int = field(metadata={"help": "§5.1: random interacted targets per user."})
    max_history: int = field(
        metadata={"help": "§5.1: chronologically preceding items shown per target."}
    )
    max_samples: int | None = field(
        metadata={"help": "Keep at most this many samples (random); None: all."}
    )

    def __post_init__(self) -> None:
        if self.targets_per_user < 1:
            raise ValueError(
                f"expctr_targets_per_user={self.targets_per_user}: set at least 1 (paper: 1)."
            )
        if self.max_history < 0:
            raise ValueError(f"expctr_max_history={self.max_history}: set >= 0 (paper: 10).")
        if self.max_samples is not None and self.max_samples < 10:
            raise ValueError(
                f"expctr_max_samples={self.max_samples}: an 8:1:1 split needs at least 10; "
                "set ~ (all samples) or a larger number."
            )


@dataclass(frozen=True)
class Sample:
    """One target interaction and the user's history before it (internal ids)."""

    row: int  # row of the target in the interaction table
    user: int
    item: int
    label: int  # 1 when the target's rating >= threshold
    liked: tuple[int, ...]  # history items rated >= threshold, oldest first
    disliked: tuple[int, ...]  # history items rated < threshold, oldest first
    history: tuple[int, ...] = ()  # all history items, oldest first (DIN/DIEN's behaviour sequence)


def build_samples(
    users: Sequence[int],
    items: Sequence[int],
    ratings: Sequence[float],
    timestamps: Sequence[float],
    *,
    targets_per_user: int,
    max_history: int,
    threshold: float,
    rng: np.random.Generator,
    max_samples: int | None = None,
) -> list[Sample]:
    """§5.1 samples: per user, ``targets_per_user`` distinct random interactions as targets (all of
    them when the user has fewer), each with up to ``max_history`` chronologically preceding items.

    Ties in time keep the file order (stable sort). With ``max_samples`` a random subset of that
    size is kept. Samples come out ordered by (user, target time).

    >>> s = build_samples([7, 7, 7, 7], [1, 2, 3, 4], [5, 2, 4, 3], [10, 20, 30, 40],
    ...                   targets_per_user=1, max_history=2, threshold=4,
    ...                   rng=np.random.default_rng(0))
    >>> len(s), s[0].user
    (1, 7)
    """
    users = np.asarray(users)
    items = np.asarray(items)
    ratings = np.asarray(ratings, dtype=float)
    timestamps = np.asarray(timestamps, dtype=float)
    order = np.lexsort((np.arange(len(users)), timestamps, users))  # by user, time, file order
    boundaries = np.flatnonzero(np.diff(users[order])) + 1
    samples: list[Sample] = []
    for rows in np.split(order, boundaries):
        if len(rows) == 0:
            continue
        k = min(targets_per_user, len(rows))
        positions = np.sort(rng.choice(len(rows), size=k, replace=False))
        for position in positions:
            history = rows[max(0, position - max_history) : position]
            liked = tuple(int(items[r]) for r in history if ratings[r] >= threshold)
            disliked = tuple(int(items[r]) for r in history if ratings[r] < threshold)
            target = rows[position]
            samples.append(
                Sample(
                    row=int(target),
                    user=int(users[target]),
                    item=int(items[target]),
                    label=int(ratings[target] >= threshold),
                    liked=liked,
                    disliked=disliked,
                    history=tuple(int(items[r]) for r in history),
                )
            )
    if max_samples is not None and len(samples) > max_samples:
        keep = np.sort(rng.choice(len(samples), size=max_samples, replace=False))
        samples = [samples[i] for i in keep]
    return samples


def sample_key(user_token: str, item_token: str) -> str:
    """Store key of a (user, target) pair, in original tokens (stable across remapping).

    >>> sample_key("196", "242")
    '196|242'
    """
    return f"{user_token}|{item_token}"


def padded_sequences(
    sequences: Sequence[Sequence[int]], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """RecBole's sequence fields of histories: ``(item_list (N, length), item_length (N,))``.

    Oldest first, zero-padded at the end (RecBole's layout); an empty history becomes one padding
    item with length 1, because DIEN's GRU packs sequences and refuses length 0.

    >>> lists, lengths = padded_sequences([(4, 2), ()], length=3)
    >>> lists.tolist(), lengths.tolist()
    ([[4, 2, 0], [0, 0, 0]], [2, 1])
    """
    lists = np.zeros((len(sequences), length), dtype=np.int64)
    lengths = np.ones(len(sequences), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        if len(sequence) > length:
            raise ValueError(
                f"a history of {len(sequence)} items does not fit MAX_ITEM_LIST_LENGTH={length}: "
                "set MAX_ITEM_LIST_LENGTH >= expctr_max_history."
            )
        lists[row, : len(sequence)] = sequence
        lengths[row] = max(1, len(sequence))
    return lists, lengths


def negative_sequences(
    item_lists: np.ndarray, n_items: int, rng: np.random.Generator
) -> np.ndarray:
    """DIEN's auxiliary negatives: for every real history item a uniformly drawn other item id in
    ``[1, n_items)``; padding stays 0.

    >>> negative_sequences(np.array([[1, 2, 0]]), 3, np.random.default_rng(0)).tolist()
    [[2, 1, 0]]
    """
    if n_items < 3:
        raise ValueError("negative sequences need at least two real items besides padding")
    negatives = rng.integers(1, n_items - 1, size=item_lists.shape)  # (N, L) in [1, n_items - 2]
    negatives = negatives + (negatives >= item_lists)  # skip the positive: uniform over the others
    return np.where(item_lists > 0, negatives, 0)
