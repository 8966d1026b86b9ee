"""Checkpoints: last.ckpt follows training even when the monitored metric does not improve."""

from __future__ import annotations

import os
import time
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from memnet import utils
from memnet.callbacks import LastAndBestCheckpoint
from memnet.cli.lightning_cli import AtomicCheckpointIO
from memnet.controllers import LSTMController
from memnet.lightning import SequenceModule
from memnet.models.ntm import NTM
from memnet.utils import resume_cut_short_epoch
from tasks.algorithmic import AlgorithmicDataModule, CopyTask


class _LastStepRecorder(pl.Callback):
    def __init__(self, path):
        self.path = path
        self.seen = []

    def on_train_epoch_start(self, trainer, pl_module):
        if self.path.exists():
            self.seen.append((trainer.global_step, torch.load(self.path, weights_only=False)["global_step"]))


def _tiny_copy_ntm(batches_per_epoch: int, max_length: int = 3):
    """Seeded (0): the copy data (batches of 4, 4 validation sequences) and a tiny NTM of the resume tests."""
    torch.manual_seed(0)
    task = CopyTask(width=3, min_length=1, max_length=max_length)
    data = AlgorithmicDataModule(task, batch_size=4, batches_per_epoch=batches_per_epoch, val_size=4)
    net = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=8),
              memory_size=6, word_size=4)
    return data, net


def test_last_checkpoint_is_rewritten_at_every_validation(tmp_path):
    data, net = _tiny_copy_ntm(batches_per_epoch=2)
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


class _RateRecorder(pl.Callback):
    """(epoch, step, learning rate) at every training batch."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))


def _halving_run(folder, ckpt_path=None, scheduler=None, **limits):
    """A copy-task NTM whose rate a per-epoch StepLR (or ``scheduler``) halves every epoch (3 batches an epoch),
    trained to ``limits`` (max_epochs or max_steps), from ``ckpt_path`` if given; last.ckpt in ``folder``."""
    data, net = _tiny_copy_ntm(batches_per_epoch=3)
    module = SequenceModule(net, scheduler=scheduler or partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                            scheduler_interval="epoch")
    rates = _RateRecorder()
    checkpoint = LastAndBestCheckpoint(dirpath=folder, monitor="val/loss", save_last=True)
    trainer = pl.Trainer(logger=False, callbacks=[checkpoint, rates], enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=folder, limit_val_batches=1, **limits)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, trainer, rates.seen


@pytest.mark.parametrize("stop", [4, 7], ids=["in-an-earlier-epoch", "in-the-last-epoch"])
def test_a_run_stopped_by_steps_mid_epoch_and_resumed_by_epochs_ends_as_the_unbroken_run(tmp_path, stop):
    """3 epochs unbroken, and a run stopped by max_steps in the middle of an epoch resumed with max_epochs 3 (the
    suites budget by epochs and max_time): Lightning took the cut epoch, counted processed at its last.ckpt, as
    finished and dropped its remaining batches and its schedule step (every later epoch trained at the previous
    epoch's rate; cut in the last epoch, the resume trained nothing)."""
    unbroken, whole, whole_rates = _halving_run(tmp_path / "whole", max_epochs=3)
    _, _, first_rates = _halving_run(tmp_path / "halves", max_steps=stop)
    resumed, again, resumed_rates = _halving_run(tmp_path / "halves", tmp_path / "halves" / "last.ckpt", max_epochs=3)
    assert [rate for _, _, rate in whole_rates] == [1e-3] * 3 + [5e-4] * 3 + [2.5e-4] * 3
    assert first_rates + resumed_rates == whole_rates  # epoch, step and rate of every batch
    assert (again.global_step, again.current_epoch) == (whole.global_step, whole.current_epoch) == (9, 3)
    for (name, value), resumed_value in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, resumed_value), name
    assert again.callback_metrics.keys() == whole.callback_metrics.keys()
    for name, value in whole.callback_metrics.items():
        assert torch.equal(value, again.callback_metrics[name]), name


# a ReduceLROnPlateau that finds no improvement after its first step (mode max, by at least 1e9): it halves the rate
# at the end of every epoch from the second on
NO_PLATEAU = partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max", threshold=1e9, threshold_mode="abs",
                     patience=0, factor=0.5)


