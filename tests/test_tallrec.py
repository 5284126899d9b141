"""TALLRec baseline: the Yes/No cross-entropy by hand, LoRA-only training, untrained = ICL."""

import copy
import math

import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_ext.config import Config
from recbole_ext.config_sections import yaml_section
from recbole_ext.data.expctr_dataset import same_samples_overrides
from recbole_ext.data.item_text import item_texts
from recbole_ext.llm.local_lm import chat_prompt
from recbole_ext.llm.prompts import ExpCTRPromptWords, expctr_icl_messages
from recbole_ext.model.context_aware_recommender.tallrec import TALLRec, TALLRecConfig
from recbole_ext.quick_start import build
from recbole_ext.trainer.expctr import ExpCTRTrainer
from recbole_ext.utils import create_dataset, get_trainer
from tests.conftest import TINY_DATA, TINY_YAML
from tests.test_expctr import HashEncoder, tiny_lm


def _config(workdir, **overrides):
    values = {
        "data_path": str(TINY_DATA),
        "checkpoint_dir": str(workdir / "saved"),
        "expctr_max_samples": 40,
        "expctr_max_history": 4,
        "train_batch_size": 8,
        "eval_batch_size": 8,
        "epochs": 1,
    }
    return Config("TALLRec", "tiny", [str(TINY_YAML)], {**values, **overrides})


def _model(config):
    """Splits and a TALLRec on a copy of the tiny random Llama (``add_lora`` edits it in place)."""
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    base, tokenizer = tiny_lm()
    model = TALLRec(config, train._dataset, lm=(copy.deepcopy(base), tokenizer))
    return model, train, valid, test


def _two_rows(split):
    """A positive and a negative row of ``split`` as one interaction (positive first)."""
    labels = split._dataset.inter_feat["label"]
    pos, neg = int((labels == 1).nonzero()[0]), int((labels == 0).nonzero()[0])
    return split._dataset[torch.tensor([pos, neg])]


def test_loss_is_the_yes_no_cross_entropy_on_a_hand_example(workdir, monkeypatch):
    model, train, _, _ = _model(_config(workdir))
    interaction = _two_rows(train)

    # 1. numbers by hand: log p(Yes) = log 0.6, log p(No) = log 0.2 -> s = 0.6 / 0.8 = 0.75 for the
    #    positive; 0.1 vs 0.3 -> s = 0.25 for the negative; CE = -(log 0.75 + log(1 - 0.25)) / 2
    fixed = (torch.log(torch.tensor([0.6, 0.1])), torch.log(torch.tensor([0.2, 0.3])))
    with monkeypatch.context() as m:
        m.setattr(model, "yes_no", lambda _: fixed)
        assert model.calculate_loss(interaction).item() == pytest.approx(-math.log(0.75))
        assert model.predict(interaction).tolist() == pytest.approx([0.75, 0.25])

    # 2. the same formula from the LM by hand: each prompt alone (no padding), full logits
    _, tokenizer = tiny_lm()
    texts = item_texts(train._dataset, ["movie_title", "release_year", "class"])
    yes_id = tokenizer.encode("Yes", add_special_tokens=False)[0]
    no_id = tokenizer.encode("No", add_special_tokens=False)[0]
    terms, scores = [], []
    for user, item, label in zip(
        interaction["user_id"].tolist(), interaction["item_id"].tolist(), (1, 0), strict=True
    ):
        liked, disliked = train._dataset.expctr_history[(user, item)]
        messages = expctr_icl_messages(
            [texts[i] for i in liked],
            [texts[i] for i in disliked],
            texts[item],
            ExpCTRPromptWords.named("movie"),
        )
        ids = tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model.lm(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,)
        logp = torch.log_softmax(logits.double(), dim=-1)
        s = math.exp(logp[yes_id]) / (math.exp(logp[yes_id]) + math.exp(logp[no_id]))
        scores.append(s)
        terms.append(-math.log(s) if label else -math.log(1 - s))
    with torch.no_grad():
        loss = model.calculate_loss(interaction).item()
    assert loss == pytest.approx(sum(terms) / 2, abs=1e-5)
    assert model.predict(interaction).tolist() == pytest.approx(scores, abs=1e-5)


def test_a_training_run_changes_the_adapters_only_and_checkpoints_only_them(workdir):
    config = _config(workdir)
    model, train, valid, test = _model(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapters = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    untrained = model.predict(next(iter(test))[0]).clone()

    trainer = get_trainer(config["MODEL_TYPE"], "TALLRec")(config, model)
    trainer.fit(train, valid, saved=True)  # RecBole's Trainer: 4 steps of 8 prompts
    after = dict(model.named_parameters())
    changed = {n for n in adapters if not torch.equal(after[n], before[n])}
    assert changed == adapters  # B moves at step 1, A from step 2 on (its gradient is B^T(.))
    for name in set(before) - adapters:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)

    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert set(checkpoint["state_dict"]) == adapters  # the base LM is not copied into checkpoints
    result = trainer.evaluate(test, load_best_model=True)
    assert set(result) == {"auc", "logloss", "mae", "rmse"}
    trained = model.predict(next(iter(test))[0])
    assert (trained - untrained).abs().max() > 0  # the adapters act on the score


def test_untrained_tallrec_is_expctrs_icl_on_the_same_samples(workdir):
    """Same prompts, same Yes/No scorer: before any step TALLRec's p(Yes) is the ICL score."""
    expctr = Config(
        "ExpCTR",
        "tiny",
        [str(TINY_YAML)],
        {"data_path": str(TINY_DATA), "checkpoint_dir": str(workdir / "saved")},
    )
    _, ctr_model, _, _, test = build(expctr)
    base, tokenizer = tiny_lm()
    trainer = ExpCTRTrainer(
        expctr, ctr_model, lm=(copy.deepcopy(base), tokenizer), encoder=HashEncoder()
    )
    samples = trainer.run.samples(test)
    icl = trainer.run.load_policy().yes_no_scores([s.icl_prompt for s in samples])

    tallrec, _, _, tallrec_test = _model(
        Config(
            "TALLRec",
            "tiny",
            [str(TINY_YAML)],
            {
                "data_path": str(TINY_DATA),
                "checkpoint_dir": str(workdir / "saved"),
                **same_samples_overrides(expctr),
            },
        )
    )
    interaction = tallrec_test._dataset.inter_feat
    assert tallrec.messages(interaction) == [s.icl_prompt for s in samples]
    assert tallrec.predict(interaction).tolist() == pytest.approx(icl, abs=1e-6)


def test_settings_fail_with_the_fix(workdir):
    with pytest.raises(ValueError, match="tallrec_temperature"):
        yaml_section(TALLRecConfig, temperature=0.0)
    with pytest.raises(ValueError, match="both"):
        yaml_section(TALLRecConfig, pos_tokens=("Yes",), neg_tokens=("Yes", "No"))
    with pytest.raises(ValueError, match="expctr_domain"):
        yaml_section(TALLRecConfig, domain="music")
    # RecBole's plain dataset: no histories (and _config's ExpCTR sample keys go unused)
    config = _config(workdir, dataset_class=None, allow_unknown_keys=True)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    with pytest.raises(TypeError, match="dataset_class: ExpCTRDataset"):
        TALLRec(config, dataset, lm=tiny_lm())
