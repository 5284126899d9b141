"""Table-1 baselines on ExpCTR's samples: identical train/valid/test rows, DIN/DIEN sequence fields."""

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_ext.config import Config
from recbole_ext.data.expctr_dataset import same_samples_overrides
from recbole_ext.data.expctr_samples import negative_sequences, padded_sequences
from recbole_ext.quick_start import build
from recbole_ext.utils import create_dataset
from tests.conftest import TINY_DATA, TINY_YAML


def _config(model, workdir, seed, **overrides):
    values = {"data_path": str(TINY_DATA), "checkpoint_dir": str(workdir / "saved"), "seed": seed}
    return Config(model, "tiny", [str(TINY_YAML)], {**values, **overrides})


def _splits(config):
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    return dataset, data_preparation(config, dataset)


def _rows(split):
    """(user token, item token, label) of every row, in the split's order."""
    ds = split._dataset
    inter = ds.inter_feat
    users = ds.id2token(ds.uid_field, inter[ds.uid_field]).tolist()
    items = ds.id2token(ds.iid_field, inter[ds.iid_field]).tolist()
    return list(zip(users, items, inter["label"].tolist(), strict=True))


@pytest.mark.parametrize("seed", [2020, 7])
def test_baselines_train_and_test_on_exactly_expctrs_rows(workdir, seed):
    expctr = _config("ExpCTR", workdir, seed)  # tiny preset: 60 samples, history 5
    overrides = same_samples_overrides(expctr)
    assert overrides["dataset_class"] == "ExpCTRDataset" and overrides["eval_protocol"] == "ctr"
    assert (overrides["expctr_targets_per_user"], overrides["expctr_max_history"]) == (2, 5)
    assert overrides["expctr_max_samples"] == 60 and overrides["MAX_ITEM_LIST_LENGTH"] == 5
    _, reference = _splits(expctr)
    expected = [_rows(split) for split in reference]
    assert [len(rows) for rows in expected] == [48, 6, 6]
    assert len({r[:2] for rows in expected for r in rows}) == 60  # no pair in two splits

    for model in ("FM", "DeepFM", "xDeepFM", "DIN", "DIEN", "TALLRec"):
        config = _config(model, workdir, seed, **overrides)
        dataset, splits = _splits(config)
        assert type(dataset).__name__ == "ExpCTRDataset", model
        assert [_rows(split) for split in splits] == expected, model

    plain = _config("DeepFM", workdir, seed, eval_protocol="ctr")  # without the overrides
    assert len(_splits(plain)[0].inter_feat) > 60


def test_din_and_dien_read_the_chronological_history(workdir):
    expctr = _config("ExpCTR", workdir, 2020)
    overrides = same_samples_overrides(expctr)
    _, model, train, _, test = build(_config("DIEN", workdir, 2020, **overrides))
    ds = train._dataset
    inter = ds.inter_feat
    lists, lengths, negatives = (
        inter["item_id_list"],
        inter["item_length"],
        inter["neg_item_id_list"],
    )
    assert lists.shape == negatives.shape == (48, 5)
    for row in range(48):
        user, item = int(inter["user_id"][row]), int(inter["item_id"][row])
        liked, disliked = ds.expctr_history[(user, item)]
        n = len(liked) + len(disliked)
        history = lists[row, :n].tolist()
        assert sorted(history) == sorted(liked + disliked) and (lists[row, n:] == 0).all()
        assert [i for i in history if i in liked] == list(liked)  # oldest first, interleaved
        assert int(lengths[row]) == max(1, n)
        assert (negatives[row, :n] != lists[row, :n]).all() and (negatives[row, n:] == 0).all()
    # the model consumes the fields: a finite loss and probabilities for the test rows
    batch = next(iter(train))
    assert torch.isfinite(model.calculate_loss(batch))
    interaction = next(iter(test))[0]
    scores = model.predict(interaction)
    assert scores.shape == (6,) and ((scores > 0) & (scores < 1)).all()


def test_padded_sequences_and_their_limits():
    lists, lengths = padded_sequences([(5, 3, 9), (), (2,)], length=4)
    assert lists.tolist() == [[5, 3, 9, 0], [0, 0, 0, 0], [2, 0, 0, 0]]
    assert lengths.tolist() == [3, 1, 1]  # an empty history reads one padding item
    with pytest.raises(ValueError, match="MAX_ITEM_LIST_LENGTH"):
        padded_sequences([(1, 2, 3)], length=2)


def test_negative_sequences_are_uniform_over_the_other_items():
    positives = np.array([[3] * 4000 + [0] * 10])
    negatives = negative_sequences(positives, n_items=6, rng=np.random.default_rng(0))
    drawn = negatives[0, :4000]
    assert set(drawn.tolist()) == {1, 2, 4, 5}  # never the positive, never padding 0
    assert np.allclose(np.bincount(drawn, minlength=6)[[1, 2, 4, 5]] / 4000, 0.25, atol=0.03)
    assert (negatives[0, 4000:] == 0).all()


def test_an_unknown_dataset_class_names_the_fix(workdir):
    config = _config("DeepFM", workdir, 1, dataset_class="NoSuchDataset", eval_protocol="ctr")
    with pytest.raises(ValueError, match="dataset_class='NoSuchDataset'"):
        create_dataset(config)
