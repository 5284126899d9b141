"""``ExpCTRDataset``: RecBole's dataset reduced to ExpCTR's §5.1 samples.

Before RecBole binarises the rating (``threshold: {rating: 4}``), the interaction table is cut to
the sampled targets (:func:`recbole_ext.data.expctr_samples.build_samples`) and each target's
liked/disliked history is kept in ``dataset.expctr_history[(user, item)]`` (internal ids; the
history is prompt text, not a model feature). The time field only orders the history and is
dropped afterwards, so the CTR model sees user/item ids and side features, as the paper's DeepFM.

The same class gives the Table-1 baselines ExpCTR's samples and split: with the overrides of
:func:`same_samples_overrides` (``dataset_class: ExpCTRDataset`` and the resolved sample settings),
any RecBole CTR model, TALLRec included, trains and is tested on exactly ExpCTR's rows of a seed.
For sequential CTR models (DIN, DIEN) the history is also RecBole's behaviour sequence:
``item_id_list`` (oldest first, zero-padded to ``MAX_ITEM_LIST_LENGTH``), ``item_length`` and
DIEN's ``neg_item_id_list``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType, ModelType

from recbole_ext.config_sections import read_section
from recbole_ext.data.expctr_samples import (
    ExpCTRSampleConfig,
    build_samples,
    negative_sequences,
    padded_sequences,
    sample_key,
)

# Settings of a user's config that decide the samples or the split, copied as the user gave them.
SPLIT_KEYS = ("data_path", "eval_args", "threshold", "load_col")


def same_samples_overrides(config: Any) -> dict[str, Any]:
    """Overrides under which any CTR model sees the §5.1 samples and 8:1:1 split of the ExpCTR
    ``config`` -- for the seed it is run with (pass the same ``seed``).

    The sample settings are those of ExpCTR's merged config (its preset applied) written out, so
    the baseline's config needs no ExpCTR preset.
    """
    settings = read_section(config, ExpCTRSampleConfig)
    given = getattr(config, "external_config_dict", {}) or {}
    overrides = {key: given[key] for key in SPLIT_KEYS if key in given}
    overrides.update(
        {
            "dataset_class": "ExpCTRDataset",
            "eval_protocol": config["eval_protocol"],
            "expctr_targets_per_user": settings.targets_per_user,
            "expctr_max_history": settings.max_history,
            "expctr_max_samples": settings.max_samples,
            "MAX_ITEM_LIST_LENGTH": max(1, settings.max_history),  # DIN / DIEN sequence length
        }
    )
    return overrides


def history_texts(
    history: Mapping[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]],
    item_text: list[str],
    user: int,
    item: int,
) -> tuple[list[str], list[str], str]:
    """``(liked, disliked, target)`` item texts of the sample ``(user, item)`` (internal ids) from a
    dataset's ``expctr_history``."""
    liked, disliked = history[(user, item)]
    return [item_text[i] for i in liked], [item_text[i] for i in disliked], item_text[item]


class ExpCTRDataset(Dataset):
    def _set_label_by_threshold(self):
        threshold = self.config["threshold"]
        if not threshold or len(threshold) != 1:
            raise ValueError(
                "ExpCTR binarises ratings: set threshold: {rating: 4} (the ctr protocol does)."
            )
        ((rating_field, value),) = threshold.items()
        if self.time_field is None or self.time_field not in self.inter_feat:
            raise ValueError("ExpCTR orders histories by time: load the timestamp column.")
        settings = read_section(self.config, ExpCTRSampleConfig)
        feat = self.inter_feat
        samples = build_samples(
            feat[self.uid_field].to_numpy(),
            feat[self.iid_field].to_numpy(),
            feat[rating_field].to_numpy(),
            feat[self.time_field].to_numpy(),
            targets_per_user=settings.targets_per_user,
            max_history=settings.max_history,
            threshold=value,
            rng=np.random.default_rng(self.config["seed"]),
            max_samples=settings.max_samples,
        )
        self.inter_feat = feat.iloc[[s.row for s in samples]].reset_index(drop=True)
        self.expctr_history = {(s.user, s.item): (s.liked, s.disliked) for s in samples}
        if self.config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            self._add_sequence_fields([s.history for s in samples])
        super()._set_label_by_threshold()
        self._del_col(self.inter_feat, self.time_field)

    def _add_sequence_fields(self, histories: list[tuple[int, ...]]) -> None:
        """DIN / DIEN: the history as ``item_id_list``, ``item_length``, ``neg_item_id_list``."""
        length = self.config["MAX_ITEM_LIST_LENGTH"]  # (int) padded sequence length
        item_list = self.iid_field + self.config["LIST_SUFFIX"]
        neg_list = self.config["NEG_PREFIX"] + item_list
        lists, lengths = padded_sequences(histories, length)  # (N, L), (N,)
        # a generator of its own: the split's shuffle (global RNG) stays as for ExpCTR
        negatives = negative_sequences(
            lists, self.item_num, np.random.default_rng([self.config["seed"], 1])
        )
        for name, values in ((item_list, lists), (neg_list, negatives)):
            self.inter_feat[name] = list(values)
            self.set_field_property(name, FeatureType.TOKEN_SEQ, FeatureSource.INTERACTION, length)
        length_field = self.config["ITEM_LIST_LENGTH_FIELD"]
        self.inter_feat[length_field] = lengths
        self.set_field_property(length_field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)

    def expctr_key(self, user: int, item: int) -> str:
        """Store key of an internal (user, item) pair."""
        return sample_key(
            str(self.field2id_token[self.uid_field][user]),
            str(self.field2id_token[self.iid_field][item]),
        )
