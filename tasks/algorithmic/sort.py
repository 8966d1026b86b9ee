"""Priority sort (Graves et al. 2014, §4.5)."""

from __future__ import annotations

import torch
from einops import repeat

from tasks.algorithmic.base import AlgorithmicTask, _check_int


class PrioritySortTask(AlgorithmicTask):
    """Priority sort: read vectors with scalar priorities, write the highest-priority ones in order.

    NTM paper §4.5. Each of ``length`` (20) random binary vectors comes with a
    priority drawn uniformly from [−1, 1] on its own channel; after a delimiter
    the model writes the ``num_outputs`` (16) vectors of highest priority, the
    highest first (of equal priorities, the earlier input first). Input channels:
    ``width`` data, priority, delimiter.

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
        # stable: of equal priorities (float32 draws tie in about 1e-5 of the sequences) the earlier input comes
        # first, the same target on every device, where an unstable sort's order of ties is the backend's
        order = priorities.argsort(dim=1, descending=True, stable=True)[:, : self.num_outputs]  # (B, num_outputs)
        targets = bits.new_zeros(batch_size, steps, width)
        targets[:, length + 1 :] = bits.gather(1, repeat(order, "b k -> b k d", d=width))
        mask = bits.new_zeros(batch_size, steps)
        mask[:, length + 1 :] = 1.0
        return {"inputs": inputs, "targets": targets, "mask": mask, "length": length}

    def after_cast(self, batch: dict) -> dict:
        """The batch with its targets sorted again by the priorities as cast.

        bfloat16 keeps 8 bits of a priority: at the paper's sizes about one sequence in five then
        has tied priorities, and in about one in eleven the float32 order is not the stable order of
        the priorities the model reads, a target no model could learn. Of equal cast priorities the
        earlier input comes first, as in ``encode``.
        """
        inputs = batch["inputs"]
        length = inputs.shape[1] - 1 - self.num_outputs
        priorities = inputs[:, :length, self.width].float()
        order = priorities.argsort(dim=1, descending=True, stable=True)[:, : self.num_outputs]
        targets = batch["targets"].clone()
        bits = inputs[:, :length, : self.width].to(targets.dtype)  # 0/1: exact in any float type
        targets[:, length + 1 :] = bits.gather(1, repeat(order, "b k -> b k d", d=self.width))
        return {**batch, "targets": targets}

    def sample_batch(self, generator, batch_size, length):
        self.check_length(length)
        bits = torch.randint(0, 2, (batch_size, length, self.width), generator=generator).float()
        priorities = torch.rand(batch_size, length, generator=generator) * 2 - 1
        return self.encode(bits, priorities)