@pytest.mark.parametrize(("stop", "by"), [(2, "max_epochs"), (6, "max_steps"), (4, "max_steps")],
                         ids=["at-an-epoch-end-by-epochs", "at-an-epoch-end-by-steps", "mid-epoch"])
def test_a_resumed_run_steps_its_plateau_schedule_as_the_unbroken_run(tmp_path, stop, by):
    """Lightning steps a per-epoch ReduceLROnPlateau after the epoch's checkpoint, and at no epoch end it counts
    as restarting: resumed from the last.ckpt of epoch 1's end, the run trained epoch 2 at epoch 1's rate (1e-3
    where the unbroken run had 5e-4), and from the middle of epoch 1 it left out the step at its end; every later
    rate was twice the unbroken run's."""
    unbroken, _, whole_rates = _halving_run(tmp_path / "whole", scheduler=NO_PLATEAU, max_epochs=4)
    _, _, first_rates = _halving_run(tmp_path / "halves", scheduler=NO_PLATEAU, **{by: stop})
    resumed, _, resumed_rates = _halving_run(tmp_path / "halves", tmp_path / "halves" / "last.ckpt",
                                             scheduler=NO_PLATEAU, **{by: 4 if by == "max_epochs" else 12})
    assert [rate for _, _, rate in whole_rates] == [1e-3] * 6 + [5e-4] * 3 + [2.5e-4] * 3
    assert first_rates + resumed_rates == whole_rates
    for (name, value), resumed_value in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, resumed_value), name


@pytest.mark.parametrize(("epochs", "batch", "last", "counted_back"), [
    ((2, 2, 2, 1), 1, False, (2, 2, 1, 1)),  # on_train_epoch_end of an epoch cut short by max_steps
    ((2, 2, 2, 2), 1, False, (2, 2, 1, 1)),  # trainer.save_checkpoint after such a fit
    ((2, 2, 2, 1), 3, True, None),  # on_train_epoch_end of a whole epoch
    ((2, 2, 1, 1), 1, False, None),  # after a batch in the middle of an epoch (every_n_train_steps, a validation)
])
def test_only_the_checkpoint_of_an_epoch_cut_short_is_counted_back_to_its_middle(epochs, batch, last, counted_back):
    def counts(ready, started, processed, completed):
        return {"ready": ready, "started": started, "processed": processed, "completed": completed}

    checkpoint = {"loops": {"fit_loop": {
        "epoch_progress": {"total": counts(*epochs), "current": counts(*epochs)},
        "epoch_loop.batch_progress": {"total": counts(4, 4, 4, 4), "current": counts(*[batch] * 4),
                                      "is_last_batch": last}}}}
    assert resume_cut_short_epoch(checkpoint) == (counted_back is not None)
    progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    assert progress["total"] == progress["current"] == counts(*(counted_back or epochs))


def dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def written_ago(path, seconds: float) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


