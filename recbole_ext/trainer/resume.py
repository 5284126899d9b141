"""Runs that survive a stop: epoch-level resume of RecBole's ``fit`` (and named resume points).

A stopped run (closed session, crash, killed worker) restarts from its last completed epoch
instead of epoch 0, and ends with the same metrics and weights as an uninterrupted run under the
same seed. :class:`ResumableTrainerMixin` sits in front of every trainer of
:mod:`recbole_ext.trainer` and does nothing until a run names a directory for its state
(``trainer.enable_resume(directory)``; :func:`recbole_ext.quick_start.run` does it for
``output=<file>`` with :func:`resume_dir_for`, the benchmark per (model, seed)).

How (two hooks, RecBole's loop untouched):

- ``_train_epoch(epoch k)`` first writes ``<directory>/fit.pth``: everything RecBole's ``fit``
  loop carries from epoch k-1 into epoch k, i.e. the model (``state_dict`` and
  ``other_parameter``), the optimiser, the early-stopping state (``best_valid_score``,
  ``cur_step``, ``best_valid_result`` and the path of the best checkpoint), the epoch counter
  (``k``) and the random states (python, numpy, torch, CUDA and the train dataloader's
  ``torch.Generator``), taken at this point because it is the top of the loop: an interrupted run
  resumed here consumes exactly the random numbers the uninterrupted one did;
- ``fit`` wraps RecBole's ``fit`` (after the trainer's own stages, the hook
  :meth:`~recbole_ext.trainer.stages.StagedTrainerMixin._before_fit`): it loads the state (when
  there is one) before the loop starts at ``start_epoch = k`` (random states are put back at the
  top of epoch ``k``) and marks the state ``finished`` when the loop ends, so a finished run is not
  retrained (``fit`` returns the recorded best score and result; the caller evaluates the
  recorded best checkpoint).

Files are written atomically (temporary file, ``fsync``, rename: a kill never leaves half a
state) and hold only tensors and plain values, so they load with ``torch.load(weights_only=True)``
(:func:`recbole_ext.checkpoint.load_checkpoint`). A state saved under another configuration (any
config key but :data:`RUNTIME_KEYS`) is refused with a :class:`ValueError` naming the keys:
resuming would silently mix two runs. Delete the directory (or use another ``--output``) to start
afresh.

Which trainers resume epochs: those that train with RecBole's own ``Trainer.fit`` alone (SASRec,
GRU4Rec, BERT4Rec... and RecBole's KG trainers). A trainer with stages of its own -- before
RecBole's loop in the base ``fit``'s hook ``_before_fit`` (AutoDisenSeq: pre-train → search, then
fine-tune in RecBole's ``fit``; LR-Recsys: explanations, then the DNN), or around it in a ``fit``
override (ExpCTR: PPO and CTR stages in turn; RecBole's S3Rec/NCL) -- is opted out
(:attr:`ResumableTrainerMixin.epoch_resume` ``None`` resolves to ``False`` for it) and restarts
from epoch 0, until it declares ``epoch_resume = True`` and makes its stages resumable with named
resume points::

    class MyStagedTrainer(Trainer):
        epoch_resume = True  # the final RecBole fit resumes epochs (state "fit")

        def _before_fit(self, train_data, valid_data, verbose, show_progress):
            if self.load_resume_point("pretrain") is None:  # restores model, optimiser, RNG
                self.pretrain(train_data)                   # any loop of the trainer's own
                self.save_resume_point("pretrain", arch=[1, 0, 2])  # extras: plain values
            arch = self.resume_point_extra["arch"]           # the extras of the last load/save
            ...  # then fit runs RecBole's loop (resumed at its last epoch)

``load_resume_point(name)`` returns ``None`` without a directory or state (then run the stage)
and otherwise restores what ``save_resume_point(name)`` saved. A stage that rebuilds the model or
the optimiser (a new architecture) must do so *before* loading the next stage's state, so that
shapes match. Only one RecBole ``fit`` per trainer may resume epochs (one ``fit`` state).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_ext.checkpoint import (
    config_to_plain,
    encode_other_parameter,
    load_checkpoint,
    other_model,
    restore_model,
)
from recbole_ext.config_checks import ConfigError
from recbole_ext.trainer.stages import StagedTrainerMixin

FORMAT = "recbole_ext-resume/1"
FIT_STATE = "fit"  # name of the epoch-level state of RecBole's fit loop
RUNTIME_KEYS = frozenset(
    {
        # where and how a run executes, not what it computes: may change between a run and its
        # resumption (another GPU from Ray, progress bars on, a log level, a moved checkpoint_dir)
        "gpu_id",
        "device",
        "use_gpu",
        "local_rank",
        "single_spec",
        "world_size",
        "nproc",
        "offset",
        "ip",
        "port",
        "show_progress",
        "state",
        "checkpoint_dir",
        "log_wandb",
        "wandb_project",
    }
)


def resume_dir_for(output: str | os.PathLike) -> Path:
    """Where a single run writing ``output`` keeps its resume state.

    >>> resume_dir_for("runs/sasrec.json").as_posix()
    'runs/sasrec.json.resume'
    """
    return Path(f"{os.fspath(output)}.resume")


# ---------------------------------------------------------------------------------------------
# Random states
# ---------------------------------------------------------------------------------------------
def dataloader_generators(data) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a RecBole dataloader draws from (its shuffle order), its own
    and those of the dataloaders it wraps (a knowledge-graph dataloader's two), in a fixed order."""
    found = []
    for name in sorted(vars(data)) if data is not None else ():
        value = getattr(data, name, None)
        if isinstance(value, torch.Generator):
            found.append(value)
        elif isinstance(value, torch.utils.data.DataLoader):
            found.extend(g for g in (getattr(value, "generator", None),) if g is not None)
    return found


