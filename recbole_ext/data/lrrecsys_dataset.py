"""``LRRecsysDataset``: RecBole's sequential dataset carrying LR-Recsys samples (§5.1).

Each interaction (user, item, rating, timestamp) becomes one sample with the user's last
``MAX_ITEM_LIST_LENGTH`` (5) items before it (RecBole's data augmentation; a user's first
interaction has no history and is not a sample), plus the fields the model reads:

- ``label``: 1.0 when ``rating >= 4`` (RecBole's ``threshold: {rating: 4}``; classification, high
  4-5 vs low 1-3). Unlike RecBole, the rating column is kept for the regression task. With
  ``lrrecsys_task=regression`` the label holds the rating rescaled to [0, 1] instead, the target
  of RecBole's CTR models (sigmoid + BCE); LRRecsys itself regresses ``rating`` directly;
- ``lrrecsys_hour``, ``lrrecsys_weekday``: context ids from the raw timestamp (token fields of 24
  and 7 values, so RecBole's context-aware models embed them too);
- ``sample_id``: row of :attr:`samples` (a :class:`~recbole_ext.data.lrrecsys_samples.SampleTable`
  shared by the train/valid/test copies), which the model uses to look up explanation embeddings.

Every model gets these samples through ``properties/protocol/lrrecsys.yaml``
(``dataset_class: LRRecsysDataset``), so RecBole's baselines (DeepFM, DIN, ...) train and are
tested on exactly LRRecsys's rows. :meth:`fields` hides ``sample_id`` and the history length from
the models' feature lists: they are bookkeeping, not features (the history itself,
``item_id_list``, stays a feature).
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_ext.data.lrrecsys_samples import (
    HOURS,
    UNSPLIT,
    WEEKDAYS,
    SampleTable,
    cap_user_interactions,
    context_ids,
    rescale_ratings,
    select_users,
)

SAMPLE_ID = "sample_id"
HOUR = "lrrecsys_hour"
WEEKDAY = "lrrecsys_weekday"


class LRRecsysDataset(SequentialDataset):
    def __init__(self, config):
        # Read once: subset preset and the label rule.
        self.max_users = config["lrrecsys_max_users"]  # (int|None) users kept (seeded draw)
        self.max_user_interactions = config["lrrecsys_max_user_interactions"]  # (int|None)
        self.subset_seed = config["lrrecsys_subset_seed"]  # (int) draw of the user subset
        self.train_fraction = config["lrrecsys_train_fraction"]  # (float) Table 3: share kept
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"lrrecsys_train_fraction={self.train_fraction}: set 0 < f <= 1.")
        self.rating_field = config["RATING_FIELD"]
        if config["normalize_all"] or self.rating_field in (config["normalize_field"] or []):
            raise ValueError(
                "LRRecsys keeps ratings on their own scale (it reports RMSE/MAE on both the 1-5 "
                "and the normalised scale itself): set --normalize_all=False and leave "
                f"{self.rating_field!r} out of normalize_field."
            )
        self.threshold = config["threshold"]  # (dict|None) {field: value}: label = field >= value
        if self.threshold is not None and len(self.threshold) != 1:
            raise ValueError(f"threshold={self.threshold}: give one field, e.g. {{'rating': 4}}.")
        self.task = config["lrrecsys_task"]  # (str) regression: label = rating rescaled to [0, 1]
        self.rating_range = config["lrrecsys_rating_range"]  # (list) [min, max] rating
        super().__init__(config)

    def fields(self, ftype=None, source=None):
        """RecBole's field list with only the features every model may read.

        Hidden: ``sample_id`` and the history length (bookkeeping), and the histories RecBole's
        augmentation adds for every other field (``rating_list``, ``lrrecsys_hour_list``, ...):
        of the history, LRRecsys reads the items only, and so do the baselines.
        """
        suffix = self.config["LIST_SUFFIX"]
        item_history = self.config["ITEM_ID_FIELD"] + suffix
        return [
            f
            for f in super().fields(ftype, source)
            if f not in (SAMPLE_ID, self.item_list_length_field)
            and (f == item_history or not f.endswith(suffix))
        ]

    # -- subset preset (before ids are remapped) ------------------------------------------------
    def _data_filtering(self):
        super()._data_filtering()
        if self.max_users is None and self.max_user_interactions is None:
            return
        frame = self.inter_feat
        users = select_users(frame[self.uid_field].to_numpy(), self.max_users, self.subset_seed)
        frame = frame[frame[self.uid_field].isin(users)]
        frame = cap_user_interactions(
            frame, self.uid_field, self.time_field, self.max_user_interactions
        )
        self.inter_feat = frame.reset_index(drop=True)
        self.logger.info(
            f"LRRecsys subset: {len(users)} users, {len(self.inter_feat)} interactions "
            f"(lrrecsys_max_users={self.max_users}, "
            f"lrrecsys_max_user_interactions={self.max_user_interactions})"
        )

    # -- derived fields (RecBole's label step, keeping the rating; runs before normalisation) -----
    def _set_label_by_threshold(self):
        frame = self.inter_feat
        label = self.config["LABEL_FIELD"]
        if label != self.rating_field and self.task == "regression":  # RecBole's CTR models
            frame[label] = rescale_ratings(frame[self.rating_field].to_numpy(), *self.rating_range)
            self.set_field_property(label, FeatureType.FLOAT, FeatureSource.INTERACTION, 1)
        elif self.threshold is not None and label != self.rating_field:
            ((field, value),) = self.threshold.items()
            frame[label] = (frame[field] >= value).astype(np.float32)
            self.set_field_property(label, FeatureType.FLOAT, FeatureSource.INTERACTION, 1)
        hour, weekday = context_ids(frame[self.time_field].to_numpy())
        frame[HOUR], frame[WEEKDAY] = hour, weekday
        for name, size in ((HOUR, HOURS), (WEEKDAY, WEEKDAYS)):
            self.set_field_property(name, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
            tokens = np.arange(size).astype(str)  # ids are the values themselves: 0..size-1
            self.field2id_token[name] = tokens
            self.field2token_id[name] = {token: i for i, token in enumerate(tokens)}

    # -- samples -----------------------------------------------------------------------------
    def data_augmentation(self):
        super().data_augmentation()
        n = len(self.inter_feat)
        self.inter_feat.update(Interaction({SAMPLE_ID: torch.arange(n)}))
        self.set_field_property(SAMPLE_ID, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
        item_tokens = self.field2id_token[self.iid_field]
        # The history holds item ids: context-aware models size its (token-sequence) embedding
        # table by the item vocabulary.
        self.field2id_token[self.item_id_list_field] = item_tokens
        self.field2token_id[self.item_id_list_field] = self.field2token_id[self.iid_field]
        user_tokens = self.field2id_token[self.uid_field]
        item_list = self.inter_feat[self.item_id_list_field].numpy()  # (N, L) right-padded
        lengths = self.inter_feat[self.item_list_length_field].numpy()  # (N,)
        item_ids = self.inter_feat[self.iid_field].numpy()
        self.samples = SampleTable(
            users=user_tokens[self.inter_feat[self.uid_field].numpy()],
            items=item_tokens[item_ids],
            item_ids=item_ids,
            timestamps=self.inter_feat[self.time_field].numpy(),
            histories=[
                tuple(item_tokens[row[:length]].tolist())
                for row, length in zip(item_list, lengths, strict=True)
            ],
            split=np.full(n, UNSPLIT, dtype=np.int8),
        )

    def build(self):
        datasets = super().build()
        if self.train_fraction < 1.0:  # learning efficiency (Table 3): a seeded share of train
            train = datasets[0]
            rng = np.random.default_rng(self.config["seed"])
            keep = np.sort(
                rng.permutation(len(train))[: max(1, round(self.train_fraction * len(train)))]
            )
            datasets[0] = train.copy(train.inter_feat[torch.from_numpy(keep)])
        for split, part in enumerate(datasets):
            self.samples.split[part.inter_feat[SAMPLE_ID].numpy()] = split
        self.logger.info(f"LRRecsys samples per split: {self.samples.split_sizes()}")
        return datasets