@pytest.mark.parametrize("leftover", ["file", "folder"])
def test_a_save_cut_short_never_blocks_the_later_saves(tmp_path, leftover):
    """A process killed mid-save leaves a partial file in the checkpoint folder (a file, or a folder: a sharded
    checkpoint, an export): the next save writes its checkpoint all the same and removes the stale leftovers (of
    an earlier memnet, ``.<name>.partial``, and of a dead pid of this host)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in (".last.ckpt.partial", f".epoch=0-step=2.ckpt.{utils._HOST}.{dead_pid()}.partial"):
        if leftover == "folder":
            (folder / name).mkdir()
            (folder / name / "shard_0.distcp").write_bytes(b"half")
        else:
            (folder / name).write_bytes(b"half")
        written_ago(folder / name, utils.LEGACY_PARTIAL_AGE + 60)
    checkpoint_io = AtomicCheckpointIO()
    for step in (4, 6):
        checkpoint_io.save_checkpoint({"global_step": step, "state_dict": {"w": torch.ones(3)}}, folder / "last.ckpt")
        assert os.listdir(folder) == ["last.ckpt"]
        assert checkpoint_io.load_checkpoint(folder / "last.ckpt")["global_step"] == step


def test_a_save_leaves_another_live_writers_partial_file(tmp_path):
    """A save removed every .*.partial in its folder: a second run saving into the same folder (two runs given one
    dirpath) lost the file it was writing, and its rename failed ('could not write the checkpoint ...last.ckpt').
    A save writes its own .<name>.<host>.<pid>.partial and removes only a dead writer's, once stale."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    host, gone = utils._HOST, dead_pid()
    names = {
        "live": f".last.ckpt.{host}.{os.getppid()}.partial",  # another run, saving now (its file's time: any)
        "dead": f".epoch=0-step=2.ckpt.{host}.{gone}.partial",  # a save killed 10 minutes ago
        "dead, just written": f".epoch=1-step=4.ckpt.{host}.{gone}.partial",  # a pid of another pid namespace?
        "another host's": f".last.ckpt.elsewhere.{gone}.partial",
        "earlier memnet's, old": ".best.ckpt.partial",
        "earlier memnet's, new": ".epoch=2-step=6.ckpt.partial",
    }
    for key, name in names.items():
        (folder / name).write_bytes(b"half")
        if key != "dead, just written" and key != "earlier memnet's, new":
            written_ago(folder / name, (utils.LEGACY_PARTIAL_AGE if "earlier" in key else utils.STALE_PARTIAL_AGE) + 60)
    AtomicCheckpointIO().save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(3)}}, folder / "last.ckpt")
    left = {key for key, name in names.items() if (folder / name).exists()}
    assert left == {"live", "dead, just written", "another host's", "earlier memnet's, new"}
    assert sorted(os.listdir(folder)) == sorted(["last.ckpt", *(names[key] for key in left)])  # its own: renamed
    os.replace(folder / names["live"], folder / "last.ckpt")  # the other run's rename: was FileNotFoundError


def test_a_checkpoint_is_written_beside_its_name_whatever_the_system_temporary_folder(tmp_path, monkeypatch):
    """Lightning's save staged the bytes in the system's temporary folder (tempfile.mkstemp(): /tmp) and moved them
    into the checkpoint folder: with /tmp full, every checkpoint of a run whose folder had room failed ('could not
    write the checkpoint ...best-epoch=000-step=2.ckpt: No space left on device'), and a killed save left its copy
    in /tmp for good."""
    import errno
    import tempfile

    def full_temporary_folder(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full_temporary_folder)
    folder = tmp_path / "checkpoints"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.ones(3)}}, folder / "last.ckpt")
    assert os.listdir(folder) == ["last.ckpt"]
    assert checkpoint_io.load_checkpoint(folder / "last.ckpt")["global_step"] == 3


class _SaveInsideAWindow(pl.Callback):
    """Writes ``path`` at the first validation of ``epoch`` that falls inside a window of accumulate_grad_batches."""

    def __init__(self, path, epoch):
        self.path, self.epoch, self.step = path, epoch, None

    def on_validation_end(self, trainer, pl_module):
        if (self.step is None and not trainer.sanity_checking and trainer.current_epoch == self.epoch
                and trainer.fit_loop.epoch_loop._should_accumulate()):
            trainer.save_checkpoint(self.path)
            self.step = trainer.global_step


def test_a_checkpoint_written_inside_an_accumulation_window_resumes_to_the_unbroken_weights(tmp_path):
    """Accumulating 2 batches and validating after every 3rd, the validation's checkpoint falls between a window's
    two batches: the resume left out the batch trained before it (rightly) but lost its gradient, so the window's
    step took the batch after the resume alone and every weight after it differed from the unbroken run's."""
    def run(callbacks, ckpt_path=None):
        data, net = _tiny_copy_ntm(batches_per_epoch=6)
        module = SequenceModule(net)
        trainer = pl.Trainer(max_epochs=2, accumulate_grad_batches=2, val_check_interval=3, limit_val_batches=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module, trainer

    save = _SaveInsideAWindow(tmp_path / "window.ckpt", epoch=1)
    unbroken, _ = run([save])
    assert save.step == 4  # epoch 1's third batch: its first window stepped, the second holds one batch
    assert "memnet_accumulated_grads" in torch.load(tmp_path / "window.ckpt", weights_only=False)
    resumed, trainer = run([], ckpt_path=tmp_path / "window.ckpt")
    assert trainer.global_step == 6
    for (name, value), resumed_value in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, resumed_value), name


