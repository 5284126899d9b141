"""Sampled evaluation (pop100, uni100, ...) that encodes each held-out row's history once.

RecBole's ``NegSampleEvalDataLoader`` repeats every held-out row once per candidate (1 + 100 rows
per target under pop100) and ``Trainer._neg_sample_batch_eval`` scores those rows with
``model.predict``: a sequential model encodes each user's sequence 101 times. Issue 16 measured one
ml-100k validation pass of an untrained SASRec at 41.2 s on a 2-core CPU, against 0.25 s for
encoding the 943 users once.

:class:`SampledEvalMixin` overrides that one hook. For a sequential model it scores each held-out
row once with ``model.full_sort_predict`` (all items, in chunks of rows that bound the memory) and
gathers the scores of the row's candidates, then hands RecBole the same ``(users, items)`` score
table as its own path does, so the collector, the metrics and everything after are RecBole's.

Equality is checked, not assumed: the first batch a trainer evaluates is scored both ways and the
two score tables must agree to float32 rounding (:func:`scores_agree`). A model whose
``predict`` and ``full_sort_predict`` disagree (or that has no ``full_sort_predict``) is evaluated
with RecBole's per-row path for the rest of the run, after one warning naming the model. Other
model types (general, context-aware, knowledge) keep RecBole's path: their ``predict`` does not
re-encode a history per row, so there is little to gain.
"""

from __future__ import annotations

import torch
from recbole.data.interaction import Interaction
from recbole.utils import EvaluatorType, ModelType

# Agreement of the two paths: torch.allclose(ours, recbole, rtol=RTOL, atol=ATOL * s), s the
# largest |score| of RecBole's table (scores of untrained models can be ~1e-6, of trained ones ~10).
# The paths do the same arithmetic in another order (a (C, D) x (D, N) matmul against per-row dot
# products; a history encoded in a batch of 101 equal rows against one row): float32 rounding, at
# most 3e-7 x s on the first batch of each of the 25 sequential models that encode once, after one
# epoch on tests/data/tiny (tests/test_sampled_eval.py asserts < 1e-6; each run logs its value).
RTOL = 1e-5
ATOL = 1e-5
# Largest (rows, n_items) float32 block of full_sort_predict scores held at once.
SCORE_CHUNK_BYTES = 64 * 2**20


