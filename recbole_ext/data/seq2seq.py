"""Training rows of AutoDisenSeq's stages (TOIS 2025, §4.1.3, Algorithm 1, and the authors'
pre-training and fine-tuning data, ``pzrain/AutoDisenSeq-LLM`` ``datasets.py``).

**Every prefix** (RecBole's rows, the default) —

RecBole's sequential augmentation turns a user's training sequence s_1..s_m into rows
``(s_1:i, target s_{i+1})``. For the S2S loss each row also needs its **future** s_{i+1:m} —
the rest of the user's *training* sequence, target included — fed to the encoder **reversed**,
s_m..s_{i+1}, so that s_{i+1} (the item closest to the earlier part) sits at the last position,
where Eq. (5) puts the most weight. Futures longer than L keep the L items closest to position i.

Only the training split's rows are used, so validation and test items never leak into a future.

**One random cut per window per epoch** (:func:`sliding_windows`, :func:`random_cuts`; the
authors' ``PretrainDataset``): each user's training sequence (:func:`user_sequences`) is cut into
windows of at most L items, and every epoch each window is split once at a random point t into
the earlier part w_1..w_t, the next item w_{t+1} and the reversed future w_n..w_{t+1}.

**Fine-tuning rows** (the authors' ``FinetuneDataset``): each user's last training prefix
(:func:`last_rows`) with J negatives drawn by training popularity among the items the user never
interacted with in training (:class:`PopularityNegatives`).
"""

from __future__ import annotations

import torch
from recbole.data.interaction import Interaction

FUTURE_FIELD = "future_item_id_list"  # (N, L) reversed future, left-aligned, 0-padded
FUTURE_LENGTH_FIELD = "future_item_length"  # (N,) its length, 1..L
NEGATIVES_FIELD = "finetune_neg_item_ids"  # (N, J) fine-tuning negatives of each row


def reversed_futures(user_ids: torch.Tensor, targets: torch.Tensor, max_len: int):
    """Reversed, truncated futures of time-ordered training rows grouped by user.

    Args:
        user_ids: (N,) user of each row; a user's rows are contiguous and in time order.
        targets: (N,) target item s_{i+1} of each row.
        max_len: L.

    Returns:
        ``(future (N, L), future_length (N,))``.

    >>> f, n = reversed_futures(torch.tensor([1, 1, 1, 2]), torch.tensor([10, 11, 12, 20]), 2)
    >>> f.tolist(), n.tolist()
    ([[11, 10], [12, 11], [12, 0], [20, 0]], [2, 2, 1, 1])
    """
    n = user_ids.numel()
    rows = torch.arange(n)
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = user_ids[1:] != user_ids[:-1]
    group_id = new_group.long().cumsum(0) - 1  # (N,)
    starts = rows[new_group]  # (G,)
    ends = torch.cat([starts[1:], torch.tensor([n])])  # (G,) exclusive
    length = torch.clamp(ends[group_id] - rows, max=max_len)  # (N,)
    t = torch.arange(max_len).unsqueeze(0)  # (1, L)
    source = rows.unsqueeze(1) + length.unsqueeze(1) - 1 - t  # (N, L): s_{i+len}, ..., s_{i+1}
    valid = t < length.unsqueeze(1)
    future = torch.where(valid, targets[source.clamp(0, max(n - 1, 0))], torch.zeros_like(source))
    return future, length


def attach_futures(dataset, max_len: int) -> None:
    """Add :data:`FUTURE_FIELD` and :data:`FUTURE_LENGTH_FIELD` to a training split's rows.

    RecBole keeps the augmented rows sorted by user and time; a stable sort by user restores that
    grouping if the split reordered users.
    """
    inter = dataset.inter_feat
    if FUTURE_FIELD in inter.interaction:
        return
    users = inter[dataset.uid_field]
    order = torch.sort(users, stable=True).indices
    future_sorted, length_sorted = reversed_futures(
        users[order], inter[dataset.iid_field][order], max_len
    )
    future = torch.empty_like(future_sorted)
    length = torch.empty_like(length_sorted)
    future[order], length[order] = future_sorted, length_sorted
    inter.interaction[FUTURE_FIELD] = future
    inter.interaction[FUTURE_LENGTH_FIELD] = length


