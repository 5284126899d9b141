"""``LRRecsysTrainer``: Algorithm 1 of LR-Recsys in order.

1. Explanation generator (lines 1-6): make sure every sample (train, valid and test) has a
   positive and a negative explanation in the durable store -- generated through the LLM client
   when missing (resumable, progress bar with ETA; ``lrrecsys_dry_run`` prints the number of calls
   and the estimated time and stops before spending them).
2. Autoencoder (line 7): vocabulary and training on the *training* explanations only (C.1), then
   AE(.) of every sample's two explanations into the model's buffers.
3. DNN (lines 8-24): RecBole's own ``fit`` loop (early stopping on the validation slice).

Only ``_before_fit`` (steps 1-2, the base trainer's hook before RecBole's ``fit``) and ``evaluate``
(adds the normalised regression metrics) are overridden.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recbole_ext.config_checks import ConfigError
from recbole_ext.config_sections import read_section
from recbole_ext.data.item_text import item_texts
from recbole_ext.data.lrrecsys_samples import TRAIN, SampleTable
from recbole_ext.llm.config import LLMConfig
from recbole_ext.llm.lrrecsys_explanations import (
    ExplanationConfig,
    ExplanationGenerator,
    tokenize,
)
from recbole_ext.llm.store import ResponseStore
from recbole_ext.model.context_aware_recommender.lrrecsys import (
    ExplanationAutoEncoder,
    MissingExplanationError,
    build_vocabulary,
    encode_words,
)
from recbole_ext.trainer import Trainer
from recbole_ext.trainer.stages import interactive

AE_OPTIMIZERS = {
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}


def train_autoencoder(
    autoencoder: ExplanationAutoEncoder,
    word_ids: torch.Tensor,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    optimizer: str,
    seed: int,
    show_progress: bool = False,
) -> list[float]:
    """Minimise Eq. 3 / 25 over ``word_ids`` (N, maxlen); returns the mean loss of each epoch."""
    if optimizer not in AE_OPTIMIZERS:
        raise ConfigError(
            f"lrrecsys_ae_optimizer={optimizer!r}: choose one of {list(AE_OPTIMIZERS)}"
        )
    generator = torch.Generator().manual_seed(seed)
    opt = AE_OPTIMIZERS[optimizer](autoencoder.parameters(), lr=learning_rate)
    losses = []
    autoencoder.train()
    for _ in tqdm(range(epochs), desc="LR-Recsys autoencoder", disable=not show_progress):
        order = torch.randperm(len(word_ids), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = word_ids[order[start : start + batch_size]]
            loss = autoencoder.reconstruction_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        losses.append(total / len(word_ids))
    autoencoder.eval()
    return losses


def autoencoder_cache_key(
    settings: dict, seed: int, pos: list[str], neg: list[str], train_mask: np.ndarray
) -> str:
    """sha256 of everything AE(.) depends on: AE settings, seed, texts and training rows."""
    payload = json.dumps(
        [settings, seed, pos, neg, np.asarray(train_mask, dtype=bool).tolist()],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class LRRecsysTrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.explanation_config = read_section(config, ExplanationConfig)
        self.dry_run = config["lrrecsys_dry_run"]  # (bool) print the plan, then stop
        self.generate_missing = config["lrrecsys_generate_missing"]  # (bool)
        self.ae_settings = {
            "max_words": config["lrrecsys_ae_max_words"],  # (int) 50
            "word_dim": config["lrrecsys_ae_word_dim"],  # (int) 8
            "hidden": config["lrrecsys_ae_hidden"],  # (list) [64, 8, 64]
            "learning_rate": config["lrrecsys_ae_learning_rate"],  # (float) 0.1
            "batch_size": config["lrrecsys_ae_batch_size"],  # (int) 128
            "epochs": config["lrrecsys_ae_epochs"],  # (int) 100
            "optimizer": config["lrrecsys_ae_optimizer"],  # (str)
            "min_count": config["lrrecsys_ae_min_count"],  # (int)
        }
        self.ae_cache = config["lrrecsys_ae_cache"]  # (bool) reuse AE(.) of identical inputs
        self.llm_usage: dict | None = None  # LLM accounting of the explanation step
        self.autoencoder_losses: list[float] = []
        self.explanations: dict[str, dict[str, str]] = {}
        self.show_bars = False  # progress bars of the stages before fit (prepare_explanations)

    # -- Algorithm 1, lines 1-7 -----------------------------------------------------------------
    def _before_fit(self, train_data, valid_data, verbose, show_progress):
        """Lines 1-7 before RecBole's ``fit`` (lines 8-24, the base class's)."""
        self.prepare_explanations(train_data._dataset, show_progress=show_progress)

    def prepare_explanations(self, dataset, client=None, show_progress: bool = True) -> None:
        """Explanations of every sample -> AE(.) (or sentence embeddings) in the model buffers.

        ``client`` is an :class:`~recbole_ext.llm.LLMClient` with a store (tests hand in one);
        by default a session on the configured endpoint is opened (the local server when
        ``llm_base_url`` is unset). ``show_progress``: bars for the LLM calls, the autoencoder and
        the sentence encoder, shown only when stderr is a terminal.
        """
        show_progress = show_progress and interactive()
        self.show_bars = show_progress
        if self.model.source == "free":
            self.logger.info("LRRecsys: free learnable vectors replace explanations (ablation 1)")
            return
        used = torch.from_numpy(dataset.samples.used())
        if bool(self.model.explained[used].all()):  # resumed from a checkpoint that carries them
            self.logger.info("LRRecsys: explanation embeddings already in the model")
            return
        samples: SampleTable = dataset.samples
        if client is None:
            llm = read_section(self.config, LLMConfig)
            with ResponseStore(llm.store_path) as store:
                if self.dry_run:  # plan from the store alone: no server, no request
                    self.plan_only(dataset, samples, store, llm.model)
                texts = self.stored_explanations(dataset, samples, store, llm.model)
            if texts is None:  # some are missing: open a session on the endpoint
                from recbole_ext.llm.serve import llm_session

                torch.set_num_threads(1)  # beside the llama.cpp server (see recbole_ext.llm.serve)
                with llm_session(llm, show_progress=False) as c:
                    texts = self.ensure_explanations(c, dataset, samples, show_progress)
        else:
            texts = self.ensure_explanations(client, dataset, samples, show_progress)
        used = samples.used()
        pos = [texts[samples.key(i)]["pos"] for i in used]
        neg = [texts[samples.key(i)]["neg"] for i in used]
        self.logger.info(
            f"LRRecsys explanations ready for {len(used)} samples "
            f"({sum(not t for t in pos + neg)} empty replies); LLM usage: {self.llm_usage}"
        )
        if self.model.source == "autoencoder":
            pos_emb, neg_emb = self.autoencode(pos, neg, samples.split[used] == TRAIN)
        else:
            pos_emb, neg_emb = self.sentence_embed(pos, neg)
        self.model.set_explanation_features(pos_emb, neg_emb, torch.from_numpy(used))

    def _generator(self, client, dataset, **store_and_model) -> ExplanationGenerator:
        tokens = dataset.field2id_token[dataset.iid_field]
        texts_by_id = item_texts(dataset, self.config["item_text_fields"])
        items = {str(tokens[i]): texts_by_id[i] for i in range(1, len(tokens))}
        return ExplanationGenerator(client, self.explanation_config, items, **store_and_model)

    def plan_only(self, dataset, samples: SampleTable, store, llm_model: str):
        """The dry run: print the number of LLM calls and the estimated time, then stop."""
        plan = self._generator(None, dataset, store=store, llm_model=llm_model).plan(
            samples.texts(samples.used())
        )
        if self.logger.isEnabledFor(logging.INFO):  # console and log file
            self.logger.info(plan.describe())
        else:  # state: WARNING or quieter
            print(plan.describe(), flush=True)
        raise SystemExit(0)

    def stored_explanations(self, dataset, samples: SampleTable, store, llm_model: str):
        """Every sample's explanations read from ``store`` alone (no server is started), or
        ``None`` when some record is missing."""
        generator = self._generator(None, dataset, store=store, llm_model=llm_model)
        sample_texts = samples.texts(samples.used())
        plan = generator.plan(sample_texts)
        if plan.calls:
            return None
        texts = generator.explanations(sample_texts, progress=False)
        self.llm_usage = {"requests": 0, "llm_model": llm_model, "records_read": len(texts)}
        self.explanations = texts
        return texts

    def ensure_explanations(self, client, dataset, samples: SampleTable, show_progress: bool):
        """Stored explanations of every sample, generating the missing ones."""
        generator = self._generator(client, dataset)
        sample_texts = samples.texts(samples.used())
        plan = generator.plan(sample_texts)
        self.logger.info(plan.describe())
        if self.dry_run:
            self.plan_only(dataset, samples, client.store, client.config.model)
        if plan.missing_explanations and not self.generate_missing:
            raise MissingExplanationError(
                f"{plan.missing_explanations} of {plan.samples} samples have no stored "
                "explanation and lrrecsys_generate_missing=False; set it to True (or point "
                "llm_store_path at the store that holds them)."
            )
        started = time.perf_counter()
        texts = generator.explanations(sample_texts, progress=show_progress)
        self.llm_usage = {
            **client.usage.as_dict(),
            "llm_model": client.config.model,
            "explanation_seconds": round(time.perf_counter() - started, 3),
            "planned_calls": plan.calls,
        }
        self.explanations = texts
        return texts

    def autoencode(self, pos: list[str], neg: list[str], train_mask: np.ndarray):
        """Vocabulary + AE training on training explanations; AE(.) of all samples (Alg. 1 l. 7).

        The result depends only on the texts, the training rows, the AE settings and the seed, so
        with ``lrrecsys_ae_cache`` it is saved under ``<checkpoint_dir>/lrrecsys_ae/`` and reused
        by runs that differ elsewhere (the task, the DNN's learning rate, ...).
        """
        seed = self.config["seed"]
        path = None
        if self.ae_cache:
            key = autoencoder_cache_key(self.ae_settings, seed, pos, neg, train_mask)
            path = Path(self.config["checkpoint_dir"]) / "lrrecsys_ae" / f"{key}.pt"
            if path.is_file():
                cached = torch.load(path, weights_only=True)
                self.autoencoder_losses, self.autoencoder = cached["losses"], None
                self.logger.info(f"LRRecsys autoencoder: AE(.) of every sample read from {path}")
                return cached["pos"], cached["neg"]
        pos_emb, neg_emb = self.train_and_encode(pos, neg, train_mask, seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {"pos": pos_emb, "neg": neg_emb, "losses": self.autoencoder_losses}
            torch.save(state, path)
        return pos_emb, neg_emb

    def train_and_encode(self, pos: list[str], neg: list[str], train_mask: np.ndarray, seed: int):
        """Train a fresh AE (initialised and shuffled from ``seed``) and encode every sample."""
        s = self.ae_settings
        pos_words, neg_words = [tokenize(t) for t in pos], [tokenize(t) for t in neg]
        train_idx = np.flatnonzero(train_mask)
        train_sentences = [pos_words[i] for i in train_idx] + [neg_words[i] for i in train_idx]
        vocabulary = build_vocabulary(train_sentences, s["min_count"])
        with torch.random.fork_rng(devices=[]):  # initialised from `seed` alone
            torch.manual_seed(seed)
            autoencoder = ExplanationAutoEncoder(
                len(vocabulary), s["max_words"], s["word_dim"], s["hidden"]
            )
        ids = encode_words(train_sentences, vocabulary, s["max_words"])
        self.autoencoder_losses = train_autoencoder(
            autoencoder,
            ids,
            epochs=s["epochs"],
            learning_rate=s["learning_rate"],
            batch_size=s["batch_size"],
            optimizer=s["optimizer"],
            seed=seed,
            show_progress=self.show_bars,
        )
        self.logger.info(
            f"LRRecsys autoencoder: vocabulary {len(vocabulary)}, {len(ids)} training sentences, "
            f"loss {self.autoencoder_losses[0]:.3f} -> {self.autoencoder_losses[-1]:.3f}"
        )
        with torch.no_grad():
            pos_emb = autoencoder.encode(encode_words(pos_words, vocabulary, s["max_words"]))
            neg_emb = autoencoder.encode(encode_words(neg_words, vocabulary, s["max_words"]))
        self.autoencoder = autoencoder
        return pos_emb, neg_emb  # (N, 8) each

    def sentence_embed(self, pos: list[str], neg: list[str]):
        """C.5 Ablation 2: sentence-encoder embeddings of the explanations, no autoencoder."""
        from recbole_ext.llm.encoder import SentenceEncoder

        llm = read_section(self.config, LLMConfig)
        encoder = SentenceEncoder(llm.encoder, batch_size=llm.encoder_batch_size)
        return (
            torch.from_numpy(encoder.encode(pos, show_progress=self.show_bars)),
            torch.from_numpy(encoder.encode(neg, show_progress=self.show_bars)),
        )

    # -- normalised regression metrics ----------------------------------------------------------
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if self.model.task == "regression" and result is not None:
            span = self.model.rating_max - self.model.rating_min
            for name in ("rmse", "mae"):
                if name in result:
                    result[f"{name}_normalised"] = result[name] / span
        return result