def rng_state(generators=()) -> dict:
    """Python, numpy, torch (and CUDA) random states, and those of ``generators``, as tensors and
    plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [g.get_state() for g in generators],
    }


def set_rng_state(state: dict, generators=()) -> None:
    """Inverse of :func:`rng_state`.

    Raises:
        ValueError: when the number of dataloader generators differs from the saved one.
    """
    generators = list(generators)
    if len(generators) != len(state["generators"]):
        raise ValueError(
            f"the resume state holds {len(state['generators'])} dataloader random generators, "
            f"this run's train dataloader has {len(generators)}: it was built differently"
        )
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    # random states are CPU byte tensors (a checkpoint loaded onto the GPU moved them there)
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved.cpu())


# ---------------------------------------------------------------------------------------------
# Configuration check
# ---------------------------------------------------------------------------------------------
def config_fingerprint(config) -> dict:
    """The run's resolved configuration as plain values, without :data:`RUNTIME_KEYS`."""
    plain = config_to_plain(config.final_config_dict)
    return {k: v for k, v in plain.items() if k not in RUNTIME_KEYS}


def config_differences(saved: dict, current: dict, new_defaults: dict | None = None) -> list[str]:
    """``key: saved -> current`` for every key whose value differs (or exists on one side only).

    A key the saved run did not have, whose current value is its entry in ``new_defaults`` (the
    packaged defaults the user did not set), is no difference: an option added to recbole-ext
    since the run started, whose default keeps the earlier behaviour.

    >>> config_differences({"epochs": 4, "lr": 0.1}, {"epochs": 5, "lr": 0.1, "x": 1})
    ['epochs: 4 -> 5', 'x: (unset) -> 1']
    >>> config_differences({}, {"x": 1, "y": 2}, new_defaults={"x": 1, "y": 3})
    ['y: (unset) -> 2']
    """
    new_defaults = new_defaults or {}

    def show(source, key):
        return json.dumps(source[key]) if key in source else "(unset)"

    def added_at_default(key):
        return (
            key not in saved
            and key in new_defaults
            and show(new_defaults, key) == show(current, key)
        )

    return [
        f"{key}: {show(saved, key)} -> {show(current, key)}"
        for key in sorted(set(saved) | set(current))
        if show(saved, key) != show(current, key) and not added_at_default(key)
    ]


def packaged_defaults(config) -> dict:
    """The values of ``config`` (our :class:`recbole_ext.config.Config`) that come from the
    packaged yaml files (RecBole's and ours: model, protocol, preset) and that the user did not
    set (files, dict, command line), as plain values; ``{}`` for another config object."""
    internal = getattr(config, "internal_config_dict", None)
    external = getattr(config, "external_config_dict", None)
    if internal is None or external is None:
        return {}
    return config_to_plain({k: v for k, v in internal.items() if k not in external})


