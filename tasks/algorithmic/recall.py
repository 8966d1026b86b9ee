"""Associative recall (Graves et al. 2014, §4.3)."""

from __future__ import annotations

import torch
from einops import rearrange

from tasks.algorithmic.base import AlgorithmicTask, _check_int


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
