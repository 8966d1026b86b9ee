"""Copy and repeat copy (Graves et al. 2014, §4.1–4.2)."""

from __future__ import annotations

import math

import torch

from memnet.utils import is_integer
from tasks.algorithmic.base import AlgorithmicTask, _check_int, _subrange


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

    Sampled with a seeded generator (the same seed always gives these bits)::

        >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 1, 2)
        >>> batch["targets"][0, 3:]
        tensor([[0., 1., 1.],
                [0., 1., 1.]])

    Args:
        width: bits per vector (8 in the paper).
        min_length: shortest sequence in training.
        max_length: longest sequence in training.
    """

    def __init__(self, *, width: int = 8, min_length: int = 1, max_length: int = 20) -> None:
        super().__init__(min_length=min_length, max_length=max_length)
        if not is_integer(width) or width < 1:
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

    def memory_needed(self, length: int) -> int:
        """One slot per vector of the sequence."""
        return length

    def sample_batch(self, generator, batch_size, length):
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length, self.width), generator=generator)
        return self.encode(bits.float())


class RepeatCopyTask(AlgorithmicTask):
    """Repeat copy: read a sequence and a repeat count, write the sequence that many times, then an end marker.

    NTM paper §4.2. The input has ``width`` data channels, a delimiter channel
    and a count channel. After the sequence, one step carries the delimiter and,
    on the count channel, the number of repeats ``r`` normalised to mean 0 and
    variance 1 over the training repeats (uniform on [min_repeats, max_repeats]):
    ``(r − mean) / std``. The output has ``width`` data channels and an end-marker
    channel; the model writes the sequence ``r`` times, then raises the end marker.

    Each sequence of a batch draws its own ``r``; the batch is as long as its
    largest ``r`` needs (T = L + 2 + L·max r), and a sequence with fewer repeats
    is silent and unscored (mask 0) after its end marker. With
    ``repeats_per_batch=True`` one ``r`` is drawn for each training batch instead,
    so no step is padding (cheaper training; the same task); validation, test and
    ``memnet evaluate`` still draw ``r`` per sequence (``for_evaluation``).
    ``with_repeats(r)`` is the task with every sequence at exactly ``r`` repeats, inside the
    training range or beyond it (``memnet evaluate --repeats``), its count normalised as in training.

    Worked example (width 2, length 2, 2 repeats; training repeats 1–3, so the
    count is (2 − 2) / √(2/3) = 0)::

        >>> task = RepeatCopyTask(width=2, min_length=1, max_length=10, min_repeats=1, max_repeats=3)
        >>> example = task.encode(torch.tensor([[[1., 0.], [1., 1.]]]), torch.tensor([2]))
        >>> example["inputs"][0]        # x1, x2, delimiter + count, then blanks
        tensor([[1., 0., 0., 0.],
                [1., 1., 0., 0.],
                [0., 0., 1., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.]])
        >>> example["targets"][0]       # x1 x2 x1 x2, then the end marker
        tensor([[0., 0., 0.],
                [0., 0., 0.],
                [0., 0., 0.],
                [1., 0., 0.],
                [1., 1., 0.],
                [1., 0., 0.],
                [1., 1., 0.],
                [0., 0., 1.]])
        >>> example["mask"][0]
        tensor([0., 0., 0., 1., 1., 1., 1., 1.])

    Sampled with a seeded generator (repeats drawn per sequence; the second
    sequence has fewer repeats, so its last steps are padding)::

        >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 2, 1)
        >>> batch["inputs"][:, :2]      # x1 and the count step of each sequence: r = 2 (0.0), r = 1 (−1.2247)
        tensor([[[ 0.0000,  1.0000,  0.0000,  0.0000],
                 [ 0.0000,  0.0000,  1.0000,  0.0000]],
        <BLANKLINE>
                [[ 1.0000,  0.0000,  0.0000,  0.0000],
                 [ 0.0000,  0.0000,  1.0000, -1.2247]]])
        >>> batch["mask"]
        tensor([[0., 0., 1., 1., 1.],
                [0., 0., 1., 1., 0.]])

    Args:
        width: bits per vector (8 in the paper).
        min_length: shortest sequence in training (1 in the paper).
        max_length: longest sequence in training (10 in the paper).
        min_repeats: fewest repeats in training (1 in the paper).
        max_repeats: most repeats in training (10 in the paper).
        repeats_per_batch: draw one repeat count per batch instead of per sequence.
    """

    def __init__(
        self,
        *,
        width: int = 8,
        min_length: int = 1,
        max_length: int = 10,
        min_repeats: int = 1,
        max_repeats: int = 10,
        repeats_per_batch: bool = False,
    ) -> None:
        super().__init__(min_length=min_length, max_length=max_length)
        _check_int("width", width, 1)
        _check_int("min_repeats", min_repeats, 1)
        if not is_integer(max_repeats) or max_repeats < min_repeats:
            raise ValueError(f"max_repeats must be an integer ≥ min_repeats ({min_repeats}), got {max_repeats!r}")
        self.width = width
        self.min_repeats = min_repeats
        self.max_repeats = max_repeats
        self.repeats_per_batch = repeats_per_batch
        self.fixed_repeats: int | None = None  # every sequence's count (``with_repeats``); None: drawn
        # repeats drawn in training; ``memnet.curriculum.RepeatCurriculum`` narrows the top of it,
        # while the count channel stays normalised over the whole [min_repeats, max_repeats]
        self._repeats_range = (min_repeats, max_repeats)
        # mean and standard deviation of a uniform integer on [min_repeats, max_repeats]
        self.repeats_mean = (min_repeats + max_repeats) / 2
        spread = max_repeats - min_repeats + 1
        self.repeats_std = math.sqrt((spread**2 - 1) / 12) if spread > 1 else 1.0

    @property
    def input_size(self) -> int:
        return self.width + 2

    @property
    def output_size(self) -> int:
        return self.width + 1

    @property
    def most_repeats(self) -> int:
        """The most repeats a sequence drawn has: ``fixed_repeats`` where set, else ``max_repeats``."""
        return self.max_repeats if self.fixed_repeats is None else self.fixed_repeats

    def output_length(self, length: int) -> int:
        """Scored steps at the most repeats: L·most_repeats vectors and the end marker."""
        return length * self.most_repeats + 1

    def sequence_length(self, length: int) -> int:
        """T at the most repeats: L inputs, the count step, L·most_repeats outputs, the end marker."""
        return length + 2 + length * self.most_repeats

    def memory_needed(self, length: int) -> int:
        """One slot per vector of the sequence (the repeats are re-read, not re-stored)."""
        return length

    @property
    def repeats_range(self) -> tuple[int, int]:
        """(low, high): the repeat counts drawn in training, inside [min_repeats, max_repeats]."""
        return self._repeats_range

    @repeats_range.setter
    def repeats_range(self, value: tuple[int, int]) -> None:
        self._repeats_range = _subrange("repeats_range", value, ("min_repeats", self.min_repeats),
                                        ("max_repeats", self.max_repeats))

    def for_evaluation(self) -> RepeatCopyTask:
        """This task with a repeat count per sequence over the whole training range of repeats.

        ``repeats_per_batch`` and a curriculum's narrower ``repeats_range`` are for training only.
        """
        if not self.repeats_per_batch and self._repeats_range == (self.min_repeats, self.max_repeats):
            return self
        return RepeatCopyTask(width=self.width, min_length=self.min_length, max_length=self.max_length,
                              min_repeats=self.min_repeats, max_repeats=self.max_repeats)

    def with_repeats(self, repeats: int) -> RepeatCopyTask:
        """This task as ``memnet evaluate --repeats`` scores it: every sequence has exactly ``repeats`` repeats.

        ``repeats`` may lie beyond the training range; the count channel keeps the training
        normalisation over [min_repeats, max_repeats] (a model trained on 1–10 reads 20 repeats as
        (20 − 5.5) / 2.872 = 5.048), and each sequence is T = L + 2 + L·repeats steps, the last
        L·repeats + 1 scored.

            >>> task = RepeatCopyTask(width=2, max_length=10, max_repeats=10).with_repeats(20)
            >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 3, 1)
            >>> batch["inputs"][:, 1, -1], batch["mask"].sum(1), task.sequence_length(1)
            (tensor([5.0483, 5.0483, 5.0483]), tensor([21., 21., 21.]), 23)
        """
        _check_int("repeats", repeats, 1)
        task = RepeatCopyTask(width=self.width, min_length=self.min_length, max_length=self.max_length,
                              min_repeats=self.min_repeats, max_repeats=self.max_repeats)
        task.fixed_repeats = int(repeats)
        return task

    def normalise_repeats(self, repeats: torch.Tensor) -> torch.Tensor:
        """The count channel's value: (r − mean) / std over the training repeats."""
        return (repeats - self.repeats_mean) / self.repeats_std

    def encode(self, bits: torch.Tensor, repeats: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """Encode given sequences: bits (B, L, width), repeats (B,) ints ≥ 1 -> a batch dict.

        T = L + 2 + L·max(repeats).
        """
        batch_size, length, width = bits.shape
        if width != self.width:
            raise ValueError(f"bits must have width {self.width} in the last axis, got {width}")
        if repeats.shape != (batch_size,) or bool((repeats < 1).any()):
            raise ValueError(f"repeats must be {batch_size} integers ≥ 1, got {repeats.tolist()}")
        repeats = repeats.to(bits.device)
        most = int(repeats.max())
        out_steps = length * most + 1  # every repeat of the longest, then its end marker
        steps = length + 1 + out_steps
        inputs = bits.new_zeros(batch_size, steps, width + 2)
        inputs[:, :length, :width] = bits
        inputs[:, length, width] = 1.0  # delimiter
        inputs[:, length, width + 1] = self.normalise_repeats(repeats.to(bits.dtype))

        position = torch.arange(out_steps, device=bits.device)  # p = 0 .. L·max r
        written = repeats[:, None] * length  # vectors each sequence writes
        tiled = bits[:, position[:-1] % length] if length else bits.new_zeros(batch_size, 0, width)
        in_copy = (position[None, :-1] < written).to(bits.dtype)  # (B, L·max r)
        targets = bits.new_zeros(batch_size, steps, width + 1)
        targets[:, length + 1 : steps - 1, :width] = tiled * in_copy[..., None]
        end = (position[None, :] == written).to(bits.dtype)  # (B, L·max r + 1)
        targets[:, length + 1 :, width] = end
        mask = bits.new_zeros(batch_size, steps)
        mask[:, length + 1 :] = (position[None, :] <= written).to(bits.dtype)
        return {"inputs": inputs, "targets": targets, "mask": mask, "length": length}

    def sample_batch(self, generator, batch_size, length, repeats: int | None = None):
        """A batch at ``length``; repeats drawn from the training range unless ``repeats`` (or the task's
        ``fixed_repeats``) is given."""
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length, self.width), generator=generator).float()
        repeats = self.fixed_repeats if repeats is None else repeats
        if repeats is not None:
            _check_int("repeats", repeats, 1)
            counts = torch.full((batch_size,), repeats)
        elif self.repeats_per_batch:
            low, high = self._repeats_range
            counts = torch.randint(low, high + 1, (1,), generator=generator).expand(batch_size)
        else:
            low, high = self._repeats_range
            counts = torch.randint(low, high + 1, (batch_size,), generator=generator)
        return self.encode(bits, counts)
