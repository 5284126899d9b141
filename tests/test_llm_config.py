"""LLMConfig: read from llm.yaml (its only defaults) with the yaml's keys, values and types;
mapping reader; start-up errors name the fix."""

import dataclasses
import os

import pytest
import yaml

from recbole_ext.config_sections import read_section, yaml_section
from recbole_ext.llm import LLMConfig, LoRASettings

YAML_PATH = os.path.join(
    os.path.dirname(__file__), os.pardir, "recbole_ext", "properties", "llm.yaml"
)


def load_yaml() -> dict:
    with open(YAML_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_the_section_read_from_the_yaml_has_its_keys_values_and_types():
    from_yaml = load_yaml()
    defaults = yaml_section(LLMConfig).to_dict()
    assert set(from_yaml) == set(defaults), "llm.yaml and LLMConfig list different keys"
    for key, value in defaults.items():
        assert from_yaml[key] == value, key
        if value is not None:  # same type too (0.0 vs 0 would pass ==)
            assert type(from_yaml[key]) is type(value), key


def test_from_plain_dict_reads_keys_and_places_store_in_checkpoint_dir():
    config = read_section(
        {"llm_model": "m", "llm_max_concurrency": 2, "checkpoint_dir": "saved", "epochs": 3},
        LLMConfig,
    )
    assert config.model == "m" and config.max_concurrency == 2
    assert config.temperature == 0.0  # absent key keeps the default
    assert config.store_path == os.path.join("saved", "llm_store.sqlite")
    explicit = read_section({"llm_store_path": "/x/s.db", "checkpoint_dir": "c"}, LLMConfig)
    assert explicit.store_path == "/x/s.db"
    assert read_section({}, LLMConfig).store_path is None


def test_from_recbole_style_config_object():
    class FakeRecBoleConfig:  # RecBole's Config: `in` and `[]` over final_config_dict
        def __init__(self, values):
            self.final_config_dict = values

        def __contains__(self, key):
            return key in self.final_config_dict

        def __getitem__(self, key):
            return self.final_config_dict.get(key)

    values = {**load_yaml(), "checkpoint_dir": "saved/", "llm_seed": 7}
    config = read_section(FakeRecBoleConfig(values), LLMConfig)
    assert config.seed == 7 and config.store_path == os.path.join("saved/", "llm_store.sqlite")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"temperature": -1.0}, "llm_temperature=-1.0: set it to a value >= 0"),
        ({"max_concurrency": 0}, "llm_max_concurrency=0: set it to at least 1"),
        ({"top_logprobs": 0}, "llm_top_logprobs=0: set 1..20"),
        ({"structured_output": "grammar"}, "choose one of json_object, json_schema, none"),
        ({"backoff_base": 5.0, "backoff_max": 1.0}, "0 <= llm_backoff_base <= llm_backoff_max"),
        ({"timeout": 0}, "set a positive number of seconds"),
        ({"yes_no_temperature": 0.0}, "set a positive temperature"),
    ],
)
def test_invalid_settings_name_the_fix(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        yaml_section(LLMConfig, **change)


def test_api_key_read_from_environment_and_never_in_dict(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret")
    config = yaml_section(LLMConfig, api_key_env="MY_LLM_KEY")
    assert config.api_key == "sk-secret"
    assert "sk-secret" not in repr(config) and "sk-secret" not in str(config.to_dict())
    monkeypatch.delenv("MY_LLM_KEY")
    assert config.api_key == "sk-no-key-required"


def test_lora_settings():
    assert yaml_section(LoRASettings, target_modules=["q_proj"]).target_modules == ("q_proj",)
    with pytest.raises(ValueError, match="rank of at least 1"):
        yaml_section(LoRASettings, r=0)
    assert [f.name for f in dataclasses.fields(LoRASettings)] == [
        "r",
        "alpha",
        "dropout",
        "target_modules",
    ]
