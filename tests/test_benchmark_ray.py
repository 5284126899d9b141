"""``--benchmark --ray_address=...``: each (model, seed) a Ray task on a real local Ray cluster,
rows in the same resumable ``results.jsonl``, relative paths made absolute before dispatch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from recbole_ext.benchmark import BenchmarkSpec, resume_dir_of, with_absolute_paths
from recbole_ext.checkpoint import load_checkpoint
from recbole_ext.quick_start import run
from tests.conftest import REPO_DIR, TINY_DATA, TINY_YAML


@pytest.fixture
def ray_cluster(tmp_path_factory):
    """A local Ray instance (2 CPUs) started in its own folder: its tasks run there, not in the
    driver's folder, as on another machine. Yields its address."""
    import ray

    if ray.is_initialized():  # e.g. left by the ASHA test in this process
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(REPO_DIR))  # the workers import this checkout
        patch.chdir(tmp_path_factory.mktemp("cluster"))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address, ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()


def relative_tiny(workdir):
    """The tiny dataset and its yaml under the driver's folder, named by relative paths."""
    shutil.copytree(TINY_DATA / "tiny", workdir / "data" / "tiny")
    shutil.copy(TINY_YAML, workdir / "tiny.yaml")
    return ["--dataset=tiny", "--config_files=tiny.yaml", "--data_path=data"]


def benchmark(workdir, address, *args):
    """The CLI in its own process (a second Ray driver), from ``workdir``."""
    command = [sys.executable, str(REPO_DIR / "run_recbole_ext.py"), "--benchmark", *args]
    command += [f"--ray_address={address}", "--cpus_per_run=1", "--output=bench"]
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def rows(workdir):
    lines = (workdir / "bench" / "results.jsonl").read_text().splitlines()
    return {(r["model"], r["seed"]): r for r in map(json.loads, lines)}


def test_benchmark_runs_as_ray_tasks_with_relative_paths_and_resumes(workdir, ray_cluster):
    address, node_id = ray_cluster
    tiny = [*relative_tiny(workdir), "--eval_protocol=seq_pop100", "--epochs=2"]
    out = benchmark(workdir, address, "--models=SASRec", "--seeds=2020", *tiny)
    assert "[1/1] SASRec seed=2020 done" in out
    first = rows(workdir)
    assert list(first) == [("SASRec", 2020)]
    assert first[("SASRec", 2020)]["ray_node_id"] == node_id  # ran on the cluster
    assert not (workdir / "bench" / "resume").exists() or not any(
        (workdir / "bench" / "resume").iterdir()
    )  # a written row's resume state is dropped

    # the same numbers as the run in this process (1 torch thread each, same seed and split)
    local = run(
        "SASRec",
        "tiny",
        [str(TINY_YAML)],
        {
            "data_path": str(TINY_DATA),
            "eval_protocol": "seq_pop100",
            "epochs": 2,
            "seed": 2020,
            "eval_candidates_file": str(workdir / "candidates.npz"),
            "checkpoint_dir": str(workdir / "saved"),
        },
    )
    assert first[("SASRec", 2020)]["test_result"] == local["test_result"]
    assert first[("SASRec", 2020)]["eval_candidates"] == local["eval_candidates"]

    # resume: a second model is added; the finished row is not rerun
    out = benchmark(workdir, address, "--models=SASRec,GRU4Rec", "--seeds=2020", *tiny)
    assert "[1/1] GRU4Rec seed=2020 done" in out and "SASRec seed=2020" not in out
    second = rows(workdir)
    assert second[("SASRec", 2020)] == first[("SASRec", 2020)]
    assert second[("GRU4Rec", 2020)]["eval_candidates"] == local["eval_candidates"]
    assert "| GRU4Rec |" in (workdir / "bench" / "table.md").read_text()


@pytest.mark.slow
def test_ray_task_whose_worker_is_killed_is_retried_and_resumes_its_epochs(workdir, ray_cluster):
    """SIGKILL of the task's worker process after two epochs: Ray runs it again, and the run
    continues from its saved epoch to the numbers of an uninterrupted run."""
    address, _ = ray_cluster
    tiny = [*relative_tiny(workdir), "--eval_protocol=seq_pop100", "--epochs=6"]
    tiny += ["--stopping_step=100"]
    command = [sys.executable, str(REPO_DIR / "run_recbole_ext.py"), "--benchmark"]
    command += ["--models=SASRec", "--seeds=2020", f"--ray_address={address}", "--output=bench"]
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    driver = subprocess.Popen(
        [*command, *tiny], cwd=workdir, env=env, stdout=subprocess.PIPE, text=True
    )
    spec = BenchmarkSpec(models=["SASRec"], seeds=[2020], output=workdir / "bench")
    state_file = resume_dir_of(spec, "SASRec", 2020) / "fit.pth"
    deadline = time.monotonic() + 300
    while not (state_file.is_file() and load_checkpoint(state_file)["epoch"] >= 2):
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    (task,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "ray::benchmark SASRec" in " ".join(p.info["cmdline"] or [])
    ]
    task.send_signal(signal.SIGKILL)
    killed_at = load_checkpoint(state_file)["epoch"]
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0 and "[1/1] SASRec seed=2020 done" in out
    row = rows(workdir)[("SASRec", 2020)]
    assert row["resumed_from_epoch"] == killed_at >= 2

    (workdir / "whole").mkdir()
    shutil.copytree(workdir / "data", workdir / "whole" / "data")
    shutil.copy(workdir / "tiny.yaml", workdir / "whole")
    benchmark(workdir / "whole", address, "--models=SASRec", "--seeds=2020", *tiny)
    whole = rows(workdir / "whole")[("SASRec", 2020)]
    assert whole["resumed_from_epoch"] is None
    assert row["test_result"] == whole["test_result"]
    assert row["test_per_user_ndcg@10"] == whole["test_per_user_ndcg@10"]


def test_relative_paths_of_the_spec_become_absolute(workdir):
    (workdir / "suite.yaml").write_text(
        yaml.safe_dump({"data_path": "data", "checkpoint_dir": "/abs/saved", "epochs": 3})
    )
    spec = BenchmarkSpec(
        models=["SASRec", "v"],
        output="bench",
        config_files=["suite.yaml"],
        overrides={"llm_store_path": "store.sqlite", "eval_protocol": "seq_pop100"},
        variants={"v": {"model": "SASRec", "config": {"arch": "arch.json", "n_layers": 1}}},
    )
    absolute = with_absolute_paths(spec)
    assert absolute.output == workdir / "bench"
    assert absolute.config_files == [str(workdir / "suite.yaml")]
    assert absolute.overrides == {
        "llm_store_path": str(workdir / "store.sqlite"),
        "eval_protocol": "seq_pop100",
        "data_path": str(workdir / "data"),  # relative inside a config file: lifted, absolute
    }
    assert absolute.variants["v"]["config"] == {"arch": str(workdir / "arch.json"), "n_layers": 1}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"cpus_per_run": 2}, "--cpus_per_run/--gpus_per_run size Ray tasks"),
        ({"ray_address": "auto", "workers": 2}, "--workers=2 sets local processes"),
        ({"ray_address": "auto", "cpus_per_run": 0}, "--cpus_per_run=0 must be > 0"),
        ({"ray_address": "auto", "gpus_per_run": -1}, "--gpus_per_run=-1 >= 0"),
    ],
)
def test_ray_options_are_checked(values, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkSpec(models=["SASRec"], **values)
