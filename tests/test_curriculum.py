"""The length curriculum: schedules, monotone growth, its effect on a real data module, logging, bad input."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from memnet.curriculum import LengthCurriculum
from tasks.algorithmic import AlgorithmicDataModule, CopyTask


@pytest.mark.parametrize("schedule", ["growing", "mixed"])
def test_growing_schedules_are_monotone_and_bounded(schedule):
    curriculum = LengthCurriculum(schedule, start_length=2, increment=3, threshold=1.0, every_n_epochs=4,
                                  monitor="val/bits_per_seq")
    rng = random.Random(0)
    current, level, seen = 2, 0, [2]
    for _ in range(60):
        level += 1
        new = curriculum.next_max_length(current, 17, epochs_at_level=level, metric=rng.uniform(0, 3))
        assert current <= new <= 17 and new - current in (0, 3, 17 - current)
        if new != current:
            level = 0
        current = new
        seen.append(current)
    assert seen == sorted(seen) and seen[-1] == 17


def test_threshold_and_pace_decide_when_to_step_up():
    by_threshold = LengthCurriculum("growing", threshold=0.5)
    assert by_threshold.next_max_length(4, 10, epochs_at_level=9, metric=0.6) == 4
    assert by_threshold.next_max_length(4, 10, epochs_at_level=0, metric=0.4) == 5
    assert by_threshold.next_max_length(4, 10, epochs_at_level=0, metric=None) == 4
    by_pace = LengthCurriculum("growing", every_n_epochs=2, increment=2)
    assert by_pace.next_max_length(4, 10, epochs_at_level=1, metric=0.0) == 4
    assert by_pace.next_max_length(4, 10, epochs_at_level=2, metric=9.0) == 6
    assert by_pace.next_max_length(9, 10, epochs_at_level=2, metric=9.0) == 10


def test_fixed_is_the_whole_range_always():
    fixed = LengthCurriculum("fixed")
    assert fixed.next_max_length(3, 12, epochs_at_level=0, metric=None) == 12


def tiny_trainer(tmp_path, curriculum, epochs, task=None, record=lambda batch: int(batch["length"]), val_batches=1):
    """Fits a small LSTM with ``curriculum``; returns the trainer, the data module and (epoch, record(batch)) per batch."""
    from functools import partial

    from memnet.controllers import LSTMController
    from memnet.lightning import SequenceModule
    from memnet.models.recurrent import RecurrentModel

    task = task or CopyTask(width=3, min_length=1, max_length=7)
    dm = AlgorithmicDataModule(task, batch_size=3, batches_per_epoch=4, val_lengths=[task.max_length],
                               val_size=3 * val_batches, seed=0)
    seen: list[tuple[int, int]] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.current_epoch, record(batch)))

    net = RecurrentModel(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=5))
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=val_batches,
                         callbacks=[curriculum, Record()])
    trainer.fit(SequenceModule(net), datamodule=dm)
    return trainer, dm, seen


def test_growing_curriculum_moves_the_data_module_and_logs(tmp_path):
    curriculum = LengthCurriculum("growing", start_length=2, increment=2, every_n_epochs=1)
    trainer, dm, lengths = tiny_trainer(tmp_path, curriculum, epochs=3)
    assert [h[1] for h in curriculum.history] == [2, 4, 6, 7]
    assert dm.length_range == (1, 7) and dm.length_mix == 0.0
    for epoch, length in lengths:
        assert length <= 2 + 2 * epoch  # epoch e draws from 1 .. 2 + 2e
    assert trainer.callback_metrics["curriculum/max_length"].item() == 6.0  # logged before the last step up
    state = curriculum.state_dict()
    restored = LengthCurriculum("growing", every_n_epochs=1)
    restored.load_state_dict(state)
    assert restored.max_length == 7 and restored.history == curriculum.history


def test_mixed_curriculum_sets_the_mix(tmp_path):
    curriculum = LengthCurriculum("mixed", start_length=1, every_n_epochs=5, mix=0.5)
    trainer, dm, lengths = tiny_trainer(tmp_path, curriculum, epochs=1)
    assert dm.length_range == (1, 1) and dm.length_mix == 0.5
    assert trainer.callback_metrics["curriculum/mix"].item() == 0.5
    assert max(length for _, length in lengths) > 1  # some batches came from the whole range


def test_needs_a_data_module_with_a_length_range():
    class Trainer:
        datamodule = object()

    with pytest.raises(TypeError, match="length_range"):
        LengthCurriculum("growing", every_n_epochs=1).on_fit_start(Trainer(), None)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"schedule": "sometimes", "every_n_epochs": 1}, "schedule"),
        ({"schedule": "growing"}, "every_n_epochs"),
        ({"schedule": "mixed", "every_n_epochs": 1, "mix": 1.5}, "mix"),
        ({"schedule": "growing", "every_n_epochs": 0}, "every_n_epochs"),
        ({"schedule": "growing", "every_n_epochs": 1, "start_length": 0}, "start_length"),
        ({"schedule": "growing", "every_n_epochs": 1, "increment": -1}, "increment"),
        ({"schedule": "mixed", "threshold": 1.0}, "includes the batches drawn from the whole range"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LengthCurriculum(**kwargs)


def test_curriculum_in_a_config_runs_through_the_cli(tmp_path, monkeypatch):
    from pathlib import Path

    from memnet.cli import MemnetCLI

    monkeypatch.chdir(tmp_path)
    cli = MemnetCLI(args=[
        "--config", str(Path(__file__).parents[1] / "configs/lstm/copy.yaml"),
        "--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--model.init_args.net.init_args.controller.init_args.hidden_size=4",
        "--model.init_args.net.init_args.controller.init_args.num_layers=1",
        "--trainer.callbacks+=memnet.curriculum.LengthCurriculum",
        "--trainer.callbacks.schedule=mixed", "--trainer.callbacks.every_n_epochs=1",
        "--trainer.callbacks.start_length=3",
    ], run=False)
    [curriculum] = [c for c in cli.trainer.callbacks if isinstance(c, LengthCurriculum)]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert curriculum.schedule == "mixed" and curriculum.history == [(0, 3), (1, 4)]  # one epoch: one step up
    assert cli.datamodule.length_range == (1, 4) and cli.datamodule.length_mix == 0.2


# ---- repeat copy: the repeat-count curriculum ----

def test_repeat_range_narrows_training_draws_but_not_the_count_encoding_or_validation():
    import torch

    from tasks.algorithmic import RepeatCopyTask

    task = RepeatCopyTask(width=3, min_length=1, max_length=4, min_repeats=1, max_repeats=10)
    full = task.sample_batch(torch.Generator().manual_seed(0), 64, 2)
    task.repeats_range = (1, 2)
    narrow = task.sample_batch(torch.Generator().manual_seed(0), 64, 2)
    counts = narrow["inputs"][:, 2, -1].unique()
    # r = 1 and 2 only, encoded as over the whole 1-10 range: (r - 5.5) / sqrt(99 / 12)
    torch.testing.assert_close(counts, task.normalise_repeats(torch.tensor([1.0, 2.0])))
    assert narrow["inputs"].shape[1] <= 2 + 2 + 2 * 2 < full["inputs"].shape[1]
    evaluation = task.for_evaluation()
    assert evaluation is not task and evaluation.repeats_range == (1, 10)
    with pytest.raises(ValueError, match=r"max_repeats \(10\).*\(1, 11\)"):
        task.repeats_range = (1, 11)


def repeat_trainer(tmp_path, curriculum, epochs):
    """tiny_trainer on repeat copy, recording the largest repeat count of each batch."""
    from tasks.algorithmic import RepeatCopyTask

    task = RepeatCopyTask(width=3, min_length=1, max_length=3, min_repeats=1, max_repeats=4)
    # scored steps of a sequence: L·r outputs and the end marker
    largest_repeats = lambda batch: (int(batch["mask"].sum(1).max()) - 1) // int(batch["length"])
    return tiny_trainer(tmp_path, curriculum, epochs, task=task, record=largest_repeats, val_batches=2)


def test_repeat_curriculum_grows_the_repeats_one_level_at_a_time(tmp_path):
    from memnet.curriculum import RepeatCurriculum

    curriculum = RepeatCurriculum(start_repeats=1, every_n_epochs=1, threshold=None)
    trainer, dm, seen = repeat_trainer(tmp_path, curriculum, epochs=3)
    assert [h[1] for h in curriculum.history] == [1, 2, 3, 4]
    assert dm.task.repeats_range == (1, 4)
    for epoch, repeats in seen:
        assert repeats <= 1 + epoch  # epoch e draws 1 .. 1 + e repeats
    assert trainer.callback_metrics["curriculum/max_repeats"].item() == 3.0
    restored = RepeatCurriculum()
    restored.load_state_dict(curriculum.state_dict())
    assert restored.max_length == 4 and restored.history == curriculum.history


def test_repeat_curriculum_threshold_holds_the_level_until_the_loss_is_low(tmp_path):
    from memnet.curriculum import RepeatCurriculum

    curriculum = RepeatCurriculum(start_repeats=2, threshold=1e-9)  # an untrained net never gets there
    _, dm, seen = repeat_trainer(tmp_path, curriculum, epochs=2)
    assert dm.task.repeats_range == (1, 2) and max(r for _, r in seen) <= 2


def test_repeat_curriculum_refuses_other_tasks_and_the_mixed_schedule():
    from memnet.curriculum import RepeatCurriculum

    class Trainer:
        datamodule = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=4), batch_size=2)

    with pytest.raises(TypeError, match="repeats_range"):
        RepeatCurriculum().on_fit_start(Trainer(), None)
    with pytest.raises(ValueError, match="'growing' or 'fixed'"):
        RepeatCurriculum("mixed")
    with pytest.raises(ValueError, match="start_repeats"):
        RepeatCurriculum(start_repeats=0)


def test_repeat_curriculum_reads_the_logged_training_loss(tmp_path):
    from memnet.curriculum import RepeatCurriculum

    curriculum = RepeatCurriculum(start_repeats=1, threshold=100.0)  # any finite train/loss is below it
    repeat_trainer(tmp_path, curriculum, epochs=2)
    assert [h[1] for h in curriculum.history] == [1, 2, 3]


@pytest.mark.parametrize("repeats", [False, True])
def test_a_threshold_on_a_training_metric_nothing_logs_is_refused_at_the_first_epoch_end(tmp_path, repeats):
    # a mistyped train/ monitor found no value at any epoch end: the level never stepped up, exit 0
    from memnet.curriculum import RepeatCurriculum
    from memnet.utils import MemnetError

    make = partial(RepeatCurriculum, start_repeats=1) if repeats else partial(LengthCurriculum, start_length=2)
    curriculum = make(monitor="train/bits_per_sq", threshold=1e9)  # any value logged is below it
    with pytest.raises(MemnetError, match=r"Curriculum monitor 'train/bits_per_sq' is not a metric this run logs "
                                          r"in training; it logs: .*train/bits_per_seq, .*train/loss"):
        (repeat_trainer if repeats else tiny_trainer)(tmp_path, curriculum, epochs=3)
    assert curriculum.epochs_at_level == 1  # at the end of the first epoch


def test_a_threshold_on_the_epoch_name_of_a_training_metric_decides_on_this_epochs_value(tmp_path):
    # train/bits_per_seq_epoch (the name W&B shows) was summed from callback_metrics, which holds the previous
    # epoch's value until this epoch's end: every decision after the first was made on the epoch before
    decided = {}

    class Recorded(LengthCurriculum):
        def next_max_length(self, current, top, *, epochs_at_level, metric):
            decided.setdefault(self.monitor, []).append(metric)
            return super().next_max_length(current, top, epochs_at_level=epochs_at_level, metric=metric)

    for monitor in ("train/bits_per_seq", "train/bits_per_seq_epoch"):
        pl.seed_everything(0)
        tiny_trainer(tmp_path, Recorded("growing", start_length=2, monitor=monitor, threshold=1e-9), epochs=3)
    assert len(set(decided["train/bits_per_seq"])) == 3
    assert decided["train/bits_per_seq_epoch"] == pytest.approx(decided["train/bits_per_seq"])


def test_a_validation_metric_is_acted_on_once_not_at_every_epoch_until_the_next_validation(tmp_path):
    # validated every 3 epochs: the value of epoch 2 stayed in callback_metrics and stepped up epochs 2, 3 and 4
    import torch
    from torch import nn

    from memnet.lightning import SequenceModule

    class Perfect(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, inputs, targets=None):
            return 20 * (2 * targets - 1) + 0 * self.p

    class Fed(SequenceModule):
        def forward_kwargs(self, batch):
            return {"targets": batch["targets"]}

    dm = AlgorithmicDataModule(CopyTask(width=4, min_length=1, max_length=20), batch_size=4, batches_per_epoch=2,
                               val_size=4)
    curriculum = LengthCurriculum("growing", start_length=2, increment=2, monitor="val/bits_per_seq", threshold=1.0)
    trainer = pl.Trainer(max_epochs=6, check_val_every_n_epoch=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, callbacks=[curriculum])
    trainer.fit(Fed(Perfect()), datamodule=dm)
    assert curriculum.history == [(0, 2), (3, 4), (6, 6)]  # one step up per validation


class _StopInEpoch2(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 1:
            raise KeyboardInterrupt  # Lightning stops the run; the last checkpoint is epoch 1's validation


@pytest.mark.parametrize("monitor", ["val/bits_per_seq", "train/bits_per_seq"])
def test_a_run_resumed_from_a_checkpoint_of_validation_end_steps_up_as_the_unbroken_run(tmp_path, monitor):
    """Validating every 2nd epoch, checkpoints are written at the end of validation, before the epoch's own end
    (where the curriculum decides): the resumed run replays that end and must decide as the unbroken run did,
    with the validation value and the training metric of the epoch it did not see."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from memnet.controllers import LSTMController
    from memnet.lightning import SequenceModule
    from memnet.models.recurrent import RecurrentModel

    def fit(folder, *, stop=False, resume=False):
        torch.manual_seed(0)
        net = RecurrentModel(4, 3, controller=partial(LSTMController, hidden_size=8))
        data = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=8), batch_size=4, batches_per_epoch=3,
                                     val_size=4, seed=0)
        curriculum = LengthCurriculum("growing", start_length=2, monitor=monitor, threshold=1e9)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / folder, save_last=True, save_on_train_epoch_end=False)
        trainer = pl.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             check_val_every_n_epoch=2, num_sanity_val_steps=0,
                             callbacks=[curriculum, checkpoint, *([_StopInEpoch2()] if stop else [])])
        try:
            trainer.fit(SequenceModule(net), datamodule=data,
                        ckpt_path=str(tmp_path / folder / "last.ckpt") if resume else None)
        except SystemExit:
            assert stop
        return curriculum.history

    unbroken = fit("unbroken")
    fit("broken", stop=True)
    saved = torch.load(tmp_path / "broken" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 1 and len(saved["loops"]) > 0
    assert fit("broken", resume=True) == unbroken
    assert len(unbroken) > 2


class _ShortOnly(torch.nn.Module):
    """Right on sequences of length ≤ 2, no better than chance on longer ones: the batch losses differ."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, inputs, targets=None):
        scale = 20.0 if inputs.shape[1] <= 5 else 0.0  # T = 2 L + 1
        return scale * (2 * targets - 1) + 0 * self.p


def _fit_short_only(folder, threshold, checkpoint, *, callbacks=(), resume=False, stop=False, **trainer_options):
    """Train ``_ShortOnly`` on copy (lengths 1-8, 6 batches of 4 an epoch) under a ``train/loss`` curriculum from
    length 4 with ``threshold``; the curriculum's history. ``stop``: the run is stopped by one of ``callbacks``;
    ``resume``: from ``folder``'s last.ckpt."""
    from memnet.lightning import SequenceModule

    class Fed(SequenceModule):
        def forward_kwargs(self, batch):
            return {"targets": batch["targets"]}

    data = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=8), batch_size=4,
                                 batches_per_epoch=6, val_size=4, seed=0)
    curriculum = LengthCurriculum("growing", start_length=4, monitor="train/loss", threshold=threshold)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[curriculum, checkpoint, *callbacks], **trainer_options)
    try:
        trainer.fit(Fed(_ShortOnly()), datamodule=data,
                    ckpt_path=str(Path(checkpoint.dirpath) / "last.ckpt") if resume else None)
    except SystemExit:
        assert stop
    return curriculum.history


