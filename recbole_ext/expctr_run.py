"""One ExpCTR run: its key, folder, stages, samples and the records it keeps (Yu et al., WSDM 2025).

A run is identified by its **key**, a hash of the settings that decide what it computes
(:func:`run_key`). Its files live in its **folder** ``<checkpoint_dir>/expctr-<key>/<stage>/``
(``generator.pt``: LoRA adapters, value head and PPO optimiser; ``ctr.pth``: the CTR model), and
everything it asked the LLM is a record of the LLM store (``llm_store_path``), kind -> key -> value:

- ``expctr:<key>:progress`` -> stage -> :class:`StageRecord` (JSON);
- ``expctr:<key>:<stage>:epoch<e>`` -> sample -> ``{"text", "reward"}`` (a PPO rollout);
- ``expctr:<key>:gen:<generator>`` -> sample -> explanation text (valid and test samples);
- ``expctr:<key>:llm_score:<generator>`` -> sample -> s_LC of that explanation (Eq. 8);
- ``expctr:<key>:icl_score:base`` -> sample -> zero-shot p(Yes) of the ICL history prompt;
- ``expctr:<key>:resample:<generator>:seed<s>`` -> sample -> ``{"text", "score"}``.

``<generator>`` names the PPO stage whose adapters wrote the text; ``init`` is the base LM with
its adapters off (π_init, the ICL explanations). Samples are keyed ``"<user token>|<item token>"``.

- :class:`StoredRun` reads a finished run from its store and folder alone (the report's view);
- :class:`ExpCTRRun` adds the settings: the stage names, the §5.1 samples as prompts, the
  generator π_φ (:class:`recbole_ext.rl.policy.LoRAPolicy`, loaded on first use) and every
  explanation and score through the store, generated only when missing; and resampling a saved
  generator's test explanations under a chosen seed (Fig. 4's shared sampling seeds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from recbole_ext.checkpoint import config_to_plain
from recbole_ext.config_sections import PROPERTIES_DIR, read_section
from recbole_ext.data.expctr_dataset import history_texts
from recbole_ext.data.item_text import item_texts
from recbole_ext.llm.config import LLMConfig, LoRASettings
from recbole_ext.llm.local_lm import load_local_lm
from recbole_ext.llm.prompts import (
    ExpCTRPromptWords,
    expctr_ctr_messages,
    expctr_explanation_messages,
    expctr_icl_messages,
)
from recbole_ext.llm.store import ResponseStore
from recbole_ext.model.context_aware_recommender.expctr import ExpCTRConfig
from recbole_ext.rl.policy import LoRAPolicy
from recbole_ext.rl.ppo import PPOConfig

FOLDER_PREFIX = "expctr-"
INIT = "init"  # the generator before any PPO stage: the base LM, adapters off
WIRING_HINT = (
    "ExpCTR needs its §5.1 samples: add `from recbole_ext.data.expctr_dataset import "
    "ExpCTRDataset` to recbole_ext/data/dataset.py (the registry finds <Model>Dataset there)."
)
# Config keys that change what a run computes (its key); paths and logging are left out.
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
MODEL_YAML = PROPERTIES_DIR / "model" / "ExpCTR.yaml"
TINY_PRESET_YAML = PROPERTIES_DIR / "preset" / "expctr_tiny.yaml"


def run_key(config) -> str:
    """Short hash of the settings that determine a run's stages (its resume identity).

    The preset enters the hash in the form runs were first keyed (:func:`preset_as_first_keyed`),
    so runs recorded before presets became yaml layers keep their keys: they resume, and their
    store records are found (benchmarks/results/expctr: the report reopens runs by key).
    """
    values = {k: config[k] for k in RUN_KEY_FIELDS if k in config}
    values.update(
        {k: v for k, v in config.final_config_dict.items() if k.startswith(RUN_KEY_PREFIXES)}
    )
    values.update(preset_as_first_keyed(config))
    text = json.dumps(config_to_plain(values), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def preset_as_first_keyed(config) -> dict[str, Any]:
    """The tiny preset as run keys first saw it: a mapping ``expctr_tiny_preset`` inside
    ExpCTR.yaml (present whatever the preset), applied only as the settings were read -- so under
    ``expctr_preset: tiny`` the hashed value of each key it sets was ExpCTR.yaml's, unless the
    user set the key. Now ``properties/preset/expctr_tiny.yaml`` holds that mapping as a layer."""

    def load(path: Path) -> dict[str, Any]:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=config.yaml_loader) or {}

    tiny = load(TINY_PRESET_YAML)
    values: dict[str, Any] = {"expctr_tiny_preset": tiny}
    if config["expctr_preset"] == "tiny":
        model, user = load(MODEL_YAML), config.external_config_dict
        values.update({key: model[key] for key in tiny if key not in user})
    return values


def stage_seed(name: str) -> int:
    """Seed offset of stage (or store kind) ``name``, added to the run's seed: each stage and
    each generator's explanations draw their own random numbers.

    >>> stage_seed("stage1_lc") == int(hashlib.sha256(b"stage1_lc").hexdigest()[:6], 16)
    True
    """
    return int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)


def stage_names(iterations: int, final_refit: bool) -> list[str]:
    """The stages in the order they run: stage 1, (stage 2, stage 3) x M, the final stage 2
    (with ``expctr_final_refit``, or when there is no iteration to train the CTR model).

    >>> stage_names(1, True)
    ['stage1_lc', 'iter0_stage2_ctr', 'iter0_stage3_ic', 'final_stage2_ctr']
    >>> stage_names(0, False)
    ['stage1_lc', 'final_stage2_ctr']
    """
    names = ["stage1_lc"]
    for m in range(iterations):
        names += [f"iter{m}_stage2_ctr", f"iter{m}_stage3_ic"]
    if final_refit or iterations == 0:
        names.append("final_stage2_ctr")
    return names


def is_ppo_stage(name: str) -> bool:
    """Stages 1 and 3 train the generator (PPO); stage 2 trains the CTR model."""
    return name.endswith(("_lc", "_ic"))


def run_folder(path: str | os.PathLike) -> Path:
    """``<checkpoint_dir>/expctr-<run key>`` holding ``path`` (a run's model file).

    >>> run_folder("/x/saved/expctr-18283d6dfe65/final_stage2_ctr/ctr.pth").name
    'expctr-18283d6dfe65'
    """
    for parent in Path(path).parents:
        if parent.name.startswith(FOLDER_PREFIX):
            return parent
    raise ValueError(f"{path} is not inside an {FOLDER_PREFIX}<run key> folder")


@dataclass(frozen=True)
class StageRecord:
    """A finished stage as its ``progress`` record; PPO and CTR stages fill different fields."""

    name: str
    seconds: float | None = None  # wall time of the stage as first run
    # PPO stages (1 and 3)
    epochs: int | None = None  # passes over the training samples
    trajectory: tuple[dict[str, Any], ...] = ()  # one row per PPO step (Fig. 3)
    mean_raw_reward_first_epoch: float | None = None
    mean_raw_reward_last_epoch: float | None = None
    # CTR stages (2)
    generator: str | None = None  # the PPO stage whose explanations trained the CTR model
    best_valid_score: float | None = None
    best_valid_result: dict[str, float] | None = None

    @classmethod
    def from_json(cls, name: str, value: Mapping[str, Any]) -> StageRecord:
        known = {f.name for f in fields(cls)} - {"name"}
        values = {k: v for k, v in value.items() if k in known}
        values["trajectory"] = tuple(values.get("trajectory", ()))
        return cls(name=name, **values)

    def to_json(self) -> dict[str, Any]:
        """The stored object: the fields that are set (a CTR stage has no trajectory).

        >>> StageRecord("iter0_stage2_ctr", 2.5, generator="stage1_lc").to_json()
        {'seconds': 2.5, 'generator': 'stage1_lc'}
        """
        values = {k: v for k, v in asdict(self).items() if v is not None and k != "name"}
        if self.epochs is None:
            values.pop("trajectory")
        else:
            values["trajectory"] = list(self.trajectory)
        return values


@dataclass(frozen=True)
class ExpCTRSample:
    """One (user, target) pair of a split with its prompts (internal ids, row of the split)."""

    key: str  # store key "<user token>|<item token>"
    user: int
    item: int
    row: int  # row in the split's interaction table
    label: int
    target_text: str
    prompt: list[dict[str, str]]  # §4.1 explanation prompt
    icl_prompt: list[dict[str, str]]  # the ICL baseline's history prompt
    dataset: Any = field(repr=False, compare=False)  # the split's dataset (feature lookup)


class StoredRun:
    """A run's records in ``store`` and its files in ``folder`` (``.../expctr-<key>``)."""

    def __init__(self, store: ResponseStore, folder: str | os.PathLike) -> None:
        self.store = store
        self.folder = Path(folder)
        if not self.folder.name.startswith(FOLDER_PREFIX):
            raise ValueError(f"{folder}: an ExpCTR run folder is named {FOLDER_PREFIX}<run key>")
        self.key = self.folder.name.removeprefix(FOLDER_PREFIX)

    @classmethod
    def of_model_file(cls, store: ResponseStore, model_file: str | os.PathLike) -> StoredRun:
        """The run whose model file is ``model_file`` (``model_file`` of a run's result)."""
        return cls(store, run_folder(model_file))

    def kind(self, *parts: str) -> str:
        """The store kind ``expctr:<key>:<parts...>`` (module docstring)."""
        return ":".join(("expctr", self.key, *parts))

    # -- stages ----------------------------------------------------------------------------------
    def stage(self, name: str) -> StageRecord | None:
        value = self.store.get_record(self.kind("progress"), name)
        return None if value is None else StageRecord.from_json(name, value)

    def stages(self) -> dict[str, StageRecord]:
        """Every finished stage, by name (in name order)."""
        return {
            name: StageRecord.from_json(name, value)
            for name, value in self.store.iter_records(self.kind("progress"))
        }

    def finish_stage(self, record: StageRecord) -> None:
        self.store.put_record(self.kind("progress"), record.name, record.to_json())

    def final_generator(self) -> str | None:
        """The PPO stage whose explanations trained the final CTR model (None: not finished)."""
        final = self.stage("final_stage2_ctr")
        return None if final is None else final.generator

    def generator_file(self, stage: str) -> Path:
        """The generator state saved at the end of ``stage``."""
        return self.folder / stage / "generator.pt"

    # -- records of texts ------------------------------------------------------------------------
    def put_rollout(self, stage: str, epoch: int, sample: str, text: str, reward: float) -> None:
        self.store.put_record(
            self.kind(stage, f"epoch{epoch}"), sample, {"text": text, "reward": reward}
        )

    def rollout_texts(self, stage: str, epoch: int) -> dict[str, str]:
        """``{sample: explanation}`` of the PPO rollouts of ``stage``'s epoch ``epoch``."""
        records = self.store.iter_records(self.kind(stage, f"epoch{epoch}"))
        return {sample: value["text"] for sample, value in records}

    def stored_explanations(self, generator: str) -> dict[str, str]:
        """``{sample: explanation}`` written by ``generator`` (valid and test samples)."""
        return dict(self.store.iter_records(self.kind("gen", generator)))


class ExpCTRRun(StoredRun):
    """The run of an ExpCTR ``config``: its settings, samples, generator and records.

    ``store`` (a ``ResponseStore``; default: ``llm_store_path``) and ``lm`` (``(model,
    tokenizer)``; default: ``expctr_lm_path`` loaded on first use) may be handed in.
    """

    def __init__(self, config, *, store: ResponseStore | None = None, lm=None) -> None:
        if store is None:
            store = ResponseStore(read_section(config, LLMConfig).store_path)
        folder = Path(config["checkpoint_dir"]) / f"{FOLDER_PREFIX}{run_key(config)}"
        super().__init__(store, folder)
        self.settings = read_section(config, ExpCTRConfig)
        self.ppo = read_section(config, PPOConfig)
        self.lora = read_section(config, LoRASettings)
        self.domain = ExpCTRPromptWords.named(self.settings.domain)
        self.seed: int = config["seed"]
        self.device = config["device"]
        self.item_text_fields = config["item_text_fields"]
        self.stage_names = stage_names(self.settings.iterations, self.settings.final_refit)
        self.generator = INIT  # the PPO stage whose adapters the generator holds
        self.policy: LoRAPolicy | None = None  # loaded by load_policy()
        self._lm = lm
        self._pending_state: str | None = None  # stage whose generator state awaits the LM
        self._item_text: list[str] | None = None

    def stage_seed(self, name: str) -> int:
        return self.seed + stage_seed(name)

    def finished_stages(self) -> list[str]:
        """The stages with a progress record, in the order they run."""
        done = self.stages()
        return [name for name in self.stage_names if name in done]

    def last_generator(self) -> str:
        """The last finished PPO stage (the generator the run ended with), else ``init``."""
        return ([INIT] + [n for n in self.finished_stages() if is_ppo_stage(n)])[-1]

    # -- samples ---------------------------------------------------------------------------------
    def samples(self, data) -> list[ExpCTRSample]:
        """The pairs of a split (RecBole dataloader) in the row order of its interaction table."""
        dataset = data.dataset
        if not hasattr(dataset, "expctr_history"):
            raise TypeError(WIRING_HINT)
        if self._item_text is None:
            self._item_text = item_texts(dataset, self.item_text_fields)
        inter = dataset.inter_feat
        users = inter[dataset.uid_field].tolist()
        items = inter[dataset.iid_field].tolist()
        labels = inter[dataset.label_field].tolist()
        samples = []
        for row, (user, item, label) in enumerate(zip(users, items, labels, strict=True)):
            liked, disliked, target = history_texts(
                dataset.expctr_history, self._item_text, user, item
            )
            samples.append(
                ExpCTRSample(
                    key=dataset.expctr_key(user, item),
                    user=user,
                    item=item,
                    row=row,
                    label=int(label),
                    target_text=target,
                    prompt=expctr_explanation_messages(liked, disliked, target, self.domain),
                    icl_prompt=expctr_icl_messages(liked, disliked, target, self.domain),
                    dataset=dataset,
                )
            )
        return samples

    # -- the generator π_φ -----------------------------------------------------------------------
    def load_policy(self) -> LoRAPolicy:
        """π_φ (the LM with adapters and value head), loaded on first use, at the state of the
        last :meth:`restore_generator`."""
        if self.policy is None:
            s = self.settings
            lm = self._lm or load_local_lm(s.lm_path, num_threads=s.lm_threads, device=self.device)
            self.policy = LoRAPolicy(
                lm,
                self.lora,
                self.ppo,
                seed=self.seed,
                device=self.device,
                pos_tokens=s.pos_tokens,
                neg_tokens=s.neg_tokens,
                lc_temperature=s.lc_temperature,
                lc_score_input=s.lc_score_input,
            )
        if self._pending_state is not None:
            stage, self._pending_state = self._pending_state, None
            if self.generator_file(stage).is_file():
                self.policy.restore(self.generator_file(stage))
        return self.policy

    def restore_generator(self, stage: str) -> None:
        """Put π_φ back to its state at the end of ``stage``: now if it is loaded, else when it
        is (a resumed run that never needs the LM never loads it)."""
        self._pending_state = stage
        if self.policy is not None:
            self.load_policy()

    def save_generator(self, stage: str) -> None:
        """Save π_φ's state as the end of ``stage`` (nothing when the LM was never loaded)."""
        if self.policy is not None:
            self.policy.save(self.generator_file(stage))

    # -- explanations and scores, through the store ---------------------------------------------
    def explanations(self, samples: list[ExpCTRSample], generator: str | None = None) -> list[str]:
        """Explanations of ``samples`` by ``generator`` (default: the one π_φ holds): from the
        store, else generated (sampled as in the rollouts; the chunk at ``start`` is seeded with
        ``seed + stage_seed(kind) + start``) and stored. ``init`` generates with adapters off;
        another generator must be the one in memory."""
        generator = generator or self.generator
        kind = self.kind("gen", generator)
        texts = [self.store.get_record(kind, s.key) for s in samples]
        missing = [i for i, t in enumerate(texts) if t is None]
        if not missing:
            return texts
        if generator not in (INIT, self.generator):
            raise ValueError(
                f"{len(missing)} samples have no stored explanation of {generator!r} (e.g. "
                f"{samples[missing[0]].key}): evaluate them with the run that trained it (same "
                "settings)."
            )
        policy = self.load_policy()
        size = self.settings.generation_batch_size
        with policy.reference() if generator == INIT else contextlib.nullcontext():
            for start in tqdm(
                range(0, len(missing), size),
                desc="explain",
                disable=True if len(missing) <= size else None,
            ):
                chunk = missing[start : start + size]
                torch.manual_seed(self.stage_seed(kind) + start)
                rollout = policy.generate([samples[i].prompt for i in chunk])
                for i, text in zip(chunk, rollout.texts, strict=True):
                    self.store.put_record(kind, samples[i].key, text)
                    texts[i] = text
        return texts

    def accumulated_explanations(self, samples: list[ExpCTRSample]) -> list[str]:
        """Stage 2's training texts (§4.3.2 "accumulate fresh explanations"): each pair's latest
        rollout explanation of the last PPO stage; pairs without one (no PPO stage yet) are
        explained by the current generator."""
        texts: list[str | None] = [None] * len(samples)
        if self.generator != INIT:
            s = self.settings
            epochs = s.lc_epochs if self.generator.endswith("_lc") else s.ic_epochs
            for epoch in reversed(range(epochs)):
                kind = self.kind(self.generator, f"epoch{epoch}")
                for i, sample in enumerate(samples):
                    if texts[i] is None:
                        record = self.store.get_record(kind, sample.key)
                        texts[i] = None if record is None else record["text"]
        missing = [i for i, t in enumerate(texts) if t is None]
        for i, text in zip(missing, self.explanations([samples[i] for i in missing]), strict=True):
            texts[i] = text
        return texts

    def lc_scores(
        self, samples: list[ExpCTRSample], texts: list[str], generator: str | None = None
    ) -> list[float]:
        """s_LC (Eq. 8) of ``texts``, the explanations of ``samples`` by ``generator`` (default:
        the one π_φ holds), through the store: the ExpCTR-LLM scores."""
        kind = self.kind("llm_score", generator or self.generator)
        return self._scores(
            kind,
            samples,
            lambda i: expctr_ctr_messages(texts[i], samples[i].target_text, self.domain),
        )

    def icl_scores(self, samples: list[ExpCTRSample]) -> list[float]:
        """The frozen LLM's zero-shot p(Yes) of each history prompt (ICL), through the store."""
        return self._scores(
            self.kind("icl_score", "base"), samples, lambda i: samples[i].icl_prompt
        )

    def explanations_of(
        self, samples: list[ExpCTRSample], generator: str
    ) -> tuple[list[str], list[float]]:
        """``(explanations, s_LC)`` of ``samples`` by the generator at the end of PPO stage
        ``generator`` (Table 2's case study); ``init``: the base LM, adapters off (ICL's
        explanations). Another stage's explanations must be stored unless π_φ holds it."""
        texts = self.explanations(samples, generator)
        return texts, self.lc_scores(samples, texts, generator)

    def _scores(
        self, kind: str, samples: list[ExpCTRSample], messages: Callable[[int], list]
    ) -> list[float]:
        scores = [self.store.get_record(kind, s.key) for s in samples]
        missing = [i for i, v in enumerate(scores) if v is None]
        size = self.settings.generation_batch_size
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            values = self.load_policy().yes_no_scores([messages(i) for i in chunk])
            for i, value in zip(chunk, values, strict=True):
                self.store.put_record(kind, samples[i].key, value)
                scores[i] = value
        return scores

    # -- resampling (Fig. 4's shared sampling seeds) ---------------------------------------------
    def sampling_seed(self, generator: str) -> int:
        """The seed with which :meth:`explanations` sampled ``generator``'s first chunk."""
        return self.stage_seed(self.kind("gen", generator))

    def resample(
        self, samples: list[ExpCTRSample], generator: str, seed: int
    ) -> tuple[list[str], list[float]]:
        """``(explanations, s_LC)`` of ``samples`` by the generator saved at the end of PPO stage
        ``generator``, sampled as :meth:`explanations` samples them (chunks of
        ``expctr_generation_batch_size``, ``torch.manual_seed(seed + chunk start)`` before each)
        but with ``seed`` chosen by the caller: with :meth:`sampling_seed` this reproduces the
        run's stored explanations; one seed for every run of a sweep compares their generators
        on common random numbers. Cached in the store (``resample:<generator>:seed<seed>``);
        when something must be generated, π_φ is left holding ``generator``."""
        kind = self.kind("resample", generator, f"seed{seed}")
        stored = [self.store.get_record(kind, s.key) for s in samples]
        if any(v is None for v in stored):
            if not self.generator_file(generator).is_file():
                raise FileNotFoundError(
                    f"{self.generator_file(generator)}: the generator of {generator!r} is needed "
                    "to resample; point checkpoint_dir at the run's checkpoint folder."
                )
            self.restore_generator(generator)
            policy, self.generator = self.load_policy(), generator
            size = self.settings.generation_batch_size
            for start in range(0, len(samples), size):
                chunk = samples[start : start + size]
                torch.manual_seed(seed + start)
                texts = policy.generate([s.prompt for s in chunk]).texts
                scores = policy.yes_no_scores(
                    [
                        expctr_ctr_messages(t, s.target_text, self.domain)
                        for s, t in zip(chunk, texts)
                    ]
                )
                for i, text, score in zip(range(start, start + len(chunk)), texts, scores):
                    stored[i] = {"text": text, "score": score}
                    self.store.put_record(kind, samples[i].key, stored[i])
        return [v["text"] for v in stored], [v["score"] for v in stored]
