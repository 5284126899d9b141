"""ExpCTR's three-stage training (Yu et al., WSDM 2025, §4.3.2) around RecBole's own ``fit``.

1. **LC alignment** (Eq. 14): PPO (``recbole_ext.rl.ppo``) on the LoRA generator with
   ``R = R_LC^norm`` -- the frozen base model (adapters off) reads each explanation in the §4.2.2
   CTR prompt, Eq. 8-10. Every rollout's explanation is kept ("accumulated").
2. **CTR model training** (Eq. 15): the explanations of the latest PPO stage (training samples) and
   of the current generator (validation samples) are encoded (Eq. 11) and given to the ``ExpCTR``
   model; RecBole's ``fit`` trains it (early stopping on valid AUC).
3. **IC alignment** (Eq. 16): PPO with ``R = R_IC^norm`` (Eq. 13) from the trained CTR model.

Stages 2-3 repeat ``expctr_iterations`` times; with ``expctr_final_refit`` a last stage 2 trains the
CTR model on the final generator's explanations. ``evaluate`` (test) reports **ExpCTR-Aug** (the
CTR model with explanation features: ``auc``, ``logloss``, ``mae``, ``rmse``), **ExpCTR-LLM**
(``llm_*``: the LC scorer on the final generator's explanations) and **ICL** (``icl_*``: the frozen
LLM's zero-shot p(Yes) from the history prompt).

Resume: every explanation, LC score and stage-end marker is a record in the LLM store
(``llm_store_path``); each finished stage also leaves its LoRA adapters, value head, PPO optimiser
and CTR checkpoint under ``<checkpoint_dir>/expctr-<run key>/<stage>/``. A rerun with the same
settings skips finished stages (loading the last one's state) and asks the LLM nothing it has
answered; an interrupted stage restarts from the previous stage's state with the same seeds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.utils import set_color
from tqdm.auto import tqdm

from recbole_ext.config import config_to_plain
from recbole_ext.data.expctr_dataset import history_texts
from recbole_ext.data.item_text import item_texts
from recbole_ext.llm.config import LLMConfig
from recbole_ext.llm.local_lm import first_token_ids, reference_mode, yes_no_logprobs
from recbole_ext.llm.store import ResponseStore
from recbole_ext.rl import (
    PromptDomain,
    ctr_messages,
    explanation_messages,
    ic_reward,
    icl_messages,
    lc_reward,
    lc_score,
    normalize_and_clip,
)
from recbole_ext.rl.config import ExpCTRConfig, lora_settings, ppo_config
from recbole_ext.trainer import Trainer
from recbole_ext.utils import load_checkpoint, restore_model, save_checkpoint

WIRING_HINT = (
    "ExpCTR needs its §5.1 samples: add `from recbole_ext.data.expctr_dataset import "
    "ExpCTRDataset` to recbole_ext/data/dataset.py (the registry finds <Model>Dataset there)."
)
# Config keys that change what a run computes (its resume key); paths and logging are left out.
RUN_KEY_FIELDS = (
    "dataset",
    "seed",
    "threshold",
    "eval_args",
    "item_text_fields",
    "embedding_size",
    "mlp_hidden_size",
    "dropout_prob",
    "learning_rate",
    "epochs",
    "stopping_step",
    "train_batch_size",
    "llm_encoder",
)
RUN_KEY_PREFIXES = ("expctr_", "ppo_", "lora_")


def ctr_metrics(labels, scores) -> dict[str, float]:
    """AUC, LogLoss, MAE, RMSE as RecBole computes them (LogLoss clipped at 1e-15).

    >>> ctr_metrics([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6])["auc"]
    0.75
    """
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) and len(neg):  # Mann-Whitney: P(score_pos > score_neg), ties count half
        greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        auc = float(greater / (len(pos) * len(neg)))
    else:
        auc = float("nan")
    clipped = np.clip(s, 1e-15, 1 - 1e-15)
    logloss = float(np.mean(-y * np.log(clipped) - (1 - y) * np.log(1 - clipped)))
    return {
        "auc": auc,
        "logloss": logloss,
        "mae": float(np.mean(np.abs(y - s))),
        "rmse": float(np.sqrt(np.mean((y - s) ** 2))),
    }


def run_key(config) -> str:
    """Short hash of the settings that determine a run's stages (its resume identity)."""
    values = {k: config[k] for k in RUN_KEY_FIELDS if k in config}
    values.update(
        {k: v for k, v in config.final_config_dict.items() if k.startswith(RUN_KEY_PREFIXES)}
    )
    text = json.dumps(config_to_plain(values), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ExpCTRTrainer(Trainer):
    """RecBole trainer of the ``ExpCTR`` CTR model, extended in front of ``fit`` by stages 1 and 3.

    Collaborators may be handed in (tests): ``lm=(model, tokenizer)`` -- a causal LM that gets the
    LoRA adapters --, ``encoder`` (a ``SentenceEncoder``) and ``store`` (a ``ResponseStore``).
    """

    # read by recbole_ext.tune, which refuses the model before Ray starts
    tune_unsupported = (
        "ExpCTR cannot run under --tune: (1) its CTR checkpoint is "
        "<checkpoint_dir>/expctr-<run key>/ctr.pth, not the *.pth the harness looks for at the "
        "top of a trial's directory; (2) its test metrics need the trained generator (the test "
        "explanations), which testing a saved CTR model cannot restore; (3) the valid AUC it "
        "reports per CTR epoch starts again at each stage 2, so ASHA could stop a trial in its "
        "final refit. Run the beta/delta grid (Fig. 4) as a benchmark suite instead: python "
        "run_recbole_ext.py --benchmark --suite=properties/benchmark/expctr_sensitivity.yaml "
        "--output=DIR, then python benchmarks/expctr_report.py sensitivity"
    )

    def __init__(self, config, model, *, lm=None, encoder=None, store=None):
        super().__init__(config, model)
        self.settings = ExpCTRConfig.from_recbole_config(config)
        self.ppo = ppo_config(config)
        self.lora = lora_settings(config)
        self.domain = PromptDomain.named(self.settings.domain)
        self.logger.info(
            set_color("ExpCTR settings", "green") + f": {self.settings}\n{self.ppo}\n{self.lora}"
        )
        self.run_key = run_key(config)
        self.run_dir = Path(config["checkpoint_dir"]) / f"expctr-{self.run_key}"
        self._lm, self._encoder, self._store = lm, encoder, store
        self.policy = self.tokenizer = self.value_head = self.ppo_optimizer = None
        self.generator_version = "init"  # the PPO stage whose adapters the generator holds
        self._resume_from = None  # last stage skipped on resume whose saved state is not loaded
        self._pending_generator = None  # stage whose generator state awaits the LM being loaded
        self._fitting_ctr = False
        self._z: dict[str, np.ndarray] = {}  # sample key -> explanation vector given to the model
        self.stage_log: list[tuple[str, str]] = []  # (stage, "ran" | "resumed")
        self.trajectory: list[dict[str, Any]] = []  # one row per PPO step (Fig. 3)
        self.stage_seconds: dict[str, float] = {}  # wall time of each stage (as first run)
        self.generate_calls = 0  # generation batches run (0 on a fully resumed run)
        self.score_calls = 0  # Yes/No scoring batches run

    # =========================================================================================
    # Collaborators, loaded on first use
    # =========================================================================================
    @property
    def store(self) -> ResponseStore:
        if self._store is None:
            self._store = ResponseStore(LLMConfig.from_recbole_config(self.config).store_path)
        return self._store

    @property
    def encoder(self):
        if self._encoder is None:
            from recbole_ext.llm.encoder import SentenceEncoder

            llm = LLMConfig.from_recbole_config(self.config)
            self._encoder = SentenceEncoder(llm.encoder, batch_size=llm.encoder_batch_size)
        if self._encoder.dimension != self.settings.explanation_dim:
            raise ValueError(
                f"the sentence encoder gives {self._encoder.dimension}-d vectors but "
                f"expctr_explanation_dim={self.settings.explanation_dim}: set them equal."
            )
        return self._encoder

    def _ensure_policy(self) -> None:
        """π_φ = the local LM with LoRA adapters (+ value head), at the last finished stage."""
        if self.policy is None:
            from recbole_ext.llm.local_lm import add_lora, load_local_lm
            from recbole_ext.rl.ppo import ValueHead, make_optimizer

            if self._lm is None:
                self._lm = load_local_lm(
                    self.settings.lm_path, num_threads=self.settings.lm_threads, device=self.device
                )
            base, self.tokenizer = self._lm
            # seeded on its own so that loading the LM late (on resume) leaves the run's RNG alone
            with torch.random.fork_rng():
                torch.manual_seed(self.config["seed"])
                self.policy = add_lora(base, self.lora)
                self.value_head = ValueHead(base.config.hidden_size).to(self.device)
            self.policy.eval()  # no dropout in rollouts or updates; gradients still flow
            self.ppo_optimizer = make_optimizer(self.policy, self.value_head, self.ppo)
            self._token_ids = {
                "pos": first_token_ids(self.tokenizer, self.settings.pos_tokens),
                "neg": first_token_ids(self.tokenizer, self.settings.neg_tokens),
            }
        if self._pending_generator is not None:
            self._restore_generator(self._pending_generator)
            self._pending_generator = None

    # =========================================================================================
    # fit: stage 1, then (stage 2, stage 3) x M, then the final stage 2
    # =========================================================================================
    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        if valid_data is None:
            raise ValueError("ExpCTR trains its CTR model with early stopping: keep a valid split")
        train = self._samples(train_data)
        valid = self._samples(valid_data)
        s = self.settings
        fit_args = (train_data, valid_data, verbose, show_progress, callback_fn)

        self._stage("stage1_lc", lambda: self._align("stage1_lc", train, "lc", s.lc_epochs))
        result = None
        for m in range(s.iterations):
            result = self._stage(f"iter{m}_stage2_ctr", self._ctr_stage(train, valid, *fit_args))
            name = f"iter{m}_stage3_ic"
            self._stage(name, lambda name=name: self._align(name, train, "ic", s.ic_epochs))
        if s.final_refit or result is None:
            result = self._stage("final_stage2_ctr", self._ctr_stage(train, valid, *fit_args))
        if self._resume_from is not None:  # every stage was done: load the last one's state
            self._restore_all(self._resume_from)
            self._resume_from = None
        self._write_trajectory()
        return result["best_valid_score"], result["best_valid_result"]

    def _stage(self, name: str, run) -> dict[str, Any]:
        """Run stage ``name`` unless the store marks it done; either way its state is current."""
        kind = f"expctr:{self.run_key}:progress"
        done = self.store.get_record(kind, name)
        if done is not None:
            self.stage_log.append((name, "resumed"))
            self.logger.info(set_color(f"ExpCTR {name}", "yellow") + ": done earlier, resumed")
            self._resume_from = name
            self._note_stage_result(name, done)
            self.trajectory.extend(done.get("trajectory", []))
            return done
        if self._resume_from is not None:
            self._restore_all(self._resume_from)
            self._resume_from = None
        start = time.perf_counter()
        self.logger.info(set_color(f"ExpCTR {name}", "green") + ": start")
        torch.manual_seed(self.config["seed"] + _stage_seed(name))
        result = run() or {}
        result["seconds"] = round(time.perf_counter() - start, 3)
        self._save_stage(name)
        self._note_stage_result(name, result)
        self.store.put_record(kind, name, result)
        self.stage_log.append((name, "ran"))
        self.logger.info(set_color(f"ExpCTR {name}", "green") + f": done in {result['seconds']}s")
        return result

    def _note_stage_result(self, name: str, result: dict[str, Any]) -> None:
        if name.endswith(("_lc", "_ic")):
            self.generator_version = name
        self.stage_seconds[name] = result.get("seconds")

    # =========================================================================================
    # Stages 1 and 3: PPO alignment
    # =========================================================================================
    def _align(self, stage: str, samples: list[dict], reward: str, epochs: int) -> dict:
        from recbole_ext.rl.ppo import generate_responses, ppo_step

        self._ensure_policy()
        if reward == "ic":
            self.model.eval()
        rng = np.random.default_rng(self.config["seed"] + _stage_seed(stage))
        generator = torch.Generator().manual_seed(self.config["seed"] + _stage_seed(stage))
        step = 0
        for epoch in range(epochs):
            order = rng.permutation(len(samples))
            batches = [
                order[i : i + self.ppo.batch_size]
                for i in range(0, len(order), self.ppo.batch_size)
            ]
            progress = tqdm(batches, desc=f"{stage} epoch {epoch}", disable=len(batches) < 2)
            for index in progress:
                batch = [samples[i] for i in index]
                # 1. rollout from π_φ
                rollout = generate_responses(
                    self.policy, self.tokenizer, [b["prompt"] for b in batch], self.ppo
                )
                self.generate_calls += 1
                # 2. R(Z): Eq. 9 (LC) or Eq. 13 (IC), then Eq. 10
                raw = (self._lc_rewards if reward == "lc" else self._ic_rewards)(
                    batch, rollout.texts
                )
                scores = normalize_and_clip(raw, self.ppo.reward_clip)
                # 3. PPO update (Eq. 7)
                stats = ppo_step(
                    self.policy,
                    self.value_head,
                    self.ppo_optimizer,
                    rollout,
                    scores,
                    self.ppo,
                    generator,
                )
                for b, text, r in zip(batch, rollout.texts, raw, strict=True):
                    self.store.put_record(
                        f"expctr:{self.run_key}:{stage}:epoch{epoch}",
                        b["key"],
                        {"text": text, "reward": r},
                    )
                row = {"stage": stage, "reward": reward, "epoch": epoch, "step": step}
                row.update({"raw_reward": float(np.mean(raw)), **stats})
                self.trajectory.append(row)
                progress.set_postfix(reward=f"{row['raw_reward']:.3f}", kl=f"{stats['kl']:.3f}")
                step += 1
        self.generator_version = stage
        rows = [r for r in self.trajectory if r["stage"] == stage]
        return {
            "epochs": epochs,
            "trajectory": rows,
            "mean_raw_reward_first_epoch": _mean(
                [r["raw_reward"] for r in rows if r["epoch"] == 0]
            ),
            "mean_raw_reward_last_epoch": _mean(
                [r["raw_reward"] for r in rows if r["epoch"] == epochs - 1]
            ),
        }

    def _lc_rewards(self, batch: list[dict], texts: list[str]) -> list[float]:
        """Eq. 8-9 with the frozen base model reading each explanation in the CTR prompt."""
        scores = self._yes_no_scores(
            [
                ctr_messages(t, b["target_text"], self.domain)
                for b, t in zip(batch, texts, strict=True)
            ]
        )
        return lc_reward([b["label"] for b in batch], scores)

    def _ic_rewards(self, batch: list[dict], texts: list[str]) -> list[float]:
        """Eq. 11-13: encode the explanations, score the CTR model with and without them."""
        s_r, s_tilde = self.ic_scores(batch, texts)
        return ic_reward([b["label"] for b in batch], s_r, s_tilde)

    def ic_scores(self, batch: list[dict], texts: list[str]) -> tuple[list[float], list[float]]:
        """``(s^r, s~^r)`` of the CTR model for the batch's pairs with ``texts`` as explanations."""
        z = torch.from_numpy(self.encoder.encode(texts)).to(self.device)  # (B, d) Eq. 11
        interaction = self._interaction(batch)
        self.model.eval()
        s_r, s_tilde = self.model.scores_with_and_without(interaction, z)
        return s_r.tolist(), s_tilde.tolist()

    @torch.no_grad()
    def _yes_no_scores(self, messages_batch: list[list[dict]]) -> list[float]:
        """Eq. 8 from the frozen base model's first-token log-probabilities (left-padded batch)."""
        self._ensure_policy()
        with reference_mode(self.policy):
            yes, no = yes_no_logprobs(
                self.policy,
                self.tokenizer,
                messages_batch,
                self._token_ids["pos"],
                self._token_ids["neg"],
            )  # (B,), (B,)
        if self.settings.lc_score_input == "prob":
            yes, no = yes.exp(), no.exp()
        self.score_calls += 1
        return lc_score(yes.tolist(), no.tolist(), self.settings.lc_temperature)

    # =========================================================================================
    # Stage 2: CTR model on the explanations (Eq. 15), through RecBole's fit
    # =========================================================================================
    def _ctr_stage(self, train, valid, train_data, valid_data, verbose, show_progress, callback):
        def run():
            train_texts = self._accumulated_explanations(train)
            valid_texts = self._explanations(valid)
            self._set_explanations(train + valid, train_texts + valid_texts)
            # a fresh CTR fit: new optimiser, best score and checkpoint file for this stage
            self.optimizer = self._build_optimizer()
            self.best_valid_score, self.best_valid_result = -np.inf, None
            self.cur_step, self.start_epoch = 0, 0
            self.saved_model_file = str(self.run_dir / "ctr.pth")
            Path(self.saved_model_file).unlink(missing_ok=True)  # never an earlier stage's model
            self._fitting_ctr = True
            try:
                score, result = super(ExpCTRTrainer, self).fit(
                    train_data, valid_data, verbose, True, show_progress, callback
                )
            finally:
                self._fitting_ctr = False
            if not Path(self.saved_model_file).is_file():
                # no epoch improved on -inf: the valid metric was NaN (AUC of a one-class valid
                # split, e.g. a tiny expctr_max_samples); RecBole saved nothing, keep the last epoch
                self.logger.warning(
                    set_color("ExpCTR", "red") + ": the CTR model's valid metric never improved "
                    f"(valid result {result}); keeping its last epoch"
                )
                save_checkpoint(self.saved_model_file, self.model, config=self.config)
            restore_model(self.model, load_checkpoint(self.saved_model_file, self.device))
            return {
                "best_valid_score": float(score),
                "best_valid_result": {k: float(v) for k, v in (result or {}).items()},
                "generator": self.generator_version,
            }

        return run

    def _accumulated_explanations(self, samples: list[dict]) -> list[str]:
        """The latest rollout explanation of each training pair from the last PPO stage; pairs
        without one (no PPO stage yet) are explained by the current generator."""
        stage = self.generator_version
        texts: list[str | None] = [None] * len(samples)
        if stage != "init":
            epochs = self.settings.lc_epochs if stage.endswith("_lc") else self.settings.ic_epochs
            for epoch in reversed(range(epochs)):
                kind = f"expctr:{self.run_key}:{stage}:epoch{epoch}"
                for i, sample in enumerate(samples):
                    if texts[i] is None:
                        record = self.store.get_record(kind, sample["key"])
                        texts[i] = None if record is None else record["text"]
        missing = [i for i, t in enumerate(texts) if t is None]
        if missing:
            for i, t in zip(
                missing, self._explanations([samples[i] for i in missing]), strict=True
            ):
                texts[i] = t
        return texts

    def _explanations(self, samples: list[dict]) -> list[str]:
        """Explanations of ``samples`` by the current generator: from the store, else generated
        (sampled at ``ppo_temperature`` as in the rollouts, seeded per batch) and stored."""
        kind = f"expctr:{self.run_key}:gen:{self.generator_version}"
        texts = [self.store.get_record(kind, s["key"]) for s in samples]
        missing = [i for i, t in enumerate(texts) if t is None]
        if missing:
            from recbole_ext.rl.ppo import generate_responses

            self._ensure_policy()
            size = self.settings.generation_batch_size
            for start in tqdm(
                range(0, len(missing), size), desc="explain", disable=len(missing) <= size
            ):
                chunk = missing[start : start + size]
                torch.manual_seed(self.config["seed"] + _stage_seed(kind) + start)
                rollout = generate_responses(
                    self.policy, self.tokenizer, [samples[i]["prompt"] for i in chunk], self.ppo
                )
                self.generate_calls += 1
                for i, text in zip(chunk, rollout.texts, strict=True):
                    self.store.put_record(kind, samples[i]["key"], text)
                    texts[i] = text
        return texts

    def _set_explanations(self, samples: list[dict], texts: list[str]) -> None:
        vectors = self.encoder.encode(texts)  # (N, d) Eq. 11
        for sample, vector in zip(samples, vectors, strict=True):
            self._z[sample["key"]] = vector
        keys = list(self._z)
        users = torch.tensor([self._pairs[k][0] for k in keys])
        items = torch.tensor([self._pairs[k][1] for k in keys])
        self.model.set_explanations(
            users, items, torch.from_numpy(np.stack([self._z[k] for k in keys]))
        )

    # =========================================================================================
    # Evaluation: ExpCTR-Aug (RecBole's metrics), ExpCTR-LLM and ICL
    # =========================================================================================
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if self._fitting_ctr:  # RecBole's per-epoch validation inside stage 2
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        samples = self._samples(eval_data)
        texts = self._explanations(samples)  # the final generator's explanations
        self._set_explanations(samples, texts)
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        labels = [s["label"] for s in samples]
        llm = self._cached_scores("llm", samples, texts)
        result.update({f"llm_{k}": v for k, v in ctr_metrics(labels, llm).items()})
        if self.settings.icl_baseline:
            icl = self._cached_scores("icl", samples, None)
            result.update({f"icl_{k}": v for k, v in ctr_metrics(labels, icl).items()})
        self.logger.info(set_color("ExpCTR", "green") + f" (Aug / LLM / ICL): {dict(result)}")
        return result

    def explanations_of(self, samples: list[dict], generator: str) -> tuple[list[str], list[float]]:
        """Explanations of ``samples`` by the generator at the end of PPO stage ``generator`` and
        their LC scores (Eq. 8), through the store (Table 2's case study).

        ``"init"`` is the base LM with its adapters disabled: the explanations of ICL. Another
        stage's explanations must be stored already (its run evaluated them) unless it is the
        generator in memory.
        """
        kind = f"expctr:{self.run_key}:gen:{generator}"
        missing = [s["key"] for s in samples if self.store.get_record(kind, s["key"]) is None]
        if missing and generator not in ("init", self.generator_version):
            raise ValueError(
                f"{len(missing)} samples have no stored explanation of {generator!r} (e.g. "
                f"{missing[0]}): evaluate them with the run that trained it (same settings)."
            )
        current, self.generator_version = self.generator_version, generator
        try:
            if generator == "init" and missing:
                self._ensure_policy()
                with reference_mode(self.policy):
                    texts = self._explanations(samples)
            else:
                texts = self._explanations(samples)
            scores = self._cached_scores("llm", samples, texts)
        finally:
            self.generator_version = current
        return texts, scores

    def _cached_scores(
        self, what: str, samples: list[dict], texts: list[str] | None
    ) -> list[float]:
        """LC scores of explanations (``llm``) or zero-shot ICL scores, through the store."""
        version = self.generator_version if what == "llm" else "base"
        kind = f"expctr:{self.run_key}:{what}_score:{version}"
        scores = [self.store.get_record(kind, s["key"]) for s in samples]
        missing = [i for i, v in enumerate(scores) if v is None]
        size = self.settings.generation_batch_size
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            if what == "llm":
                messages = [
                    ctr_messages(texts[i], samples[i]["target_text"], self.domain) for i in chunk
                ]
            else:
                messages = [samples[i]["icl_prompt"] for i in chunk]
            for i, value in zip(chunk, self._yes_no_scores(messages), strict=True):
                self.store.put_record(kind, samples[i]["key"], value)
                scores[i] = value
        return scores

    # =========================================================================================
    # Samples, interactions, persistence
    # =========================================================================================
    def _samples(self, data) -> list[dict]:
        """Prompts, labels and keys of a split's samples (row order of its interaction table)."""
        dataset = data._dataset
        if not hasattr(dataset, "expctr_history"):
            raise TypeError(WIRING_HINT)
        if not hasattr(self, "_item_text"):
            self._item_text = item_texts(dataset, self.config["item_text_fields"])
            self._pairs: dict[str, tuple[int, int]] = {}
        inter = dataset.inter_feat
        users = inter[dataset.uid_field].tolist()
        items = inter[dataset.iid_field].tolist()
        labels = inter[dataset.label_field].tolist()
        samples = []
        for row, (user, item, label) in enumerate(zip(users, items, labels, strict=True)):
            liked_text, disliked_text, target = history_texts(
                dataset.expctr_history, self._item_text, user, item
            )
            key = dataset.expctr_key(user, item)
            self._pairs[key] = (user, item)
            samples.append(
                {
                    "key": key,
                    "row": row,
                    "dataset": dataset,
                    "label": int(label),
                    "target_text": target,
                    "prompt": explanation_messages(liked_text, disliked_text, target, self.domain),
                    "icl_prompt": icl_messages(liked_text, disliked_text, target, self.domain),
                }
            )
        return samples

    def _interaction(self, batch: list[dict]):
        dataset = batch[0]["dataset"]
        rows = torch.tensor([b["row"] for b in batch])
        return dataset[rows].to(self.device)  # joined with user/item features

    def _save_stage(self, name: str) -> None:
        directory = self.run_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        if self.policy is not None:
            adapters = {
                n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad
            }
            torch.save(
                {
                    "adapters": adapters,
                    "value_head": self.value_head.state_dict(),
                    "optimizer": self.ppo_optimizer.state_dict(),
                },
                directory / "generator.pt",
            )
        save_checkpoint(directory / "ctr.pth", self.model, config=self.config)

    def _restore_all(self, name: str) -> None:
        """Load the CTR model and (when in memory) the generator saved at the end of ``name``."""
        ctr = self.run_dir / name / "ctr.pth"
        restore_model(self.model, load_checkpoint(ctr, self.device))
        self.saved_model_file = str(ctr)
        if self.policy is not None:
            self._restore_generator(name)
        else:  # restored by _ensure_policy if the LM is ever needed
            self._pending_generator = name

    def _restore_generator(self, name: str) -> None:
        path = self.run_dir / name / "generator.pt"
        if path.is_file():
            state = torch.load(path, map_location=self.device, weights_only=True)
            params = dict(self.policy.named_parameters())
            with torch.no_grad():
                for n, value in state["adapters"].items():
                    params[n].copy_(value)
            self.value_head.load_state_dict(state["value_head"])
            self.ppo_optimizer.load_state_dict(state["optimizer"])

    def _write_trajectory(self) -> None:
        """Fig. 3: mean raw LC / IC reward per PPO step, as CSV and PNG in the run directory."""
        if not self.trajectory:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fields = list(dict.fromkeys(k for row in self.trajectory for k in row))
        with open(self.run_dir / "reward_trajectory.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.trajectory)
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            return
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for axis, reward in zip(axes, ("lc", "ic"), strict=True):
            rows = [r for r in self.trajectory if r["reward"] == reward]
            axis.plot(range(len(rows)), [r["raw_reward"] for r in rows], marker="o")
            axis.set_title(f"{reward.upper()} alignment reward")
            axis.set_xlabel("PPO step")
            axis.set_ylabel("mean raw reward")
        fig.tight_layout()
        fig.savefig(self.run_dir / "reward_trajectory.png", dpi=120)
        plt.close(fig)


def _stage_seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)


def _mean(values) -> float:
    return float(np.mean(values)) if values else math.nan
