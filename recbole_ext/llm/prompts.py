"""The prompts of recbole-ext's two LLM explanation pipelines, each family under its own names.

**LR-Recsys** (Wang, Li, Chen, "The Blessing of Reasoning: LLM-Based Contrastive Explanations in
Black-Box Recommender Systems"): :class:`LRRecsysPrompts` holds one domain's prompts -- the item
profile (§3.6, CoT profile augmentation), the positive and negative explanation (§3.4.1) and the
history summary (§5.4.2) --; :data:`LRRECSYS_PROMPTS` names them (``movie``: Appendix C.2.3, used
for ml-100k; ``product``: §3.4.1 / §3.6 verbatim). :func:`lrrecsys_profile_messages` and
:func:`lrrecsys_explanation_messages` render them (generation: :mod:`recbole_ext.llm.
lrrecsys_explanations`).

**ExpCTR** (Yu, Zhang, Chen, "Explainable CTR Prediction via LLM Reasoning", WSDM 2025):
:func:`expctr_explanation_messages` -- §4.1 "Prompt Template for Explanation Generation" (liked
and disliked history items, the target, one sentence); :func:`expctr_ctr_messages` -- §4.2.2
"Prompt Template for CTR Prediction" (the explanation as "the user thought", answered "Yes." or
"No.": the LC alignment reward model's input); :func:`expctr_icl_messages` -- the ICL baseline
(§5.1.2) and TALLRec's instruction: the same history, asked for Yes/No directly. The paper's
templates speak of books; :class:`ExpCTRPromptWords` holds the few words that change
(``ExpCTRPromptWords.named("movie")``). Items are shown by their text
(``recbole_ext.data.item_text``: "Toy Story (1995) Animation, Children's, Comedy").

Pure functions of strings; this module imports nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Part of every LLM request key (a wording change re-asks the LLM); bump when a template changes.
LRRECSYS_TEMPLATE_VERSION = "lrrecsys-v1"
EXPCTR_TEMPLATE_VERSION = "expctr-v1"
EXPCTR_NONE_TEXT = "none"


# =============================================================================================
# LR-Recsys: item profiles and contrastive explanations
# =============================================================================================
@dataclass(frozen=True)
class LRRecsysPrompts:
    """LR-Recsys' prompts of one domain (Appendix C.2); ``{item_text}``, ``{history}`` and
    ``{candidate}`` are filled in."""

    profile: str
    positive: str
    negative: str
    positive_prefix: str
    negative_prefix: str
    summary: str


LRRECSYS_MOVIE = LRRecsysPrompts(
    # C.2.3 (1) -- instruction and example as printed in the paper.
    profile=(
        "[Instruction]\nCreate a succinct profile for a movie based on the provided information. "
        "This profile should be tailored for use in recommendation systems and must identify the "
        "types of users who would enjoy the movie. Avoid repeating the given details directly and "
        "instead focus on describing the appeal and content of the movie in a way that highlights "
        "its potential audience:\n\n"
        "[Example Input]\nTitle: Barefoot Contessa (with Ina Garten), Entertaining With Ina Vol. 2 "
        "(3 Pack): Brunch 'n' Lunch, Picnic Parties, Summer Entertaining\nBrand: Ina Garten\n"
        "Category: ['Movies & TV', 'Movies']\n\n"
        "[Example Output]\nThis series, hosted by Ina Garten, delves into crafting simple yet "
        "sophisticated dishes suitable for both daily meals and special events. It appeals to "
        "those who savor lifestyle and culinary content infused with a personal touch.\n\n"
        "[Input]\n{item_text}"
    ),
    # C.2.3 (2), (3)
    positive=(
        "Given the profiles of the watching history of this consumer {history}, can you provide a "
        "reason for why this consumer watched the following recommended movie with profile "
        "{candidate}? Answer with one sentence with the following format: The consumer watched "
        "this movie because..."
    ),
    negative=(
        "Given the profiles of the watching history of this consumer {history}, can you provide a "
        "reason for why this consumer did not watch the following recommended movie with profile "
        "{candidate}? Answer with one sentence with the following format: The consumer did not "
        "watch this movie because..."
    ),
    positive_prefix="The consumer watched this movie because",
    negative_prefix="The consumer did not watch this movie because",
    # §5.4.2, "Consumption History Summarization" (the same text serves both slots)
    summary=(
        "Given the profiles of the watching history of this consumer {history}, can you provide a "
        "summary of the consumer preference of candidate movies?"
    ),
)

LRRECSYS_PRODUCT = LRRecsysPrompts(
    # §3.6 and §3.4.1 verbatim, "product" as the noun.
    profile=(
        "Create a succinct profile for a product based on its name. This profile should be "
        "tailored for use in recommendation systems and must identify the types of consumers who "
        "would enjoy the product.\n\n{item_text}"
    ),
    positive=(
        "Provide a reason for why this consumer purchased this product, based on the provided "
        "profile of the past products the consumer purchased, and the profile of the current "
        "product. Answer with exactly one sentence in the following format: 'The consumer "
        "purchased this product because the consumer ... and the product ....'\n\n"
        "Past Product Profiles: {history}\nCurrent Product Profile: {candidate}"
    ),
    negative=(
        "Provide a reason for why this consumer did not purchase this product, based on the "
        "provided profile of the past products the consumer purchased, and the profile of the "
        "current product. Answer with exactly one sentence in the following format: 'The consumer "
        "did not purchase this product because the consumer ... and the product ....'\n\n"
        "Past Product Profiles: {history}\nCurrent Product Profile: {candidate}"
    ),
    positive_prefix="The consumer purchased this product because",
    negative_prefix="The consumer did not purchase this product because",
    summary=(
        "Given the profiles of the purchase history of this consumer {history}, can you provide a "
        "summary of the consumer preference of candidate products?"
    ),
)

LRRECSYS_PROMPTS: dict[str, LRRecsysPrompts] = {
    "movie": LRRECSYS_MOVIE,
    "product": LRRECSYS_PRODUCT,
}


def user_message(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def lrrecsys_profile_messages(prompts: LRRecsysPrompts, item_text: str) -> list[dict[str, str]]:
    """Messages asking for one item profile (§3.6).

    >>> lrrecsys_profile_messages(LRRECSYS_PRODUCT, "orange")[0]["content"].endswith("orange")
    True
    """
    return user_message(prompts.profile.format(item_text=item_text))


def lrrecsys_explanation_messages(
    prompts: LRRecsysPrompts, polarity: str, history: Sequence[str], candidate: str
) -> list[dict[str, str]]:
    """Messages asking for the positive (``"pos"``), negative (``"neg"``) explanation or the
    summary (``"summary"``) of one sample; ``history`` holds profiles (or item texts)."""
    template = {"pos": prompts.positive, "neg": prompts.negative, "summary": prompts.summary}
    if polarity not in template:
        raise ValueError(f"polarity {polarity!r}: choose pos, neg or summary")
    history_text = "; ".join(f'"{h}"' for h in history) if history else "(none)"
    return user_message(template[polarity].format(history=history_text, candidate=f'"{candidate}"'))


# =============================================================================================
# ExpCTR: explanation, CTR and ICL prompts
# =============================================================================================
@dataclass(frozen=True)
class ExpCTRPromptWords:
    """The words of ExpCTR's templates that depend on what is recommended."""

    item: str  # singular item noun: book, movie
    items: str  # plural item noun
    database: str  # what the assistant can access: "books and reader reviews"
    activity: str  # "their <activity> preferences": reading

    @classmethod
    def named(cls, name: str) -> ExpCTRPromptWords:
        """The words of domain ``name`` (:data:`EXPCTR_WORDS`).

        >>> ExpCTRPromptWords.named("movie").activity
        'viewing'
        """
        if name not in EXPCTR_WORDS:
            raise ValueError(f"expctr_domain={name!r}: choose one of {sorted(EXPCTR_WORDS)}.")
        return EXPCTR_WORDS[name]


