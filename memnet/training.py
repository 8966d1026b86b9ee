"""The base of memnet's LightningModules: what every module shares, written once.

    MemnetModule        the net, the optimiser and scheduler, the precision check, the
                        finite-loss check, the skip of a step with non-finite gradients, the
                        train / val / test → ``model_step`` triplet, per-epoch accumulation hooks
    StageMetrics        one torchmetrics ``Metric`` per stage, reset every epoch, DDP-synchronised at its end
    TaskErrorCounts     wrong answers and questions per task (bAbI), NRMSESums the NRMSE's sums,
                        LengthSums a validation's sums by task length
    configure_optimizers, build_from_config, scheduler_config, check_one_cycle_length, check_learning_rates,
    check_scheduler_settings, check_precision, check_finite_loss,
    nonfinite_gradients
    KeyedStateCallback  a stateful callback whose checkpoint entry is keyed by its settings (several
                        of one class in a trainer keep their own), ``place_keyed_states``
    unsaved_arguments   the constructor arguments a module leaves out of its hyper-parameters
    saved_hyperparameters, cannot_rebuild   a checkpoint's hyper-parameters; the error for one without the network

Loading a checkpoint: ``memnet fit`` builds the module through the Lightning CLI, which hands it its
config; the network, optimiser and scheduler are saved as their ``class_path`` / ``init_args`` there
(a config, not a copy of the weights), so ``SequenceModule.load_from_checkpoint(path)`` rebuilds them.

The modules themselves (``SequenceModule``, ``QAModule``, …) are in ``memnet.lightning``.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FunctionType
from typing import Any, Literal, NamedTuple

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.model_helpers import _restricted_classmethod
from torch import nn
from torchmetrics.utilities import dim_zero_cat

from memnet.metrics import nrmse_from_sums, task_error_counts
from memnet.models.pretrained import match_dtype
from memnet.optim import LinearStartStepLR, shrink_gradients_
from memnet.utils import (
    MemnetError,
    batches_done,
    distributed_position,
    epoch_end_skipped_by_resume,
    fitting,
    gather_objects,
    mix_seed,
    resume_cut_short_epoch,
    run_config_candidates,
)

try:  # the config the Lightning CLI builds a module from (Lightning's _InstantiatorFn sets it, since 2.3)
    from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
except ImportError:  # a Lightning without it: the network is not saved, load_from_checkpoint says how to load
    _given_hyperparameters = None

Interval = Literal["step", "epoch"]  # when a learning-rate scheduler steps
log = logging.getLogger(__name__)
NonFinite = Literal["skip", "stop"]  # what a training step with non-finite gradients does
#: consecutive skipped steps after which training stops all the same
MAX_SKIPPED_IN_A_ROW = 10


class MemnetModule(pl.LightningModule):
    """The base of memnet's LightningModules: the net, the optimiser and scheduler, the stage triplet.

    A subclass writes ``forward`` and ``model_step(batch, stage) -> loss`` (forward, loss,
    metrics, logging under ``train/…``, ``val/…``, ``test/…``); this base runs it for the
    three stages, stops training on a NaN or infinite loss (:func:`check_finite_loss`),
    skips an optimiser step whose gradients are not finite (a finite loss whose backward
    overflowed, e.g. through a long recurrence) instead of writing NaN into the weights,
    refuses a precision the network cannot train in, and builds the optimiser and
    scheduler (:func:`configure_optimizers`). Hyper-parameters are saved in checkpoints: the net and
    the factories as their config (``class_path`` / ``init_args``) where the Lightning CLI built the module
    (``memnet fit``), so that ``load_from_checkpoint(path)`` rebuilds it; a module built in Python with a
    network object saves neither (pass it back: ``load_from_checkpoint(path, net=net)``).

    Args:
        net: the network (a ``class_path`` in YAML).
        optimizer: optimiser factory (``class_path`` + ``init_args`` in YAML); default Adam.
        scheduler: optional learning-rate scheduler factory.
        scheduler_interval: step the scheduler every ``step`` (e.g. OneCycleLR) or ``epoch``.
        nonfinite_grads: a step whose gradients hold NaN or inf: ``skip`` (default: no
            parameter and no optimiser state changes, a warning names the step and the
            parameters, ``train/skipped_steps`` counts them; more than
            ``MAX_SKIPPED_IN_A_ROW`` in a row stop training) or ``stop`` (stop at once).
            Under ``precision: 16-mixed`` the GradScaler's own overflows are left to it (it
            skips the step and lowers its scale): they are not counted and do not stop training.
    """

    #: constructor arguments that are not hyper-parameters (not saved in checkpoints), except those of
    #: ``saved_as_config`` given as a config by the Lightning CLI
    not_saved: tuple[str, ...] = ("net", "optimizer", "scheduler")
    #: the arguments saved as their config (``class_path`` / ``init_args``, the net's sizes linked from the data
    #: module filled in) when the Lightning CLI builds the module: ``load_from_checkpoint`` builds them again from it.
    #: An object (a network, an optimiser factory) built in Python is never saved: a checkpoint holds no copy of it
    saved_as_config: tuple[str, ...] = ("net", "optimizer", "scheduler")
    #: the torchmetrics Metric a subclass accumulates over each stage's epoch (None: none);
    #: ``log_epoch_value(stage, value)`` logs what it computed
    epoch_metric: Callable[[], torchmetrics.Metric] | None = None
    #: whether ``forward_kwargs`` passes the targets to the network, as a conditional one needs
    #: (``RecurrentModel(conditional=True)``); a module that does not refuses such a network, which would train
    #: free-running on its own predictions
    passes_targets = False
    #: what the refusal of a conditional network advises: the module that takes one (None: set conditional false)
    conditional_module: str | None = None

    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Interval = "epoch",
        nonfinite_grads: NonFinite = "skip",
    ) -> None:
        if getattr(net, "conditional", False) and not self.passes_targets:
            raise ValueError(
                f"{type(self).__name__} cannot train a conditional {type(net).__name__} (conditional=True): it "
                "passes no targets, so the network would train on its own predictions; "
                + (f"use {self.conditional_module}" if self.conditional_module else "set conditional: false"))
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        if nonfinite_grads not in ("skip", "stop"):
            raise ValueError(f"nonfinite_grads must be 'skip' or 'stop', got {nonfinite_grads!r}")
        self.save_hyperparameters(ignore=unsaved_arguments(self.not_saved, self.saved_as_config))
        self.nonfinite_grads = nonfinite_grads
        self.skipped_steps = 0  # in all
        self.skipped_in_a_row = 0
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.epoch_metrics = None if self.epoch_metric is None else StageMetrics(self.epoch_metric)
        self._resumed_epoch: dict | None = None  # the training epoch a checkpoint was written in the middle of
        self._resumed_global_rng: dict | None = None  # torch's global generators as a checkpoint left them
        # the gradients a window of accumulate_grad_batches had gathered when a checkpoint was written inside it
        self._resumed_grads: dict[str, torch.Tensor] | None = None
        # the epoch whose end a checkpoint was written at before its ReduceLROnPlateau step, and the epoch stepped
        # on resuming from it (step_plateau_schedulers)
        self._plateau_pending_epoch: int | None = None
        self._plateau_stepped_epoch: int | None = None

    def setup(self, stage: str) -> None:
        check_precision(self)
        clip = getattr(self._trainer, "gradient_clip_val", None) if stage == "fit" else None
        if clip is not None and clip < 0:
            # torch clips to a negative norm (or value) without a word, by a negative factor: every step would
            # climb the loss (gradient ascent), exit 0
            raise MemnetError(f"trainer.gradient_clip_val must be ≥ 0 (0 or null: no clipping), got {clip}: a "
                              "negative limit turns every gradient around, so training would climb the loss")

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Forward, loss, metrics and logging of one batch in ``stage``; returns the loss."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model_step(batch, "train")
        check_finite_loss(loss, self)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.skip_nonfinite_step(optimizer)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping (``trainer.gradient_clip_val``), with the global norm taken without overflow.

        torch's ``clip_grad_norm_`` sums the squares in the gradients' dtype: float32 gradients of ~1e19
        (finite, so not skipped) made the norm inf and its clip coefficient 0, a step of nothing instead of
        one clipped to ``gradient_clip_val``. They are shrunk first (:func:`memnet.optim.shrink_gradients_`).
        """
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            shrink_gradients_(_parameters(optimizer, self), gradient_clip_val)
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def skip_nonfinite_step(self, optimizer: torch.optim.Optimizer | None) -> bool:
        """Drop this step's gradients when any is NaN or infinite; True when it did.

        Runs before gradient clipping and the optimiser step (Lightning's
        ``on_before_optimizer_step``). With every ``.grad`` set to None the optimiser
        leaves each parameter and its state (Adam's moments and step count) as they were;
        the learning-rate schedule still advances.
        """
        bad = nonfinite_gradients(optimizer, self)
        if not bad:
            self.skipped_in_a_row = 0
            return False
        if _scaler_active(self._trainer):
            # float16 mixed precision: the GradScaler found the overflow too (unscale_ ran before this hook), skips
            # the step itself and lowers its scale; an overflow at a too-high scale is routine there, not a
            # diverging run, so it is neither counted nor warned about, nor does it stop training
            for p in _parameters(optimizer, self):
                p.grad = None
            return True
        names = {id(p): name for name, p in self.named_parameters()}
        named = ", ".join(names.get(id(p), "?") for p in bad[:4]) + (", …" if len(bad) > 4 else "")
        where = f"step {self.global_step} (epoch {self.current_epoch})"
        if self.nonfinite_grads == "stop":
            raise FloatingPointError(
                f"gradients became non-finite at {where} in {named} (the loss was finite); training "
                "stopped (nonfinite_grads: stop). Lower the learning rate, or set "
                "model.init_args.nonfinite_grads: skip to skip such steps"
            )
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row > MAX_SKIPPED_IN_A_ROW:
            raise FloatingPointError(
                f"gradients were non-finite in {self.skipped_in_a_row} steps in a row, up to {where} "
                f"({named}); training stopped. Lower the learning rate or clip gradients "
                "(trainer.gradient_clip_val)"
            )
        for p in _parameters(optimizer, self):
            p.grad = None
        rank_zero_warn(f"non-finite gradients at {where} in {named}: the step was skipped "
                       f"({self.skipped_steps} skipped in all)")
        if self._trainer is not None:
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        return True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["memnet_skipped_steps"] = self.skipped_steps
        checkpoint["memnet_skipped_in_a_row"] = self.skipped_in_a_row  # a resume stops where the unbroken run would
        # the generators of what draws in training (MemN2N's random noise, random initial memories, seq2seq's
        # teacher forcing: modules with rng_state / set_rng_state): a resume continues their draws
        states = {name: module.rng_state() for name, module in self.named_modules() if hasattr(module, "rng_state")}
        checkpoint["memnet_rng_states"] = {name: state for name, state in states.items() if state is not None}
        # torch's global generators (dropout draws from them; Lightning keeps them in no checkpoint)
        checkpoint["memnet_global_rng"] = global_rng_state()
        if self._trainer is not None and distributed_position(self.trainer)[1] > 1:
            # under DDP every process has drawn its own (as many draws as its batches' shapes asked for: a
            # seq2seq's coin flips per target step), and the file is rank 0's: rank r resumes from rank r's
            # draws (memnet_rng_by_rank[r]); from rank 0's, a resumed run trained on other numbers than the unbroken one
            mine = {"modules": checkpoint["memnet_rng_states"], "global": checkpoint["memnet_global_rng"]}
            checkpoint["memnet_rng_by_rank"] = gather_objects(mine, self.trainer)
        if self._trainer is not None and fitting(self.trainer):
            checkpoint["memnet_train_epoch"] = train_epoch_so_far(self)  # None unless written mid-epoch
            grads = accumulated_gradients(self)
            if grads is not None:  # every process's own (not yet reduced under DDP), by rank
                checkpoint["memnet_accumulated_grads"] = gather_objects(grads, self.trainer)

    @_restricted_classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = None, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``: the module of a checkpoint ``memnet fit`` wrote, with its weights.

        The network (and optimiser, scheduler) is built from the config saved in the checkpoint's
        hyper-parameters, the weights loaded in their dtype (a float64 run comes back in float64). A checkpoint
        without that config (written by a memnet before it kept it, or of a module built in Python, whose
        network is passed back as ``net=``) is refused in one line naming it and saying how to load it, where
        Lightning stopped with jsonargparse's ``the following arguments are required: module.net``.
        """
        try:
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                                strict=strict, weights_only=weights_only, **kwargs)
        except Exception:
            if "net" in kwargs or hparams_file is not None:
                raise
            saved = saved_hyperparameters(checkpoint_path)
            if saved is None or "net" in saved:  # not for want of the network: Lightning's own error
                raise
            raise MemnetError(cannot_rebuild(checkpoint_path, cls.__name__, built_in_python="_instantiator" not in saved)
                              ) from None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is None and isinstance(checkpoint.get("state_dict"), Mapping):
            # loaded outside a Trainer (load_from_checkpoint): load_state_dict copies into the module's own dtype,
            # so a float64 run's weights would come back rounded to float32; under a Trainer its precision decides
            match_dtype(self, checkpoint["state_dict"])
        self.skipped_steps = checkpoint.get("memnet_skipped_steps", 0)
        self.skipped_in_a_row = checkpoint.get("memnet_skipped_in_a_row", 0)
        states = checkpoint.get("memnet_rng_states", {})  # absent in checkpoints from before they were kept
        global_rng = checkpoint.get("memnet_global_rng")
        by_rank = checkpoint.get("memnet_rng_by_rank")  # written under DDP: each process's own draws
        rank, world_size = distributed_position(self._trainer)
        own = bool(by_rank) and len(by_rank) == world_size  # this process's own draws are in the checkpoint
        if by_rank:  # resumed on another number of processes: rank 0's, as a one-process checkpoint holds
            mine = by_rank[rank if own else 0]
            states, global_rng = mine["modules"], mine["global"]
        if rank > 0 and not own:
            # the checkpoint has no draws of this process (written on fewer or more processes): its modules draw their
            # own (memnet.utils.SeededDraws), not a copy of rank 0's noise, which every process then drew alike
            states = {}
        if rank > 0 and global_rng is not None and (not own or same_rng_state(global_rng, by_rank[0]["global"])):
            # rank 0's global generator (a checkpoint of fewer or more processes, or one whose processes' were alike,
            # written before split_global_rng): this process goes on from a state of its own derived from it
            global_rng = {"seed": derived_seed(global_rng, rank)}
        for name, module in self.named_modules():
            if name in states and hasattr(module, "set_rng_state"):
                module.set_rng_state(states[name])
        self._resumed_global_rng = global_rng  # set when training starts (on_train_start)
        self._resumed_epoch = checkpoint.get("memnet_train_epoch")
        accumulated = checkpoint.get("memnet_accumulated_grads")
        self._resumed_grads = None
        if accumulated and len(accumulated) == world_size:
            self._resumed_grads = accumulated[rank]
        elif accumulated:
            rank_zero_warn(f"the checkpoint was written inside a window of accumulate_grad_batches on {len(accumulated)} "
                           f"processes, and is resumed on {world_size}: the window's gradients so far are left out "
                           "(its next step sums the batches after the resume only)")
        trainer = self._trainer
        if trainer is not None:  # before Lightning reads the callbacks' states (and warns of the keys it misses)
            place_keyed_states(trainer, checkpoint)
        if trainer is None or not fitting(trainer):
            return
        self._plateau_pending_epoch = plateau_step_pending(checkpoint)
        skipped = epoch_end_skipped_by_resume(checkpoint)
        if skipped is not None:
            rank_zero_warn(
                f"{trainer.ckpt_path or 'the checkpoint'} was written after the last batch of epoch {skipped} (step "
                f"{checkpoint.get('global_step')}), before the epoch's end (Lightning's ModelCheckpoint saves one of "
                "every_n_train_steps or train_time_interval at a batch's end): Lightning resumes it with epoch "
                f"{skipped + 1}, and epoch {skipped}'s validation at its end, its on_train_epoch_end (a curriculum's "
                "step, a relapse check, its logged training values) and its per-epoch schedule step are not run, so "
                "the resumed run can differ from the unbroken one. memnet's --checkpoint (memnet.callbacks."
                "LastAndBestCheckpoint) writes such a checkpoint at the epoch's end; for an exact resume, resume from "
                "one written at an epoch's end or in its middle")
        # last.ckpt of an epoch cut short by max_steps or max_time: resumed with max_epochs, Lightning dropped the
        # rest of the epoch (here, before it restores its loops from the checkpoint)
        resume_cut_short_epoch(checkpoint)
        # the schedule's total_steps counts what it is stepped by: optimiser steps, or epochs (scheduler_interval)
        planned, unit = ((trainer.max_steps, "steps") if self.scheduler_interval == "step"
                         else (trainer.max_epochs, "epochs"))
        if planned is None or planned < 0:
            return
        for state in checkpoint.get("lr_schedulers") or []:
            total = state.get("total_steps") if isinstance(state, dict) else None
            if "_schedule_phases" in (state or {}) and total is not None and planned > total:
                # the saved OneCycleLR comes back as saved: a longer schedule in the config is not used, and
                # training past its end fails with torch's error many steps into the resumed run
                raise MemnetError(
                    f"the checkpoint's OneCycleLR schedule is {total} {unit} long (restored as saved, whatever the "
                    f"config's total_steps), so it cannot resume to trainer.max_{unit} {planned}; resume with "
                    f"trainer.max_{unit} at most {total}, or start a new run for a longer schedule")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.model_step(batch, "test")

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.scheduler_interval)

    def log(self, name: str, value: Any, *args: Any, batch_size: float | None = None, **kwargs: Any) -> None:
        """Lightning's ``log``, with ``batch_size`` (the weight of the value in the epoch's mean) passed as a float.

        Lightning sums an integer weight in an integer tensor, and under DDP (``sync_dist``) averages it over
        the processes (gloo: a sum copied back into that tensor divided by the world size; NCCL: an integer
        average): truncated, where the epoch's weights summed over the processes do not divide by their
        number. The epoch's value, the mean of the values over the processes divided by that truncated mean
        weight, was too large: batches of 3 and 4 sequences on one of two processes gave ``train/…`` 11/6 for
        11/7. Summed as floats, the weight is exact.
        """
        super().log(name, value, *args, batch_size=None if batch_size is None else float(batch_size), **kwargs)

    # ---- per-epoch accumulation: a subclass with StageMetrics resets and logs them here ----

    def reset_epoch(self, stage: str) -> None:
        """Clear what ``stage`` accumulates over an epoch."""
        if self.epoch_metrics is not None:
            self.epoch_metrics.reset(stage)

    def log_epoch(self, stage: str) -> None:
        """Log what ``stage`` accumulated over its epoch (of every DDP process); not in the sanity check."""
        if self.epoch_metrics is None:
            return
        try:
            value = self.epoch_metrics.compute(stage)
        except ValueError as error:  # e.g. an NRMSE of constant targets: a clear stop, not an inf logged
            raise MemnetError(f"the {stage} epoch's score: {error}") from error
        if value is not None and not self.trainer.sanity_checking:
            self.log_epoch_value(stage, value)

    def log_epoch_value(self, stage: str, value: Any) -> None:
        """Log the value ``epoch_metric`` computed over ``stage``'s epoch (a subclass with one writes it)."""
        raise NotImplementedError

    def on_train_start(self) -> None:
        check_restored_one_cycle(self.trainer)
        if self._plateau_pending_epoch is not None:  # after the callbacks' on_train_start: the checkpoint's metrics are back
            step_plateau_schedulers(self.trainer, self._plateau_pending_epoch)
            self._plateau_stepped_epoch, self._plateau_pending_epoch = self._plateau_pending_epoch, None
        rank, world_size = distributed_position(self.trainer)
        if world_size > 1:  # Lightning's DDP seeds every process's global generators alike at every fit's start
            split_global_rng(rank)
        if self._resumed_global_rng is not None:
            # here, after the sanity check's validation (which drew from them too): training goes on with the draws
            # the unbroken run would have drawn, not seed_everything's first ones again
            set_global_rng_state(self._resumed_global_rng)
            self._resumed_global_rng = None
        if self._resumed_grads is not None:
            # written inside a window of accumulate_grad_batches (a validation every 5 batches, accumulating 2): the
            # window's first batches were trained and left out on the resume, but their gradients were lost and its
            # step took the batches after the resume alone. Lightning clears gradients at a window's first batch
            # only, so the resumed batches add theirs to these, in the unbroken run's order
            restore_gradients(self, self._resumed_grads)
            self._resumed_grads = None
        resumed = self._resumed_epoch
        if resumed is not None and resumed["epoch"] != self.trainer.current_epoch:
            self._resumed_epoch = None
        elif resumed is not None and self.epoch_metrics is not None and self.trainer.is_global_zero:
            # resumed in the middle of the epoch (Lightning does not start it again: no on_train_epoch_start), its
            # accumulation goes on from what the checkpoint holds (on one process: the other processes' batches
            # were gathered into it when it was written)
            self.epoch_metrics.restore("train", resumed["accumulated"])

    def on_train_epoch_start(self) -> None:
        self.reset_epoch("train")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        resumed = self._resumed_epoch
        if resumed is not None:  # the first batch after a resume: in the checkpoint's epoch, its values go on
            if resumed["epoch"] == self.trainer.current_epoch:
                add_logged_so_far(self, resumed["logged"])
            self._resumed_epoch = None

    def on_validation_epoch_start(self) -> None:
        self.reset_epoch("val")

    def on_test_epoch_start(self) -> None:
        self.reset_epoch("test")

    def on_train_epoch_end(self) -> None:
        self.log_epoch("train")
        loop = self.trainer.fit_loop
        # the first epoch end of a resumed fit, where Lightning steps no ReduceLROnPlateau (step_plateau_schedulers);
        # not the checkpoint's own epoch end if on_train_start stepped it already. Lightning's private loop state is
        # read only when a per-epoch plateau schedule is configured
        if (loop.restarting and has_epoch_plateau_scheduler(self.trainer)
                and loop.epoch_loop._num_ready_batches_reached()
                and self.trainer.current_epoch != self._plateau_stepped_epoch):
            step_plateau_schedulers(self.trainer, self.trainer.current_epoch)

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")


