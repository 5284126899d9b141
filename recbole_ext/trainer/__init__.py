"""Trainers: RecBole's, with checkpoints that load under ``torch.load(weights_only=True)`` and
runs that resume after a stop (:mod:`recbole_ext.trainer.resume`).

Our models' own trainers subclass :class:`Trainer` here and override narrow hooks: stages before
RecBole's ``fit`` loop go in ``_before_fit(train_data, valid_data, verbose, show_progress)`` (the
base ``fit`` calls it, :class:`~recbole_ext.trainer.stages.StagedTrainerMixin`, which also
shows each stage's progress), a stage's loss and rows in ``_train_epoch``; RecBole's trainers are
wrapped by :func:`with_safe_checkpoints`.
"""

from __future__ import annotations

import os
import uuid
from functools import cache

from recbole.evaluator import Collector
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import get_local_time, set_color

from recbole_ext.checkpoint import load_checkpoint, other_model, restore_model, save_checkpoint
from recbole_ext.trainer.resume import ResumableTrainerMixin
from recbole_ext.trainer.sampled_eval import SampledEvalMixin
from recbole_ext.trainer.stages import StagedTrainerMixin


class RecordingCollector(Collector):
    """RecBole's collector that keeps the last evaluation's data (per-user ranks/scores)."""

    last_struct = None

    def get_data_struct(self):
        self.last_struct = super().get_data_struct()
        return self.last_struct


class SafeCheckpointMixin:
    """Replace RecBole's pickled checkpoints (``Config`` objects inside; refused by torch>=2.6's
    ``weights_only=True`` default) with tensors-and-plain-values ones, at the three hooks that
    touch the file: ``_save_checkpoint``, ``resume_checkpoint`` and ``evaluate(load_best_model)``.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        # RecBole names files by the second; concurrent runs (benchmark, Ray trials) would collide.
        name = f"{config['model']}-{get_local_time()}-{uuid.uuid4().hex[:6]}.pth"
        self.saved_model_file = os.path.join(self.checkpoint_dir, name)
        self.eval_collector = RecordingCollector(config)  # per-user results for significance

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        save_checkpoint(
            saved_model_file,
            self.model,
            config=self.config,
            epoch=epoch,
            cur_step=self.cur_step,
            best_valid_score=float(self.best_valid_score),
            optimizer=self.optimizer.state_dict(),
        )
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def output_files(self) -> dict[str, str]:
        """Files the run leaves, by what they are: here the checkpoint (when written)."""
        path = self.saved_model_file
        return {"checkpoint": str(path)} if path and os.path.isfile(path) else {}

    def save_pretrained_model(self, epoch, saved_model_file):
        """PretrainTrainer's hook (S3Rec, RaCT): same safe format, loadable by the fine-tune run."""
        save_checkpoint(saved_model_file, self.model, config=self.config, epoch=epoch)
        self.saved_model_file = saved_model_file

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        mismatch = other_model(resume_file, checkpoint.get("model"), self.config["model"])
        if mismatch:
            raise ValueError(mismatch)
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        restore_model(self.model, checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            restore_model(self.model, load_checkpoint(checkpoint_file, map_location=self.device))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(
            eval_data, load_best_model=False, model_file=None, show_progress=show_progress
        )


@cache
def with_safe_checkpoints(trainer_class):
    """``trainer_class`` with :class:`StagedTrainerMixin` (the stages before RecBole's loop and
    their progress), :class:`ResumableTrainerMixin` (epoch-level resume),
    :class:`SafeCheckpointMixin` in front (same name, cached), and :class:`SampledEvalMixin`
    (sampled evaluation of sequential models encodes each history once).

    Trainers outside RecBole's ``Trainer`` hierarchy (the xgboost/lightgbm ``DecisionTreeTrainer``)
    keep their own, non-torch model files and are returned unchanged.
    """
    if not issubclass(trainer_class, RecBoleTrainer) or issubclass(
        trainer_class, SafeCheckpointMixin
    ):
        return trainer_class
    mixins = (StagedTrainerMixin, ResumableTrainerMixin, SafeCheckpointMixin, SampledEvalMixin)
    return type(trainer_class.__name__, (*mixins, trainer_class), {})


Trainer = with_safe_checkpoints(RecBoleTrainer)