def test_a_resumed_run_replays_the_epoch_end_on_the_epoch_value_lightning_computes(tmp_path):
    """``train/loss`` is logged per scored bit (each batch weighted by its scored bits): the epoch end that a
    resumed run replays must decide on that weighted value, as the unbroken run did, not on the plain mean of
    the batches' values (a threshold between the two stepped up in the resumed run only)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    class Spy(pl.Callback):
        def __init__(self):
            self.values: dict[int, tuple[float, float]] = {}  # epoch -> (its logged value, its steps' plain mean)

        def on_train_epoch_end(self, trainer, pl_module):
            plain = sum(self.steps) / len(self.steps)
            self.values[trainer.current_epoch] = (float(trainer.callback_metrics["train/loss"]), plain)

        def on_train_epoch_start(self, trainer, pl_module):
            self.steps = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps.append(float(trainer.callback_metrics["train/loss"]))

    def fit(folder, threshold, *, stop=False, resume=False, spy=None):
        checkpoint = ModelCheckpoint(dirpath=tmp_path / folder, save_last=True, save_on_train_epoch_end=False)
        return _fit_short_only(folder, threshold, checkpoint, callbacks=[*([_StopInEpoch2()] if stop else []),
                                                                         *([spy] if spy else [])],
                               resume=resume, stop=stop, max_epochs=4, check_val_every_n_epoch=2)

    spy = Spy()
    fit("calibrate", 0.0, spy=spy)  # never steps up: the values of epoch 1 at level 4
    weighted, plain = spy.values[1]
    assert abs(weighted - plain) > 0.05  # the two means differ: the test can tell them apart
    threshold = (weighted + plain) / 2
    unbroken = fit("unbroken", threshold)
    fit("broken", threshold, stop=True)
    assert fit("broken", threshold, resume=True) == unbroken


def test_a_run_resumed_with_one_batch_left_in_the_epoch_decides_on_the_whole_epoch(tmp_path):
    """Resumed from a checkpoint written mid-epoch, the module adds the epoch's batches before the resume to
    Lightning's sums in its on_train_batch_end, after the curriculum's read: with one batch left, the epoch end
    decided on ``train/loss`` of that batch alone and stepped up an epoch later than the unbroken run."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == 5:
                self.last = float(trainer.callback_metrics["train/loss"])

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                self.epoch = float(trainer.callback_metrics["train/loss"])

    class StopBeforeTheLastBatch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == 5:
                raise KeyboardInterrupt  # the last checkpoint is step 5's, one batch before the epoch's end

    def fit(folder, threshold, *, stop=False, resume=False, spy=None):
        checkpoint = ModelCheckpoint(dirpath=tmp_path / folder, every_n_train_steps=5, save_last=True)
        return _fit_short_only(folder, threshold, checkpoint,
                               callbacks=[*([StopBeforeTheLastBatch()] if stop else []), *([spy] if spy else [])],
                               resume=resume, stop=stop, max_epochs=2)

    spy = Spy()
    fit("calibrate", 0.0, spy=spy)  # never steps up
    assert abs(spy.epoch - spy.last) > 0.05  # the epoch's value and its last batch's differ
    threshold = (spy.epoch + spy.last) / 2
    unbroken = fit("unbroken", threshold)
    fit("broken", threshold, stop=True)
    assert fit("broken", threshold, resume=True) == unbroken


