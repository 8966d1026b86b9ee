"""Typed contracts across the memnet / tasks boundary (``typing.Protocol`` and ``TypedDict``).

``SequenceTask``      what a sequence task offers the library and the commands: its sizes,
                      its length range, the memory a length needs and seeded batches whose
                      ``mask`` says which steps the loss scores (``tasks.algorithmic``'s tasks).
``SequenceBatch``     the batch such a task draws.
``EvaluationResult``  the one result schema ``memnet evaluate`` writes (``results.json``) and
                      the suite reads back; ``LengthRow`` is one of its rows.
``read_evaluation``   reads and checks such a file, naming the file and field at fault.
``sequence_batches``  a task's seeded sequences in batches of any size, the same sequences
                      whatever the size (evaluation, validation and test sets); ``batch_rows``,
                      ``join_batches`` and ``split_batches`` cut and join such batches.

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
    known best cost (dynamic n-grams) optimal_bits (B,), float32 at least.

    Lightning's ``bf16-true`` / ``16-true`` plugin casts every floating tensor of a batch to the half
    type; a task's ``after_cast(batch)`` makes the rest of the batch consistent with the cast inputs
    (the n-grams' ``optimal_bits`` computed again from the bits, priority sort's targets sorted again
    by the cast priorities), called by ``tasks.algorithmic.AlgorithmicDataModule.on_before_batch_transfer``
    and by ``memnet evaluate`` for a half-precision model.
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
    repeats: int  # every sequence's repeat count (memnet evaluate --repeats only; else drawn and absent)
    slots: int | None  # memory slots N the model ran with (None: no external memory)
    bits_per_seq: float  # mean bits per sequence (metrics.bits_per_sequence)
    bit_errors_per_seq: float  # mean wrong bits per sequence (metrics.bit_errors_per_sequence)
    sequences: int  # how many sequences were scored
    exact_pct: float  # percent of sequences with no wrong bit
    optimal_bits_per_seq: float  # the Bayes-optimal cost (dynamic n-grams only)
    free_bits_per_seq: float  # a conditional model fed its own previous output (bits_per_seq: fed the target)
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
    repeats: NotRequired[list[int]]  # --repeats, where given: each length's rows are at these repeat counts
    train_repeats: NotRequired[list[int]]  # [min_repeats, max_repeats] of training (with --repeats only)


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


DRAW_BLOCK = 64  # sequences drawn per call of a task's sampler by sequence_batches: the draws never depend on the batch size


def batch_size_of(batch: dict) -> int:
    """The number of sequences in a batch: the first dimension of its mask, else of its first tensor."""
    if "mask" in batch:
        return batch["mask"].shape[0]
    return next(value.shape[0] for value in batch.values() if torch.is_tensor(value) and value.dim())


def batch_rows(batch: dict, start: int, stop: int) -> dict:
    """Sequences ``start:stop`` of a batch (tensors whose first dimension is the batch; the rest as is)."""
    size = batch_size_of(batch)
    return {key: value[start:stop] if torch.is_tensor(value) and value.dim() and value.shape[0] == size else value
            for key, value in batch.items()}


def join_batches(parts: list[dict]) -> dict:
    """Batches as one: per-sequence tensors (B_i, T_i, …) concatenated into (Σ B_i, max T_i, …), the time axis
    (dimension 1 of tensors with two or more) padded with zeros (mask 0); other values from the first batch."""
    if len(parts) == 1:
        return parts[0]
    size = batch_size_of(parts[0])
    joined = dict(parts[0])
    for key, value in parts[0].items():
        if not (torch.is_tensor(value) and value.dim() and value.shape[0] == size):
            continue
        pieces = [part[key] for part in parts]
        if value.dim() >= 2:
            steps = max(piece.shape[1] for piece in pieces)
            pieces = [torch.nn.functional.pad(piece, (0, 0) * (piece.dim() - 2) + (0, steps - piece.shape[1]))
                      for piece in pieces]
        joined[key] = torch.cat(pieces)
    return joined


def split_batches(batches: list[dict], count: int) -> list[dict]:
    """The same sequences, in the same order, in at least ``count`` batches where there are that many sequences:
    the largest batch (the first of the largest) is cut in two until there are. Other lists come back as they are.

    A fixed set shared out batch by batch between ``count`` DDP processes needs a batch for each
    (``tasks.algorithmic.data.fixed_set_loader``): one batch of 32 on two processes is two of 16.
    """
    batches = list(batches)
    while 0 < len(batches) < count:
        sizes = [batch_size_of(batch) for batch in batches]
        largest = sizes.index(max(sizes))
        size = sizes[largest]
        if size < 2:
            break
        batch = batches[largest]
        batches[largest:largest + 1] = [batch_rows(batch, 0, (size + 1) // 2), batch_rows(batch, (size + 1) // 2, size)]
    return batches


def sequence_batches(task: SequenceTask, generator: torch.Generator, length: int, num_sequences: int, batch_size: int):
    """``num_sequences`` sequences at ``length`` in batches of at most ``batch_size``.

    Yields :class:`SequenceBatch` dicts: inputs (B, T, input_size), targets (B, T, output_size),
    mask (B, T), B ≤ ``batch_size`` (the last may be smaller), T the longest of the batch (shorter
    sequences padded with zeros and mask 0, as the task's own batches are).

    The sequences are drawn from ``generator`` in blocks of :data:`DRAW_BLOCK` (a sampler that
    draws several random quantities per batch would otherwise give other sequences for another
    batch size) and cut or joined into the batches, so the scores do not depend on it: ``memnet
    evaluate``'s sequences, and a data module's validation and test sets.
    """
    parts: list[dict] = []
    have = drawn = 0
    while drawn < num_sequences or have:
        while have < batch_size and drawn < num_sequences:
            n = min(DRAW_BLOCK, num_sequences - drawn)
            parts.append(task.sample_batch(generator, n, length))
            have, drawn = have + n, drawn + n
        take, rest, count = [], [], 0
        for part in parts:
            size = batch_size_of(part)
            k = min(size, batch_size - count)
            if k == size:
                take.append(part)
            else:
                if k > 0:
                    take.append(batch_rows(part, 0, k))
                rest.append(batch_rows(part, k, size))
            count += max(k, 0)
        parts, have = rest, have - count
        yield join_batches(take)