def unsaved_arguments(not_saved: Sequence[str], saved_as_config: Sequence[str]) -> list[str]:
    """The constructor arguments ``save_hyperparameters`` is to ignore: ``not_saved``, but for those of
    ``saved_as_config`` that the Lightning CLI gives as a plain config (``class_path`` / ``init_args``, a name).

    A module built in Python has no such config (its network is an object, pickled whole if saved): all of
    ``not_saved`` are left out, as before.
    """
    given = _given_hyperparameters.get() if _given_hyperparameters is not None else None
    if not isinstance(given, Mapping):
        return list(not_saved)
    return [name for name in not_saved
            if not (name in saved_as_config and name in given and _plain_config(given[name]))]


def _plain_config(value: Any) -> bool:
    """Whether ``value`` is YAML-like data (no object, no tensor): a config, not a network or a factory."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_config(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _plain_config(item) for key, item in value.items())
    return False


def saved_hyperparameters(checkpoint_path: Any) -> dict[str, Any] | None:
    """The ``hyper_parameters`` of a checkpoint file, read without its code run (``weights_only``) and its
    tensors left on disk (``mmap``); None where ``checkpoint_path`` is no readable local file."""
    if not isinstance(checkpoint_path, (str, os.PathLike)) or not Path(checkpoint_path).is_file():
        return None
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError):
        return None
    if not isinstance(checkpoint, dict):
        return None
    saved = checkpoint.get("hyper_parameters")
    return dict(saved) if isinstance(saved, Mapping) else {}


def cannot_rebuild(checkpoint_path: Any, module: str, *, built_in_python: bool = False) -> str:
    """The one-line error for a checkpoint whose hyper-parameters hold no network config, saying how to load it."""
    path = Path(checkpoint_path)
    head = f"{path}: {module}.load_from_checkpoint cannot rebuild the network (no 'net' in the checkpoint's hyper_parameters)"
    if built_in_python:
        return (f"{head}: the module was built in Python with a network object, which is not saved; pass one of the "
                f"same architecture: {module}.load_from_checkpoint('{path}', net=<the network>)")
    config = next((c for c in run_config_candidates(path) if c.is_file()), None)
    shown, given = (f"'{config}'", "") if config is not None else ("'<run>/config.yaml'", " --config <run>/config.yaml")
    return (f"{head}: it was written by a memnet that did not save the network's config; load it with its run's "
            f"config, model, data = memnet.cli.rebuild.build([{shown}], '{path}', torch.device('cpu')), or export "
            f"the network (memnet export --ckpt_path {path}{given} --out <folder>) and load it with "
            "memnet.models.load('<folder>'); a checkpoint of the current memnet fit loads as it is")


def check_restored_one_cycle(trainer: pl.Trainer) -> None:
    """Refuse a resumed per-step ``OneCycleLR`` shorter than the steps of ``trainer.max_epochs``, before its first step.

    A checkpoint's schedule comes back as saved, whatever the config's ``total_steps``. ``on_load_checkpoint``
    compares it with ``trainer.max_steps``; a run budgeted by epochs (``max_steps: -1``) has its steps known only
    once its data is set up, here: resumed to more epochs than the schedule covers, it trained up to the end of
    the schedule and stopped with torch's traceback ("Tried to step 5 times. The specified number of total steps
    is 4"). Per-epoch schedules are compared with ``max_epochs`` there.
    """
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        return  # compared in MemnetModule.on_load_checkpoint
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) or config.interval != "step":
            continue
        planned = trainer.estimated_stepping_batches
        if math.isfinite(planned) and planned > scheduler.total_steps:
            per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
            raise MemnetError(
                f"the OneCycleLR schedule is {scheduler.total_steps} steps long (a checkpoint's is restored as saved, "
                f"whatever the config's total_steps), so it cannot resume to the {int(planned)} steps of "
                f"trainer.max_epochs {trainer.max_epochs}; resume with trainer.max_epochs at most "
                f"{scheduler.total_steps // per_epoch}, or start a new run for a longer schedule")


def has_epoch_plateau_scheduler(trainer: pl.Trainer) -> bool:
    """Whether a ``ReduceLROnPlateau`` is stepped per epoch in this run (what :func:`step_plateau_schedulers` steps)."""
    return any(config.reduce_on_plateau and config.interval == "epoch" for config in trainer.lr_scheduler_configs)


def step_plateau_schedulers(trainer: pl.Trainer, epoch: int) -> None:
    """Step the per-epoch ``ReduceLROnPlateau`` schedulers for the end of ``epoch`` of a resumed run, as Lightning
    steps them at the end of every other epoch.

    Lightning steps them after the epoch's validation, and so after the ``last.ckpt`` written there, but at no
    epoch end of a resumed fit that it counts as restarting ("metrics are not saved in the checkpoint"), nor when
    it takes such a checkpoint's epoch as finished: resumed from the ``last.ckpt`` of an epoch's end (a run
    pre-empted, or stopped by ``max_steps`` or ``max_epochs``, before its next epoch), from the middle of an
    epoch, or under ``max_steps`` from any checkpoint, that epoch's plateau step was lost, and the resumed run
    trained on at the rate the unbroken run had lowered (0.3 where it had 0.15). Called at ``on_train_start`` for
    a checkpoint written before its epoch's step (:func:`plateau_step_pending`) and at the first epoch end of a
    resumed fit (``fit_loop.restarting``), each where Lightning steps nothing, with the monitored value as
    Lightning takes it: that of the validation just run, or of the one the checkpoint holds
    (``LastAndBestCheckpoint`` puts its metrics back); without one the step is left out, as Lightning leaves it out.
    """
    loop = trainer.fit_loop.epoch_loop
    for config in trainer.lr_scheduler_configs:
        if not config.reduce_on_plateau or config.interval != "epoch" or (epoch + 1) % config.frequency:
            continue
        value = loop._get_monitor_value(config.monitor)
        if value is not None:
            loop.scheduler_progress.increment_ready()
            trainer.lightning_module.lr_scheduler_step(config.scheduler, value)
            loop.scheduler_progress.increment_completed()


def plateau_step_pending(checkpoint: dict[str, Any]) -> int | None:
    """The epoch whose end ``checkpoint`` was written at before Lightning stepped its ``ReduceLROnPlateau``
    schedulers, else None: after the epoch's last batch and before the epoch was completed (``last.ckpt`` of the
    validation there, or of ``on_train_epoch_end``, where ``ModelCheckpoint`` saves by default), which Lightning
    does at the end of its epoch-end hooks, after the step."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs, batches = fit_loop.get("epoch_progress"), fit_loop.get("epoch_loop.batch_progress")
    if not isinstance(epochs, dict) or not isinstance(batches, dict) or not batches.get("is_last_batch"):
        return None
    current = epochs["current"]
    return current["started"] - 1 if current["completed"] < current["started"] else None