@pytest.mark.parametrize("stop", [4, 6])
def test_a_run_trained_by_steps_and_resumed_steps_up_as_the_unbroken_run(tmp_path, stop):
    """Trained by steps (``max_steps``, as the algorithmic recipes are) with a validation every epoch, the last
    checkpoint is written at the training epoch's end, after the curriculum's decision: the resumed run replays that
    end (Lightning restarts an iteration-based fit there), and one stopped by ``max_steps`` part way through an
    epoch (stop 6 of 4-batch epochs) ran the epoch-end hooks on the part it trained. The resumed run stepped up
    twice at the replayed end, or a level too early on the rest of the cut epoch, and drew longer sequences."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from memnet.controllers import LSTMController
    from memnet.lightning import SequenceModule
    from memnet.models.recurrent import RecurrentModel

    class Lengths(pl.Callback):
        def __init__(self):
            self.seen = []  # (global step, the batch's sequence length)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append((trainer.global_step, int(batch["length"])))

    def fit(folder, max_steps, *, resume=False):
        torch.manual_seed(0)
        net = RecurrentModel(4, 3, controller=partial(LSTMController, hidden_size=8))
        data = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=8), batch_size=4, batches_per_epoch=4,
                                     val_size=4, seed=0)
        curriculum = LengthCurriculum("growing", start_length=1, every_n_epochs=1)
        lengths = Lengths()
        trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, callbacks=[curriculum, lengths,
                                                                ModelCheckpoint(dirpath=tmp_path / folder, save_last=True)])
        trainer.fit(SequenceModule(net), datamodule=data,
                    ckpt_path=str(tmp_path / folder / "last.ckpt") if resume else None)
        return curriculum.history, lengths.seen

    unbroken_history, unbroken_lengths = fit("unbroken", 12)
    assert unbroken_history == [(0, 1), (1, 2), (2, 3), (3, 4)]
    _, first = fit("broken", stop)
    history, rest = fit("broken", 12, resume=True)
    assert history == unbroken_history
    assert first + rest == unbroken_lengths


# ---- DDP: every process decides on the value over all processes ----

class _TwoProcesses:
    """A DDP strategy as one of two processes sees it: ``reduce`` adds the other's running [sum, weight]."""

    root_device = torch.device("cpu")

    def __init__(self, other_sum: float, other_weight: float):
        self.other = torch.tensor([other_sum, other_weight])
        self.reduced = 0

    def reduce(self, tensor, reduce_op="mean"):
        assert reduce_op == "sum"
        self.reduced += 1
        return tensor + self.other


