"""Runs that survive a stop (recbole_ext/trainer/resume.py): a run stopped after its second epoch
and resumed ends with the metrics and weights of an uninterrupted run under the same seed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.trainer import S3RecTrainer
from recbole.trainer import Trainer as RecBoleTrainer

from recbole_ext.checkpoint import load_checkpoint
from recbole_ext.config import Config
from recbole_ext.quick_start import build, run
from recbole_ext.trainer import Trainer, with_safe_checkpoints
from recbole_ext.trainer.autodisenseq import AutoDisenSeqTrainer
from recbole_ext.trainer.expctr import ExpCTRTrainer
from recbole_ext.trainer.lrrecsys import LRRecsysTrainer
from recbole_ext.trainer.resume import (
    FIT_STATE,
    config_differences,
    resume_dir_for,
    rng_state,
    set_rng_state,
)
from tests.conftest import REPO_DIR, TINY_DATA, TINY_YAML

EPOCHS = 4
STOP_AT = 2  # the run is stopped once two epochs are complete


class Stop(Exception):
    """Stands for a crash or a closed session in the middle of epoch STOP_AT."""


def stop_in_epoch(epoch):
    def callback(epoch_idx, valid_score):
        if epoch_idx == epoch:  # epoch `epoch` trained and validated, its state not yet saved
            raise Stop

    return callback


def tiny(workdir, model="SASRec", **overrides):
    return {
        "model": model,
        "dataset": "tiny",
        "config_file_list": [str(TINY_YAML)],
        "config_dict": {
            "data_path": str(TINY_DATA),
            "checkpoint_dir": str(workdir / "saved"),
            "eval_protocol": "seq_pop100",  # fresh popularity negatives per evaluation: numpy RNG
            "epochs": EPOCHS,
            **overrides,
        },
    }


def weights(path):
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def comparable(result):
    return {k: result[k] for k in ("best_valid_score", "valid_result", "test_result")} | {
        "per_user": result["test_per_user_ndcg@10"]
    }


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted SASRec run (its output, result and folder), shared by the tests below."""
    folder = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # RecBole writes log/ to the working directory
        output = folder / "whole.json"
        return output, run(**tiny(folder), output=output), folder


def test_run_stopped_after_two_epochs_resumes_to_the_same_metrics_and_weights(workdir, whole):
    whole_output, whole_result, _ = whole
    assert whole_result["resumed_from_epoch"] is None
    resumed, output = stop_and_resume(workdir, "SASRec", {})
    assert comparable(resumed) == comparable(whole_result)
    assert json.loads(output.read_text())["test_result"] == whole_result["test_result"]
    # the best checkpoint (tested) and the last epoch's weights are the uninterrupted run's
    assert_same_weights(weights(resumed["model_file"]), weights(whole_result["model_file"]))
    final = load_checkpoint(resume_dir_for(output) / "fit.pth")
    final_whole = load_checkpoint(resume_dir_for(whole_output) / "fit.pth")
    assert final["finished"] and final["epoch"] == final_whole["epoch"] == EPOCHS
    assert_same_weights(final["state_dict"], final_whole["state_dict"])
    assert final["train_loss_dict"] == final_whole["train_loss_dict"]


def test_resume_restores_the_numpy_rng_of_sampled_training_negatives(workdir):
    """GRU4Rec with BPR draws a training negative per row from numpy's global RNG."""
    overrides = {"loss_type": "BPR"}
    whole_result = run(**tiny(workdir, "GRU4Rec", **overrides), output=workdir / "whole.json")
    resumed, _ = stop_and_resume(workdir, "GRU4Rec", overrides)
    assert comparable(resumed) == comparable(whole_result)
    assert_same_weights(weights(resumed["model_file"]), weights(whole_result["model_file"]))


