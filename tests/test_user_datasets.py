"""Users' own datasets, rebuilt from public RecBole reports with made-up data: RecBole's pre-split
layout, sequential models on pre-split files, and a custom ``.inter`` with no yaml."""

import random

import pytest
from recbole.data import data_preparation

from recbole_ext.config import Config, DatasetNotFoundError
from recbole_ext.quick_start import run
from recbole_ext.utils import create_dataset

FAST = {"epochs": 1, "train_batch_size": 64, "eval_batch_size": 64, "state": "WARNING"}


def write_inter(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def clicks(users=12, per_user=8, seed=0):
    """(user, item, timestamp) rows, shuffled: the file is not in time order."""
    rng = random.Random(seed)
    rows = [
        (u, rng.randrange(1, 30), 1_800_000_000 + 7 * j + u)
        for u in range(1, users + 1)
        for j in range(per_user)
    ]
    rng.shuffle(rows)
    return rows


def test_pre_split_layout_loads_like_plain_recbole(workdir):
    """``<name>.part1.inter``..``part3`` with ``benchmark_filename``: RecBole's documented layout,
    once refused by our data-path check (it demanded ``<name>.inter``)."""
    rows = clicks()
    header = ["user_id:token", "item_id:token", "timestamp:float"]
    parts = {"part1": rows[:60], "part2": rows[60:78], "part3": rows[78:]}
    for part, part_rows in parts.items():
        write_inter(workdir / "dataset" / "shop" / f"shop.{part}.inter", header, part_rows)
    split = {"benchmark_filename": list(parts), **FAST}
    config = Config("BPR", "shop", config_dict=split)
    assert config["data_path"] == str((workdir / "dataset" / "shop").resolve())
    dataset = create_dataset(config)
    assert dataset.file_size_list == [60, 18, len(rows) - 78]  # the three files, in order
    result = run("BPR", "shop", config_dict=split)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1

    (workdir / "dataset" / "shop" / "shop.part3.inter").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        Config("BPR", "shop", config_dict=split)
    assert "shop.part3.inter" in str(err.value) and "benchmark_filename" in str(err.value)


def test_sequential_model_on_pre_split_files_without_histories_names_the_column(workdir):
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    rows = [(u, i, 4, t) for u, i, t in clicks()]
    for part, part_rows in {"train": rows[:60], "valid": rows[60:78], "test": rows[78:]}.items():
        write_inter(workdir / "dataset" / "shop" / f"shop.{part}.inter", header, part_rows)
    with pytest.raises(ValueError) as err:  # RecBole: AttributeError ... 'item_id_list_field'
        Config("SASRec", "shop", config_dict={"benchmark_filename": ["train", "valid", "test"]})
    message = str(err.value)
    assert "'item_id_list:token_seq' column" in message and "shop.train.inter" in message
    assert "drop benchmark_filename" in message


def test_custom_inter_without_yaml_loads_its_timestamp_for_a_sequential_model(workdir):
    """RecBole's generic ``load_col`` ({inter: [user_id, item_id]}) dropped the timestamp: the
    run failed with "[timestamp] is not exist" (or ordered histories by file row)."""
    rows = clicks()
    write_inter(
        workdir / "dataset" / "shop" / "shop.inter",
        ["user_id:token", "item_id:token", "timestamp:float"],
        rows,
    )
    config = Config("SASRec", "shop", config_dict=FAST)
    assert config["load_col"]["inter"] == ["user_id", "item_id", "timestamp"]
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    # each user's test target is their latest click (exact time order; rows were shuffled)
    latest = {}
    for user, item, time in rows:
        if user not in latest or time > latest[user][1]:
            latest[user] = (item, time)
    test_inter = test._dataset.inter_feat
    users = dataset.id2token(dataset.uid_field, test_inter[dataset.uid_field].numpy())
    items = dataset.id2token(dataset.iid_field, test_inter[dataset.iid_field].numpy())
    assert {int(u): int(i) for u, i in zip(users, items)} == {
        u: item for u, (item, _) in latest.items()
    }
    result = run("SASRec", "shop", config_dict=FAST)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_a_load_col_that_drops_the_time_column_is_refused_naming_load_col(workdir):
    write_inter(
        workdir / "dataset" / "shop" / "shop.inter",
        ["user_id:token", "item_id:token", "timestamp:float"],
        clicks(),
    )
    with pytest.raises(ValueError, match=r"load_col.inter .* leaves out 'timestamp'"):
        Config("SASRec", "shop", config_dict={"load_col": {"inter": ["user_id", "item_id"]}})


def test_sequential_model_on_a_file_without_time_names_time_field(workdir):
    write_inter(
        workdir / "dataset" / "shop" / "shop.inter",
        ["user_id:token", "item_id:token", "rating:float"],
        [(u, i, 3) for u, i, _ in clicks()],
    )
    with pytest.raises(ValueError) as err:
        Config("GRU4Rec", "shop")
    message = str(err.value)
    assert "declares no time column TIME_FIELD='timestamp'" in message
    assert "['user_id', 'item_id', 'rating']" in message and "--TIME_FIELD" in message
    # a general model with RecBole's random-order split needs no time column
    assert Config("BPR", "shop")["load_col"]["inter"] == ["user_id", "item_id", "rating"]


def test_malformed_header_names_the_file(workdir):
    path = workdir / "dataset" / "shop" / "shop.inter"
    write_inter(path, ["user_id", "item_id:token"], [(1, 2)])
    with pytest.raises(ValueError, match=r"shop.inter: header entry 'user_id' is not 'name:type'"):
        Config("BPR", "shop")
