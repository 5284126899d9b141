"""Stopping ``--benchmark``: SIGTERM/SIGINT on the harness ends its worker processes too, and
the same command then resumes the stopped run from its last saved epoch."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from recbole_ext.benchmark import BenchmarkSpec, resume_dir_of, run_benchmark
from recbole_ext.checkpoint import load_checkpoint
from tests.conftest import REPO_DIR, TINY_DATA, TINY_YAML

EPOCHS = 4
TINY = [f"--config_files={TINY_YAML}", f"--data_path={TINY_DATA}", "--dataset=tiny"]
SETTINGS = ["--eval_protocol=seq_pop100", f"--epochs={EPOCHS}", "--stopping_step=100"]


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_and_stop(workdir, signum):
    """Start the benchmark CLI, send ``signum`` once its run has saved the state of an epoch;
    returns the harness's exit code, its workers and the saved epoch."""
    command = [sys.executable, str(REPO_DIR / "run_recbole_ext.py"), "--benchmark"]
    command += ["--models=SASRec", "--seeds=2020", f"--output={workdir / 'bench'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR), "OMP_NUM_THREADS": "1"}
    stderr = (workdir / "harness.stderr").open("w")
    harness = subprocess.Popen([*command, *TINY, *SETTINGS], cwd=workdir, env=env, stderr=stderr)
    spec = BenchmarkSpec(models=["SASRec"], seeds=[2020], output=workdir / "bench")
    state_file = resume_dir_of(spec, "SASRec", 2020) / "fit.pth"
    deadline = time.monotonic() + 300
    while not state_file.is_file():  # the state of epoch 0 is written when epoch 1 starts
        assert time.monotonic() < deadline and harness.poll() is None
        time.sleep(0.05)
    workers = psutil.Process(harness.pid).children(recursive=True)
    assert workers  # the run is in a worker process
    harness.send_signal(signum)
    harness.wait(timeout=120)
    stderr.close()
    errors = (workdir / "harness.stderr").read_text()
    assert "Traceback" not in errors, errors  # a stop is an expected end: no exception printed
    return harness.returncode, workers, load_checkpoint(state_file)["epoch"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_harness_stops_its_workers(workdir, signum):
    returncode, workers, _ = start_and_stop(workdir, signum)
    try:
        deadline = time.monotonic() + 10  # multiprocessing's resource tracker exits on its own
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w.cmdline() for w in workers if alive(w)]  # none left running (nor zombies)
        assert returncode == 128 + signum
    finally:  # a failing harness must not leave its worker training
        for worker in workers:
            if alive(worker):
                worker.kill()


def test_stopped_benchmark_resumes_its_run_to_the_uninterrupted_numbers(workdir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers' torch threads, as the first run's
    returncode, _, saved_epoch = start_and_stop(workdir, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM
    assert not (workdir / "bench" / "results.jsonl").exists()
    assert 1 <= saved_epoch < EPOCHS

    import run_recbole_ext

    args = ["--benchmark", "--models=SASRec", "--seeds=2020", *TINY, *SETTINGS]
    run_recbole_ext.main([*args, f"--output={workdir / 'bench'}"])
    (resumed,) = map(json.loads, (workdir / "bench" / "results.jsonl").read_text().splitlines())
    assert resumed["resumed_from_epoch"] == saved_epoch
    assert not any((workdir / "bench" / "resume").iterdir())  # dropped once the row is written

    run_recbole_ext.main([*args, f"--output={workdir / 'whole'}"])
    (whole,) = map(json.loads, (workdir / "whole" / "results.jsonl").read_text().splitlines())
    assert whole["resumed_from_epoch"] is None
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["test_per_user_ndcg@10"] == whole["test_per_user_ndcg@10"]
    assert resumed["valid_result"] == whole["valid_result"]


def test_run_benchmark_outside_the_main_thread_installs_no_handler(workdir):
    """Signal handlers exist only in the main thread; a harness called from a thread still runs."""
    import threading

    spec = BenchmarkSpec(
        models=["Pop"],
        seeds=[2020],
        dataset="tiny",
        output=workdir / "bench",
        config_files=[str(TINY_YAML)],
        overrides={"data_path": str(TINY_DATA)},
    )
    before = signal.getsignal(signal.SIGTERM)
    returned = []
    thread = threading.Thread(target=lambda: returned.append(run_benchmark(spec)))
    thread.start()
    thread.join(timeout=300)
    assert returned == [workdir / "bench"]  # it finished
    assert len((workdir / "bench" / "results.jsonl").read_text().splitlines()) == 1
    assert signal.getsignal(signal.SIGTERM) is before
