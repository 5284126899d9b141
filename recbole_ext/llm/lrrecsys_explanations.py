"""LR-Recsys explanations: contrastive explanations and item profiles through the LLM (reply
cleaning, resumable batch generation into the response store; the prompts are
:class:`recbole_ext.llm.prompts.LRRecsysPrompts`).

Wang, Li, Chen, "The Blessing of Reasoning: LLM-Based Contrastive Explanations in Black-Box
Recommender Systems" -- §3.4.1 (positive / negative explanation per sample), §3.6 (CoT profile
augmentation, one profile per item), Appendix C.2.3 (the movie prompts, used for ml-100k) and
§5.4.2 (the history-summarisation variant). The generic ``product`` domain is §3.4.1 / §3.6
verbatim.

Everything an LLM returns goes through :class:`recbole_ext.llm.LLMClient`, so each request is
cached in the SQLite store; the cleaned texts are also written as store *records*
(``put_record``), keyed by the LLM model, the template version and a stable sample key. A rerun,
or a run resumed after an interruption, asks the LLM only for what has no record yet.

This module imports no model, trainer or dataset code.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from tqdm.auto import tqdm

from .client import LLMClient
from .prompts import (
    LRRECSYS_PROMPTS,
    LRRECSYS_TEMPLATE_VERSION,
    LRRecsysPrompts,
    lrrecsys_explanation_messages,
    lrrecsys_profile_messages,
)
from .store import ResponseStore

CLEANER_VERSION = "c2"  # reply cleaning: part of record keys only (a change re-reads the cache)
PROFILE_KIND = "lrrecsys.profile"
EXPLANATION_KIND = "lrrecsys.explanation"
POLARITIES = ("pos", "neg")
MODES = ("contrastive", "summary")


@dataclass
class ExplanationConfig:
    """Settings of explanation / profile generation (yaml keys ``lrrecsys_<field>`` of
    ``properties/model/LRRecsys.yaml``; ``mode`` is ``lrrecsys_explanation_mode``)."""

    YAML_PREFIX: ClassVar[str] = "lrrecsys_"
    YAML_FILE: ClassVar[str] = "model/LRRecsys.yaml"

    domain: str = field(metadata={"help": "Prompt set of Appendix C.2."})
    mode: str = field(
        metadata={
            "key": "lrrecsys_explanation_mode",
            "help": "'contrastive' (positive + negative, §3.4.1) or 'summary' (§5.4.2 ablation: "
            "one history summary used in both slots).",
        },
    )
    use_profiles: bool = field(
        metadata={"help": "CoT profile augmentation (§3.6); False = item texts."}
    )
    explanation_max_tokens: int = field(
        metadata={"help": "Token limit of one explanation (one sentence)."}
    )
    profile_max_tokens: int = field(metadata={"help": "Token limit of one item profile."})
    chunk_size: int = field(
        metadata={"help": "Samples per batch call; records are committed after each chunk."},
    )
    seconds_per_call: float = field(
        metadata={
            "help": "Dry-run estimate of one request's wall time (SmolLM2-135M, 1 CPU thread)."
        },
    )

    def __post_init__(self) -> None:
        if self.domain not in LRRECSYS_PROMPTS:
            raise ValueError(
                f"lrrecsys_domain={self.domain!r}: choose one of {sorted(LRRECSYS_PROMPTS)} "
                "(add an LRRecsysPrompts entry to LRRECSYS_PROMPTS in recbole_ext/llm/prompts.py "
                "for a new domain)."
            )
        if self.mode not in MODES:
            raise ValueError(f"lrrecsys_explanation_mode={self.mode!r}: choose one of {MODES}.")
        for name in ("explanation_max_tokens", "profile_max_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"lrrecsys_{name}={getattr(self, name)}: set at least 1.")
        if self.seconds_per_call <= 0:
            raise ValueError("lrrecsys_seconds_per_call: set a positive number of seconds.")

    @property
    def prompts(self) -> LRRecsysPrompts:
        return LRRECSYS_PROMPTS[self.domain]


@dataclass(frozen=True)
class SampleText:
    """What the explanation prompt of one sample needs: stable key, history and candidate."""

    key: str  # stable across runs, e.g. "user=196|item=242|t=881250949"
    history: tuple[str, ...]  # item keys, oldest first
    candidate: str  # item key


# -- pure functions ------------------------------------------------------------------------------
_LEAD = re.compile(r"^\s*(?:explanation|answer|reason|output)\s*:\s*", re.IGNORECASE)


def first_sentence(text: str) -> str:
    """Text up to the first ``.``/``!``/``?`` that is followed by a space and lies outside double
    quotes (movie titles such as "That Thing You Do!" end with punctuation).

    >>> first_sentence('He skipped "That Thing You Do!" because it is loud. Then he left.')
    'He skipped "That Thing You Do!" because it is loud.'
    """
    quoted = False
    for index, char in enumerate(text):
        if char in '"“”':
            quoted = not quoted
        elif char in ".!?" and not quoted and (index + 1 == len(text) or text[index + 1] == " "):
            return text[: index + 1]
    return text


def clean_reply(text: str, *, one_sentence: bool = True) -> str:
    """A reply as one line: drop a leading ``Explanation:``-style label, surrounding quotes and
    markdown, collapse whitespace, and keep the first sentence.

    >>> clean_reply('Explanation: "The consumer watched this movie because he likes Jaws.  '
    ...             'It is scary."')
    'The consumer watched this movie because he likes Jaws.'
    >>> clean_reply("  **The consumer did not\\nwatch it because...**  ")
    'The consumer did not watch it because...'
    >>> clean_reply("")
    ''
    """
    text = text.replace("**", "").replace("`", "")
    text = " ".join(text.split())
    text = _LEAD.sub("", text).strip()
    if len(text) > 1 and text[0] in '"“' and text[-1] in '"”' and text.count('"') <= 2:
        text = text[1:-1].strip()  # the whole reply in quotes
    if one_sentence:
        text = first_sentence(text).strip()
    return text


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words (the autoencoder's word ids, Appendix A.1).

    >>> tokenize("The consumer didn't watch Toy Story (1995).")
    ['the', 'consumer', "didn't", 'watch', 'toy', 'story', '1995']
    """
    return _WORD.findall(text.lower())


