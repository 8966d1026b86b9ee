"""A new task: reverse a sequence of random binary vectors.

A task subclasses ``tasks.algorithmic.AlgorithmicTask``: sizes, layout, how many
memory slots a length needs, and a seeded generator that returns the batch dict
(``inputs``, ``targets``, ``mask``, ``length``). Loss and scores come with the base
class and read the mask, so only the answer is scored.
"""

from __future__ import annotations

import torch

from tasks.algorithmic import AlgorithmicTask


class ReverseTask(AlgorithmicTask):
    """Reverse: read vectors x1 … xL, a delimiter, then write xL … x1.

    Worked example (width 2, length 2)::

        >>> task = ReverseTask(width=2, min_length=1, max_length=5)
        >>> batch = task.encode(torch.tensor([[[1., 0.], [0., 1.]]]))
        >>> batch["inputs"][0]          # x1, x2, delimiter, blank, blank
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.],
                [0., 0., 0.],
                [0., 0., 0.]])
        >>> batch["targets"][0, 3:]     # x2, x1
        tensor([[0., 1.],
                [1., 0.]])
        >>> batch["mask"][0]
        tensor([0., 0., 0., 1., 1.])

    Args:
        width: bits per vector.
        min_length: shortest sequence in training.
        max_length: longest sequence in training.
    """

    def __init__(self, *, width: int = 8, min_length: int = 1, max_length: int = 20) -> None:
        super().__init__(min_length=min_length, max_length=max_length)
        self.width = width

    @property
    def input_size(self) -> int:
        return self.width + 1  # the data channels and the delimiter

    @property
    def output_size(self) -> int:
        return self.width

    def output_length(self, length: int) -> int:
        return length

    def sequence_length(self, length: int) -> int:
        return 2 * length + 1

    def encode(self, bits: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """bits (B, L, width) -> the batch dict, T = 2L + 1."""
        batch, length, width = bits.shape
        inputs = bits.new_zeros(batch, 2 * length + 1, width + 1)
        inputs[:, :length, :width] = bits
        inputs[:, length, width] = 1.0
        targets = bits.new_zeros(batch, 2 * length + 1, width)
        targets[:, length + 1:] = bits.flip(1)
        mask = bits.new_zeros(batch, 2 * length + 1)
        mask[:, length + 1:] = 1.0
        return {"inputs": inputs, "targets": targets, "mask": mask, "length": length}

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int):
        """``batch_size`` sequences of ``length`` random vectors, drawn with ``generator``."""
        self.check_length(length)
        return self.encode(torch.randint(0, 2, (batch_size, length, self.width), generator=generator).float())
