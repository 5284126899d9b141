"""ASHA hyper-parameter tuning with Ray Tune that prunes on per-epoch validation metrics.

    python run_recbole_ext.py --tune --model=SASRec --dataset=ml-100k \
        --search_space=properties/tune/SASRec.yaml --num_samples=20 --output=DIR \
        [--ray_address=auto|HOST:PORT] [--cpus_per_trial=1] [--gpus_per_trial=0] [--key=value ...]

Unlike RecBole's ``run_hyper`` (one report after training, on test metrics), every trial reports
the validation metric after every epoch through RecBole's ``callback_fn``, so ``ASHAScheduler``
stops weak trials early; only the best configuration's checkpoint is evaluated on the test set,
once, at the end. All trials rank the same sampled validation candidates.

Search-space yaml: ``key: {type: choice, values: [...]}``, ``{type: uniform|loguniform, low,
high}``, ``{type: quniform, low, high, q}``, ``{type: randint, low, high}`` (high exclusive), or a
plain value (fixed). An optional ``asha: {grace_period, reduction_factor}`` section tunes ASHA.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DISTRIBUTIONS = {
    "choice": ("values",),
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "randint": ("low", "high"),
}
ASHA_KEYS = {"grace_period", "reduction_factor"}


@dataclass
class SearchSpace:
    """A validated search space: ``sampled`` distributions, ``fixed`` values and ASHA settings."""

    sampled: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    grace_period: int = 1
    reduction_factor: int = 2

    @classmethod
    def from_yaml(cls, path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--search_space={path}: no such file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid yaml: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of config keys to distributions")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "search space") -> SearchSpace:
        space = cls()
        asha = raw.pop("asha", {}) or {}
        unknown = set(asha) - ASHA_KEYS
        if unknown:
            raise ValueError(f"{source}: asha: unknown keys {sorted(unknown)}; use {ASHA_KEYS}")
        for key in ASHA_KEYS & set(asha):
            value = asha[key]
            if not isinstance(value, int) or value < (2 if key == "reduction_factor" else 1):
                raise ValueError(
                    f"{source}: asha.{key} must be an integer >= "
                    f"{2 if key == 'reduction_factor' else 1}, got {value!r}"
                )
            setattr(space, key, value)
        for key, spec in raw.items():
            if isinstance(spec, dict) and "type" in spec:
                space.sampled[key] = validate_distribution(key, spec, source)
            else:
                space.fixed[key] = spec
        if not space.sampled:
            raise ValueError(f"{source}: nothing to tune (no key with a `type:` distribution)")
        return space

    def param_space(self) -> dict:
        """Ray Tune's ``param_space``."""
        from ray import tune

        def build(spec):
            kind = spec["type"]
            if kind == "choice":
                return tune.choice(spec["values"])
            if kind == "quniform":
                return tune.quniform(spec["low"], spec["high"], spec["q"])
            return getattr(tune, kind)(spec["low"], spec["high"])

        return {key: build(spec) for key, spec in self.sampled.items()}


def validate_distribution(key: str, spec: dict, source: str) -> dict:
    """Check one ``{type: ..., ...}`` entry; the error names the key and the fix."""
    kind = spec["type"]
    where = f"{source}: key '{key}'"
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"{where}: unknown type {kind!r}; use one of {sorted(DISTRIBUTIONS)}")
    needed = DISTRIBUTIONS[kind]
    missing = [n for n in needed if n not in spec]
    extra = sorted(set(spec) - {"type", *needed})
    if missing or extra:
        raise ValueError(
            f"{where}: type {kind} takes {list(needed)}; missing {missing}, " f"unexpected {extra}"
        )
    if kind == "choice":
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ValueError(f"{where}: choice needs a non-empty list `values: [...]`")
        return spec
    for name in needed:
        if not isinstance(spec[name], int | float) or isinstance(spec[name], bool):
            raise ValueError(f"{where}: {name} must be a number, got {spec[name]!r}")
    if not spec["low"] < spec["high"]:
        raise ValueError(f"{where}: low ({spec['low']}) must be below high ({spec['high']})")
    if kind == "loguniform" and spec["low"] <= 0:
        raise ValueError(f"{where}: loguniform needs low > 0, got {spec['low']}")
    if kind == "randint" and not all(isinstance(spec[n], int) for n in ("low", "high")):
        raise ValueError(f"{where}: randint needs integer low/high")
    if kind == "quniform" and spec["q"] <= 0:
        raise ValueError(f"{where}: quniform needs q > 0")
    return spec


