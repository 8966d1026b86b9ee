"""The algorithmic tasks of the NTM paper (Graves et al. 2014, §4), as LightningDataModules.

Five tasks, each following the paper's set-up:

    CopyTask               copy a sequence of 8-bit vectors (lengths 1–20)
    RepeatCopyTask         copy it a given number of times, then an end marker (lengths 1–10, repeats 1–10)
    AssociativeRecallTask  items of three 6-bit vectors; given one, recall the next (2–6 items)
    DynamicNGramsTask      predict the next bit of a 6-gram sequence; the exact Bayes-optimal cost comes along
    PrioritySortTask       20 vectors with priorities in [−1, 1]; output the 16 highest, sorted

A task knows how to encode one example and how to sample a batch of them; the
``AlgorithmicDataModule`` turns any task into seeded train / validation / test
streams. Every batch is a dict:

    inputs   (B, T, input_size)    float, the sequence the model reads
    targets  (B, T, output_size)   float in {0, 1}, what it must write
    mask     (B, T)                1 on the steps whose output is scored, else 0
    length   int                   the task length this batch was drawn at

and, for dynamic n-grams, ``optimal_bits`` (B,), the Bayes-optimal cost of each
sequence in bits. All sequences of a batch share one length (drawn per batch),
so a batch costs exactly its length; only repeat copy, whose repeat count is
drawn per sequence, pads the shorter outputs (mask 0 after the end marker).

Every generator is vectorised over the batch and draws all its randomness from
the ``torch.Generator`` it is given: the same generator state gives the same batch.

Axes:  b - batch, t - time, d - features, i - items, k - steps of an item, c - contexts
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch.utils.data import DataLoader, IterableDataset

from memnet import metrics
from memnet.utils import distributed_position, distributed_sampler


class AlgorithmicTask:
    """Interface of an algorithmic task (after the Chomsky-hierarchy benchmark's).

    A subclass defines the sizes (``input_size``, ``output_size``), the layout
    (``output_length``, ``sequence_length``), the generator (``sample_batch``)
    and how many memory slots a length needs (``memory_needed``). The scoring
    methods (``loss``, ``bits_per_sequence``, ``bit_errors``, ``accuracy``) read
    the batch's own mask, so each task is scored on its output phase only.

    Args:
        min_length: shortest task length drawn in training.
        max_length: longest task length drawn in training.
    """

    #: the shortest length the task can encode at all (e.g. 2 items for associative recall)
    smallest_length: int = 1

    def __init__(self, *, min_length: int, max_length: int) -> None:
        if not isinstance(min_length, int) or min_length < self.smallest_length:
            raise ValueError(f"min_length must be an integer ≥ {self.smallest_length}, got {min_length!r}")
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

    def memory_needed(self, length: int) -> int:
        """Memory slots a model needs to hold an example of ``length`` (one slot per stored vector)."""
        return length

    def for_evaluation(self) -> AlgorithmicTask:
        """The task as validation, test and ``memnet evaluate`` score it (itself, unless a
        training-only shortcut must be undone, as repeat copy's ``repeats_per_batch``)."""
        return self

    def check_length(self, length: int, name: str = "length") -> None:
        """Raise ``ValueError`` naming ``name`` unless ``length`` is one this task can encode."""
        if not isinstance(length, int) or isinstance(length, bool) or length < self.smallest_length:
            raise ValueError(
                f"{name} must be an integer ≥ {self.smallest_length} for {type(self).__name__}, got {length!r}"
            )

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

    # ---- scoring: every method reads the batch's mask, so only the output phase counts ----

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Masked binary cross-entropy, mean nats per scored bit. logits (B, T, output_size) -> ()."""
        return metrics.binary_loss(logits, batch["targets"], batch["mask"])

    def bits_per_sequence(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The paper's cost: cross-entropy summed over a sequence's scored bits, in bits. -> (B,)."""
        return metrics.bits_per_sequence(logits, batch["targets"], batch["mask"])

    def bit_errors(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Wrong bits (output thresholded at probability ½) per sequence. -> (B,)."""
        return metrics.bit_errors_per_sequence(logits, batch["targets"], batch["mask"])

    def accuracy(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Fraction of scored output steps whose every bit is right. -> (B,)."""
        return metrics.step_accuracy(logits, batch["targets"], batch["mask"])


def _check_int(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")


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

    def memory_needed(self, length: int) -> int:
        """One slot per vector of the sequence."""
        return length

    def sample_batch(self, generator, batch_size, length):
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length, self.width), generator=generator)
        return self.encode(bits.float())


def _subrange(name: str, value: tuple[int, int], lowest: tuple[str, int], highest: tuple[str, int]) -> tuple[int, int]:
    """``value`` as (low, high) ints, checked to lie inside [lowest, highest] (each a (field, bound) pair)."""
    low, high = (int(v) for v in value)
    if not lowest[1] <= low <= high <= highest[1]:
        raise ValueError(
            f"{name} must satisfy {lowest[0]} ({lowest[1]}) ≤ low ≤ high ≤ {highest[0]} ({highest[1]}), "
            f"got {(low, high)}"
        )
    return low, high


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
        if not isinstance(max_repeats, int) or max_repeats < min_repeats:
            raise ValueError(f"max_repeats must be an integer ≥ min_repeats ({min_repeats}), got {max_repeats!r}")
        self.width = width
        self.min_repeats = min_repeats
        self.max_repeats = max_repeats
        self.repeats_per_batch = repeats_per_batch
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

    def output_length(self, length: int) -> int:
        """Scored steps at the most repeats: L·max_repeats vectors and the end marker."""
        return length * self.max_repeats + 1

    def sequence_length(self, length: int) -> int:
        """T at the most repeats: L inputs, the count step, L·max_repeats outputs, the end marker."""
        return length + 2 + length * self.max_repeats

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
        """A batch at ``length``; repeats drawn from the training range unless ``repeats`` is given."""
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length, self.width), generator=generator).float()
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


