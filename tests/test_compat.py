"""RecBole-stack fixes: folders created by parallel runs (the ``FileExistsError: './log'`` race)."""

import multiprocessing
import os

from recbole.utils import ensure_dir, init_logger

from recbole_ext.config import Config
from tests.conftest import TINY_DATA, TINY_YAML

ROUNDS, PROCESSES = 40, 8  # unpatched, 8 forked processes race ~7 times in 30 rounds (measured)


def _start_a_run(barrier, config, folder, errors):
    """What every run does first: RecBole's logger (log/, log/<model>) and checkpoint folder."""
    os.chdir(folder)
    barrier.wait()  # all processes reach the check-then-create at the same moment
    try:
        init_logger(config)
        ensure_dir(config["checkpoint_dir"])
    except Exception as error:  # noqa: BLE001 - reported to the parent
        errors.put(repr(error))
    else:
        errors.put(None)


def test_parallel_runs_create_recbole_folders_without_racing(tmp_path):
    # building a Config applies the fix (every entry point builds one before any folder exists)
    config = Config("Pop", "tiny", [str(TINY_YAML)], {"data_path": str(TINY_DATA)})
    assert config["checkpoint_dir"] == "saved"  # relative: each run creates it in its cwd
    context = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(ROUNDS):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        barrier, errors = context.Barrier(PROCESSES), context.Queue()
        workers = [
            context.Process(target=_start_a_run, args=(barrier, config, folder, errors))
            for _ in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        failures += [e for e in (errors.get(timeout=60) for _ in workers) if e is not None]
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        assert (folder / "log" / "Pop").is_dir() and (folder / "saved").is_dir()
    assert failures == []
