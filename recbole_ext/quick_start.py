"""Run one model end to end (ours or RecBole's), reload a saved one, rerank a saved one's test
ranking with an LLM."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from logging import getLogger
from pathlib import Path

from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed
from tqdm.contrib.logging import logging_redirect_tqdm

from recbole_ext.checkpoint import config_to_plain, load_checkpoint, restore_model
from recbole_ext.config import Config
from recbole_ext.data.candidates import fix_candidates
from recbole_ext.metrics import per_user_from_struct
from recbole_ext.rerank import rerank_test
from recbole_ext.run_report import (
    IN_LOG_FILE_ONLY,
    progress_setting,
    route_console,
    run_header,
    run_plan,
    run_summary,
)
from recbole_ext.trainer.resume import resume_dir_for
from recbole_ext.utils import create_dataset, get_model, get_trainer

DEFAULT_MODEL = "AutoDisenSeq"
DEFAULT_DATASET = "ml-100k"


def build(config: Config):
    """Dataset, dataloaders and a freshly initialised model for ``config`` (seeded)."""
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    getLogger().info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    # sampled evaluation: the same negatives at every evaluation (eval_neg_sampling, candidates.py)
    config["eval_candidates"] = fix_candidates(
        config["eval_candidates_file"], config["seed"], valid=valid_data, test=test_data
    )
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    getLogger().debug(model)  # the module tree: hundreds of lines (--state=DEBUG shows it)
    return dataset, model, train_data, valid_data, test_data


def run(
    model: str | None = None,
    dataset: str | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: list[str] | None = None,
    output: str | Path | None = None,
    saved: bool = True,
    callback_fn=None,
    evaluate_test: bool = True,
    resume_dir: str | Path | None = None,
) -> dict:
    """Train ``model`` on ``dataset``, evaluate the best checkpoint on the test set.

    Returns (and writes to ``output`` as JSON when given) ``{"model", "dataset",
    "best_valid_score", "valid_result", "test_result", "train_seconds", "config", "model_file",
    "resumed_from_epoch"}`` with RecBole's metric names (``ndcg@10``).
    ``callback_fn(epoch_idx, valid_score)`` is RecBole's per-evaluation hook (the tuning harness
    reports to Ray Tune through it); with ``evaluate_test=False`` the test set is not touched
    (``test_result`` is ``None``).

    Resume (:mod:`recbole_ext.trainer.resume`): the training state is saved after every epoch in
    ``resume_dir``, by default ``<output>.resume/`` when ``output`` is given (none without), and
    a run given the same output continues from its last completed epoch; a finished one is not
    retrained (its best checkpoint is evaluated again). ``train_seconds`` counts the stopped
    runs' saved training time too; ``resumed_from_epoch`` is ``None`` for an uninterrupted run.

    Raises:
        ValueError: the saved state was made with another configuration.
    """
    given = {**(config_dict or {}), **{a[2:].split("=", 1)[0]: a for a in cmd_args or []}}
    config = Config(
        model=model or (None if "model" in given else DEFAULT_MODEL),
        dataset=dataset or (None if "dataset" in given else DEFAULT_DATASET),
        config_file_list=config_file_list,
        config_dict=config_dict,
        cmd_args=cmd_args,
    )
    run_start = time.perf_counter()
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    log_file = route_console()
    logger = getLogger()
    logger.info(config, extra=IN_LOG_FILE_ONLY)
    dataset_obj, model_obj, train_data, valid_data, test_data = build(config)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_obj)
    if resume_dir is None and output:
        resume_dir = resume_dir_for(output)
    if resume_dir is not None and hasattr(trainer, "enable_resume"):  # not xgboost/lightgbm
        trainer.enable_resume(resume_dir)
    show_progress, progress = progress_setting(config["show_progress"])
    plan = run_plan(trainer, train_data, valid_data, test_data)
    if hasattr(trainer, "progress"):  # the first estimate projects the later training stages
        trainer.progress.plan = plan
    splits = {"train": train_data, "valid": valid_data, "test": test_data}
    splits = {name: len(data._dataset) for name, data in splits.items()}
    logger.info(run_header(config, dataset_obj, model_obj, plan, splits, progress, log_file))
    with logging_redirect_tqdm() if show_progress else nullcontext():  # log lines above the bars
        start = time.perf_counter()
        best_valid_score, best_valid_result = trainer.fit(
            train_data,
            valid_data,
            saved=saved,
            show_progress=show_progress,
            callback_fn=callback_fn,
        )
        train_seconds = time.perf_counter() - start
        stage_seconds = dict(getattr(getattr(trainer, "progress", None), "seconds", {}))
        test_result, test_per_user = None, None
        if evaluate_test and config["train_stage"] != "pretrain":  # S3Rec/RaCT: no test
            start = time.perf_counter()
            test_result = trainer.evaluate(
                test_data, load_best_model=saved, show_progress=show_progress
            )
            stage_seconds["test"] = time.perf_counter() - start
            test_per_user = per_user_from_struct(trainer.eval_collector.last_struct)
        rerank = None
        if test_result is not None and config["llm_rerank"]:  # AutoDisenSeq-LLM (§4.3)
            start = time.perf_counter()
            rerank = rerank_test(
                config, trainer, test_data, dataset_obj, show_progress=show_progress
            )
            stage_seconds["LLM rerank"] = time.perf_counter() - start
    train_seconds += getattr(trainer, "seconds_before_resume", 0.0)

    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": _plain_metric(best_valid_score),
        "valid_result": {k: _plain_metric(v) for k, v in (best_valid_result or {}).items()},
        "test_result": None
        if test_result is None
        else {k: _plain_metric(v) for k, v in test_result.items()},
        "train_seconds": round(train_seconds, 3),
        "config": config_to_plain(config.final_config_dict),
        "model_file": trainer.saved_model_file if saved else None,
        "eval_candidates": config["eval_candidates"],
        "num_parameters": sum(p.numel() for p in model_obj.parameters() if p.requires_grad),
        "llm_usage": getattr(trainer, "llm_usage", None),  # LLM-backed models: requests, tokens
        "resumed_from_epoch": getattr(trainer, "resumed_from_epoch", None),
        "stage_seconds": {name: round(s, 3) for name, s in stage_seconds.items()},
    }
    if test_per_user is not None:
        result["test_per_user_ndcg@10"] = [round(float(v), 6) for v in test_per_user]
    if rerank is not None:  # test_result becomes the reranked one; RecBole's is kept beside it
        result["test_result_model"] = result["test_result"]
        result.update(rerank)
    if output:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.partial")  # a kill never leaves half a file
        partial.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
        partial.replace(output)
    files = trainer.output_files() if hasattr(trainer, "output_files") else {}
    files.update({"output": str(output)} if output else {})
    files.update({"log": log_file} if log_file else {})
    stage_seconds["whole run"] = time.perf_counter() - run_start
    logger.info(run_summary(result, stage_seconds, files))
    return result


def _plain_metric(value):
    return None if value is None else float(value)


def load_data_and_model(model_file: str | Path, cmd_args: list[str] | None = None):
    """Rebuild config, dataset, dataloaders and the trained model from a recbole-ext checkpoint.

    Works for our plugin models (RecBole's own ``load_data_and_model`` only knows its models and
    needs the unsafe pickled ``Config``). ``cmd_args`` (``--key=value``) override the saved
    run's settings (evaluation-side keys only: the architecture must match the weights).

    Returns:
        ``(config, model, dataset, train_data, valid_data, test_data)``
    """
    checkpoint = load_checkpoint(model_file)
    if "model" not in checkpoint:
        raise ValueError(f"{model_file} has no model/config record; was it written by run()?")
    config = Config(
        model=checkpoint["model"],
        dataset=checkpoint["dataset"],
        config_dict=checkpoint["config_overrides"],
        cmd_args=cmd_args,
    )
    init_logger(config)
    dataset, model, train_data, valid_data, test_data = build(config)
    restore_model(model, checkpoint)
    model.eval()
    return config, model, dataset, train_data, valid_data, test_data


def evaluate_saved(model_file: str | Path) -> dict:
    """Test metrics of a saved model (the tuning harness's one test evaluation)."""
    config, model, _, _, _, test_data = load_data_and_model(model_file)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    result = trainer.evaluate(test_data, load_best_model=False)
    return {k: _plain_metric(v) for k, v in result.items()}


def rerank_saved(model_file: str | Path, cmd_args: list[str] | None = None, output=None) -> dict:
    """Rerank the test ranking of a saved model (``--rerank_from``), without retraining.

    ``cmd_args`` (``--key=value``) override the saved run's config: rerank and LLM settings
    (``--rerank_keep_top=0``, ``--llm_base_url=...``) or ``eval_candidates_file``.
    """
    config, model, dataset, _, _, test_data = load_data_and_model(model_file, cmd_args=cmd_args)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "model_file": str(model_file),
        "eval_candidates": config["eval_candidates"],
        **rerank_test(config, trainer, test_data, dataset, show_progress=config["show_progress"]),
    }
    if output:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
        getLogger().info(f"results written to {output}")
    return result