@dataclass
class TuneSpec:
    """One tuning job (CLI ``--tune``)."""

    model: str
    dataset: str
    search_space: SearchSpace
    output: Path
    num_samples: int = 10
    config_files: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    ray_address: str | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0

    def __post_init__(self):
        self.output = Path(self.output).resolve()
        self.config_files = [str(Path(f).resolve()) for f in self.config_files]
        if self.num_samples < 1:
            raise ValueError(f"--num_samples must be >= 1, got {self.num_samples}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ValueError("--cpus_per_trial must be > 0 and --gpus_per_trial >= 0")


def _trainable(params: dict, spec: TuneSpec, base: dict, bigger: bool):
    """One Ray Tune trial: train with per-epoch validation reports (never touches the test set)."""
    import tempfile

    import torch
    from ray.air import Checkpoint, session

    from recbole_ext.quick_start import run

    torch.set_num_threads(max(1, int(spec.cpus_per_trial)))
    checkpoint_dir = Path(tempfile.mkdtemp(prefix="trial-"))
    best = [None]

    def report(epoch_idx, valid_score):
        score = float(valid_score)
        improved = best[0] is None or (score >= best[0] if bigger else score <= best[0])
        metrics = {"valid_score": score, "epoch": epoch_idx + 1}
        if improved:
            best[0] = score
            session.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint_dir)))
        else:
            session.report(metrics)

    run(
        spec.model,
        spec.dataset,
        spec.config_files or None,
        config_dict={**base, **params, "checkpoint_dir": str(checkpoint_dir)},
        callback_fn=report,
        evaluate_test=False,
    )


def run_tuning(spec: TuneSpec) -> dict:
    """Run ASHA over ``spec.search_space``; write trials.csv, best.json, curves PNG."""
    import ray
    from ray import air, tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from recbole_ext.config import Config
    from recbole_ext.quick_start import evaluate_saved
    from recbole_ext.utils import get_trainer

    # Resolve the base configuration once in the driver: a bad model, dataset or key fails here,
    # before any trial starts; relative paths are made absolute for the trials' working dirs.
    base = {**spec.search_space.fixed, **spec.overrides}
    config = Config(spec.model, spec.dataset, spec.config_files or None, dict(base))
    # a trainer that cannot be tuned this way says why (``tune_unsupported``): fail before Ray
    refusal = getattr(get_trainer(config["MODEL_TYPE"], config["model"]), "tune_unsupported", None)
    if refusal:
        raise ValueError(refusal)
    unknown = [k for k in spec.search_space.sampled if k not in config]
    if unknown:
        raise ValueError(
            f"search space keys {unknown} are not config keys of {spec.model} "
            f"(check the spelling against properties/model/{spec.model}.yaml or RecBole's)"
        )
    epochs = int(config["epochs"])
    if spec.search_space.grace_period >= epochs:
        raise ValueError(
            f"asha.grace_period ({spec.search_space.grace_period}) must be below epochs ({epochs})"
            f" or ASHA can never stop a trial early; lower it or raise --epochs"
        )
    spec.output.mkdir(parents=True, exist_ok=True)
    base = absolute_paths(base)
    base.update(
        data_path=str(Path(config["data_path"]).parent),  # absolute (resolve_data_path)
        eval_candidates_file=str(spec.output / "candidates.npz"),
        show_progress=False,
    )
    bigger = bool(config["valid_metric_bigger"])
    mode = "max" if bigger else "min"

    started_ray = not ray.is_initialized()  # leave no Ray instance behind that we started
    if spec.ray_address:
        ray.init(address=spec.ray_address, ignore_reinit_error=True)
    else:
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
        )
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, spec=spec, base=base, bigger=bigger),
            {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial},
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=spec.search_space.grace_period,
            reduction_factor=spec.search_space.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=spec.search_space.param_space(),
            tune_config=tune.TuneConfig(
                metric="valid_score",
                mode=mode,
                scheduler=scheduler,
                num_samples=spec.num_samples,
                # trial configurations are drawn from the run's seed: the same command, same trials
                search_alg=BasicVariantGenerator(random_state=int(config["seed"])),
            ),
            run_config=air.RunConfig(
                name="asha",
                storage_path=str(spec.output / "ray_results"),
                checkpoint_config=air.CheckpointConfig(num_to_keep=1),
                verbose=1,
            ),
        )
        grid = tuner.fit()
        trials = collect_trials(grid, epochs, bigger)
        write_trials(spec.output, trials, config["valid_metric"])

        finished = [t for t in trials if t["best_valid_score"] is not None]
        if not finished:
            raise RuntimeError(f"every trial failed; see {spec.output / 'trials.csv'}")
        best_result = grid.get_best_result(metric="valid_score", mode=mode, scope="all")
        with best_result.checkpoint.as_directory() as directory:
            model_file = next(Path(directory).glob("*.pth"))
            test_result = evaluate_saved(model_file)
        best = {
            "model": spec.model,
            "dataset": spec.dataset,
            "valid_metric": config["valid_metric"],
            "config": {**spec.search_space.fixed, **best_result.config},
            "best_valid_score": max(t["best_valid_score"] for t in finished)
            if bigger
            else min(t["best_valid_score"] for t in finished),
            "test_result": test_result,
            "trials": len(trials),
            "stopped_early": sum(t["status"] == "stopped early" for t in trials),
            "errors": sum(t["status"] == "error" for t in trials),
        }
        (spec.output / "best.json").write_text(json.dumps(best, indent=2) + "\n")
        return best
    finally:
        if started_ray:
            ray.shutdown()


