"""Checkpoints: last.ckpt follows training even when the monitored metric does not improve."""

from __future__ import annotations

import os
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from memnet.callbacks import LastAndBestCheckpoint
from memnet.cli.lightning_cli import AtomicCheckpointIO
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


def _dropout_run(tmp_path, max_steps, ckpt_path=None):
    """A copy-task NTM whose 2-layer LSTM controller drops out (from torch's global generator), seeded as
    ``seed_everything`` seeds a run; trained to ``max_steps`` (3 batches an epoch), from ``ckpt_path`` if given."""
    torch.manual_seed(0)
    task = CopyTask(width=3, min_length=1, max_length=3)
    data = AlgorithmicDataModule(task, batch_size=4, batches_per_epoch=3, val_size=4)
    net = NTM(task.input_size, task.output_size,
              controller=partial(LSTMController, hidden_size=8, num_layers=2, dropout=0.5), memory_size=6, word_size=4)
    module = SequenceModule(net)
    trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("stop", [3, 4], ids=["at-an-epoch-end", "mid-epoch"])
def test_a_resumed_run_continues_the_dropout_draws_of_the_unbroken_run(tmp_path, stop):
    """Dropout draws from torch's global generator, which Lightning does not keep: a resumed run (seeded again by
    seed_everything) drew the seed's first masks again, and its weights differed from the unbroken run's."""
    unbroken, _ = _dropout_run(tmp_path, 6)
    _, first = _dropout_run(tmp_path, stop)
    first.save_checkpoint(tmp_path / "half.ckpt")
    resumed, _ = _dropout_run(tmp_path, 6, ckpt_path=tmp_path / "half.ckpt")
    for (name, value), resumed_value in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, resumed_value), name


@pytest.mark.parametrize("leftover", ["file", "folder"])
def test_a_save_cut_short_never_blocks_the_later_saves(tmp_path, leftover):
    """A process killed mid-save leaves ``.<name>.partial`` in the checkpoint folder (a file, or a folder: a
    sharded checkpoint, an export): the next save writes its checkpoint all the same and removes the leftovers."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in (".last.ckpt.partial", ".epoch=0-step=2.ckpt.partial"):
        if leftover == "folder":
            (folder / name).mkdir()
            (folder / name / "shard_0.distcp").write_bytes(b"half")
        else:
            (folder / name).write_bytes(b"half")
    checkpoint_io = AtomicCheckpointIO()
    for step in (4, 6):
        checkpoint_io.save_checkpoint({"global_step": step, "state_dict": {"w": torch.ones(3)}}, folder / "last.ckpt")
        assert os.listdir(folder) == ["last.ckpt"]
        assert checkpoint_io.load_checkpoint(folder / "last.ckpt")["global_step"] == step