def global_rng_state() -> dict[str, Any]:
    """The states of torch's global generators: the CPU's, and every GPU's once CUDA is in use."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Set torch's global generators to ``state`` (:func:`global_rng_state`, or ``{"seed": s}``: all seeded with
    ``s``); GPU states of another machine's number of GPUs are left out."""
    if "seed" in state:
        torch.manual_seed(state["seed"])  # the CPU's and every GPU's
        return
    torch.set_rng_state(state["cpu"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def split_global_rng(rank: int) -> None:
    """Give DDP process ``rank`` its own stream of torch's global generators (CPU and every GPU), at a fit's start.

    Lightning seeds them alike in every process (``seed_everything``, again by its DDP strategy as a fit starts), and
    dropout draws from them (an LSTM controller's between layers, MemN2N's noise with ``seed: null``, a user module's
    ``torch.rand``): two processes of an LSTM with dropout 0.5 dropped the same units at the first step and drew
    the one stream of numbers after (shifted where their batches' lengths differ), so two processes of batch B had
    B masks where one process of batch 2B has 2B. Rank r > 0 is seeded with the run's seed (``PL_GLOBAL_SEED``,
    which ``seed_everything`` sets; without one ``torch.initial_seed()``, the same in every process) mixed with r
    (:func:`memnet.utils.mix_seed`); rank 0 is left as it is, so it draws what one process draws. The weights are
    every process's already (DDP broadcasts rank 0's).
    """
    if rank == 0:
        return
    seed = os.environ.get("PL_GLOBAL_SEED")
    base = int(seed) if seed is not None and seed.lstrip("-").isdigit() else torch.initial_seed()
    torch.manual_seed(mix_seed(base, rank))


def same_rng_state(state: dict[str, Any], other: dict[str, Any] | None) -> bool:
    """Whether two :func:`global_rng_state` states hold the same CPU generator state."""
    mine, theirs = state.get("cpu"), None if other is None else other.get("cpu")
    return isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor) and torch.equal(mine, theirs)


def derived_seed(state: dict[str, Any], rank: int) -> int:
    """A seed for DDP process ``rank`` from another process's :func:`global_rng_state` (its CPU generator's next
    number mixed with ``rank``), the global generators left as they are."""
    generator = torch.Generator()
    generator.set_state(state["cpu"].cpu())
    return mix_seed(int(torch.randint(0, 2**62, (), generator=generator)), rank)


def training_epoch_sums(trainer: pl.Trainer) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """This process's running weighted sum and weight of every training metric logged with ``on_epoch=True``
    and a mean reduction this epoch, keyed as Lightning keys them (``training_step.train/loss``): the epoch
    value is their ratio, a mean over the batches weighted by the ``batch_size`` each was logged with.

    Read from Lightning's result collection (internal, 2.x; another layout gives nothing): nothing public
    gives an epoch value before the epoch's end. Copies, detached.
    """
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)  # in validation too
    results = getattr(trainer if epoch_loop is None else epoch_loop, "_results", None)
    sums = {}
    for key, metric in (results.items() if isinstance(results, dict) else ()):
        meta = getattr(metric, "meta", None)
        if (meta is not None and getattr(metric, "is_tensor", False) and meta.on_epoch and meta.is_mean_reduction
                and key.startswith("training_step.")):
            sums[key] = (metric.value.detach().clone(), metric.cumulated_batch_size.detach().clone())
    return sums


