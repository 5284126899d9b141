"""Issue 19: a secret passed as a config key is refused and written nowhere; a mistyped key stops
the run before data loads, naming the closest known keys. Through the CLI, ``--benchmark``,
``--tune`` and the Python API."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

import run_recbole_ext
from recbole_ext import quick_start
from recbole_ext.benchmark import BenchmarkSpec, run_benchmark
from recbole_ext.config import Config
from recbole_ext.config_checks import (
    ConfigError,
    CredentialError,
    UnknownKeyError,
    closest_keys,
    keys_read,
    keys_read_in,
    looks_like_credential,
    parse_overrides,
    preset_yamls,
    shared_sources,
    value_type_problem,
)
from recbole_ext.config_sections import yaml_section
from recbole_ext.llm import LLMConfig
from recbole_ext.tune import SearchSpace, TuneSpec, run_tuning
from tests.conftest import REPO_DIR, TESTS_DIR, TINY_DATA, TINY_YAML

SECRET = f"sk-proj-{uuid.uuid4().hex}"  # unique: any file holding it got it from this test


def files_holding(root: Path, text: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``text`` (logs, JSON, event files, zips)."""
    needle = text.encode()
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    )


def tiny_config(model="Pop", config_dict=None, cmd_args=None, files=()):
    config_dict = {"data_path": str(TINY_DATA), **(config_dict or {})}
    return Config(model, "tiny", [str(TINY_YAML), *files], config_dict, cmd_args)


@pytest.fixture
def no_data_load(monkeypatch):
    """Fail the test if a run gets as far as loading its dataset."""

    def refuse(config):
        raise AssertionError("the dataset was loaded before the key check refused the run")

    monkeypatch.setattr(quick_start, "create_dataset", refuse)


# --------------------------------------------------------------------------------------------
# Pure rules
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, credential",
    [
        ("llm_api_key", True),
        ("api_key", True),
        ("openaiApiKey", True),
        ("hf_token", True),
        ("wandb_secret", True),
        ("db_password", True),
        ("aws_secret_access_key", True),
        ("llm_api_key_env", False),  # the NAME of an environment variable
        ("llm_max_tokens", False),  # a count
        ("expctr_pos_tokens", False),  # vocabulary words
        ("tokenizer_path", False),
        ("learning_rate", False),
    ],
)
def test_credential_looking_keys(key, credential):
    assert looks_like_credential(key) is credential


def test_keys_read_by_literal_name_only():
    source = """
x = config["a"] + self.config['b'] + config.final_config_dict["c"]
y = config.get("d", 1) if "e" in self.config else config.f
z = other["g"], config[name], spec.config.get(key)
"""
    assert keys_read(source) == {"a", "b", "c", "d", "e", "f"}
    assert keys_read(source, attributes=False) == {"a", "b", "c", "d", "e"}


def test_closest_keys_by_spelling():
    known = ["learning_rate", "learner", "epochs", "MAX_ITEM_LIST_LENGTH"]
    assert closest_keys("learning_rat", known)[0] == "learning_rate"
    assert closest_keys("max_item_list_length", known) == ["MAX_ITEM_LIST_LENGTH"]
    assert closest_keys("zzz", known) == []


def test_malformed_overrides_never_show_the_value():
    with pytest.raises(CredentialError) as err:  # a space instead of "=": the key is named
        parse_overrides(["--llm_api_key", SECRET])
    assert "`llm_api_key`" in str(err.value) and SECRET not in str(err.value)
    with pytest.raises(ValueError, match="argument 2 of the overrides") as err:
        parse_overrides(["--epochs=1", SECRET])
    assert SECRET not in str(err.value)
    with pytest.raises(ValueError, match="`--epochs` has no value"):
        parse_overrides(["--epochs", "5"])