def stop_and_resume(workdir, model, overrides):
    output = workdir / "stopped.json"
    with pytest.raises(Stop):
        run(**tiny(workdir, model, **overrides), output=output, callback_fn=stop_in_epoch(STOP_AT))
    assert not output.exists()
    state = load_checkpoint(resume_dir_for(output) / f"{FIT_STATE}.pth")
    assert (state["epoch"], state["finished"]) == (STOP_AT, False)
    assert sorted(state["train_loss_dict"]) == list(range(STOP_AT))
    resumed = run(**tiny(workdir, model, **overrides), output=output)
    assert resumed["resumed_from_epoch"] == STOP_AT
    return resumed, output


def test_finished_run_is_not_retrained_and_reports_the_same_result(whole, monkeypatch):
    output, first, folder = whole
    monkeypatch.chdir(folder)
    trained = []
    original = RecBoleTrainer._train_epoch
    monkeypatch.setattr(
        RecBoleTrainer,
        "_train_epoch",
        lambda self, *a, **k: trained.append(a[1]) or original(self, *a, **k),
    )
    again = run(**tiny(folder), output=output)
    assert trained == []  # no epoch trained again
    assert comparable(again) == comparable(first)
    assert again["model_file"] == first["model_file"] and again["resumed_from_epoch"] == EPOCHS
    # the saved run's training time (plus loading the state, minus the save after the last epoch)
    assert again["train_seconds"] == pytest.approx(first["train_seconds"], abs=1.0)


def test_state_of_another_configuration_is_refused_naming_the_keys(workdir):
    output = workdir / "stopped.json"
    with pytest.raises(Stop):
        run(**tiny(workdir, epochs=2), output=output, callback_fn=stop_in_epoch(1))
    with pytest.raises(ValueError, match=r"other settings \(learning_rate: 0.001 -> 0.01\)"):
        run(**tiny(workdir, epochs=2, learning_rate=0.01), output=output)
    with pytest.raises(ValueError, match="holds a SASRec model, not GRU4Rec"):
        run(**tiny(workdir, "GRU4Rec", epochs=2), output=output)
    # an option added to the package since the run started, at its default, is no difference
    path = resume_dir_for(output) / f"{FIT_STATE}.pth"
    state = load_checkpoint(path)
    assert state["config"].pop("eval_neg_sampling") == "distinct"  # a packaged default
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"eval_neg_sampling: \(unset\) -> \"recbole\""):
        run(**tiny(workdir, epochs=2, eval_neg_sampling="recbole"), output=output)  # user-set
    # runtime keys (progress bars, log level, checkpoint folder) may change between the two
    resumed = run(**tiny(workdir, epochs=2, show_progress=True, state="ERROR"), output=output)
    assert resumed["resumed_from_epoch"] == 1


def test_run_without_output_keeps_no_state(workdir):
    result = run(**tiny(workdir, epochs=1))
    assert result["resumed_from_epoch"] is None
    assert not list(workdir.glob("*.resume"))


