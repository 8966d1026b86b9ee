"""LightningModules: what is trained and how (loss, metrics, logging).

The network is passed in (``net``, a ``class_path`` in YAML); the module holds
only the loss, the metrics and the optimiser. Batches are dicts as produced by
``tasks.algorithmic`` (``inputs``, ``targets``, ``mask``, ``length``).

Metrics, logged as ``train/…``, ``val/…``, ``test/…``:
    loss                 masked binary cross-entropy, mean per scored bit (nats)
    bits_per_seq         the NTM paper's cost: binary cross-entropy summed over a
                         sequence's scored bits, in bits, averaged over sequences
    bit_errors_per_seq   wrongly predicted bits (threshold 0.5) per sequence
and, for validation and test, the same per task length as ``val/len_20/bits_per_seq``.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn


class SequenceModule(pl.LightningModule):
    """Trains a sequence model ``net: (B, T, D_in) -> logits (B, T, D_out)`` on binary targets.

    Args:
        net: the network, e.g. ``memnet.models.ntm.NTM``.
        optimizer: optimiser factory (``class_path`` + ``init_args`` in YAML); default Adam.
        scheduler: optional learning-rate scheduler factory.
        eval_memory_size: N to use in validation, test and predict (memory models
            only), e.g. to evaluate lengths that need more slots than training had.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        eval_memory_size: int | None = None,
    ) -> None:
        super().__init__()
        if eval_memory_size is not None and eval_memory_size < 1:
            raise ValueError(f"eval_memory_size must be a positive integer, got {eval_memory_size!r}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.eval_memory_size = eval_memory_size

    def forward(self, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """inputs (B, T, D_in) -> logits (B, T, D_out)."""
        if not self.training and self.eval_memory_size is not None:
            kwargs.setdefault("memory_size", self.eval_memory_size)
        return self.net(inputs, **kwargs)

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Shared by train / val / test: forward, loss, metrics, logging."""
        logits = self(batch["inputs"])
        metrics = sequence_metrics(logits, batch["targets"], batch["mask"])
        batch_size = batch["inputs"].shape[0]
        on_step = stage == "train"
        self.log(f"{stage}/loss", metrics["loss"], prog_bar=True, on_step=on_step, on_epoch=True, batch_size=batch_size)
        for name in ("bits_per_seq", "bit_errors_per_seq"):
            self.log(f"{stage}/{name}", metrics[name], prog_bar=name == "bits_per_seq",
                     on_step=on_step, on_epoch=True, batch_size=batch_size)
            if stage != "train" and "length" in batch:
                length = int(batch["length"])
                self.log(f"{stage}/len_{length}/{name}", metrics[name], on_epoch=True,
                         batch_size=batch_size, add_dataloader_idx=False)
        return metrics["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model_step(batch, "train")
        if "optimal_bits" in batch:  # tasks with a known best cost (dynamic n-grams): how far from it
            optimal = batch["optimal_bits"].mean()
            self.log(f"{stage}/optimal_bits_per_seq", optimal, on_step=on_step, on_epoch=True, batch_size=batch_size)
            self.log(f"{stage}/excess_bits_per_seq", metrics["bits_per_seq"] - optimal,
                     on_step=on_step, on_epoch=True, batch_size=batch_size)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}); training stopped. Lower the learning rate "
                "or clip gradients (trainer.gradient_clip_val)."
            )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.model_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Returns the binary predictions and the bit errors of every sequence."""
        logits = self(batch["inputs"])
        predictions = (logits > 0).to(batch["targets"].dtype)
        mask = batch["mask"].unsqueeze(-1)
        errors = ((predictions != batch["targets"]) * mask).sum(dim=(1, 2))
        self._predicted.append((int(batch.get("length", -1)), errors.detach().cpu()))
        if len(self._predicted) == 1:
            self._first_prediction = (batch["targets"][0].cpu(), predictions[0].cpu(), batch["mask"][0].cpu())
        return {"inputs": batch["inputs"], "targets": batch["targets"], "mask": batch["mask"],
                "predictions": predictions * mask, "bit_errors": errors}

    def on_predict_epoch_start(self) -> None:
        self._predicted: list[tuple[int, torch.Tensor]] = []
        self._first_prediction = None

    def on_predict_epoch_end(self) -> None:
        """Print bit errors per sequence by length, and the first example's target and output."""
        if not self._predicted or not self.trainer.is_global_zero:
            return
        print("\nlength  sequences  bit errors per sequence")
        for length in sorted({length for length, _ in self._predicted}):
            errors = torch.cat([e for n, e in self._predicted if n == length])
            print(f"{length:>6}  {len(errors):>9}  {errors.float().mean().item():.3f}")
        targets, predictions, mask = self._first_prediction
        scored = mask.bool()
        print("\nfirst example, output phase (rows: time steps)")
        print("target      ", "  ".join("".join(str(int(v)) for v in row) for row in targets[scored]))
        print("prediction  ", "  ".join("".join(str(int(v)) for v in row) for row in predictions[scored]))

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer),
                                                         "monitor": "val/loss"}}