class AssociativeRecallTask(AlgorithmicTask):
    """Associative recall: read a list of items, then a query item; write the item that followed it.

    NTM paper §4.3. An item is ``item_length`` (3) vectors of ``width`` (6) random
    bits. Each item is preceded by an item delimiter; after the last item a
    query delimiter, the query (a copy of one of the items but the last), and
    the query delimiter again; then the model writes the item that followed the
    query in the list. The task length is the number of items (2–6 in the
    paper). Input channels: ``width`` data, item delimiter, query delimiter.

    Worked example (width 2, items of 1 vector, 3 items, query the second)::

        >>> task = AssociativeRecallTask(width=2, item_length=1, min_length=2, max_length=6)
        >>> items = torch.tensor([[[[1., 0.]], [[0., 1.]], [[1., 1.]]]])   # (B, items, item_length, width)
        >>> example = task.encode(items, torch.tensor([1]))
        >>> example["inputs"][0]        # d a d b d c | q b q | blank
        tensor([[0., 0., 1., 0.],
                [1., 0., 0., 0.],
                [0., 0., 1., 0.],
                [0., 1., 0., 0.],
                [0., 0., 1., 0.],
                [1., 1., 0., 0.],
                [0., 0., 0., 1.],
                [0., 1., 0., 0.],
                [0., 0., 0., 1.],
                [0., 0., 0., 0.]])
        >>> example["targets"][0, -1], example["mask"][0]   # the item after b is c
        (tensor([1., 1.]), tensor([0., 0., 0., 0., 0., 0., 0., 0., 0., 1.]))

    Sampled with a seeded generator (default sizes, 2 items; the answer is the
    second item, since only the first has a successor)::

        >>> task = AssociativeRecallTask()
        >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 1, 2)
        >>> batch["targets"][0, -3:]
        tensor([[0., 1., 0., 1., 1., 0.],
                [0., 1., 1., 1., 1., 0.],
                [1., 0., 1., 0., 1., 1.]])

    Args:
        width: bits per vector (6 in the paper).
        item_length: vectors per item (3 in the paper).
        min_length: fewest items in training (2 in the paper; at least 2).
        max_length: most items in training (6 in the paper).
    """

    smallest_length = 2

    def __init__(self, *, width: int = 6, item_length: int = 3, min_length: int = 2, max_length: int = 6) -> None:
        super().__init__(min_length=min_length, max_length=max_length)
        _check_int("width", width, 1)
        _check_int("item_length", item_length, 1)
        self.width = width
        self.item_length = item_length

    @property
    def input_size(self) -> int:
        return self.width + 2

    @property
    def output_size(self) -> int:
        return self.width

    def output_length(self, length: int) -> int:
        return self.item_length

    def sequence_length(self, length: int) -> int:
        """items·(item_length + 1), then query delimiter, query, query delimiter, answer."""
        return length * (self.item_length + 1) + 2 * self.item_length + 2

    def memory_needed(self, length: int) -> int:
        """One slot per vector of every item."""
        return length * self.item_length

    def encode(self, items: torch.Tensor, query: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """Encode given items (B, items, item_length, width) and query indices (B,) in [0, items − 2]."""
        batch_size, num_items, item_length, width = items.shape
        if (width, item_length) != (self.width, self.item_length):
            raise ValueError(
                f"items must have shape (B, items, {self.item_length}, {self.width}), got {tuple(items.shape)}"
            )
        self.check_length(num_items, "items.shape[1]")
        if query.shape != (batch_size,) or bool(((query < 0) | (query > num_items - 2)).any()):
            raise ValueError(f"query must be {batch_size} indices in [0, {num_items - 2}], got {query.tolist()}")
        rows = torch.arange(batch_size, device=items.device)
        query = query.to(items.device)
        listed = items.new_zeros(batch_size, num_items, item_length + 1, width + 2)
        listed[:, :, 0, width] = 1.0  # item delimiter before every item
        listed[:, :, 1:, :width] = items
        asked = items.new_zeros(batch_size, item_length + 2, width + 2)
        asked[:, 0, width + 1] = asked[:, -1, width + 1] = 1.0  # query delimiters
        asked[:, 1:-1, :width] = items[rows, query]
        answer_phase = items.new_zeros(batch_size, item_length, width + 2)
        inputs = torch.cat([rearrange(listed, "b i k d -> b (i k) d"), asked, answer_phase], dim=1)
        steps = inputs.shape[1]
        targets = items.new_zeros(batch_size, steps, width)
        targets[:, steps - item_length :] = items[rows, query + 1]
        mask = items.new_zeros(batch_size, steps)
        mask[:, steps - item_length :] = 1.0
        return {"inputs": inputs, "targets": targets, "mask": mask, "length": num_items}

    def sample_batch(self, generator, batch_size, length):
        self.check_length(length)
        items = torch.randint(0, 2, (batch_size, length, self.item_length, self.width), generator=generator)
        query = torch.randint(0, length - 1, (batch_size,), generator=generator)
        return self.encode(items.float(), query)


class DynamicNGramsTask(AlgorithmicTask):
    """Dynamic n-grams: predict each next bit of a sequence drawn from a freshly sampled n-gram model.

    NTM paper §4.4. For every sequence a table gives, for each of the 2^(n−1)
    contexts (the previous n − 1 bits), the probability that the next bit is 1;
    each entry is drawn independently from Beta(½, ½). The first n − 1 bits are
    fair coins, every later bit is drawn from the table. The model reads one
    bit per step and predicts the next; the predictions of the table-drawn bits
    are scored (the task length L is the number of bits, 200 in the paper).

    The Bayes-optimal predictor knows the prior but not the table: after seeing
    a context N0 times followed by 0 and N1 times followed by 1, it predicts
    P(1) = (N1 + ½) / (N0 + N1 + 1) (the paper's equation). Each batch carries
    its cost, ``optimal_bits`` (B,), so a model's bits per sequence can be
    compared with the best any model can reach.

    A context is read as a binary number with the most recent bit lowest:
    c_t = Σ_k b_{t−k} 2^k for k = 0 … n − 2.

    Worked example (order 3, so 4 contexts; bits 0 1 1 0 1 1)::

        >>> task = DynamicNGramsTask(order=3, min_length=6, max_length=6)
        >>> example = task.encode(torch.tensor([[0., 1., 1., 0., 1., 1.]]))
        >>> example["inputs"][0, :, 0], example["targets"][0, :, 0]      # read b_t, predict b_{t+1}
        (tensor([0., 1., 1., 0., 1.]), tensor([1., 1., 0., 1., 1.]))
        >>> example["mask"][0]                  # the first n − 1 = 2 bits are coins: not scored
        tensor([0., 1., 1., 1., 1.])
        >>> task.optimal_probabilities(example["inputs"][..., 0], example["targets"][..., 0])[0]
        tensor([0.5000, 0.5000, 0.5000, 0.5000, 0.7500])

    The last prediction follows the context b3 b4 = 0 1 (c = 1), seen once
    before (after b0 b1), and followed then by a 1: (1 + ½) / (1 + 1) = 0.75.

    Sampled with a seeded generator (order 6, 12 bits)::

        >>> task = DynamicNGramsTask(min_length=12, max_length=12)
        >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 2, 12)
        >>> batch["inputs"][..., 0]
        tensor([[0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0.],
                [1., 0., 0., 1., 0., 0., 1., 0., 0., 1., 0.]])
        >>> batch["optimal_bits"]
        tensor([5.8301, 6.8301])

    Args:
        order: n, the n-gram order (6 in the paper).
        min_length: fewest bits per sequence in training (200 in the paper; at least n).
        max_length: most bits per sequence in training (200 in the paper).
    """

    #: prior pseudo-count of Beta(½, ½): the estimator adds it to each count
    PRIOR = 0.5

    def __init__(self, *, order: int = 6, min_length: int = 200, max_length: int = 200) -> None:
        _check_int("order", order, 2)
        self.order = order
        self.smallest_length = order  # n − 1 coins and at least one scored bit
        super().__init__(min_length=min_length, max_length=max_length)

    @property
    def num_contexts(self) -> int:
        return 2 ** (self.order - 1)

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return 1

    def output_length(self, length: int) -> int:
        return length - self.order + 1

    def sequence_length(self, length: int) -> int:
        return length - 1

    def memory_needed(self, length: int) -> int:
        """One slot per context (for its two counts), whatever the length."""
        return self.num_contexts

    def sample_tables(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """(B, 2^(n−1)) probabilities of a 1 after each context, each Beta(½, ½).

        Beta(½, ½) is the arcsine law, sampled exactly as sin²(πU/2) for U uniform on [0, 1].
        """
        uniform = torch.rand(batch_size, self.num_contexts, generator=generator)
        return torch.sin(0.5 * math.pi * uniform) ** 2

    def generate(self, tables: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
        """Draw bits (B, L) from the tables (B, 2^(n−1)): n − 1 coins, then the table's bits.

        The loop runs over time only (each bit depends on the last n − 1); the batch is one tensor op.
        """
        batch_size, num_contexts = tables.shape
        uniform = torch.rand(length, batch_size, generator=generator)  # time first: each step reads a row
        bits = torch.empty(length, batch_size, dtype=torch.long)
        coins = min(self.order - 1, length)
        bits[:coins] = (uniform[:coins] < 0.5).long()
        context = torch.zeros(batch_size, dtype=torch.long)
        for t in range(coins):
            context = ((context << 1) | bits[t]) & (num_contexts - 1)
        flat = tables.reshape(-1)
        offsets = torch.arange(batch_size) * num_contexts  # row b of the table starts at b·C
        for t in range(coins, length):
            torch.lt(uniform[t], flat[offsets + context], out=bits[t])  # a 1 with the context's probability
            context = ((context << 1) | bits[t]) & (num_contexts - 1)
        return rearrange(bits, "t b -> b t").float()

    def contexts(self, inputs: torch.Tensor) -> torch.Tensor:
        """Context index at each step: inputs (B, T) bits -> (B, T) ints, −1 before n − 2 bits were read."""
        batch_size, steps = inputs.shape
        window = self.order - 1
        out = torch.full((batch_size, steps), -1, dtype=torch.long, device=inputs.device)
        if steps >= window:
            powers = 2 ** torch.arange(window - 1, -1, -1, device=inputs.device)  # oldest bit highest
            windows = inputs.long().unfold(1, window, 1)  # (B, T − n + 2, n − 1): b_s … b_{s+n−2}
            out[:, window - 1 :] = (windows * powers).sum(-1)
        return out

    def optimal_probabilities(
        self, inputs: torch.Tensor, targets: torch.Tensor, contexts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The Bayes-optimal P(next bit = 1) at each step, (B, T), from the bits read so far.

        ``inputs`` (B, T) are the bits read, ``targets`` (B, T) the bits that followed.
        At a scored step t with context c: (N1 + ½) / (N0 + N1 + 1), where N0, N1 count the
        earlier scored steps with context c followed by 0 and by 1. Unscored steps get ½.
        Vectorised: a one-hot of the contexts, an exclusive cumulative sum over time.
        ``contexts`` (B, T), if given, saves recomputing ``self.contexts(inputs)``.
        """
        contexts = self.contexts(inputs) if contexts is None else contexts
        scored = contexts >= 0
        onehot = F.one_hot(contexts.clamp_min(0), self.num_contexts).to(inputs.dtype)
        onehot *= scored[..., None].to(inputs.dtype)  # (B, T, C)
        seen = onehot.cumsum(1) - onehot  # contexts seen strictly before t
        ones = onehot * targets[..., None]
        seen_ones = ones.cumsum(1) - ones
        index = contexts.clamp_min(0)[..., None]
        n_all = seen.gather(2, index)[..., 0]
        n_one = seen_ones.gather(2, index)[..., 0]
        chance = (n_one + self.PRIOR) / (n_all + 2 * self.PRIOR)
        return torch.where(scored, chance, torch.full_like(chance, 0.5))

    def optimal_bits(
        self, inputs: torch.Tensor, targets: torch.Tensor, contexts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bayes-optimal cost of each sequence in bits: −Σ log2 p(actual next bit) over scored steps. -> (B,)."""
        contexts = self.contexts(inputs) if contexts is None else contexts
        chance = self.optimal_probabilities(inputs, targets, contexts)
        scored = contexts >= 0
        likelihood = torch.where(targets > 0.5, chance, 1 - chance)
        return -(torch.log2(likelihood) * scored).sum(1)

    def encode(self, bits: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """Encode given bit sequences (B, L) -> a batch dict with T = L − 1 and ``optimal_bits`` (B,)."""
        length = bits.shape[1]
        self.check_length(length, "bits.shape[1]")
        inputs, targets = bits[:, :-1], bits[:, 1:]
        contexts = self.contexts(inputs)
        mask = (contexts >= 0).to(bits.dtype)
        return {
            "inputs": rearrange(inputs, "b t -> b t 1"),
            "targets": rearrange(targets, "b t -> b t 1"),
            "mask": mask,
            "length": length,
            "optimal_bits": self.optimal_bits(inputs, targets, contexts),
        }

    def sample_batch(self, generator, batch_size, length):
        self.check_length(length)
        tables = self.sample_tables(generator, batch_size)
        return self.encode(self.generate(tables, length, generator))


class PrioritySortTask(AlgorithmicTask):
    """Priority sort: read vectors with scalar priorities, write the highest-priority ones in order.

    NTM paper §4.5. Each of ``length`` (20) random binary vectors comes with a
    priority drawn uniformly from [−1, 1] on its own channel; after a delimiter
    the model writes the ``num_outputs`` (16) vectors of highest priority, the
    highest first. Input channels: ``width`` data, priority, delimiter.

    Worked example (width 2, 3 inputs, 2 outputs)::

        >>> task = PrioritySortTask(width=2, num_outputs=2, min_length=3, max_length=3)
        >>> bits = torch.tensor([[[1., 0.], [0., 1.], [1., 1.]]])
        >>> example = task.encode(bits, torch.tensor([[-0.5, 0.75, 0.25]]))
        >>> example["inputs"][0]        # x1 x2 x3 with priorities, delimiter, blanks
        tensor([[ 1.0000,  0.0000, -0.5000,  0.0000],
                [ 0.0000,  1.0000,  0.7500,  0.0000],
                [ 1.0000,  1.0000,  0.2500,  0.0000],
                [ 0.0000,  0.0000,  0.0000,  1.0000],
                [ 0.0000,  0.0000,  0.0000,  0.0000],
                [ 0.0000,  0.0000,  0.0000,  0.0000]])
        >>> example["targets"][0, 4:]   # x2 (0.75), then x3 (0.25); x1 is dropped
        tensor([[0., 1.],
                [1., 1.]])
        >>> example["mask"][0]
        tensor([0., 0., 0., 0., 1., 1.])

    Sampled with a seeded generator::

        >>> batch = task.sample_batch(torch.Generator().manual_seed(0), 1, 3)
        >>> batch["inputs"][0, :3]
        tensor([[ 0.0000,  1.0000, -0.0198,  0.0000],
                [ 1.0000,  0.0000,  0.7929,  0.0000],
                [ 1.0000,  1.0000, -0.0887,  0.0000]])
        >>> batch["targets"][0, 4:]
        tensor([[1., 0.],
                [0., 1.]])

    Args:
        width: bits per vector (8 in the paper).
        num_outputs: vectors written (16 in the paper); at most ``min_length``.
        min_length: fewest input vectors in training (20 in the paper).
        max_length: most input vectors in training (20 in the paper).
    """

    def __init__(self, *, width: int = 8, num_outputs: int = 16, min_length: int = 20, max_length: int = 20) -> None:
        _check_int("width", width, 1)
        _check_int("num_outputs", num_outputs, 1)
        if isinstance(min_length, int) and num_outputs > min_length:
            raise ValueError(
                f"num_outputs must be ≤ min_length ({min_length}): a sequence of min_length inputs "
                f"cannot give {num_outputs} sorted outputs"
            )
        self.width = width
        self.num_outputs = num_outputs
        self.smallest_length = num_outputs
        super().__init__(min_length=min_length, max_length=max_length)

    def check_length(self, length: int, name: str = "length") -> None:
        if isinstance(length, int) and 1 <= length < self.num_outputs:
            raise ValueError(
                f"{name} must be ≥ num_outputs ({self.num_outputs}) for PrioritySortTask: "
                f"{length} inputs cannot give {self.num_outputs} sorted outputs"
            )
        super().check_length(length, name)

    @property
    def input_size(self) -> int:
        return self.width + 2

    @property
    def output_size(self) -> int:
        return self.width

    def output_length(self, length: int) -> int:
        return self.num_outputs

    def sequence_length(self, length: int) -> int:
        return length + 1 + self.num_outputs

    def memory_needed(self, length: int) -> int:
        """One slot per input vector."""
        return length

    def encode(self, bits: torch.Tensor, priorities: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """Encode given vectors (B, L, width) with priorities (B, L) -> a batch dict (T = L + 1 + num_outputs)."""
        batch_size, length, width = bits.shape
        if width != self.width:
            raise ValueError(f"bits must have width {self.width} in the last axis, got {width}")
        if priorities.shape != (batch_size, length):
            raise ValueError(f"priorities must have shape {(batch_size, length)}, got {tuple(priorities.shape)}")
        self.check_length(length, "bits.shape[1]")
        steps = self.sequence_length(length)
        inputs = bits.new_zeros(batch_size, steps, width + 2)
        inputs[:, :length, :width] = bits
        inputs[:, :length, width] = priorities
        inputs[:, length, width + 1] = 1.0  # delimiter
        order = priorities.argsort(dim=1, descending=True)[:, : self.num_outputs]  # (B, num_outputs)
        targets = bits.new_zeros(batch_size, steps, width)
        targets[:, length + 1 :] = bits.gather(1, repeat(order, "b k -> b k d", d=width))
        mask = bits.new_zeros(batch_size, steps)
        mask[:, length + 1 :] = 1.0
        return {"inputs": inputs, "targets": targets, "mask": mask, "length": length}

    def sample_batch(self, generator, batch_size, length):
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length, self.width), generator=generator).float()
        priorities = torch.rand(batch_size, length, generator=generator) * 2 - 1
        return self.encode(bits, priorities)


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
        for name, value in {"batch_size": batch_size, "batches_per_epoch": batches_per_epoch,
                            "val_size": val_size, "test_size": test_size}.items():
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
        """``size`` examples at each length, in batches of at most ``batch_size``."""
        generator = torch.Generator().manual_seed(seed)
        task = self.task.for_evaluation() if hasattr(self.task, "for_evaluation") else self.task
        batches = []
        for length in lengths:
            remaining = size
            while remaining > 0:
                n = min(self.batch_size, remaining)
                batches.append(task.sample_batch(generator, n, length))
                remaining -= n
        return batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_TrainStream(self), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        batches = self.fixed_batches(self.val_lengths, self.val_size, _mix(self.seed, -1))
        return DataLoader(batches, batch_size=None, sampler=distributed_sampler(batches, self.trainer,
                                                                                 shuffle=False, seed=self.seed))

    def test_dataloader(self) -> DataLoader:
        batches = self.fixed_batches(self.test_lengths, self.test_size, _mix(self.seed, -2))
        return DataLoader(batches, batch_size=None, sampler=distributed_sampler(batches, self.trainer,
                                                                                 shuffle=False, seed=self.seed))

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "length_range": list(self.length_range), "length_mix": self.length_mix}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch = int(state_dict["epoch"])
        self.length_range = tuple(state_dict.get("length_range", self.length_range))
        self.length_mix = float(state_dict.get("length_mix", self.length_mix))


def train_stream_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the training batches of ``epoch`` on process ``rank`` (DDP), from the data module's ``seed``.

    Rank 0 draws what a single-process run draws (so one device and the first of
    several see the same data); every other rank has its own stream.
    """
    base = _mix(seed, epoch)
    return base if rank == 0 else _mix(base, rank)


def _mix(seed: int, stream: int) -> int:
    """A 63-bit seed for stream ``stream`` of base seed ``seed`` (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63
