"""Fixes that make RecBole 1.2.1 run on today's numpy, scipy and in parallel processes, and
order its time-ordered splits by the exact time (float32 timestamps tie).

Bottom layer: imports nothing of recbole-ext. :func:`apply_compatibility` is idempotent and runs
whenever a :class:`recbole_ext.config.Config` is built, i.e. before any dataset, logger or trainer
of a run exists (every entry point -- CLI, benchmark workers, Ray trials, the Python API -- builds a
``Config`` first).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pandas as pd

# numpy aliases removed in numpy 1.24 / 2.0 that RecBole 1.2.1 and its dependencies still use.
_NUMPY_ALIASES = {
    "bool": "bool_",
    "int": "int_",
    "float": "float64",
    "complex": "complex128",
    "object": "object_",
    "str": "str_",
    "long": "int_",
    "unicode": "str_",
    "bool8": "bool_",
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
}


def apply_numpy_compatibility() -> None:
    """Restore removed numpy aliases without touching the ones that still exist.

    RecBole's ``Config.compatibility_settings`` assigns ``np.float = np.float_`` etc.
    unconditionally, which raises ``AttributeError`` on numpy 2 (``np.float_`` is gone) and shadows
    builtins-like names that numpy 1.x still warns about. Here each alias is only added when
    missing and always points to an attribute that exists on numpy 1.24+ and 2.x.
    """
    for alias, target in _NUMPY_ALIASES.items():
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))


def apply_scipy_compatibility() -> None:
    """Give ``scipy.sparse.dok_matrix`` back the ``_update`` method that RecBole's graph models
    (LightGCN, NGCF, NCL, SpectralCF, GCMC) call to fill adjacency matrices.

    scipy 1.12 moved the dok storage into ``self._dict`` and dropped ``_update``; the method was a
    plain ``dict.update`` without index checks, which is what this restores.
    """
    import scipy.sparse as sp

    for cls in (sp.dok_matrix, getattr(sp, "dok_array", None)):
        if cls is not None and not hasattr(cls, "_update") and hasattr(cls((1, 1)), "_dict"):
            cls._update = lambda self, data: self._dict.update(data)


def _ensure_dir(dir_path):
    """Make sure the directory exists (``os.makedirs(..., exist_ok=True)``: no check-then-create)."""
    os.makedirs(dir_path, exist_ok=True)


def apply_ensure_dir_fix() -> None:
    """Make RecBole's ``ensure_dir`` safe when several processes create the same folder.

    RecBole's ``ensure_dir`` checks ``os.path.exists`` and then calls ``os.makedirs``: two runs
    started together (``--benchmark --workers=2``, Ray trials) can both see the folder missing and
    the second dies with ``FileExistsError: './log'``. Every folder RecBole creates (``log/`` and
    ``log/<model>`` in ``init_logger``, ``checkpoint_dir`` in the trainers and ``data_preparation``,
    ``save_dir`` in ``Dataset.save``) goes through that one function, imported by name into five
    modules; replacing the function's code object fixes every reference at once, whatever was
    imported first. (``log_tensorboard/`` is made by TensorBoard with ``exist_ok=True`` already.)
    """
    from recbole.utils import utils as recbole_utils

    recbole_utils.ensure_dir.__code__ = _ensure_dir.__code__


TIME_ORDERS = ("exact", "recbole")  # values of the config key ``time_order``


def sort_by_exact_time(dataset) -> bool:
    """Stable-sort ``dataset.inter_feat`` (still a DataFrame) by its exact (float64) time value.

    Called just before RecBole turns the DataFrame into tensors, where ``float`` fields become
    float32 (timestamps near 8.8e8 s fall into 64 s steps, near 1.8e9 s into 128 s steps).
    Rounding to float32 is monotonic, so every later stable sort by the float32 time (RecBole's
    ``Interaction.sort`` uses ``np.argsort(kind="stable")``: the ``TO`` ordering in ``build``,
    ``data_augmentation``'s sort by (user, time), ``time_based_split``) keeps this exact order,
    and rows with the same exact time keep the order of the atomic file, as before. (The global
    boundary of ``time_based_split``, ``TS``, still compares float32 times: the views within the
    boundary's float32 step fall on one side.)

    Applies when the time field is a loaded ``float`` field, the run orders by time
    (``eval_args.order: TO``; every sequential dataset) and the split is not read from
    ``benchmark_filename`` files (those keep their rows). ``time_order: recbole`` turns it off.

    Returns:
        whether the rows were sorted.

    Raises:
        ValueError: ``time_order`` is neither ``exact`` nor ``recbole``.
    """
    from recbole.utils import FeatureType

    config = dataset.config
    # (str) exact | recbole, from recbole_ext's overall.yaml; a plain RecBole Config has no such
    # key (None): the patch is on for the whole process, so it is exact there too
    time_order = config["time_order"] or "exact"
    if time_order not in TIME_ORDERS:
        raise ValueError(f"time_order={time_order!r}: choose one of {list(TIME_ORDERS)}")
    field, frame = dataset.time_field, dataset.inter_feat
    if (
        time_order == "recbole"
        or dataset.benchmark_filename_list is not None
        or (config["eval_args"] or {}).get("order") != "TO"
        or not isinstance(frame, pd.DataFrame)
        or field not in frame
        or dataset.field2type.get(field) != FeatureType.FLOAT
    ):
        return False
    dataset.inter_feat = frame.sort_values(field, kind="stable").reset_index(drop=True)
    return True


def apply_exact_time_order() -> None:
    """Order every time-ordered split and history by the exact time, for every dataset class.

    RecBole keeps ``float`` fields as float32 tensors, so its sorts by time break ties between
    different true times of one float32 step by file order: on ml-100k the test item is not the
    user's latest for 149 of 943 users with raw timestamps, and for 4 with RecBole's ml-100k preset,
    which min-max normalises them first (~1 s steps) (``benchmarks/time_order_check.py``).
    :func:`sort_by_exact_time` runs first in ``Dataset._change_feat_format``, the one place where
    every dataset class (RecBole's general, sequential, context-aware, knowledge ones and
    recbole-ext's) turns its DataFrame into tensors, after item ids are assigned (ids, and so
    saved candidate files, stay as they were).
    """
    from recbole.data.dataset import Dataset

    convert = Dataset._change_feat_format
    if getattr(convert, "exact_time_order", False):
        return

    @functools.wraps(convert)
    def _change_feat_format(self):
        sort_by_exact_time(self)
        convert(self)

    _change_feat_format.exact_time_order = True
    Dataset._change_feat_format = _change_feat_format


def apply_compatibility() -> None:
    """All of the above; cheap and idempotent."""
    apply_numpy_compatibility()
    apply_scipy_compatibility()
    apply_ensure_dir_fix()
    apply_exact_time_order()