def sequence_metrics(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Masked binary cross-entropy and the NTM paper's per-sequence metrics.

    Args:
        logits: (B, T, D) output logits.
        targets: (B, T, D) binary targets.
        mask: (B, T) 1 on scored steps.

    Returns:
        ``loss`` (mean nats per scored bit), ``bits_per_seq`` and ``bit_errors_per_seq``
        (sums over a sequence's scored bits, averaged over the batch).
    """
    batch_size, _, width = logits.shape
    mask = mask.unsqueeze(-1)
    nats = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * mask
    scored_bits = (mask.sum() * width).clamp_min(1)
    errors = ((logits > 0).to(targets.dtype) != targets).to(logits.dtype) * mask
    return {
        "loss": nats.sum() / scored_bits,
        "bits_per_seq": nats.sum() / (batch_size * math.log(2)),
        "bit_errors_per_seq": errors.sum() / batch_size,
    }


# ----------------------------------------------------------------------------- question answering

FAILED_TASK_ERROR = 5.0  # percent: a bAbI task counts as failed above this test error (Weston et al. 2015)


class QAModule(pl.LightningModule):
    """Trains a question-answering model ``net(story, query) -> answer logits (B, A)``.

    Batches are dicts as produced by ``tasks.babi`` (``story`` (B, N, J), ``query``
    (B, Jq), ``answer`` (B,) class, ``task`` (B,) task number).

    Metrics, logged as ``train/…``, ``val/…``, ``test/…`` (per epoch):
        loss            cross-entropy of the answer (mean or sum over the batch, see ``loss_reduction``)
        accuracy        share of questions answered exactly
        error           100 · (1 − accuracy), in percent
        task_<k>/error  the same for bAbI task k alone (every task present in the split)
        mean_task_error mean of the per-task errors, and ``failed_tasks`` the number above 5%

    The MemN2N paper's optimisation is SGD with lr 0.01 halved every 25 epochs for
    100 epochs, gradients clipped at norm 40 and a cost summed, not averaged, over
    the batch: ``optimizer: torch.optim.SGD``, ``scheduler: torch.optim.lr_scheduler.StepLR``
    (step_size 25, gamma 0.5), ``trainer.gradient_clip_val: 40``, ``loss_reduction: sum``.

    Args:
        net: the network, e.g. ``memnet.models.memn2n.MemN2N`` or ``memnet.models.reader.SequenceReader``.
        optimizer: optimiser factory; default Adam.
        scheduler: optional learning-rate scheduler factory (stepped every epoch).
        loss_reduction: ``mean`` or ``sum`` of the cross-entropy over the batch.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        loss_reduction: str = "mean",
    ) -> None:
        super().__init__()
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_reduction = loss_reduction
        self._task_counts: dict[str, torch.Tensor] = {}  # stage -> (2, tasks) errors and questions this epoch

    def forward(self, story: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """story (B, N, J), query (B, Jq) -> answer logits (B, A)."""
        return self.net(story, query)

    def model_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Shared by train / val / test: forward, loss, metrics, per-task counts, logging."""
        logits = self(batch["story"], batch["query"])
        answer = batch["answer"]
        loss = F.cross_entropy(logits, answer, reduction=self.loss_reduction)
        wrong = (logits.argmax(-1) != answer).to(logits.dtype)
        batch_size = answer.shape[0]
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=batch_size)
        self.log(f"{stage}/accuracy", 1 - wrong.mean(), on_step=on_step, on_epoch=True, batch_size=batch_size)
        self.log(f"{stage}/error", 100 * wrong.mean(), prog_bar=stage != "train", on_step=on_step,
                 on_epoch=True, batch_size=batch_size)
        if "task" in batch:
            tasks = batch["task"]
            size = int(tasks.max()) + 1
            counts = torch.stack([
                torch.zeros(size, device=wrong.device, dtype=wrong.dtype).index_add_(0, tasks, wrong.detach()),
                torch.zeros(size, device=wrong.device, dtype=wrong.dtype).index_add_(0, tasks, torch.ones_like(wrong)),
            ])
            previous = self._task_counts.get(stage)
            if previous is not None:
                width = max(previous.shape[1], size)
                counts = F.pad(counts, (0, width - size)) + F.pad(previous, (0, width - previous.shape[1]))
            self._task_counts[stage] = counts
        return loss

    def _log_task_errors(self, stage: str) -> None:
        counts = self._task_counts.pop(stage, None)
        if counts is None or self.trainer.sanity_checking:
            return
        present = counts[1] > 0
        errors = 100 * counts[0][present] / counts[1][present]
        for task, error in zip(present.nonzero().flatten().tolist(), errors):
            self.log(f"{stage}/task_{task}/error", error, on_epoch=True)
        self.log(f"{stage}/mean_task_error", errors.mean(), on_epoch=True)
        self.log(f"{stage}/failed_tasks", (errors > FAILED_TASK_ERROR).sum().to(errors.dtype), on_epoch=True)

    def on_train_epoch_start(self) -> None:
        self._task_counts.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._task_counts.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._task_counts.pop("test", None)

    def on_train_epoch_end(self) -> None:
        self._log_task_errors("train")

    def on_validation_epoch_end(self) -> None:
        self._log_task_errors("val")

    def on_test_epoch_end(self) -> None:
        self._log_task_errors("test")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model_step(batch, "train")
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}); training stopped. Lower the learning rate "
                "or clip gradients (trainer.gradient_clip_val)."
            )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.model_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """The predicted answer class of every question, with the true one and the task."""
        logits = self(batch["story"], batch["query"])
        return {"prediction": logits.argmax(-1), "answer": batch["answer"], "task": batch.get("task")}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer),
                                                         "monitor": "val/loss"}}
