"""Config layering, precedence, dataset resolution and RecBole compatibility fixes."""

import sys

import numpy as np
import pytest

from recbole_ext.compat import apply_numpy_compatibility, apply_scipy_compatibility
from recbole_ext.config import (
    RECBOLE_EXAMPLE_DIR,
    Config,
    DatasetNotFoundError,
    resolve_data_path,
)
from tests.conftest import TINY_DATA, TINY_YAML


def tiny_config(model="SASRec", files=(), config_dict=None, cmd_args=None):
    config_dict = {"data_path": str(TINY_DATA), **(config_dict or {})}
    return Config(model, "tiny", [str(TINY_YAML), *files], config_dict, cmd_args)


def test_layers_our_yaml_over_recbole_defaults():
    config = Config("SASRec", "ml-100k")
    assert config["show_progress"] is False  # ours (RecBole: True)
    assert config["n_layers"] == 2  # RecBole's SASRec.yaml still applies
    # our ml-100k.yaml keeps the item text fields loadable for the LLM features
    assert config["load_col"]["item"] == ["item_id", "movie_title", "release_year", "class"]


def test_precedence_file_then_dict_then_cmd(tmp_path):
    user_yaml = tmp_path / "user.yaml"
    user_yaml.write_text("learning_rate: 0.1\nhidden_size: 32\nn_heads: 4\n")
    config = tiny_config(
        files=[str(user_yaml)],
        config_dict={"hidden_size": 16, "n_heads": 8},
        cmd_args=["--n_heads=2"],
    )
    assert config["learning_rate"] == 0.1  # file beats defaults
    assert config["hidden_size"] == 16  # dict beats file
    assert config["n_heads"] == 2  # command line beats dict


def test_protocol_presets():
    seq = tiny_config(cmd_args=["--eval_protocol=seq_pop100"])
    assert seq["eval_args"]["mode"] == {"valid": "pop100", "test": "pop100"}
    assert seq["eval_args"]["order"] == "TO" and seq["topk"] == [1, 5, 10]
    ctr = tiny_config("DeepFM", config_dict={"eval_protocol": "ctr"})
    assert ctr["threshold"] == {"rating": 4}
    assert ctr["metrics"] == ["AUC", "LogLoss", "MAE", "RMSE"]
    # a user override still beats the preset
    assert tiny_config(cmd_args=["--eval_protocol=seq_pop100", "--topk=[10]"])["topk"] == [10]


def test_unknown_protocol_is_named():
    with pytest.raises(ValueError, match="eval_protocol='pop1000' is unknown.*seq_pop100"):
        tiny_config(cmd_args=["--eval_protocol=pop1000"])


def test_a_preset_for_another_model_is_refused_naming_the_model_and_the_fix():
    # --model=SASRec --preset=autodisenseq_authors: its keys are declared, so the key check would
    # pass them, and SASRec would silently train without the recipe asked for
    for preset in ("autodisenseq_authors", "quick"):
        with pytest.raises(ValueError) as err:
            tiny_config("SASRec", cmd_args=[f"--preset={preset}"])
        message = str(err.value)
        assert f"preset='{preset}' is a recipe for AutoDisenSeq" in message
        assert "model='SASRec'" in message and "pretrain_epochs" in message
        assert "--model=AutoDisenSeq" in message
    config = tiny_config("AutoDisenSeq", cmd_args=["--preset=autodisenseq_authors"])
    assert config["pretrain_steps_per_batch"] == 16 and config["finetune_loss"] == "bce"
    assert "preset_models" not in config.final_config_dict  # the preset's, not a run option


def test_ce_sequential_models_need_no_training_negatives():
    # RecBole 1.2.1 raises for its own SASRec defaults; we drop the negatives for CE
    assert tiny_config("SASRec")["train_neg_sample_args"]["distribution"] == "none"
    bpr = tiny_config("SASRec", cmd_args=["--loss_type=BPR"])
    assert bpr["train_neg_sample_args"]["sample_num"] == 1


def test_sys_argv_is_not_read(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--epochs=99", "-k", "x"])
    assert tiny_config()["epochs"] == 1


def test_malformed_cmd_arg_is_rejected():
    with pytest.raises(ValueError, match="--key=value"):
        tiny_config(cmd_args=["--epochs"])


def test_ml100k_resolves_offline_to_the_shipped_copy(tmp_path):
    expected = str(RECBOLE_EXAMPLE_DIR / "ml-100k")
    assert Config("SASRec", "ml-100k", config_dict={"data_path": str(tmp_path)})["data_path"] == (
        expected
    )
    own = tmp_path / "ml-100k"
    own.mkdir()
    (own / "ml-100k.inter").write_text("user_id:token\titem_id:token\n")
    assert resolve_data_path("ml-100k", str(tmp_path)) == str(own)


def test_unknown_dataset_fails_fast_with_where_to_put_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        Config("SASRec", "amazon-books", config_dict={"data_path": str(tmp_path)})
    message = str(err.value)
    assert str(tmp_path / "amazon-books" / "amazon-books.inter") in message
    assert "never downloads" in message


def test_numpy_compatibility_aliases():
    apply_numpy_compatibility()
    assert np.bool8 is np.bool_ and np.float is np.float64 and np.long is np.int_
    assert np.bool_ is not None  # untouched originals stay


def test_scipy_dok_update_restored_for_graph_models():
    import scipy.sparse as sp

    apply_scipy_compatibility()
    matrix = sp.dok_matrix((3, 3), dtype=np.float32)
    matrix._update({(0, 1): 1.0, (2, 0): 2.0})  # as LightGCN builds its adjacency matrix
    np.testing.assert_array_equal(matrix.toarray()[[0, 2], [1, 0]], [1.0, 2.0])
    assert matrix.nnz == 2


def test_context_model_without_label_gets_a_clear_error():
    with pytest.raises(ValueError, match="DeepFM is a context-aware.*--eval_protocol=ctr"):
        tiny_config("DeepFM")
    assert tiny_config("DeepFM", cmd_args=["--eval_protocol=ctr"])["threshold"] == {"rating": 4}


def test_lrrecsys_preset_is_the_committed_tables_setting():
    # --preset=lrrecsys_40users must stay the `config:` of the LR-Recsys suites (the committed
    # tables and store), and is refused for the baselines
    import yaml

    from tests.conftest import REPO_DIR

    preset = yaml.safe_load((REPO_DIR / "properties/preset/lrrecsys_40users.yaml").read_text())
    for table in ("table2", "ablation", "efficiency"):
        suite = yaml.safe_load((REPO_DIR / f"properties/benchmark/lrrecsys_{table}.yaml").open())
        run_keys = ("show_progress", "learning_rate")  # the harness's, per suite (grid or C.1)
        shared = {k: v for k, v in suite["config"].items() if k not in run_keys}
        assert {k: preset[k] for k in shared} == shared, table
    config = Config("LRRecsys", "ml-100k", config_dict={"preset": "lrrecsys_40users"})
    assert config["lrrecsys_max_users"] == 40 and config["time_order"] == "recbole"
    with pytest.raises(ValueError, match="recipe for LRRecsys"):
        Config("DeepFM", "ml-100k", config_dict={"preset": "lrrecsys_40users"})
