"""Curricula: which training lengths (and, for repeat copy, repeat counts) are drawn as training goes.

Three schedules (after Zaremba & Sutskever 2014, "Learning to Execute"):

    fixed    lengths uniform over the task's whole training range from the start (no curriculum);
    growing  lengths uniform over [min_length, L], where L starts at ``start_length`` and grows
             by ``increment`` each time the learner is ready (Zaremba & Sutskever's "naive");
    mixed    as ``growing``, but each batch draws from the whole range with probability
             ``mix`` (their "combined" schedule, which avoids forgetting the long lengths it
             will need and keeps the short ones sharp).

"Ready" is either a fixed pace (every ``every_n_epochs`` epochs) or a threshold on a
logged metric (``monitor`` below ``threshold``, e.g. ``train/bits_per_seq`` < 1), or both
(whichever comes first). The upper end L never decreases (but to the top of a narrower task range that a run is resumed with). Under DDP a ``train/`` metric is taken over
all the processes (its running sums all-reduced at the epoch's end), so that every process steps up together.

The callback acts on ``trainer.datamodule`` duck-typed: it needs an attribute
``length_range`` (a (low, high) pair it may set) and, for ``mixed``, ``length_mix``
(a probability it sets), plus the task's range, read from ``datamodule.task.min_length`` /
``max_length`` or, failing that, the data module's own range at the start. It logs
``curriculum/max_length`` and ``curriculum/mix`` every epoch and prints each step up.

YAML (trainer callbacks)::

    - class_path: memnet.curriculum.LengthCurriculum
      init_args: {schedule: mixed, start_length: 2, increment: 2, threshold: 1.0}

:class:`RepeatCurriculum` grows repeat copy's largest repeat count in the same way.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from memnet.training import KeyedStateCallback, training_epoch_sums
from memnet.utils import MemnetError, check_positive, check_range, epoch_cut_short, monitored_value

Schedule = Literal["fixed", "growing", "mixed"]
SCHEDULES = ("fixed", "growing", "mixed")


class LengthCurriculum(KeyedStateCallback):
    """Grows the training length range of ``trainer.datamodule``.

    Args:
        schedule: ``fixed``, ``growing`` or ``mixed`` (see the module docstring).
        start_length: the first upper length L (growing, mixed); clipped to the task's range.
        increment: how much L grows at each step up.
        every_n_epochs: step up every this many training epochs (None: only on the threshold).
        monitor: the logged metric compared with ``threshold``.
        threshold: step up as soon as ``monitor`` is below it at the end of an epoch (None: only on the pace).
        mix: for ``mixed``, the probability that a batch draws from the whole range.
    """

    quantity = "length"  # what grows: named in the logged metric and the messages
    widens_lengths = True  # what memnet.lightning.SequenceModule looks for in a run resumed at a narrowed range

    def __init__(
        self,
        schedule: Schedule = "growing",
        *,
        start_length: int = 1,
        increment: int = 1,
        every_n_epochs: int | None = None,
        monitor: str = "train/bits_per_seq",
        threshold: float | None = None,
        mix: float = 0.2,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        check_positive(start_length=start_length, increment=increment)
        if every_n_epochs is not None:
            check_positive(every_n_epochs=every_n_epochs)
        check_range("mix", mix, 0.0, 1.0)
        if schedule != "fixed" and every_n_epochs is None and threshold is None:
            raise ValueError(
                f"schedule {schedule!r} needs a pace: set every_n_epochs (a positive integer) or threshold"
            )
        if schedule == "mixed" and threshold is not None and mix > 0 and monitor.startswith("train/"):
            # the epoch's training metric averages in the batches drawn from the whole range: a level that is
            # learned reads as unlearned (one long batch held L = 4 for 3 epochs at 4.5 bits) and never advances
            raise ValueError(
                f"schedule 'mixed' with a threshold on {monitor!r}: that training metric includes the batches drawn "
                "from the whole range (mix), not the current level's alone; pace it with every_n_epochs, or "
                "monitor a validation metric")
        self.schedule = schedule
        self.start_length = start_length
        self.increment = increment
        self.every_n_epochs = every_n_epochs
        self.monitor = monitor
        self._validated = False  # a validation ran since the last end of epoch (for val/ monitors)
        self._validated_value: float | None = None  # what it logged under ``monitor``
        # the monitored training metric's weighted sum and weight this epoch, for the end of an epoch that a
        # resumed run replays (a checkpoint written at the end of validation, before the epoch's end, as with
        # check_val_every_n_epoch > 1), whose own epoch mean Lightning does not keep. This process's own, except
        # when restored from a checkpoint, which keeps those of all DDP processes (_train_summed)
        self._train_sum: Any = 0.0
        self._train_weight: Any = 0.0
        self._train_summed = False
        self.threshold = threshold
        self.mix = mix
        self.max_length: int | None = None  # the current upper length L, once training starts
        self.epochs_at_level = 0
        self.history: list[tuple[int, int]] = []  # (epoch, L) at every change
        # the epoch whose end was decided last: a run trained by steps and resumed from a checkpoint written at an
        # epoch's end (after the decision) ends that epoch again, and must not decide it twice
        self._decided_epoch: int | None = None

    def state_settings(self) -> dict[str, Any]:
        # the level, the epochs at it and the monitor's sums are kept in checkpoints under the schedule's settings
        # (memnet.training.KeyedStateCallback): a length and a repeat curriculum, or two of other settings, keep
        # their own
        return {"schedule": self.schedule, f"start_{self.quantity}": int(self.start_length),
                "increment": int(self.increment),
                "every_n_epochs": None if self.every_n_epochs is None else int(self.every_n_epochs),
                "monitor": self.monitor, "threshold": None if self.threshold is None else float(self.threshold),
                **({"mix": float(self.mix)} if self.quantity == "length" else {})}

    # ---- the schedule itself, without a trainer (tested directly) ----

    def next_max_length(self, current: int, top: int, *, epochs_at_level: int, metric: float | None) -> int:
        """The upper length after an epoch: ``current`` or one step up, never above ``top``, never down."""
        if self.schedule == "fixed":
            return top
        ready = self.every_n_epochs is not None and epochs_at_level >= self.every_n_epochs
        if self.threshold is not None and metric is not None and metric < self.threshold:
            ready = True
        return min(top, current + self.increment) if ready else current

    # ---- Lightning hooks ----

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = self._datamodule(trainer)
        low, top = self._task_range(datamodule)
        if self.max_length is None:  # a fresh run (a resumed one restored it in load_state_dict)
            self.max_length = top if self.schedule == "fixed" else min(top, max(low, self.start_length))
            self.history.append((trainer.current_epoch, self.max_length))
        else:  # resumed: the level restored, inside the task's range now (a resume may change it; the data module
            # takes the new range with a warning), and the whole range for a schedule now fixed
            level = top if self.schedule == "fixed" else min(top, max(low, self.max_length))
            if level != self.max_length:
                self.max_length = level
                self.history.append((trainer.current_epoch, level))
        self._apply(datamodule)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True
            # a threshold on a name nothing logs never stepped up: refused (memnet.callbacks.monitored_value)
            value = (monitored_value(trainer, self.monitor, type(self).__name__) if self.threshold is not None
                     else trainer.callback_metrics.get(self.monitor))
            self._validated_value = float(value) if value is not None else None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_sum, self._train_weight, self._train_summed = 0.0, 0.0, False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._sums_train_metric():
            running = _epoch_sum_and_weight(trainer, self.monitor)
            self._train_summed = False
            if running is not None:  # the epoch value so far as Lightning weighs it (train/loss: by scored bits)
                self._train_sum, self._train_weight = running
                return
            value = trainer.callback_metrics.get(self.monitor)  # the step's value while the epoch runs
            if value is not None:
                self._train_sum = self._train_sum + value.detach()  # no device sync per step
                self._train_weight += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._decided_epoch == trainer.current_epoch or epoch_cut_short(trainer):
            # the end of an epoch decided before the checkpoint this run resumed from, or of an epoch that max_steps
            # cut short: a resumed run trains the rest of it at this level and decides at its end
            return
        datamodule = self._datamodule(trainer)
        low, top = self._task_range(datamodule)
        self.epochs_at_level += 1
        if self.monitor.startswith("val/"):  # None without a validation since the last decision (already acted on)
            value = self._validated_value if self._validated else None
        else:
            value = trainer.callback_metrics.get(self.monitor)
            if self._sums_train_metric():
                # the epoch value over all DDP processes, so that every process decides the same: Lightning's is
                # this process's own where the metric is logged without sync_dist, and a resumed run replaying
                # the epoch end has none
                total, weight = self._train_sums_over_processes(trainer)
                if weight:
                    value = total / weight
                logged = sorted(name for name in trainer.callback_metrics if name.startswith("train/"))
                if value is None and logged:
                    # a threshold on a name the module does not log (mistyped) never stepped up: the run trained at
                    # its first level to the end, exit 0. Only where other training metrics are there to name: a
                    # resumed run replaying an epoch end (of a checkpoint from before the sums were kept) has none
                    raise MemnetError(f"{type(self).__name__} monitor {self.monitor!r} is not a metric this run "
                                      f"logs in training; it logs: {', '.join(logged)}")
        self._validated = False
        self._decided_epoch = trainer.current_epoch
        metric = float(value) if value is not None else None
        new = self.next_max_length(self.max_length, top, epochs_at_level=self.epochs_at_level, metric=metric)
        # the same on every DDP process (decided on the values over all of them): sync_dist only keeps Lightning
        # from warning, every epoch, that an epoch-level value was logged without it
        pl_module.log(f"curriculum/max_{self.quantity}", float(self.max_length), on_epoch=True, sync_dist=True)
        if self.quantity == "length":
            pl_module.log("curriculum/mix", float(self._mix()), on_epoch=True, sync_dist=True)
        if new != self.max_length:
            rank_zero_info(
                f"curriculum: epoch {trainer.current_epoch}, {self.quantity} now {low}-{new} "
                f"(was {low}-{self.max_length}; {self.monitor}={metric})"
            )
            self.max_length = new
            self.epochs_at_level = 0
            self.history.append((trainer.current_epoch + 1, new))
            self._apply(datamodule)

    def state_dict(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "epochs_at_level": self.epochs_at_level, "history": self.history,
                "validated": self._validated, "validated_value": self._validated_value,
                "train_sum": float(self._train_sum), "train_weight": float(self._train_weight),
                "decided_epoch": self._decided_epoch}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # called on every process after state_dict; only rank 0's checkpoint is written, so the epoch's sums
        # so far are kept summed over the processes, for the epoch end a resumed run replays
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None and self._sums_train_metric():
            total, weight = self._train_sums_over_processes(trainer)
            state.update(train_sum=float(total), train_weight=float(weight))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.max_length = state_dict.get("max_length")
        self.epochs_at_level = int(state_dict.get("epochs_at_level", 0))
        self.history = [tuple(h) for h in state_dict.get("history", [])]
        self._validated = bool(state_dict.get("validated", False))
        self._validated_value = state_dict.get("validated_value")
        self._train_sum = float(state_dict.get("train_sum", 0.0))
        self._train_weight = float(state_dict.get("train_weight", state_dict.get("train_batches", 0)))
        self._train_summed = True  # those of all processes (a checkpoint from before they were: rank 0's)
        self._decided_epoch = state_dict.get("decided_epoch")

    # ---- helpers ----

    def _sums_train_metric(self) -> bool:
        """Whether the monitored training metric's epoch sums are kept (for a threshold on a ``train/`` metric)."""
        return self.threshold is not None and self.monitor.startswith("train/")

    def _train_sums_over_processes(self, trainer: pl.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """The monitored training metric's weighted sum and weight this epoch, summed over the DDP processes.

        A collective: every process calls it at the same point (decided by the configuration alone).
        """
        # read again: resumed mid-epoch, the module adds the batches before the resume to Lightning's sums in its
        # on_train_batch_end, after this callback's; with one batch left the epoch was decided on that batch alone
        running = None if self._train_summed else _epoch_sum_and_weight(trainer, self.monitor)
        if running is not None:
            self._train_sum, self._train_weight = running
        sums = torch.tensor([float(self._train_sum), float(self._train_weight)], device=trainer.strategy.root_device)
        if not self._train_summed:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        return sums[0], sums[1]

    def _mix(self) -> float:
        return self.mix if self.schedule == "mixed" else 0.0

    def _apply(self, datamodule: Any) -> None:
        low, _ = self._task_range(datamodule)
        datamodule.length_range = (low, self.max_length)
        if self.schedule == "mixed":
            datamodule.length_mix = self.mix
        elif hasattr(datamodule, "length_mix"):
            datamodule.length_mix = 0.0

    def _datamodule(self, trainer: pl.Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "length_range"):
            raise TypeError(
                "LengthCurriculum needs trainer.datamodule with a length_range attribute "
                f"(e.g. tasks.algorithmic.AlgorithmicDataModule), got {type(datamodule).__name__}"
            )
        if self.schedule == "mixed" and not hasattr(datamodule, "length_mix"):
            raise TypeError(
                f"schedule 'mixed' needs trainer.datamodule.length_mix; {type(datamodule).__name__} has none"
            )
        return datamodule

    def _task_range(self, datamodule: Any) -> tuple[int, int]:
        task = getattr(datamodule, "task", None)
        if task is not None and hasattr(task, "min_length") and hasattr(task, "max_length"):
            return int(task.min_length), int(task.max_length)
        if not hasattr(self, "_initial_range"):
            self._initial_range = tuple(int(v) for v in datamodule.length_range)
        return self._initial_range


def _epoch_sum_and_weight(trainer: pl.Trainer, key: str) -> tuple[Any, Any] | None:
    """Lightning's running weighted sum and weight of the training metric ``key`` this epoch
    (:func:`memnet.training.training_epoch_sums`), else None. Local to this process under DDP (summed over
    the processes where the curriculum decides). ``train/loss_epoch``, the name of the epoch value of a metric logged
    on_step and on_epoch (the name W&B shows), has the sums of ``train/loss``: read from ``callback_metrics``, it
    held the previous epoch's value until this epoch's end, and every decision was an epoch late."""
    sums = training_epoch_sums(trainer)
    return sums.get(f"training_step.{key}", sums.get(f"training_step.{key.removesuffix('_epoch')}"))


class RepeatCurriculum(LengthCurriculum):
    """Grows the number of repeats that repeat copy draws in training (``RepeatCopyTask``).

    Repeat copy from scratch stalls: the network learns the first pass over the
    sequence, but not to jump back to its start (measured: the loss stayed at
    0.54–0.56 nats per bit for 9,100 steps of batch 16). Learned one repeat count at a
    time (copy with an end marker first, then up to 2 repeats, 3, …) each step
    is small. The count channel stays normalised over the task's whole
    ``[min_repeats, max_repeats]``, so the input means the same thing throughout,
    and validation always draws from the whole range.

    The schedule is ``growing`` (or ``fixed``: the whole range at once); the
    pace is a threshold on a logged metric and/or a fixed number of epochs, as
    for :class:`LengthCurriculum`. ``train/loss`` (nats per scored bit) does not
    grow with the number of repeats, so one threshold (0.01 ≈ 0.7 bits per pass
    over a sequence of 5 vectors) serves every level. Logs ``curriculum/max_repeats``.

    YAML (trainer callbacks)::

        - class_path: memnet.curriculum.RepeatCurriculum
          init_args: {start_repeats: 1, monitor: train/loss, threshold: 0.01}

    Args:
        schedule: ``growing`` or ``fixed``.
        start_repeats: the first largest repeat count drawn.
        increment: how much it grows at each step up.
        every_n_epochs: step up every this many epochs (None: only on the threshold).
        monitor: the logged metric compared with ``threshold``.
        threshold: step up when ``monitor`` is below it at the end of an epoch.
    """

    quantity = "repeats"
    widens_lengths = False  # it widens the repeat counts, never the data module's length range

    def __init__(
        self,
        schedule: Schedule = "growing",
        *,
        start_repeats: int = 1,
        increment: int = 1,
        every_n_epochs: int | None = None,
        monitor: str = "train/loss",
        threshold: float | None = 0.01,
    ) -> None:
        if schedule == "mixed":
            raise ValueError("RepeatCurriculum's schedule must be 'growing' or 'fixed', got 'mixed'")
        check_positive(start_repeats=start_repeats)
        super().__init__(schedule, start_length=start_repeats, increment=increment,
                         every_n_epochs=every_n_epochs, monitor=monitor, threshold=threshold)

    def _datamodule(self, trainer: pl.Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        task = getattr(datamodule, "task", None)
        if task is None or not hasattr(task, "repeats_range"):
            raise TypeError(
                "RepeatCurriculum needs trainer.datamodule.task with a repeats_range "
                f"(tasks.algorithmic.RepeatCopyTask), got {type(task).__name__}"
            )
        return datamodule

    def _task_range(self, datamodule: Any) -> tuple[int, int]:
        return int(datamodule.task.min_repeats), int(datamodule.task.max_repeats)

    def _apply(self, datamodule: Any) -> None:
        low, _ = self._task_range(datamodule)
        datamodule.task.repeats_range = (low, self.max_length)