def write_atomically(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, ``fsync``, then rename onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------
# The mixin
# ---------------------------------------------------------------------------------------------
class ResumableTrainerMixin:
    """Epoch-level resume of RecBole's ``fit`` and named resume points (see the module docs)."""

    epoch_resume: bool | None = None
    """``True``/``False`` declares whether ``fit`` resumes epochs; ``None`` (default): only when
    the trainer trains with RecBole's ``fit`` alone (a trainer with stages of its own, in
    ``_before_fit`` or a ``fit`` override, opts out)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.resume_dir: Path | None = None
        self.resumed_from_epoch: int | None = None  # epoch the last fit resumed at (None: fresh)
        self.seconds_before_resume = 0.0  # training seconds of the stopped run(s) (loaded state)
        self.resume_point_extra: dict = {}  # extras of the last saved/loaded resume point
        self._resuming_fit = False  # inside a fit whose epochs are saved
        self._pending_rng: dict | None = None  # random states to put back at the next epoch
        self._first_epoch = 0
        self._fit_config: dict | None = None
        self._clock = 0.0  # perf_counter at enable_resume

    # --- public API -----------------------------------------------------------------------------
    def enable_resume(self, directory: str | os.PathLike) -> None:
        """Keep this run's resume state in ``directory`` (created when first written); the
        training time saved with each state counts from here (stages before ``fit`` included)."""
        self.resume_dir = Path(directory)
        self._clock = time.perf_counter()

    @property
    def resumes_epochs(self) -> bool:
        """Whether ``fit`` saves and resumes epochs (a directory is set and the trainer allows)."""
        return self.resume_dir is not None and self.allows_epoch_resume()

    @classmethod
    def allows_epoch_resume(cls) -> bool:
        """:attr:`epoch_resume`, or for ``None``: the trainer keeps the default ``_before_fit``
        and the first ``fit`` in its MRO (the base mixins aside) is RecBole's ``Trainer.fit``."""
        if cls.epoch_resume is not None:
            return cls.epoch_resume
        hook = getattr(cls, "_before_fit", StagedTrainerMixin._before_fit)
        if hook is not StagedTrainerMixin._before_fit:
            return False
        for klass in cls.__mro__:
            if klass not in (ResumableTrainerMixin, StagedTrainerMixin) and "fit" in vars(klass):
                return klass is RecBoleTrainer
        return False

    def state_path(self, name: str) -> Path:
        if self.resume_dir is None:
            raise ValueError("no resume directory: call enable_resume(directory) first")
        return self.resume_dir / f"{name}.pth"

    def save_resume_point(
        self, name: str, *, train_data=None, epoch: int = 0, finished: bool = False, **extra
    ) -> None:
        """Write the trainer's state as resume point ``name`` (no-op without a directory).

        ``extra``: plain values (or tensors) a stage needs later, e.g. a searched architecture;
        ``train_data``: the dataloader whose generators are saved with the random states;
        ``epoch``: the next epoch to train; ``finished``: the stage is complete.
        """
        self.resume_point_extra = extra
        if self.resume_dir is None or (
            not self.config["single_spec"] and self.config["local_rank"] != 0
        ):  # distributed training: rank 0 writes, every rank reads
            return
        state = {
            "format": FORMAT,
            "name": name,
            "model": self.config["model"],
            "config": self._fit_config or config_fingerprint(self.config),
            "state_dict": self.model.state_dict(),
            "other_parameter": encode_other_parameter(self.model.other_parameter()),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "finished": finished,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": _plain_result(self.best_valid_result),
            "train_loss_dict": {int(k): float(v) for k, v in self.train_loss_dict.items()},
            "saved_model_file": str(self.saved_model_file),
            "best_checkpoint_written": os.path.isfile(self.saved_model_file),
            "train_seconds": self.seconds_before_resume + self._elapsed(),
            "rng": rng_state(dataloader_generators(train_data)),
            "extra": extra,
        }
        write_atomically(self.state_path(name), state)

    def load_resume_point(self, name: str, *, train_data=None, restore_rng: bool = True):
        """Restore resume point ``name``; returns its state dict, or ``None`` when there is none.

        Raises:
            ConfigError: (a ValueError) the state belongs to another model or configuration, or
                its best checkpoint file is gone; the message names the fix (another
                ``--output``, or deleting the resume folder).
        """
        if self.resume_dir is None or not self.state_path(name).is_file():
            return None
        path = self.state_path(name)
        state = load_checkpoint(path, map_location=self.device)
        self._check_state(path, state)
        restore_model(self.model, state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"]
        self.train_loss_dict = dict(state["train_loss_dict"])
        self.saved_model_file = state["saved_model_file"]
        self.seconds_before_resume = state["train_seconds"]
        self.resume_point_extra = state["extra"]
        if restore_rng:
            set_rng_state(state["rng"], dataloader_generators(train_data))
        return state

    # --- RecBole hooks --------------------------------------------------------------------------
    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        if not self.resumes_epochs:
            if self.resume_dir is not None and not self._warned_no_resume:
                self._warned_no_resume = True
                self.logger.warning(
                    set_color("resume", "yellow") + f": {type(self).__name__} trains in stages "
                    "of its own: no epoch-level resume, a stopped run starts again from epoch 0"
                )
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self._fit_config = config_fingerprint(self.config)
        state = self.load_resume_point(FIT_STATE, restore_rng=False)
        if state is not None and state["finished"]:
            # the random states at the end of training: what follows (a test evaluation drawing
            # fresh negatives) sees what it saw after the uninterrupted run
            set_rng_state(state["rng"], dataloader_generators(train_data))
            self.logger.info(
                set_color("resume", "yellow") + f": {self.resume_dir} holds a finished run "
                f"({state['epoch']} epochs): not retrained; delete it to train again"
            )
            self.resumed_from_epoch = state["epoch"]
            return self.best_valid_score, self.best_valid_result
        if state is not None:
            self.start_epoch = self.resumed_from_epoch = state["epoch"]
            self._pending_rng = state["rng"]
            self.logger.info(
                set_color("resume", "yellow") + f": continuing from epoch {state['epoch']} "
                f"(state in {self.resume_dir})"
            )
        self._first_epoch = self.start_epoch
        self._resuming_fit = True
        try:
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        finally:
            self._resuming_fit = False
        epochs_done = self._last_epoch + 1
        self.save_resume_point(FIT_STATE, train_data=train_data, epoch=epochs_done, finished=True)
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self._resuming_fit:
            if self._pending_rng is not None:  # resumed: the random states of epoch k's start
                set_rng_state(self._pending_rng, dataloader_generators(train_data))
                self._pending_rng = None
            elif epoch_idx > self._first_epoch:  # epochs < k are complete: save the loop state
                self.save_resume_point(FIT_STATE, train_data=train_data, epoch=epoch_idx)
            self._last_epoch = epoch_idx
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )

    # --- helpers --------------------------------------------------------------------------------
    _last_epoch = -1
    _warned_no_resume = False

    def _elapsed(self) -> float:
        return time.perf_counter() - self._clock if self._clock else 0.0

    def _check_state(self, path: Path, state: dict) -> None:
        if state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a recbole-ext resume state (format {FORMAT})")
        mismatch = other_model(path, state["model"], self.config["model"])
        if mismatch:
            raise ConfigError(
                f"{mismatch}: use another --output for this model (or delete {self.resume_dir})"
            )
        current = self._fit_config or config_fingerprint(self.config)
        differences = config_differences(state["config"], current, packaged_defaults(self.config))
        if differences:
            raise ConfigError(
                f"{path} was saved by a run with other settings ({'; '.join(differences)}); "
                f"resuming it would mix two configurations. Rerun with the saved settings, or "
                f"start afresh with another --output (or delete {self.resume_dir})."
            )
        if state["best_checkpoint_written"] and not os.path.isfile(state["saved_model_file"]):
            raise ConfigError(
                f"{path}: the run's best checkpoint {state['saved_model_file']} is gone, so its "
                f"early-stopping state cannot be resumed; delete {self.resume_dir} to start afresh"
            )


def _plain_result(result):
    return None if result is None else {str(k): float(v) for k, v in result.items()}