def test_run_killed_after_epoch_two_resumes_from_its_saved_state(workdir, whole):
    """A real SIGKILL (no Python cleanup) once the state of two complete epochs is on disk."""
    output = workdir / "killed.json"
    script = textwrap.dedent(
        f"""
        import sys, time
        import torch
        torch.set_num_threads(1)
        from recbole_ext.quick_start import run

        def hold(epoch_idx, valid_score):
            if epoch_idx == {STOP_AT}:  # the state of epochs 0..{STOP_AT - 1} is saved by now
                print("READY", flush=True)
                time.sleep(600)

        run(**{tiny(workdir)!r}, output={str(output)!r}, callback_fn=hold)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=workdir, env=env, text=True
    )
    try:
        assert process.stdout.readline().strip() == "READY"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL and not output.exists()

    state = load_checkpoint(resume_dir_for(output) / f"{FIT_STATE}.pth")
    assert (state["epoch"], state["finished"]) == (STOP_AT, False)
    resumed = run(**tiny(workdir), output=output)
    assert resumed["resumed_from_epoch"] == STOP_AT
    assert comparable(resumed) == comparable(whole[1])
    assert_same_weights(weights(resumed["model_file"]), weights(whole[1]["model_file"]))


def test_named_resume_points_restore_weights_optimiser_and_random_states(workdir):
    """The API a staged trainer (AutoDisenSeq's pre-train -> search -> fine-tune) builds on."""
    spec = tiny(workdir)
    config = Config(spec["model"], spec["dataset"], spec["config_file_list"], spec["config_dict"])
    _, model, train_data, _, _ = build(config)
    trainer = Trainer(config, model)
    trainer.enable_resume(workdir / "state")
    trainer._train_epoch(train_data, 0)  # outside fit: a stage of the trainer's own
    trainer.save_resume_point("pretrain", train_data=train_data, arch=[2, 0, 1])
    after_save = (np.random.rand(3), torch.rand(3), [b["item_id"][:3] for b in train_data][0])
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer_step = trainer.optimizer.state_dict()["state"][0]["step"].item()
    trainer._train_epoch(train_data, 1)  # moves weights, optimiser and every RNG on

    _, fresh_model, fresh_data, _, _ = build(config)
    fresh = Trainer(config, fresh_model)
    fresh.enable_resume(workdir / "state")
    assert fresh.load_resume_point("search") is None  # never saved: run that stage
    state = fresh.load_resume_point("pretrain", train_data=fresh_data)
    assert state["extra"] == fresh.resume_point_extra == {"arch": [2, 0, 1]}
    assert_same_weights(fresh_model.state_dict(), expected)
    assert fresh.optimizer.state_dict()["state"][0]["step"].item() == optimizer_step
    again = (np.random.rand(3), torch.rand(3), [b["item_id"][:3] for b in fresh_data][0])
    assert np.array_equal(again[0], after_save[0]) and torch.equal(again[1], after_save[1])
    assert torch.equal(again[2], after_save[2])  # same shuffle order: dataloader generator


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    generator = torch.Generator().manual_seed(3)
    torch.save(rng_state([generator]), tmp_path / "rng.pth")
    expected = (np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True), [generator])
    assert np.random.rand() == expected[0]
    assert torch.equal(torch.rand(2), expected[1])
    assert torch.equal(torch.rand(2, generator=generator), expected[2])
    with pytest.raises(ValueError, match="holds 1 dataloader random generators"):
        set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True), [])


def test_which_trainers_resume_epochs():
    # RecBole's own fit loop: resumable; a trainer with stages of its own: opted out until it
    # declares epoch_resume = True (and makes its stages resumable with named resume points)
    class Staged(Trainer):
        def fit(self, *args, **kwargs):
            return super().fit(*args, **kwargs)

    class Declared(Staged):
        epoch_resume = True

    class Hooked(Trainer):  # stages before RecBole's loop, in the base fit's hook
        def _before_fit(self, train_data, valid_data, verbose, show_progress):
            pass

    class HookedDeclared(Hooked):
        epoch_resume = True

    assert Trainer.allows_epoch_resume()
    assert not with_safe_checkpoints(S3RecTrainer).allows_epoch_resume()
    for staged in (Staged, Hooked, LRRecsysTrainer, ExpCTRTrainer):
        assert not staged.allows_epoch_resume(), staged
    for declared in (Declared, HookedDeclared, AutoDisenSeqTrainer):
        assert declared.allows_epoch_resume(), declared


def test_fit_runs_the_stage_hook_once_before_recbole_loop(workdir):
    spec = tiny(workdir, epochs=2)
    config = Config(spec["model"], spec["dataset"], spec["config_file_list"], spec["config_dict"])
    _, model, train_data, valid_data, _ = build(config)
    calls = []

    class Hooked(Trainer):
        def _before_fit(self, *args):
            calls.append(("before_fit", args))

        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            calls.append(("epoch", epoch_idx))
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)

    Hooked(config, model).fit(train_data, valid_data, verbose=False, saved=False)
    assert calls == [
        ("before_fit", (train_data, valid_data, False, False)),
        ("epoch", 0),
        ("epoch", 1),
    ]


def test_config_differences_name_each_key():
    assert config_differences({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 3]}) == [
        "b: [1, 2] -> [1, 3]"
    ]
    assert config_differences({"x": float("nan")}, {"x": float("nan")}) == []


def test_resume_dir_sits_beside_the_output():
    assert resume_dir_for(Path("a/b.json")) == Path("a/b.json.resume")
