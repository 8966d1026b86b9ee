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
