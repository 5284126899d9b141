"""ExpCTR's three-stage training (Yu et al., WSDM 2025, §4.3.2) around RecBole's own ``fit``.

1. **LC alignment** (Eq. 14): PPO on the LoRA generator π_φ (:class:`~recbole_ext.rl.policy.
   LoRAPolicy`) with ``R = R_LC^norm`` -- the frozen base model (adapters off) reads each
   explanation in the §4.2.2 CTR prompt, Eq. 8-10. Every rollout's explanation is kept
   ("accumulated").
2. **CTR model training** (Eq. 15): the explanations of the latest PPO stage (training samples) and
   of the current generator (validation samples) are encoded (Eq. 11) and given to the ``ExpCTR``
   model; RecBole's ``fit`` trains it (early stopping on valid AUC).
3. **IC alignment** (Eq. 16): PPO with ``R = R_IC^norm`` (Eq. 13) from the trained CTR model.

Stages 2-3 repeat ``expctr_iterations`` times; with ``expctr_final_refit`` a last stage 2 trains the
CTR model on the final generator's explanations. ``evaluate`` (test) reports **ExpCTR-Aug** (the
CTR model with explanation features: ``auc``, ``logloss``, ``mae``, ``rmse``), **ExpCTR-LLM**
(``llm_*``: the LC scorer on the final generator's explanations) and **ICL** (``icl_*``: the frozen
LLM's zero-shot p(Yes) from the history prompt).

The trainer orchestrates; the run (:class:`~recbole_ext.expctr_run.ExpCTRRun`: key, folder, stage
names, samples, generator, store records) keeps the state. Resume: every explanation, LC score and
stage-end marker is a record in the LLM store; each finished stage also leaves the generator state
and the CTR checkpoint under ``<checkpoint_dir>/expctr-<run key>/<stage>/``. A rerun with the same
settings skips finished stages (loading the last one's state) and asks the LLM nothing it has
answered; an interrupted stage restarts from the previous stage's state with the same seeds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.utils import set_color
from tqdm.auto import tqdm

from recbole_ext.checkpoint import load_checkpoint, restore_model, save_checkpoint
from recbole_ext.config_checks import ConfigError
from recbole_ext.config_sections import read_section
from recbole_ext.expctr_results import ctr_metrics, mean, write_reward_trajectory
from recbole_ext.expctr_run import ExpCTRRun, ExpCTRSample, StageRecord, is_ppo_stage
from recbole_ext.llm.config import LLMConfig
from recbole_ext.llm.prompts import expctr_ctr_messages
from recbole_ext.rl import ic_reward, lc_reward, normalize_and_clip
from recbole_ext.trainer import Trainer


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
        self.run = ExpCTRRun(config, store=store, lm=lm)
        run = self.run
        self.logger.info(
            set_color("ExpCTR settings", "green") + f": {run.settings}\n{run.ppo}\n{run.lora}"
        )
        self._encoder = encoder
        self._resume_from: str | None = None  # last stage skipped on resume, state not loaded
        self._fitting_ctr = False
        self._z: dict[str, tuple[int, int, np.ndarray]] = {}  # sample key -> (user, item, z)
        self.stage_log: list[tuple[str, str]] = []  # (stage, "ran" | "resumed")
        self.trajectory: list[dict[str, Any]] = []  # one row per PPO step (Fig. 3)
        self.stage_seconds: dict[str, float | None] = {}  # wall time of each stage (as first run)

    @property
    def generate_calls(self) -> int:
        """Generation batches run (0 on a fully resumed run: the LM never loads)."""
        return 0 if self.run.policy is None else self.run.policy.generate_calls

    @property
    def score_calls(self) -> int:
        """Yes/No scoring batches run."""
        return 0 if self.run.policy is None else self.run.policy.score_calls

    @property
    def encoder(self):
        """f_encoder of Eq. 11 (a ``SentenceEncoder``), loaded on first use."""
        if self._encoder is None:
            from recbole_ext.llm.encoder import SentenceEncoder

            llm = read_section(self.config, LLMConfig)
            self._encoder = SentenceEncoder(llm.encoder, batch_size=llm.encoder_batch_size)
        if self._encoder.dimension != self.run.settings.explanation_dim:
            raise ConfigError(
                f"the sentence encoder gives {self._encoder.dimension}-d vectors but "
                f"expctr_explanation_dim={self.run.settings.explanation_dim}: set them equal."
            )
        return self._encoder

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
        train, valid = self.run.samples(train_data), self.run.samples(valid_data)
        s = self.run.settings
        fit_args = (train_data, valid_data, verbose, show_progress, callback_fn)
        record = None
        for name in self.run.stage_names:
            if name.endswith("_lc"):  # stage 1: R = R_LC^norm (Eq. 14)
                self._stage(name, lambda n=name: self._align(n, train, "lc", s.lc_epochs))
            elif name.endswith("_ic"):  # stage 3: R = R_IC^norm (Eq. 16)
                self._stage(name, lambda n=name: self._align(n, train, "ic", s.ic_epochs))
            else:  # stage 2: the CTR model on the explanations (Eq. 15)
                record = self._stage(name, lambda: self._fit_ctr(train, valid, *fit_args))
        if self._resume_from is not None:  # every stage was done: load the last one's state
            self._restore_all(self._resume_from)
            self._resume_from = None
        if self.trajectory:
            write_reward_trajectory(self.trajectory, self.run.folder)
        return record.best_valid_score, record.best_valid_result

    def _stage(self, name: str, body) -> StageRecord:
        """Run stage ``name`` (``body()`` returns its record's values) unless the store marks it
        done; either way its state is current."""
        done = self.run.stage(name)
        if done is not None:
            self.stage_log.append((name, "resumed"))
            self.logger.info(set_color(f"ExpCTR {name}", "yellow") + ": done earlier, resumed")
            self._resume_from = name
            self._note_stage(done)
            self.trajectory.extend(done.trajectory)
            return done
        if self._resume_from is not None:
            self._restore_all(self._resume_from)
            self._resume_from = None
        start = time.perf_counter()
        self.logger.info(set_color(f"ExpCTR {name}", "green") + ": start")
        torch.manual_seed(self.run.stage_seed(name))
        values = body()
        record = StageRecord(name, seconds=round(time.perf_counter() - start, 3), **values)
        self._save_stage(name)
        self._note_stage(record)
        self.run.finish_stage(record)
        self.stage_log.append((name, "ran"))
        self.logger.info(set_color(f"ExpCTR {name}", "green") + f": done in {record.seconds}s")
        return record

    def _note_stage(self, record: StageRecord) -> None:
        if is_ppo_stage(record.name):
            self.run.generator = record.name
        self.stage_seconds[record.name] = record.seconds

    # =========================================================================================
    # Stages 1 and 3: PPO alignment
    # =========================================================================================
    def _align(self, stage: str, samples: list[ExpCTRSample], reward: str, epochs: int) -> dict:
        policy = self.run.load_policy()
        if reward == "ic":
            self.model.eval()
        rng = np.random.default_rng(self.run.stage_seed(stage))
        generator = torch.Generator().manual_seed(self.run.stage_seed(stage))
        size = self.run.ppo.batch_size
        step = 0
        for epoch in range(epochs):
            order = rng.permutation(len(samples))
            batches = [order[i : i + size] for i in range(0, len(order), size)]
            progress = tqdm(
                batches, desc=f"{stage} epoch {epoch}", disable=True if len(batches) < 2 else None
            )
            for index in progress:
                batch = [samples[i] for i in index]
                # 1. rollout from π_φ
                rollout = policy.generate([b.prompt for b in batch])
                # 2. R(Z): Eq. 9 (LC) or Eq. 13 (IC), then Eq. 10
                rewards = self._lc_rewards if reward == "lc" else self._ic_rewards
                raw = rewards(batch, rollout.texts)
                scores = normalize_and_clip(raw, self.run.ppo.reward_clip)
                # 3. PPO update (Eq. 7)
                stats = policy.step(rollout, scores, generator)
                for b, text, r in zip(batch, rollout.texts, raw, strict=True):
                    self.run.put_rollout(stage, epoch, b.key, text, r)
                row = {"stage": stage, "reward": reward, "epoch": epoch, "step": step}
                row.update({"raw_reward": float(np.mean(raw)), **stats})
                self.trajectory.append(row)
                progress.set_postfix(reward=f"{row['raw_reward']:.3f}", kl=f"{stats['kl']:.3f}")
                step += 1
        rows = [r for r in self.trajectory if r["stage"] == stage]
        return {
            "epochs": epochs,
            "trajectory": tuple(rows),
            "mean_raw_reward_first_epoch": mean([r["raw_reward"] for r in rows if r["epoch"] == 0]),
            "mean_raw_reward_last_epoch": mean(
                [r["raw_reward"] for r in rows if r["epoch"] == epochs - 1]
            ),
        }

    def _lc_rewards(self, batch: list[ExpCTRSample], texts: list[str]) -> list[float]:
        """Eq. 8-9 with the frozen base model reading each explanation in the CTR prompt."""
        messages = [
            expctr_ctr_messages(t, b.target_text, self.run.domain)
            for b, t in zip(batch, texts, strict=True)
        ]
        return lc_reward([b.label for b in batch], self.run.load_policy().yes_no_scores(messages))

    def _ic_rewards(self, batch: list[ExpCTRSample], texts: list[str]) -> list[float]:
        """Eq. 11-13: encode the explanations, score the CTR model with and without them."""
        s_r, s_tilde = self.ic_scores(batch, texts)
        return ic_reward([b.label for b in batch], s_r, s_tilde)

    def ic_scores(
        self, batch: list[ExpCTRSample], texts: list[str]
    ) -> tuple[list[float], list[float]]:
        """``(s^r, s~^r)`` of the CTR model for the batch's pairs with ``texts`` as explanations."""
        z = torch.from_numpy(self.encoder.encode(texts)).to(self.device)  # (B, d) Eq. 11
        rows = torch.tensor([b.row for b in batch])
        interaction = batch[0].dataset[rows].to(self.device)  # joined with user/item features
        self.model.eval()
        s_r, s_tilde = self.model.scores_with_and_without(interaction, z)
        return s_r.tolist(), s_tilde.tolist()

    # =========================================================================================
    # Stage 2: CTR model on the explanations (Eq. 15), through RecBole's fit
    # =========================================================================================
    def _fit_ctr(self, train, valid, train_data, valid_data, verbose, show_progress, callback):
        texts = self.run.accumulated_explanations(train) + self.run.explanations(valid)
        self._set_explanations(train + valid, texts)
        # a fresh CTR fit: new optimiser, best score and checkpoint file for this stage
        self.optimizer = self._build_optimizer()
        self.best_valid_score, self.best_valid_result = -np.inf, None
        self.cur_step, self.start_epoch = 0, 0
        self.saved_model_file = str(self.run.folder / "ctr.pth")
        Path(self.saved_model_file).unlink(missing_ok=True)  # never an earlier stage's model
        self._fitting_ctr = True
        try:
            score, result = super().fit(
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
            "generator": self.run.generator,
        }

    def _set_explanations(self, samples: list[ExpCTRSample], texts: list[str]) -> None:
        """z of Eq. 11 for ``samples`` (kept with every pair seen before) into the CTR model."""
        vectors = self.encoder.encode(texts)  # (N, d) Eq. 11
        for sample, vector in zip(samples, vectors, strict=True):
            self._z[sample.key] = (sample.user, sample.item, vector)
        users, items, z = zip(*self._z.values(), strict=True)
        self.model.set_explanations(
            torch.tensor(users), torch.tensor(items), torch.from_numpy(np.stack(z))
        )

    # =========================================================================================
    # Evaluation: ExpCTR-Aug (RecBole's metrics), ExpCTR-LLM and ICL
    # =========================================================================================
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if self._fitting_ctr:  # RecBole's per-epoch validation inside stage 2
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        samples = self.run.samples(eval_data)
        texts = self.run.explanations(samples)  # the final generator's explanations
        self._set_explanations(samples, texts)
        result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        labels = [s.label for s in samples]
        llm = self.run.lc_scores(samples, texts)
        result.update({f"llm_{k}": v for k, v in ctr_metrics(labels, llm).items()})
        if self.run.settings.icl_baseline:
            icl = self.run.icl_scores(samples)
            result.update({f"icl_{k}": v for k, v in ctr_metrics(labels, icl).items()})
        self.logger.info(set_color("ExpCTR", "green") + f" (Aug / LLM / ICL): {dict(result)}")
        return result

    # =========================================================================================
    # Stage state: the generator (the run's) and the CTR checkpoint
    # =========================================================================================
    def _save_stage(self, name: str) -> None:
        self.run.save_generator(name)
        (self.run.folder / name).mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.run.folder / name / "ctr.pth", self.model, config=self.config)

    def _restore_all(self, name: str) -> None:
        """Load the CTR model and the generator saved at the end of ``name``."""
        ctr = self.run.folder / name / "ctr.pth"
        restore_model(self.model, load_checkpoint(ctr, self.device))
        self.saved_model_file = str(ctr)
        self.run.restore_generator(name)
