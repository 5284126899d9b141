"""Plugin registry: models, trainers and datasets, ours first, then RecBole's.

Naming rule (as RecBole-GNN): model ``AutoDisenSeq`` lives in
``recbole_ext/model/<kind>/autodisenseq.py`` with defaults in
``recbole_ext/properties/model/AutoDisenSeq.yaml``; its trainer, if it needs one, is
``AutoDisenSeqTrainer`` in ``recbole_ext/trainer/autodisenseq.py``; its dataset, if it needs one,
is ``recbole_ext.data.dataset.AutoDisenSeqDataset``.

Safe checkpoints are :mod:`recbole_ext.checkpoint`.
"""

from __future__ import annotations

import importlib
import importlib.util
from difflib import get_close_matches
from pathlib import Path

from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import ModelType
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_ext import trainer as our_trainers
from recbole_ext.config_checks import ConfigError

MODEL_KINDS = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)
RECBOLE_MODEL_DIR = Path(importlib.util.find_spec("recbole").origin).parent / "model"
OUR_MODEL_DIR = Path(__file__).resolve().parent / "model"


def _module_for(package: str, model_name: str):
    """Import ``<package>.model.<kind>.<model_name.lower()>`` for the first kind that has it."""
    for kind in MODEL_KINDS:
        path = f"{package}.model.{kind}.{model_name.lower()}"
        try:
            found = importlib.util.find_spec(path)
        except ModuleNotFoundError as err:  # the kind package is missing or cannot import
            if err.name and not err.name.startswith(package):
                # e.g. recbole.model.exlib_recommender imports lightgbm and xgboost
                if (RECBOLE_MODEL_DIR / kind / f"{model_name.lower()}.py").is_file():
                    raise ValueError(
                        f"--model={model_name} needs the optional package {err.name!r}: "
                        f"pip install {err.name}"
                    ) from err
            continue
        if found is not None:
            return importlib.import_module(path)
    return None


def known_model_names() -> list[str]:
    """File stems of every model module, ours and RecBole's (lower case)."""
    names = set()
    for root in (OUR_MODEL_DIR, RECBOLE_MODEL_DIR):
        for kind in MODEL_KINDS:
            names.update(p.stem for p in (root / kind).glob("*.py") if p.stem != "__init__")
    return sorted(names)


def get_model(model_name: str):
    """The model class named ``model_name``: ``recbole_ext.model`` first, then RecBole's.

    Raises:
        ConfigError: (a ValueError) naming the closest known models, spelled as their classes,
            when neither package has it.
    """
    for package in ("recbole_ext", "recbole"):
        module = _module_for(package, model_name)
        if module is not None and hasattr(module, model_name):
            return getattr(module, model_name)
    close = [model_class_name(stem) for stem in close_model_names(model_name)]
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"--model={model_name} is neither a recbole-ext nor a RecBole model.{hint}")


def close_model_names(model_name: str, n: int = 3) -> list[str]:
    """Module stems of the known models spelled most like ``model_name`` (any case)."""
    return get_close_matches(model_name.lower(), known_model_names(), n=n)


def model_class_name(stem: str) -> str:
    """The class name of the model in module ``stem`` (``"sasrec"`` -> ``"SASRec"``)."""
    for package in ("recbole_ext", "recbole"):
        try:
            module = _module_for(package, stem)
        except (ImportError, ValueError):  # an optional dependency of that model is missing
            continue
        if module is not None:
            for name in dir(module):
                if name.lower() == stem and isinstance(getattr(module, name), type):
                    return name
    return stem


def get_trainer(model_type: ModelType, model_name: str):
    """``<Model>Trainer`` from ``recbole_ext/trainer/<model>.py`` (or ``recbole_ext.trainer``) if
    it exists, else RecBole's trainer for the model, with recbole-ext's safe checkpoints
    (see ``recbole_ext.trainer.SafeCheckpointMixin``)."""
    class_name = f"{model_name}Trainer"
    module_path = f"recbole_ext.trainer.{model_name.lower()}"
    if importlib.util.find_spec(module_path) is not None:
        module = importlib.import_module(module_path)
        if hasattr(module, class_name):
            return getattr(module, class_name)
    ours = getattr(our_trainers, class_name, None)
    if ours is not None:
        return ours
    return our_trainers.with_safe_checkpoints(recbole_get_trainer(model_type, model_name))


def create_dataset(config):
    """``recbole_ext.data.dataset.<dataset_class>`` when set (e.g. ``ExpCTRDataset`` for a baseline
    on ExpCTR's samples), else ``<Model>Dataset`` if it exists, else RecBole's choice."""
    from recbole_ext.data import dataset as our_datasets  # 0.6 s (the LLM client): on use

    if config["dataset_class"]:
        if not hasattr(our_datasets, config["dataset_class"]):
            raise ValueError(
                f"dataset_class={config['dataset_class']!r} is not in recbole_ext.data.dataset; "
                "unset it or name a class there (e.g. ExpCTRDataset)"
            )
        return getattr(our_datasets, config["dataset_class"])(config)
    dataset_class = getattr(our_datasets, f"{config['model']}Dataset", None)
    if dataset_class is not None:
        return dataset_class(config)
    return recbole_create_dataset(config)