EXPCTR_WORDS: dict[str, ExpCTRPromptWords] = {
    "book": ExpCTRPromptWords("book", "books", "books and reader reviews", "reading"),  # paper
    "movie": ExpCTRPromptWords("movie", "movies", "movies and viewer reviews", "viewing"),
    "product": ExpCTRPromptWords(
        "product", "products", "products and customer reviews", "shopping"
    ),
}


def _quoted_titles(items: Sequence[str]) -> str:
    return ", ".join(f'"{t}"' for t in items) if items else EXPCTR_NONE_TEXT


def expctr_explanation_messages(
    liked: Sequence[str], disliked: Sequence[str], target: str, domain: ExpCTRPromptWords
) -> list[dict[str, str]]:
    """§4.1's explanation prompt as one user turn.

    >>> words = ExpCTRPromptWords.named("movie")
    >>> m = expctr_explanation_messages(["Heat (1995)"], [], "Casino (1995)", words)
    >>> print(m[0]["content"])
    You are a helpful online recommendation assistant with access to a vast database of movies and viewer reviews. A customer has provided you with information about their viewing preferences:
    The liked movies: "Heat (1995)"
    The disliked movies: none
    Considering the preference of the customer, predict how the customer will consider "Casino (1995)" and give a reason. The answer should be within one sentence.
    """
    d = domain
    content = (
        "You are a helpful online recommendation assistant with access to a vast database of "
        f"{d.database}. A customer has provided you with information about their {d.activity} "
        "preferences:\n"
        f"The liked {d.items}: {_quoted_titles(liked)}\n"
        f"The disliked {d.items}: {_quoted_titles(disliked)}\n"
        f'Considering the preference of the customer, predict how the customer will consider "{target}" '
        "and give a reason. The answer should be within one sentence."
    )
    return [{"role": "user", "content": content}]


def expctr_ctr_messages(
    explanation: str, target: str, domain: ExpCTRPromptWords
) -> list[dict[str, str]]:
    """§4.2.2's CTR prompt: the LLM answers Yes/No from the explanation alone.

    >>> book = EXPCTR_WORDS["book"]
    >>> print(expctr_ctr_messages("They love heists.", "Heat (1995)", book)[0]["content"])
    Given how the user thinks about a book, identify whether the user will like the target book by answering "Yes." or "No."
    The user thought: They love heists.
    Whether the user will like the target book "Heat (1995)":
    """
    d = domain
    content = (
        f"Given how the user thinks about a {d.item}, identify whether the user will like the "
        f'target {d.item} by answering "Yes." or "No."\n'
        f"The user thought: {explanation.strip() or EXPCTR_NONE_TEXT}\n"
        f'Whether the user will like the target {d.item} "{target}":'
    )
    return [{"role": "user", "content": content}]


def expctr_icl_messages(
    liked: Sequence[str], disliked: Sequence[str], target: str, domain: ExpCTRPromptWords
) -> list[dict[str, str]]:
    """The ICL baseline's zero-shot prompt (history in, Yes/No out; no explanation)."""
    d = domain
    content = (
        f"A customer liked these {d.items}: {_quoted_titles(liked)}\n"
        f"The customer disliked these {d.items}: {_quoted_titles(disliked)}\n"
        f'Identify whether the customer will like the target {d.item} by answering "Yes." or '
        f'"No."\nWhether the customer will like the target {d.item} "{target}":'
    )
    return [{"role": "user", "content": content}]
