"""Pure functions that turn LLM replies into values.

- :func:`extract_json` -- first JSON (or Python-literal) value in a reply, fences and prose allowed.
- :func:`parse_ranking` -- an ordering of candidate ids from a JSON object/list, a Python-like list,
  RankGPT's ``[3] > [1] > [2]``, numbered lines, or bare ids in the text.
- :func:`repair_permutation` -- RankGPT's post-processing (Sun et al., "Is ChatGPT Good at Search?",
  EMNLP 2023, ``clean_response``/``remove_duplicate``): keep first occurrences, drop unknown ids,
  append the missing candidates in their original order.
- :func:`yes_no_probability` -- TALLRec's score (Bao et al., RecSys 2023): softmax restricted to
  the "Yes"/"No" first tokens, here from top log-probabilities with a temperature.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from scipy.special import expit, logsumexp

_FENCE = re.compile(r"```(?:json|python|JSON)?\s*(.*?)```", re.DOTALL)
_BRACKETED = re.compile(r"\[\s*([^\[\]\s,>]+)\s*\]")
_ENUMERATOR = re.compile(r"^\s*(?:[-*•]\s*)?(?:\d+\s*[.):]|#\d+[.):]?)\s*")
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def extract_json(text: str) -> Any | None:
    """Return the first JSON value (object or list) found in ``text``, else ``None``.

    Tries, in order: the whole text, each fenced code block, then every ``{``/``[`` start with
    :meth:`json.JSONDecoder.raw_decode`; each candidate also as a Python literal (single quotes,
    ``True``/``None``, trailing commas).

    >>> extract_json('Sure! ```json\\n{"ranking": [2, 1]}\\n``` done')
    {'ranking': [2, 1]}
    >>> extract_json("['b', 'a',]")
    ['b', 'a']
    >>> extract_json("no structure here") is None
    True
    """
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for candidate in candidates:
        value = _loads(candidate)
        if value is not None:
            return value
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char not in "[{":
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
            return value
        except json.JSONDecodeError:
            end = _matching_close(text, start)
            if end is not None:
                value = _loads(text[start : end + 1])
                if value is not None:
                    return value
    return None


def _loads(candidate: str) -> Any | None:
    if not candidate or candidate[0] not in "[{":
        return None
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    try:
        value = ast.literal_eval(candidate)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list | dict | tuple) else None


def _matching_close(text: str, start: int) -> int | None:
    """Index of the bracket closing ``text[start]`` (ignores quoting; good enough for lists)."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] in "[{":
            depth += 1
        elif text[index] in "]}":
            depth -= 1
            if depth == 0:
                return index
    return None


def _flatten_ranking_value(value: Any) -> list[Any] | None:
    """A list of ids out of a parsed JSON value: the list itself (nested lists flattened) or the
    first list in an object."""
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            if isinstance(item, dict):  # [{"id": 3}, ...]
                item = next(iter(item.values()), None)
            if isinstance(item, list | tuple):  # [[8, 6], [7], ...]
                out.extend(_flatten_ranking_value(item) or [])
            else:
                out.append(item)
        return out
    if isinstance(value, dict):
        for inner in value.values():
            flat = _flatten_ranking_value(inner)
            if flat is not None:
                return flat
    return None


def ranking_tokens(text: str) -> list[Any] | None:
    """The entries of the first JSON / Python list in ``text`` (nested lists flattened; inside an
    object, its first list, e.g. ``{"ranking": [...]}``), or ``None`` when there is none.

    >>> ranking_tokens('Sure: {"ranking": [[3, 1], [2]]}')
    [3, 1, 2]
    """
    value = extract_json(text)
    return None if value is None else _flatten_ranking_value(value)


def parse_ranking(text: str, candidate_ids: Sequence[Hashable]) -> list[Hashable]:
    """Candidate ids in the order the reply gives them (may hold duplicates; no unknown ids).

    Ids are matched by their string form, so ``3``, ``"3"`` and ``[3]`` all mean candidate ``3``.
    Formats, in order of trust: JSON / Python list (also inside an object, e.g.
    ``{"ranking": [...]}``), RankGPT's ``[3] > [1]``, numbered lines (``1. [3] Title`` -- the
    enumerator is not an id), then any id-like token in the text.

    >>> parse_ranking("[3] > [1] > [2]", [1, 2, 3])
    [3, 1, 2]
    >>> parse_ranking("1. item 2\\n2. item 1", [1, 2])
    [2, 1]
    """
    by_name = {str(c): c for c in candidate_ids}

    def known(tokens: Iterable[Any]) -> list[Hashable]:
        return [by_name[str(t).strip()] for t in tokens if str(t).strip() in by_name]

    # Each structured reading; the one naming the most candidates wins (ties: listed order), so
    # "[3] > [1]" is not mistaken for the JSON list "[3]".
    readings: list[list[Hashable]] = []
    tokens = ranking_tokens(text)
    if tokens is not None:
        readings.append(known(tokens))
    if ">" in text:
        readings.append(known(_BRACKETED.findall(text)))
    numbered = []
    for line in text.splitlines():
        if _ENUMERATOR.match(line):
            rest = _ENUMERATOR.sub("", line, count=1)
            numbered.extend(known(_BRACKETED.findall(rest))[:1] or known(_TOKEN.findall(rest))[:1])
    readings.append(numbered)
    readings.append(known(_BRACKETED.findall(text)))
    best = max(readings, key=len)
    if best:
        return best
    return known(_TOKEN.findall(text))  # last resort: any id-like token, in order


def repair_permutation(
    ranking: Iterable[Hashable], candidate_ids: Sequence[Hashable]
) -> list[Hashable]:
    """Turn a parsed ranking into a permutation of ``candidate_ids`` (RankGPT's repair).

    >>> repair_permutation([3, 3, 9, 1], [1, 2, 3])
    [3, 1, 2]
    """
    allowed = set(candidate_ids)
    seen: set[Hashable] = set()
    order: list[Hashable] = []
    for cid in ranking:
        if cid in allowed and cid not in seen:
            seen.add(cid)
            order.append(cid)
    order.extend(c for c in candidate_ids if c not in seen)
    return order


def is_permutation(ranking: Sequence[Hashable], candidate_ids: Sequence[Hashable]) -> bool:
    """True when ``ranking`` holds every candidate exactly once."""
    return len(ranking) == len(candidate_ids) and set(ranking) == set(candidate_ids)


def permutation_schema(candidate_ids: Sequence[int | str], key: str = "ranking") -> dict:
    """JSON schema of ``{key: [ids...]}`` with exactly ``len(candidate_ids)`` known ids.

    Grammars (llama.cpp) cannot enforce uniqueness, so replies still go through
    :func:`repair_permutation`.
    """
    item_type = "integer" if all(isinstance(c, int) for c in candidate_ids) else "string"
    n = len(candidate_ids)
    return {
        "type": "object",
        "properties": {
            key: {
                "type": "array",
                "items": {"type": item_type, "enum": list(candidate_ids)},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": [key],
    }


def _normalise_token(token: str) -> str:
    return token.strip().strip(".,!:;\"'").lower()


def yes_no_probability(top_logprobs: Mapping[str, float], temperature: float = 1.0) -> float | None:
    """p(Yes) from the first reply token's top log-probabilities, TALLRec style.

    Tokens are grouped by their normalised text ("Yes", " yes", "YES." -> yes); each group's
    log-probability is the log-sum-exp of its members. With ``l_y`` and ``l_n`` the group
    log-probabilities, ``p = exp(l_y / T) / (exp(l_y / T) + exp(l_n / T))``. A group absent from
    the top-k gets the smallest reported log-probability (an upper bound of its true value).
    Returns ``None`` when neither group is present (the caller decides the fallback).

    >>> import math
    >>> round(yes_no_probability({"Yes": math.log(0.6), "No": math.log(0.2)}), 6)
    0.75
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: use a positive temperature.")
    groups: dict[str, list[float]] = {"yes": [], "no": []}
    for token, logprob in top_logprobs.items():
        name = _normalise_token(token)
        if name in groups:
            groups[name].append(float(logprob))
    if not groups["yes"] and not groups["no"]:
        return None
    floor = min(float(v) for v in top_logprobs.values())
    l_yes = float(logsumexp(groups["yes"])) if groups["yes"] else floor
    l_no = float(logsumexp(groups["no"])) if groups["no"] else floor
    return float(expit((l_yes - l_no) / temperature))  # stable sigmoid
