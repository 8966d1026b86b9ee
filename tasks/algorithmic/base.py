"""What every algorithmic task shares: ``AlgorithmicTask`` (sizes, loss mask, sampling) and argument checks."""

from __future__ import annotations

import torch

from memnet import metrics
from memnet.utils import is_integer


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
        if not is_integer(min_length) or min_length < self.smallest_length:
            raise ValueError(f"min_length must be an integer ≥ {self.smallest_length}, got {min_length!r}")
        if not is_integer(max_length) or max_length < min_length:
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

    def after_cast(self, batch: dict) -> dict:
        """``batch`` once its inputs were cast to a type narrower than float32, made consistent with them.

        Under ``--trainer.precision bf16-true`` (or ``16-true``) Lightning casts a batch's floating
        tensors, and ``memnet evaluate`` casts the inputs to the model's dtype. What a task computed from
        the float32 draws before the cast (priority sort's order, the n-grams' optimal cost) is computed
        again here from what the model is given. Default: the batch unchanged.
        """
        return batch

    def check_length(self, length: int, name: str = "length") -> None:
        """Raise ``ValueError`` naming ``name`` unless ``length`` is one this task can encode."""
        if not is_integer(length) or length < self.smallest_length:
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
    if not is_integer(value) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _subrange(name: str, value: tuple[int, int], lowest: tuple[str, int], highest: tuple[str, int]) -> tuple[int, int]:
    """``value`` as (low, high) ints, checked to lie inside [lowest, highest] (each a (field, bound) pair)."""
    low, high = (int(v) for v in value)
    if not lowest[1] <= low <= high <= highest[1]:
        raise ValueError(
            f"{name} must satisfy {lowest[0]} ({lowest[1]}) ≤ low ≤ high ≤ {highest[0]} ({highest[1]}), "
            f"got {(low, high)}"
        )
    return low, high