def held_out_layout(
    row_idx: torch.Tensor, positive_u: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each held-out row sits in a RecBole negative-sampling evaluation batch, and which
    held-out row each candidate row repeats.

    RecBole's batch is one block per user (its ``k`` held-out rows, then ``times - 1`` repeats of
    those ``k`` rows carrying sampled items: ``Interaction.repeat``), users in ``positive_u``
    order; ``row_idx`` gives each row's user and ``positive_u`` each held-out row's user.

    Args:
        row_idx: (N,) user (0..U-1, in the batch) of every row.
        positive_u: (P,) user of every held-out row, non-decreasing.
        n_rows: N.

    Returns:
        ``(query_rows (P,), row_query (N,))``: the batch row of each held-out row, and for each
        batch row the held-out row (0..P-1) whose history it carries.

    Raises:
        ValueError: when the batch is not laid out this way (rows of a user not contiguous, a
            user's block not ``k * times`` rows, ...).

    >>> # user 0: one held-out row + 2 candidates; user 1: two held-out rows, each with 2 more
    >>> rows, query = held_out_layout(torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1]),
    ...                               torch.tensor([0, 1, 1]), 9)
    >>> rows.tolist(), query.tolist()
    ([0, 3, 4], [0, 0, 0, 1, 2, 1, 2, 1, 2])
    """
    n_held_out = positive_u.numel()
    if n_held_out == 0 or n_rows % n_held_out or row_idx.numel() != n_rows:
        raise ValueError(f"{n_rows} rows are not a whole number of repeats of {n_held_out}")
    times = n_rows // n_held_out  # 1 + negatives per held-out row
    n_users = int(positive_u[-1]) + 1
    k = torch.bincount(positive_u, minlength=n_users)  # (U,) held-out rows per user
    if (
        bool((k == 0).any())
        or bool((row_idx[1:] < row_idx[:-1]).any())
        or not torch.equal(torch.bincount(row_idx, minlength=n_users), k * times)
    ):
        raise ValueError("rows are not one contiguous block of k * times rows per user")
    first_query = k.cumsum(0) - k  # (U,) index of each user's first held-out row
    block_start = first_query * times  # (U,) batch row where each user's block starts
    offset = torch.arange(n_rows) - block_start[row_idx]  # (N,) position in the user's block
    row_query = first_query[row_idx] + offset % k[row_idx]  # (N,)
    query_rows = block_start[positive_u] + torch.arange(n_held_out) - first_query[positive_u]
    return query_rows, row_query  # (P,), (N,)


def repeats_held_out_rows(
    column: torch.Tensor, query_rows: torch.Tensor, row_query: torch.Tensor
) -> bool:
    """Whether every row of ``column`` (N, ...) equals its held-out row's (see
    :func:`held_out_layout`). One held-out row per user (leave-one-out) is compared as
    (P, times, ...) blocks, without gathering N rows.

    >>> column = torch.tensor([[1, 2], [1, 2], [3, 4], [3, 4]])
    >>> repeats_held_out_rows(column, torch.tensor([0, 2]), torch.tensor([0, 0, 1, 1]))
    True
    >>> repeats_held_out_rows(column, torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1]))
    False
    """
    n_rows, n_held_out = row_query.numel(), query_rows.numel()
    times = n_rows // max(n_held_out, 1)
    held_out = torch.arange(n_held_out)
    if (
        n_rows == n_held_out * times
        and torch.equal(row_query, held_out.repeat_interleave(times))  # one block per held-out row
        and torch.equal(query_rows // times, held_out)  # the held-out row in its own block
    ):
        view = column.view(n_held_out, times, *column.shape[1:])  # (P, times, ...)
        return torch.equal(view, view[:, :1].expand_as(view))
    return torch.equal(column, column[query_rows[row_query]])


def gather_candidate_scores(
    score_all_items, queries, row_query: torch.Tensor, items: torch.Tensor, chunk_rows: int
) -> torch.Tensor:
    """Score every candidate row by scoring each held-out row against all items once.

    Args:
        score_all_items: ``full_sort_predict``: an ``Interaction`` of C rows -> (C, n_items) or
            (C * n_items,) scores.
        queries: ``Interaction`` of the P held-out rows (on the model's device).
        row_query: (N,) held-out row (0..P-1) of each candidate row.
        items: (N,) item id of each candidate row.
        chunk_rows: held-out rows scored per ``score_all_items`` call (bounds the memory).

    Returns:
        (N,) scores, ``scores[r] = score_all_items(queries)[row_query[r], items[r]]``.

    >>> from recbole.data.interaction import Interaction
    >>> table = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    >>> def score_all(q): return table[q["row"]]
    >>> gather_candidate_scores(score_all, Interaction({"row": torch.tensor([0, 1])}),
    ...                         torch.tensor([1, 0, 1, 1]), torch.tensor([2, 1, 0, 1]), 1).tolist()
    [5.0, 1.0, 3.0, 4.0]
    """
    row_query = row_query.to(items.device)
    n_queries = len(queries)
    if n_queries <= chunk_rows:  # one call: every row
        return score_all_items(queries).reshape(n_queries, -1)[row_query, items]
    scores = torch.empty(row_query.numel(), device=items.device)
    for start in range(0, n_queries, chunk_rows):
        stop = min(start + chunk_rows, n_queries)
        table = score_all_items(queries[start:stop]).reshape(stop - start, -1)  # (C, n_items)
        rows = (row_query >= start) & (row_query < stop)  # (N,) rows whose history is here
        scores[rows] = table[row_query[rows] - start, items[rows]].to(scores.dtype)
    return scores  # (N,)


def scores_agree(ours: torch.Tensor, reference: torch.Tensor) -> tuple[bool, float]:
    """Whether two score tables agree, and their largest difference relative to the largest score.

    Agree: same shape, same infinities (-inf marks items that are not candidates) and
    ``torch.allclose(ours, reference, rtol=RTOL, atol=ATOL * s)``, ``s`` the largest finite
    ``|reference|``. The difference returned is ``max |ours - reference| / s`` over finite entries.

    >>> inf = float("inf")
    >>> scores_agree(torch.tensor([1.0, -inf, 2.0]), torch.tensor([1.0, -inf, 2.0 + 1e-7]))[0]
    True
    >>> scores_agree(torch.tensor([1.0, -inf, 2.0]), torch.tensor([1.5, -inf, 2.0]))
    (False, 0.25)
    """
    if ours.shape != reference.shape:
        return False, float("inf")
    finite = torch.isfinite(reference)
    if not torch.equal(finite, torch.isfinite(ours)):
        return False, float("inf")
    if not bool(finite.any()):
        return torch.equal(ours, reference), 0.0
    scale = float(reference[finite].abs().max()) or 1.0
    difference = float((ours[finite] - reference[finite]).abs().max()) / scale
    agree = torch.allclose(ours[finite], reference[finite], rtol=RTOL, atol=ATOL * scale)
    return agree, difference


class SampledEvalMixin:
    """RecBole ``Trainer`` mixin: sampled evaluation of sequential models encodes each held-out
    row's history once (``full_sort_predict``) instead of once per candidate (``predict``).

    ``encode_once`` tells which path evaluation takes: ``None`` until the first evaluated batch
    has been scored both ways, then ``True`` (each history once) or ``False`` (RecBole's per-row
    path: a model that is not sequential, or whose two scoring functions disagree).
    ``first_batch_difference`` is that batch's max |ours - RecBole's| / largest |score| (``None``
    before, or when ``full_sort_predict`` could not score it).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.encode_once = None if model.type == ModelType.SEQUENTIAL else False
        self.first_batch_difference = None
        self._history_fields = None  # fields of a candidate row that come from its held-out row

    def _neg_sample_batch_eval(self, batched_data):
        interaction, row_idx, positive_u, positive_i = batched_data
        if self.encode_once is False or row_idx is None:  # labelled (unsampled) rows: RecBole's
            return super()._neg_sample_batch_eval(batched_data)
        layout = self._held_out_layout(interaction, row_idx, positive_u)
        if layout is None:
            return super()._neg_sample_batch_eval(batched_data)
        if self.encode_once is None:
            return self._check_encode_once(batched_data, layout)
        scores = self._candidate_scores(interaction, *layout)
        return self._score_table(interaction, scores, row_idx, positive_u, positive_i)

    # --- helpers -------------------------------------------------------------------------------
    def _held_out_layout(self, interaction, row_idx, positive_u):
        """:func:`held_out_layout`, checked against the rows' history fields (sequences, lengths,
        user): ``None`` (RecBole's path for this batch, one warning) when the batch is not laid
        out as RecBole's ``NegSampleEvalDataLoader`` lays it out."""
        try:
            query_rows, row_query = held_out_layout(row_idx, positive_u, interaction.length)
            for field in self._history_columns(interaction):
                if not repeats_held_out_rows(interaction[field], query_rows, row_query):
                    raise ValueError(f"field {field!r} differs from the held-out row's")
        except ValueError as err:
            if not getattr(self, "_warned_layout", False):
                self._warned_layout = True
                self.logger.warning(
                    f"{type(self.model).__name__}: a sampled-evaluation batch is not laid out as "
                    f"RecBole's NegSampleEvalDataLoader lays it out ({err}); such batches are "
                    "scored row by row with predict (RecBole's path)"
                )
            return None
        return query_rows, row_query

    def _history_columns(self, interaction) -> list[str]:
        if self._history_fields is None:
            suffix = self.config["LIST_SUFFIX"]
            fixed = [self.config["ITEM_LIST_LENGTH_FIELD"], self.config["USER_ID_FIELD"]]
            self._history_fields = [c for c in interaction.columns if c.endswith(suffix)] + [
                c for c in fixed if c in interaction
            ]
        return self._history_fields

    @torch.no_grad()
    def _candidate_scores(self, interaction, query_rows, row_query) -> torch.Tensor:
        """(N,) score of every row of the batch, each held-out row's history encoded once."""
        queries = Interaction({k: v[query_rows] for k, v in interaction.interaction.items()})
        queries = queries.to(self.device)  # the P held-out rows
        items = interaction[self.config["ITEM_ID_FIELD"]].to(self.device)  # (N,)
        n_items = getattr(self.model, "n_items", None) or self.tot_item_num
        chunk_rows = max(1, SCORE_CHUNK_BYTES // (4 * n_items))
        return gather_candidate_scores(
            self.model.full_sort_predict, queries, row_query, items, chunk_rows
        )

    def _score_table(self, interaction, scores, row_idx, positive_u, positive_i):
        """What RecBole's hook returns for per-row ``scores`` (N,): the scores themselves for
        value metrics, else a (users, items) table, -inf where an item is not a candidate."""
        if self.config["eval_type"] == EvaluatorType.VALUE:
            return interaction, scores, positive_u, positive_i
        table = torch.full(
            (int(positive_u[-1]) + 1, self.tot_item_num), -torch.inf, device=self.device
        )  # (U, n_items)
        item_idx = interaction[self.config["ITEM_ID_FIELD"]].to(self.device)
        table[row_idx.to(self.device), item_idx] = scores.to(table.dtype)
        return interaction, table, positive_u, positive_i

    def _check_encode_once(self, batched_data, layout):
        """Score the first batch both ways; keep encoding once only if the tables agree."""
        model = type(self.model).__name__
        reference = super()._neg_sample_batch_eval(batched_data)
        interaction, row_idx, positive_u, positive_i = batched_data
        reason = None
        try:
            scores = self._candidate_scores(interaction, *layout)
            ours = self._score_table(interaction, scores, row_idx, positive_u, positive_i)[1]
        except NotImplementedError:
            reason = "it has no full_sort_predict"
        except Exception as err:  # a full_sort_predict RecBole's sampled path never calls
            reason = f"its full_sort_predict failed ({type(err).__name__}: {err})"
        else:
            agree, difference = scores_agree(ours.to(reference[1].device), reference[1])
            self.first_batch_difference = difference
            if not agree:
                reason = (
                    "its predict and full_sort_predict disagree on the first evaluated batch "
                    f"(max |difference| {difference:.3g} x the largest |score|; allowed: "
                    f"rtol {RTOL:g}, atol {ATOL:g} x the largest |score|)"
                )
        self.encode_once = reason is None
        if reason is None:
            self.logger.info(
                f"{model}: sampled evaluation encodes each history once (full_sort_predict); "
                f"first batch equals RecBole's per-row scores (max |difference| {difference:.3g} x "
                "the largest |score|)"
            )
        else:
            self.logger.warning(
                f"{model}: sampled evaluation falls back to RecBole's per-row scoring "
                f"(predict on every candidate row, slower) because {reason}"
            )
        return reference
