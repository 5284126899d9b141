"""Fixes that make RecBole 1.2.1 run on today's numpy, scipy and in parallel processes.

Bottom layer: imports nothing of recbole-ext. :func:`apply_compatibility` is idempotent and runs
whenever a :class:`recbole_ext.config.Config` is built, i.e. before any dataset, logger or trainer
of a run exists (every entry point -- CLI, benchmark workers, Ray trials, the Python API -- builds a
``Config`` first).
"""

from __future__ import annotations

import os

import numpy as np

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


def apply_compatibility() -> None:
    """All of the above; cheap and idempotent."""
    apply_numpy_compatibility()
    apply_scipy_compatibility()
    apply_ensure_dir_fix()
