"""``AlgorithmicDataModule``: any task as seeded train / validation / test streams (per DDP process)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, IterableDataset

from memnet.metrics import accumulation_dtype
from memnet.protocols import sequence_batches, split_batches
from memnet.utils import (
    MemnetError,
    ResumableLoader,
    batches_done,
    distributed_position,
    evaluation_sampler,
    is_integer,
    mix_seed,
)
from tasks.algorithmic.base import AlgorithmicTask, _subrange


class _TrainStream(IterableDataset):
    """An endless-looking stream of ``batches_per_epoch`` fresh batches per epoch.

    Epoch e of process (rank) r draws from a generator seeded with (seed, e, r)
    (:func:`train_stream_seed`), so the same seed gives the same batches, a run
    resumed at epoch e sees what it would have seen, and under DDP every process
    draws its own sequences.
    """

    def __init__(self, datamodule: AlgorithmicDataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[dict]:
        dm = self.datamodule
        rank, _ = distributed_position(dm.trainer)
        if batches_done(dm.trainer):  # resumed from a checkpoint written in this epoch: its stream again (the
            dm.epoch -= 1  # loader leaves out the batches trained on)
        generator = torch.Generator().manual_seed(train_stream_seed(dm.seed, dm.epoch, rank))
        dm.epoch += 1
        for _ in range(dm.batches_per_epoch):
            # read per batch, so a curriculum that moves the range mid-epoch takes effect at once
            low, high = dm.length_range
            if dm.length_mix > 0 and float(torch.rand((), generator=generator)) < dm.length_mix:
                low, high = dm.task.min_length, dm.task.max_length
            length = dm.task.sample_length(generator, low, high)
            yield dm.task.sample_batch(generator, dm.batch_size, length)

    def __len__(self) -> int:
        return self.datamodule.batches_per_epoch


class AlgorithmicDataModule(pl.LightningDataModule):
    """Seeded train / validation / test data for an ``AlgorithmicTask``.

    Training draws ``batches_per_epoch`` new batches each epoch, the length of
    each batch uniform over ``length_range`` (the task's training range unless
    a curriculum narrows it). With ``length_mix`` p > 0, each batch instead
    draws from the whole training range with probability p (the "mixed" part
    of a mixed curriculum). ``memnet.curriculum.LengthCurriculum`` moves both
    as training goes; both are saved in ``state_dict``. Validation and test sets are fixed: ``val_size``
    (``test_size``) examples at each length of ``val_lengths`` (``test_lengths``),
    drawn once from their own seeds. Under DDP every process draws its own training
    batches and scores its own share of the fixed sets, each sequence on one process
    (:func:`fixed_set_loader`).

    Args:
        task: the task, e.g. ``CopyTask(width=8, min_length=1, max_length=20)``.
        batch_size: sequences per batch.
        batches_per_epoch: training batches in one epoch.
        val_lengths: lengths of the validation set (default: the task's max_length).
        val_size: validation examples per length.
        test_lengths: lengths of the test set (default: ``val_lengths``).
        test_size: test examples per length.
        seed: seed of every stream.
    """

    def __init__(
        self,
        task: AlgorithmicTask,
        *,
        batch_size: int = 32,
        batches_per_epoch: int = 100,
        val_lengths: list[int] | None = None,
        val_size: int = 256,
        test_lengths: list[int] | None = None,
        test_size: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in {"batch_size": batch_size, "batches_per_epoch": batches_per_epoch,
                            "val_size": val_size, "test_size": test_size}.items():
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.task = task
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.val_lengths = list(val_lengths or [task.max_length])
        self.test_lengths = list(test_lengths or self.val_lengths)
        for name, lengths in (("val_lengths", self.val_lengths), ("test_lengths", self.test_lengths)):
            bad = [n for n in lengths if not is_integer(n) or n < 1]
            if bad:
                raise ValueError(f"{name} must hold positive integers, got {bad}")
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self.epoch = 0
        for lengths, name in ((self.val_lengths, "val_lengths"), (self.test_lengths, "test_lengths")):
            for n in lengths:
                task.check_length(n, name)
        self._length_range = (task.min_length, task.max_length)
        self._length_mix = 0.0

    @property
    def length_range(self) -> tuple[int, int]:
        """(low, high): training lengths are drawn uniformly from [low, high] ⊆ the task's range."""
        return self._length_range

    @length_range.setter
    def length_range(self, value: tuple[int, int]) -> None:
        self._length_range = _subrange("length_range", value, ("min_length", self.task.min_length),
                                       ("max_length", self.task.max_length))

    @property
    def length_mix(self) -> float:
        """Probability that a training batch draws its length from the task's whole range."""
        return self._length_mix

    @length_mix.setter
    def length_mix(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"length_mix must lie in [0, 1], got {value!r}")
        self._length_mix = float(value)

    @property
    def input_size(self) -> int:
        """Width of one input step (linked to the model's ``input_size``)."""
        return self.task.input_size

    @property
    def output_size(self) -> int:
        """Width of one output step (linked to the model's ``output_size``)."""
        return self.task.output_size

    def fixed_batches(self, lengths: list[int], size: int, seed: int) -> list[dict]:
        """``size`` examples at each length, in batches of at most ``batch_size`` (the same examples whatever it is)."""
        generator = torch.Generator().manual_seed(seed)
        task = self.task.for_evaluation() if hasattr(self.task, "for_evaluation") else self.task
        batches = []
        for length in lengths:  # drawn in fixed blocks: the same sets for models trained with other batch sizes
            batches += sequence_batches(task, generator, length, size, self.batch_size)
        return batches

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The batch made consistent with its inputs as cast (``AlgorithmicTask.after_cast``).

        Under ``--trainer.precision bf16-true`` (or ``16-true``) Lightning casts every floating tensor of
        a batch to the half type before this hook: the network's inputs, as it should, but also what the
        task computed from the float32 draws: the Bayes-optimal cost of dynamic n-grams (about 126 bits
        per sequence, where bfloat16's step is 0.5), computed again from the batch's bits, which any float
        type holds exactly; and priority sort's targets, sorted again by the priorities the model reads.
        """
        inputs = batch.get("inputs") if isinstance(batch, dict) else None
        if inputs is not None and inputs.is_floating_point() and accumulation_dtype(inputs.dtype) != inputs.dtype:
            batch = self.task.after_cast(batch)
        return batch

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(_TrainStream(self), batch_size=None, trainer=self.trainer)

    def val_dataloader(self) -> DataLoader:
        return fixed_set_loader(self.fixed_batches(self.val_lengths, self.val_size, _mix(self.seed, -1)), self.trainer)

    def test_dataloader(self) -> DataLoader:
        return fixed_set_loader(self.fixed_batches(self.test_lengths, self.test_size, _mix(self.seed, -2)),
                                self.trainer)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "length_range": list(self.length_range), "length_mix": self.length_mix,
                "seed": self.seed, "task_range": [self.task.min_length, self.task.max_length]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the checkpoint's stream: its epoch, and its curriculum's range if the task's range is the same.

        A resume continues one run, so another data ``seed`` (other training batches, another
        validation set under the restored best score) is refused; a task whose length range
        changed starts from the new range, with a warning, instead of the checkpoint's.
        ``validate``, ``test`` and ``predict`` of a checkpoint continue no stream: they restore
        nothing and score the sets of this data module as configured (another seed: other sets).
        """
        trainer = self.trainer
        if trainer is not None and trainer.state.fn is not None and trainer.state.fn != TrainerFn.FITTING:
            return
        saved_seed = state_dict.get("seed", self.seed)
        if saved_seed != self.seed:
            raise MemnetError(
                f"data seed {self.seed} given, but the checkpoint was trained with data seed {saved_seed}: resuming "
                f"continues its stream and validation set; pass --data.init_args.seed {saved_seed}, or start a new "
                "run for other data")
        self.epoch = int(state_dict["epoch"])
        task_range = [self.task.min_length, self.task.max_length]
        if state_dict.get("task_range", task_range) == task_range:
            self.length_range = tuple(state_dict.get("length_range", self.length_range))
            self.length_mix = float(state_dict.get("length_mix", self.length_mix))
        else:
            warnings.warn(f"the task's lengths are now {task_range[0]}-{task_range[1]}, the checkpoint's were "
                          f"{state_dict['task_range'][0]}-{state_dict['task_range'][1]}: training goes on over the "
                          "new range (the checkpoint's curriculum range is dropped)", stacklevel=2)


def fixed_set_loader(batches: list[dict], trainer: Any) -> DataLoader:
    """The loader of a fixed validation or test set, made of ready ``batches``: all of them on one process; under
    DDP this process's share, every sequence on exactly one process (:class:`memnet.utils.UnrepeatedDistributedSampler`).

    Shared out batch by batch, a set of fewer batches than processes has its largest batches cut in
    two first (:func:`memnet.protocols.split_batches`): every process needs a batch. A set of fewer
    sequences than processes is refused.
    """
    _, world_size = distributed_position(trainer)
    batches = split_batches(batches, world_size)
    # too few sequences to give every process a batch: the batches are single sequences, so the sampler's count of
    # them, in its error, is the count of sequences
    return DataLoader(batches, batch_size=None, sampler=evaluation_sampler(batches, trainer, unit="sequence"))


def train_stream_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the training batches of ``epoch`` on process ``rank`` (DDP), from the data module's ``seed``.

    Rank 0 draws what a single-process run draws (so one device and the first of
    several see the same data); every other rank has its own stream.
    """
    base = _mix(seed, epoch)
    return base if rank == 0 else _mix(base, rank)


_mix = mix_seed  # a 63-bit seed for stream ``stream`` of base seed ``seed`` (splitmix64 finaliser)