def _one_process_epoch(curriculum, strategy, own_values):
    """Runs the curriculum's hooks over one training epoch of this process, its batches logging ``own_values``
    (Lightning's epoch value is this process's own: the metric logged without sync_dist); returns the trainer."""
    from types import SimpleNamespace

    trainer = SimpleNamespace(strategy=strategy, callback_metrics={}, current_epoch=0, sanity_checking=False,
                              datamodule=AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=9),
                                                               batch_size=2))
    module = SimpleNamespace(log=lambda *args, **kwargs: None)
    curriculum.on_fit_start(trainer, module)
    curriculum.on_train_epoch_start(trainer, module)
    for batch_idx, value in enumerate(own_values):
        trainer.callback_metrics["train/loss"] = torch.tensor(value)
        curriculum.on_train_batch_end(trainer, module, None, None, batch_idx)
    trainer.callback_metrics["train/loss"] = torch.tensor(sum(own_values) / len(own_values))
    return trainer, module


@pytest.mark.parametrize("other_sum, expected", [(5.0, 2), (0.2, 3)])
def test_a_training_metric_threshold_decides_on_the_value_over_all_ddp_processes(other_sum, expected):
    # this process's mean is 0.5, below the threshold; with the other's 2 batches summing to 5.0 the mean over
    # both is 1.5, above it (each process alone would decide differently: one stepped up, the other not)
    curriculum = LengthCurriculum("growing", start_length=2, monitor="train/loss", threshold=1.0)
    strategy = _TwoProcesses(other_sum, 2.0)
    trainer, module = _one_process_epoch(curriculum, strategy, [0.25, 0.75])
    curriculum.on_train_epoch_end(trainer, module)
    assert strategy.reduced == 1 and curriculum.max_length == expected


