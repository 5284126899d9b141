"""What a run shows the person who started it: a short header before training, the console kept
to that (the resolved config and the module tree go to the log file and DEBUG), and at the end
the result table, the time of each stage and where the files are.

:func:`recbole_ext.quick_start.run` calls these; they only format and route log records.
"""

from __future__ import annotations

import logging
import os
import sys

import pandas as pd
import torch

from recbole_ext.trainer.stages import Stage, format_duration, interactive

IN_LOG_FILE_ONLY = {"console": False}  # logging ``extra``: the log file keeps it, the console not
VALUE_METRICS = {"auc", "gauc", "logloss", "mae", "rmse"}  # metrics without a cut-off k


class ConsoleFilter(logging.Filter):
    """Drops records logged with ``extra=IN_LOG_FILE_ONLY`` from a console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


def is_console(handler: logging.Handler) -> bool:
    """A handler writing to the process's stdout or stderr (not a log file, not a capture)."""
    stream = getattr(handler, "stream", None)
    return isinstance(handler, logging.StreamHandler) and stream in (sys.stdout, sys.stderr)


def route_console(logger: logging.Logger | None = None) -> str | None:
    """Put :class:`ConsoleFilter` on ``logger``'s (root's) console handlers, once; return the
    path of its log file (``None`` when the process set up logging before the run, e.g. pytest:
    RecBole's ``init_logger`` then adds no handler)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if is_console(handler) and not any(isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
    files = [h.baseFilename for h in logger.handlers if isinstance(h, logging.FileHandler)]
    files = [f for f in files if f != os.devnull]  # pytest's placeholder file handler
    return files[-1] if files else None


def progress_setting(requested: bool, stream=None) -> tuple[bool, str]:
    """Whether a run shows progress bars, and why: asked for (``show_progress``) and stderr is a
    terminal (:func:`~recbole_ext.trainer.stages.interactive`).

    >>> import io
    >>> progress_setting(False)
    (False, 'off (--show_progress=False)')
    >>> progress_setting(True, io.StringIO())
    (False, 'off (stderr is not a terminal: a log file or a pipe)')
    """
    if not requested:
        return False, "off (--show_progress=False)"
    if not interactive(stream):
        return False, "off (stderr is not a terminal: a log file or a pipe)"
    return True, "on"


def cpu_line(threads: int, load: float, cores: int) -> str:
    """The CPU a run trains on, with a hint when torch's threads outnumber the idle cores (they
    then wait on each other: on a busy 2-core machine 2 threads ran several times slower than 1).

    >>> cpu_line(1, 3.2, 2)
    '1 torch thread; load average 3.2 on 2 CPU cores'
    >>> cpu_line(2, 3.2, 2)  # doctest: +NORMALIZE_WHITESPACE
    '2 torch threads; load average 3.2 on 2 CPU cores -- busy: OMP_NUM_THREADS=1 (or fewer
     threads) keeps torch from waiting on its own threads'
    """
    line = f"{threads} torch thread{'s' if threads > 1 else ''}; load average {load:.1f} on "
    line += f"{cores} CPU cores"
    if threads > 1 and load + threads > cores + 1:  # fewer idle cores than threads
        line += (
            " -- busy: OMP_NUM_THREADS=1 (or fewer threads) keeps torch from waiting on its own "
            "threads"
        )
    return line


def machine_load() -> tuple[float, int]:
    """(1-minute load average, CPU cores this process may use)."""
    return os.getloadavg()[0], len(os.sched_getaffinity(0))


def given_settings(given: dict, width: int = 60) -> str:
    """The settings the user gave (files, dicts, ``--key=value``; credentials were refused
    before), each value cut to ``width`` characters.

    >>> given_settings({"model": "AutoDisenSeq", "preset": "quick", "epochs": 3})
    'preset=quick, epochs=3'
    >>> given_settings({"load_col": {"inter": ["user_id", "item_id", "rating"]}}, width=20)
    "load_col={'inter': ['user ..."
    >>> given_settings({})
    'none (the yaml defaults)'
    """
    shown = []
    for key, value in given.items():
        if key in ("model", "dataset"):
            continue
        text = str(value)
        shown.append(f"{key}={text if len(text) <= width else text[: width - 4] + ' ...'}")
    return ", ".join(shown) or "none (the yaml defaults)"


def describe_split(eval_args: dict) -> str:
    """How the interactions are split (``eval_args.split`` and ``order``).

    >>> describe_split({"split": {"LS": "valid_and_test"}, "order": "TO"})
    'leave-one-out split in time order'
    >>> describe_split({"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO"})
    '0.8/0.1/0.1 split in random order'
    """
    split = eval_args.get("split") or {}
    if "LS" in split:
        how = "leave-one-out split"
    elif "RS" in split:
        how = "/".join(str(r) for r in split["RS"]) + " split"
    else:
        how = f"split {split}"
    order = {"TO": "in time order", "RO": "in random order"}.get(eval_args.get("order"), "")
    return f"{how} {order}".strip()


def describe_candidates(mode) -> str:
    """What each held-out item is scored against (``eval_args.mode``, the test's when split).

    >>> describe_candidates({"valid": "pop100", "test": "pop100"})
    'each held-out item ranked among 100 popularity-sampled negatives'
    >>> describe_candidates("full")
    'each held-out item ranked among all items'
    """
    mode = mode.get("test", mode.get("valid")) if isinstance(mode, dict) else mode
    mode = str(mode)
    for prefix, kind in (("pop", "popularity-sampled"), ("uni", "uniformly sampled")):
        if mode.startswith(prefix) and mode[len(prefix) :].isdigit():
            return f"each held-out item ranked among {mode[len(prefix):]} {kind} negatives"
    if mode == "full":
        return "each held-out item ranked among all items"
    if mode == "labeled":
        return "each labelled test row scored"
    return f"candidates: {mode}"


def describe_protocol(config) -> str:
    """The evaluation protocol in one line.

    >>> describe_protocol({
    ...     "eval_protocol": "seq_pop100", "metrics": ["Hit", "NDCG"], "topk": [1, 5, 10],
    ...     "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "pop100"},
    ...     "valid_metric": "NDCG@10"})  # doctest: +NORMALIZE_WHITESPACE
    'seq_pop100: leave-one-out split in time order, each held-out item ranked among 100
     popularity-sampled negatives; Hit, NDCG @ 1, 5, 10; checkpoint chosen by NDCG@10'
    """
    eval_args = config["eval_args"] or {}
    metrics = list(config["metrics"] or [])
    ranking = [m for m in metrics if m.lower() not in VALUE_METRICS]
    value = [m for m in metrics if m.lower() in VALUE_METRICS]
    shown = []
    if ranking:
        shown.append(", ".join(ranking) + " @ " + ", ".join(str(k) for k in config["topk"] or []))
    shown += value
    name = config["eval_protocol"] or "RecBole's default for the model type"
    return (
        f"{name}: {describe_split(eval_args)}, {describe_candidates(eval_args.get('mode'))}; "
        f"{', '.join(shown)}; checkpoint chosen by {config['valid_metric']}"
    )


def run_plan(trainer, train_data, valid_data, test_data) -> list[Stage]:
    """The trainer's stages (:meth:`~recbole_ext.trainer.stages.StagedTrainerMixin.stage_plan`;
    none for a trainer outside RecBole's hierarchy), then the test."""
    plan = trainer.stage_plan(train_data, valid_data) if hasattr(trainer, "stage_plan") else []
    test_rows = f"{len(test_data._dataset)} rows"
    return [*plan, Stage("test", len(test_data), unit="batch", detail=test_rows)]


def run_header(
    config, dataset, model, plan: list[Stage], splits: dict[str, int], progress: str, log_file
) -> str:
    """The lines a run starts with: what runs on what, under which protocol, in which stages.

    ``splits``: rows of each split (``{"train": N, "valid": N, "test": N}``); ``progress``: the
    second element of :func:`progress_setting`; ``log_file``: :func:`route_console`'s path.
    """
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    note = getattr(model, "parameters_note", "")  # e.g. AutoDisenSeq's supernet before its search
    cpu = str(config["device"]) == "cpu"
    rows = " / ".join(f"{name} {n:,}" for name, n in splits.items())
    lines = [
        f"{config['model']} on {config['dataset']}: {dataset.user_num - 1:,} users, "
        f"{dataset.item_num - 1:,} items, {dataset.inter_num:,} interactions (rows: {rows})",
        f"model: {params:,} trainable parameters{f' ({note})' if note else ''} on "
        f"{config['device']}"
        + (f" ({cpu_line(torch.get_num_threads(), *machine_load())})" if cpu else ""),
        f"protocol {describe_protocol(config)}",
        f"settings given: {given_settings(config.external_config_dict)}",
        "stages:",
        *(f"  {i}. {stage.describe()}" for i, stage in enumerate(plan, 1)),
        "duration: estimated from the first steps of the first stage (the next lines)",
        f"progress bars: {progress}",
        f"log file: {log_file} (the resolved config is there)"
        if log_file
        else "log file: none written by this run (logging was set up before it)",
    ]
    return "\n".join(lines)


def result_table(rows: dict[str, dict | None]) -> str:
    """Metrics by split as an aligned table (splits without a result left out).

    >>> print(result_table({"valid": {"ndcg@10": 0.25}, "test": {"ndcg@10": 0.2}, "x": None}))
           ndcg@10
    valid   0.2500
    test    0.2000
    """
    kept = {name: metrics for name, metrics in rows.items() if metrics}
    if not kept:
        return "(no result)"
    frame = pd.DataFrame.from_dict(kept, orient="index")
    return frame.to_string(float_format=lambda v: f"{v:.4f}")


def run_summary(result: dict, seconds: dict[str, float], files: dict[str, str]) -> str:
    """The lines a run ends with: the result table, each stage's time, where the files are."""
    rows = {"valid": result["valid_result"], "test": result["test_result"]}
    if "test_result_model" in result:  # LLM-reranked: RecBole's ranking beside it
        rows = {**rows, "test before rerank": result["test_result_model"]}
    valid_metric = result["config"].get("valid_metric", "")
    times = ", ".join(f"{name} {format_duration(s)}" for name, s in seconds.items())
    width = max((len(name) for name in files), default=0)
    return "\n".join(
        [
            f"results (the checkpoint of the best validation {valid_metric}):",
            result_table(rows),
            f"time: {times}" if times else "time: -",
            "files:",
            *(f"  {name:<{width}}  {path}" for name, path in files.items()),
        ]
    )