def collect_trials(grid, max_t: int, bigger: bool = True) -> list[dict]:
    trials = []
    for result in grid:
        frame = result.metrics_dataframe
        curve = [] if frame is None or "valid_score" not in frame else list(frame["valid_score"])
        if result.error is not None:
            status = "error"
        elif len(curve) < max_t:
            status = "stopped early"
        else:
            status = "completed"
        trials.append(
            {
                "trial_id": result.metrics.get("trial_id", ""),
                "config": result.config,
                "valid_curve": [float(v) for v in curve],
                "stopped_at_epoch": len(curve),
                "best_valid_score": ((max if bigger else min)(curve) if curve else None),
                "status": status,
                "error": "" if result.error is None else describe_error(result.error),
            }
        )
    return trials


PATH_KEY_SUFFIXES = ("_path", "_file", "_files", "_dir")  # data_path, eval_candidates_file, ...
PATH_KEYS = {"arch"}  # AutoDisenSeq: an architecture JSON


def absolute_paths(values: dict) -> dict:
    """``values`` with every relative path-valued option made absolute against the current
    folder: Ray starts each trial in its own folder (and a cluster node elsewhere), where a
    relative ``data_path`` or ``eval_candidates_file`` would point at nothing.

    >>> absolute_paths({"data_path": "/d", "epochs": 3})
    {'data_path': '/d', 'epochs': 3}
    >>> absolute_paths({"checkpoint_dir": "saved"})["checkpoint_dir"] == str(Path("saved").resolve())
    True
    """

    def absolute(value):
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str(Path(value).resolve())
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return value

    return {
        key: absolute(value) if key.endswith(PATH_KEY_SUFFIXES) or key in PATH_KEYS else value
        for key, value in values.items()
    }


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def describe_error(error: BaseException, limit: int = 500) -> str:
    """``"ValueError: <message>"`` of the exception that failed a trial.

    Ray wraps it in a ``RayTaskError`` whose text starts with ``ray::ImplicitFunc.train()
    (pid=...)`` and colour codes; the original exception is its ``cause``.
    """
    cause = getattr(error, "cause", None) or error
    message = _ANSI.sub("", str(cause)).strip()
    return f"{type(cause).__name__}: {' '.join(message.split())}"[:limit]


def write_trials(output: Path, trials: list[dict], metric: str) -> None:
    keys = sorted({k for t in trials for k in t["config"]})
    with (output / "trials.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "trial_id",
                *keys,
                "status",
                "stopped_at_epoch",
                "best_valid_score",
                "valid_curve",
                "error",
            ]
        )
        for t in trials:
            writer.writerow(
                [
                    t["trial_id"],
                    *(t["config"].get(k) for k in keys),
                    t["status"],
                    t["stopped_at_epoch"],
                    t["best_valid_score"],
                    json.dumps(t["valid_curve"]),
                    t["error"],
                ]
            )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for t in trials:
        if t["valid_curve"]:
            epochs = range(1, len(t["valid_curve"]) + 1)
            ax.plot(
                epochs,
                t["valid_curve"],
                marker="o",
                ms=3,
                alpha=0.8,
                linestyle="--" if t["status"] == "stopped early" else "-",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("ASHA trials (dashed: stopped early)")
    fig.tight_layout()
    fig.savefig(output / "valid_curves.png", dpi=120)
    plt.close(fig)