STOPWORDS = frozenset(
    "a an and are as at be because but by consumer did for from has have he her his in is it its "
    "likely may movie not of on or she that the their they this to was watch watched who with "
    "would product purchased past current".split()
)


def top_keywords(texts: Iterable[str], k: int = 8, stopwords=STOPWORDS) -> list[tuple[str, int]]:
    """The ``k`` most frequent non-stopword words of ``texts`` (§5.5.3 per-item insight).

    >>> top_keywords(["Great Thai food", "authentic thai dining", "the food"], k=2)
    [('thai', 2), ('food', 2)]
    """
    counts = Counter(w for t in texts for w in tokenize(t) if w not in stopwords and len(w) > 2)
    return counts.most_common(k)


def profile_record_key(model: str, item_key: str) -> str:
    return f"{LRRECSYS_TEMPLATE_VERSION}/{CLEANER_VERSION}|{model}|{item_key}"


def explanation_record_key(model: str, mode: str, use_profiles: bool, sample_key: str) -> str:
    prefix = (
        f"{LRRECSYS_TEMPLATE_VERSION}/{CLEANER_VERSION}|{model}|{mode}|profiles={int(use_profiles)}"
    )
    return f"{prefix}|{sample_key}"


@dataclass
class GenerationPlan:
    """What a generation run would do: missing profiles / explanations and LLM calls."""

    samples: int
    missing_profiles: int
    missing_explanations: int
    calls: int
    estimated_seconds: float

    def describe(self) -> str:
        minutes = self.estimated_seconds / 60
        return (
            f"LR-Recsys explanations: {self.samples} samples, {self.missing_explanations} without "
            f"explanations, {self.missing_profiles} item profiles missing -> {self.calls} LLM "
            f"calls, about {minutes:.1f} min at the configured lrrecsys_seconds_per_call"
        )