def test_a_checkpoint_keeps_the_training_sums_of_all_processes_for_the_epoch_end_a_resumed_run_replays():
    # only rank 0's checkpoint is written: it held rank 0's own sums, and the resumed run decided on them
    curriculum = LengthCurriculum("growing", start_length=2, monitor="train/loss", threshold=1.0)
    trainer, module = _one_process_epoch(curriculum, _TwoProcesses(5.0, 2.0), [0.25, 0.75])
    checkpoint = {"callbacks": {curriculum.state_key: curriculum.state_dict()}}
    curriculum.on_save_checkpoint(trainer, module, checkpoint)
    saved = checkpoint["callbacks"][curriculum.state_key]
    assert (saved["train_sum"], saved["train_weight"]) == (6.0, 4.0)

    resumed = LengthCurriculum("growing", start_length=2, monitor="train/loss", threshold=1.0)
    resumed.load_state_dict(saved)
    strategy = _TwoProcesses(5.0, 2.0)
    trainer.strategy, trainer.callback_metrics = strategy, {}  # the replayed epoch end: no batch logged
    resumed.on_train_epoch_end(trainer, module)
    assert strategy.reduced == 0 and resumed.max_length == 2  # 1.5 over both processes, not summed again


@pytest.mark.parametrize("schedule, saved, expected", [("growing", 7, 4), ("growing", 3, 3), ("fixed", 3, 4)])
def test_a_run_resumed_with_a_task_of_another_range_goes_on_inside_the_new_range(schedule, saved, expected):
    # the data module takes a changed task range on resume (with a warning); the curriculum's restored level set a
    # range above the new top: "length_range must satisfy ... ≤ max_length (4), got (1, 7)", exit 2
    from types import SimpleNamespace

    from memnet.curriculum import RepeatCurriculum
    from tasks.algorithmic import RepeatCopyTask

    curriculum = LengthCurriculum(schedule, every_n_epochs=1)
    curriculum.load_state_dict({"max_length": saved, "epochs_at_level": 2, "history": [(0, 1), (6, saved)]})
    dm = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=4))
    curriculum.on_fit_start(SimpleNamespace(datamodule=dm, current_epoch=9), None)
    assert curriculum.max_length == expected and dm.length_range == (1, expected)
    assert curriculum.history[-1] == ((9, expected) if expected != saved else (6, saved))

    repeats = RepeatCurriculum(every_n_epochs=1)
    repeats.load_state_dict({"max_length": 10, "history": [(0, 10)]})
    dm = AlgorithmicDataModule(RepeatCopyTask(width=3, max_repeats=5))
    repeats.on_fit_start(SimpleNamespace(datamodule=dm, current_epoch=9), None)
    assert repeats.max_length == 5 and dm.task.repeats_range == (1, 5)


