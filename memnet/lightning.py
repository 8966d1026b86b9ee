"""LightningModules: what is trained and how (loss, metrics, logging).

The network is passed in (``net``, a ``class_path`` in YAML); the module holds
only the loss, the metrics and the optimiser. Batches are dicts as produced by
``tasks.algorithmic`` (``inputs``, ``targets``, ``mask``, ``length``).

Metrics, logged as ``train/…``, ``val/…``, ``test/…``:
    loss                 masked binary cross-entropy, mean per scored bit (nats); per epoch over the
                         epoch's scored bits, whatever the lengths of its batches
    bits_per_seq         the NTM paper's cost: binary cross-entropy summed over a
                         sequence's scored bits, in bits, averaged over sequences
    bit_errors_per_seq   wrongly predicted bits (threshold 0.5) per sequence
and, for validation and test, the same per task length as ``val/len_20/bits_per_seq``.

Validation and test scores are logged once, at the epoch's end, from sums and counts that each
module adds up over the epoch (``epoch_metric``, ``memnet.training.StageMetrics``) and that are
reduced over the DDP processes there: the scores of the whole set, whichever process scored
which batch and however many each scored (the data modules give every process its own share,
each example on exactly one: ``memnet.utils.UnrepeatedDistributedSampler``). They are logged in
the module's ``on_validation_epoch_end``, which Lightning calls after the callbacks' own: a
callback reads them in ``on_validation_end``, as ``EarlyStopping`` and ``ModelCheckpoint`` do.
Training metrics are logged at every step and reduced by Lightning (``sync_dist``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from memnet.metrics import (  # noqa: F401  (some re-exported: memnet.lightning.sequence_metrics & co.)
    FAILED_TASK_ERROR,
    accumulation_dtype,
    answer_errors,
    bit_errors_per_sequence,
    failed_tasks,
    length_key,
    masked_mse,
    nrmse_from_sums,
    nrmse_sums,
    sequence_accuracy,
    sequence_metrics,
    task_error_counts,
    task_error_key,
    task_errors_from_counts,
    token_metrics,
)
from memnet.optim import ClipNorm, clip_per_matrix_
from memnet.training import (  # noqa: F401  (re-exported: memnet.lightning.MemnetModule & co.)
    Interval,
    LengthSums,
    MemnetModule,
    NonFinite,
    NRMSESums,
    StageMetrics,
    TaskErrorCounts,
    check_finite_loss,
    check_precision,
    configure_optimizers,
    scheduler_config,
)
from memnet.utils import (
    MemnetError,
    SeededDraws,
    accepts_keyword,
    check_positive,
    distributed_position,
    gather_objects,
    in_set_order,
    is_integer,
    is_number,
)


class SequenceModule(MemnetModule):
    """Trains a sequence model ``net: (B, T, D_in) -> logits (B, T, D_out)`` on binary targets.

    Args:
        net: the network, e.g. ``memnet.models.ntm.NTM``.
        optimizer: optimiser factory (``class_path`` + ``init_args`` in YAML); default Adam.
        scheduler: optional learning-rate scheduler factory.
        scheduler_interval: step the scheduler every ``step`` (e.g. OneCycleLR) or ``epoch``.
        eval_memory_size: N to use in validation, test and predict (memory models
            only), e.g. to evaluate lengths that need more slots than training had.
        nonfinite_grads: a step with NaN or inf gradients is skipped (``skip``, default)
            or stops training (``stop``); ``memnet.training.MemnetModule``.
    """

    epoch_metric = LengthSums  # per stage (val, test): sequences and sum_columns by length
    #: what a validation or test batch adds to its epoch's sums by task length (:meth:`evaluation_sums`), in the
    #: order of ``LengthSums``' columns after the length and the sequences
    sum_columns: tuple[str, ...] = ("nats", "scored_bits", "bits", "bit_errors", "optimal_bits", "optimal_sequences")
    conditional_module = "memnet.lightning.ConditionalSequenceModule"  # (passes_targets: MemnetModule's)

    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Interval = "epoch",
        eval_memory_size: int | None = None,
        nonfinite_grads: NonFinite = "skip",
    ) -> None:
        if eval_memory_size is not None:  # not 2.5, True or "64": a count of slots
            check_positive(eval_memory_size=eval_memory_size)
        super().__init__(
            net, optimizer=optimizer, scheduler=scheduler, scheduler_interval=scheduler_interval,
            nonfinite_grads=nonfinite_grads,
        )
        self.eval_memory_size = eval_memory_size

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.eval_memory_size is not None and not accepts_keyword(self.net.forward, "memory_size"):
            # else the first validation batch fails with "forward() got an unexpected keyword argument"
            raise ValueError(
                f"model.init_args.eval_memory_size ({self.eval_memory_size}) needs a network with memory slots "
                f"(forward(..., memory_size=...)), but {type(self.net).__name__} has none; set it to null"
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        # a run resumed from a checkpoint taken while a length curriculum had narrowed the training lengths gets that
        # range back from the data module's state; without a curriculum in this run nothing widens it again, and the
        # run would train at the checkpoint's lengths to its end (e.g. after --trainer.callbacks replaced the list)
        datamodule = getattr(self.trainer, "datamodule", None)
        task = getattr(datamodule, "task", None)
        if (task is None or not hasattr(datamodule, "length_range") or not hasattr(task, "max_length")
                or any(getattr(callback, "widens_lengths", False) for callback in self.trainer.callbacks)):
            return
        low, high = (int(v) for v in datamodule.length_range)
        mix = float(getattr(datamodule, "length_mix", 0.0))
        if (low, high) != (int(task.min_length), int(task.max_length)):  # (a mix of the whole range alone: no narrowing)
            raise ValueError(
                f"the checkpoint's length curriculum left training at lengths {low}-{high}"
                + (f" (mixed with the whole range in {mix:.0%} of batches)" if mix > 0 else "")
                + f" of the task's {task.min_length}-{task.max_length}, and no length curriculum in this run widens "
                "them: it would train at those lengths to its end; add the curriculum back "
                "(trainer.callbacks: memnet.curriculum.LengthCurriculum), or start a new run "
                "(memnet fit without --ckpt_path)")

    def forward(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """inputs (B, T, D_in) -> logits (B, T, D_out)."""
        if not self.training and self.eval_memory_size is not None:
            kwargs.setdefault("memory_size", self.eval_memory_size)
        return self.net(inputs, **kwargs)

    def forward_kwargs(self, batch: dict) -> dict[str, Any]:
        """Extra keyword arguments of the network in train / val / test (none here; see subclasses)."""
        return {}

    def free_kwargs(self, batch: dict) -> dict[str, Any]:
        """Extra keyword arguments of the network running free, in ``predict`` (none here; see subclasses)."""
        return {}

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Shared by train / val / test: forward, loss, metrics, logging."""
        logits = self(batch["inputs"], **self.forward_kwargs(batch))
        metrics = sequence_metrics(logits, batch["targets"], batch["mask"])
        batch_size = batch["inputs"].shape[0]
        scored_bits = batch["mask"].float().sum() * logits.shape[-1]
        if stage != "train":  # scored at the epoch's end, from its sums over every DDP process (log_epoch_value)
            sums = self.evaluation_sums(batch, metrics, scored_bits)
            self.epoch_metrics.update(stage, int(batch.get("length", -1)), batch_size,
                                      torch.stack([sums[name].float() for name in self.sum_columns]))
            return metrics["loss"]
        # the epoch's value weighted by scored bits: per scored bit of the epoch, as in validation (weighted by
        # sequences, a bit of a short sequence weighed more than a bit of a long one)
        self.log(f"{stage}/loss", metrics["loss"], prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=max(int(scored_bits), 1), sync_dist=True)
        for name in ("bits_per_seq", "bit_errors_per_seq"):
            self.log(f"{stage}/{name}", metrics[name], prog_bar=name == "bits_per_seq",
                     on_step=True, on_epoch=True, batch_size=batch_size, sync_dist=True)
        if "optimal_bits" in batch:  # tasks with a known best cost (dynamic n-grams): how far from it
            # as the model's own cost, in float32 at least (under bf16-true the data module restored its float32 value)
            optimal = batch["optimal_bits"].to(accumulation_dtype(batch["optimal_bits"].dtype)).mean()
            self.log(f"{stage}/optimal_bits_per_seq", optimal, on_step=True, on_epoch=True, batch_size=batch_size,
                     sync_dist=True)
            self.log(f"{stage}/excess_bits_per_seq", metrics["bits_per_seq"] - optimal,
                     on_step=True, on_epoch=True, batch_size=batch_size, sync_dist=True)
        return metrics["loss"]

    def evaluation_sums(self, batch: dict, metrics: dict[str, torch.Tensor],
                        scored_bits: torch.Tensor) -> dict[str, torch.Tensor]:
        """A validation or test batch's sums (``sum_columns``), 0-dim tensors: the nats over its scored bits and
        those bits, its bits and bit errors summed over its sequences, and where the task knows the best cost
        (``optimal_bits`` (B,), dynamic n-grams) that cost summed over its sequences and their number."""
        batch_size = batch["inputs"].shape[0]
        optimal = batch.get("optimal_bits")
        zero = scored_bits.new_zeros(())
        return {
            "nats": metrics["loss"].float() * scored_bits.clamp_min(1), "scored_bits": scored_bits,
            "bits": metrics["bits_per_seq"].float() * batch_size,
            "bit_errors": metrics["bit_errors_per_seq"].float() * batch_size,
            "optimal_bits": zero if optimal is None else optimal.float().sum(),
            "optimal_sequences": zero if optimal is None else zero + batch_size,
        }

    def log_epoch_value(self, stage: str, rows: torch.Tensor) -> None:
        """The epoch's scores, from its sums over every DDP process: ``stage/loss`` per scored bit,
        ``bits_per_seq`` and ``bit_errors_per_seq`` per sequence, the optimal and excess cost where the task
        knows it, and the scores per task length.

        A mean of the batches' losses weighted by their sequences would weigh a bit of a short
        sequence more than a bit of a long one.
        """
        columns = ("length", "sequences", *self.sum_columns)  # LengthSums' rows: model_step's sums by length
        total = dict(zip(columns, rows.sum(0), strict=True))
        sequences = total["sequences"]
        self.log(f"{stage}/loss", (total["nats"] / total["scored_bits"].clamp_min(1)).float(), prog_bar=True,
                 sync_dist=True)
        self.log(f"{stage}/bits_per_seq", (total["bits"] / sequences).float(), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/bit_errors_per_seq", (total["bit_errors"] / sequences).float(), sync_dist=True)
        if total["optimal_sequences"] > 0:  # the same on every process: the sums are those of all of them
            optimal = total["optimal_bits"] / total["optimal_sequences"]
            self.log(f"{stage}/optimal_bits_per_seq", optimal.float(), sync_dist=True)
            self.log(f"{stage}/excess_bits_per_seq", (total["bits"] / sequences - optimal).float(), sync_dist=True)
        for row in rows:
            length, count, bits, bit_errors = (row[columns.index(name)] for name in
                                               ("length", "sequences", "bits", "bit_errors"))
            if length >= 0:
                self.log(length_key(stage, int(length), "bits_per_seq"), (bits / count).float(), sync_dist=True)
                self.log(length_key(stage, int(length), "bit_errors_per_seq"), (bit_errors / count).float(),
                         sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Returns the binary predictions and the bit errors of every sequence."""
        logits = self(batch["inputs"], **self.free_kwargs(batch))
        predictions = (logits > 0).to(batch["targets"].dtype)
        mask = batch["mask"].unsqueeze(-1)
        errors = bit_errors_per_sequence(logits, batch["targets"], batch["mask"])
        self._predicted.append((int(batch.get("length", -1)), errors.detach().cpu()))
        if len(self._predicted) == 1:
            self._first_prediction = (batch["targets"][0].cpu(), predictions[0].cpu(), batch["mask"][0].cpu())
        return {"inputs": batch["inputs"], "targets": batch["targets"], "mask": batch["mask"],
                "predictions": predictions * mask, "bit_errors": errors}

    def on_predict_epoch_start(self) -> None:
        self._predicted: list[tuple[int, torch.Tensor]] = []
        self._first_prediction = None

    def on_predict_epoch_end(self) -> None:
        """Print bit errors per sequence by length, and the first example's target and output: of the whole
        predict set, every DDP process's share gathered on rank 0 (which printed its own share alone)."""
        shares = gather_objects((self._predicted, self._first_prediction), self.trainer)
        predicted = in_set_order([share for share, _ in shares])
        if not predicted or not self.trainer.is_global_zero:
            return
        print("\nlength  sequences  bit errors per sequence")
        for length in sorted({length for length, _ in predicted}):
            errors = torch.cat([e for n, e in predicted if n == length])
            print(f"{length:>6}  {len(errors):>9}  {errors.float().mean().item():.3f}")
        # the set's first batch: rank 0's first (rank r predicts the batches r, r + W, …)
        targets, predictions, mask = next(first for _, first in shares if first is not None)
        scored = mask.bool()
        print("\nfirst example, output phase (rows: time steps)")
        print("target      ", "  ".join("".join(str(int(v)) for v in row) for row in targets[scored]))
        print("prediction  ", "  ".join("".join(str(int(v)) for v in row) for row in predictions[scored]))



# ----------------------------------------------------------------------------- question answering

class QAModule(MemnetModule):
    """Trains a question-answering model ``net(story, query) -> answer logits (B, A)``.

    Batches are dicts as produced by ``tasks.babi`` (``story`` (B, N, J), ``query``
    (B, Jq), ``answer`` (B,) class, ``task`` (B,) task number).

    Metrics, logged as ``train/…``, ``val/…``, ``test/…`` (per epoch):
        loss            cross-entropy of the answer per question (the mean over the batch; ``loss_reduction``
                        sums it for the gradient only)
        accuracy        share of questions answered exactly
        error           100 · (1 − accuracy), in percent
        task_<k>/error  the same for bAbI task k alone (every task present in the split)
        mean_task_error mean of the per-task errors, and ``failed_tasks`` the number above 5%, both over the
                        tasks present in the epoch's split (a run on tasks 1–3 is no 20-task mean)
        tasks_measured  how many tasks those two are over
    In validation and test all of them come from the epoch's counts over every question (and every DDP
    process); a batch without ``task`` counts in the totals only.

    The MemN2N paper's optimisation is SGD with lr 0.01 halved every 25 epochs for
    100 epochs, gradients clipped at norm 40 and a cost summed, not averaged, over
    the batch: ``optimizer: torch.optim.SGD``, ``scheduler: torch.optim.lr_scheduler.StepLR``
    (step_size 25, gamma 0.5), ``trainer.gradient_clip_val: 40``, ``loss_reduction: sum``.

    Args:
        net: the network, e.g. ``memnet.models.memn2n.MemN2N`` or ``memnet.models.reader.SequenceReader``.
        optimizer: optimiser factory; default Adam.
        scheduler: optional learning-rate scheduler factory (stepped every epoch).
        loss_reduction: ``mean`` or ``sum`` of the cross-entropy over the batch.
        scheduler_interval: step the scheduler every ``epoch`` (StepLR as in the paper) or ``step``.
        clip_per_matrix: clip each weight matrix's gradient to this norm on its own (the
            authors' MemN2N code: 40), the matrices being ``net.clip_groups()`` where the
            network names them, else each parameter; None: off. Excludes ``trainer.gradient_clip_val``.
        clip_norm: the norm of ``clip_per_matrix``: ``spectral`` (the authors') or ``frobenius``.
    """

    epoch_metric = TaskErrorCounts  # per stage: wrong answers and questions per task

    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        loss_reduction: Literal["mean", "sum"] = "mean",
        scheduler_interval: Interval = "epoch",
        clip_per_matrix: float | None = None,
        clip_norm: ClipNorm = "spectral",
        nonfinite_grads: NonFinite = "skip",
    ) -> None:
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        if clip_per_matrix is not None and not (is_number(clip_per_matrix) and clip_per_matrix > 0):
            raise ValueError(f"clip_per_matrix must be a positive norm or null, got {clip_per_matrix!r}")
        if clip_norm not in ("spectral", "frobenius"):
            raise ValueError(f"clip_norm must be 'spectral' or 'frobenius', got {clip_norm!r}")
        super().__init__(
            net, optimizer=optimizer, scheduler=scheduler, scheduler_interval=scheduler_interval,
            nonfinite_grads=nonfinite_grads,
        )
        self.loss_reduction = loss_reduction
        self.clip_per_matrix = clip_per_matrix
        self.clip_norm = clip_norm

    def on_fit_start(self) -> None:
        if self.clip_per_matrix is not None and self.trainer.gradient_clip_val:
            raise ValueError(
                f"model.init_args.clip_per_matrix ({self.clip_per_matrix}) and trainer.gradient_clip_val "
                f"({self.trainer.gradient_clip_val}) would both clip; set one of them to null"
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        # a net in its linear start (MemN2N linear_start: true) whose softmax no callback will put back would train,
        # validate and be tested without a softmax in any hop, e.g. after --trainer.callbacks replaced the config's
        # list; the checkpoint of a run past its switch has the softmax on and needs none
        net = self.net
        if (hasattr(net, "enable_softmax") and not bool(getattr(net, "softmax_enabled", True))
                and not any(getattr(callback, "ends_linear_start", False) for callback in self.trainer.callbacks)):
            raise ValueError(
                f"{type(net).__name__} starts with the softmax removed (linear_start: true) but no callback puts it "
                "back: add memnet.callbacks.LinearStartSwitch to trainer.callbacks (e.g. "
                "--trainer.callbacks+=memnet.callbacks.LinearStartSwitch), or set linear_start: false"
            )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.skip_nonfinite_step(optimizer) or self.clip_per_matrix is None:
            return
        groups = self.net.clip_groups() if hasattr(self.net, "clip_groups") else [[p] for p in self.net.parameters()]
        clip_per_matrix_(groups, self.clip_per_matrix, self.clip_norm)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # MemN2N's nil_word: authors sets its nil rows back to 0 right after the step, before any callback (a
        # checkpoint written at this batch's end) sees the weights
        if hasattr(self.net, "after_optimizer_step"):
            self.net.after_optimizer_step()

    def forward(self, story: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """story (B, N, J), query (B, Jq) -> answer logits (B, A)."""
        return self.net(story, query)

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Shared by train / val / test: forward, loss, metrics, per-task counts, logging."""
        logits = self(batch["story"], batch["query"])
        answer = batch["answer"]
        # in float32 at least: bfloat16 logits' (bf16-true) log-softmax and mean were up to 0.7% off
        logits_wide = logits.to(accumulation_dtype(logits.dtype))
        wrong = answer_errors(logits, answer)
        batch_size = answer.shape[0]
        if stage != "train":  # scored at the epoch's end, from its counts over every DDP process (log_epoch_value)
            nats = F.cross_entropy(logits_wide, answer, reduction="none")  # (B,), once: the loss and the epoch's sums
            loss = nats.sum() if self.loss_reduction == "sum" else nats.mean()
            # a batch without task numbers counts under task 0, which no bAbI task has: in the totals only
            self.epoch_metrics.update(stage, wrong, batch["task"] if "task" in batch else torch.zeros_like(answer), nats)
            return loss
        loss = F.cross_entropy(logits_wide, answer, reduction=self.loss_reduction)
        # logged per question whatever the reduction: a batch's sum, weighted by its size in the epoch's mean,
        # made val/loss depend on the batch sizes (the last, smaller batch)
        per_question = loss / batch_size if self.loss_reduction == "sum" else loss
        self.log(f"{stage}/loss", per_question, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)
        self.log(f"{stage}/accuracy", 1 - wrong.mean(), on_step=True, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)
        self.log(f"{stage}/error", 100 * wrong.mean(), on_step=True, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)
        if "task" in batch:
            self.epoch_metrics.update(stage, wrong, batch["task"])
        return loss

    def log_epoch_value(self, stage: str, counts: torch.Tensor) -> None:
        """The epoch's error per task, their mean and the failed tasks (above 5%), and in validation and test the
        loss, accuracy and error over all its questions, from its counts over every DDP process; and how many tasks
        the per-task figures are over."""
        if stage != "train":  # training logs these at every step
            wrong, questions, nats = counts.sum(1)
            self.log(f"{stage}/loss", (nats / questions).float(), prog_bar=True, sync_dist=True)
            self.log(f"{stage}/accuracy", (1 - wrong / questions).float(), sync_dist=True)
            self.log(f"{stage}/error", (100 * wrong / questions).float(), prog_bar=True, sync_dist=True)
        per_task = counts[:2].clone()
        per_task[:, 0] = 0  # task 0: the questions without a task number
        tasks, errors = task_errors_from_counts(per_task)
        if not tasks:
            return
        for task, error in zip(tasks, errors):
            self.log(task_error_key(stage, task), error.float(), on_epoch=True, sync_dist=True)
        self.log(f"{stage}/mean_task_error", errors.mean().float(), on_epoch=True, sync_dist=True)
        self.log(f"{stage}/failed_tasks", float(failed_tasks(errors)), on_epoch=True, sync_dist=True)
        self.log(f"{stage}/tasks_measured", float(len(tasks)), on_epoch=True, sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """The predicted answer class of every question, its answer probabilities (float32: an ensemble averages
        them, ``memnet babi-table --ensemble``), the true class and the task."""
        logits = self(batch["story"], batch["query"])
        return {"prediction": logits.argmax(-1), "probabilities": logits.float().softmax(-1),
                "answer": batch["answer"], "task": batch.get("task")}


# ----------------------------------------------------------------------------- recurrent family

class ConditionalSequenceModule(SequenceModule):
    """``SequenceModule`` for conditional-output models (``RecurrentModel(conditional=True)``).

    Such a model is P(y | x) = Π_t P(y(t) | x(≤t), y(<t)). Its train / val / test
    loss is the teacher-forced likelihood of the true targets (y(t−1) fed from
    the targets); validation and test also run it free, feeding back its own
    predictions, and log ``…/free_bits_per_seq`` and ``…/free_bit_errors_per_seq``.
    ``predict`` runs it free. Running free, it is fed its own prediction after a scored step and the
    target after an unscored one (the input phase of copy: the value training fed there). For a network without ``conditional`` it is a
    plain ``SequenceModule`` (which refuses a conditional network: it would train on its own predictions).
    Arguments as ``SequenceModule``.
    """

    sum_columns = (*SequenceModule.sum_columns, "free_bits", "free_bit_errors", "free_sequences")
    passes_targets = True

    def forward_kwargs(self, batch: dict) -> dict[str, Any]:
        return {"targets": batch["targets"]} if getattr(self.net, "conditional", False) else {}

    def free_kwargs(self, batch: dict) -> dict[str, Any]:
        """Running free, a conditional network is fed the targets of the unscored steps (what training fed there)."""
        if not getattr(self.net, "conditional", False):
            return {}
        return {"targets": batch["targets"], "mask": batch["mask"]}

    def evaluation_sums(self, batch: dict, metrics: dict[str, torch.Tensor],
                        scored_bits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``SequenceModule``'s sums, and the bits and bit errors of the free-running model summed over the
        sequences, and their number (zeros for a network without ``conditional``)."""
        sums = super().evaluation_sums(batch, metrics, scored_bits)
        zero = scored_bits.new_zeros(())
        if not getattr(self.net, "conditional", False):
            return sums | {"free_bits": zero, "free_bit_errors": zero, "free_sequences": zero}
        free = sequence_metrics(self(batch["inputs"], **self.free_kwargs(batch)), batch["targets"], batch["mask"])
        batch_size = batch["inputs"].shape[0]
        return sums | {"free_bits": free["bits_per_seq"].float() * batch_size,
                       "free_bit_errors": free["bit_errors_per_seq"].float() * batch_size,
                       "free_sequences": zero + batch_size}

    def log_epoch_value(self, stage: str, rows: torch.Tensor) -> None:
        """``SequenceModule``'s scores, and ``free_bits_per_seq`` and ``free_bit_errors_per_seq`` of a conditional
        network, from the epoch's sums over every DDP process."""
        super().log_epoch_value(stage, rows)
        total = dict(zip(("length", "sequences", *self.sum_columns), rows.sum(0), strict=True))
        if total["free_sequences"] > 0:
            for name in ("bits", "bit_errors"):
                self.log(f"{stage}/free_{name}_per_seq", (total[f"free_{name}"] / total["free_sequences"]).float(),
                         sync_dist=True)


class Seq2SeqModule(MemnetModule):
    """Trains an encoder–decoder ``net(source (B, S), target (B, T)) -> logits (B, T, V)``.

    Batches are dicts as produced by ``tasks.sequences`` token tasks (``source``,
    ``target`` ending with EOS, ``length``). Metrics (``train/…``, ``val/…``, ``test/…``):
        loss               token cross-entropy (nats), PAD targets ignored; teacher-forced; per epoch over the
                           epoch's scored tokens
        token_accuracy     share of target tokens predicted right under teacher forcing (the same)
        sequence_accuracy  (val, test) share of greedy decodings equal to the whole target, EOS included (a
                           decoding with a NaN logit is wrong, as a token with one is)
    and per source length as ``val/len_8/sequence_accuracy``. A target of PAD alone is not scored (a training
    batch of them adds nothing to ``train/…`` and its loss is 0); a validation or test epoch with no scored
    token is an error (``MemnetError``), not a NaN or 0.

    ``memnet predict`` decodes the predict set greedily and prints the first
    ``print_predictions`` sequences (source, target, decoded, ✓/✗).

    Args:
        net: the network, e.g. ``memnet.models.seq2seq.Seq2Seq``.
        optimizer: optimiser factory; default Adam.
        scheduler: optional learning-rate scheduler factory.
        scheduler_interval: step the scheduler every ``epoch`` or ``step``.
        seed: seed of the teacher-forcing coin flips (the generator's state is saved in checkpoints:
            a resumed run draws the flips the uninterrupted run would have drawn).
        print_predictions: sequences printed by ``predict`` (0: none).
    """

    # print_predictions is not saved: a checkpoint's hyper-parameters would override the command line's
    not_saved = (*MemnetModule.not_saved, "print_predictions")
    epoch_metric = LengthSums  # per stage (val, test): sequences, nats, tokens, right tokens, right sequences by length

    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Interval = "epoch",
        seed: int = 0,
        print_predictions: int = 10,
        nonfinite_grads: NonFinite = "skip",
    ) -> None:
        if not is_integer(print_predictions) or print_predictions < 0:
            raise ValueError(f"print_predictions must be a non-negative integer, got {print_predictions!r}")
        if not is_integer(seed) or not -(2**63) <= seed < 2**64:  # as torch.Generator takes it; its own error names
            raise ValueError(f"seed (of the teacher-forcing coin flips) must be an integer in [-2**63, 2**64), "
                             f"got {seed!r}")  # neither the option nor the range, and a bool would pass as 1
        super().__init__(
            net, optimizer=optimizer, scheduler=scheduler, scheduler_interval=scheduler_interval,
            nonfinite_grads=nonfinite_grads,
        )
        self._draws = SeededDraws(seed)  # the coin flips, kept in checkpoints; each DDP process its own
        self.print_predictions = print_predictions
        self._printed = 0

    @property
    def generator(self) -> torch.Generator:
        """The teacher-forcing coin flips' CPU generator, from ``seed`` (on DDP rank r > 0 from the seed mixed with r:
        ``memnet.utils.SeededDraws``), made at the first flip."""
        return self._draws.generator(torch.device("cpu"))

    def rng_state(self) -> dict:
        """The teacher-forcing generator's state, kept in checkpoints (``MemnetModule.on_save_checkpoint``)."""
        return {"device": "cpu", "state": self.generator.get_state()}

    def set_rng_state(self, state: dict) -> None:
        """A resumed run draws the coin flips the uninterrupted run would have drawn, not the seed's first ones."""
        self._draws.set_state(state)

    def forward(self, source: torch.Tensor, target: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """source (B, S), target (B, T) -> logits (B, T, V)."""
        return self.net(source, target, **kwargs)

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Shared by train / val / test: forward, loss, metrics, logging."""
        source, target = batch["source"], batch["target"]
        logits = self(source, target, generator=self.generator)
        metrics = token_metrics(logits, target, pad_index=self.net.pad_index)
        if stage == "train":  # the epoch's values weighted by scored tokens: per token of the epoch, as in validation
            tokens = int((target != self.net.pad_index).sum())
            if tokens == 0:  # targets of PAD alone: nothing to score or learn (their mean loss is NaN): a zero
                # loss, logged with weight 0 (every DDP process logs the same keys at every step: sync_dist)
                metrics = {"loss": logits.sum() * 0.0, "token_accuracy": torch.zeros(())}
            self.log(f"{stage}/loss", metrics["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=tokens,
                     sync_dist=True)
            self.log(f"{stage}/token_accuracy", metrics["token_accuracy"], on_step=True, on_epoch=True,
                     batch_size=tokens, sync_dist=True)
        else:  # logged at the epoch's end from sums (log_epoch_value): per token, per sequence, per length
            # a target of PAD alone has no token to score: it weighs 0 (its loss, a mean over no token, is NaN)
            scored = (target != self.net.pad_index).any(dim=1)  # (B,)
            decoded, decoded_logits = self.net.generate(source, max_length=target.shape[1], return_logits=True)
            right = sequence_accuracy(decoded, target, pad_index=self.net.pad_index, logits=decoded_logits)
            correct = (right * scored).sum()
            tokens = (target != self.net.pad_index).sum().float()
            nats = torch.where(tokens > 0, metrics["loss"].float() * tokens, 0.0)
            self.epoch_metrics.update(stage, int(batch.get("length", -1)), int(scored.sum()), torch.stack([
                nats, tokens, metrics["token_accuracy"].float() * tokens, correct.float(),
            ]))
        return metrics["loss"]

    def log_epoch_value(self, stage: str, rows: torch.Tensor) -> None:
        """The epoch's loss and token accuracy per scored token, its sequence accuracy, and that per source length."""
        # columns: length, sequences, nats, tokens, right tokens, right sequences (model_step, LengthSums);
        # sequences and tokens are the scored ones, of targets holding a token other than PAD
        _, sequences, nats, tokens, right_tokens, right_sequences = rows.sum(0)
        if tokens == 0:  # a loss and accuracies of 0 (or NaN) would be monitored, early-stopped on, as if measured
            raise MemnetError(
                f"the {stage} epoch had no token to score: all its targets are PAD (id {self.net.pad_index}); "
                f"check the {stage} set's targets and the net's pad_index")
        self.log(f"{stage}/loss", (nats / tokens).float(), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/token_accuracy", (right_tokens / tokens).float(), sync_dist=True)
        self.log(f"{stage}/sequence_accuracy", (right_sequences / sequences).float(), prog_bar=True, sync_dist=True)
        for length, count, *_, right in rows:
            if length >= 0 and count > 0:  # a length of PAD targets alone has no score
                self.log(length_key(stage, int(length), "sequence_accuracy"), (right / count).float(), sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Greedy decoding: the decoded tokens (B, T') and whether each equals its target."""
        decoded, logits = self.net.generate(batch["source"], return_logits=True)
        result = {"source": batch["source"], "prediction": decoded}
        if "target" in batch:
            result["target"] = batch["target"]
            result["correct"] = sequence_accuracy(decoded, batch["target"], pad_index=self.net.pad_index,
                                                  logits=logits)
        return result

    def on_predict_epoch_start(self) -> None:
        self._printed = 0
        self._unprinted: list[list[str]] = []  # under DDP, this process's lines by batch, printed at the epoch's end

    def on_predict_batch_end(self, outputs: dict, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Print the batch's decodings while fewer than ``print_predictions`` are printed; under DDP keep them for
        :meth:`on_predict_epoch_end` (every process printed its own share's, rank 1's among rank 0's)."""
        net = self.net
        names = {net.pad_index: "<pad>", net.bos_index: "<bos>", net.eos_index: "<eos>"}
        lines = []
        for i in range(min(outputs["source"].shape[0], self.print_predictions - self._printed)):
            line = [f"source: {format_tokens(outputs['source'][i], names)}"]
            if "target" in outputs:
                line.append(f"target: {format_tokens(outputs['target'][i], names)}")
            line.append(f"decoded: {format_tokens(outputs['prediction'][i], names)}")
            if "correct" in outputs:
                line.append("✓" if outputs["correct"][i] else "✗")
            lines.append(" | ".join(line))
        self._printed += len(lines)
        if distributed_position(self._trainer)[1] > 1:
            self._unprinted.append(lines)
        else:
            for line in lines:
                print(line)

    def on_predict_epoch_end(self) -> None:
        """Under DDP, rank 0 prints the first ``print_predictions`` decodings of the set, from every process's share
        (rank r decoded the batches r, r + W, …)."""
        if distributed_position(self._trainer)[1] <= 1:
            return
        batches = in_set_order(gather_objects(self._unprinted, self.trainer))
        if self.trainer.is_global_zero:
            for line in [line for lines in batches for line in lines][:self.print_predictions]:
                print(line)


def format_tokens(tokens: torch.Tensor, names: dict[int, str]) -> str:
    """tokens (T,) -> "5 3 9 <eos>", special ids by name, trailing PAD dropped."""
    ids = tokens.tolist()
    pad = next((i for i, name in names.items() if name == "<pad>"), None)
    while ids and ids[-1] == pad:
        ids.pop()
    return " ".join(names.get(i, str(i)) for i in ids)


class RegressionModule(MemnetModule):
    """Trains a sequence model ``net: (B, T, D_in) -> (B, T, K)`` on real-valued targets.

    Batches as ``tasks.sequences.SeriesDataModule`` (``inputs``, ``targets``,
    ``mask``). Metrics (``train/…``, ``val/…``, ``test/…``):
        loss    masked mean squared error, per epoch over the epoch's scored values (in training too)
        nrmse   normalised root-mean-square error over the epoch's scored steps,
                √(Σ (y − ŷ)² / Σ (y − ȳ)²), the reservoir-computing literature's score; with K > 1
                outputs, each output's (about its own mean ȳ), then their mean

    Args:
        net: the network, e.g. ``RecurrentModel`` with an ``EchoStateController``; not a conditional one
            (``conditional=True``, refused: it would train on its own predictions, fed back as bits).
        optimizer: optimiser factory; default Adam.
        scheduler: optional learning-rate scheduler factory.
        scheduler_interval: step the scheduler every ``epoch`` or ``step``.
    """

    epoch_metric = NRMSESums  # per stage: [Σ(y−ŷ)², Σy, Σy², count] of each output this epoch, float64

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, T, D_in) -> predictions (B, T, K)."""
        return self.net(inputs)

    def score(self, predictions: torch.Tensor, batch: dict, stage: str) -> torch.Tensor:
        """Masked MSE of ``predictions`` (B, T, K); adds the batch to the epoch's NRMSE sums."""
        targets, mask = batch["targets"], batch["mask"]
        loss = masked_mse(predictions, targets, mask)
        self.epoch_metrics.update(stage, nrmse_sums(predictions, targets, mask))
        if stage == "train":  # validation and test: from the epoch's sums (log_epoch_value)
            # weighted by the batch's scored values (as masked_mse counts them): the epoch's value is its mean squared
            # error per scored value, as in validation; weighted by sequences, a value of a batch with few scored
            # steps weighed more than one of a batch with many
            scored_values = float(mask.double().sum()) * targets.shape[-1]
            self.log(f"{stage}/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=scored_values,
                     sync_dist=True)
        return loss

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        return self.score(self(batch["inputs"]), batch, stage)

    def log_epoch_value(self, stage: str, value: torch.Tensor) -> None:
        """The NRMSE over the epoch's scored steps, and in validation and test the loss (their mean squared error),
        from the epoch's sums over every DDP process (``NRMSESums``: [NRMSE, MSE])."""
        nrmse, mse = value
        if stage != "train":  # training logs its loss at every step
            self.log(f"{stage}/loss", mse.float(), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/nrmse", nrmse.float(), prog_bar=stage != "train", sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"predictions": self(batch["inputs"]), "targets": batch["targets"], "mask": batch["mask"]}


class RidgeReadoutModule(RegressionModule):
    """Fits the linear read-out of a fixed-feature model (an echo-state network) in closed form.

    One pass over the training set collects the read-out's inputs (the
    reservoir states, ``net.features``) and targets on the scored steps, then
    solves the ridge regression (``memnet.models.recurrent.RidgeAccumulator``)
    and writes the solution into ``net.output``. There is no optimiser; run
    one epoch (``trainer.max_epochs: 1``). Validation and test are as in
    ``RegressionModule``; the fit happens before the epoch's validation.

    Each epoch fits from its own rows (sums reset at its start: a batch seen in two epochs is not counted
    twice). A fit from fewer rows than the installed read-out's never replaces it: a later epoch's
    validation in its middle (``val_check_interval``) or its end cut short (``max_steps``, ``max_time``)
    keeps the read-out of the whole epoch before (with a warning at the end); the rows of the installed
    fit go with the checkpoint.

    Args:
        net: a network with ``features(inputs) -> (B, T, C)`` and a linear
            ``output`` (C -> K), e.g. ``RecurrentModel`` with an ``EchoStateController``.
        ridge: the penalty λ ≥ 0 on the read-out weights.
    """

    def __init__(self, net: nn.Module, *, ridge: float = 1e-6) -> None:
        super().__init__(net)
        if not 0 <= ridge < math.inf:
            raise ValueError(f"ridge must lie in [0, inf), got {ridge!r}")
        if not hasattr(net, "features") or not isinstance(getattr(net, "output", None), nn.Linear):
            raise ValueError("net must have features(inputs) and a linear `output` layer, e.g. RecurrentModel")
        self.ridge = ridge
        self.automatic_optimization = False
        self._accumulator: Any = None
        self._fitted_rows = 0  # the rows the installed read-out was fitted from (0: none fitted)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            features = self.net.features(batch["inputs"])
        self._sums().update(features, batch["targets"], batch["mask"])
        # a batch's rows are this fit's step: counted as an optimiser step (there is none), global_step counts the
        # batches. At 0 throughout, trainer.max_steps never stopped the fit and no best checkpoint was written
        # (Lightning saves none at the step it saved last, 0 to start with)
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def _sums(self) -> Any:
        """This process's RidgeAccumulator of the epoch (empty until its first training batch)."""
        from memnet.models.recurrent import RidgeAccumulator

        if self._accumulator is None:
            self._accumulator = RidgeAccumulator(self.net.output.in_features, self.net.output.out_features)
        return self._accumulator

    def fit_readout(self) -> None:
        """Solve for the read-out from the rows the epoch collected so far, on every DDP process, and install it.

        The sums are kept: a validation in the middle of the epoch (``val_check_interval``) fits from the
        rows so far, and the end of the epoch from all of them. Under DDP the sums of every process are
        added up first, so that every process fits one read-out from the whole training set (a
        ``DistributedSampler`` repeats a set's last batches where it does not divide by the processes).
        """
        total = self._total_sums()
        if total.count == 0 or total.count < self._fitted_rows:
            return
        weight, bias = total.solve(ridge=self.ridge, dtype=self.net.output.weight.dtype)
        with torch.no_grad():
            self.net.output.weight.copy_(weight.to(self.net.output.weight.device))
            self.net.output.bias.copy_(bias.to(self.net.output.bias.device))
        self._fitted_rows = total.count

    def _total_sums(self) -> Any:
        """The epoch's sums so far, of every DDP process (every process calls this at the same hooks)."""
        from memnet.models.recurrent import RidgeAccumulator

        mine = self._sums()
        total = mine
        if self._trainer is not None and self.trainer.world_size > 1:
            packed = torch.cat([mine.gram.flatten(), mine.cross.flatten(), mine.gram.new_tensor([mine.count])])
            packed = self.trainer.strategy.reduce(packed.to(self.device), reduce_op="sum").cpu()
            total = RidgeAccumulator(mine.gram.shape[0] - 1, mine.cross.shape[1])
            gram_size, cross_size = mine.gram.numel(), mine.cross.numel()
            total.gram = packed[:gram_size].view_as(mine.gram).clone()
            total.cross = packed[gram_size:gram_size + cross_size].view_as(mine.cross).clone()
            total.count = int(packed[-1])
        return total

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        resumable = checkpoint.get("memnet_train_epoch")
        if resumable is not None:  # written in the middle of the epoch: the rows so far go with it
            total = self._total_sums()
            resumable["ridge_sums"] = {"gram": total.gram, "cross": total.cross, "count": total.count}
        checkpoint["memnet_ridge_rows"] = self._fitted_rows

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._fitted_rows = int(checkpoint.get("memnet_ridge_rows", 0))  # absent (older): the next fit replaces it

    def on_train_start(self) -> None:
        super().on_train_start()  # keeps the checkpoint's epoch only if this run resumes in its middle
        sums = (self._resumed_epoch or {}).get("ridge_sums")
        if sums is not None and self.trainer.is_global_zero:  # one process: they are every process's rows
            accumulator = self._sums()
            accumulator.gram, accumulator.cross, accumulator.count = sums["gram"], sums["cross"], sums["count"]

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._accumulator = None

    def on_validation_epoch_start(self) -> None:
        self.fit_readout()
        super().on_validation_epoch_start()

    def on_train_epoch_end(self) -> None:
        rows = self._total_sums().count
        if 0 < rows < self._fitted_rows:
            rank_zero_warn(f"epoch {self.current_epoch} collected {rows} rows (cut short), fewer than the "
                           f"{self._fitted_rows} the read-out was fitted from: it is kept")
        self.fit_readout()

    def configure_optimizers(self) -> None:
        return None
