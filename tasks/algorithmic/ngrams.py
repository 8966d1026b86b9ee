"""Dynamic n-grams with the exact Bayes-optimal cost (Graves et al. 2014, §4.4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from tasks.algorithmic.base import AlgorithmicTask, _check_int


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
        """Context index at each step: inputs (B, T) bits -> (B, T) ints, −1 until n − 1 bits were read."""
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

    def batch_optimal_bits(self, batch: dict) -> torch.Tensor:
        """``optimal_bits`` (B,) of a batch of this task computed again from its bits, in float32.

        The bits are exact in any float type, so a batch whose floating tensors were all cast to
        bfloat16 (``--trainer.precision bf16-true``), ``optimal_bits`` among them (about 126 bits per
        sequence at length 200, where bfloat16's step is 0.5), gets back the cost it had before the cast
        (``AlgorithmicDataModule.on_before_batch_transfer``).
        """
        return self.optimal_bits(batch["inputs"][..., 0].float(), batch["targets"][..., 0].float())

    def after_cast(self, batch: dict) -> dict:
        """The batch with ``optimal_bits`` computed again in float32 (``batch_optimal_bits``)."""
        return {**batch, "optimal_bits": self.batch_optimal_bits(batch)} if "optimal_bits" in batch else batch

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