def test_every_declared_credential_looking_key_holds_no_secret():
    """All keys the sources declare or read (both packages' yamls, every code file) that look
    like credentials: names of environment variables, or RecBole's counts/flags of 'token'
    (categorical) fields. A new one must be reviewed: rename it, or make it an *_env key."""
    yamls = [
        *Path(sys.modules["recbole"].__file__).parent.joinpath("properties").rglob("*.yaml"),
        *(REPO_DIR / "recbole_ext" / "properties").rglob("*.yaml"),
    ]
    declared = set()
    for path in yamls:
        declared |= set(yaml.safe_load(path.read_text()) or {})
    for package in ("recbole", "recbole_ext"):
        root = Path(sys.modules[package].__file__).parent
        for path in root.rglob("*.py"):
            declared |= keys_read_in(path)
    env_keys = {k for k in declared if k.endswith("_env")}
    assert env_keys >= {"llm_api_key_env"}
    looks = {k for k in declared if looks_like_credential(k)}
    # RecBole's: a flag and a count of its 'token' (categorical) fields; its yaml misspells
    # the count (token_num_threhold), its code reads token_num_threshold
    assert looks == {"convert_token_to_onehot", "token_num_threshold", "token_num_threhold"}


def test_llm_config_takes_a_variable_name_not_a_key():
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        yaml_section(LLMConfig, api_key_env=SECRET)
    assert SECRET not in str(err.value)
    assert yaml_section(LLMConfig, api_key_env="MY_LLM_KEY").api_key_env == "MY_LLM_KEY"


# --------------------------------------------------------------------------------------------
# Unknown keys
# --------------------------------------------------------------------------------------------
def test_typo_is_refused_naming_the_key_its_source_and_the_closest(tmp_path):
    with pytest.raises(UnknownKeyError) as err:
        tiny_config(cmd_args=["--learning_rat=0.1"])
    message = str(err.value)
    assert "`learning_rat` (command line): did you mean `learning_rate`" in message
    assert "--allow_unknown_keys=True" in message

    with pytest.raises(UnknownKeyError, match=r"`train_bach_size` \(config_dict\).*`train_batch"):
        tiny_config(config_dict={"train_bach_size": 64})
    user_yaml = tmp_path / "mine.yaml"
    user_yaml.write_text("stoping_step: 3\n")
    with pytest.raises(UnknownKeyError, match=rf"`stoping_step` \(config file {user_yaml}\)"):
        tiny_config(files=[str(user_yaml)])


def test_allow_unknown_keys_keeps_them():
    config = tiny_config(cmd_args=["--allow_unknown_keys=True", "--learning_rat=0.1"])
    assert config["learning_rat"] == 0.1
    assert config["learning_rate"] == tiny_config()["learning_rate"]  # the typo changed nothing
    with pytest.raises(ValueError, match="allow_unknown_keys takes True or False"):
        tiny_config(cmd_args=["--allow_unknown_keys=yes", "--learning_rat=0.1"])


def test_keys_a_model_reads_without_a_yaml_are_known_for_that_model_only():
    # FEARec reads config["tau"] in its code; its yaml, RecBole's defaults and ours lack it
    assert "tau" not in Config("FEARec", "ml-100k").final_config_dict
    assert tiny_config("FEARec", cmd_args=["--tau=2.0"])["tau"] == 2.0
    with pytest.raises(UnknownKeyError, match="`tau`"):  # SASRec reads no tau
        tiny_config("SASRec", cmd_args=["--tau=2.0"])
    # a key of another model's yaml is not SASRec's either
    with pytest.raises(UnknownKeyError, match="`n_factors`"):
        tiny_config("SASRec", cmd_args=["--n_factors=4"])
    # RecBole's data code reads token_num_threshold (its yaml misspells it token_num_threhold)
    assert tiny_config(cmd_args=["--token_num_threshold=5"])["token_num_threshold"] == 5
    # every protocol's keys are known, applied or not (LR-Recsys subset keys for any model)
    assert tiny_config("DeepFM", {"eval_protocol": "ctr", "lrrecsys_max_users": 4})


def test_no_model_of_the_sweep_is_refused():
    """benchmarks/model_sweep.py's 82 RecBole models with the sweep's own arguments, and ours:
    Config creation runs the key checks (no training here; benchmarks/config_keys_check.py also
    builds each model and checks every key its code looks up)."""
    from model_sweep import EXTRA_ARGS, recbole_models

    models = recbole_models()
    assert len(models) == 82
    for kind, model in models:
        args = [*EXTRA_ARGS.get(kind, []), *EXTRA_ARGS.get(model, [])]
        assert tiny_config(model, cmd_args=args)["model"] == model
    for model in ("AutoDisenSeq", "ExpCTR", "LRRecsys", "TALLRec"):
        assert tiny_config(model)["model"] == model


