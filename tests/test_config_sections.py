"""One configuration path: typed sections read from the merged config, defaults in yaml only.

Every settings dataclass is a section (:mod:`recbole_ext.config_sections`): no field defaults,
its keys declared in one packaged yaml, read by one reader from what ``Config`` merged (presets
included). Bad values, wrong types, missing and mistyped keys name the yaml key and the fix.
"""

import dataclasses
import importlib
import json
import logging
import pkgutil

import pytest

import recbole_ext
from recbole_ext.config import Config
from recbole_ext.config_checks import ConfigError, UnknownKeyError, yaml_keys
from recbole_ext.config_sections import (
    ConfigSectionError,
    read_section,
    section_keys,
    yaml_path,
    yaml_section,
)
from recbole_ext.data.expctr_samples import ExpCTRSampleConfig
from recbole_ext.expctr_run import run_key
from recbole_ext.llm.config import LLMConfig, LoRASettings
from recbole_ext.llm.lrrecsys_explanations import ExplanationConfig
from recbole_ext.llm.rerank_window import RerankConfig
from recbole_ext.model.context_aware_recommender.expctr import ExpCTRConfig
from recbole_ext.model.context_aware_recommender.tallrec import TALLRecConfig
from recbole_ext.rl.ppo import PPOConfig
from tests.conftest import REPO_DIR, TINY_DATA, TINY_YAML

SECTIONS = {
    LLMConfig,
    LoRASettings,
    RerankConfig,
    ExplanationConfig,
    ExpCTRSampleConfig,
    ExpCTRConfig,
    TALLRecConfig,
    PPOConfig,
}


def tiny(model, cmd_args=(), **values):
    return Config(
        model, "tiny", [str(TINY_YAML)], {"data_path": str(TINY_DATA), **values}, cmd_args
    )


def package_sections() -> set[type]:
    """Every dataclass of the package that names a yaml section (YAML_PREFIX)."""
    found = set()
    for info in pkgutil.walk_packages(recbole_ext.__path__, prefix="recbole_ext."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__.startswith("recbole_ext")
                and "YAML_PREFIX" in vars(value)
            ):
                found.add(value)
    return found


# --------------------------------------------------------------------------------------------
# One place for defaults
# --------------------------------------------------------------------------------------------
def test_sections_carry_no_defaults_and_one_yaml_declares_every_key():
    assert package_sections() == SECTIONS
    for cls in SECTIONS:
        with_default = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        ]
        assert with_default == [], f"{cls.__name__} keeps defaults outside its yaml"
        undeclared = set(section_keys(cls)) - yaml_keys(yaml_path(cls))
        assert undeclared == set(), f"{cls.__name__}: {yaml_path(cls)} lacks {undeclared}"
        with pytest.raises(TypeError):  # nothing to construct it from but the yaml
            cls()
    # the yaml's values with the field types (an int yaml value of a float field is a float)
    assert yaml_section(PPOConfig).learning_rate == 1e-5
    assert yaml_section(LoRASettings).target_modules == ("q_proj", "v_proj")
    assert type(yaml_section(LLMConfig).temperature) is float
    assert section_keys(RerankConfig)["llm_rerank"] == "enabled"
    assert section_keys(ExplanationConfig)["lrrecsys_explanation_mode"] == "mode"


def test_a_config_reads_the_same_sections_as_the_yaml_alone():
    """``Config`` layers the same yaml (RecBole's loader): the section read from the merged
    config equals the one read from the file, model by model."""
    pop = tiny("Pop")
    assert read_section(pop, LLMConfig) == yaml_section(
        LLMConfig, store_path=f"{pop['checkpoint_dir']}/llm_store.sqlite"
    )
    assert read_section(pop, RerankConfig) == yaml_section(RerankConfig)
    lrrecsys = tiny("LRRecsys")
    assert read_section(lrrecsys, ExplanationConfig) == yaml_section(ExplanationConfig)
    assert read_section(lrrecsys, ExplanationConfig).seconds_per_call == 2.0  # the yaml's value
    tallrec = tiny("TALLRec")
    assert read_section(tallrec, TALLRecConfig) == yaml_section(TALLRecConfig)
    assert read_section(tallrec, LoRASettings) == yaml_section(LoRASettings)
    assert read_section(tallrec, ExpCTRSampleConfig) == yaml_section(ExpCTRSampleConfig)
    paper = tiny("ExpCTR", expctr_preset="paper")
    assert read_section(paper, ExpCTRConfig) == yaml_section(ExpCTRConfig, preset="paper")
    assert read_section(paper, PPOConfig) == yaml_section(PPOConfig)


# --------------------------------------------------------------------------------------------
# Presets are yaml layers of Config
# --------------------------------------------------------------------------------------------
def test_expctr_presets_are_layers_whose_values_land_in_the_dataclasses():
    default = tiny("ExpCTR")  # ExpCTR.yaml: expctr_preset: tiny
    settings, ppo = read_section(default, ExpCTRConfig), read_section(default, PPOConfig)
    assert settings.preset == "tiny"
    # properties/preset/expctr_tiny.yaml
    assert (settings.targets_per_user, settings.max_samples, settings.max_history) == (2, 60, 5)
    assert (settings.iterations, settings.lc_epochs, settings.ic_epochs) == (1, 1, 1)
    assert (ppo.batch_size, ppo.update_epochs, ppo.response_length) == (8, 1, 16)
    assert default["expctr_iterations"] == 1  # in the merged config itself, logged and saved
    assert "expctr_tiny_preset" not in default  # no second merge at read time

    paper = tiny("ExpCTR", cmd_args=["--expctr_preset=paper"])  # the README's key
    settings, ppo = read_section(paper, ExpCTRConfig), read_section(paper, PPOConfig)
    assert (settings.targets_per_user, settings.max_samples, settings.max_history) == (1, None, 10)
    assert (settings.iterations, settings.lc_epochs, settings.ic_epochs) == (2, 2, 2)
    assert (ppo.batch_size, ppo.update_epochs, ppo.response_length) == (16, 2, 64)

    # the user's keys (file, dict, command line) win over the preset
    mine = tiny("ExpCTR", cmd_args=["--expctr_iterations=3"], ppo_batch_size=4)
    settings, ppo = read_section(mine, ExpCTRConfig), read_section(mine, PPOConfig)
    assert (settings.iterations, settings.max_samples, ppo.batch_size) == (3, 60, 4)

    with pytest.raises(ValueError, match=r"expctr_preset='huge' is unknown; choose one of \["):
        tiny("ExpCTR", expctr_preset="huge")
    # a baseline on ExpCTR's samples reads them from its own yaml (TALLRec: the paper's)
    assert read_section(tiny("TALLRec"), ExpCTRSampleConfig) == ExpCTRSampleConfig(1, 10, None)


