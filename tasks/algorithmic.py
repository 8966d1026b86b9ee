"""The algorithmic tasks of the NTM paper (Graves et al. 2014, §4), as LightningDataModules.

A task knows how to encode one example and how to sample a batch of them; the
``AlgorithmicDataModule`` turns any task into seeded train / validation / test
streams. Every batch is a dict:

    inputs   (B, T, input_size)    float, the sequence the model reads
    targets  (B, T, output_size)   float in {0, 1}, what it must write
    mask     (B, T)                1 on the steps whose output is scored, else 0
    length   int                   the task length this batch was drawn at

All sequences of a batch share one length (drawn per batch), so no step is
padding and a batch costs exactly its length.

Axes:  b - batch, t - time, d - features
"""

from __future__ import annotations

from typing import Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset


class AlgorithmicTask:
    """Interface of an algorithmic task (after the Chomsky-hierarchy benchmark's).

    Args:
        min_length: shortest task length drawn in training.
        max_length: longest task length drawn in training.
    """

    def __init__(self, *, min_length: int, max_length: int) -> None:
        if not isinstance(min_length, int) or min_length < 1:
            raise ValueError(f"min_length must be an integer ≥ 1, got {min_length!r}")
        if not isinstance(max_length, int) or max_length < min_length:
            raise ValueError(
                f"max_length must be an integer ≥ min_length ({min_length}), got {max_length!r}"
            )
        self.min_length = min_length
        self.max_length = max_length

    @property
    def input_size(self) -> int:
        """Width of one input step."""
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        """Width of one output step."""
        raise NotImplementedError

    def output_length(self, length: int) -> int:
        """Number of scored output steps for a task of ``length``."""
        raise NotImplementedError

    def sequence_length(self, length: int) -> int:
        """Total steps T of an example of ``length``."""
        raise NotImplementedError

    def sample_batch(
        self, generator: torch.Generator, batch_size: int, length: int
    ) -> dict[str, torch.Tensor | int]:
        """A batch of ``batch_size`` examples of task length ``length``, drawn with ``generator``."""
        raise NotImplementedError

    def sample_length(self, generator: torch.Generator, low: int | None = None, high: int | None = None) -> int:
        """A length drawn uniformly from [low, high] (default the training range)."""
        low = self.min_length if low is None else low
        high = self.max_length if high is None else high
        return int(torch.randint(low, high + 1, (), generator=generator))