def train_epoch_so_far(module: MemnetModule) -> dict[str, Any] | None:
    """What the training epoch has accumulated when a checkpoint is written, for a resume in its middle.

    Lightning keeps the position in the epoch but not what the epoch's logged values (``train/loss``,
    ``train/error``, … with ``on_epoch=True``) and the module's own accumulation had gathered: resumed
    from a checkpoint written mid-epoch (``every_n_train_steps``, a pre-emption, ``max_time``), the
    epoch's values covered only its batches after the resume. Under DDP the sums are those of every
    process. Read from Lightning's result collection (internal, 2.x; an unknown layout keeps nothing).
    """
    trainer = module.trainer
    if not 0 < batches_done(trainer) < trainer.num_training_batches:
        return None  # between epochs: the next one starts afresh
    logged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, sums in training_epoch_sums(trainer).items():
        value, weight = (trainer.strategy.reduce(tensor, reduce_op="sum") for tensor in sums)
        logged[key] = (value.cpu(), weight.cpu())
    return {"epoch": trainer.current_epoch, "logged": logged,
            "accumulated": None if module.epoch_metrics is None else module.epoch_metrics.state("train")}


def accumulated_gradients(module: MemnetModule) -> dict[str, torch.Tensor] | None:
    """The gradients gathered so far in a window of ``accumulate_grad_batches`` that is open (batches trained since
    the last optimiser step), on the CPU, by parameter name; None between windows (the gradients then are the
    last step's, which the next window clears). This process's own: under DDP not yet reduced. Whether it is None
    is the same on every process (the window's place), so that they all gather it or none does."""
    trainer = module.trainer
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if loop is None or trainer.accumulate_grad_batches <= 1 or not module.automatic_optimization:
        return None
    if not 0 < batches_done(trainer) < trainer.num_training_batches or not loop._should_accumulate():
        return None
    return {name: p.grad.detach().to("cpu", copy=True) for name, p in module.named_parameters() if p.grad is not None}