def test_a_run_resumed_at_a_narrowed_range_without_a_length_curriculum_is_refused(tmp_path):
    """The data module's state brings the checkpoint's curriculum range back; with no length curriculum in the
    resumed run nothing widened it again and the run trained at lengths 1-2 of 1-20 to its end, exit 0."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from memnet.controllers import LSTMController
    from memnet.lightning import SequenceModule
    from memnet.models.recurrent import RecurrentModel

    lengths = []

    class Lengths(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lengths.append(int(batch["length"]))

    def fit(epochs, callbacks, *, resume=False):
        torch.manual_seed(0)
        net = RecurrentModel(4, 3, controller=partial(LSTMController, hidden_size=8))
        data = AlgorithmicDataModule(CopyTask(width=3, min_length=1, max_length=20), batch_size=4,
                                     batches_per_epoch=3, val_size=4, seed=0)
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0,
                             callbacks=[*callbacks, Lengths(), ModelCheckpoint(dirpath=tmp_path, save_last=True)])
        trainer.fit(SequenceModule(net), datamodule=data, ckpt_path=str(tmp_path / "last.ckpt") if resume else None)
        return data

    fit(2, [LengthCurriculum("growing", start_length=2, every_n_epochs=50)])
    assert max(lengths) <= 2
    lengths.clear()
    with pytest.raises(ValueError, match=r"lengths 1-2 of the task's 1-20, and no length curriculum in this run"):
        fit(4, [], resume=True)
    assert lengths == []  # refused before a batch was drawn
    # with the curriculum back the run goes on, as before
    assert fit(3, [LengthCurriculum("growing", start_length=2, every_n_epochs=50)], resume=True).length_range == (1, 2)
    assert lengths and max(lengths) <= 2


def test_a_repeat_curriculum_does_not_stand_for_the_length_curriculum_on_resume(tmp_path):
    """Repeat copy trained with both curricula and resumed with the repeat one alone: the repeat curriculum widens
    the repeat counts, never the lengths, so the narrowed lengths are refused as without any curriculum."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from memnet.controllers import LSTMController
    from memnet.curriculum import RepeatCurriculum
    from memnet.lightning import SequenceModule
    from memnet.models.recurrent import RecurrentModel
    from tasks.algorithmic import RepeatCopyTask

    def fit(epochs, callbacks, *, resume=False):
        torch.manual_seed(0)
        task = RepeatCopyTask(width=3, min_length=1, max_length=6, min_repeats=1, max_repeats=3)
        net = RecurrentModel(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=8))
        data = AlgorithmicDataModule(task, batch_size=4, batches_per_epoch=2, val_size=4, seed=0)
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, callbacks=[*callbacks, ModelCheckpoint(dirpath=tmp_path,
                                                                                          save_last=True)])
        trainer.fit(SequenceModule(net), datamodule=data, ckpt_path=str(tmp_path / "last.ckpt") if resume else None)

    fit(1, [LengthCurriculum("growing", start_length=2, every_n_epochs=50),
            RepeatCurriculum(start_repeats=1, every_n_epochs=50)])
    with pytest.raises(ValueError, match=r"lengths 1-2 of the task's 1-6, and no length curriculum in this run"):
        fit(3, [RepeatCurriculum(start_repeats=1, every_n_epochs=50)], resume=True)