def test_known_keys_come_from_the_sources():
    # a preset yaml's keys and the shared code's reads are known without any list in the code
    assert any(p.name == "seq_pop100.yaml" for p in preset_yamls())
    names = {p.name for p in shared_sources()}
    assert {"configurator.py", "quick_start.py", "dataset.py"} <= names
    assert "sasrec.py" not in names  # a model's file counts for that model only


def test_cli_typo_stops_before_data_loads(tiny_cli, workdir, no_data_load):
    out = workdir / "out.json"
    with pytest.raises(UnknownKeyError, match="`learning_rat` .*did you mean `learning_rate`"):
        run_recbole_ext.main(["--model=Pop", *tiny_cli, "--learning_rat=0.1", f"--output={out}"])
    assert not out.exists() and not (workdir / "log").exists()


@pytest.mark.parametrize(
    "arg,message",
    [
        ("--epochs=-1", "epochs=-1: a number of epochs is a whole number ≥ 0"),
        ("--epochs=2.5", "epochs=2.5: a number of epochs is a whole number ≥ 0"),
        ("--learning_rate=fast", "learning_rate='fast' is text: it takes a number, like its"),
        ("--reproducibility=yes", "reproducibility='yes' is text: it takes True or False"),
        ("--reproducibility=1", "reproducibility=1 is a whole number: it takes True or False"),
    ],
)
def test_cli_value_of_the_wrong_kind_stops_before_data_loads(
    arg, message, tiny_cli, workdir, no_data_load
):
    # where the packaged default is True/False or a number, text (a misspelling, `two`) is
    # refused before the data loads, instead of a TypeError deep in a trainer
    with pytest.raises(ConfigError, match=re.escape(f"command line: {message}")):
        run_recbole_ext.main(["--model=Pop", *tiny_cli, arg])
    assert not (workdir / "log").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--model=AutoDisenSeq", "--intent_similarity=cosin"],
            "intent_similarity='cosin': choose one of ('cosine', 'dot') (did you mean 'cosine'?)",
        ),
        (  # a trainer's option
            ["--model=AutoDisenSeq", "--finetune_windows=prefix"],
            "finetune_windows='prefix': choose one of ('prefixes', 'last') (did you mean "
            "'prefixes'?)",
        ),
        (
            ["--model=LRRecsys", "--lrrecsys_task=regresion"],
            "lrrecsys_task='regresion': choose one of ('classification', 'regression') (did you "
            "mean 'regression'?)",
        ),
        (
            ["--model=AutoDisenSeq", "--pre_model_path=saved/nosuch.pth"],
            "pre_model_path='saved/nosuch.pth': no such file",
        ),
    ],
)
def test_cli_option_outside_its_choices_stops_before_data_loads(
    args, message, tiny_cli, workdir, no_data_load
):
    # the model's and trainer's option_choices are checked by Config, not after loading
    with pytest.raises(ConfigError, match=re.escape(f"command line: {message}")):
        run_recbole_ext.main([*args, *tiny_cli])
    assert not (workdir / "log").exists()


def test_cli_override_without_a_value_is_a_usage_error(tiny_cli, workdir, capfd):
    with pytest.raises(SystemExit):
        run_recbole_ext.main(["--model=Pop", *tiny_cli, "--epochs"])
    assert "override `--epochs` has no value" in capfd.readouterr().err


def test_benchmark_exits_non_zero_when_a_run_failed(tiny_cli, workdir, monkeypatch, capfd):
    # the CLI checks every row's keys first; skipped here, each run refuses in its own process
    monkeypatch.setattr(run_recbole_ext, "check_benchmark_keys", lambda spec: None)
    bench = workdir / "bench"
    cli = ["--benchmark", "--models=Pop", "--seeds=1", f"--output={bench}", *tiny_cli]
    with pytest.raises(SystemExit, match=r"1 run\(s\) failed this time: see .*errors.jsonl"):
        run_recbole_ext.main([*cli, "--epochs=-1"])
    assert "results in" in capfd.readouterr().out  # the tables are still written first


