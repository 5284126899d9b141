"""recbole-ext command line.

    python run_recbole_ext.py --preset=quick    # start here: AutoDisenSeq's whole pipeline, ~7-8 min
    python run_recbole_ext.py                   # the default run: AutoDisenSeq on ml-100k, hours
    python run_recbole_ext.py --model=SASRec --dataset=ml-100k [--output=out.json]
    python run_recbole_ext.py --benchmark --models=SASRec,GRU4Rec --seeds=3 --output=DIR [--workers=4]
    python run_recbole_ext.py --benchmark ... --ray_address=auto [--cpus_per_run=1 --gpus_per_run=0]
    python run_recbole_ext.py --tune --model=SASRec --search_space=FILE --num_samples=8 --output=DIR
    python run_recbole_ext.py --model=AutoDisenSeq --llm_rerank=True [--rerank_keep_top=0]
    python run_recbole_ext.py --rerank_from=saved/<model>.pth [--rerank_keep_top=0] --output=x.json

A run shows a header (model, data, protocol, stages), a progress bar per stage when stderr is a
terminal (``--show_progress=False``: none), an estimate of its duration from the first steps and at
the end the result table and its files.

Any ``--key=value`` not listed in ``--help`` is a RecBole/recbole-ext config override. A key that no
yaml declares and no code reads (a typo) stops the job before data loads (``--allow_unknown_keys=True``
accepts it); a key that looks like a credential is refused: secrets come from the environment
(``export OPENAI_API_KEY=...``, named by ``llm_api_key_env``).
"""

import argparse
import sys
from pathlib import Path

from recbole_ext.quick_start import DEFAULT_DATASET, DEFAULT_MODEL


def parse(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --seed=7 is a config override, never an abbreviation of --seeds
    )
    parser.add_argument("--model", "-m", help=f"model, ours or RecBole's ({DEFAULT_MODEL})")
    parser.add_argument("--dataset", "-d", help=f"dataset name ({DEFAULT_DATASET})")
    parser.add_argument("--config_files", default=None, help="yaml files, space/comma separated")
    parser.add_argument("--output", default=None, help="JSON file (run) or directory (harness)")
    harness = parser.add_argument_group("benchmark")
    harness.add_argument("--benchmark", action="store_true", help="compare --models over seeds")
    harness.add_argument("--models", default=None, help="comma-separated model names")
    harness.add_argument("--seeds", default=None, help="a count (3) or a list (1,2,3)")
    harness.add_argument("--suite", default=None, help="properties/benchmark/<suite>.yaml")
    harness.add_argument("--ours", default=None, help="models compared to the best baseline")
    harness.add_argument("--workers", type=int, default=None, help="runs at a time (1)")
    harness.add_argument(
        "--cpus_per_run", type=float, default=None, help="CPUs of a Ray task (1; --ray_address)"
    )
    harness.add_argument(
        "--gpus_per_run", type=float, default=None, help="GPUs of a Ray task (0; --ray_address)"
    )
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument("--tune", action="store_true", help="ASHA search with Ray Tune")
    tuning.add_argument("--search_space", default=None, help="properties/tune/<Model>.yaml")
    tuning.add_argument("--num_samples", type=int, default=10, help="number of trials")
    tuning.add_argument(
        "--ray_address", default=None, help="auto or HOST:PORT of a Ray cluster (also --benchmark)"
    )
    tuning.add_argument("--cpus_per_trial", type=float, default=1)
    tuning.add_argument("--gpus_per_trial", type=float, default=0)
    rerank = parser.add_argument_group("LLM reranking (AutoDisenSeq-LLM)")
    rerank.add_argument(
        "--rerank_from", default=None, help="saved checkpoint whose test ranking the LLM reranks"
    )
    args, overrides = parser.parse_known_args(argv)
    if sum(map(bool, (args.benchmark, args.tune, args.rerank_from))) > 1:
        parser.error("--benchmark, --tune and --rerank_from are separate jobs; pass one")
    return parser, args, overrides


def as_dict(overrides: list[str], parser) -> dict:
    """``["--epochs=5"]`` → ``{"epochs": "5"}`` (RecBole converts the value's type); a malformed
    override is a usage error that never shows a value (it may be a secret)."""
    from recbole_ext.config_checks import parse_overrides

    try:
        return parse_overrides(overrides)
    except ValueError as err:
        parser.error(str(err))