class ExplanationGenerator:
    """Profiles and contrastive explanations through an :class:`LLMClient` with a store.

    Args:
        client: the LLM client; its ``store`` holds the records that make generation resumable.
            ``None`` with ``store`` and ``llm_model`` given: planning only (the dry run starts no
            server).
        config: :class:`ExplanationConfig`.
        item_texts: item key -> text shown to the LLM (title, year, genres).
    """

    def __init__(
        self,
        client: LLMClient | None,
        config: ExplanationConfig,
        item_texts: Mapping[str, str],
        *,
        store: ResponseStore | None = None,
        llm_model: str | None = None,
    ) -> None:
        self.store = store if store is not None else getattr(client, "store", None)
        if self.store is None:
            raise ValueError(
                "LR-Recsys explanation generation needs the LLM response store (llm_store_path, "
                "default <checkpoint_dir>/llm_store.sqlite) to resume; got none."
            )
        self.client = client
        self.config = config
        self.item_texts = dict(item_texts)
        self.model = llm_model if client is None else client.config.model

    # -- lookups -----------------------------------------------------------------------------
    def _explanation_key(self, sample_key: str) -> str:
        cfg = self.config
        return explanation_record_key(self.model, cfg.mode, cfg.use_profiles, sample_key)

    def stored_explanation(self, sample_key: str) -> dict[str, str] | None:
        return self.store.get_record(EXPLANATION_KIND, self._explanation_key(sample_key))

    def stored_profile(self, item_key: str) -> str | None:
        return self.store.get_record(PROFILE_KIND, profile_record_key(self.model, item_key))

    def _items_of(self, samples: Sequence[SampleText]) -> list[str]:
        return list(dict.fromkeys(i for s in samples for i in (*s.history, s.candidate)))

    def plan(self, samples: Sequence[SampleText]) -> GenerationPlan:
        """Count the missing records and the calls they need (the dry run); calls nothing."""
        missing = [s for s in samples if self.stored_explanation(s.key) is None]
        profiles = 0
        if self.config.use_profiles:
            profiles = sum(self.stored_profile(i) is None for i in self._items_of(missing))
        per_sample = 1 if self.config.mode == "summary" else 2
        calls = profiles + per_sample * len(missing)
        return GenerationPlan(
            len(samples), profiles, len(missing), calls, calls * self.config.seconds_per_call
        )

    # -- generation --------------------------------------------------------------------------
    def profiles(self, item_keys: Sequence[str], progress: bool = True) -> dict[str, str]:
        """One profile per item (cached records); missing ones are generated in chunks."""
        result = {i: self.stored_profile(i) for i in item_keys}
        missing = [i for i, p in result.items() if p is None]
        bar = tqdm(
            total=len(missing), desc="LR-Recsys item profiles", disable=None if progress else True
        )
        prompts = self.config.prompts
        for start in range(0, len(missing), self.config.chunk_size):
            chunk = missing[start : start + self.config.chunk_size]
            replies = self.client.chat_batch(
                [lrrecsys_profile_messages(prompts, self.item_texts[i]) for i in chunk],
                template_version=LRRECSYS_TEMPLATE_VERSION,
                max_tokens=self.config.profile_max_tokens,
            )
            for item, reply in zip(chunk, replies, strict=True):
                text = clean_reply(reply.text, one_sentence=False) or self.item_texts[item]
                self.store.put_record(PROFILE_KIND, profile_record_key(self.model, item), text)
                result[item] = text
            bar.update(len(chunk))
        bar.close()
        return result

    def explanations(
        self,
        samples: Sequence[SampleText],
        progress: bool = True,
        on_chunk: Callable[[int], None] | None = None,
    ) -> dict[str, dict[str, str]]:
        """``{sample key: {"pos": text, "neg": text}}`` for every sample, generating the missing
        ones chunk by chunk (each chunk's records are committed before the next starts;
        ``on_chunk(done)`` is called after each, e.g. to stop a test midway)."""
        result: dict[str, dict[str, str]] = {}
        missing = []
        for sample in samples:
            stored = self.stored_explanation(sample.key)
            if stored is None:
                missing.append(sample)
            else:
                result[sample.key] = stored
        if not missing:
            return result
        if self.config.use_profiles:
            texts = self.profiles(self._items_of(missing), progress=progress)
        else:
            texts = self.item_texts
        prompts = self.config.prompts
        polarities = ("summary",) if self.config.mode == "summary" else POLARITIES
        bar = tqdm(
            total=len(missing), desc="LR-Recsys explanations", disable=None if progress else True
        )
        started, done = time.perf_counter(), 0
        for start in range(0, len(missing), self.config.chunk_size):
            chunk = missing[start : start + self.config.chunk_size]
            batch = [
                lrrecsys_explanation_messages(
                    prompts, polarity, [texts[i] for i in s.history], texts[s.candidate]
                )
                for s in chunk
                for polarity in polarities
            ]
            replies = self.client.chat_batch(
                batch,
                template_version=LRRECSYS_TEMPLATE_VERSION,
                max_tokens=self.config.explanation_max_tokens,
            )
            step = len(polarities)
            for index, sample in enumerate(chunk):
                own = [clean_reply(r.text) for r in replies[index * step : (index + 1) * step]]
                value = {"pos": own[0], "neg": own[-1]}
                self.store.put_record(EXPLANATION_KIND, self._explanation_key(sample.key), value)
                result[sample.key] = value
            done += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(s_per_sample=f"{(time.perf_counter() - started) / done:.2f}")
            if on_chunk is not None:
                on_chunk(done)
        bar.close()
        return result