class _WorkerNoise(torch.utils.data.Dataset):
    """Item i with a number drawn in the worker process that loads it (an augmentation's noise)."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.tensor([float(index), float(torch.rand(()))])


class _NoisyData(pl.LightningDataModule):
    def train_dataloader(self):
        from memnet.utils import EpochShuffle, ResumableLoader

        return ResumableLoader(_WorkerNoise(), batch_size=2, sampler=EpochShuffle(8, seed=0), num_workers=2,
                               generator=torch.Generator().manual_seed(0), trainer=self.trainer)


class _Seen(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.clone())
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("stop", [6, 4], ids=["mid-epoch", "at-an-epoch-end"])
def test_a_resumed_run_seeds_its_loader_workers_as_the_unbroken_run(tmp_path, stop):
    """The loader's generator seeds each epoch's worker processes; a resume made the loader afresh and its workers
    drew the first epoch's numbers again. Lightning keeps the loader's state_dict in the checkpoint (here one
    written after step ``stop``, as every_n_train_steps writes them; 4 steps an epoch)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    def run(ckpt_path=None):
        module = _Seen()
        checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="at", every_n_train_steps=stop, save_top_k=1,
                                     monitor="step", mode="min")
        trainer = pl.Trainer(max_steps=12, logger=False, callbacks=[checkpoint], enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(module, datamodule=_NoisyData(), ckpt_path=ckpt_path)
        return module.seen

    whole = run()
    assert torch.load(tmp_path / "at.ckpt", weights_only=False)["global_step"] == stop
    resumed = run(ckpt_path=tmp_path / "at.ckpt")
    assert len(resumed) == 12 - stop
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole[stop:]))


class _Batches(pl.Callback):
    """The inputs of every training batch, with the epoch and step it was trained at."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, trainer.global_step, batch["inputs"].clone()))


class _SaveAtValidation(pl.Callback):
    def __init__(self, path, step):
        self.path, self.step = path, step

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


@pytest.mark.parametrize(("written", "step"), [("every_n_train_steps", 6), ("every_n_train_steps", 4),
                                               ("validation", 6)],
                         ids=["after-a-batch-mid-epoch", "after-an-epochs-last-batch", "at-a-mid-epoch-validation"])
def test_a_run_resumed_from_a_checkpoint_written_during_training_sees_the_unbroken_runs_batches(tmp_path, written,
                                                                                              step):
    """10 steps of 4-batch epochs unbroken, and resumed from a checkpoint the unbroken run wrote after step 6 (as
    every_n_train_steps writes one, at a batch's end), after step 4 (the epoch's last batch) or at the validation in
    the middle of epoch 1 (val_check_interval 0.5): the resumed run trains the unbroken run's batches from there
    on, in the same epochs and steps, and ends with its weights."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    def run(ckpt_path=None):
        data, net = _tiny_copy_ntm(batches_per_epoch=4)
        module, batches = SequenceModule(net), _Batches()
        save = (ModelCheckpoint(dirpath=tmp_path, filename="at", every_n_train_steps=step, monitor="step", mode="min")
                if written == "every_n_train_steps" else _SaveAtValidation(tmp_path / "at.ckpt", step))
        trainer = pl.Trainer(max_steps=10, val_check_interval=0.5, limit_val_batches=1, logger=False,
                             callbacks=[batches] + ([save] if ckpt_path is None else []), enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module, batches.seen

    unbroken, whole = run()
    assert torch.load(tmp_path / "at.ckpt", weights_only=False)["global_step"] == step
    resumed, rest = run(ckpt_path=tmp_path / "at.ckpt")
    assert [(epoch, at) for epoch, at, _ in rest] == [(epoch, at) for epoch, at, _ in whole[step:]]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(rest, whole[step:]))
    for (name, value), resumed_value in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, resumed_value), name


def test_a_window_checkpoint_resumed_on_another_number_of_processes_warns_that_its_gradients_are_left_out():
    module = SequenceModule(NTM(4, 3, controller=partial(LSTMController, hidden_size=8), memory_size=6, word_size=4))
    grads = {name: torch.ones_like(p) for name, p in module.named_parameters()}
    with pytest.warns(UserWarning, match="inside a window of accumulate_grad_batches on 2 processes, and is resumed "
                                         "on 1: the window's gradients so far are left out"):
        module.on_load_checkpoint({"memnet_accumulated_grads": [grads, grads]})
    assert module._resumed_grads is None
    module.on_load_checkpoint({"memnet_accumulated_grads": [grads]})
    assert module._resumed_grads is grads


