"""LR-Recsys samples (§5.1): each interaction with the user's last ``n`` items before it.

Pure helpers used by :class:`recbole_ext.data.lrrecsys_dataset.LRRecsysDataset`:

- :func:`select_users` / :func:`cap_user_interactions` -- the documented subset preset
  (``lrrecsys_max_users``, ``lrrecsys_max_user_interactions``) so a first run finishes in minutes;
- :func:`context_ids` -- hour of day and day of week from a UNIX timestamp (E_context, §3.5.3);
- :class:`SampleTable` -- every sample of the dataset (all splits) by stable key, with its history
  and split, shared by the train/valid/test copies of the dataset. The trainer generates the
  explanations of all samples from it before fitting.

The 80/20 user-temporal split with a validation slice is RecBole's ``RS`` split grouped by user
over time-ordered interactions (``eval_args`` in ``properties/model/LRRecsys.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recbole_ext.llm.lrrecsys_explanations import SampleText

TRAIN, VALID, TEST, UNSPLIT = 0, 1, 2, -1
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test", UNSPLIT: "unsplit"}


def select_users(user_tokens: np.ndarray, max_users: int | None, seed: int) -> np.ndarray:
    """``max_users`` distinct users drawn with ``seed`` (all users, sorted, when ``None``).

    >>> select_users(np.array(["3", "1", "2", "1"]), None, 0).tolist()
    ['1', '2', '3']
    >>> len(select_users(np.array(["3", "1", "2"]), 2, 0))
    2
    """
    users = np.unique(user_tokens)
    if max_users is None or max_users >= len(users):
        return users
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, size=max_users, replace=False))


def cap_user_interactions(
    frame: pd.DataFrame, uid: str, time: str, max_interactions: int | None
) -> pd.DataFrame:
    """Keep each user's earliest ``max_interactions`` interactions (ties: file order).

    >>> f = pd.DataFrame({"u": [1, 1, 1, 2], "t": [3, 1, 2, 5]})
    >>> cap_user_interactions(f, "u", "t", 2).sort_values(["u", "t"])["t"].tolist()
    [1, 2, 5]
    """
    if max_interactions is None:
        return frame
    ordered = frame.sort_values([uid, time], kind="stable")
    kept = ordered.groupby(uid, sort=False).cumcount() < max_interactions
    return frame.loc[ordered.index[kept.to_numpy()]].sort_index()


HOURS, WEEKDAYS = 24, 7


def context_ids(timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hour of day 0-23, day of week 0-6 with Monday = 0) of UNIX timestamps in UTC.

    >>> context_ids(np.array([0, 86400 * 4 + 3600 * 13]))  # Thu 1970-01-01 00:00, Mon 13:00
    (array([ 0, 13]), array([3, 0]))
    """
    seconds = np.asarray(timestamps, dtype=np.int64)
    hour = (seconds // 3600) % HOURS
    weekday = (seconds // 86400 + 3) % WEEKDAYS  # 1970-01-01 was a Thursday (3)
    return hour, weekday


def rescale_ratings(ratings: np.ndarray, low: float, high: float) -> np.ndarray:
    """Ratings mapped linearly from [low, high] to [0, 1] (the regression label of CTR models).

    >>> rescale_ratings(np.array([1, 3, 5]), 1, 5).tolist()
    [0.0, 0.5, 1.0]
    """
    if not low < high:
        raise ValueError(f"lrrecsys_rating_range=[{low}, {high}]: give [min, max] with min < max.")
    return ((np.asarray(ratings, dtype=np.float64) - low) / (high - low)).astype(np.float32)


@dataclass
class SampleTable:
    """All samples of an LR-Recsys dataset, indexed by the ``sample_id`` field.

    Tokens are the dataset's external ids (stable across runs, subsets and seeds), so the keys of
    stored explanations survive a different ``lrrecsys_max_users`` or seed.
    """

    users: np.ndarray  # (N,) user tokens
    items: np.ndarray  # (N,) candidate item tokens
    item_ids: np.ndarray  # (N,) internal candidate item ids
    timestamps: np.ndarray  # (N,) raw timestamps
    histories: list[tuple[str, ...]]  # N tuples of item tokens, oldest first
    split: np.ndarray  # (N,) TRAIN / VALID / TEST (UNSPLIT before build())

    def __len__(self) -> int:
        return len(self.users)

    def key(self, index: int) -> str:
        return f"user={self.users[index]}|item={self.items[index]}|t={int(self.timestamps[index])}"

    def texts(self, indices=None) -> list[SampleText]:
        """One :class:`SampleText` per sample (all, or ``indices``), item tokens as item keys."""
        indices = range(len(self)) if indices is None else indices
        return [SampleText(self.key(i), self.histories[i], str(self.items[i])) for i in indices]

    def used(self) -> np.ndarray:
        """Indices of the samples in some split (``lrrecsys_train_fraction`` leaves some out)."""
        return np.flatnonzero(self.split != UNSPLIT)

    def indices(self, split: int) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def split_sizes(self) -> dict[str, int]:
        return {SPLIT_NAMES[s]: int((self.split == s).sum()) for s in (TRAIN, VALID, TEST)}
