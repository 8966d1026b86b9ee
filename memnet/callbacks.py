"""Lightning callbacks: pictures of memory access, a watch for relapses, a decay after convergence, a clip of
gradient spikes, and helpers to find a run's folder."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from memnet.checkpoint import METRICS_KEY  # re-exported: memnet.callbacks.METRICS_KEY
from memnet.plots import first_sequence_steps, plot_dnc_memory, plot_memory_access
from memnet.training import KeyedStateCallback
from memnet.utils import (  # run_dir re-exported: memnet.callbacks.run_dir
    accepts_keyword,
    epoch_cut_short,
    fitting,
    is_integer,
    is_number,
    logged_step,
    monitored_value,
    parameter_dtype,
    run_dir,
    validation_count,
    validation_file_name,
    wandb_offline,
)

log = logging.getLogger(__name__)


class MemoryAccessPlot(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, draw the NTM figure for one fixed example.

    The example is the first sequence of the first validation batch (fixed by
    the data module's seed). It draws while fitting only, not under ``memnet validate``. The PNG goes to
    ``<run>/memory_access/epoch_EEEE_step_SSSSSSSS.png`` (:func:`validation_file_name`: the epoch and the global
    step, so that several validations of one epoch, with ``val_check_interval`` or ``max_steps`` in one long
    epoch, each keep their figure, and the names sort in training order; ``_batch_BBBBBBBB`` added inside a window
    of ``accumulate_grad_batches``) and, with a W&B logger, is logged as the
    image ``memory_access``. Works for
    any network whose ``forward`` accepts ``return_trace=True`` and returns
    ``(logits, trace)`` with ``read_weights`` and ``write_weights`` of shape
    (B, T, heads, N); other networks are skipped.

    Args:
        every_n_epochs: draw every this many validation epochs.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if not is_integer(every_n_epochs) or every_n_epochs < 1:  # 1.5 drew at validations 0, 3, 6, ... (x % 1.5)
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self.last_path: Path | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or validation_count(trainer) % self.every_n_epochs:
            return
        if not trainer.is_global_zero or not fitting(trainer):
            # ``memnet validate`` has no run folder of its own: drawing there made a stray runs/memnet/<id>/ that
            # looked like a run (``memnet figures`` draws a checkpoint's memory access)
            return
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        batch = next(iter(loader))
        path = run_dir(trainer) / "memory_access" / validation_file_name(trainer)
        drawn = draw_memory_access(pl_module, batch, path,
                                   title=f"epoch {trainer.current_epoch}, step {trainer.global_step}")
        if drawn is None:
            return
        self.last_path = drawn
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="memory_access", images=[str(drawn)], step=logged_step(trainer))


def draw_memory_access(module: torch.nn.Module, batch: dict, path: Path, *, title: str = "", **kwargs) -> Path | None:
    """Run ``module`` with a trace on the first sequence of ``batch`` and save the figure.

    The inputs are cast to the module's own dtype (a run in ``64-true`` or
    ``bf16-true`` precision has float64 or bfloat16 weights, the batch float32).
    Only the sequence's own steps are run and drawn, not the padding after its end where
    the batch holds a longer one (:func:`memnet.plots.first_sequence_steps`).
    Returns the path, or None if the module's network records no trace.
    """
    net = getattr(module, "net", module)
    if not accepts_keyword(net.forward, "return_trace"):
        return None  # asked by signature: a TypeError raised inside a tracing network's forward is its own
    steps = first_sequence_steps(batch)  # repeat copy: a sequence of fewer repeats is padded to the batch's longest
    inputs = batch["inputs"][:1, :steps].to(device=module.device, dtype=parameter_dtype(module))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            result = module(inputs, return_trace=True, **kwargs)
    finally:
        module.train(was_training)
    logits, trace = result
    drawn = plot_memory_access(
        path,
        inputs=inputs[0],
        targets=batch["targets"][0, :steps],
        outputs=torch.sigmoid(logits[0]),
        read_weights=trace.read_weights[0],
        write_weights=trace.write_weights[0],
        title=title,
    )
    if hasattr(trace, "usage") and hasattr(trace, "link"):  # DNC: usage, last link matrix, read modes
        modes = getattr(trace, "read_modes", None)
        plot_dnc_memory(Path(path).with_name(Path(path).stem + "_dnc.png"), usage=trace.usage[0],
                        link=trace.link[0, -1], read_modes=None if modes is None else modes[0], title=title)
    return drawn


class LinearStartSwitch(KeyedStateCallback):
    """Linear start (MemN2N paper, §4.2): put the softmax back when validation loss stops falling.

    Works on any module whose ``net`` has a ``softmax_enabled`` flag and an
    ``enable_softmax()`` method (``memnet.models.memn2n.MemN2N`` built with
    ``linear_start: true``); does nothing otherwise. After each validation in the
    linear phase, if ``monitor`` did not fall below its best value for ``patience``
    validations in a row, the softmax is switched on; it is also switched on at the
    end of the ``max_epochs``-th training epoch of the linear phase. The switch is
    logged as ``linear_start/switched`` and its epoch (the last linear one, or the
    one whose validation switched it) kept in ``switched_at``.

    ``patience`` counts validations, as Lightning's ``EarlyStopping`` counts them: with one validation
    an epoch (the configs' default) they are epochs; with ``val_check_interval`` 0.25 four validations
    make an epoch, with ``check_val_every_n_epoch`` 2 one validation is two epochs. ``max_epochs``
    counts training epochs whatever the validations: it ends the phase at an epoch's end, never at a
    validation inside an epoch (nor at the end of an epoch that ``max_steps`` cut short).

    With ``epochs`` set, the linear phase has that fixed length instead, as in the
    authors' code (20 epochs for one task, 30 joint): the softmax is back from
    epoch ``epochs`` (0-based) on, whatever the monitor says. A
    ``memnet.optim.LinearStartStepLR`` scheduler must then have the same
    ``linear_start_epochs`` (checked when training starts); ended by the monitor, the
    scheduler's must be 0 (checked too).

    Its state (best value, validations without improvement, ``switched_at``) is kept in checkpoints under
    its settings (:class:`memnet.training.KeyedStateCallback`).

    Args:
        monitor: the metric watched.
        patience: validations in a row without improvement before the switch.
        max_epochs: optional cap on the linear phase, in training epochs.
        epochs: a fixed length of the linear phase (monitor, patience and max_epochs unused).
    """

    ends_linear_start = True  # what memnet.lightning.QAModule looks for in a net's linear start

    def __init__(self, monitor: str = "val/loss", patience: int = 1, max_epochs: int | None = None,
                 epochs: int | None = None) -> None:
        if not is_integer(patience) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if max_epochs is not None and (not is_integer(max_epochs) or max_epochs < 1):
            raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"epochs must be a positive integer or None, got {epochs!r}")
        self.monitor = monitor
        self.patience = patience
        self.max_epochs = max_epochs
        self.epochs = epochs
        self.best: float | None = None
        self.stale = 0  # validations in a row without a new best
        self.switched_at: int | None = None

    def state_settings(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "patience": int(self.patience),
                "max_epochs": None if self.max_epochs is None else int(self.max_epochs), "epochs": self.epochs}

    @staticmethod
    def _linear_net(pl_module: pl.LightningModule):
        net = getattr(pl_module, "net", None)
        if net is None or not hasattr(net, "enable_softmax") or bool(net.softmax_enabled):
            return None
        return net

    def _switch(self, trainer: pl.Trainer, net, last_linear_epoch: int) -> None:
        net.enable_softmax()
        self.switched_at = last_linear_epoch
        # to the loggers directly: Lightning refuses LightningModule.log in on_validation_end, where the switch is
        for logger in getattr(trainer, "loggers", None) or []:
            logger.log_metrics({"linear_start/switched": float(last_linear_epoch)}, step=logged_step(trainer))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for config in getattr(trainer, "lr_scheduler_configs", None) or []:
            scheduled = getattr(config.scheduler, "linear_start_epochs", None)
            if self.epochs is None and scheduled and self._linear_net(pl_module) is not None:
                # the rate's linear start has a fixed length, the softmax's ends when the monitor stops falling
                raise ValueError(
                    f"LinearStartSwitch puts the softmax back when {self.monitor} stops falling (epochs: null) but "
                    f"the scheduler's linear_start_epochs is {scheduled}: the learning rate would restart at epoch "
                    f"{scheduled} whenever the softmax comes back; set the scheduler's linear_start_epochs: 0, or "
                    f"LinearStartSwitch epochs: {scheduled}"
                )
            if self.epochs is not None and scheduled is not None and scheduled != self.epochs:
                raise ValueError(
                    f"LinearStartSwitch epochs is {self.epochs} but the scheduler's linear_start_epochs is "
                    f"{scheduled}; the softmax and the learning rate would change at different epochs"
                )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = self._linear_net(pl_module)
        if self.epochs is not None and net is not None and trainer.current_epoch >= self.epochs:
            self._switch(trainer, net, self.epochs - 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: Lightning calls the callbacks' epoch-end hooks before the
        # module's, where epoch metrics are logged (val/mean_task_error, val/nrmse), which would be an epoch late
        net = self._linear_net(pl_module)
        if trainer.sanity_checking or not fitting(trainer) or net is None or self.epochs is not None:
            return
        value = monitored_value(trainer, self.monitor, "LinearStartSwitch")
        if value is None:
            return
        value = float(value)
        if self.best is None or value < self.best:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        if self.stale >= self.patience:
            self._switch(trainer, net, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the cap counts whole training epochs: checked at the validation, it ended the phase at the first validation
        # of the last linear epoch (half an epoch early with val_check_interval 0.5), or epochs late when validations
        # were fewer than epochs (check_val_every_n_epoch). After the epoch's validation, which Lightning runs first
        net = self._linear_net(pl_module)
        if (net is None or self.epochs is not None or self.max_epochs is None or not fitting(trainer)
                or epoch_cut_short(trainer)):
            return
        if trainer.current_epoch + 1 >= self.max_epochs:
            self._switch(trainer, net, trainer.current_epoch)

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale, "switched_at": self.switched_at}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict["best"]
        self.stale = state_dict["stale"]
        self.switched_at = state_dict["switched_at"]

class WandbTrackingGuard(WandbLogger):
    """Lightning's ``WandbLogger`` whose tracking never stops the training.

    An error of W&B while logging (``log_metrics``, ``log_hyperparams``, images, tables, checkpoints as artifacts; a
    full disk under the offline folder, W&B's service gone, an internal error) stopped the run where it was, a
    multi-hour training lost since its last checkpoint. It is warned once, naming the error, and the logger logs
    nothing more to W&B in this run (``stopped`` holds why); the run's own files (checkpoints, ``config.yaml``,
    ``summary.json``, the pictures) are written as before. Starting the W&B run (``wandb.init``: an argument it
    refuses, online mode without a key) is not caught: that is the user's to fix.

    memnet's :class:`OfflineFirstWandbLogger` is one; ``memnet fit`` guards any other ``WandbLogger`` a config names
    (Lightning's own, or a subclass of it) the same way (:func:`guard_wandb_logger`): its class is put behind this
    one, which then stands between it and ``WandbLogger``.
    """

    stopped: str | None = None  # why W&B logging stopped in this run ("OSError: ... at step 12"), or None

    def _track(self, call: Callable[[], Any], step: int | None = None) -> None:
        """Run ``call`` (a call into W&B) unless tracking has stopped; an error there stops it, with one warning."""
        if self.stopped is not None:
            return
        self.experiment  # noqa: B018 -- starts the W&B run if not yet started: its errors are the user's to see
        try:
            call()
        except Exception as error:  # noqa: BLE001 -- any failure of W&B's; the training goes on without it
            self.stopped = f"{type(error).__name__}: {error}" + (f" at step {step}" if step is not None else "")
            log.warning("W&B logging failed (%s); the training goes on without W&B tracking for the rest of this run "
                        "(checkpoints, config.yaml and summary.json are still written to the run's folder)",
                        self.stopped)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        self._track(lambda: super(WandbTrackingGuard, self).log_hyperparams(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._track(lambda: super(WandbTrackingGuard, self).log_metrics(metrics, step), step)

    @rank_zero_only
    def log_table(self, *args: Any, step: int | None = None, **kwargs: Any) -> None:
        self._track(lambda: super(WandbTrackingGuard, self).log_table(*args, step=step, **kwargs), step)

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self._track(lambda: super(WandbTrackingGuard, self).log_image(key, images, step, **kwargs), step)

    @rank_zero_only
    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self._track(lambda: super(WandbTrackingGuard, self).log_audio(key, audios, step, **kwargs), step)

    @rank_zero_only
    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self._track(lambda: super(WandbTrackingGuard, self).log_video(key, videos, step, **kwargs), step)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        # with log_model, the checkpoints are logged as artifacts (W&B calls); without it nothing is called
        if self._log_model:
            self._track(lambda: super(WandbTrackingGuard, self).after_save_checkpoint(checkpoint_callback))

    @property
    def experiment(self) -> Any:
        """Lightning's: the W&B run, started (or the one in progress taken up) at the first call."""
        if self._experiment is None:
            import wandb

            taken_up = wandb.run is not None  # the user's (wandb.init before the fit): theirs to finish
            run = super().experiment
            # started here: a failed fit finishes it (_finish_failed); a run taken up, or one given to the logger
            # (WandbLogger(experiment=run)), which never comes this way, is its owner's
            self._run_started = not taken_up and run is not None
            return run
        return super().experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if _finalize_behind_guard(type(self)) is not None:  # a guarded class's own (guard_wandb_logger): as before
            self._finalize_behind(status)
        elif status != "failed" and self._experiment is not None:  # the artifacts of log_model=True, at the end
            self._track(lambda: super(WandbTrackingGuard, self).finalize(status))
        if status == "failed":  # Lightning's word for a fit, validate, test or predict that raised (Ctrl-C too)
            self._finish_failed()

    def _finalize_behind(self, status: str) -> None:
        """The ``finalize`` of a ``WandbLogger`` subclass that has its own, behind the guard: called for every status,
        as it was before its class was guarded; an error there is warned (at a failure, the fit's own error is the
        one raised)."""
        try:
            super().finalize(status)
        except Exception as error:  # noqa: BLE001 -- the training is over; a W&B error must not end it in a traceback
            log.warning("the W&B logger's finalize(%r) failed (%s: %s)", status, type(error).__name__, error)

    def _finish_failed(self) -> None:
        """Finish the W&B run this logger started with exit code 1, once; an error doing so is warned, never raised
        (Lightning calls this while the training's own error is on its way to the user).

        Left running, W&B recorded the exit code of the process when it ended: 0 for memnet's one-line errors
        (``raise SystemExit(1)`` after a diverged training is not ``sys.exit``), so a failed run was shown as
        finished; and a later fit in the same process (a notebook) logged on into it, W&B's run in progress.
        """
        run = self._experiment
        if run is None or not getattr(self, "_run_started", False) or getattr(self, "_finished_failed", False):
            return
        self._finished_failed = True
        try:
            run.finish(exit_code=1)
        except Exception as error:  # noqa: BLE001 -- W&B's service gone, a full disk: the fit's error comes first
            log.warning("W&B could not finish the failed run (%s: %s); W&B records it when this process ends",
                        type(error).__name__, error)


class OfflineFirstWandbLogger(WandbTrackingGuard):
    """Lightning's ``WandbLogger``, offline unless the user opted in (``WANDB_MODE=online``; ``disabled`` turns it off).

    ``offline: null``, the default, is decided when the logger is built, from ``WANDB_MODE``
    (:func:`memnet.utils.wandb_mode`), so a run's saved ``config.yaml`` does not carry the mode of the
    shell it was first run from: ``WANDB_MODE=online memnet fit --config <run>/config.yaml`` syncs, and
    the same config without it stays offline. ``true`` or ``false`` is kept as given. Other arguments
    are ``WandbLogger``'s. Tracking never stops the training (:class:`WandbTrackingGuard`).
    """

    def __init__(self, *, offline: bool | None = None, **kwargs: Any) -> None:
        super().__init__(offline=wandb_offline() if offline is None else offline, **kwargs)


_GUARDED: dict[type, type] = {}  # a WandbLogger class -> the same class behind WandbTrackingGuard


def guard_wandb_logger(logger: Any) -> Any:
    """``logger`` guarded as memnet's own (:class:`WandbTrackingGuard`) when it is a ``WandbLogger`` that is not.

    Its class becomes one of the same name with the guard in front (made once per class), the instance and its
    arguments unchanged; anything else is returned as it is. A guarded logger pickles (Lightning's ``ddp_spawn``
    does) as its own class, guarded again when unpickled.
    """
    if not isinstance(logger, WandbLogger) or isinstance(logger, WandbTrackingGuard):
        return logger
    cls = type(logger)
    if cls not in _GUARDED:
        _GUARDED[cls] = type(cls.__name__, (WandbTrackingGuard, cls), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__reduce__": lambda self: (_unpickle_guarded, (cls, self.__getstate__()))})
    logger.__class__ = _GUARDED[cls]
    return logger


def _finalize_behind_guard(cls: type) -> Any:
    """The ``finalize`` that ``WandbTrackingGuard`` stands in front of in ``cls``, where it is not Lightning's
    ``WandbLogger``'s (a user's subclass that has its own); None where it is."""
    mro = cls.__mro__
    for klass in mro[mro.index(WandbTrackingGuard) + 1:]:
        if "finalize" in vars(klass):
            return None if klass is WandbLogger else vars(klass)["finalize"]
    return None


def _unpickle_guarded(cls: type, state: dict[str, Any]) -> Any:
    logger = cls.__new__(cls)
    logger.__dict__.update(state)
    return guard_wandb_logger(logger)


class LastAndBestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every validation.

    Lightning rewrites ``last.ckpt`` only when a top-k checkpoint was saved in the
    same step, so after an epoch that did not improve the monitored metric the
    "last" checkpoint is stale and a resumed run would repeat training. This
    subclass always saves it, so a run resumes from where it was.

    A checkpoint due after an epoch's last batch (``every_n_train_steps`` or ``train_time_interval``, Lightning
    saves those at a batch's end) is written at the epoch's end instead, after its validation and its
    ``on_train_epoch_end``: resumed from the batch's end, Lightning went on with the next epoch and the epoch's
    end never came (no validation, no curriculum step, no relapse check for it; the weights then differed).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._resumed = trainer.ckpt_path is not None
        if self._resumed:
            # The checkpoint resumed from holds this very step. A run resumed from a checkpoint written at an
            # epoch's end replays that end before any validation; without this it wrote last.ckpt (and tried a
            # top-k save) again, with no val/* metrics, and Lightning warned that the monitor was missing.
            self._last_global_step_saved = trainer.global_step
            # and the scores of its moment go on, as in the unbroken run, where Lightning keeps every metric's last
            # value: a run that ends before its next validation reports the last one (summary.json, later
            # checkpoints); a resumed one reported no val/* at all. Here, after the sanity check, which clears them;
            # in float64, which holds a float32 or float64 value exactly
            metrics = trainer.callback_metrics
            for name, value in (getattr(self, "_resumed_metrics", None) or {}).items():
                metrics.setdefault(name, torch.tensor(value, dtype=torch.float64))
        self._resumed_metrics = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        self._resumed_metrics = checkpoint.get(METRICS_KEY)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """After a resume, put the logging step back where an uninterrupted run has it.

        Lightning adds one to its count of stepped batches when it resumes from a
        checkpoint saved at the end of an epoch, so every step logged after a resume
        was one ahead (601 where an uninterrupted run logs 600). With automatic
        optimisation and one optimiser that count equals ``global_step`` before each
        batch; it is set so on the first batch after the resume.
        """
        if not getattr(self, "_resumed", False):
            return
        self._resumed = False
        if pl_module.automatic_optimization and len(trainer.optimizers) == 1:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's, with the checkpoint's folder taken as this one when both name the same folder.

        A run with a logger keeps its folder as Lightning builds it, relative (``runs/memnet/<id>/checkpoints``);
        resumed, it is set absolute (``MemnetCLI._place_run``): Lightning compares the strings, took the folder
        for another and dropped the best score and the top-k, so the resumed run's first validation became its
        best checkpoint whatever its score, and the earlier best stayed beside it.
        """
        saved = state_dict.get("dirpath")
        if (saved is not None and self.dirpath is not None and saved != self.dirpath
                and os.path.realpath(saved) == os.path.realpath(self.dirpath)):
            state_dict = {**state_dict, "dirpath": self.dirpath}
        super().load_state_dict(state_dict)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not getattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch", False):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        # the epoch's last batch: what Lightning would save now is saved at the epoch's end (on_train_epoch_end)
        due: list[str] = []
        self._save_topk_checkpoint = lambda *args: due.append("topk")
        self._save_last_checkpoint = lambda *args: due.append("last")
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            del self._save_topk_checkpoint, self._save_last_checkpoint
        if getattr(self, "_defer_save_until_validation", False) and self._should_save_on_train_epoch_end(trainer):
            # Lightning (2.5.5 on) puts a save whose monitor is not logged yet off to the validation's end, where it
            # saves only when not saving at the epoch's end: the epoch's end it is
            self._defer_save_until_validation = False
            due.append("deferred")
        self._due_at_epoch_end = trainer.global_step if due else None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._should_refresh_last(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        due, self._due_at_epoch_end = getattr(self, "_due_at_epoch_end", None), None
        if due is not None and due == trainer.global_step and not trainer.fast_dev_run:  # from the last batch
            candidates = self._monitor_candidates(trainer)
            saved = self._last_global_step_saved == trainer.global_step  # at the epoch's validation: last.ckpt
            self._save_topk_checkpoint(trainer, candidates)
            if not saved:
                self._save_last_checkpoint(trainer, candidates)
        if self._should_refresh_last(trainer) and self._should_save_on_train_epoch_end(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _should_refresh_last(self, trainer: pl.Trainer) -> bool:
        return bool(self.save_last) and not self._should_skip_saving_checkpoint(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Keep the scalar metrics of the moment in the checkpoint (``memnet_metrics``).

        A run stopped after its last checkpoint but before its summary (a job
        preempted while it was closing) is finished from that checkpoint with
        these figures, not with an empty summary.
        """
        checkpoint[METRICS_KEY] = {name: float(value) for name, value in trainer.callback_metrics.items()
                                   if isinstance(value, torch.Tensor) and value.numel() == 1}


def _linear_starts_ended(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The networks in ``module`` whose linear start (``LinearStartSwitch``) has ended: the softmax is on."""
    return [net for net in module.modules() if hasattr(net, "enable_softmax") and bool(net.softmax_enabled)]


class RelapseWatch(KeyedStateCallback):
    """Notices a validation cost that rises well above its best after learning: a relapse.

    After each validation epoch the ``monitor`` value v is compared with the best
    (lowest) value b seen so far. A relapse is v > max(``factor`` · b, ``floor``):
    the factor makes it relative to what was reached, the absolute floor keeps
    noise around a tiny best (0.01 → 0.05 bits) from counting. One event is
    reported per excursion: the watch re-arms once v is back at or below that
    threshold.

    Each event is logged as ``relapse/event`` = 1 (with ``relapse/value`` and
    ``relapse/best``) at the global step to every logger (W&B among them), warned
    on the console, and kept in ``events`` as dicts with ``step``, ``epoch``,
    ``value`` and ``best``; ``history`` keeps (step, value) of every validation.
    Both are saved in checkpoints. Optionally the watch also acts:

    - ``restore_best``: load the weights (and, with ``restore_optimizer``, the
      optimiser's moments) of the best validation epoch, bit for bit; the training
      phase stays where it is: a MemN2N whose linear start has ended keeps its
      softmax on, whenever the best weights were taken;
    - ``lr_factor``: multiply the learning rate (and its schedule's) by this
      factor, see :func:`scale_learning_rates`.

    The copy of the best state lives on the CPU and is only taken when
    ``restore_best`` is set. The state is kept in checkpoints under the monitor, factor and floor
    (:class:`memnet.training.KeyedStateCallback`): watches of other rules keep their own.

    Args:
        monitor: the validation metric watched (lower is better).
        factor: a value above ``factor`` times the best is a relapse candidate (> 1).
        floor: ... and only if it is also above this absolute value (≥ 0), in the
            metric's units (bits per sequence for ``val/bits_per_seq``).
        restore_best: on a relapse, restore the best weights.
        restore_optimizer: with ``restore_best``, restore the optimiser state too.
        lr_factor: on a relapse, multiply the learning rate by this (0 < f ≤ 1); None keeps it.
    """

    def __init__(
        self,
        monitor: str = "val/bits_per_seq",
        factor: float = 10.0,
        floor: float = 1.0,
        restore_best: bool = False,
        restore_optimizer: bool = True,
        lr_factor: float | None = None,
    ) -> None:
        if not (isinstance(factor, (int, float)) and factor > 1):
            raise ValueError(f"RelapseWatch factor must be a number > 1, got {factor!r}")
        if not (isinstance(floor, (int, float)) and floor >= 0):
            raise ValueError(f"RelapseWatch floor must be a number >= 0, got {floor!r}")
        if lr_factor is not None and not (isinstance(lr_factor, (int, float)) and 0 < lr_factor <= 1):
            raise ValueError(f"RelapseWatch lr_factor must be in (0, 1] or None, got {lr_factor!r}")
        self.monitor = monitor
        self.factor = float(factor)
        self.floor = float(floor)
        self.restore_best = restore_best
        self.restore_optimizer = restore_optimizer
        self.lr_factor = lr_factor
        self.best: float | None = None
        self.best_step: int | None = None
        self.in_relapse = False
        self.improved = False  # whether the last ``update`` set a new best
        self.history: list[tuple[int, float]] = []  # (step, value) of every validation seen
        self.events: list[dict] = []
        self.best_state: dict | None = None

    def state_settings(self) -> dict[str, Any]:
        # what a relapse is; two watches of one monitor and rule (one acting, one not) would be one watch twice
        return {"monitor": self.monitor, "factor": self.factor, "floor": self.floor}

    def threshold(self) -> float:
        """The value above which the monitor counts as relapsed (inf before any best)."""
        if self.best is None:
            return math.inf
        return max(self.factor * self.best, self.floor)

    def update(self, value: float, step: int, epoch: int = 0) -> dict | None:
        """Feed one validation value; returns the new event if it starts a relapse.

        The pure part of the callback (no trainer needed), so a metric history
        can be replayed through it.
        """
        self.improved = False
        self.history.append((step, value))
        if not math.isfinite(value):
            value = math.inf
        if value > self.threshold():
            if self.in_relapse:
                return None
            self.in_relapse = True
            event = {"step": step, "epoch": epoch, "value": value, "best": self.best}
            self.events.append(event)
            return event
        self.in_relapse = False
        self.improved = self.best is None or value < self.best
        if self.improved:
            self.best, self.best_step = value, step
        return None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: Lightning calls the callbacks' epoch-end hooks before the
        # module's, where epoch metrics are logged (val/mean_task_error, val/nrmse), which would be an epoch late
        if trainer.sanity_checking or not fitting(trainer):
            return
        metric = monitored_value(trainer, self.monitor, "RelapseWatch")
        if metric is None:
            return
        value, step = float(metric), trainer.global_step
        event = self.update(value, step, trainer.current_epoch)
        if event is not None:
            self._report(trainer, event)
            self._act(trainer, pl_module)
        elif self.improved and self.restore_best:
            self.best_state = self._snapshot(trainer, pl_module)

    def _report(self, trainer: pl.Trainer, event: dict) -> None:
        message = (
            f"relapse at step {event['step']} (epoch {event['epoch']}): {self.monitor} = {event['value']:.4g}, "
            f"best {event['best']:.4g} at step {self.best_step} (threshold {self.threshold():.4g})"
        )
        log.warning(message)
        if trainer.is_global_zero:
            print(f"\n[RelapseWatch] {message}", flush=True)
        metrics = {"relapse/event": 1.0, "relapse/value": event["value"], "relapse/best": event["best"]}
        for logger in trainer.loggers:  # beside the validation's own metrics (event["step"] is the global step)
            logger.log_metrics(metrics, step=logged_step(trainer))

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in pl_module.state_dict().items()}
        optimizers = [copy.deepcopy(_to_cpu(opt.state_dict())) for opt in trainer.optimizers]
        return {"weights": weights, "optimizers": optimizers}

    def _act(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best and self.best_state is not None:
            ended = _linear_starts_ended(pl_module)
            pl_module.load_state_dict(self.best_state["weights"])
            for net in ended:  # the weights go back, the phase stays: a linear start that ended stays ended
                net.enable_softmax()
            if self.restore_optimizer:
                for optimizer, state in zip(trainer.optimizers, self.best_state["optimizers"]):
                    # the moments go back, the current settings stay: the schedule's rates (lr, and
                    # initial/max/min lr of OneCycleLR), and amsgrad once ConvergenceDecay has turned it on
                    rates = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
                    optimizer.load_state_dict(copy.deepcopy(state))  # moves tensors to the parameters' device
                    for group, kept in zip(optimizer.param_groups, rates):
                        group.update(kept)
            # the restored weights are the best ones: the watch is no longer in a relapse
            self.in_relapse = False
        if self.lr_factor is not None and self.lr_factor != 1:
            scale_learning_rates(trainer, self.lr_factor)

    def state_dict(self) -> dict:
        state = {"best": self.best, "best_step": self.best_step, "in_relapse": self.in_relapse,
                 "events": list(self.events), "history": list(self.history)}
        if self.restore_best:  # the weights and moments to go back to: a resumed run restores as an unbroken one
            state["best_state"] = self.best_state
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict["best"]
        self.best_step = state_dict["best_step"]
        self.in_relapse = state_dict["in_relapse"]
        self.events = list(state_dict["events"])
        self.history = [tuple(item) for item in state_dict.get("history", [])]
        self.best_state = state_dict.get("best_state")
        if self.restore_best and self.best_state is None and self.best is not None:
            log.warning("RelapseWatch: the checkpoint holds no best weights (written before they were kept); "
                        "a relapse before the next best will be reported, not restored")


class ConvergenceDecay(KeyedStateCallback):
    """After convergence, a lower learning rate and a normaliser that no longer shrinks: training that stays learned.

    Once a task is learned the gradients are tiny and Adam's second moment v
    shrinks with them, so the gradient of a rare wrongly solved batch, divided
    by that small √v, moves every weight it touches by about the learning rate
    and the momentum keeps it going for tens of steps: the NTM then unlearns
    what it knew (``docs/results.md``, "Training on past convergence"). This
    callback changes nothing until the validation cost ``monitor`` is first at
    or below ``threshold`` (so learning is exactly as fast, step for step), and
    from that validation on:

    - multiplies the learning rate of every optimiser and its schedule by
      ``factor`` (:func:`scale_learning_rates`);
    - with ``amsgrad``, turns Adam / AdamW into AMSGrad with the largest v
      seen since the first step: the running maximum of v is kept in the
      optimiser's state (``max_exp_avg_sq``, elementwise, updated after every
      step) from the start, so the normaliser keeps the scale of the gradients
      of learning and does not follow them down.

    Both happen once per run, per callback: several ``ConvergenceDecay`` callbacks
    at different levels make a staircase (each keeps its own state in
    checkpoints, keyed by its monitor and threshold). A run that stops early (an ``EarlyStopping`` on the
    same metric with a ``stopping_threshold`` at or below ``threshold``) uses that
    level instead, and the stop's rule: strictly below it, as ``EarlyStopping`` stops (a validation
    exactly at the level would decay without stopping). A decay before the stop would only slow its
    last stretch, and such a run is unchanged, step for step. The step is logged as ``converged/step`` to every
    logger and kept in checkpoints, and the running maximum lives in the
    optimiser's state, so a resumed run continues exactly.

    Args:
        monitor: the validation metric (lower is better).
        threshold: the level that counts as converged, in the metric's units.
        factor: the multiplier of the learning rate, in (0, 1].
        amsgrad: switch Adam to AMSGrad (the largest v since the start) at convergence.
    """

    def __init__(self, monitor: str = "val/bits_per_seq", threshold: float = 0.1, factor: float = 0.1,
                 amsgrad: bool = True) -> None:
        if not (is_number(threshold) and threshold > 0):
            raise ValueError(f"ConvergenceDecay threshold must be a number > 0, got {threshold!r}")
        if not (isinstance(factor, (int, float)) and 0 < factor <= 1):
            raise ValueError(f"ConvergenceDecay factor must be in (0, 1], got {factor!r}")
        self.monitor = monitor
        self.threshold = float(threshold)
        self.factor = float(factor)
        self.amsgrad = bool(amsgrad)
        self.level = self.threshold  # the level in use: ``threshold``, or a lower (or equal) early stop's
        self.below_only = False  # the level is an early stop's: converged strictly below it, as EarlyStopping stops
        self.converged_step: int | None = None

    def state_settings(self) -> dict[str, Any]:
        # one entry per (monitor, threshold) in a checkpoint, so several decays at different levels can stack
        return {"monitor": self.monitor, "threshold": self.threshold}

    # A checkpoint written before the state was keyed by level holds it under the class name; a run resumed with
    # another threshold or monitor finds it under the old key: placed by KeyedStateCallback. Lost, a decay that had
    # acted acted again (threshold 0.1, resumed with 0.4: the rate, already a tenth in the optimiser's state, a
    # hundredth); such a state that cannot be placed is refused, one that had not acted is a fresh one

    @staticmethod
    def state_can_be_dropped(state: dict[str, Any]) -> bool:
        return state.get("converged_step") is None

    @staticmethod
    def placed_note(state: dict[str, Any]) -> str:
        if state.get("converged_step") is None:
            return ": it had not converged"
        return f": it converged at step {state['converged_step']}: the rate stays scaled, not again"

    @classmethod
    def unplaced_error(cls, kept: list[str], unplaced: list[KeyedStateCallback]) -> str:
        return (f"ConvergenceDecay: the checkpoint holds the state of a decay that acted ({', '.join(kept)}), "
                f"which no ConvergenceDecay of this run has ({', '.join(c.state_key for c in unplaced)}): it would "
                f"decay the rate again; resume with the monitors and thresholds the run was trained with")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stops = [c.stopping_threshold for c in trainer.callbacks
                 if isinstance(c, EarlyStopping) and c.monitor == self.monitor and c.mode == "min"
                 and c.stopping_threshold is not None]
        self.level = min([self.threshold, *stops])
        self.below_only = bool(stops) and self.level <= self.threshold
        if self.below_only:
            log.info("ConvergenceDecay: %s below %g (the early stop's level and rule; the threshold is %g)",
                     self.monitor, self.level, self.threshold)
        if not self.amsgrad:
            return
        for optimizer in trainer.optimizers:
            if not all("amsgrad" in group for group in optimizer.param_groups):
                raise ValueError(f"ConvergenceDecay amsgrad: true needs Adam or AdamW (an optimiser with an amsgrad "
                                 f"option), got {type(optimizer).__name__}; set amsgrad: false")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.amsgrad or self.converged_step is not None:
            return
        for optimizer in trainer.optimizers:
            if not all(group["amsgrad"] for group in optimizer.param_groups):  # AMSGrad keeps its own maximum
                _update_running_max(optimizer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: Lightning calls the callbacks' epoch-end hooks before the
        # module's, where epoch metrics are logged (val/mean_task_error, val/nrmse), which would be an epoch late
        if trainer.sanity_checking or not fitting(trainer) or self.converged_step is not None:
            return
        metric = monitored_value(trainer, self.monitor, "ConvergenceDecay")
        if metric is None:
            return
        # compared in the metric's dtype, as EarlyStopping compares it: a cost logged as 0.08 is float32's 0.08,
        # equal to the level 0.08 there and above it as a Python float
        metric = torch.as_tensor(metric)
        if not bool(torch.lt(metric, self.level) if self.below_only else torch.le(metric, self.level)):
            return
        self.converged_step = trainer.global_step
        scale_learning_rates(trainer, self.factor)
        what = f"learning rate x {self.factor:g}"
        if self.amsgrad:
            for optimizer in trainer.optimizers:
                _update_running_max(optimizer)  # a no-op after a step; makes every state AMSGrad-ready
                for group in optimizer.param_groups:
                    group["amsgrad"] = True
            what += ", AMSGrad (largest v since the start)"
        relation = "<" if self.below_only else "<="
        message = (f"{self.monitor} = {float(metric):.4g} {relation} {self.level:g} at step {trainer.global_step}: "
                   f"{what} from here on")
        log.info(message)
        if trainer.is_global_zero:
            print(f"\n[ConvergenceDecay] {message}", flush=True)
        for logger in trainer.loggers:
            logger.log_metrics({"converged/step": float(trainer.global_step)}, step=logged_step(trainer))

    def state_dict(self) -> dict:
        return {"converged_step": self.converged_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.converged_step = state_dict["converged_step"]


class SpikeClip(KeyedStateCallback):
    """Clips a spike of the gradient norm down to the recent norms' mean + ``z`` standard deviations.

    A relapse starts with a batch whose gradient is tens to thousands of times the recent ones (NTM copy,
    seed 0: a norm of 4.06 where the steps before averaged 0.002). Adam divides it by a √v that followed
    the small gradients down and moves the weights by many learning rates; the fixed clip
    (``gradient_clip_val``, norm 1) lets it through. This callback keeps exponential moving averages
    (weight ``alpha`` per step) of the global gradient norm ‖g‖ and of its variance, started from the
    mean and sample variance of the first ``warmup`` steps (never clipped), and from then on scales a
    gradient whose norm is above μ + z·σ down to exactly μ + z·σ: the z-score clipping of Kumar et al.
    (2025, "ZClip"). The averages take the clipped norm. It acts in ``on_before_optimizer_step``, after
    the DDP all-reduce (every process sees the same norm) and the unscaling of mixed precision, before
    the fixed clip; a non-finite norm is left alone (the module's ``nonfinite_grads`` sees it) and does
    not enter the averages. No host sync per step. The averages are kept in checkpoints, under ``z``,
    ``alpha`` and ``warmup`` (a resumed run clips where the uninterrupted one would have); the number of
    clipped steps of each training epoch is logged as ``spike_clip/clipped``.

    Args:
        z: how many standard deviations above the mean a norm may be, > 0.
        alpha: the averages' weight of the past per step, in (0, 1).
        warmup: steps whose norms start the averages, ≥ 2.
    """

    def __init__(self, z: float = 2.5, alpha: float = 0.97, warmup: int = 25) -> None:
        if not (isinstance(z, (int, float)) and not isinstance(z, bool) and z > 0):
            raise ValueError(f"SpikeClip z must be a number > 0, got {z!r}")
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha < 1):
            raise ValueError(f"SpikeClip alpha must lie in (0, 1), got {alpha!r}")
        if not is_integer(warmup) or warmup < 2:
            raise ValueError(f"SpikeClip warmup must be an integer >= 2, got {warmup!r}")
        self.z, self.alpha, self.warmup = float(z), float(alpha), warmup
        self.steps = 0  # steps seen, finite or not
        # float64 scalars: [count, Σ‖g‖, Σ‖g‖²] over the warm-up, then [mean, variance]; clipped steps this epoch
        self.sums = torch.zeros(3, dtype=torch.float64)
        self.moments = torch.zeros(2, dtype=torch.float64)
        self.clipped = torch.zeros((), dtype=torch.float64)
        self.counted_epoch: int | None = None  # the last epoch whose clipped steps were logged and reset

    def state_settings(self) -> dict[str, Any]:
        return {"z": self.z, "alpha": self.alpha, "warmup": int(self.warmup)}

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None and p.grad.numel()]
        if not grads:
            return
        device = grads[0].device
        if self.sums.device != device:
            self.sums, self.moments, self.clipped = (t.to(device) for t in (self.sums, self.moments, self.clipped))
        # summed in float64: float32 gradients of ~1e19 are finite (not skipped), but their float32 norm is inf
        norms = torch._foreach_norm(grads, 2, dtype=torch.float64)
        norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
        finite = torch.isfinite(norm)
        self.steps += 1
        if self.steps <= self.warmup:
            value = torch.where(finite, norm, 0.0)
            self.sums += finite * torch.stack([torch.ones_like(value), value, value * value])
            if self.steps == self.warmup:
                count, total, squares = self.sums
                mean = total / count.clamp_min(1)
                variance = (squares - count * mean * mean) / (count - 1).clamp_min(1)  # the sample variance
                self.moments = torch.stack([mean, variance.clamp_min(0)])
            return
        mean, variance = self.moments
        limit = mean + self.z * variance.sqrt()
        clip = finite & (norm > limit) & (variance > 0)  # with no spread yet, nothing to call a spike
        torch._foreach_mul_(grads, torch.where(clip, limit / norm, 1.0))  # 1 exactly where not clipped: bit for bit
        self.clipped += clip
        kept = torch.where(clip, limit, norm)
        step = torch.where(finite, kept - mean, 0.0)  # a non-finite norm leaves the averages as they were
        new_mean = mean + (1 - self.alpha) * step
        new_variance = torch.where(finite, self.alpha * (variance + (1 - self.alpha) * step * step), variance)
        self.moments = torch.stack([new_mean, new_variance])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.counted_epoch == trainer.current_epoch:
            return  # a run trained by steps, resumed from the checkpoint of this epoch's end, ends it again
        clipped = float(self.clipped)
        for logger in trainer.loggers:
            logger.log_metrics({"spike_clip/clipped": clipped}, step=logged_step(trainer))
        if not epoch_cut_short(trainer):  # cut short by max_steps, a resumed run counts on to the epoch's end
            self.clipped = torch.zeros_like(self.clipped)
            self.counted_epoch = trainer.current_epoch

    def state_dict(self) -> dict:
        return {"steps": self.steps, "sums": self.sums.cpu().tolist(), "moments": self.moments.cpu().tolist(),
                "clipped": float(self.clipped), "counted_epoch": self.counted_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = int(state_dict["steps"])
        self.sums = torch.tensor(state_dict["sums"], dtype=torch.float64)
        self.moments = torch.tensor(state_dict["moments"], dtype=torch.float64)
        self.clipped = torch.tensor(state_dict["clipped"], dtype=torch.float64)
        self.counted_epoch = state_dict.get("counted_epoch")


@torch.no_grad()
def _update_running_max(optimizer: torch.optim.Optimizer) -> None:
    """Fold Adam's v into the elementwise running maximum ``max_exp_avg_sq`` (AMSGrad's), per parameter."""
    maxima, values = [], []
    for state in optimizer.state.values():
        if "exp_avg_sq" in state:
            if "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = state["exp_avg_sq"].clone()
            maxima.append(state["max_exp_avg_sq"])
            values.append(state["exp_avg_sq"])
    if maxima:
        torch._foreach_maximum_(maxima, values)


def scale_learning_rates(trainer: pl.Trainer, factor: float) -> None:
    """Multiply the learning rate of every optimiser and its schedule by ``factor``.

    Every ``*lr`` entry of each parameter group is scaled (``lr``, and the
    ``initial_lr`` / ``max_lr`` / ``min_lr`` that OneCycleLR recomputes the rate
    from at each step), and every rate a scheduler recomputes the rate from
    (:data:`SCHEDULER_RATES`: ``base_lrs``, the linear start's rate, CyclicLR's
    peaks, the cosine floor, ReduceLROnPlateau's floors), those of the schedulers a
    ``SequentialLR`` or ``ChainedScheduler`` runs, and rates held as 0-d tensors, so a
    schedule keeps its shape at the lower level instead of climbing back at its next step.
    """
    done: set[int] = set()  # the schedulers and tensor rates scaled so far: each once
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            for key in [k for k in group if k.endswith("lr") and _is_rate(group[k])]:
                group[key] = _scaled(group[key], factor, done)
    for config in trainer.lr_scheduler_configs:
        _scale_scheduler(config.scheduler, factor, done)


def _is_rate(value: Any) -> bool:
    """A learning rate: a number, or a 0-d tensor (``torch.optim.Adam(lr=torch.tensor(...))``)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and value.is_floating_point()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scaled(value: Any, factor: float, done: set[int]) -> Any:
    """``value · factor``; a tensor rate is scaled in place (an optimiser may hold it by reference), once."""
    if isinstance(value, torch.Tensor):
        if id(value) not in done:
            done.add(id(value))
            with torch.no_grad():
                value.mul_(factor)
        return value
    return value * factor


def _scale_scheduler(scheduler: Any, factor: float, done: set[int]) -> None:
    """Scale the rates of ``scheduler`` (:data:`SCHEDULER_RATES`) and of the schedulers it runs in turn
    (``SequentialLR``, ``ChainedScheduler``: their ``_schedulers``), each once."""
    if id(scheduler) in done:
        return
    done.add(id(scheduler))
    for name in SCHEDULER_RATES:
        value = getattr(scheduler, name, None)
        if _is_rate(value):
            setattr(scheduler, name, _scaled(value, factor, done))
        elif isinstance(value, (list, tuple)) and value and all(_is_rate(v) for v in value):
            setattr(scheduler, name, type(value)(_scaled(v, factor, done) for v in value))
    for inner in getattr(scheduler, "_schedulers", None) or ():
        _scale_scheduler(inner, factor, done)


# the rates a scheduler recomputes the learning rate from, by attribute: every LRScheduler's base_lrs,
# memnet.optim.LinearStartStepLR's linear_start_lr, CyclicLR's max_lrs, CosineAnnealingLR's (and
# CosineAnnealingWarmRestarts') eta_min, ReduceLROnPlateau's min_lrs
SCHEDULER_RATES = ("base_lrs", "linear_start_lr", "max_lrs", "eta_min", "min_lrs")


def _to_cpu(value):
    """A nested structure of tensors with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value