class CopyTask(AlgorithmicTask):
    """Copy: read a sequence of random binary vectors, then write it back.

    The input has ``width`` data channels and one delimiter channel. The
    sequence is presented, then the delimiter, then blank inputs while the
    model writes the sequence (NTM paper §4.1; training lengths 1–20).

    Worked example (width 3, length 2)::

        >>> task = CopyTask(width=3, min_length=1, max_length=20)
        >>> bits = torch.tensor([[[1., 0., 1.], [0., 1., 1.]]])
        >>> example = task.encode(bits)
        >>> example["inputs"][0]        # x1, x2, delimiter, blank, blank
        tensor([[1., 0., 1., 0.],
                [0., 1., 1., 0.],
                [0., 0., 0., 1.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.]])
        >>> example["targets"][0]       # silent while reading, then x1, x2
        tensor([[0., 0., 0.],
                [0., 0., 0.],
                [0., 0., 0.],
                [1., 0., 1.],
                [0., 1., 1.]])
        >>> example["mask"][0]
        tensor([0., 0., 0., 1., 1.])

    Args:
        width: bits per vector (8 in the paper).
        min_length: shortest sequence in training.
        max_length: longest sequence in training.
    """

    def __init__(self, *, width: int = 8, min_length: int = 1, max_length: int = 20) -> None:
        super().__init__(min_length=min_length, max_length=max_length)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.width = width

    @property
    def input_size(self) -> int:
        return self.width + 1

    @property
    def output_size(self) -> int:
        return self.width

    def output_length(self, length: int) -> int:
        return length

    def sequence_length(self, length: int) -> int:
        return 2 * length + 1

    def encode(self, bits: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """Encode given sequences: bits (B, L, width) -> a batch dict (T = 2L + 1)."""
        batch_size, length, width = bits.shape
        if width != self.width:
            raise ValueError(f"bits must have width {self.width} in the last axis, got {width}")
        steps = self.sequence_length(length)
        inputs = bits.new_zeros(batch_size, steps, width + 1)
        inputs[:, :length, :width] = bits
        inputs[:, length, width] = 1.0  # delimiter
        targets = bits.new_zeros(batch_size, steps, width)
        targets[:, length + 1 :] = bits
        mask = bits.new_zeros(batch_size, steps)
        mask[:, length + 1 :] = 1.0
        return {"inputs": inputs, "targets": targets, "mask": mask, "length": length}

    def sample_batch(self, generator, batch_size, length):
        bits = torch.randint(0, 2, (batch_size, length, self.width), generator=generator)
        return self.encode(bits.float())


class _TrainStream(IterableDataset):
    """An endless-looking stream of ``batches_per_epoch`` fresh batches per epoch.

    Epoch e draws from a generator seeded with (seed, e), so the same seed gives
    the same batches, and a run resumed at epoch e sees what it would have seen.
    """

    def __init__(self, datamodule: AlgorithmicDataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[dict]:
        dm = self.datamodule
        generator = torch.Generator().manual_seed(_mix(dm.seed, dm.epoch))
        dm.epoch += 1
        low, high = dm.length_range
        for _ in range(dm.batches_per_epoch):
            length = dm.task.sample_length(generator, low, high)
            yield dm.task.sample_batch(generator, dm.batch_size, length)

    def __len__(self) -> int:
        return self.datamodule.batches_per_epoch


class AlgorithmicDataModule(pl.LightningDataModule):
    """Seeded train / validation / test data for an ``AlgorithmicTask``.

    Training draws ``batches_per_epoch`` new batches each epoch, the length of
    each batch uniform over ``length_range`` (the task's training range unless
    a curriculum narrows it). Validation and test sets are fixed: ``val_size``
    (``test_size``) examples at each length of ``val_lengths`` (``test_lengths``),
    drawn once from their own seeds.

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
        for name, value in dict(batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                                val_size=val_size, test_size=test_size).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.task = task
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.val_lengths = list(val_lengths or [task.max_length])
        self.test_lengths = list(test_lengths or self.val_lengths)
        for name, lengths in (("val_lengths", self.val_lengths), ("test_lengths", self.test_lengths)):
            bad = [n for n in lengths if not isinstance(n, int) or n < 1]
            if bad:
                raise ValueError(f"{name} must hold positive integers, got {bad}")
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self.epoch = 0
        self.length_range = (task.min_length, task.max_length)

    @property
    def input_size(self) -> int:
        """Width of one input step (linked to the model's ``input_size``)."""
        return self.task.input_size

    @property
    def output_size(self) -> int:
        """Width of one output step (linked to the model's ``output_size``)."""
        return self.task.output_size

    def fixed_batches(self, lengths: list[int], size: int, seed: int) -> list[dict]:
        """``size`` examples at each length, in batches of at most ``batch_size``."""
        generator = torch.Generator().manual_seed(seed)
        batches = []
        for length in lengths:
            remaining = size
            while remaining > 0:
                n = min(self.batch_size, remaining)
                batches.append(self.task.sample_batch(generator, n, length))
                remaining -= n
        return batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_TrainStream(self), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        batches = self.fixed_batches(self.val_lengths, self.val_size, _mix(self.seed, -1))
        return DataLoader(batches, batch_size=None)

    def test_dataloader(self) -> DataLoader:
        batches = self.fixed_batches(self.test_lengths, self.test_size, _mix(self.seed, -2))
        return DataLoader(batches, batch_size=None)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "length_range": list(self.length_range)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch = int(state_dict["epoch"])
        self.length_range = tuple(state_dict.get("length_range", self.length_range))


def _mix(seed: int, stream: int) -> int:
    """A 63-bit seed for stream ``stream`` of base seed ``seed`` (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63
