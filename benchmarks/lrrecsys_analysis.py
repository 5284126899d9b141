"""LR-Recsys analyses of a trained model (a checkpoint written by ``run``):

    # Fig. 7 / C.3 and Fig. 10 / C.4: Eq. 24 ᾱ_pos, ᾱ_neg on the test set for positive vs negative
    # examples, and each component's share of attention (JSON + PNG)
    python benchmarks/lrrecsys_analysis.py attention --model_file=F --output=DIR
    # the explain view: a user's top-k test items with both explanations and attention weights
    python benchmarks/lrrecsys_analysis.py explain --model_file=F --user=196 --k=5
    # §5.5.3: top keywords of an item's positive vs negative explanations
    python benchmarks/lrrecsys_analysis.py keywords --model_file=F --item=50
    # what the LLM wrote for the run's samples: empty / cut-off / repeated explanations
    python benchmarks/lrrecsys_analysis.py texts --model_file=F

Explanations are read from the response store the run used (``llm_store_path``); no LLM call is
made, so ``explain`` ranks the items that have explanations (the user's held-out test items).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import recbole_ext.data.dataset as dataset_module
from recbole_ext.config_sections import read_section
from recbole_ext.data.item_text import item_texts
from recbole_ext.data.lrrecsys_dataset import SAMPLE_ID, LRRecsysDataset
from recbole_ext.llm.config import LLMConfig
from recbole_ext.llm.lrrecsys_explanations import (
    EXPLANATION_KIND,
    ExplanationConfig,
    explanation_record_key,
    top_keywords,
)
from recbole_ext.llm.store import ResponseStore
from recbole_ext.quick_start import load_data_and_model


def collect(model, dataloader) -> dict[str, np.ndarray]:
    """Per test sample: sample id, label, prediction and attention read-outs."""
    columns: dict[str, list] = {}
    model.eval()
    with torch.no_grad():
        for batch in dataloader:
            interaction = batch[0]
            values = {
                "sample_id": interaction[SAMPLE_ID],
                "label": interaction[model.LABEL].float(),
                "rating": interaction[model.RATING].float(),
                "prediction": model.predict(interaction),
                **model.attention(interaction),
            }
            for name, value in values.items():
                columns.setdefault(name, []).append(value.cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def attention_report(model, test_data, output: Path) -> dict:
    values = collect(model, test_data)
    positive = values["rating"] >= 4
    report = {"components": model.components, "n_test": int(len(positive))}
    for name, rows in (("positive_examples", positive), ("negative_examples", ~positive)):
        report[name] = {
            key[len("share_") :] if key.startswith("share_") else key: float(
                values[key][rows].mean()
            )
            for key in values
            if key.startswith(("share_", "alpha_"))
        }
        report[name]["n"] = int(rows.sum())
    output.mkdir(parents=True, exist_ok=True)
    (output / "attention.json").write_text(json.dumps(report, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, (title, rows) in zip(
            axes[:2], (("high rating (4-5)", positive), ("low rating (1-3)", ~positive))
        ):
            bins = np.linspace(0, 1, 31)
            ax.hist(values["alpha_pos"][rows], bins=bins, alpha=0.6, label="ᾱ_pos")
            if "alpha_neg" in values:
                ax.hist(values["alpha_neg"][rows], bins=bins, alpha=0.6, label="ᾱ_neg")
            ax.set_title(f"Eq. 24 attention, {title}")
            ax.legend()
        shares = [float(values[f"share_{c}"].mean()) for c in model.components]
        axes[2].pie(shares, labels=model.components, autopct="%1.0f%%")
        axes[2].set_title("share of attention (Fig. 10)")
        fig.tight_layout()
        fig.savefig(output / "attention.png", dpi=120)
    except ImportError:
        pass
    return report


def stored_texts(config, samples, indices) -> list[dict | None]:
    llm = read_section(config, LLMConfig)
    exp = read_section(config, ExplanationConfig)
    with ResponseStore(llm.store_path) as store:
        return [
            store.get_record(
                EXPLANATION_KIND,
                explanation_record_key(llm.model, exp.mode, exp.use_profiles, samples.key(i)),
            )
            for i in indices
        ]


def explain_view(config, model, dataset, test_data, user: str, k: int) -> list[dict]:
    values = collect(model, test_data)
    samples = dataset.samples
    rows = [r for r, s in enumerate(values["sample_id"]) if samples.users[s] == user]
    if not rows:
        raise SystemExit(f"user {user!r} has no test samples in this run")
    rows.sort(key=lambda r: -values["prediction"][r])
    rows = rows[:k]
    texts = item_texts(dataset, config["item_text_fields"])
    ids = [int(values["sample_id"][r]) for r in rows]
    explanations = stored_texts(config, samples, ids)
    view = []
    for rank, (r, sid, exp) in enumerate(zip(rows, ids, explanations, strict=True), 1):
        view.append(
            {
                "rank": rank,
                "item": str(samples.items[sid]),
                "title": texts[int(samples.item_ids[sid])],
                "score": round(float(values["prediction"][r]), 4),
                "rating": float(values["rating"][r]),
                "alpha_pos": round(float(values["alpha_pos"][r]), 4),
                "alpha_neg": round(float(values.get("alpha_neg", values["alpha_pos"])[r]), 4),
                "positive": (exp or {}).get("pos"),
                "negative": (exp or {}).get("neg"),
            }
        )
    return view


def keywords(config, dataset, item: str, k: int) -> dict:
    samples = dataset.samples
    ids = [i for i in range(len(samples)) if samples.items[i] == item]
    found = [e for e in stored_texts(config, samples, ids) if e]
    return {
        "item": item,
        "explanations": len(found),
        "positive": top_keywords([e["pos"] for e in found], k),
        "negative": top_keywords([e["neg"] for e in found], k),
    }


def explanation_stats(texts: list[dict[str, str]], top: int = 3) -> dict:
    """How the explanations read, per slot (``pos`` / ``neg``): share empty, share cut off (no
    closing ``.``, ``!``, ``?`` or quote: the token limit hit), share of distinct texts, mean
    words, and the most repeated texts; plus the share of samples whose two slots are equal.

    >>> stats = explanation_stats([{"pos": "A b.", "neg": "C d"}, {"pos": "A b.", "neg": ""}])
    >>> stats["pos"]["distinct_share"], stats["neg"]["cut_off_share"], stats["neg"]["empty_share"]
    (0.5, 0.5, 0.5)
    """
    out: dict = {"samples": len(texts)}
    for slot in ("pos", "neg"):
        values = [t[slot] for t in texts]
        counts: dict[str, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        n = max(len(values), 1)
        out[slot] = {
            "empty_share": sum(not v for v in values) / n,
            "cut_off_share": sum(bool(v) and v.rstrip()[-1] not in '.!?"”' for v in values) / n,
            "distinct_share": len(counts) / n,
            "mean_words": float(np.mean([len(v.split()) for v in values])) if values else 0.0,
            "most_repeated": sorted(counts.items(), key=lambda kv: -kv[1])[:top],
        }
    out["pos_equals_neg_share"] = sum(t["pos"] == t["neg"] for t in texts) / max(len(texts), 1)
    return out


def title_of(item_text: str) -> str:
    """The title part of an item text ``Title (year) genres``.

    >>> title_of("Toy Story (1995) Animation, Children's, Comedy")
    'Toy Story'
    """
    return item_text.split(" (")[0].strip()


def naming_shares(
    texts: list[dict[str, str]], candidates: list[str], histories: list[list[str]]
) -> dict:
    """Per slot: share of explanations that name the candidate's title, and share that name a
    history item's title but not the candidate's (the LLM explained the wrong movie).

    >>> naming_shares([{"pos": "He likes Heat.", "neg": "He saw Jaws"}], ["Heat"], [["Jaws"]])
    {'pos': {'names_candidate': 1.0, 'names_history_only': 0.0}, 'neg': {'names_candidate': 0.0, 'names_history_only': 1.0}}
    """
    out = {}
    for slot in ("pos", "neg"):
        candidate = history_only = 0
        for text, title, history in zip(texts, candidates, histories, strict=True):
            lower = text[slot].lower()
            if title.lower() in lower:
                candidate += 1
            elif any(h.lower() in lower for h in history):
                history_only += 1
        n = max(len(texts), 1)
        out[slot] = {"names_candidate": candidate / n, "names_history_only": history_only / n}
    return out


def texts_report(config, dataset) -> dict:
    samples = dataset.samples
    used = samples.used()
    found = stored_texts(config, samples, used)
    kept = [(i, t) for i, t in zip(used, found, strict=True) if t is not None]
    item_text = item_texts(dataset, config["item_text_fields"])
    by_token = {
        str(dataset.field2id_token[dataset.iid_field][i]): item_text[i]
        for i in range(1, len(item_text))
    }
    candidates = [title_of(item_text[int(samples.item_ids[i])]) for i, _ in kept]
    histories = [[title_of(by_token[h]) for h in samples.histories[i]] for i, _ in kept]
    texts = [t for _, t in kept]
    return {
        "missing": len(found) - len(kept),
        **explanation_stats(texts),
        "naming": naming_shares(texts, candidates, histories),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("view", choices=["attention", "explain", "keywords", "texts"])
    parser.add_argument("--model_file", required=True)
    parser.add_argument("--output", default="benchmarks/results/lrrecsys")
    parser.add_argument("--user", default=None)
    parser.add_argument("--item", default=None)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    if not hasattr(dataset_module, "LRRecsysDataset"):  # until the registry imports it
        dataset_module.LRRecsysDataset = LRRecsysDataset
    config, model, dataset, _, _, test_data = load_data_and_model(args.model_file)
    if args.view == "attention":
        print(json.dumps(attention_report(model, test_data, Path(args.output)), indent=2))
    elif args.view == "explain":
        view = explain_view(config, model, test_data._dataset, test_data, args.user, args.k)
        print(json.dumps(view, indent=2, ensure_ascii=False))
    elif args.view == "texts":
        report = texts_report(config, test_data._dataset)
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(json.dumps(keywords(config, test_data._dataset, args.item, args.k), indent=2))


if __name__ == "__main__":
    main()
