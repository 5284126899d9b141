"""How many leave-one-out targets and histories RecBole's float32 time order gets wrong.

    python benchmarks/time_order_check.py [--dataset ml-100k] [--model SASRec] [--normalize_all both]

Builds the dataset through ``recbole_ext.utils.create_dataset`` and RecBole's ``data_preparation``
(the ``seq_pop100`` protocol: leave-one-out in time order) twice, with ``time_order=recbole``
(RecBole's float32 timestamps; times within one float32 step keep file order) and
``time_order=exact`` (the default), and counts the users whose test target, validation target or
test history (``item_id_list``, sequential models) differ. RecBole's ml-100k preset normalises
every float field (``normalize_all: True``: timestamps become (t - min) / (max - min), float32 steps
of ~1 s); ``--normalize_all=False`` keeps raw timestamps (64 s steps near 8.8e8 s), as the
LR-Recsys protocol and datasets without that preset do. ``both`` (default) reports both.
Also counts, from the raw file, the users whose latest float32 time step holds several true times.
``--lrrecsys`` also compares the LR-Recsys samples of the 40-user preset (raw timestamps, each
sample's last 5 items before it; ``DIN`` builds them, as every model on that protocol).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from recbole.data import data_preparation

from recbole_ext.config import Config
from recbole_ext.utils import create_dataset


def split_by_user(config_dict: dict, model: str, dataset: str) -> dict[str, dict]:
    """``{phase: {user token: (target token, history tokens)}}`` for the valid and test sets."""
    config = Config(model, dataset, config_dict={**config_dict, "state": "WARNING"})
    built = create_dataset(config)
    _, valid, test = data_preparation(config, built)
    out = {}
    for phase, loader in (("valid", valid), ("test", test)):
        part = loader._dataset
        feat = part.inter_feat
        users = part.id2token(part.uid_field, feat[part.uid_field].numpy())
        items = part.id2token(part.iid_field, feat[part.iid_field].numpy())
        list_field = getattr(part, "item_id_list_field", None)
        if list_field is not None and list_field in feat:
            lists = feat[list_field].numpy()
            lengths = feat[part.item_list_length_field].numpy()
            histories = [
                tuple(part.id2token(part.iid_field, r[:n])) for r, n in zip(lists, lengths)
            ]
        else:
            histories = [()] * len(users)
        out[phase] = {u: (i, h) for u, i, h in zip(users, items, histories, strict=True)}
    return out


def compare(model: str, dataset: str, normalize_all: bool) -> dict[str, int]:
    base = {"eval_protocol": "seq_pop100", "normalize_all": normalize_all}
    recbole = split_by_user({**base, "time_order": "recbole"}, model, dataset)
    exact = split_by_user({**base, "time_order": "exact"}, model, dataset)
    counts = {"users": len(exact["test"])}
    for phase in ("valid", "test"):
        counts[f"{phase}_targets_changed"] = sum(
            recbole[phase][u][0] != exact[phase][u][0] for u in exact[phase]
        )
    counts["test_histories_changed"] = sum(
        recbole["test"][u][1] != exact["test"][u][1] for u in exact["test"]
    )
    return counts


def tied_latest_steps(dataset: str) -> int:
    """Users whose latest float32 timestamp step holds several distinct true times (raw file)."""
    import pandas as pd

    config = Config("SASRec", dataset)
    frame = pd.read_csv(Path(config["data_path"]) / f"{dataset}.inter", sep="\t")
    user, time = "user_id:token", "timestamp:float"
    frame["step"] = frame[time].astype(np.float32)
    latest = frame[frame["step"] == frame.groupby(user)["step"].transform("max")]
    return int((latest.groupby(user)[time].nunique() > 1).sum())


def lrrecsys_changes(dataset: str) -> dict[str, int]:
    """LR-Recsys 40-user preset samples whose history or split differ between the two orders."""

    def samples(time_order: str) -> dict:
        overrides = {
            "eval_protocol": "lrrecsys",
            "lrrecsys_max_users": 40,
            "lrrecsys_max_user_interactions": 20,
            "time_order": time_order,
            "state": "WARNING",
        }
        config = Config("DIN", dataset, config_dict=overrides)
        built = create_dataset(config)
        data_preparation(config, built)
        table = built.samples
        rows = zip(table.users, table.items, table.histories, table.split, strict=True)
        return {(u, i): (h, int(s)) for u, i, h, s in rows}

    recbole, exact = samples("recbole"), samples("exact")
    return {
        "samples": len(exact),
        "new_samples": len(set(exact) - set(recbole)),
        "histories_changed": sum(exact[k][0] != recbole.get(k, (None,))[0] for k in exact),
        "splits_changed": sum(exact[k][1] != recbole.get(k, (None, None))[1] for k in exact),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="SASRec", help="a sequential or general model")
    parser.add_argument("--normalize_all", choices=["both", "True", "False"], default="both")
    parser.add_argument("--lrrecsys", action="store_true", help="also the LR-Recsys samples")
    args = parser.parse_args(argv)
    settings = [True, False] if args.normalize_all == "both" else [args.normalize_all == "True"]
    print(
        f"{args.dataset}: {tied_latest_steps(args.dataset)} users' latest float32 time step "
        f"(raw timestamps) holds several true times"
    )
    for normalize_all in settings:
        counts = compare(args.model, args.dataset, normalize_all)
        print(
            f"{args.model} on {args.dataset}, normalize_all={normalize_all}: of "
            f"{counts['users']} users, RecBole's float32 order changes the test target of "
            f"{counts['test_targets_changed']}, the validation target of "
            f"{counts['valid_targets_changed']} and the test history of "
            f"{counts['test_histories_changed']}"
        )
    if args.lrrecsys:
        counts = lrrecsys_changes(args.dataset)
        print(
            f"LR-Recsys 40-user preset on {args.dataset}: of {counts['samples']} samples, "
            f"{counts['new_samples']} are new (a user's first view changed), "
            f"{counts['histories_changed']} have another history, "
            f"{counts['splits_changed']} another split (or are new)"
        )


if __name__ == "__main__":
    main()
