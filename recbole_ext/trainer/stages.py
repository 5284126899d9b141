"""A trainer's stages: the hook before RecBole's ``fit`` loop, the plan a run shows in its header,
and the progress of each stage (a tqdm bar with its ETA, and the same estimate in the log).

:class:`StagedTrainerMixin` sits in front of every trainer of :mod:`recbole_ext.trainer`: its
``fit`` runs the trainer's own stages (:meth:`~StagedTrainerMixin._before_fit`: AutoDisenSeq's
pre-training and search, LR-Recsys's explanations), then RecBole's loop, and closes the stage
bars. A trainer reports its stages in :attr:`StagedTrainerMixin.progress`
(:class:`StageProgress`): ``start(Stage(...))`` at a stage's start, ``advance()`` per unit of work
(an optimiser step, an evaluated architecture). After the first units of a stage
(:func:`estimate_after`) the log gets the estimated duration: for the first training stage, of
every planned stage that counts the same unit (the hours ahead of a long run), for the others of
the stage itself. Bars are shown only when the run asks for them and stderr is a terminal
(:func:`interactive`); the estimates are logged either way.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

ESTIMATE_AFTER = 10  # units of a stage timed before its duration is estimated (fewer if short)
PLURALS = {"batch": "batches", "arch": "architectures"}


def plural(unit: str, n: int = 2) -> str:
    """The name of ``n`` units.

    >>> plural("step"), plural("batch"), plural("arch", 1)
    ('steps', 'batches', 'arch')
    """
    return unit if n == 1 else PLURALS.get(unit, unit + "s")


def count(n: int, unit: str) -> str:
    """``n`` units in words.

    >>> count(1, "epoch"), count(20, "epoch"), count(114000, "step"), count(6, "arch")
    ('1 epoch', '20 epochs', '114,000 steps', '6 architectures')
    """
    return f"{n:,} {plural(unit, n)}"


def interactive(stream=None) -> bool:
    """Whether ``stream`` (default: stderr) is a terminal. Progress bars only go there: in a log
    file, a pipe or a Ray worker's output they would be thousands of carriage-return lines.

    >>> import io
    >>> interactive(io.StringIO())
    False
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def stopping_rule(config) -> str:
    """RecBole's early stopping in words: it stops at the evaluation that makes the count of
    evaluations without a better (``>=``) validation metric exceed ``stopping_step``.

    >>> stopping_rule({"stopping_step": 5, "valid_metric": "NDCG@10", "eval_step": 1})
    'stops after 6 epochs without a better NDCG@10 (stopping_step=5)'
    >>> stopping_rule({"stopping_step": 2, "valid_metric": "AUC", "eval_step": 3})
    'stops after 3 evaluations (every 3 epochs) without a better AUC (stopping_step=2)'
    """
    n, every = config["stopping_step"] + 1, config["eval_step"]
    unit = plural("epoch", n) if every == 1 else f"{plural('evaluation', n)} (every {every} epochs)"
    return (
        f"stops after {n} {unit} without a better {config['valid_metric']} "
        f"(stopping_step={config['stopping_step']})"
    )


def format_duration(seconds: float) -> str:
    """A duration as a person reads it.

    >>> [format_duration(s) for s in (0.4, 5.2, 272, 3 * 3600 + 125, 30 * 3600)]
    ['0.4 s', '5 s', '4 min 32 s', '3 h 02 min', '30 h 00 min']
    """
    if seconds < 1:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def loss_summary(losses, names: tuple[str, ...], steps: int, decimals: int = 4) -> str:
    """RecBole's loss of an epoch (the sum over its ``steps``; a tuple for several losses) as the
    named mean per step.

    >>> loss_summary((20.0, 8.0), ("S2I", "S2S"), 4)
    'S2I 5.0000, S2S 2.0000'
    >>> loss_summary(3.0, ("BCE",), 2, decimals=2)
    'BCE 1.50'

    Raises:
        ValueError: the number of names differs from the number of losses.
    """
    values = losses if isinstance(losses, tuple) else (losses,)
    if len(values) != len(names):
        raise ValueError(f"{len(values)} losses but {len(names)} names {names}")
    return ", ".join(f"{n} {v / max(steps, 1):.{decimals}f}" for n, v in zip(names, values))


def unnamed(n: int) -> tuple[str, ...]:
    """Names of ``n`` losses a model does not name (RecBole's ``train_loss1``... style).

    >>> unnamed(1), unnamed(2)
    (('loss',), ('loss1', 'loss2'))
    """
    return ("loss",) if n == 1 else tuple(f"loss{i + 1}" for i in range(n))