# --- the authors' pre-training windows ----------------------------------------------------------
def user_sequences(user_ids, item_seqs, lengths, targets):
    """Each user's whole training sequence, rebuilt from RecBole's every-prefix rows.

    Args:
        user_ids: (N,) user of each row; a user's rows are in time order (not necessarily
            contiguous: they are grouped by a stable sort).
        item_seqs: (N, L) left-aligned histories; lengths: (N,) their lengths.
        targets: (N,) next item of each row.

    Returns:
        ``(users (U,), sequences (U, T), sequence_lengths (U,))``: the first row's history
        followed by every row's target, left-aligned, 0-padded, users in increasing id order.

    >>> u, s, n = user_sequences(torch.tensor([2, 1, 2]), torch.tensor([[5, 0], [7, 0], [5, 6]]),
    ...                          torch.tensor([1, 1, 2]), torch.tensor([6, 8, 9]))
    >>> u.tolist(), s.tolist(), n.tolist()
    ([1, 2], [[7, 8, 0], [5, 6, 9]], [2, 3])
    """
    order = torch.sort(user_ids, stable=True).indices  # (N,)
    users = user_ids[order]
    new_group = torch.ones_like(users, dtype=torch.bool)
    new_group[1:] = users[1:] != users[:-1]
    group = new_group.long().cumsum(0) - 1  # (N,) group of each sorted row
    starts = new_group.nonzero().flatten()  # (U,) first sorted row of each group
    rank = torch.arange(users.numel()) - starts[group]  # (N,) position within the group
    first = order[starts]  # (U,) original row of each user's first row
    first_length = lengths[first]  # (U,)
    counts = torch.bincount(group)  # (U,) rows per user
    sequence_lengths = first_length + counts  # (U,)
    width = max(int(sequence_lengths.max()), item_seqs.size(1))
    sequences = torch.zeros(starts.numel(), width, dtype=item_seqs.dtype)
    history = torch.arange(item_seqs.size(1)).unsqueeze(0) < first_length.unsqueeze(1)  # (U, L)
    sequences[:, : item_seqs.size(1)][history] = item_seqs[first][history]
    sequences[group, first_length[group] + rank] = targets[order]
    return users[starts], sequences[:, : int(sequence_lengths.max())], sequence_lengths


def sliding_windows(sequences, sequence_lengths, max_len: int, step: int):
    """Windows of at most ``max_len`` items (the authors' ``PretrainDataset``
    ``__split_sequence_disent``): a sequence of n ≤ L items is one window; a longer one gives the
    windows starting at n - L, n - L - step, ... (> 0) and at 0.

    Args:
        sequences: (U, T) left-aligned sequences; sequence_lengths: (U,) their lengths n.
        max_len: L; step: items between window starts (the authors: ⌊0.5 L⌋).

    Returns:
        ``(windows (W, L), window_lengths (W,), owner (W,))``, ``owner`` the sequence's row.

    >>> w, n, o = sliding_windows(torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0]]),
    ...                           torch.tensor([6, 2]), max_len=3, step=2)
    >>> w.tolist(), n.tolist(), o.tolist()
    ([[1, 2, 3], [2, 3, 4], [4, 5, 6], [7, 8, 0]], [3, 3, 3, 2], [0, 0, 0, 1])
    """
    if step < 1:
        raise ValueError(f"window step {step}: at least one item")
    starts, owner = [], []
    for row, n in enumerate(sequence_lengths.tolist()):
        row_starts = [0] if n <= max_len else [*range(n - max_len, 0, -step), 0][::-1]
        starts += row_starts
        owner += [row] * len(row_starts)
    starts, owner = torch.tensor(starts, dtype=torch.long), torch.tensor(owner, dtype=torch.long)
    window_lengths = torch.clamp(sequence_lengths[owner] - starts, max=max_len)  # (W,)
    slots = torch.arange(max_len).unsqueeze(0)  # (1, L)
    source = (starts.unsqueeze(1) + slots).clamp(max=sequences.size(1) - 1)  # (W, L)
    windows = sequences[owner.unsqueeze(1), source]
    windows = torch.where(slots < window_lengths.unsqueeze(1), windows, torch.zeros_like(windows))
    return windows, window_lengths, owner


