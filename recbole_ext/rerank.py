"""AutoDisenSeq-LLM (TOIS 2025, §4.3, Fig. 2): LLM reranking of any trained sequential model's
test ranking, measured before and after on the same candidate lists.

``run(..., llm_rerank=True)`` calls :func:`rerank_test` after the test evaluation, and
``python run_recbole_ext.py --rerank_from=saved/<model>.pth``
(:func:`recbole_ext.quick_start.rerank_saved`) on a saved model, without retraining: run-level
code calls this module, never the reverse. The prompt, reply repair and the batch of LLM calls live in
:mod:`recbole_ext.llm.rerank_window`.
"""

from __future__ import annotations

import time
from logging import getLogger

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader

from recbole_ext.config_sections import read_section
from recbole_ext.data.item_text import item_texts
from recbole_ext.llm.config import LLMConfig
from recbole_ext.llm.rerank_window import RerankConfig, UserRanking, rerank_users
from recbole_ext.metrics import metrics_from_ranks, ndcg_from_ranks


@torch.no_grad()
def collect_rankings(trainer, eval_data, texts: list[str]) -> list[UserRanking]:
    """Every evaluated user's candidates ranked by the trainer's model, best first.

    Uses the trainer's own batch evaluation (RecBole's ``_neg_sample_batch_eval`` /
    ``_full_sort_batch_eval``), so the lists are those RecBole's metrics see: the 101 candidates
    of pop100, or every item not in the user's history for full ranking. Ties are broken by item
    id (stable sort). Needs one held-out item per user (leave-one-out) and a sequential model
    (the history is the user's input sequence).
    """
    config = trainer.config
    list_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    length_field = config["ITEM_LIST_LENGTH_FIELD"]
    full_sort = isinstance(eval_data, FullSortEvalDataLoader)
    trainer.model.eval()
    trainer.tot_item_num = eval_data._dataset.item_num
    if full_sort and trainer.item_tensor is None:
        trainer.item_tensor = eval_data._dataset.get_item_feature().to(trainer.device)
    evaluate = trainer._full_sort_batch_eval if full_sort else trainer._neg_sample_batch_eval
    users: list[UserRanking] = []
    for batched in eval_data:
        row_idx = None if full_sort else batched[1]
        interaction, scores, positive_u, positive_i = evaluate(batched)
        if list_field not in interaction:
            raise ValueError(
                f"llm_rerank needs a sequential model (field {list_field!r} holds the user "
                f"history); {config['model']} is {config['MODEL_TYPE'].name.lower()}"
            )
        counts = torch.bincount(positive_u, minlength=scores.shape[0])
        if bool((counts != 1).any()):
            raise ValueError(
                "llm_rerank needs one held-out item per user (leave-one-out: eval_args.split "
                "{'LS': 'valid_and_test'}); this split has users with several"
            )
        target = torch.empty(scores.shape[0], dtype=torch.long)
        target[positive_u.cpu()] = positive_i.cpu()
        scores = scores.detach().float().cpu()
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (users, items)
        n_candidates = torch.isfinite(scores).sum(dim=1)
        if row_idx is None:  # full sort: one interaction row per user
            first_row = torch.arange(scores.shape[0])
        else:  # sampled: rows are (user, candidate) pairs; take each user's first row
            _, first = np.unique(row_idx.cpu().numpy(), return_index=True)
            first_row = torch.from_numpy(first)
        sequences = interaction[list_field].cpu()
        lengths = interaction[length_field].cpu()
        for u in range(scores.shape[0]):
            row = int(first_row[u])
            history = sequences[row, : int(lengths[row])].tolist()
            users.append(
                UserRanking(
                    ranking=order[u, : int(n_candidates[u])].tolist(),
                    target=int(target[u]),
                    history=[texts[i] for i in history if i != 0],
                )
            )
    return users


def rerank_test(config, trainer, test_data, dataset, *, show_progress: bool = True) -> dict:
    """LLM-rerank the test ranking of ``trainer.model`` (already the model to evaluate).

    Returns the keys the run output gets: ``test_result`` (after), ``test_result_before_rerank``,
    ``test_per_user_ndcg@10`` (after), ``rerank`` (settings, outcomes, wall seconds, requests/s)
    and ``llm_usage``. Starts the local llama.cpp server when ``llm_base_url`` is unset.
    """
    from recbole_ext.llm.serve import llm_session

    cfg = read_section(config, RerankConfig)
    llm = read_section(config, LLMConfig)
    texts = item_texts(dataset, list(config["item_text_fields"] or []))
    users = collect_rankings(trainer, test_data, texts)
    if cfg.max_users is not None:
        users = users[: cfg.max_users]
    logger = getLogger()
    logger.info(f"LLM reranking positions {cfg.keep_top + 1}..{cfg.window} of {len(users)} users")
    start = time.perf_counter()
    with llm_session(llm, show_progress=show_progress, logprobs=False) as client:
        out = rerank_users(users, texts, client, cfg)
    wall = time.perf_counter() - start
    before, after = metrics_from_ranks(out["ranks_before"]), metrics_from_ranks(out["ranks_after"])
    requests = out["llm_usage"]["requests_this_pass"]
    rerank = {
        **{k: v for k, v in cfg.to_dict().items() if k != "llm_rerank"},
        "users": len(users),
        "outcomes": out["outcomes"],
        "moved_users": out["moved_users"],
        "wall_seconds": round(wall, 3),
        "requests_per_second": round(requests / wall, 4) if requests else None,
        "llm": {k: v for k, v in llm.to_dict().items() if k != "llm_api_key_env"},
    }
    logger.info(f"before rerank: {before}")
    logger.info(f"after rerank:  {after}  ({rerank['outcomes']})")
    return {
        "test_result": after,
        "test_result_before_rerank": before,
        "test_per_user_ndcg@10": [round(float(v), 6) for v in ndcg_from_ranks(out["ranks_after"])],
        "test_per_user_ndcg@10_before_rerank": [
            round(float(v), 6) for v in ndcg_from_ranks(out["ranks_before"])
        ],
        "rerank": rerank,
        "llm_usage": out["llm_usage"],
    }
