"""ExpCTRRun / StoredRun: the run's public API over its store and folder, and the results module
on the committed ml-100k store (Fig. 3 regenerates from it byte for byte)."""

import copy
import csv
import io
import json
import shutil

import pytest

from recbole_ext.expctr_results import (
    TRAJECTORY_FIELDS,
    reward_trajectory,
    table1_summary,
    trajectory_table,
    verified_resamples,
)
from recbole_ext.expctr_run import (
    ExpCTRRun,
    StageRecord,
    StoredRun,
    run_folder,
    stage_names,
)
from recbole_ext.llm.store import ResponseStore
from recbole_ext.quick_start import build
from tests.conftest import REPO_DIR
from tests.test_expctr import ORDER, _trainer, tiny_config, tiny_lm

RESULTS = REPO_DIR / "benchmarks" / "results" / "expctr"


def _committed_runs(tmp_path):
    """The Table-1 runs (seeds 2020-2022) over a copy of the committed store."""
    store = ResponseStore(shutil.copy(RESULTS / "expctr_store.sqlite", tmp_path / "s.sqlite"))
    results = [json.loads(p.read_text()) for p in sorted((RESULTS / "runs").glob("*.json"))]
    return [(r, StoredRun.of_model_file(store, r["model_file"])) for r in results]


def test_stage_records_read_and_write_the_committed_stores_json_unchanged(tmp_path):
    for _, run in _committed_runs(tmp_path):
        raw = dict(run.store.iter_records(run.kind("progress")))
        stages = run.stages()
        assert list(stages) == sorted(ORDER)  # every stage finished, in name order
        for name, record in stages.items():
            assert record.to_json() == raw[name]
        assert stages["stage1_lc"].epochs == 1 and len(stages["stage1_lc"].trajectory) == 6
        assert stages["iter0_stage2_ctr"].generator == "stage1_lc"
        assert run.final_generator() == "iter0_stage3_ic"
        assert len(run.rollout_texts("stage1_lc", 0)) == 48  # one per training pair
        assert len(run.stored_explanations("iter0_stage3_ic")) == 12  # valid + test pairs
    assert StageRecord("s", 1.5, generator="init").to_json() == {
        "seconds": 1.5,
        "generator": "init",
    }
    ppo = StageRecord("stage1_lc", epochs=0).to_json()
    assert ppo == {"epochs": 0, "trajectory": []}  # a PPO stage keeps its (empty) trajectory


def test_committed_fig3_csv_and_table_regenerate_from_the_store(tmp_path):
    rows = []
    for result, run in _committed_runs(tmp_path):
        rows += [{"seed": result["config"]["seed"], **r} for r in reward_trajectory(run)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["seed", *TRAJECTORY_FIELDS])
    writer.writeheader()
    writer.writerows(rows)
    committed = RESULTS / "reward_trajectory.csv"
    assert text.getvalue() == committed.read_bytes().decode()  # csv writes \r\n line ends
    assert trajectory_table(rows) == (RESULTS / "reward_trajectory.md").read_text().splitlines()


def test_names_kinds_and_folders():
    assert stage_names(2, False) == [
        "stage1_lc",
        "iter0_stage2_ctr",
        "iter0_stage3_ic",
        "iter1_stage2_ctr",
        "iter1_stage3_ic",
    ]
    assert run_folder("/a/expctr-k1/final_stage2_ctr/ctr.pth").as_posix() == "/a/expctr-k1"
    with pytest.raises(ValueError, match="not inside an expctr-<run key> folder"):
        run_folder("/a/saved/ctr.pth")
    with pytest.raises(ValueError, match="named expctr-<run key>"):
        StoredRun(None, "/a/saved")
    run = StoredRun(None, "/a/expctr-k1")
    assert (run.key, run.kind("gen", "init")) == ("k1", "expctr:k1:gen:init")
    assert run.generator_file("stage1_lc").as_posix() == "/a/expctr-k1/stage1_lc/generator.pt"


def test_table1_summary_marks_the_best_mean_per_metric():
    rows = {
        "A": {1: {"auc": 0.6, "logloss": 0.7, "mae": 0.4, "rmse": 0.5}},
        "B": {1: {"auc": 0.5, "logloss": 0.6, "mae": 0.5, "rmse": 0.4}},
    }
    summary, best = table1_summary(rows)
    assert best == {"auc": "A", "logloss": "B", "mae": "A", "rmse": "B"}
    assert summary["A"]["auc"] == {"mean": 0.6, "std": 0.0} and summary["B"]["seeds"] == [1]


def test_a_finished_run_reads_back_without_its_trainer(workdir):
    config = tiny_config(workdir)
    trainer, train, valid, test = _trainer(config)
    trainer.fit(train, valid)
    result = trainer.evaluate(test)

    base, tokenizer = tiny_lm()  # a new process: the run from its config, store and folder
    run = ExpCTRRun(config, lm=(copy.deepcopy(base), tokenizer))
    _, _, _, _, test = build(config)
    samples = run.samples(test)
    assert run.key == trainer.run.key and run.finished_stages() == ORDER
    assert run.last_generator() == run.final_generator() == "iter0_stage3_ic"
    assert set(run.stored_explanations("iter0_stage3_ic")) == {
        s.key for s in run.samples(valid) + samples
    }
    assert set(run.rollout_texts("stage1_lc", 0)) == {s.key for s in run.samples(train)}
    assert all(run.generator_file(stage).is_file() for stage in ORDER)
    with open(run.folder / "reward_trajectory.csv") as handle:  # the trainer's Fig. 3 file
        written = list(csv.DictReader(handle))
    assert written == [{k: str(v) for k, v in r.items()} for r in reward_trajectory(run)]

    resampled = verified_resamples(run, samples, result["llm_auc"], [0])
    assert resampled["labels"] == [s.label for s in samples] and len(resampled[0][0]) == 4
    with pytest.raises(ValueError, match="resampling with the run's own seed gives AUC"):
        verified_resamples(run, samples, result["llm_auc"] + 0.5, [0])
    with pytest.raises(FileNotFoundError, match="point checkpoint_dir at the run's"):
        run.resample(samples, "iter1_stage3_ic", 0)
    assert run.policy.generate_calls > 0  # the resamples were generated, not read