def estimate_after(total: int) -> int:
    """Units of a stage timed before its duration is estimated: :data:`ESTIMATE_AFTER`, or a
    fifth of a short stage (at least one).

    >>> [estimate_after(n) for n in (0, 3, 20, 300)]
    [1, 1, 4, 10]
    """
    return max(1, min(ESTIMATE_AFTER, total // 5))


@dataclass(frozen=True)
class Stage:
    """A stage of a run as the header and the progress bars show it.

    Attributes:
        name: ``pre-training``, ``search``, ``fine-tuning``, ``training``, ``test``.
        total: units of work (``at_most``: an upper bound, early stopping may end it sooner).
        unit: ``step`` (one optimiser step), ``arch`` (one evaluated architecture), ``batch``.
        detail: how ``total`` comes about, e.g. ``20 epochs x 15 steps; S2I + S2S``.
    """

    name: str
    total: int
    unit: str = "step"
    detail: str = ""
    at_most: bool = False

    def describe(self) -> str:
        """The stage in one line.

        >>> Stage("fine-tuning", 120, detail="30 epochs x 4 steps", at_most=True).describe()
        'fine-tuning: at most 120 steps (30 epochs x 4 steps)'
        """
        amount = f"{'at most ' if self.at_most else ''}{count(self.total, self.unit)}"
        return f"{self.name}: {amount}" + (f" ({self.detail})" if self.detail else "")


class StageProgress:
    """The progress of a trainer's stages (see the module docs).

    Attributes:
        enabled: show tqdm bars (the run's ``show_progress`` on a terminal).
        plan: the stages the trainer expects to run (:meth:`StagedTrainerMixin.stage_plan`).
        seconds: wall seconds of each stage run so far, by name.
        stage: the running stage (``None`` between stages); ``done``: its units done.
    """

    def __init__(self, logger, enabled: bool = False, stream=None):
        self.logger = logger
        self.enabled = enabled
        self.stream = stream  # where bars go (None: stderr)
        self.plan: list[Stage] = []
        self.seconds: dict[str, float] = {}
        self.stage: Stage | None = None
        self.done = 0
        self._bar = None
        self._started = 0.0
        self._run_estimated = False  # the first training stage projected the planned ones

    def start(self, stage: Stage) -> None:
        """Close the running stage (if any) and start ``stage``."""
        self.close()
        self.stage, self.done, self._started = stage, 0, time.perf_counter()
        if self.enabled:
            self._bar = tqdm(
                total=stage.total,
                desc=stage.name,
                unit=stage.unit,
                smoothing=0,  # the ETA from the stage's average rate (validation pauses included)
                dynamic_ncols=True,
                file=self.stream,
            )

    def advance(self, n: int = 1, postfix: dict | None = None) -> None:
        """``n`` more units of the running stage done; ``postfix`` (e.g. running losses) is shown
        on the bar."""
        if self.stage is None:
            return
        before, self.done = self.done, self.done + n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
        if before < estimate_after(self.stage.total) <= self.done:
            self.logger.info(self.estimate())

    def elapsed(self) -> float:
        return time.perf_counter() - self._started if self.stage is not None else 0.0

    def remaining(self) -> float | None:
        """Seconds left in the running stage at its average rate so far (None before a unit)."""
        if self.stage is None or self.done == 0:
            return None
        return self.elapsed() / self.done * max(self.stage.total - self.done, 0)

    def estimate(self) -> str:
        """The estimate logged after the running stage's first units (see the module docs)."""
        stage, rate = self.stage, self.elapsed() / self.done
        measured = f"{rate:.3g} s/{stage.unit} over the first {self.done} {plural(stage.unit)}"
        ahead = [stage]
        if stage.unit == "step" and not self._run_estimated:
            self._run_estimated = True
            names = [s.name for s in self.plan]
            later = self.plan[names.index(stage.name) + 1 :] if stage.name in names else []
            ahead += later
        parts, untimed = [], []
        for planned in ahead:
            if planned.unit != stage.unit:
                untimed.append(planned.name)
                continue
            total = stage.total if planned is stage else planned.total
            prefix = "at most " if planned.at_most else ""
            parts.append(f"{planned.name} {prefix}{format_duration(rate * total)}")
        line = f"estimated duration ({measured}): " + ", ".join(parts)
        if len(parts) > 1:
            bound = "at most " if any(s.at_most for s in ahead) else ""
            line += f"; together {bound}{format_duration(rate * sum_units(ahead, stage.unit))}"
        if untimed:
            when = "each starts" if len(untimed) > 1 else "it starts"
            line += f"; {', '.join(untimed)}: estimated when {when}"
        return line

    def close(self) -> None:
        """End the running stage: its time goes to :attr:`seconds`, its bar is closed."""
        if self.stage is not None:
            name = self.stage.name
            self.seconds[name] = self.seconds.get(name, 0.0) + self.elapsed()
        if self._bar is not None:
            self._bar.close()
        self.stage, self._bar = None, None


def sum_units(stages: list[Stage], unit: str) -> int:
    """Units of ``stages`` counted in ``unit``.

    >>> sum_units([Stage("a", 10), Stage("b", 3, unit="arch"), Stage("c", 5)], "step")
    15
    """
    return sum(s.total for s in stages if s.unit == unit)


class StagedTrainerMixin:
    """The base ``fit``: the trainer's own stages (:meth:`_before_fit`), then RecBole's loop; the
    stage plan of the run header (:meth:`stage_plan`) and the stage progress (:attr:`progress`)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.progress = StageProgress(self.logger)

    def _before_fit(self, train_data, valid_data, verbose: bool, show_progress: bool) -> None:
        """Hook: the trainer's own stages before RecBole's ``fit`` loop (pre-training, a search,
        explanations...), called by :meth:`fit` with its arguments; none here. A trainer that
        overrides it resumes epochs only with ``epoch_resume = True``
        (:mod:`recbole_ext.trainer.resume`)."""

    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        """:meth:`_before_fit`, then RecBole's ``fit`` loop (resumed by
        :class:`~recbole_ext.trainer.resume.ResumableTrainerMixin`); RecBole's arguments and
        return value. ``show_progress`` also turns on the stage bars.

        With ``epochs: 0`` RecBole's loop trains nothing and returns ``(-inf, None)``; the model
        the stages left (a pre-trained, searched AutoDisenSeq; the one saved and tested) is then
        validated once, so the run reports its validation result like any other.
        """
        self.progress.enabled = show_progress
        try:
            self._before_fit(train_data, valid_data, verbose, show_progress)
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            if self.epochs == 0 and valid_data is not None:
                result = self.best_valid_score, self.best_valid_result = self._valid_epoch(
                    valid_data
                )
                if saved:  # the checkpoint RecBole wrote before, now with its validation score
                    self._save_checkpoint(-1, verbose=False)
                if verbose:
                    self.logger.info(
                        f"epochs=0: the model as the stages left it, validation "
                        f"{self.valid_metric}: {result[0]:.4f}"
                    )
            return result
        finally:
            self.progress.close()

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """RecBole's epoch with each step (each call of the loss function) counted on the running
        stage -- started here as ``training`` when the trainer started none (RecBole's own loop);
        the stage's bar replaces RecBole's per-epoch one."""
        if self.progress.stage is None:
            total = (self.epochs - epoch_idx) * len(train_data)
            self.progress.start(Stage("training", total, at_most=True))
        counted = self._counting(loss_func or self.model.calculate_loss)
        return super()._train_epoch(train_data, epoch_idx, counted, show_progress=False)

    def _valid_epoch(self, valid_data, show_progress=False):
        """RecBole's validation, without a bar of its own (the training stage's bar shows the
        epoch)."""
        return super()._valid_epoch(valid_data, show_progress=False)

    def loss_names(self) -> tuple[str, ...] | None:
        """Names of what the loss function returns, in order (the model's ``loss_names`` when it
        has them)."""
        names = getattr(self.model, "loss_names", None)
        return tuple(names) if isinstance(names, list | tuple) else None

    def _counting(self, loss_func):
        """``loss_func`` that advances the running stage by one step per call (one optimiser
        step), with the running mean of each named loss on the bar (when there is a bar)."""
        names, sums, calls = self.loss_names(), None, 0

        def counted(interaction):
            nonlocal sums, calls
            losses = loss_func(interaction)
            postfix = None
            if self.progress.enabled:
                values = [v.item() for v in (losses if isinstance(losses, tuple) else (losses,))]
                sums = values if sums is None else [a + b for a, b in zip(sums, values)]
                calls += 1
                shown = names if names and len(names) == len(sums) else unnamed(len(sums))
                postfix = {n: f"{v / calls:.4f}" for n, v in zip(shown, sums)}
            self.progress.advance(1, postfix)
            return losses

        return counted

    def stage_plan(self, train_data, valid_data) -> list[Stage]:
        """The stages ``fit`` will run, for the run header and the first estimate: here RecBole's
        loop alone (``epochs`` x the train dataloader's batches, early stopping on validation)."""
        epochs, batches = self.epochs, len(train_data)
        stop = f"; {stopping_rule(self.config)}" if valid_data and self.eval_step > 0 else ""
        detail = f"{count(epochs, 'epoch')} x {count(batches, 'step')}{stop}"
        return [Stage("training", epochs * batches, detail=detail, at_most=bool(stop))]