def test_values_of_the_right_kind_and_tilde_pass(workdir):
    config = tiny_config(
        "AutoDisenSeq",
        cmd_args=["--pretrain_clip_grad_norm=~", "--learning_rate=1", "--epochs=0"],
        config_dict={"inference_chunk": 8, "disentangle": False},
    )
    # `~` is None on the command line too (the yaml's and the docs' way of writing it)
    assert config["pretrain_clip_grad_norm"] is None
    assert (config["learning_rate"], config["epochs"], config["inference_chunk"]) == (1, 0, 8)
    assert value_type_problem("gpu_id", 3, "0") is None  # a text default: any value
    assert value_type_problem("topk", 10, [10]) is None  # a list default: RecBole widens an int


def test_api_typo_stops_before_data_loads(workdir, no_data_load):
    with pytest.raises(UnknownKeyError, match=r"`epoch` \(config_dict\): did you mean `epochs`"):
        quick_start.run("Pop", "tiny", [str(TINY_YAML)], {"data_path": str(TINY_DATA), "epoch": 2})


def test_benchmark_and_tune_typos_stop_before_any_run(tiny_cli, workdir):
    import ray

    bench = workdir / "bench"
    with pytest.raises(UnknownKeyError, match="`hiden_size`"):
        run_recbole_ext.main(
            ["--benchmark", "--models=SASRec,Pop", "--seeds=1", f"--output={bench}", *tiny_cli]
            + ["--hiden_size=8"]
        )
    assert not bench.exists()
    with pytest.raises(UnknownKeyError, match="`learning_rat`"):
        run_recbole_ext.main(
            ["--tune", "--model=SASRec", f"--search_space={TESTS_DIR / 'data/tune_space.yaml'}"]
            + ["--num_samples=1", f"--output={workdir / 'tune'}", *tiny_cli, "--learning_rat=1"]
        )
    assert not ray.is_initialized() and not (workdir / "tune").exists()


# --------------------------------------------------------------------------------------------
# Credentials: refused, and written nowhere
# --------------------------------------------------------------------------------------------
def test_env_secret_reaches_no_file_while_a_config_value_reaches_every_one(tiny_cli, workdir):
    """The documented way (the environment) leaks nowhere. Control: a harmless config value in
    the same run is found in all five places the issue lists, so the search would find a leak.
    A subprocess, as a user runs it (pytest's log capture would keep RecBole's log file away)."""
    probe = f"probe-{uuid.uuid4().hex}"
    done = subprocess.run(
        [sys.executable, str(REPO_DIR / "run_recbole_ext.py"), "--model=Pop", *tiny_cli]
        + ["--output=out.json", "--state=INFO", "--allow_unknown_keys=True"]
        + [f"--leak_probe={probe}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OPENAI_API_KEY": SECRET},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    holding_probe = files_holding(workdir, probe)
    for place in ("log/Pop/", "log_tensorboard/", "saved/", "out.json"):
        assert any(f.startswith(place) for f in holding_probe), (place, holding_probe)
    assert probe in done.stdout + done.stderr  # the console
    assert files_holding(workdir, SECRET) == [] and SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "args, names",
    [
        ([f"--llm_api_key={SECRET}"], "`llm_api_key` looks like a credential"),
        (["--llm_api_key", SECRET], "`llm_api_key` looks like a credential"),
        ([f"--hf_token={SECRET}"], "`hf_token` looks like a credential"),
        ([f"--llm_api_key_env={SECRET}"], "`llm_api_key_env` takes the NAME"),
        ([f"--llm_base_url=https://me:{SECRET}@llm.example/v1"], "URL with a password"),
        (["--allow_unknown_keys=True", f"--api_key={SECRET}"], "`api_key` looks like"),
    ],
)
def test_cli_secret_is_refused_and_written_nowhere(args, names, tiny_cli, workdir, capfd):
    out = workdir / "out.json"
    with pytest.raises(CredentialError) as err:
        run_recbole_ext.main(["--model=Pop", *tiny_cli, f"--output={out}", *args])
    message = str(err.value)
    assert names in message and "export OPENAI_API_KEY=" in message
    assert "llm_api_key_env" in message
    assert SECRET not in message and SECRET not in "".join(capfd.readouterr())
    assert files_holding(workdir, SECRET) == [] and not out.exists()