def restore_gradients(module: MemnetModule, grads: dict[str, torch.Tensor]) -> None:
    """Set the gradients of ``module``'s parameters to ``grads`` (:func:`accumulated_gradients`), on their devices."""
    for name, p in module.named_parameters():
        if name in grads:
            p.grad = grads[name].to(device=p.device, dtype=p.dtype)


def add_logged_so_far(module: MemnetModule, logged: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Add what a checkpoint's epoch had logged (:func:`train_epoch_so_far`) to the resumed epoch's values."""
    results = getattr(module.trainer.fit_loop.epoch_loop, "_results", None)
    if not module.trainer.is_global_zero or not isinstance(results, dict):
        return
    for key, (value, weight) in logged.items():
        metric = results.get(key)
        if metric is not None and getattr(metric, "is_tensor", False):
            metric.value = metric.value + value.to(metric.value)
            metric.cumulated_batch_size = metric.cumulated_batch_size + weight.to(metric.cumulated_batch_size)


class StageMetrics(nn.Module):
    """One torchmetrics ``Metric`` per stage (``train``, ``val``, ``test``), accumulated over its epoch.

    ``update(stage, ...)`` adds a batch; ``compute(stage)`` returns the epoch's value (synchronised
    across DDP processes by torchmetrics), or None if nothing was added; ``reset(stage)`` (at the
    epoch's start) clears it. ``state`` and ``restore`` carry an epoch across a resume.

    The states are sums, counts or rows to add up (summed or concatenated across the processes),
    never a process's mean: processes that scored different numbers of batches or sequences
    (a validation set that does not divide by them) add up to the whole set's value. They are
    synchronised once, in ``compute`` at the epoch's end, which every process calls whatever
    number of batches it ran; a process needs at least one (the data modules see to it).
    """

    def __init__(self, make: Callable[[], torchmetrics.Metric]) -> None:
        super().__init__()
        # keyed "<stage>_epoch": a ModuleDict key may not be a Module method's name ("train")
        self.stages = nn.ModuleDict({f"{stage}_epoch": make() for stage in ("train", "val", "test")})

    def update(self, stage: str, *args: Any) -> None:
        self.stages[f"{stage}_epoch"].update(*args)

    def compute(self, stage: str) -> Any:
        metric = self.stages[f"{stage}_epoch"]
        if not metric.update_called:
            return None
        return metric.compute()  # kept until the next epoch's start: a checkpoint written after this keeps it

    def reset(self, stage: str) -> None:
        self.stages[f"{stage}_epoch"].reset()

    def state(self, stage: str) -> dict[str, torch.Tensor] | None:
        """What ``stage`` accumulated so far, of every DDP process (list states concatenated), on the CPU."""
        metric = self.stages[f"{stage}_epoch"]
        if not metric.update_called:
            return None
        with metric.sync_context(should_sync=metric._to_sync and torch.distributed.is_available()
                                 and torch.distributed.is_initialized()):
            return {name: (dim_zero_cat(value) if isinstance(value, list) else value).detach().cpu().clone()
                    for name, value in metric.metric_state.items()}

    def restore(self, stage: str, state: dict[str, torch.Tensor] | None) -> None:
        """Go on accumulating ``stage`` from ``state`` (what :meth:`state` returned; None: nothing)."""
        if state is None:
            return
        metric = self.stages[f"{stage}_epoch"]
        for name, default in metric._defaults.items():
            value = state[name].to(metric.device)
            setattr(metric, name, [value] if isinstance(default, list) else value)
        metric._update_count = max(metric._update_count, 1)


class TaskErrorCounts(torchmetrics.Metric):
    """Wrong answers, questions and their cross-entropy per task over an epoch, of every DDP process:
    ``compute() -> (3, K)`` float64, rows 0 and 1 as :func:`task_error_counts`, row 2 the nats."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("wrong", default=[], dist_reduce_fx="cat")
        self.add_state("task", default=[], dist_reduce_fx="cat")
        self.add_state("nats", default=[], dist_reduce_fx="cat")

    def update(self, wrong: torch.Tensor, task: torch.Tensor, nats: torch.Tensor | None = None) -> None:
        """wrong (B,) 1.0 for a wrong answer, task (B,) the task numbers, nats (B,) each question's cross-entropy
        (None: not counted, zeros)."""
        self.wrong.append(wrong.detach())
        self.task.append(task.detach())
        self.nats.append(torch.zeros_like(wrong, dtype=torch.float64) if nats is None else nats.detach().double())

    def compute(self) -> torch.Tensor:
        task = dim_zero_cat(self.task)
        counts = task_error_counts(dim_zero_cat(self.wrong), task).double()
        nats = counts.new_zeros(counts.shape[1]).index_add_(0, task, dim_zero_cat(self.nats).double())
        return torch.cat([counts, nats.unsqueeze(0)])


class NRMSESums(torchmetrics.Metric):
    """[Σ(y−ŷ)², Σy, Σy², n] of each of the K outputs over an epoch's scored steps (:func:`nrmse_sums`), (4, K)
    float64, of every DDP process; ``compute()`` the NRMSE (each output's, averaged) and the mean squared error
    over every scored value of every output, (2,)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        # (4, 1) until the first batch says K (zeros broadcast to (4, K))
        self.add_state("sums", default=torch.zeros(4, 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sums: torch.Tensor) -> None:
        """sums (4, K) of one batch; (4, 1) or (4,) so far (the latter from a checkpoint of an older memnet)."""
        self.sums = self.sums.reshape(4, -1) + sums.to(self.sums.device)

    def compute(self) -> torch.Tensor | None:
        sums = self.sums.reshape(4, -1)
        if sums[3].sum() == 0:
            return None
        return torch.stack([nrmse_from_sums(sums), sums[0].sum() / sums[3].sum()])


class LengthSums(torchmetrics.Metric):
    """A stage's sums by task length over an epoch, float64: ``compute() -> (L, 2 + K)``, one row per length.

    ``update(length, sequences, sums)`` adds one batch of ``sequences``, all of one task length (−1: none
    given), ``sums`` (K,) what the module adds up (e.g. nats, scored bits). ``compute``'s columns: the
    length (sorted), the sequences, then ``sums`` added up. The rows are concatenated across DDP
    processes, so that every process logs the same lengths in the same order: a per-length
    ``self.log`` from only the processes that saw that length pairs Lightning's all-reduces wrongly.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, length: int, sequences: int, sums: torch.Tensor) -> None:
        sums = sums.detach().to(torch.float64)
        self.rows.append(torch.cat([sums.new_tensor([float(length), float(sequences)]), sums]).unsqueeze(0))

    def compute(self) -> torch.Tensor:
        rows = dim_zero_cat(self.rows)
        lengths, index = rows[:, 0].unique(sorted=True, return_inverse=True)
        sums = rows.new_zeros(len(lengths), rows.shape[1] - 1).index_add_(0, index, rows[:, 1:])
        return torch.cat([lengths.unsqueeze(1), sums], dim=1)


def configure_optimizers(module: pl.LightningModule, interval: str) -> Any:
    """What every memnet module's ``configure_optimizers`` returns.

    ``module.optimizer`` and ``module.scheduler`` are the factories given in the
    config; the scheduler (if any) is stepped every ``interval`` (``step`` or
    ``epoch``), monitors ``val/loss`` (for ReduceLROnPlateau) and is checked by
    :func:`scheduler_config`.
    """
    check_learning_rates(module)
    check_scheduler_settings(module)
    optimizer = build_from_config(module.optimizer, "optimizer", module.parameters())
    if module.scheduler is None:
        return optimizer
    lrs = [group["lr"] for group in optimizer.param_groups]  # as given: a scheduler may set them (OneCycleLR)
    scheduler = build_from_config(module.scheduler, "scheduler", optimizer)
    return {"optimizer": optimizer, "lr_scheduler": scheduler_config(scheduler, interval, module._trainer, lrs)}


def build_from_config(factory: Callable[[Any], Any], name: str, argument: Any) -> Any:
    """``factory(argument)``: the optimiser or scheduler of the config's ``model.init_args.<name>``.

    Where the constructor of the config's class refuses its settings (torch's ``ValueError: Expected float between
    0 and 1 pct_start, but got 1.5``, ``Invalid beta parameter at index 1: 1.0``; Python's ``TypeError`` for a
    keyword it does not take), the error becomes a :class:`MemnetError` naming the config key and the class:
    ``model.init_args.scheduler (torch.optim.lr_scheduler.OneCycleLR): <torch's message>``; the ``memnet`` command
    prints it as one line, exit 2, before the first step. Anything else is raised as it was
    (:func:`refused_by_constructor`).
    """
    try:
        return factory(argument)
    except (ValueError, TypeError) as error:
        built = factory_class(factory)
        if built is None or isinstance(error, MemnetError) or not refused_by_constructor(error, built):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MemnetError(f"model.init_args.{name} ({import_path(built)}): {message}") from error


def factory_class(factory: Any) -> type | None:
    """The class a config's factory builds: the factory itself, or the class a ``functools.partial`` holds (its
    function, or among its arguments: the Lightning CLI's, after jsonargparse's instantiator); None unknown."""
    candidates = [factory, getattr(factory, "func", None), *(getattr(factory, "args", None) or ())]
    return next((c for c in candidates if isinstance(c, type)), None)


_TORCH_ROOT = os.path.dirname(torch.__file__) + os.sep
# torch.optim.Optimizer's checks of the parameters it is given (an empty list, a non-leaf tensor), which are the
# module's, not the config's settings
_PARAMETER_CHECKS = {inspect.unwrap(torch.optim.Optimizer.__init__).__code__,
                     inspect.unwrap(torch.optim.Optimizer.add_param_group).__code__}


def refused_by_constructor(error: BaseException, built: type) -> bool:
    """Whether ``error`` is ``built``'s constructor refusing the arguments it was given.

    That is, raised in the ``__init__`` of the class or of one of its bases, or in torch's code that it calls
    (OneCycleLR's check that a list of max_lr has one per parameter group), or a ``TypeError`` raised by Python
    binding the arguments before the constructor ran (``Adam.__init__() got an unexpected keyword argument 'foo'``).
    Not: an error of other code the constructor calls (memnet's own, such as a scheduler's ``get_lr`` at its
    initial step: a bug, whose traceback is wanted), nor torch's checks of the parameters (``optimizer got an empty
    parameter list``).
    """
    inits = [init for cls in built.__mro__ if isinstance(init := vars(cls).get("__init__"), FunctionType)]
    codes = {init.__code__ for init in inits}
    frames = [frame.f_code for frame, _ in traceback.walk_tb(error.__traceback__)]
    first = next((index for index, code in enumerate(frames) if code in codes), None)
    if first is None:  # never entered: Python refused the call itself
        return isinstance(error, TypeError) and str(error).startswith(tuple(f"{init.__qualname__}()" for init in inits))
    inside = frames[first:]
    return not _PARAMETER_CHECKS & set(inside) and all(
        code in codes or code.co_filename.startswith(_TORCH_ROOT) for code in inside)


def import_path(cls: type) -> str:
    """The shortest module path ``cls`` is imported from (``torch.optim.Adam``, not ``torch.optim.adam.Adam``)."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = ".".join(parts[:end])
        if getattr(sys.modules.get(module), cls.__qualname__, None) is cls:
            return f"{module}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


# the learning rates of an optimiser (lr) and of a scheduler that sets them itself (OneCycleLR's max_lr, CyclicLR's
# base_lr and max_lr, the cosine schedules' eta_min that the rate anneals to), as the config names them under
# model.init_args.<factory>.init_args
LEARNING_RATE_KEYS = {"optimizer": ("lr",), "scheduler": ("max_lr", "base_lr", "eta_min")}


def check_learning_rates(module: Any) -> None:
    """Refuse a negative learning rate in the optimiser's or the scheduler's config, before the optimiser is built.

    torch's optimisers stop with a traceback naming no field (``ValueError: Invalid learning rate: -0.01``), and
    ``OneCycleLR`` takes a negative ``max_lr`` without a word: every step then climbs the loss. The factories are
    the ``functools.partial`` objects the config gives (``model.init_args.optimizer``, ``.scheduler``); a rate is
    a number, a list of numbers (one per parameter group) or a tensor.

    Raises:
        ValueError: naming the config field and its value.
    """
    for factory_name, keys in LEARNING_RATE_KEYS.items():
        keywords = getattr(getattr(module, factory_name, None), "keywords", None) or {}
        for key in keys:
            value = keywords.get(key)
            rates = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(rate, (int, float, torch.Tensor)) and bool(torch.as_tensor(rate).lt(0).any())
                   for rate in rates if rate is not None):
                shown = value.tolist() if isinstance(value, torch.Tensor) else value
                raise ValueError(
                    f"model.init_args.{factory_name}.init_args.{key} must be ≥ 0, got {shown}: a negative learning "
                    "rate steps up the gradient, so training would climb the loss")


def _whole_at_least(low: int) -> Callable[[Any], bool]:
    return lambda value: value >= low and float(value).is_integer()  # 2.0 from Python is torch's 2


class SchedulerSetting(NamedTuple):
    """One setting of a torch scheduler and its range (:data:`SCHEDULER_SETTINGS`)."""

    schedulers: tuple[type, ...]  # the classes that take it (their subclasses too)
    key: str  # its name under model.init_args.scheduler.init_args
    in_range: Callable[[Any], bool]
    expected: str  # the range, as the message says it
    why: str  # what a value outside it does


_schedulers = torch.optim.lr_scheduler
# a torch scheduler's settings that torch takes without a word, stops on only at the scheduler's first step (a
# ZeroDivisionError; an epoch in with scheduler_interval: epoch) or refuses in a traceback naming no field
# (ReduceLROnPlateau: 'Factor should be < 1.0.'); those torch refuses naming them (OneCycleLR's total_steps and
# pct_start, CosineAnnealingWarmRestarts' T_0, LinearLR's and ConstantLR's factors) are left to it, its refusal
# said in one line by build_from_config
SCHEDULER_SETTINGS = (
    SchedulerSetting(
        (_schedulers.StepLR, _schedulers.MultiStepLR, _schedulers.ExponentialLR), "gamma", lambda value: value > 0,
        "> 0", "the rate is multiplied by gamma at each decay: 0 stops training at the first, a negative factor "
        "makes the rate negative and training climb the loss"),
    SchedulerSetting(
        (_schedulers.CyclicLR,), "gamma", lambda value: value > 0, "> 0",
        "mode exp_range scales the cycle's height by gamma at every step: 0 flattens the rate to base_lr, a "
        "negative factor swings it below base_lr"),
    SchedulerSetting(
        (_schedulers.CyclicLR,), "step_size_up", lambda value: value >= 1, "≥ 1",
        "the steps of the rising half-cycle: 0 is a division by zero, a negative count no cycle"),
    SchedulerSetting(
        (_schedulers.StepLR,), "step_size", _whole_at_least(1), "an integer ≥ 1",
        "the steps between two decays: 0 stops the run at the scheduler's first step (ZeroDivisionError), a "
        "negative count decays the rate at every step"),
    SchedulerSetting(
        (_schedulers.CosineAnnealingLR,), "T_max", _whole_at_least(1), "an integer ≥ 1",
        "the steps of the half cosine: 0 stops the run at the scheduler's first step (ZeroDivisionError), a "
        "negative count is taken as its absolute value"),
    SchedulerSetting(
        (_schedulers.ReduceLROnPlateau,), "factor", lambda value: 0 < value < 1, "in (0, 1)",
        "the rate is multiplied by factor at each plateau: 1 or more would never lower it (torch refuses it naming "
        "no field), 0 or less drops it to min_lr at the first plateau"),
    SchedulerSetting(
        (_schedulers.ReduceLROnPlateau,), "min_lr", lambda value: value >= 0, "≥ 0",
        "the floor the rate is lowered to: one below 0 is no floor; give 0 for none"),
    SchedulerSetting(
        (_schedulers.ReduceLROnPlateau,), "patience", _whole_at_least(0), "an integer ≥ 0",
        "the validations without improvement before the rate is lowered: a negative patience lowers it at every "
        "validation, improving or not"),
    SchedulerSetting(
        (_schedulers.OneCycleLR,), "div_factor", lambda value: value > 0, "> 0",
        "the cycle starts at max_lr / div_factor: 0 is a division by zero, a negative factor starts at a negative "
        "rate, training climbing the loss"),
    SchedulerSetting(
        (_schedulers.OneCycleLR,), "final_div_factor", lambda value: value > 0, "> 0",
        "the cycle ends at max_lr / (div_factor · final_div_factor): 0 is a division by zero, a negative factor "
        "anneals the rate below 0, training climbing the loss"),
    SchedulerSetting(
        (_schedulers.LinearLR, _schedulers.ConstantLR, _schedulers.PolynomialLR), "total_iters", _whole_at_least(0),
        "an integer ≥ 0", "the steps of the warm-up or decay: a negative count never ends it (LinearLR and "
        "ConstantLR stay at their starting factor, PolynomialLR never decays)"),
    SchedulerSetting(
        (_schedulers.PolynomialLR,), "power", lambda value: value >= 0, "≥ 0",
        "a negative power makes the rate grow towards infinity as the decay nears its end"),
    # memnet's own: LinearStartStepLR refuses these too, naming the bare argument (for a scheduler built in Python)
    SchedulerSetting(
        (LinearStartStepLR,), "linear_start_epochs", _whole_at_least(0), "an integer ≥ 0",
        "the epochs of the linear start at linear_start_lr (0: none)"),
    SchedulerSetting(
        (LinearStartStepLR,), "linear_start_lr", lambda value: value > 0, "> 0",
        "the rate of the linear start: at 0 nothing trains, a negative rate climbs the loss"),
    SchedulerSetting(
        (LinearStartStepLR,), "step_size", _whole_at_least(1), "an integer ≥ 1",
        "the epochs between two reductions of the rate after the linear start"),
    SchedulerSetting(
        (LinearStartStepLR,), "gamma", lambda value: 0 < value <= 1, "in (0, 1]",
        "the rate is multiplied by gamma at each reduction: 0 or less stops training or makes the rate negative, "
        "more than 1 grows it"),
)


def check_scheduler_settings(module: Any) -> None:
    """Refuse a scheduler setting out of its range (:data:`SCHEDULER_SETTINGS`), before the scheduler is built.

    torch takes most of them without a word (a ``StepLR`` ``gamma`` of -0.5: the rate's sign flips at every decay;
    a ``CosineAnnealingLR`` ``eta_min`` below 0 is a learning rate, :func:`check_learning_rates`), stops with a
    ``ZeroDivisionError`` at the scheduler's first step (``StepLR`` ``step_size`` 0), or refuses in a traceback
    naming no field. ``module.scheduler`` is the ``functools.partial`` the config gives (the Lightning CLI's holds
    the class among its arguments, after jsonargparse's instantiator) or one of the class itself; a setting is a
    number or a list of them (one per parameter group). Settings of other schedulers, and values that are not numbers, are left to torch.

    Raises:
        ValueError: naming the config field, its value and what was expected.
    """
    factory = getattr(module, "scheduler", None)
    keywords = getattr(factory, "keywords", None) or {}
    scheduler_class = factory_class(factory)
    if scheduler_class is None:
        return
    for classes, key, in_range, expected, why in SCHEDULER_SETTINGS:
        value = keywords.get(key)
        if value is None or not issubclass(scheduler_class, classes):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(item, (int, float)) and not isinstance(item, bool) and not in_range(item)
               for item in values):
            raise ValueError(
                f"model.init_args.scheduler.init_args.{key} must be {expected}, got {value} "
                f"({scheduler_class.__name__}): {why}")


def scheduler_config(scheduler: Any, interval: str, trainer: pl.Trainer | None,
                     optimizer_lrs: Sequence[float] = ()) -> dict[str, Any]:
    """Lightning's scheduler entry, after checking that a fixed-length schedule covers the training.

    ``OneCycleLR`` raises once it is stepped past ``total_steps``; rather than fail
    hours into a run, a training longer than the schedule (``trainer.max_steps``,
    or ``max_epochs`` × batches per epoch) is refused before the first step, with
    the two numbers and the field to change (a shorter training is said in a warning line:
    :func:`check_one_cycle_length`). ``memnet.optim.LinearStartStepLR`` counts
    epochs: stepped every ``step``, its linear start would end after that many batches
    (while ``LinearStartSwitch`` puts the softmax back after that many epochs), so it is refused.
    """
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and trainer is not None:
        check_plateau_has_its_metric(interval, trainer)
    if isinstance(scheduler, LinearStartStepLR) and interval != "epoch":
        raise ValueError(
            f"memnet.optim.LinearStartStepLR counts epochs (linear_start_epochs {scheduler.linear_start_epochs}, "
            f"step_size {scheduler.step_size}) but model.init_args.scheduler_interval is {interval!r}: its linear "
            "start would end after that many batches; set scheduler_interval: epoch"
        )
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and trainer is not None:
        check_one_cycle_length(scheduler, interval, trainer, optimizer_lrs)
    return {"scheduler": scheduler, "interval": interval, "monitor": "val/loss"}


def planned_scheduler_steps(interval: str, trainer: pl.Trainer) -> tuple[float, str, str]:
    """How many times this fit steps a scheduler stepped every ``interval``: (count, how it is reached, the option).

    The first of ``trainer.max_steps`` and ``max_epochs`` to be reached ends the fit; an epoch cut short by
    ``max_steps`` still ends with a step of a per-epoch scheduler. A limit whose length in the scheduler's unit
    needs the batches per epoch, where the data module cannot say (an iterable without a length), is left out.
    ``(inf, "", "")`` where nothing bounds the fit.
    """
    max_steps = trainer.max_steps if trainer.max_steps is not None and trainer.max_steps >= 0 else None
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
    converted = max_epochs if interval == "step" else max_steps  # the limit counted in the other unit
    per_epoch = _steps_per_epoch(trainer) if converted is not None else None
    if interval == "step":
        limits = [(max_steps, "trainer.max_steps", "trainer.max_steps"),
                  (per_epoch * max_epochs if per_epoch and max_epochs is not None else None,
                   f"trainer.max_epochs {max_epochs} of {per_epoch} steps", "trainer.max_epochs")]
    else:
        limits = [(max_epochs, "trainer.max_epochs", "trainer.max_epochs"),
                  (math.ceil(max_steps / per_epoch) if per_epoch and max_steps is not None else None,
                   f"the epochs of trainer.max_steps {max_steps}, {per_epoch} steps an epoch", "trainer.max_steps")]
    given = [limit for limit in limits if limit[0] is not None]
    return min(given, key=lambda limit: limit[0]) if given else (math.inf, "", "")


def _steps_per_epoch(trainer: pl.Trainer) -> int | None:
    """Optimiser steps in one training epoch (batches over ``accumulate_grad_batches``, rounded up); None unknown."""
    try:
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()  # as Lightning's estimated_stepping_batches does
        batches = trainer.num_training_batches
    except Exception:  # noqa: BLE001 -- no estimate (a stand-in trainer, a loader that fails to build): no check
        return None
    if not isinstance(batches, int) or batches <= 0:  # inf: an iterable without a length
        return None
    return math.ceil(batches / max(1, int(trainer.accumulate_grad_batches)))


def check_one_cycle_length(scheduler: torch.optim.lr_scheduler.OneCycleLR, interval: str, trainer: pl.Trainer,
                           optimizer_lrs: Sequence[float] = ()) -> None:
    """A ``OneCycleLR`` as long as the fit: refused longer than the schedule, a warning shorter, each in one line.

    Longer, ``OneCycleLR`` raises at its first step past ``total_steps``, hours into a run. Shorter, the rate
    never anneals: the run ends part way through the cycle, the schedule the config gave silently cut (not said
    under ``trainer.fast_dev_run``, whose one batch, or N, cuts it short on purpose: the line named a
    ``trainer.max_steps`` the user never gave). The
    optimiser's own ``lr`` (``optimizer_lrs``, per parameter group, as built) is unused: ``OneCycleLR`` sets the
    rate from its ``max_lr``, so an ``lr`` other than ``max_lr`` is said to change nothing.

    Raises:
        ValueError: naming both numbers, the limit and the field to change.
    """
    total = scheduler.total_steps
    planned, reached, option = planned_scheduler_steps(interval, trainer)
    field = "model.init_args.scheduler.init_args.total_steps"
    if math.isfinite(planned) and planned > total:
        raise ValueError(
            f"OneCycleLR total_steps is {total} {interval}s but training runs for {int(planned)} ({reached}); the "
            f"schedule would end early and stop training with an error. Set {field} to at least {int(planned)}, "
            f"or lower {option}.")
    if not getattr(trainer, "is_global_zero", True):
        return
    # trainer.fast_dev_run (a check that the config runs, of 1 batch or N) stops every schedule short on purpose
    if math.isfinite(planned) and planned < total and not getattr(trainer, "fast_dev_run", False):
        log.warning(f"OneCycleLR total_steps is {total} {interval}s but training stops after {int(planned)} "
                    f"({reached}): the rate never anneals, the run ends {planned / total:.1%} into its schedule; set "
                    f"{field} to {int(planned)} for a whole cycle")
    groups = scheduler.optimizer.param_groups
    # an lr left at the optimiser's default was not given (a config without one gets it filled in): nothing to say
    default = inspect.signature(type(scheduler.optimizer)).parameters.get("lr")
    unset = default.default if default is not None and isinstance(default.default, (int, float)) else None
    differ = [(lr, group["max_lr"]) for lr, group in zip(optimizer_lrs, groups, strict=False)
              if "max_lr" in group and not math.isclose(float(lr), float(group["max_lr"]))
              and (unset is None or not math.isclose(float(lr), float(unset)))]
    if differ:
        lr, peak = differ[0]
        log.warning(f"the optimiser's lr {float(lr):g} changes nothing: OneCycleLR sets the rate from its max_lr "
                    f"{float(peak):g} (model.init_args.scheduler.init_args.max_lr); give the rate there")


def check_plateau_has_its_metric(interval: str, trainer: pl.Trainer) -> None:
    """Refuse a ``ReduceLROnPlateau`` that would be stepped where no ``val/loss`` is logged yet.

    Lightning steps it on the monitored value and stops the run with a traceback
    (``MisconfigurationException: ReduceLROnPlateau conditioned on metric val/loss which is not available``) where
    there is none: stepped every ``step``, at the first step, before any validation (unless every batch is
    validated, ``val_check_interval: 1``); stepped every ``epoch``, at the end of the first epoch without a
    validation (``check_val_every_n_epoch`` above 1, or ``limit_val_batches: 0``), after that epoch's training.
    """
    every = trainer.check_val_every_n_epoch
    validates_every_batch = trainer.val_check_interval == 1 and not isinstance(trainer.val_check_interval, float)
    if interval == "step" and not validates_every_batch:
        raise ValueError(
            "ReduceLROnPlateau steps on val/loss, which only a validation logs: stepped every step "
            "(model.init_args.scheduler_interval: step) it has none at the first step and the run stops there; "
            "set scheduler_interval: epoch")
    if interval == "epoch" and (trainer.limit_val_batches == 0 or (every is not None and every > 1)):
        raise ValueError(
            "ReduceLROnPlateau steps at every epoch's end on val/loss, but not every epoch is validated "
            f"(trainer.check_val_every_n_epoch {every}, limit_val_batches {trainer.limit_val_batches}): the run "
            "would stop at the end of the first epoch without one; set check_val_every_n_epoch: 1")


def check_precision(module: pl.LightningModule) -> None:
    """Refuse a ``trainer.precision`` that the network declares it cannot train in.

    A network lists such settings in ``refuses_precisions`` (the NTM and the DNC: ``16-true``).
    """
    trainer = module._trainer
    precision = str(getattr(trainer, "precision", "")) if trainer is not None else ""
    net = getattr(module, "net", None)
    if precision and precision in getattr(net, "refuses_precisions", ()):
        raise ValueError(
            f"trainer.precision {precision!r} is not supported by {type(net).__name__} (its gradients "
            "become non-finite in float16); use --trainer.precision 32-true, bf16-mixed or bf16-true"
        )


def nonfinite_gradients(optimizer: torch.optim.Optimizer | None, module: nn.Module | None = None) -> list[torch.Tensor]:
    """The parameters of ``optimizer`` (of ``module`` without one) whose gradient holds a NaN or an infinity."""
    everything = _parameters(optimizer, module)
    params = [p for p in everything if p.grad is not None]
    if not params:
        return []
    norms = torch._foreach_norm([p.grad for p in params])  # one pass; a NaN or inf entry makes its norm non-finite
    finite = torch.isfinite(torch.stack([n.to(torch.float32) for n in norms]))
    if bool(finite.all()):
        return []
    # a norm can also overflow from finite entries above ~1e19: check those entries themselves
    return [p for p, ok in zip(params, finite.tolist(), strict=True) if not ok and not torch.isfinite(p.grad).all()]


def _scaler_active(trainer: pl.Trainer | None) -> bool:
    """Whether ``trainer`` scales the loss with an enabled GradScaler (``precision: 16-mixed``)."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler is not None and bool(getattr(scaler, "is_enabled", lambda: True)())


def _parameters(optimizer: torch.optim.Optimizer | None, module: nn.Module | None) -> list[torch.Tensor]:
    if optimizer is not None:
        return [p for group in optimizer.param_groups for p in group["params"]]
    return list(module.parameters()) if module is not None else []


def check_finite_loss(loss: torch.Tensor, module: pl.LightningModule) -> None:
    """Stop training with a clear message when the loss is NaN or infinite."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"training loss became {loss.item()} at step {module.global_step} "
            f"(epoch {module.current_epoch}); training stopped. Lower the learning rate "
            "or clip gradients (trainer.gradient_clip_val)."
        )


class KeyedStateCallback(pl.Callback):
    """A stateful callback whose state is kept in checkpoints under its class and its defining settings.

    Lightning keys a callback's state by its class name unless ``state_key`` says otherwise, so two
    instances of one class (two ``RelapseWatch`` at different factors, two ``ConvergenceDecay`` at two
    levels) could not share a trainer (Lightning refuses two stateful callbacks of one key). Here the
    key is Lightning's ``_generate_state_key`` of :meth:`state_settings`: ``RelapseWatch{'monitor':
    'val/bits_per_seq', 'factor': 10.0, 'floor': 1.0}``. Two instances with the same settings are still
    refused by Lightning, naming the class.

    A state the checkpoint holds under another key of the class is placed by
    :func:`place_keyed_states` (from ``MemnetModule.on_load_checkpoint``, before Lightning reads the
    callbacks' states, and again from this callback's ``on_load_checkpoint`` for another module): the
    bare class name of a checkpoint written before the states were keyed, or the key of other settings
    (a run resumed with another threshold). It is this callback's when it is the checkpoint's only state
    of the class that no callback of the run claims, and this the run's only callback of the class that
    finds none of its own. A state that cannot be placed so is refused (:meth:`state_can_be_dropped`
    says which may be left out instead).
    """

    def state_settings(self) -> dict[str, Any]:
        """The settings that tell this callback from another of its class, as plain values (in the key)."""
        raise NotImplementedError

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self.state_settings())

    @staticmethod
    def state_can_be_dropped(state: dict[str, Any]) -> bool:
        """Whether a state that no callback of the run can be given may be left out (a fresh state is the same)."""
        return False

    @staticmethod
    def placed_note(state: dict[str, Any]) -> str:
        """What the warning adds when a state is taken under changed settings (``state`` is the one taken)."""
        return ""

    @classmethod
    def unplaced_error(cls, kept: list[str], unplaced: list[KeyedStateCallback]) -> str:
        """The refusal of states ``kept`` that none of the callbacks ``unplaced`` can be given."""
        name = cls.__qualname__
        return (f"{name}: the checkpoint holds the state of {', '.join(kept)}, which no {name} of this run has "
                f"({', '.join(callback.state_key for callback in unplaced)}), and which one's it is cannot be told; "
                f"resume with the {name} settings the run was trained with")

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        place_keyed_states(trainer, checkpoint)


def place_keyed_states(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """Move each state of ``checkpoint`` that a :class:`KeyedStateCallback` of ``trainer`` finds under another key of
    its class to its own key (in place; once placed, a second call does nothing).

    Per class: the states of its keys (the bare class name, or ``Class{...}``) that no callback of the run claims,
    and the callbacks whose key the checkpoint lacks. One of each: the state is that callback's (a warning when its
    settings changed). Otherwise, a state that cannot be dropped (:meth:`KeyedStateCallback.state_can_be_dropped`)
    is refused: which callback it belongs to cannot be told, and lost it would act again or start over (a decay
    that decayed the rate again, a curriculum back at its first level).
    """
    states = checkpoint.get("callbacks")
    if not states:
        return
    classes: dict[type, list[KeyedStateCallback]] = {}
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, KeyedStateCallback):
            classes.setdefault(type(callback), []).append(callback)
    for cls, callbacks in classes.items():
        name = cls.__qualname__
        claimed = {callback.state_key for callback in callbacks}
        unclaimed = [key for key in states if isinstance(key, str) and key not in claimed
                     and (key == name or key.startswith(name + "{"))]
        if not unclaimed:
            continue  # every state found its callback; one added on the resume starts afresh
        unplaced = [callback for callback in callbacks if callback.state_key not in states]
        if len(unclaimed) == 1 and len(unplaced) == 1:
            key, callback = unclaimed[0], unplaced[0]
            states[callback.state_key] = states.pop(key)
            if key != name:
                log.warning("%s: the checkpoint's state is %s, this run's %s (its settings changed); taken as this "
                            "one's%s", name, key, callback.state_key, cls.placed_note(states[callback.state_key] or {}))
            continue
        kept = [key for key in unclaimed if not cls.state_can_be_dropped(states[key] or {})]
        if kept and unplaced and fitting(trainer):  # validate / test: the states change nothing
            raise MemnetError(cls.unplaced_error(kept, unplaced))