def random_cuts(windows, window_lengths, generator: torch.Generator | None = None) -> dict:
    """One random cut of each window (the authors' ``PretrainDataset._get_input_label_subsequences``):
    t uniform in 1..n-2 (t = 1 when n = 2); the row is the earlier part w_1..w_t, the next item
    w_{t+1} and the future w_{t+1}..w_n reversed (as :func:`reversed_futures`).

    Args:
        windows: (W, L) left-aligned windows; window_lengths: (W,) their lengths n ≥ 2.

    Returns:
        ``{"item_seq" (W, L), "item_length" (W,) = t, "target" (W,), "future" (W, L),
        "future_length" (W,) = n - t}``.

    Raises:
        ValueError: a window shorter than 2 items (nothing to predict).

    >>> cut = random_cuts(torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]), torch.tensor([5, 2]),
    ...                   torch.Generator().manual_seed(0))
    >>> [cut[k].tolist() for k in ("item_length", "target", "future_length")]
    [[2, 1], [3, 7], [3, 1]]
    >>> cut["item_seq"].tolist(), cut["future"].tolist()
    ([[1, 2, 0, 0, 0], [6, 0, 0, 0, 0]], [[5, 4, 3, 0, 0], [7, 0, 0, 0, 0]])
    """
    if bool((window_lengths < 2).any()):
        raise ValueError("every window needs at least 2 items (an input and a next item)")
    draw = torch.rand(window_lengths.shape, generator=generator)  # (W,) in [0, 1)
    cut = 1 + (draw * (window_lengths - 2).clamp(min=1)).long()  # (W,) t in 1..max(1, n-2)
    rows = torch.arange(windows.size(0))
    slots = torch.arange(windows.size(1)).unsqueeze(0)  # (1, L)
    zeros = torch.zeros_like(windows)
    future_length = window_lengths - cut  # (W,)
    source = (window_lengths.unsqueeze(1) - 1 - slots).clamp(min=0)  # (W, L): w_n, w_n-1, ...
    future = torch.where(slots < future_length.unsqueeze(1), windows.gather(1, source), zeros)
    return {
        "item_seq": torch.where(slots < cut.unsqueeze(1), windows, zeros),
        "item_length": cut,
        "target": windows[rows, cut],
        "future": future,
        "future_length": future_length,
    }


# --- the authors' fine-tuning rows ----------------------------------------------------------------
def last_rows(user_ids: torch.Tensor) -> torch.Tensor:
    """Row of each user's last training prefix (rows of a user are in time order), users in
    increasing id order.

    >>> last_rows(torch.tensor([3, 1, 3, 1, 1])).tolist()
    [4, 2]
    """
    index = torch.arange(user_ids.numel())
    last = torch.full((int(user_ids.max()) + 1,), -1, dtype=torch.long)
    last.scatter_reduce_(0, user_ids, index, reduce="amax")
    return last[last >= 0]


