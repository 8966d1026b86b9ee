"""Checkpoints: last.ckpt follows training even when the monitored metric does not improve."""

from __future__ import annotations

from functools import partial

import pytorch_lightning as pl
import torch

from memnet.callbacks import LastAndBestCheckpoint
from memnet.controllers import LSTMController
from memnet.lightning import SequenceModule
from memnet.models.ntm import NTM
from tasks.algorithmic import AlgorithmicDataModule, CopyTask


class _LastStepRecorder(pl.Callback):
    def __init__(self, path):
        self.path = path
        self.seen = []

    def on_train_epoch_start(self, trainer, pl_module):
        if self.path.exists():
            self.seen.append((trainer.global_step, torch.load(self.path, weights_only=False)["global_step"]))


def test_last_checkpoint_is_rewritten_at_every_validation(tmp_path):
    torch.manual_seed(0)
    task = CopyTask(width=3, min_length=1, max_length=3)
    data = AlgorithmicDataModule(task, batch_size=4, batches_per_epoch=2, val_size=4)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=8),
              memory_size=6, word_size=4)
    # mode="max" on a falling loss: only the first epoch is ever "best"
    checkpoint = LastAndBestCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="max", save_last=True)
    recorder = _LastStepRecorder(tmp_path / "last.ckpt")
    trainer = pl.Trainer(max_epochs=4, callbacks=[checkpoint, recorder], logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(SequenceModule(net), datamodule=data)
    assert recorder.seen == [(2, 2), (4, 4), (6, 6)]
    assert len(list(tmp_path.glob("epoch=*.ckpt"))) == 1
