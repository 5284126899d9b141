"""Side-by-side benchmark: several models × seeds on identical splits and candidate lists.

    python run_recbole_ext.py --benchmark --models=SASRec,GRU4Rec,BERT4Rec --dataset=ml-100k \
        --seeds=3 --output=DIR [--suite=properties/benchmark/NAME.yaml] [--key=value ...]

For each seed every model trains on the same split (same seed) and is evaluated on the same
sampled candidates (``eval_candidates_file`` = ``DIR/candidates/seed<seed>.npz``, drawn once).
Each (model, seed) runs in a fresh process (isolated crashes, true peak memory), ``workers`` of
them at a time (``--workers=N``: on a GPU or a many-core machine), and its row is appended to
``DIR/results.jsonl`` as soon as it finishes, so rerunning the command resumes: finished runs are
skipped and a run stopped part-way (a closed session, a crash, a killed worker) continues from its
last completed epoch (state in ``DIR/resume/<model>-seed<seed>-<hash>/``, removed once its row is
written; see :mod:`recbole_ext.trainer.resume`). SIGTERM or SIGINT (Ctrl-C) stops the runs in
flight too, never leaving workers behind.

Writes ``table.md`` (mean ± std, best in bold, improvement of our models over the best baseline
with paired t-test stars on per-user NDCG@10), ``table.csv`` and ``<headline>.png``.

With ``--ray_address=auto|HOST:PORT`` each (model, seed) is a Ray task instead (``--cpus_per_run``,
default 1, and ``--gpus_per_run``, default 0, per task; the cluster's free resources decide how
many run at once), its row written to the same ``results.jsonl`` by this process. Relative paths
(``--output``, config files, ``*_path``/``*_file``/``*_dir`` options) are made absolute first; on a
cluster of several machines put ``DIR`` on a shared file system (every task writes its checkpoints,
candidates and resume state there) and install recbole-ext on every node. A task whose worker dies
(out of memory, a lost node) is retried by Ray (``RAY_TASK_RETRIES`` times) and resumes from its
last completed epoch (trainers with stages of their own start again: see the resume module).

A suite's ``models`` may also list **variants** (ablation rows), each a named model with its own
config on top of the suite's::

    models:
      - SASRec
      - {name: "AutoDisenSeq (2) fixed arch", model: AutoDisenSeq, config: {arch_search: False}}

**Learning rate chosen on validation**: a suite's ``learning_rates: [0.01, 0.001]`` (or a row's
own ``learning_rates``) runs each (row, seed) once per rate, every run a row of ``results.jsonl``
with its ``learning_rate``. The tables keep, per row, the runs of the rate whose validation metric
(the run's ``valid_metric``, its best epoch), averaged over the seeds that every rate of the row
has, is best (:func:`chosen_runs`; the test set plays no part), and name the chosen rate.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import json
import math
import multiprocessing
import re
import resource
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from recbole_ext.metrics import paired_t_test, relative_improvement, significance_stars
from recbole_ext.tables import describe, markdown_table, mean_std_cell
from recbole_ext.tune import absolute_paths

SMALLER_IS_BETTER = {"logloss", "mae", "rmse"}
PER_USER_KEY = "test_per_user_ndcg@10"
Run = tuple[str, int, float | None]  # (row name, seed, learning rate of a grid or None)
RAY_TASK_RETRIES = 2  # a Ray task whose worker process died is run again (it resumes its epochs)
STOP_GRACE_SECONDS = 30  # a stopped worker's time to close what it opened (an LLM server)


@dataclass
class BenchmarkSpec:
    """What to compare; a suite yaml under ``properties/benchmark/`` holds the same fields."""

    models: list[str] = field(metadata={"help": "model names, ours or RecBole's"})
    dataset: str = field(default="ml-100k", metadata={"help": "dataset name"})
    seeds: list[int] = field(default_factory=lambda: [2020, 2021, 2022])
    output: Path = field(default=Path("benchmark"), metadata={"help": "output directory"})
    config_files: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict, metadata={"help": "config overrides"})
    ours: list[str] | None = field(
        default=None, metadata={"help": "models to compare against the best baseline"}
    )
    headline: str = field(default="ndcg@10", metadata={"help": "metric of the bar chart"})
    variants: dict[str, dict] = field(
        default_factory=dict,
        metadata={
            "help": "row name → {model, config, learning_rates}: a model run with its own "
            "overrides (and its own learning-rate grid)"
        },
    )
    learning_rates: list[float] | None = field(
        default=None,
        metadata={"help": "grid run for every row; the tables keep the rate best on validation"},
    )
    workers: int = field(default=1, metadata={"help": "(model, seed) runs at a time"})
    ray_address: str | None = field(
        default=None, metadata={"help": "auto or HOST:PORT: run each (model, seed) as a Ray task"}
    )
    cpus_per_run: float | None = field(
        default=None, metadata={"help": "CPUs (and torch threads) of a Ray task (1)"}
    )
    gpus_per_run: float | None = field(default=None, metadata={"help": "GPUs of a Ray task (0)"})
    table_models: list[str] | None = field(
        default=None,
        metadata={
            "help": "rows of the tables, in order (a suite's: all its rows, also when --models "
            "runs some of them); None: models"
        },
    )

    def __post_init__(self):
        if not self.models:
            raise ValueError("benchmark: no models; pass --models=A,B or a suite with `models:`")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"benchmark: a model is listed twice in {self.models}")
        if not self.seeds:
            raise ValueError("benchmark: --seeds must be a count >= 1 or a list of seeds")
        if self.workers < 1:
            raise ValueError(f"benchmark: --workers={self.workers} must be at least 1")
        if self.ray_address is None:
            if self.cpus_per_run is not None or self.gpus_per_run is not None:
                raise ValueError(
                    "benchmark: --cpus_per_run/--gpus_per_run size Ray tasks: pass "
                    "--ray_address=auto|HOST:PORT too (local processes: --workers=N)"
                )
        else:
            if self.workers != 1:
                raise ValueError(
                    f"benchmark: --workers={self.workers} sets local processes; with "
                    "--ray_address the cluster's free resources and --cpus_per_run/--gpus_per_run "
                    "decide how many runs go at once: drop --workers (or `workers:` of the suite)"
                )
            self.cpus_per_run = 1 if self.cpus_per_run is None else self.cpus_per_run
            self.gpus_per_run = 0 if self.gpus_per_run is None else self.gpus_per_run
            if self.cpus_per_run <= 0 or self.gpus_per_run < 0:
                raise ValueError(
                    f"benchmark: --cpus_per_run={self.cpus_per_run} must be > 0 and "
                    f"--gpus_per_run={self.gpus_per_run} >= 0"
                )
        for name, variant in self.variants.items():
            unknown = set(variant) - {"model", "config", "learning_rates"}
            if unknown or "model" not in variant:
                raise ValueError(
                    f"benchmark: variant {name!r} needs `model:` and may have `config:` and "
                    f"`learning_rates:` (got keys {sorted(variant)})"
                )
        self.output = Path(self.output)
        for name in self.models:
            self._check_learning_rates(name)

    def _check_learning_rates(self, name: str) -> None:
        """A row's grid is a non-empty list of distinct positive numbers, and no config of the row
        sets ``learning_rate`` beside it (the grid sets it for each run)."""
        rates = self.learning_rates_of(name)
        if rates == [None]:
            return
        where = f"row {name!r}" if "learning_rates" in self.variants.get(name, {}) else "suite"
        if not rates or any(
            isinstance(r, bool) or not isinstance(r, int | float) or r <= 0 for r in rates
        ):
            raise ValueError(
                f"benchmark: `learning_rates` of the {where} must be a list of positive numbers, "
                f"e.g. [0.01, 0.001] (got {rates!r})"
            )
        if len(set(rates)) != len(rates):
            raise ValueError(f"benchmark: a learning rate is listed twice in {rates} ({where})")
        config = self.config_of(name)
        if "learning_rate" in config:
            raise ValueError(
                f"benchmark: row {name!r} has the grid learning_rates={rates} and also "
                f"learning_rate={config['learning_rate']!r} in its config: drop one (the grid "
                "sets learning_rate for each run)"
            )

    def config_of(self, name: str, lr: float | None = None) -> dict:
        """The overrides a row runs with: the suite's ``config`` (and CLI overrides), the row's
        own ``config``, and ``learning_rate`` of a grid run."""
        config = {**self.overrides, **self.variants.get(name, {}).get("config", {})}
        return config if lr is None else {**config, "learning_rate": lr}

    def run_config(self, name: str, seed: int, lr: float | None = None) -> dict:
        """The overrides of one run: :meth:`config_of`, the seed, the seed's candidate file and
        the checkpoint folder under ``output``."""
        return {
            **self.config_of(name, lr),
            "seed": seed,
            "eval_candidates_file": str(self.output / "candidates" / f"seed{seed}.npz"),
            "checkpoint_dir": str(self.output / "saved"),
        }

    def learning_rates_of(self, name: str) -> list[float | None]:
        """The rates a row runs: its own ``learning_rates``, else the suite's, else ``[None]``
        (one run with the rate of its config)."""
        rates = self.variants.get(name, {}).get("learning_rates", self.learning_rates)
        return [None] if rates is None else list(rates)

    def model_of(self, name: str) -> str:
        """The model class a row runs (a variant's ``model``, else the name itself)."""
        return self.variants.get(name, {}).get("model", name)

    @classmethod
    def from_suite(cls, path, **cli) -> BenchmarkSpec:
        """A suite yaml (``models``, ``dataset``, ``seeds``, ``config``...) with CLI values on top."""
        suite = yaml.safe_load(Path(path).read_text()) or {}
        known = {"models", "dataset", "seeds", "config", "ours", "headline", "workers"}
        known.add("learning_rates")
        unknown = set(suite) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        names, variants = [], {}
        for entry in suite.get("models", []):
            if isinstance(entry, str):
                names.append(entry)
                continue
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError(
                    f"{path}: a `models` entry is a model name or "
                    f"{{name: ..., model: ..., config: {{...}}}}, got {entry!r}"
                )
            names.append(entry["name"])
            variants[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
        values = {
            "models": names,
            "variants": variants,
            "workers": suite.get("workers", 1),
            "dataset": suite.get("dataset", "ml-100k"),
            "seeds": expand_seeds(suite.get("seeds", 3)),
            "overrides": suite.get("config", {}),
            "ours": suite.get("ours"),
            "headline": suite.get("headline", "ndcg@10"),
            "learning_rates": suite.get("learning_rates"),
        }
        for key in ("models", "ours"):  # names with commas: the suite's rows are known
            cli[key] = split_names(cli.get(key), names)
        extra = [m for m in cli.get("models") or [] if m not in names]
        values["table_models"] = names + extra  # the tables show every row of the suite
        for key, value in cli.items():
            if value is None:
                continue
            values[key] = {**values["overrides"], **value} if key == "overrides" else value
        return cls(**values)


def split_names(text, known=()) -> list[str] | None:
    """``--models``/``--ours`` text as row names: split at commas, except inside a ``known``
    name (a suite row such as ``"fine-tuning on every prefix, lr 0.001"``; the longest known name
    wins); a list is kept, ``None`` stays ``None``.

    >>> split_names("SASRec,GRU4Rec")
    ['SASRec', 'GRU4Rec']
    >>> split_names("SASRec,A, lr 0.1,B", known=["A, lr 0.1", "A"])
    ['SASRec', 'A, lr 0.1', 'B']
    """
    if not isinstance(text, str):  # None, or already a list
        return text
    pieces, names, start = text.split(","), [], 0
    known = set(known)
    while start < len(pieces):
        end = next(
            (
                end
                for end in range(len(pieces), start, -1)
                if ",".join(pieces[start:end]).strip() in known
            ),
            start + 1,
        )
        name = ",".join(pieces[start:end]).strip()
        if name:
            names.append(name)
        start = end
    return names


MAX_SEED_COUNT = 100  # a single number above this is a seed, not a count


def expand_seeds(seeds, first: int = 2020) -> list[int]:
    """``3`` → ``[2020, 2021, 2022]`` (a count); ``2021`` → ``[2021]`` (a single number above
    :data:`MAX_SEED_COUNT` is one seed); a list, or ``"1,4"``, is kept.

    >>> expand_seeds(2), expand_seeds([7, 9]), expand_seeds("1,4"), expand_seeds("2021")
    ([2020, 2021], [7, 9], [1, 4], [2021])
    """
    if isinstance(seeds, str):
        seeds = [int(s) for s in seeds.split(",") if s.strip()] if "," in seeds else int(seeds)
    if isinstance(seeds, int):
        return [seeds] if seeds > MAX_SEED_COUNT else [first + i for i in range(seeds)]
    return [int(s) for s in seeds]


def with_absolute_paths(spec: BenchmarkSpec) -> BenchmarkSpec:
    """``spec`` with its relative paths made absolute against the current folder, so that a run
    in another folder or on another machine (a Ray task) reads and writes the same files: the
    output folder, the config files, every ``*_path``/``*_file``/``*_dir`` option of the overrides
    and variants, and those options set (relatively) inside the config files.
    """
    overrides = absolute_paths(spec.overrides)
    for file in spec.config_files:
        values = yaml.safe_load(Path(file).read_text()) or {}
        in_file = absolute_paths({k: v for k, v in values.items() if k not in overrides})
        overrides.update({k: v for k, v in in_file.items() if v != values[k]})
    variants = {
        name: {**variant, "config": absolute_paths(variant.get("config", {}))}
        for name, variant in spec.variants.items()
    }
    return dataclasses.replace(
        spec,
        output=spec.output.resolve(),
        config_files=[str(Path(f).resolve()) for f in spec.config_files],
        overrides=overrides,
        variants=variants,
    )


def run_key(model: str, seed: int, learning_rate: float | None = None) -> str:
    """A file-system name for one (model or variant, seed[, learning rate of a grid]) run.

    >>> run_key("SASRec", 2020)[:13], run_key("SASRec 1 layer", 7)[:19]
    ('SASRec-seed20', 'SASRec_1_layer-seed')
    >>> run_key("a b", 1) != run_key("a_b", 1)  # a hash of the name keeps them apart
    True
    >>> run_key("FM", 1, 0.001)[:17]
    'FM_lr0.001-seed1-'
    """
    if learning_rate is not None:
        model = f"{model} lr{learning_rate:g}"
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", model).strip("_")
    return f"{slug}-seed{seed}-{hashlib.sha1(model.encode()).hexdigest()[:8]}"


def resume_dir_of(spec: BenchmarkSpec, model: str, seed: int, lr: float | None = None) -> Path:
    """Where the run of ``model`` (or variant), ``seed`` and grid rate ``lr`` keeps its resume
    state."""
    return spec.output / "resume" / run_key(model, seed, lr)


def _run_one(
    spec: BenchmarkSpec,
    model: str,
    seed: int,
    lr: float | None = None,
    runtime: dict | None = None,
) -> dict:
    """One (model or variant, seed, grid rate) training run; executed in a fresh process.
    ``runtime``: settings of where it runs (a Ray task's ``gpu_id``)."""
    from recbole_ext.quick_start import run

    overrides = {**spec.run_config(model, seed, lr), **(runtime or {})}
    result = run(
        spec.model_of(model),
        spec.dataset,
        spec.config_files or None,
        overrides,
        resume_dir=resume_dir_of(spec, model, seed, lr),
    )
    config = result.pop("config")
    result["model"] = model  # the row's name (a variant's, for ablations)
    result["seed"] = seed
    result["eval_protocol"] = config.get("eval_protocol")  # rows of one table share it
    if lr is not None:  # a run of a learning-rate grid (chosen_runs picks among them)
        result["learning_rate"] = lr
        result["valid_metric"] = str(config["valid_metric"]).lower()
    result["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _run_isolated(spec, model, seed, lr=None, runtime=None):
    try:
        return _run_one(spec, model, seed, lr, runtime)
    except Exception as err:  # reported in errors.jsonl, never stops the benchmark
        return {
            "model": model,
            "seed": seed,
            **({} if lr is None else {"learning_rate": lr}),
            "error": repr(err),
            "trace": traceback.format_exc(),
        }


def _run_in_worker(spec, model, seed, lr=None):
    """A local worker process's run; SIGTERM (the benchmark being stopped) unwinds it like an
    exception, so that what it opened (an LLM server) is closed."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    return _run_isolated(spec, model, seed, lr)


def _run_ray_task(spec, model, seed, lr=None):
    """A Ray task's run: ``cpus_per_run`` torch threads, on the GPUs Ray assigned (RecBole would
    otherwise point ``CUDA_VISIBLE_DEVICES`` at its ``gpu_id`` 0; none: the CPU). Its row names
    the Ray node that ran it (``ray_node_id``)."""
    import ray
    import torch

    torch.set_num_threads(max(1, int(spec.cpus_per_run)))
    gpu_id = ",".join(str(g) for g in ray.get_gpu_ids())
    row = _run_isolated(spec, model, seed, lr, {"gpu_id": gpu_id})
    row["ray_node_id"] = ray.get_runtime_context().get_node_id()  # which machine ran it
    return row


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGTERM or SIGINT calls ``stop()`` (which ends the runs in flight), then
    exits with ``128 + signal``. Signal handlers exist only in the main thread: elsewhere this
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT)

    def handler(signum, frame):
        for sig in signals:  # a second Ctrl-C while stopping does not interrupt the stop
            signal.signal(sig, signal.SIG_IGN)
        name = signal.Signals(signum).name
        print(f"benchmark: {name}, stopping the runs in flight", flush=True)
        stop()
        print("benchmark: stopped; rerun the same command to resume", flush=True)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop_workers(pool: ProcessPoolExecutor, futures) -> None:
    """End this process's worker processes (the pool's: the harness starts no other): no new run
    starts (``futures`` not yet running are cancelled), each worker gets one SIGTERM and
    ``STOP_GRACE_SECONDS`` to exit, then SIGKILL; the pool is shut down once they are gone.
    (Shutting it down first makes CPython 3.11's pool manager, which replaces a worker that exits
    when ``max_tasks_per_child`` is set, fail on the cleared worker table with a TypeError
    traceback on every stop.)"""
    for future in futures:
        future.cancel()
    signalled: set[int] = set()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while workers := multiprocessing.active_children():  # also a worker started meanwhile
        for worker in workers:
            if worker.pid not in signalled:
                worker.terminate()
                signalled.add(worker.pid)
            elif time.monotonic() > deadline:
                worker.kill()
        time.sleep(0.1)
    pool.shutdown(wait=True, cancel_futures=True)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a row cut by a kill: it will be rerun
                continue
    return rows


def run_id(row: dict) -> Run:
    """``(model, seed, learning rate)`` of a result row (rate ``None`` outside a grid).

    >>> run_id({"model": "FM", "seed": 1, "learning_rate": 0.01}), run_id({"model": "A", "seed": 2})
    (('FM', 1, 0.01), ('A', 2, None))
    """
    return row["model"], row["seed"], row.get("learning_rate")


def planned_runs(spec: BenchmarkSpec) -> list[Run]:
    """Every (row, seed, grid rate) of ``spec``, seed by seed in the rows' order.

    >>> spec = BenchmarkSpec(models=["A", "B"], seeds=[1, 2], learning_rates=[0.1, 0.01],
    ...                      variants={"B": {"model": "B", "learning_rates": [0.5]}})
    >>> planned_runs(spec)[:4]
    [('A', 1, 0.1), ('A', 1, 0.01), ('B', 1, 0.5), ('A', 2, 0.1)]
    """
    return [(m, s, lr) for s in spec.seeds for m in spec.models for lr in spec.learning_rates_of(m)]


def run_benchmark(spec: BenchmarkSpec) -> Path:
    """Run what is missing from ``spec.output/results.jsonl`` (local processes, or Ray tasks with
    ``spec.ray_address``), then write the tables."""
    logger = getLogger()
    spec = with_absolute_paths(spec)
    spec.output.mkdir(parents=True, exist_ok=True)
    results_file = spec.output / "results.jsonl"
    done = {run_id(r) for r in read_rows(results_file)}
    for model, seed, lr in done:  # a row written just before a stop: its state is not needed
        shutil.rmtree(resume_dir_of(spec, model, seed, lr), ignore_errors=True)
    todo = [run for run in planned_runs(spec) if run not in done]
    where = f"Ray at {spec.ray_address}" if spec.ray_address else f"{spec.workers} at a time"
    logger.info(f"benchmark: {len(done)} runs done, {len(todo)} to go ({where})")
    finished = iter(range(1, len(todo) + 1))

    def record(run: Run, row: dict) -> None:
        """Append a finished run's row, then drop its resume state. The file lock keeps whole
        lines when harnesses for other rows (``--models``) append to the same folder."""
        model, seed, lr = run
        target = spec.output / ("errors.jsonl" if "error" in row else "results.jsonl")
        with target.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            f.write(json.dumps(row) + "\n")
        if "error" not in row:
            shutil.rmtree(resume_dir_of(spec, model, seed, lr), ignore_errors=True)
        status = f"failed: {row['error']} (see {target})" if "error" in row else "done"
        rate = "" if lr is None else f" lr={lr:g}"
        print(f"[{next(finished)}/{len(todo)}] {model} seed={seed}{rate} {status}", flush=True)

    if todo:
        dispatch = _run_on_ray if spec.ray_address else _run_locally
        dispatch(spec, todo, record)
    write_tables(spec, read_rows(results_file))
    return spec.output


def _lost_run(run: Run, err: BaseException) -> dict:
    model, seed, lr = run
    return {
        "model": model,
        "seed": seed,
        **({} if lr is None else {"learning_rate": lr}),
        "error": f"{type(err).__name__}: the run's process died (killed or out of memory); "
        "rerun the same command to resume it from its last completed epoch",
        "trace": "".join(traceback.format_exception(err)),
    }


def _run_locally(spec: BenchmarkSpec, todo: list[Run], record) -> None:
    context = multiprocessing.get_context("spawn")
    # max_tasks_per_child=1: every run gets a fresh process; rows are written here (record)
    with ProcessPoolExecutor(spec.workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_run_in_worker, spec, *run): run for run in todo}
        with stop_on_signals(lambda: _stop_workers(pool, futures)):
            for future in as_completed(futures):
                run = futures[future]
                try:
                    row = future.result()
                except BrokenProcessPool as err:  # a worker was killed: every run in flight ends
                    row = _lost_run(run, err)
                record(run, row)


def _run_on_ray(spec: BenchmarkSpec, todo: list[Run], record) -> None:
    import ray

    connect = not ray.is_initialized()
    if connect:
        ray.init(address=spec.ray_address)
    try:
        task = ray.remote(
            num_cpus=spec.cpus_per_run,
            num_gpus=spec.gpus_per_run,
            max_calls=1,  # a fresh worker process per run (true peak memory, GPU memory freed)
            max_retries=RAY_TASK_RETRIES,
        )(_run_ray_task)
        runs = {}
        for run in todo:
            model, seed, lr = run
            name = f"benchmark {model} seed={seed}" + ("" if lr is None else f" lr={lr:g}")
            runs[task.options(name=name).remote(spec, *run)] = run
        pending = list(runs)
        with stop_on_signals(lambda: [ray.cancel(ref, force=True) for ref in runs]):
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                run = runs[ready[0]]
                try:
                    row = ray.get(ready[0])
                except ray.exceptions.RayError as err:  # the worker died more than allowed
                    row = _lost_run(run, err)
                record(run, row)
    finally:
        if connect:
            ray.shutdown()


def smaller_is_better(metric: str) -> bool:
    """LogLoss, MAE, RMSE, also under a prefix (ExpCTR's ``llm_logloss``); ranking metrics not.

    >>> [smaller_is_better(m) for m in ("logloss", "llm_rmse", "ndcg@10", "icl_auc")]
    [True, True, False, False]
    """
    name = metric.split("@")[0]
    return name in SMALLER_IS_BETTER or name.rsplit("_", 1)[-1] in SMALLER_IS_BETTER


def candidates_note(rows: list[dict]) -> str:
    """How the rows were evaluated: on one sampled candidate list per seed (equal
    ``eval_candidates`` digests), or without sampled candidates (full ranking, labelled CTR rows).

    >>> same = {"seed": 1, "eval_candidates": "ab"}
    >>> candidates_note([same, same])
    'all models ranked the same candidate lists per seed.'
    >>> candidates_note([{"seed": 1, "eval_candidates": None}])
    'no sampled candidates (full ranking or labelled test rows).'
    """
    digests: dict[int, set] = {}
    for row in rows:
        digests.setdefault(row["seed"], set()).add(row.get("eval_candidates"))
    if all(None not in d and len(d) == 1 for d in digests.values()):
        return "all models ranked the same candidate lists per seed."
    if all(d == {None} for d in digests.values()):
        return "no sampled candidates (full ranking or labelled test rows)."
    return "candidate lists differ between rows of a seed (see `eval_candidates` in results.jsonl)."


def our_models(spec: BenchmarkSpec, models: list[str]) -> list[str]:
    from recbole_ext.utils import get_model

    return [m for m in models if get_model(spec.model_of(m)).__module__.startswith("recbole_ext.")]


EXTRA_COLUMNS = ("train_seconds", "peak_memory_mib", "num_parameters")


def summarise(rows: list[dict], models: list[str]) -> dict:
    """``{model: {metric: (mean, std, n)}}`` over seeds (:func:`recbole_ext.tables.describe`),
    plus train seconds, memory, parameters."""
    summary = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        if mine:
            frame = pd.DataFrame(
                [{**r["test_result"], **{k: r[k] for k in EXTRA_COLUMNS}} for r in mine]
            )
            summary[model] = describe(frame)
    return summary


def choose_learning_rate(runs: list[dict]) -> float:
    """The rate of a row's grid runs whose validation metric (each run's ``valid_metric``, looked
    up in its ``valid_result``), averaged over the seeds that every rate has, is best: highest,
    or lowest for LogLoss / MAE / RMSE; a NaN mean is the worst; a tie goes to the rate listed
    first. The test metrics play no part.

    >>> runs = [{"seed": s, "learning_rate": lr, "valid_metric": "rmse", "valid_result": {"rmse": v}}
    ...         for s, lr, v in ((1, 0.1, 1.0), (1, 0.01, 0.8), (2, 0.1, 0.9), (2, 0.01, 1.2),
    ...                          (3, 0.1, 5.0))]  # seed 3 has only one rate: left out
    >>> choose_learning_rate(runs)  # mean RMSE 0.95 (0.1) vs 1.0 (0.01)
    0.1
    """
    by_rate: dict[float, list[dict]] = {}
    for run in runs:
        by_rate.setdefault(run["learning_rate"], []).append(run)
    seeds = set.intersection(*({r["seed"] for r in rs} for rs in by_rate.values()))
    metric = runs[0]["valid_metric"]
    sign = -1.0 if smaller_is_better(metric) else 1.0

    def score(rate: float) -> float:
        values = [
            r["valid_result"][metric] for r in by_rate[rate] if r["seed"] in seeds or not seeds
        ]
        value = sign * float(np.mean(values))
        return -math.inf if math.isnan(value) else value

    return max(by_rate, key=score)


def chosen_runs(spec: BenchmarkSpec, rows: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """The result rows the tables use, in their order, and ``{row: chosen rate}`` for the rows
    with a learning-rate grid: such a row keeps the runs of :func:`choose_learning_rate` among
    the rates of its current grid; a row without one keeps its runs without ``learning_rate``.

    >>> spec = BenchmarkSpec(models=["FM", "A"], seeds=[1],
    ...                      variants={"FM": {"model": "FM", "learning_rates": [0.1, 0.01]}})
    >>> rows = [{"model": "FM", "seed": 1, "learning_rate": lr, "valid_metric": "auc",
    ...          "valid_result": {"auc": v}} for lr, v in ((0.1, 0.6), (0.01, 0.7), (0.5, 0.9))]
    >>> kept, rates = chosen_runs(spec, rows + [{"model": "A", "seed": 1}])
    >>> [(r["model"], r.get("learning_rate")) for r in kept], rates
    ([('FM', 0.01), ('A', None)], {'FM': 0.01})
    """
    grids = {m: spec.learning_rates_of(m) for m in spec.table_models or spec.models}
    grid_runs: dict[str, list[dict]] = {}
    for row in rows:
        rates = grids.get(row["model"], [None])
        if rates != [None] and row.get("learning_rate") in rates:
            grid_runs.setdefault(row["model"], []).append(row)
    chosen = {model: choose_learning_rate(runs) for model, runs in grid_runs.items()}

    def kept(row: dict) -> bool:
        if grids.get(row["model"], [None]) == [None]:
            return row.get("learning_rate") is None
        return row["model"] in chosen and row.get("learning_rate") == chosen[row["model"]]

    return [r for r in rows if kept(r)], chosen


def shared_seeds(rows: list[dict], model: str, other: str) -> list[int]:
    """Seeds that have a row of both models, in order.

    >>> shared_seeds([{"model": "a", "seed": 2}, {"model": "a", "seed": 1},
    ...               {"model": "b", "seed": 2}], "a", "b")
    [2]
    """
    seeds = {m: {r["seed"] for r in rows if r["model"] == m} for m in (model, other)}
    return sorted(seeds[model] & seeds[other])


def paired_users(rows: list[dict], model: str, other: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-user NDCG@10 of two models, concatenated over the seeds both have."""
    by_seed = {(r["model"], r["seed"]): r.get(PER_USER_KEY) for r in rows}
    ours, theirs = [], []
    for seed in shared_seeds(rows, model, other):
        a, b = by_seed[(model, seed)], by_seed[(other, seed)]
        if a is not None and b is not None:
            ours.extend(a)
            theirs.extend(b)
    return np.array(ours), np.array(theirs)


def common_seed_means(rows: list[dict], model: str, other: str, metric: str) -> tuple[float, float]:
    """Test ``metric`` of two models, each averaged over the seeds that both have (so a resumed,
    partial benchmark never compares a 1-seed row with a 3-seed mean).

    >>> rows = [{"model": "a", "seed": s, "test_result": {"m": v}} for s, v in ((1, 1.0), (2, 3.0))]
    >>> rows.append({"model": "b", "seed": 2, "test_result": {"m": 2.0}})
    >>> common_seed_means(rows, "a", "b", "m")
    (3.0, 2.0)
    """
    seeds = shared_seeds(rows, model, other)
    if not seeds:
        return math.nan, math.nan
    values = {(r["model"], r["seed"]): r["test_result"][metric] for r in rows}
    return (
        float(np.mean([values[(model, s)] for s in seeds])),
        float(np.mean([values[(other, s)] for s in seeds])),
    )


def write_tables(spec: BenchmarkSpec, rows: list[dict]) -> None:
    """``table.md``, ``table.csv`` and the headline chart of the result ``rows`` (every run of a
    learning-rate grid: the tables keep the runs of each row's chosen rate, :func:`chosen_runs`)."""
    every_run = rows
    rows, chosen = chosen_runs(spec, rows)
    listed = spec.table_models or spec.models  # a suite's rows, not only those run this time
    models = [m for m in listed if any(r["model"] == m for r in rows)]
    seeds = sorted({r["seed"] for r in rows if r["model"] in models})  # every seed recorded
    summary = summarise(rows, models)
    if not summary:
        return
    # every row's metrics, first row's first (rows of other tasks, e.g. regression beside
    # classification, leave the cells of metrics they do not have empty)
    metrics = list(dict.fromkeys(k for s in summary.values() for k in s))
    metrics = [m for m in metrics if m not in EXTRA_COLUMNS]
    having = {m: [model for model in summary if m in summary[model]] for m in metrics}
    ours = spec.ours if spec.ours is not None else our_models(spec, models)
    baselines = [m for m in models if m not in ours]

    def better(metric):
        return min if smaller_is_better(metric) else max

    best = {m: better(m)(having[m], key=lambda model: summary[model][m][0]) for m in metrics}
    head = spec.headline if spec.headline in metrics else metrics[0]
    baselines = [b for b in baselines if head in summary[b]]
    best_baseline = (
        better(head)(baselines, key=lambda b: summary[b][head][0]) if baselines else None
    )

    lines = [
        f"Dataset `{spec.dataset}`, seeds {seeds}; mean ± std over seeds of the test metrics;",
        f"best in **bold**; {candidates_note(rows)}",
    ]
    if chosen:
        lines.append(learning_rate_note(spec, chosen, every_run))
    table = []
    for model in models:
        s = summary[model]
        cells = [model]
        for metric in metrics:
            text = mean_std_cell(*s[metric][:2], n=s[metric][2]) if metric in s else ""
            cells.append(f"**{text}**" if best[metric] == model else text)
        cells += [f"{s['train_seconds'][0]:.1f}", f"{s['peak_memory_mib'][0]:.0f}"]
        cells.append(str(int(s["num_parameters"][0])))
        if chosen:
            cells.append(f"{chosen[model]:g}" if model in chosen else "")
        table.append(cells)
    header = ["model", *metrics, "train s", "peak MiB", "params", *(["lr"] if chosen else [])]
    lines += ["", markdown_table(table, header)]
    partial = {
        model: sorted({r["seed"] for r in rows if r["model"] == model})
        for model in models
        if summary[model]["train_seconds"][2] < len(seeds)
    }
    if partial:
        lines += [
            "",
            "Rows with fewer seeds (± 0 means one seed): "
            + "; ".join(f"{m}: seeds {', '.join(map(str, s))}" for m, s in partial.items())
            + ".",
        ]
    if best_baseline and ours:
        lines += [
            "",
            f"Improvement over the best baseline ({best_baseline}, by {head}), on the seeds both "
            "rows have; stars: paired t-test on per-user NDCG@10 pooled over those seeds "
            "(* p<0.05, ** p<0.01, *** p<0.001).",
            "",
        ]
        gains = []
        for model in ours:
            if model not in summary:
                continue
            a, b = paired_users(rows, model, best_baseline)
            p_value = paired_t_test(a, b) if len(a) else math.nan
            stars = significance_stars(p_value)
            cells = [model]
            for metric in metrics:
                if metric not in summary[model] or metric not in summary[best_baseline]:
                    cells.append("")
                    continue
                mine, theirs = common_seed_means(rows, model, best_baseline, metric)
                gain = relative_improvement(mine, theirs, better(metric) is max)
                cells.append(f"{gain:+.2f}%" + (stars if metric == "ndcg@10" else ""))
            gains.append([*cells, f"{p_value:.3g}"])
        lines.append(markdown_table(gains, ["model", *metrics, "p-value"]))
    (spec.output / "table.md").write_text("\n".join(lines) + "\n")

    with (spec.output / "table.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        rate = ["learning_rate"] if chosen else []
        writer.writerow(["model", "metric", "mean", "std", "n_seeds", *rate])
        for model in models:
            rate = [chosen.get(model, "")] if chosen else []
            for metric, (mean, std, n) in summary[model].items():
                writer.writerow([model, metric, mean, std, n, *rate])
    plotted = [m for m in models if head in summary[m]]
    plot_headline(spec.output / f"{head.replace('@', '_at_')}.png", summary, plotted, head)


def learning_rate_note(spec: BenchmarkSpec, chosen: dict[str, float], rows: list[dict]) -> str:
    """The table's line on the rates chosen on validation (column ``lr``), naming the rows whose
    grid has not run every (seed, rate) yet (their choice may change). The seeds are this run's
    and every seed recorded in ``rows`` (the table's: a ``--seeds`` subset run still sees them).

    >>> spec = BenchmarkSpec(models=["FM"], seeds=[1, 2], learning_rates=[0.1, 0.01])
    >>> note = learning_rate_note(spec, {"FM": 0.1}, [{"model": "FM", "seed": 1, "learning_rate": 0.1}])
    >>> print(note)  # doctest: +ELLIPSIS
    learning rate ... among 0.1, 0.01: ... results.jsonl. Grid not complete yet: FM (1 of 4 runs).
    """
    grids = {m: spec.learning_rates_of(m) for m in chosen}
    note = (
        "learning rate (`lr`) chosen on validation per row among "
        + " / ".join(
            ", ".join(f"{r:g}" for r in grid) for grid in dict.fromkeys(map(tuple, grids.values()))
        )
        + ": the best mean validation metric over seeds; every rate's runs are in results.jsonl."
    )
    incomplete = []
    seeds = set(spec.seeds) | {r["seed"] for r in rows}
    for model, grid in grids.items():
        ran = {(r["seed"], r.get("learning_rate")) for r in rows if r["model"] == model}
        planned = {(s, lr) for s in seeds for lr in grid}
        if not planned <= ran:
            incomplete.append(f"{model} ({len(planned & ran)} of {len(planned)} runs)")
    if incomplete:
        note += " Grid not complete yet: " + "; ".join(incomplete) + "."
    return note


def plot_headline(path: Path, summary: dict, models: list[str], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [summary[m][metric][0] for m in models]
    stds = [summary[m][metric][1] for m in models]
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 2, 3.5))
    ax.bar(models, means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{metric}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
