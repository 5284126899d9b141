"""Time-ordered splits and histories follow the exact time, not RecBole's float32 timestamps.

A clickstream with unix-second times near 1.8e9: float32 holds them in 128 s steps, so the views of
a user, seconds apart, all get one float32 time and RecBole's stable sorts keep the file order.
The rows are written out of time order, so that order is wrong.
"""

import numpy as np
import pytest
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_ext.config import Config
from recbole_ext.utils import create_dataset

BASE = 1_800_000_000  # a float32 value: 1.8e9 = 14062500 * 128
# user -> items in true time order, one view every 7 s (all within one float32 step of BASE)
VIEWS = {
    "u1": ["a", "b", "c", "d", "e", "f"],
    "u2": ["c", "a", "f", "b", "e"],
    "u3": ["f", "e", "d", "c", "b", "a", "g"],
    "u4": ["h", "i", "j", "g"],  # items u3 has not seen (RecBole's samplers need one)
}


def _rows():
    """(user, item, time) rows, each user's views in a scrambled (not time) order."""
    rows = []
    for user, items in VIEWS.items():
        views = [(user, item, BASE + 7 * k + 3) for k, item in enumerate(items)]
        order = np.random.default_rng(len(items)).permutation(len(views))
        order = order if order[-1] != len(views) - 1 else order[::-1]  # latest not written last
        rows += [views[k] for k in order]
    return rows


@pytest.fixture
def clickstream(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "click"
    folder.mkdir()
    rows = _rows()
    assert len({np.float32(t) for _, _, t in rows}) == 1  # float32 ties every view
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{t}" for u, i, t in rows]
    (folder / "click.inter").write_text("\n".join(lines) + "\n")
    return tmp_path


def _split(data_path, model, **overrides):
    config = Config(
        model,
        "click",
        config_dict={
            "data_path": str(data_path),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
            "train_neg_sample_args": None,
            "state": "WARNING",
            **overrides,
        },
    )
    init_seed(2020, True)
    return data_preparation(config, create_dataset(config))


def _targets(loader) -> dict[str, str]:
    part = loader._dataset
    users = part.id2token(part.uid_field, part.inter_feat[part.uid_field].numpy())
    items = part.id2token(part.iid_field, part.inter_feat[part.iid_field].numpy())
    return dict(zip(users, items, strict=True))


def _histories(loader) -> dict[str, list[str]]:
    part = loader._dataset
    feat = part.inter_feat
    users = part.id2token(part.uid_field, feat[part.uid_field].numpy())
    lists, lengths = feat["item_id_list"].numpy(), feat["item_length"].numpy()
    return {
        u: list(part.id2token(part.iid_field, row[:n]))
        for u, row, n in zip(users, lists, lengths, strict=True)
    }


def test_sequential_targets_and_histories_follow_the_exact_time(clickstream):
    _, valid, test = _split(clickstream, "SASRec")
    assert _targets(test) == {u: items[-1] for u, items in VIEWS.items()}
    assert _targets(valid) == {u: items[-2] for u, items in VIEWS.items()}
    assert _histories(test) == {u: items[:-1] for u, items in VIEWS.items()}
    assert _histories(valid) == {u: items[:-2] for u, items in VIEWS.items()}


def test_general_model_split_follows_the_exact_time(clickstream):
    train, valid, test = _split(clickstream, "BPR")
    assert _targets(test) == {u: items[-1] for u, items in VIEWS.items()}
    assert _targets(valid) == {u: items[-2] for u, items in VIEWS.items()}
    part = train.dataset
    users = part.id2token(part.uid_field, part.inter_feat[part.uid_field].numpy())
    items = part.id2token(part.iid_field, part.inter_feat[part.iid_field].numpy())
    for user, views in VIEWS.items():  # the training rows of a user are its earlier views, in order
        assert [i for u, i in zip(users, items) if u == user] == views[:-2]


def test_recbole_float32_order_gets_these_targets_wrong(clickstream):
    """``time_order: recbole`` (RecBole's own order) keeps the file order of the tied views."""
    _, _, test = _split(clickstream, "SASRec", time_order="recbole")
    written_last = {}
    for user, item, _ in _rows():
        written_last[user] = item
    assert _targets(test) == written_last
    assert all(written_last[u] != items[-1] for u, items in VIEWS.items())


def test_our_dataset_classes_follow_the_exact_time(clickstream):
    """LRRecsysDataset (LR-Recsys samples for every model): each sample's history is the user's
    previous (at most 5) views in time order."""
    folder = clickstream / "click"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{1 + len(i) % 5}\t{t}" for u, i, t in _rows()]
    (folder / "click.inter").write_text("\n".join(lines) + "\n")
    config = Config(
        "DIN",
        "click",
        config_dict={
            "data_path": str(clickstream),
            "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
            "eval_protocol": "lrrecsys",
            "state": "WARNING",
        },
    )
    dataset = create_dataset(config)
    data_preparation(config, dataset)
    samples = dataset.samples
    expected = {
        (user, item): tuple(views[max(0, k - 5) : k])
        for user, views in VIEWS.items()
        for k, item in enumerate(views)
        if k > 0
    }
    got = {
        (u, i): h for u, i, h in zip(samples.users, samples.items, samples.histories, strict=True)
    }
    assert got == expected


def test_random_order_runs_are_not_reordered(clickstream):
    """Only time-ordered runs change: a random split (eval_args.order RO) draws the same rows."""

    def split(time_order):
        train, valid, test = _split(
            clickstream,
            "BPR",
            time_order=time_order,
            eval_args={"split": {"RS": [0.6, 0.2, 0.2]}, "order": "RO", "mode": "full"},
        )
        return [loader._dataset.inter_feat["item_id"].tolist() for loader in (train, valid, test)]

    assert split("exact") == split("recbole")


def test_unknown_time_order_is_refused(clickstream):
    with pytest.raises(ValueError, match="time_order='float'.*exact"):
        _split(clickstream, "SASRec", time_order="float")
