"""The main job as a person watches it: the run header and its duration estimate, named losses,
the module tree only at DEBUG, progress bars only on a terminal, the summary at the end, and the
quick preset's settings."""

import io
import logging

import pytest
import yaml

import recbole_ext.trainer.stages as stages_module
from recbole_ext.config import Config
from recbole_ext.quick_start import build, run
from recbole_ext.run_report import (
    IN_LOG_FILE_ONLY,
    describe_protocol,
    progress_setting,
    route_console,
)
from recbole_ext.trainer.resume import config_differences, config_fingerprint
from recbole_ext.trainer.stages import Stage, StageProgress
from tests.conftest import REPO_DIR, TINY_DATA, TINY_YAML


class Terminal(io.StringIO):
    """A stream that says it is a terminal (tqdm draws its bars there)."""

    def isatty(self):
        return True


def tiny_args(workdir, *extra):
    return [
        f"--data_path={TINY_DATA}",
        f"--checkpoint_dir={workdir / 'saved'}",
        "--state=INFO",
        "--n_layers=2",
        "--hidden_size=16",
        "--inner_size=32",
        *extra,
    ]


def messages(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def test_tiny_run_log_has_header_estimate_named_losses_and_summary(workdir, caplog, capsys):
    caplog.set_level(logging.INFO)
    args = tiny_args(
        workdir,
        "--pretrain_epochs=1",
        "--pretrain_windows=prefixes",  # 4 steps (the default random cuts: 1 on 40 users)
        "--search_population=3",
        "--search_generations=1",
        "--epochs=1",
        "--finetune_loss=bce",
        "--finetune_windows=last",
        "--finetune_negatives=5",
        "--show_progress=True",  # asked for, but stderr is pytest's capture: no bars
    )
    result = run("AutoDisenSeq", "tiny", [str(TINY_YAML)], cmd_args=args, output="out.json")
    logged = messages(caplog)
    header = next(m for m in logged if m.startswith("AutoDisenSeq on tiny:"))
    # tiny: 40 users, 577 items; 1,010 training prefixes -> 4 batches of 256; the last prefix of
    # each of the 40 users -> 1 batch; population 3 + 1 generation x 3 = 6 architectures;
    # pop100 test batches hold 256 // 101 = 2 users -> 20 batches
    assert header.splitlines()[0].startswith("AutoDisenSeq on tiny: 40 users, 577 items")
    assert "rows: train 1,010 / valid 40 / test 40" in header
    assert "protocol seq_pop100: leave-one-out split in time order" in header
    assert "settings given: " in header and "finetune_loss=bce" in header
    # the count is the supernet's (the search keeps fewer: num_parameters in the output)
    assert "trainable parameters (the supernet: every candidate operation" in header
    assert result["num_parameters"] < int(header.split("model: ")[1].split(" ")[0].replace(",", ""))
    stages = [line.strip() for line in header.splitlines() if line.startswith("  ")]
    assert stages == [
        "1. pre-training: 4 steps (1 epoch x 4 steps on every prefix; S2I + S2S)",
        "2. search: at most 6 architectures (population 3, 1 generation; NDCG@10 on 40 "
        "validation rows)",
        "3. fine-tuning: at most 1 step (1 epoch x 1 step on last prefixes; BCE; stops after "
        "6 epochs without a better NDCG@10 (stopping_step=5))",
        "4. test: 20 batches (40 rows)",
    ]
    assert "progress bars: off (stderr is not a terminal" in header
    assert "%|" not in capsys.readouterr().err  # no tqdm bar was drawn
    # the estimate comes after the first step (a fifth of 4 steps, at least 1), before the epoch
    first_estimate = next(i for i, m in enumerate(logged) if m.startswith("estimated duration"))
    pretrain_line = next(i for i, m in enumerate(logged) if "pre-training epoch 0 (of 1)" in m)
    assert first_estimate < pretrain_line
    assert logged[first_estimate].startswith("estimated duration (")
    assert "over the first 1 steps): pre-training " in logged[first_estimate]
    assert ", fine-tuning at most " in logged[first_estimate]
    assert logged[first_estimate].endswith("search, test: estimated when each starts")
    # named losses, means per step; no RecBole train_loss1/train_loss2
    assert "S2I " in logged[pretrain_line] and "S2S " in logged[pretrain_line]
    finetune_line = next(m for m in logged if "fine-tuning epoch 0 (of 1)" in m)
    assert "BCE " in finetune_line and "S2I" not in finetune_line
    assert not [m for m in logged if "train_loss" in m]
    # the summary: the result table with valid and test rows, each stage's time, the files
    summary = logged[-1]
    assert summary.startswith("results (the checkpoint of the best validation NDCG@10):")
    table = summary.splitlines()[1:4]
    assert table[0].split() == ["hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10"]
    assert table[1].split() == ["valid"] + [f"{result['valid_result'][k]:.4f}" for k in METRICS]
    assert table[2].split() == ["test"] + [f"{result['test_result'][k]:.4f}" for k in METRICS]
    assert "time: pre-training " in summary and ", search " in summary
    assert ", fine-tuning " in summary and ", test " in summary
    assert f"  checkpoint            {result['model_file']}" in summary
    assert ".arch.json" in summary and ".arch.png" in summary and "output" in summary
    assert list(result["stage_seconds"]) == ["pre-training", "search", "fine-tuning", "test"]
    # the resolved config goes to the log file only (the console filter drops it)
    config_record = next(r for r in caplog.records if "learning_rate" in r.getMessage())
    assert config_record.console is False


METRICS = ["hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10"]


def test_a_recbole_model_gets_the_training_stage_its_estimate_and_summary(workdir, caplog):
    caplog.set_level(logging.INFO)
    args = [f"--data_path={TINY_DATA}", f"--checkpoint_dir={workdir / 'saved'}", "--epochs=2"]
    result = run("SASRec", "tiny", [str(TINY_YAML)], cmd_args=args)
    logged = messages(caplog)
    header = next(m for m in logged if m.startswith("SASRec on tiny:"))
    # RecBole's own loop: 2 epochs x 4 batches of the 1,010 training prefixes (256 rows each)
    assert "  1. training: at most 8 steps (2 epochs x 4 steps; stops after 11 epochs " in header
    estimate = next(m for m in logged if m.startswith("estimated duration"))
    assert "over the first 1 steps): training at most " in estimate  # a fifth of 8 steps, >= 1
    assert estimate.endswith("; test: estimated when it starts")
    assert list(result["stage_seconds"]) == ["training", "test"]
    assert logged[-1].splitlines()[2].split()[0] == "valid"


def test_module_tree_only_at_debug(workdir, caplog):
    caplog.set_level(logging.DEBUG)
    config = Config(
        "AutoDisenSeq",
        "tiny",
        [str(TINY_YAML)],
        {"data_path": str(TINY_DATA), "n_layers": 2, "hidden_size": 16, "inner_size": 32},
    )
    _, model, *_ = build(config)
    tree = [r for r in caplog.records if r.getMessage() == str(model)]
    assert len(tree) == 1 and tree[0].levelno == logging.DEBUG
    assert "AttentionSupernet(" in tree[0].getMessage()
    assert not [m for m in messages(caplog, logging.INFO) if "AttentionSupernet(" in m]


def test_console_leaves_out_file_only_records_the_log_file_keeps_them(tmp_path, monkeypatch):
    console, log_file = io.StringIO(), tmp_path / "run.log"
    monkeypatch.setattr("sys.stderr", console)  # route_console knows the console by its stream
    logger = logging.getLogger("test_main_job.console")
    logger.propagate, logger.level = False, logging.INFO
    handlers = [logging.StreamHandler(console), logging.FileHandler(log_file)]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        assert route_console(logger) == str(log_file)
        assert route_console(logger) == str(log_file)  # once: no second filter
        assert len(handlers[0].filters) == 1 and not handlers[1].filters
        logger.info("config: learning_rate = 0.001", extra=IN_LOG_FILE_ONLY)
        logger.info("header")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
    assert console.getvalue() == "header\n"
    assert log_file.read_text() == "config: learning_rate = 0.001\nheader\n"


def test_progress_bars_only_on_a_terminal():
    assert progress_setting(True, Terminal()) == (True, "on")
    assert progress_setting(True, io.StringIO())[0] is False
    assert progress_setting(False, Terminal()) == (False, "off (--show_progress=False)")
    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        progress = StageProgress(logging.getLogger("x"), enabled=progress_setting(True, stream)[0])
        progress.stream = stream
        progress.start(Stage("pre-training", 3))
        progress.advance(3, {"S2I": "6.9"})
        progress.close()
        assert ("pre-training: 100%|" in stream.getvalue()) is drawn
        assert ("S2I=6.9" in stream.getvalue()) is drawn


def test_estimate_projects_the_first_stage_speed_onto_the_planned_training(monkeypatch, caplog):
    clock = iter([0.0, 5.0, 5.0, 5.0])  # start, then every reading after the 10th step
    monkeypatch.setattr(stages_module.time, "perf_counter", lambda: next(clock))
    caplog.set_level(logging.INFO)
    progress = StageProgress(logging.getLogger("x"))
    pretrain = Stage("pre-training", 300)
    progress.plan = [
        pretrain,
        Stage("search", 30, unit="arch", at_most=True),
        Stage("fine-tuning", 120, at_most=True),
        Stage("test", 20, unit="batch"),
    ]
    progress.start(pretrain)
    progress.advance(9)
    assert not caplog.records  # 10 steps are timed first
    progress.advance(1)
    # 0.5 s/step: 300 steps = 150 s, 120 steps = 60 s, together 210 s
    assert [r.getMessage() for r in caplog.records] == [
        "estimated duration (0.5 s/step over the first 10 steps): pre-training 2 min 30 s, "
        "fine-tuning at most 1 min 00 s; together at most 3 min 30 s; search, test: estimated "
        "when each starts"
    ]
    assert progress.remaining() == pytest.approx(0.5 * 290)


def test_quick_preset_layers_the_whole_pipeline_small():
    quick = Config("AutoDisenSeq", "ml-100k", config_dict={"preset": "quick"})
    assert (quick["pretrain_epochs"], quick["pretrain_windows"]) == (20, "random_cut")
    assert (quick["search_population"], quick["search_generations"]) == (10, 2)
    assert (quick["finetune_loss"], quick["finetune_windows"]) == ("bce", "prefixes")
    assert quick["epochs"] == 2
    assert quick["arch_search"] is True  # the search stays in: the whole pipeline
    default = Config("AutoDisenSeq", "ml-100k")
    for key in ("hidden_size", "n_layers", "n_intents", "lambda_s2s", "eval_args", "metrics"):
        assert quick[key] == default[key], key  # the model and the protocol are the paper's
    assert (default["pretrain_epochs"], default["finetune_windows"]) == (300, "prefixes")
    mine = Config("AutoDisenSeq", "ml-100k", config_dict={"preset": "quick", "epochs": 3})
    assert mine["epochs"] == 3  # the user's value wins over the preset's


def test_the_default_is_the_benchmarks_best_row_and_algorithm_1_keeps_its_settings():
    """The main job's defaults are the CPU suite's "fine-tuned on every prefix" row (the best
    recipe on validation, docs/autodisenseq.md), and the Algorithm 1 row spells out the settings
    it was trained with when they were the defaults, so a change of the model yaml cannot
    silently change either (resolved configs compared key by key)."""
    suite = yaml.safe_load(
        (REPO_DIR / "properties/benchmark/autodisenseq_ml100k_cpu.yaml").read_text()
    )
    rows = {row["name"]: row["config"] for row in suite["models"] if isinstance(row, dict)}

    def resolved(row_config):
        config = Config("AutoDisenSeq", "ml-100k", config_dict={**suite["config"], **row_config})
        return config_fingerprint(config)

    best = resolved(rows["AutoDisenSeq fine-tuned on every prefix (ours)"])
    assert config_differences(best, resolved({})) == ['preset: "autodisenseq_authors" -> (unset)']
    algorithm_1 = resolved(rows["AutoDisenSeq by Algorithm 1 (ours)"])
    expected = {  # the model yaml of 2026-11 (resume states of that row were saved with these)
        "finetune_loss": "seq2seq",
        "finetune_windows": "prefixes",
        "pretrain_epochs": 10,
        "pretrain_windows": "prefixes",
        "pretrain_steps_per_batch": 1,
        "pretrain_clip_grad_norm": None,
        "position_from": "oldest",
        "hidden_dropout_prob": 0.2,
        "attn_dropout_prob": 0.2,
        "epochs": 50,
        "stopping_step": 5,
    }
    assert {key: algorithm_1[key] for key in expected} == expected


def test_protocol_line_of_the_ctr_protocol():
    config = Config(
        "DeepFM", "tiny", [str(TINY_YAML)], {"data_path": str(TINY_DATA), "eval_protocol": "ctr"}
    )
    assert describe_protocol(config) == (
        "ctr: 0.8/0.1/0.1 split in random order, each labelled test row scored; AUC, LogLoss, "
        "MAE, RMSE; checkpoint chosen by AUC"
    )


def test_cli_prints_a_configuration_error_without_a_traceback(tmp_path):
    # a user's mistake (a preset of another model, a typo, a missing dataset) is one message
    # naming the fix, exit status 1; the Python API raises the exception itself (test_config.py)
    import subprocess
    import sys

    from tests.conftest import REPO_DIR

    cases = {
        "--preset=quick": "preset='quick' is a recipe for AutoDisenSeq",
        "--learning_rat=0.1": "did you mean `learning_rate`",
        "--dataset=nosuch": "dataset 'nosuch' has no local atomic files",
    }
    for arg, message in cases.items():
        done = subprocess.run(
            [sys.executable, str(REPO_DIR / "run_recbole_ext.py"), "--model=SASRec", arg],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1, (arg, done.stderr[-2000:])
        assert done.stderr.startswith("run_recbole_ext.py: error: "), done.stderr[-2000:]
        assert message in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "log").exists()  # stopped before RecBole started


def test_stopping_rule_states_when_recbole_stops():
    from recbole.utils import early_stopping

    from recbole_ext.trainer.stages import stopping_rule

    best, steps, without_better = 1.0, 0, 0
    for value in [1.0] + [0.5] * 20:  # the first evaluation sets the best, then none is better
        best, steps, stop, _ = early_stopping(value, best, steps, max_step=5)
        without_better += value < best
        if stop:
            break
    config = {"stopping_step": 5, "valid_metric": "NDCG@10", "eval_step": 1}
    assert stop and f"stops after {without_better} epochs" in stopping_rule(config)