def check_benchmark_keys(spec) -> None:
    """Every row's configuration passes :class:`recbole_ext.config.Config`'s key checks before
    the first run starts (a typo or a secret would otherwise fail each run in turn)."""
    from recbole_ext.config import Config

    for name in spec.models:
        overrides = {**spec.overrides, **spec.variants.get(name, {}).get("config", {})}
        Config(spec.model_of(name), spec.dataset, spec.config_files or None, overrides)


def main(argv=None):
    parser, args, overrides = parse(argv)
    config_files = args.config_files.replace(",", " ").split() if args.config_files else []
    if args.benchmark:
        from recbole_ext.benchmark import BenchmarkSpec, expand_seeds, run_benchmark, split_names

        cli = {
            "models": args.models or None,  # split by split_names (suite rows may hold commas)
            "dataset": args.dataset,
            "seeds": expand_seeds(args.seeds) if args.seeds else None,
            "output": args.output or "benchmark",
            "config_files": config_files or None,
            "overrides": as_dict(overrides, parser),
            "ours": args.ours or None,
            "workers": args.workers,
            "ray_address": args.ray_address,
            "cpus_per_run": args.cpus_per_run,
            "gpus_per_run": args.gpus_per_run,
        }
        if args.suite:
            spec = BenchmarkSpec.from_suite(args.suite, **cli)
        else:
            cli["models"], cli["ours"] = split_names(cli["models"]), split_names(cli["ours"])
            spec = BenchmarkSpec(**{k: v for k, v in cli.items() if v is not None})
        check_benchmark_keys(spec)
        errors = Path(spec.output).resolve() / "errors.jsonl"
        before = len(errors.read_text().splitlines()) if errors.is_file() else 0
        print(f"results in {run_benchmark(spec)}")
        failed = (len(errors.read_text().splitlines()) if errors.is_file() else 0) - before
        if failed:  # a script (CI, a scheduler) sees it in the exit status
            sys.exit(f"run_recbole_ext.py: {failed} run(s) failed this time: see {errors}")
    elif args.tune:
        from recbole_ext.tune import SearchSpace, TuneSpec, run_tuning

        if not args.search_space:
            parser.error("--tune needs --search_space=FILE (see properties/tune/)")
        spec = TuneSpec(
            model=args.model or DEFAULT_MODEL,
            dataset=args.dataset or DEFAULT_DATASET,
            search_space=SearchSpace.from_yaml(args.search_space),
            output=args.output or "tune",
            num_samples=args.num_samples,
            config_files=config_files,
            overrides=as_dict(overrides, parser),
            ray_address=args.ray_address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
        )
        best = run_tuning(spec)
        print(
            f"best of {best['trials']} trials ({best['stopped_early']} stopped early by ASHA, "
            f"{best['errors']} failed): {best['config']}\ntest: {best['test_result']}"
        )
    elif args.rerank_from:
        from recbole_ext.quick_start import rerank_saved

        if args.model or args.dataset or config_files:
            parser.error("--rerank_from takes model, dataset and config from the checkpoint")
        as_dict(overrides, parser)  # validate the --key=value form
        result = rerank_saved(args.rerank_from, cmd_args=overrides, output=args.output)
        print(
            f"before: {result['test_result_before_rerank']}\nafter:  {result['test_result']}\n"
            f"outcomes: {result['rerank']['outcomes']}"
        )
    else:
        from recbole_ext.config_checks import CredentialError, parse_overrides
        from recbole_ext.quick_start import run

        try:  # the --key=value form: a usage error, no traceback
            parse_overrides(overrides)
        except CredentialError:
            raise  # one line from __main__, naming the key and the environment-variable way
        except ValueError as err:
            parser.error(str(err))
        if not any(o.split("=")[0] == "--show_progress" for o in overrides):
            overrides = [*overrides, "--show_progress=True"]  # bars when stderr is a terminal
        run(args.model, args.dataset, config_files or None, cmd_args=overrides, output=args.output)


if __name__ == "__main__":
    from recbole_ext.config import DatasetNotFoundError
    from recbole_ext.config_checks import ConfigError

    try:
        main()
    except (ConfigError, DatasetNotFoundError) as err:  # the message says what to fix
        sys.exit(f"run_recbole_ext.py: error: {err}")
