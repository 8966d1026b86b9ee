"""memnet.lightning: the modules share one base (set-up, finite-loss check, stage triplet, epoch metrics)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from memnet.lightning import (
    ConditionalSequenceModule,
    MemnetModule,
    QAModule,
    RegressionModule,
    RidgeReadoutModule,
    Seq2SeqModule,
    SequenceModule,
)


def test_every_module_stands_on_the_one_base():
    for module in (SequenceModule, ConditionalSequenceModule, QAModule, Seq2SeqModule, RegressionModule,
                   RidgeReadoutModule):
        assert issubclass(module, MemnetModule)
    for module in (SequenceModule, QAModule, Seq2SeqModule, RegressionModule):
        assert module.training_step is MemnetModule.training_step
        assert module.configure_optimizers is MemnetModule.configure_optimizers


def test_hyperparameters_of_the_subclass_are_saved_and_the_net_is_not():
    module = SequenceModule(nn.Linear(3, 2), eval_memory_size=64, scheduler_interval="step")
    assert module.hparams["eval_memory_size"] == 64 and module.hparams["scheduler_interval"] == "step"
    assert "net" not in module.hparams and "optimizer" not in module.hparams
    with pytest.raises(ValueError, match="scheduler_interval must be 'step' or 'epoch'"):
        RegressionModule(nn.Linear(3, 2), scheduler_interval="batch")


class _Diverged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, inputs):
        return inputs[..., :1] * self.scale * float("nan")


def test_regression_training_stops_on_a_non_finite_loss():
    batch = {"inputs": torch.ones(2, 5, 3), "targets": torch.zeros(2, 5, 1), "mask": torch.ones(2, 5)}
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.raises(FloatingPointError, match="training loss became nan at step 0"):
        trainer.fit(RegressionModule(_Diverged()), train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))


def test_epoch_metrics_start_empty_every_epoch():
    """The NRMSE of a validation epoch counts that epoch's batches only (torchmetrics state reset)."""
    module = RegressionModule(nn.Linear(3, 1))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    g = torch.Generator().manual_seed(0)
    batches = [{"inputs": torch.randn(2, 4, 3, generator=g), "targets": torch.randn(2, 4, 1, generator=g),
                "mask": torch.ones(2, 4)} for _ in range(2)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    first = trainer.validate(module, dataloaders=loader, verbose=False)[0]["val/nrmse"]
    again = trainer.validate(module, dataloaders=loader, verbose=False)[0]["val/nrmse"]
    assert first == pytest.approx(again)
    only_one = trainer.validate(module, dataloaders=torch.utils.data.DataLoader(batches[:1], batch_size=None),
                                verbose=False)[0]["val/nrmse"]
    assert only_one != pytest.approx(first)