class PopularityNegatives:
    """Negatives for the fine-tuning BCE (the authors' ``FinetuneDataset`` / ``utils.neg_sample``):
    for user u, items drawn **with replacement**, with probability proportional to the item's
    training frequency, among the items u never interacted with in training.

    Unlike the authors, who count frequencies over every interaction and exclude the user's whole
    sequence (validation and test items included), only the training split is used: the held-out
    items stay out of both (no leak into training).

    Args:
        users: (R,) user of each training interaction; items: (R,) its item.
        n_items: N, item ids are 0..N-1 (0 is padding and never drawn).
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_items: int):
        self.n_items = n_items
        self.frequency = torch.bincount(items, minlength=n_items).double()  # (N,)
        self.frequency[0] = 0.0
        order = torch.sort(users, stable=True).indices
        self.items = items[order]  # (R,) items grouped by user
        counts = torch.bincount(users, minlength=int(users.max()) + 1)  # (U,)
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])  # (U + 1,)

    def seen(self, users: torch.Tensor) -> torch.Tensor:
        """(B, N) True where the row's user interacted with the item in training."""
        users = users.cpu()
        starts, ends = self.indptr[users], self.indptr[users + 1]  # (B,)
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(users.numel()), counts)  # (S,)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(
            counts.cumsum(0) - counts, counts
        )  # (S,) position within the row's user
        mask = torch.zeros(users.numel(), self.n_items, dtype=torch.bool)
        mask[rows, self.items[starts[rows] + offsets]] = True
        return mask

    def sample(self, users: torch.Tensor, n: int, generator: torch.Generator | None = None):
        """(B, n) negatives for the rows' users.

        Raises:
            ValueError: a user who has interacted with every item that has a training frequency.
        """
        weights = self.frequency.expand(users.numel(), -1).masked_fill(self.seen(users), 0.0)
        empty = weights.sum(1) == 0
        if bool(empty.any()):
            raise ValueError(
                f"user {int(users.cpu()[empty][0])} interacted with every item in training: "
                "no popularity negative exists for the fine-tuning loss"
            )
        return torch.multinomial(weights, n, replacement=True, generator=generator)  # (B, n)


def shuffled_batches(rows: Interaction, batch_size: int, generator=None) -> list[Interaction]:
    """``rows`` in a random order (``generator``), cut into mini-batches of ``batch_size``."""
    order = torch.randperm(len(rows), generator=generator)
    return [rows[order[start : start + batch_size]] for start in range(0, len(rows), batch_size)]


class TrainingRows:
    """The training split's rows for AutoDisenSeq's stages, built once from RecBole's dataset
    (``train_data._dataset``: every-prefix rows grouped by user, each user's in time order).

    - :meth:`random_cut`: one random cut of every window (pre-training, ``random_cut``);
    - :attr:`last`: each user's last training prefix (fine-tuning, ``last``);
    - :attr:`negatives`: the :class:`PopularityNegatives` of the training interactions.

    Args:
        dataset: the training split's ``SequentialDataset``.
        max_len: L, the window length.
        window_step: items between window starts (the authors: ⌊0.5 L⌋).
    """

    def __init__(self, dataset, max_len: int, window_step: int):
        inter = dataset.inter_feat
        config = dataset.config
        self.user_field, self.item_field = dataset.uid_field, dataset.iid_field
        self.seq_field = self.item_field + config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        users, sequences, lengths = user_sequences(
            inter[self.user_field], inter[self.seq_field], inter[self.length_field],
            inter[self.item_field],
        )  # fmt: skip
        windows, window_lengths, owner = sliding_windows(sequences, lengths, max_len, window_step)
        keep = window_lengths >= 2  # a one-item window has no next item
        self.windows, self.window_lengths = windows[keep], window_lengths[keep]
        self.window_users = users[owner[keep]]  # (W,)
        self.last = inter[last_rows(inter[self.user_field])]
        items = sequences[torch.arange(sequences.size(1)).unsqueeze(0) < lengths.unsqueeze(1)]
        self.negatives = PopularityNegatives(
            users.repeat_interleave(lengths), items, dataset.item_num
        )

    def random_cut(self, generator: torch.Generator | None = None) -> Interaction:
        """Every window cut once at random (:func:`random_cuts`), as RecBole-named rows with the
        reversed futures of :data:`FUTURE_FIELD`."""
        cut = random_cuts(self.windows, self.window_lengths, generator)
        return Interaction(
            {
                self.user_field: self.window_users,
                self.seq_field: cut["item_seq"],
                self.length_field: cut["item_length"],
                self.item_field: cut["target"],
                FUTURE_FIELD: cut["future"],
                FUTURE_LENGTH_FIELD: cut["future_length"],
            }
        )