def test_secret_in_a_yaml_file_is_refused_naming_the_file(tiny_cli, workdir, tmp_path_factory):
    secret_yaml = tmp_path_factory.mktemp("input") / "keys.yaml"
    secret_yaml.write_text(f"openai_api_key: {SECRET}\n")
    args = [a for a in tiny_cli if not a.startswith("--config_files")]
    with pytest.raises(CredentialError, match=f"config file {secret_yaml}: `openai_api_key`") as e:
        run_recbole_ext.main(["--model=Pop", *args, f"--config_files={TINY_YAML},{secret_yaml}"])
    assert SECRET not in str(e.value) and files_holding(workdir, SECRET) == []


def test_api_secret_is_refused(workdir, no_data_load):
    for config_dict in ({"llm_api_key": SECRET}, {"eval_args": {"auth_token": SECRET}}):
        with pytest.raises(CredentialError, match="llm_api_key_env") as err:
            quick_start.run(
                "Pop", "tiny", [str(TINY_YAML)], {"data_path": str(TINY_DATA), **config_dict}
            )
        assert SECRET not in str(err.value)
    with pytest.raises(CredentialError):
        tiny_config(config_dict={"password": SECRET})
    assert files_holding(workdir, SECRET) == []


def test_benchmark_secret_is_refused_by_the_cli_and_by_every_run(tiny_cli, workdir, capfd):
    bench = workdir / "bench"
    cli = ["--benchmark", "--models=Pop", "--seeds=1", f"--output={bench}", *tiny_cli]
    with pytest.raises(CredentialError) as err:
        run_recbole_ext.main([*cli, f"--llm_api_key={SECRET}"])
    assert SECRET not in str(err.value) and not bench.exists()
    with pytest.raises(SystemExit):  # a space instead of "=": a usage error naming the key only
        run_recbole_ext.main([*cli, "--llm_api_key", SECRET])
    assert "`llm_api_key`" in capfd.readouterr().err

    # the Python API: each run refuses in its own process; its error row holds no secret
    spec = BenchmarkSpec(
        models=["Pop"],
        dataset="tiny",
        seeds=[2020],
        output=bench,
        config_files=[str(TINY_YAML)],
        overrides={"data_path": str(TINY_DATA), "llm_api_key": SECRET},
    )
    run_benchmark(spec)
    errors = [json.loads(line) for line in (bench / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and "CredentialError" in errors[0]["error"]
    assert files_holding(bench, SECRET) == [] and SECRET not in "".join(capfd.readouterr())


def test_tune_secret_is_refused_before_ray_and_env_secret_reaches_no_ray_file(
    tiny_cli, workdir, monkeypatch, capfd
):
    import ray

    space = SearchSpace.from_yaml(TESTS_DIR / "data" / "tune_space.yaml")
    base = {"model": "SASRec", "dataset": "tiny", "search_space": space, "num_samples": 1}
    files = {"config_files": [str(TINY_YAML)]}
    with pytest.raises(CredentialError) as err:
        run_tuning(
            TuneSpec(
                **base,
                **files,
                output=workdir / "t0",
                overrides={"data_path": str(TINY_DATA), "llm_api_key": SECRET},
            )
        )
    assert SECRET not in str(err.value) and not ray.is_initialized()

    # accepted way, one real trial: nothing under the output folder (Ray's results included)
    # holds the secret, while a harmless value does reach Ray's trial checkpoint
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    probe = f"probe-{uuid.uuid4().hex}"
    out = workdir / "tune"
    run_recbole_ext.main(
        ["--tune", "--model=SASRec", f"--search_space={TESTS_DIR / 'data/tune_space.yaml'}"]
        + ["--num_samples=1", f"--output={out}", *tiny_cli, "--epochs=2"]
        + ["--allow_unknown_keys=True", f"--leak_probe={probe}"]
    )
    assert any(f.startswith("ray_results/") for f in files_holding(out, probe))
    assert files_holding(out, SECRET) == [] and SECRET not in "".join(capfd.readouterr())