def test_run_keys_of_recorded_runs_are_unchanged():
    """The tiny preset became a layer; runs keep their keys, so the stored Table-1 runs are
    found (their folders are recorded in benchmarks/results/expctr/runs)."""
    recorded = json.loads(
        (REPO_DIR / "benchmarks/results/expctr/runs/ExpCTR-seed2020.json").read_text()
    )
    assert "expctr-18283d6dfe65" in recorded["model_file"]
    assert run_key(Config("ExpCTR", "ml-100k", config_dict={"seed": 2020})) == "18283d6dfe65"
    # keys computed before the change: --expctr_preset=paper, and user keys beside the preset
    paper = Config("ExpCTR", "ml-100k", cmd_args=["--seed=2020", "--expctr_preset=paper"])
    assert run_key(paper) == "3328f8c6e7eb"
    mine = {"seed": 2021, "expctr_iterations": 3, "ppo_batch_size": 4}
    assert run_key(Config("ExpCTR", "ml-100k", config_dict=mine)) == "8b4236ad1cb1"


# --------------------------------------------------------------------------------------------
# Errors name the yaml key and the fix
# --------------------------------------------------------------------------------------------
def test_a_bad_value_names_the_yaml_key_and_the_fix():
    # the section's own validation too is a ConfigSectionError: one line on the command line
    with pytest.raises(
        ConfigSectionError, match=r"ppo_kl_coef=-1\.0: set beta >= 0 \(paper: 0\.05\)"
    ):
        read_section(tiny("ExpCTR", cmd_args=["--ppo_kl_coef=-1"]), PPOConfig)
    with pytest.raises(
        ConfigSectionError, match=r"rerank_max_users=0: set at least 1, or ~ for all"
    ):
        read_section(tiny("Pop", rerank_max_users=0), RerankConfig)
    # wrong types: the key, the expected type, an example from the yaml
    # (a user's text where the yaml has a number stops earlier, in Config, before data loads)
    with pytest.raises(ConfigError, match="llm_max_tokens='many' is text: it takes a number"):
        tiny("Pop", cmd_args=["--llm_max_tokens=many"])
    with pytest.raises(ConfigSectionError) as err:
        read_section({"llm_max_tokens": "many"}, LLMConfig)
    assert str(err.value) == (
        "`llm_max_tokens` takes an integer, not a str: set e.g. --llm_max_tokens=256 "
        "(recbole_ext/properties/llm.yaml has 256)."
    )
    with pytest.raises(ConfigSectionError, match="`expctr_pos_tokens` takes a list of strings"):
        read_section(tiny("ExpCTR", cmd_args=["--expctr_pos_tokens=Yes"]), ExpCTRConfig)
    with pytest.raises(ConfigSectionError, match="`llm_rerank` takes True or False, not a int"):
        read_section({"llm_rerank": 1}, RerankConfig)
    assert read_section({"ppo_kl_coef": 1}, PPOConfig).kl_coef == 1.0  # an int is a valid float
    # a config whose yamls do not declare the section: named, with the yaml that does
    with pytest.raises(ConfigSectionError) as err:
        read_section(tiny("Pop"), ExpCTRSampleConfig)
    assert str(err.value).startswith(
        "ExpCTRSampleConfig needs `expctr_targets_per_user`, `expctr_max_history`, "
        "`expctr_max_samples`, which the merged config lacks: "
        "recbole_ext/properties/model/ExpCTR.yaml declares them"
    )
    with pytest.raises(TypeError, match=r"RerankConfig has no field \['keep_tpo'\]"):
        yaml_section(RerankConfig, keep_tpo=3)


def test_an_unknown_prefix_key_is_refused_or_flagged(caplog):
    with pytest.raises(ConfigSectionError) as err:
        read_section({"llm_temprature": 0.5}, LLMConfig)
    assert str(err.value).startswith("`llm_temprature`: did you mean `llm_temperature` or")
    assert "allow_unknown_keys=True" in str(err.value)
    # another section's key under the same prefix is no typo
    assert read_section({"llm_rerank": True}, LLMConfig) == yaml_section(LLMConfig)
    # Config refuses the typo first; with allow_unknown_keys the reader still flags it
    with pytest.raises(UnknownKeyError, match="llm_temprature"):
        tiny("Pop", cmd_args=["--llm_temprature=0.5"])
    config = tiny("Pop", cmd_args=["--allow_unknown_keys=True", "--llm_temprature=0.5"])
    with caplog.at_level(logging.WARNING):
        assert read_section(config, LLMConfig).temperature == 0.0
    assert "`llm_temprature`: did you mean `llm_temperature`" in caplog.text