@pytest.mark.parametrize("monitor", [None, "val/loss"])
def test_a_step_checkpoint_due_after_an_epochs_last_batch_resumes_through_the_epochs_end(tmp_path, monitor):
    """every_n_train_steps 3 with 3 batches an epoch: Lightning saved after the epoch's last batch, before its
    validation and its end, and a run resumed from there went on with the next epoch: the epoch's end never came,
    so the curriculum did not step up (epoch 1 trained at L = 1, not 2), the relapse watch missed the validation and
    the weights differed. Written at the epoch's end instead (LastAndBestCheckpoint), the resume is the unbroken
    run's; the checkpoint keeps its step's name."""
    from memnet.callbacks import RelapseWatch
    from memnet.curriculum import LengthCurriculum

    def run(folder, ckpt_path=None):
        data, net = _tiny_copy_ntm(batches_per_epoch=3, max_length=6)
        module, curriculum, watch = SequenceModule(net), LengthCurriculum(every_n_epochs=1), RelapseWatch()
        checkpoint = LastAndBestCheckpoint(dirpath=folder, every_n_train_steps=3, save_top_k=-1, save_last=True,
                                           monitor=monitor)
        trainer = pl.Trainer(max_epochs=3, logger=False, callbacks=[curriculum, watch, checkpoint],
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                             num_sanity_val_steps=0)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module, curriculum.history, watch.history

    unbroken, levels, validations = run(tmp_path / "whole")
    assert levels == [(0, 1), (1, 2), (2, 3), (3, 4)] and len(validations) == 3
    written = tmp_path / "whole" / "epoch=0-step=3.ckpt"
    assert torch.load(written, weights_only=False)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    resumed, resumed_levels, resumed_validations = run(tmp_path / "again", ckpt_path=written)
    assert (resumed_levels, resumed_validations) == (levels, validations)
    for (name, value), resumed_value in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(value, resumed_value), name


def test_a_plain_step_checkpoint_written_after_an_epochs_last_batch_warns_on_resume_that_the_epochs_end_is_left_out(
        tmp_path, recwarn):
    """Lightning's own ModelCheckpoint(every_n_train_steps) saves at a batch's end, the epoch's last batch too
    (3 batches an epoch: after step 3), before the epoch's validation and end; resumed from there, Lightning goes
    on with epoch 1 and epoch 0's end never runs (the curriculum stepped up at epoch 2, not 1). It went by without
    a word; the resume says so. A checkpoint of the epoch's middle (step 2) resumes without it."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from memnet.curriculum import LengthCurriculum

    def run(folder, ckpt_path=None):
        data, net = _tiny_copy_ntm(batches_per_epoch=3, max_length=6)
        curriculum = LengthCurriculum(every_n_epochs=1)
        checkpoint = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1)
        trainer = pl.Trainer(max_epochs=2, logger=False, callbacks=[curriculum, checkpoint], enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0)
        trainer.fit(SequenceModule(net), datamodule=data, ckpt_path=ckpt_path)
        return curriculum.history

    assert run(tmp_path / "whole") == [(0, 1), (1, 2), (2, 3)]
    message = (r"epoch=0-step=3.ckpt was written after the last batch of epoch 0 \(step 3\), before the epoch's end "
               r"\(Lightning's ModelCheckpoint saves .* Lightning resumes it with epoch 1, and epoch 0's validation at "
               r"its end, its on_train_epoch_end .* --checkpoint \(memnet.callbacks.LastAndBestCheckpoint\) writes")
    with pytest.warns(UserWarning, match=message):
        levels = run(tmp_path / "again", ckpt_path=tmp_path / "whole" / "epoch=0-step=3.ckpt")
    assert levels == [(0, 1), (2, 2)]  # what the warning says: epoch 0's end (its step up) left out
    recwarn.clear()
    run(tmp_path / "middle", ckpt_path=tmp_path / "whole" / "epoch=0-step=2.ckpt")
    assert not [w for w in recwarn if "before the epoch's end" in str(w.message)]
