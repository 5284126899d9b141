"""Plugin registry: recbole-ext first, then RecBole, with clear errors."""

import textwrap

import pytest
from recbole.data.dataset import SequentialDataset
from recbole.model.general_recommender import Pop
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import KGTrainer
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import ModelType

import recbole_ext.model.general_recommender as our_general
from recbole_ext import trainer as our_trainers
from recbole_ext.config import Config
from recbole_ext.config_checks import ConfigError
from recbole_ext.trainer import SafeCheckpointMixin
from recbole_ext.utils import create_dataset, get_model, get_trainer
from tests.conftest import TINY_DATA, TINY_YAML


@pytest.fixture
def plugin_model(tmp_path, monkeypatch):
    """A model file dropped into recbole_ext.model.general_recommender, as a new model would be."""
    (tmp_path / "pop.py").write_text(
        textwrap.dedent(
            """
            from recbole.model.general_recommender.pop import Pop as RecBolePop

            class Pop(RecBolePop):
                plugin = True
            """
        )
    )
    monkeypatch.setattr(our_general, "__path__", [*our_general.__path__, str(tmp_path)])
    yield
    import sys

    sys.modules.pop("recbole_ext.model.general_recommender.pop", None)


def test_get_model_falls_back_to_recbole():
    assert get_model("SASRec") is SASRec
    assert get_model("Pop") is Pop


def test_get_model_prefers_plugin_file_by_naming_rule(plugin_model):
    model = get_model("Pop")
    assert model is not Pop and issubclass(model, Pop) and model.plugin


def test_unknown_model_error_names_the_model_and_suggests():
    # the suggestions are spelled as the classes a user passes to --model, not as module names
    with pytest.raises(ConfigError, match=r"--model=SASRek .*Did you mean SASRec or SASRecF or "):
        get_model("SASRek")
    with pytest.raises(ConfigError, match="Did you mean AutoDisenSeq"):
        get_model("autodisen")


def test_get_trainer_wraps_recbole_trainers_with_safe_checkpoints():
    trainer = get_trainer(ModelType.SEQUENTIAL, "SASRec")
    assert issubclass(trainer, SafeCheckpointMixin) and issubclass(trainer, RecBoleTrainer)
    kg = get_trainer(ModelType.KNOWLEDGE, "KGCN")
    assert issubclass(kg, KGTrainer) and issubclass(kg, SafeCheckpointMixin)
    assert get_trainer(ModelType.SEQUENTIAL, "GRU4Rec") is trainer  # cached, one class


def test_get_trainer_prefers_our_model_trainer(monkeypatch):
    class SASRecTrainer(our_trainers.Trainer):
        pass

    monkeypatch.setattr(our_trainers, "SASRecTrainer", SASRecTrainer, raising=False)
    assert get_trainer(ModelType.SEQUENTIAL, "SASRec") is SASRecTrainer


def test_create_dataset_falls_back_to_recbole(workdir):
    config = Config("SASRec", "tiny", [str(TINY_YAML)], {"data_path": str(TINY_DATA)})
    dataset = create_dataset(config)
    assert type(dataset) is SequentialDataset
    assert dataset.user_num == 41 and dataset.inter_num == 1130  # 40 users + [PAD]
