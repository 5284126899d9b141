"""Plugin registry (ours first, then RecBole's) and safe checkpoints.

Naming rule (as RecBole-GNN): model ``AutoDisenSeq`` lives in
``recbole_ext/model/<kind>/autodisenseq.py`` with defaults in
``recbole_ext/properties/model/AutoDisenSeq.yaml``; its trainer, if it needs one, is
``AutoDisenSeqTrainer`` in ``recbole_ext/trainer/autodisenseq.py``; its dataset, if it needs one,
is ``recbole_ext.data.dataset.AutoDisenSeqDataset``.

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``: a tampered file cannot run code when loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
from difflib import get_close_matches
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import ModelType
from recbole.utils import get_trainer as recbole_get_trainer

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
        ValueError: naming the closest known models when neither package has it.
    """
    for package in ("recbole_ext", "recbole"):
        module = _module_for(package, model_name)
        if module is not None and hasattr(module, model_name):
            return getattr(module, model_name)
    close = get_close_matches(model_name.lower(), known_model_names(), n=3)
    hint = f" Did you mean one of {close} (case as in the class name)?" if close else ""
    raise ValueError(f"--model={model_name} is neither a recbole-ext nor a RecBole model.{hint}")


def get_trainer(model_type: ModelType, model_name: str):
    """``<Model>Trainer`` from ``recbole_ext/trainer/<model>.py`` (or ``recbole_ext.trainer``) if
    it exists, else RecBole's trainer for the model, with recbole-ext's safe checkpoints
    (see ``recbole_ext.trainer.SafeCheckpointMixin``)."""
    from recbole_ext import trainer as our_trainers

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
    from recbole_ext.data import dataset as our_datasets

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


# --------------------------------------------------------------------------------------------
# Safe checkpoints
# --------------------------------------------------------------------------------------------
KIND = "__recbole_ext_kind__"


def encode_other_parameter(value):
    """Turn a model's ``other_parameter()`` into tensors and plain values.

    RecBole models keep non-parameter state there: tensors, numpy arrays, scipy sparse matrices
    (ItemKNN, EASE), nested dicts/lists (RippleNet) and sub-modules (DIN, FDSA).
    """
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {KIND: "list", "items": [encode_other_parameter(v) for v in value.tolist()]}
        return {KIND: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value))}
    if sp.issparse(value):
        coo = value.tocoo()
        return {
            KIND: "sparse",
            "format": value.format,
            "shape": list(coo.shape),
            "row": torch.from_numpy(coo.row.astype(np.int64)),
            "col": torch.from_numpy(coo.col.astype(np.int64)),
            "data": torch.from_numpy(np.ascontiguousarray(coo.data)),
        }
    if isinstance(value, torch.nn.Module):
        return {KIND: "module", "state_dict": value.state_dict()}
    if isinstance(value, dict):
        return {KIND: "dict", "items": [[k, encode_other_parameter(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return {KIND: type(value).__name__, "items": [encode_other_parameter(v) for v in value]}
    raise TypeError(f"cannot store a {type(value).__name__} in a safe checkpoint")


def decode_other_parameter(value, current=None):
    """Inverse of :func:`encode_other_parameter`; ``current`` is the live object (for modules)."""
    if not isinstance(value, dict) or KIND not in value:
        return value
    kind = value[KIND]
    if kind == "ndarray":
        return value["data"].numpy()
    if kind == "sparse":
        coo = sp.coo_matrix(
            (value["data"].numpy(), (value["row"].numpy(), value["col"].numpy())),
            shape=tuple(value["shape"]),
        )
        return coo.asformat(value["format"])
    if kind == "module":
        if current is None:
            raise ValueError("a stored sub-module needs the live module to load into")
        current.load_state_dict(value["state_dict"])
        return current
    if kind == "dict":
        current = current if isinstance(current, dict) else {}
        return {k: decode_other_parameter(v, current.get(k)) for k, v in value["items"]}
    items = [decode_other_parameter(v) for v in value["items"]]
    return tuple(items) if kind == "tuple" else items


def save_checkpoint(path, model, *, config=None, **training_state) -> None:
    """Write a checkpoint made only of tensors and plain values.

    ``config`` (a recbole-ext ``Config``) is stored as the user's overrides plus model and dataset,
    enough for :func:`recbole_ext.quick_start.load_data_and_model` to rebuild everything.
    """
    from recbole_ext.config import config_to_plain

    state = {
        "format": "recbole_ext/1",
        "state_dict": model.state_dict(),
        "other_parameter": encode_other_parameter(model.other_parameter()),
        **training_state,
    }
    if config is not None:
        state["model"] = config["model"]
        state["dataset"] = config["dataset"]
        state["config_overrides"] = config_to_plain(
            {k: v for k, v in config.external_config_dict.items() if k not in ("model", "dataset")}
        )
        state["config"] = config_to_plain(config.final_config_dict)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        ValueError: when the file is not a recbole-ext checkpoint (e.g. one of RecBole's own, which
            pickles its ``Config``, or a file carrying code).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises UnpicklingError or RuntimeError with details
        raise ValueError(
            f"{path} is not a safe recbole-ext checkpoint: it holds objects other than tensors "
            f"and plain values, so it was not loaded (loading it could run code). Checkpoints "
            f"written by recbole-ext load; a checkpoint saved by plain RecBole must be re-saved "
            f"from a trusted environment. Details: {str(err).splitlines()[0]}"
        ) from err


def restore_model(model, checkpoint: dict) -> None:
    """Load a checkpoint's parameters and non-parameter state into ``model`` in place."""
    model.load_state_dict(checkpoint["state_dict"])
    encoded = checkpoint.get("other_parameter")
    if encoded is not None:
        live = model.other_parameter() or {}
        model.load_other_parameter(decode_other_parameter(encoded, live))
