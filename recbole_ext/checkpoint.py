"""Safe checkpoints and plain config values: the bottom layer, importing nothing of ours.

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``: a tampered file cannot run code when loaded. The trainers
(:mod:`recbole_ext.trainer`), the resume states (:mod:`recbole_ext.trainer.resume`) and
:func:`recbole_ext.quick_start.load_data_and_model` all read and write them through this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

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


def other_model(path, saved: str | None, model: str) -> str | None:
    """Why the file ``path``, which records the model name ``saved`` (None: it records none),
    cannot be loaded into a ``model``: ``"<path> holds a <saved> model, not <model>"``; None when
    the names match (case-insensitive, as RecBole's model registry) or ``saved`` is None.

    >>> other_model("a.pth", "SASRec", "AutoDisenSeq"), other_model("a.pth", "sasrec", "SASRec")
    ('a.pth holds a SASRec model, not AutoDisenSeq', None)
    """
    if saved is None or saved.lower() == model.lower():
        return None
    return f"{path} holds a {saved} model, not {model}"


def restore_model(model, checkpoint: dict) -> None:
    """Load a checkpoint's parameters and non-parameter state into ``model`` in place."""
    model.load_state_dict(checkpoint["state_dict"])
    encoded = checkpoint.get("other_parameter")
    if encoded is not None:
        live = model.other_parameter() or {}
        model.load_other_parameter(decode_other_parameter(encoded, live))


def config_to_plain(values: dict) -> dict:
    """A JSON/``torch.load(weights_only=True)``-safe copy of config values (enums → names)."""

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if hasattr(value, "name") and hasattr(value, "value"):  # Enum
            return value.name
        return str(value)

    return plain(values)
