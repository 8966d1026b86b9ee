"""Typed contracts across the memnet / tasks boundary (``typing.Protocol`` and ``TypedDict``).

``SequenceTask``      what a sequence task offers the library and the commands: its sizes,
                      its length range, the memory a length needs and seeded batches whose
                      ``mask`` says which steps the loss scores (``tasks.algorithmic``'s tasks).
``SequenceBatch``     the batch such a task draws.
``EvaluationResult``  the one result schema ``memnet evaluate`` writes (``results.json``) and
                      the suite reads back; ``LengthRow`` is one of its rows.
``read_evaluation``   reads and checks such a file, naming the file and field at fault.

Shapes: B batch, T time, D features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable

import torch

EVALUATION_FILE = "results.json"  # what `memnet evaluate --out DIR` writes into DIR


class SequenceBatch(TypedDict, total=False):
    """A batch of a binary sequence task; all sequences share one task length.

    inputs (B, T, input_size) float, targets (B, T, output_size) in {0, 1},
    mask (B, T) 1 on the scored steps, length the task length, and for tasks with a
    known best cost (dynamic n-grams) optimal_bits (B,).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    length: int
    optimal_bits: torch.Tensor


@runtime_checkable
class SequenceTask(Protocol):
    """What a sequence task offers: sizes, length range, memory needed and seeded batches.

    ``tasks.algorithmic.AlgorithmicTask`` and its subclasses satisfy it.
    """

    min_length: int  # shortest task length drawn in training
    max_length: int  # longest task length drawn in training

    @property
    def input_size(self) -> int:
        """D of the inputs (B, T, D)."""
        ...

    @property
    def output_size(self) -> int:
        """D of the targets and the model's logits (B, T, D)."""
        ...

    def memory_needed(self, length: int) -> int:
        """Memory slots N a model needs to hold an example of ``length``."""
        ...

    def check_length(self, length: int, name: str = "length") -> None:
        """Raise ``ValueError`` naming ``name`` unless the task can encode ``length``."""
        ...

    def for_evaluation(self) -> SequenceTask:
        """The task as validation and evaluation score it (training-only shortcuts undone)."""
        ...

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> SequenceBatch:
        """``batch_size`` examples of task length ``length`` drawn with ``generator``; the batch's
        ``mask`` (B, T) marks the steps the loss scores."""
        ...


class LengthRow(TypedDict, total=False):
    """One length of ``memnet evaluate``: the scores of ``sequences`` fresh sequences."""

    length: int  # the task length
    slots: int | None  # memory slots N the model ran with (None: no external memory)
    bits_per_seq: float  # mean bits per sequence (metrics.bits_per_sequence)
    bit_errors_per_seq: float  # mean wrong bits per sequence (metrics.bit_errors_per_sequence)
    sequences: int  # how many sequences were scored
    exact_pct: float  # percent of sequences with no wrong bit
    optimal_bits_per_seq: float  # the Bayes-optimal cost (dynamic n-grams only)
    nonfinite_sequences: int  # sequences whose outputs were NaN or infinite on a scored step (only when > 0)


class EvaluationResult(TypedDict):
    """``results.json`` of ``memnet evaluate``: one checkpoint at several lengths."""

    checkpoint: str
    config: list[str]
    task: str  # the task's class name
    model: str  # the network's class name
    engine: NotRequired[str | None]  # the network's execution path in the evaluation (None: it has none)
    train_range: list[int | None]  # [min_length, max_length] of training
    trained_memory_size: int | None
    seed: int
    wall_s: float
    figures: dict[str, str | None]
    lengths: list[LengthRow]


REQUIRED_ROW_KEYS = ("length", "bits_per_seq", "bit_errors_per_seq", "sequences")


class ResultSchemaError(ValueError):
    """A results file that does not follow :class:`EvaluationResult`."""


def read_evaluation(path: str | Path) -> EvaluationResult:
    """Read ``results.json`` of ``memnet evaluate``, checking the fields the readers rely on."""
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultSchemaError(f"{path} line {error.lineno} is not JSON: {error.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("lengths"), list):
        raise ResultSchemaError(f"{path}: expected an object with a 'lengths' list (memnet evaluate's results)")
    for index, row in enumerate(data["lengths"]):
        missing = [key for key in REQUIRED_ROW_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise ResultSchemaError(f"{path}: lengths[{index}] lacks {', '.join(missing)}")
    train_range = data.get("train_range")
    if train_range is not None and (not isinstance(train_range, list) or len(train_range) != 2):
        raise ResultSchemaError(f"{path}: train_range must be [min_length, max_length], got {train_range!r}")
    return data
