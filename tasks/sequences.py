"""Sequence tasks for the recurrent family: seq2seq token tasks, a conditional-output task,
and the reservoir benchmark series.

* ``ReverseTask`` and ``Seq2SeqCopyTask`` are token tasks for encoder–decoder
  models. They follow the ``AlgorithmicTask`` interface, so
  ``tasks.algorithmic.AlgorithmicDataModule`` turns them into seeded streams.
  A batch is a dict:

      source   (B, S) long     symbols, all in [FIRST_SYMBOL, vocab_size)
      target   (B, T) long     the answer, ending with EOS
      length   int             S, the task length this batch was drawn at

  The vocabulary holds ``num_symbols`` symbols after three special tokens,
  PAD = 0, BOS = 1 (the decoder's first input), EOS = 2 (end of the answer),
  the defaults of ``memnet.models.seq2seq.Seq2Seq``.

* ``MarkovBitsTask`` is a binary task (the ``AlgorithmicDataModule`` batch
  layout) whose targets are a random Markov chain: an output y(t) is
  predictable only from y(t−1), never from the input, which is where a
  conditional-output model (y(t−1) → h(t)) matters.

* ``SeriesDataModule`` serves NARMA-10 or Mackey–Glass series, generated from
  a seed, for echo-state networks; scored by the normalised root-mean-square
  error (NRMSE).

Axes:  b - batch, t - time, s - source position, d - features
"""

from __future__ import annotations

import math
from typing import Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from memnet.utils import ResumableLoader, distributed_sampler, is_integer
from tasks.algorithmic.base import AlgorithmicTask
from tasks.algorithmic.data import _mix, fixed_set_loader

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 3  # symbols are FIRST_SYMBOL .. vocab_size - 1


class TokenTask(AlgorithmicTask):
    """A seq2seq task over ``num_symbols`` symbols plus PAD, BOS and EOS.

    Args:
        num_symbols: distinct symbols (the vocabulary is num_symbols + 3).
        min_length: shortest source in training.
        max_length: longest source in training.
    """

    def __init__(self, *, num_symbols: int = 8, min_length: int = 1, max_length: int = 10) -> None:
        super().__init__(min_length=min_length, max_length=max_length)
        if not is_integer(num_symbols) or num_symbols < 1:
            raise ValueError(f"num_symbols must be a positive integer, got {num_symbols!r}")
        self.num_symbols = num_symbols

    @property
    def input_size(self) -> int:
        """V, the vocabulary size (source side)."""
        return self.num_symbols + FIRST_SYMBOL

    @property
    def output_size(self) -> int:
        """V, the vocabulary size (target side)."""
        return self.num_symbols + FIRST_SYMBOL

    def sequence_length(self, length: int) -> int:
        return length

    def answer(self, source: torch.Tensor) -> torch.Tensor:
        """source (B, S) -> the answer's symbols (B, T − 1), without EOS."""
        raise NotImplementedError

    def encode(self, source: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """source (B, S) long symbols -> a batch dict; the target is ``answer`` + EOS."""
        if source.dtype != torch.long or source.dim() != 2:
            raise ValueError(f"source must be a (B, S) long tensor, got {source.dtype} of shape {tuple(source.shape)}")
        if source.numel() and (source.min() < FIRST_SYMBOL or source.max() >= self.input_size):
            raise ValueError(f"source symbols must lie in [{FIRST_SYMBOL}, {self.input_size}), "
                             f"got values in [{int(source.min())}, {int(source.max())}]")
        answer = self.answer(source)
        eos = torch.full((source.shape[0], 1), EOS, dtype=torch.long)
        return {"source": source, "target": torch.cat([answer, eos], dim=1), "length": source.shape[1]}

    def sample_batch(self, generator, batch_size, length):
        self.check_length(length)
        source = torch.randint(FIRST_SYMBOL, self.input_size, (batch_size, length), generator=generator)
        return self.encode(source)


class ReverseTask(TokenTask):
    """Sequence reversal: read symbols, write them in reverse order, then EOS.

    Worked example (symbols are 3, 4, ...)::

        >>> task = ReverseTask(num_symbols=5)
        >>> batch = task.encode(torch.tensor([[3, 7, 5, 4]]))
        >>> batch["target"]             # 4 5 7 3 EOS
        tensor([[4, 5, 7, 3, 2]])
    """

    def output_length(self, length: int) -> int:
        return length + 1

    def answer(self, source):
        return source.flip(1)


class Seq2SeqCopyTask(TokenTask):
    """Copy through an encoder–decoder: the decoder decides when to stop, by emitting EOS.

    With ``output_length`` K the answer has K symbols whatever the source length
    L: the source repeated (cycled) or cut to K symbols, so the model must count
    output steps independently of the input.

    Worked example::

        >>> Seq2SeqCopyTask(num_symbols=5).encode(torch.tensor([[3, 7, 5]]))["target"]
        tensor([[3, 7, 5, 2]])
        >>> Seq2SeqCopyTask(num_symbols=5, output_length=5).encode(torch.tensor([[3, 7, 5]]))["target"]
        tensor([[3, 7, 5, 3, 7, 2]])

    Args:
        num_symbols: distinct symbols.
        min_length: shortest source in training.
        max_length: longest source in training.
        output_length: K, a fixed answer length; default the source length.
    """

    def __init__(
        self, *, num_symbols: int = 8, min_length: int = 1, max_length: int = 10, output_length: int | None = None
    ) -> None:
        super().__init__(num_symbols=num_symbols, min_length=min_length, max_length=max_length)
        if output_length is not None and (not is_integer(output_length) or output_length < 1):
            raise ValueError(f"output_length must be a positive integer or null, got {output_length!r}")
        self.fixed_output_length = output_length

    def output_length(self, length: int) -> int:
        return (length if self.fixed_output_length is None else self.fixed_output_length) + 1

    def answer(self, source):
        if self.fixed_output_length is None:
            return source.clone()
        index = torch.arange(self.fixed_output_length) % source.shape[1]
        return source[:, index]


class MarkovBitsTask(AlgorithmicTask):
    """Write a random binary Markov chain: each bit keeps its previous value or flips.

    y(0) is uniform; y(t) = y(t−1) XOR f(t), f(t) ~ Bernoulli(flip_probability),
    independently per channel. The input carries no information about y: a
    start marker at t = 0 and zeros after. A model without y(t−1) → h(t) can do
    no better than 1 bit per output bit; a conditional model reaches the
    chain's entropy, 1 bit for t = 0 and H(flip_probability) bits after.

    Worked example (width 2, length 4, flips drawn at t = 2 on channel 0)::

        inputs   1 0 0 0        targets  channel 0: 1 1 0 0
                                         channel 1: 0 0 0 0

    Args:
        width: bits per step.
        flip_probability: chance that a bit flips, in (0, 0.5].
        min_length: shortest sequence in training.
        max_length: longest sequence in training.
    """

    def __init__(
        self, *, width: int = 4, flip_probability: float = 0.05, min_length: int = 10, max_length: int = 30
    ) -> None:
        super().__init__(min_length=min_length, max_length=max_length)
        if not is_integer(width) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if not 0 < flip_probability <= 0.5:
            raise ValueError(f"flip_probability must lie in (0, 0.5], got {flip_probability!r}")
        self.width = width
        self.flip_probability = flip_probability

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return self.width

    def output_length(self, length: int) -> int:
        return length

    def sequence_length(self, length: int) -> int:
        return length

    def entropy_bits(self, length: int) -> float:
        """The chain's entropy per sequence in bits: the best achievable ``bits_per_seq``."""
        p = self.flip_probability
        rate = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        return self.width * (1 + (length - 1) * rate)

    def sample_batch(self, generator, batch_size, length):
        self.check_length(length)
        first = torch.randint(0, 2, (batch_size, 1, self.width), generator=generator)
        flips = (torch.rand(batch_size, length - 1, self.width, generator=generator) < self.flip_probability).long()
        # y(t) = y(0) XOR (f(1) + ... + f(t)) mod 2
        targets = (first + torch.cat([torch.zeros_like(first), flips.cumsum(1)], dim=1)) % 2
        inputs = torch.zeros(batch_size, length, 1)
        inputs[:, 0] = 1.0
        return {"inputs": inputs, "targets": targets.float(), "mask": torch.ones(batch_size, length),
                "length": length}


SERIES = ("narma10", "mackey_glass")


def narma10(inputs: torch.Tensor) -> torch.Tensor:
    """The NARMA-10 system (Atiya & Parlos 2000) driven by ``inputs`` u (B, T) in [0, 0.5].

        y(t+1) = 0.3 y(t) + 0.05 y(t) Σ_{i=0..9} y(t−i) + 1.5 u(t−9) u(t) + 0.1

    Returns (B, T) with entry t = y(t+1), which depends on u up to t only.
    """
    batch, steps = inputs.shape
    u = inputs.double()
    y = torch.zeros(batch, steps + 1, dtype=torch.float64)
    for t in range(steps):
        window = y[:, max(0, t - 9) : t + 1].sum(1)
        delayed = u[:, t - 9] if t >= 9 else torch.zeros(batch, dtype=torch.float64)
        y[:, t + 1] = 0.3 * y[:, t] + 0.05 * y[:, t] * window + 1.5 * delayed * u[:, t] + 0.1
    return y[:, 1:].to(inputs.dtype)


# NARMA-10 driven by u uniform in [0, 0.5] diverges now and then (about one sequence in 200 of 1000
# steps): once its outputs stay above about 1, the product term outgrows the 0.3 decay and y runs to
# inf, then NaN. In 2·10^7 steps (seeded draws) no bounded sequence passed 1.36 and none that passed 1.4
# came back below 10, so 2 tells the two apart.
NARMA10_BOUND = 2.0


def narma10_set(size: int, length: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` bounded NARMA-10 sequences: inputs u (B, T) uniform in [0, 0.5] and targets y(t+1) (B, T).

    A sequence whose output leaves [0, ``NARMA10_BOUND``] (it diverged) is drawn again from
    ``generator``, so no set holds inf or NaN; a set in which none diverged is what the plain draw gives.
    """
    inputs = 0.5 * torch.rand(size, length, generator=generator)
    targets = narma10(inputs)
    diverged = ~(targets <= NARMA10_BOUND).all(1)  # NaN compares False: diverged
    while diverged.any():
        redrawn = 0.5 * torch.rand(int(diverged.sum()), length, generator=generator)
        inputs[diverged], targets[diverged] = redrawn, narma10(redrawn)
        diverged = ~(targets <= NARMA10_BOUND).all(1)
    return inputs, targets


def mackey_glass(
    batch_size: int, steps: int, *, generator: torch.Generator, delay: int = 17, substeps: int = 10,
    warmup: int = 500,
) -> torch.Tensor:
    """Mackey–Glass series (Mackey & Glass 1977), one per sequence, sampled once per time unit.

        dx/dt = 0.2 x(t − τ) / (1 + x(t − τ)^10) − 0.1 x(t),   τ = ``delay`` (17: chaotic)

    Integrated with Euler steps of 1/``substeps``; each sequence starts from a
    constant history 1.2 + noise (drawn with ``generator``) and drops ``warmup``
    time units. Returns (B, T).
    """
    dt = 1.0 / substeps
    lag = delay * substeps
    total = (warmup + steps) * substeps
    x = torch.empty(batch_size, lag + total + 1, dtype=torch.float64)
    x[:, : lag + 1] = 1.2 + 0.1 * torch.rand(batch_size, 1, generator=generator, dtype=torch.float64)
    for i in range(lag, lag + total):
        past = x[:, i - lag]
        x[:, i + 1] = x[:, i] + dt * (0.2 * past / (1 + past**10) - 0.1 * x[:, i])
    return x[:, lag + warmup * substeps + substeps :: substeps][:, :steps].float()


class SeriesDataModule(pl.LightningDataModule):
    """A reservoir-computing benchmark: predict a series from its driving input.

    ``narma10``: the input is u(t) uniform in [0, 0.5], the target the NARMA-10
    output y(t+1) (a sequence that diverges is drawn again: ``narma10_set``).
    ``mackey_glass``: the input is x(t) − 1 (centred), the target x(t + horizon) − 1.
    Every sequence is ``length`` steps; the first ``washout`` steps are not scored
    (mask 0), so the reservoir forgets its initial state.
    Train, validation and test sets are fixed, drawn once from their own
    streams of ``seed``. Batches follow the ``AlgorithmicDataModule`` layout
    (``inputs`` (B, T, 1), ``targets`` (B, T, 1), ``mask`` (B, T), ``length``).

    Args:
        series: ``narma10`` or ``mackey_glass``.
        length: T, steps per sequence.
        washout: leading steps not scored, in [0, length).
        horizon: steps ahead for ``mackey_glass``.
        batch_size: sequences per batch.
        train_size: training sequences (one epoch sees each once).
        val_size: validation sequences.
        test_size: test sequences.
        seed: seed of every set.
    """

    def __init__(
        self,
        *,
        series: Literal["narma10", "mackey_glass"] = "narma10",
        length: int = 1000,
        washout: int = 100,
        horizon: int = 1,
        batch_size: int = 16,
        train_size: int = 64,
        val_size: int = 16,
        test_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if series not in SERIES:
            raise ValueError(f"series must be one of {list(SERIES)}, got {series!r}")
        for name, value in {"length": length, "horizon": horizon, "batch_size": batch_size,
                            "train_size": train_size, "val_size": val_size, "test_size": test_size}.items():
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not is_integer(washout) or not 0 <= washout < length:
            raise ValueError(f"washout must be an integer in [0, length={length}), got {washout!r}")
        if series == "narma10" and horizon != 1:
            raise ValueError(f"horizon must be 1 for series 'narma10' (its target is y(t+1)), got {horizon!r}; "
                             "other horizons are for 'mackey_glass'")
        self.series = series
        self.length = length
        self.washout = washout
        self.horizon = horizon
        self.batch_size = batch_size
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return 1

    def make_set(self, split: Literal["train", "val", "test"]) -> list[dict]:
        """The fixed sequences of ``split``, in batches of at most ``batch_size``."""
        stream = {"train": 0, "val": -1, "test": -2}[split]
        generator = torch.Generator().manual_seed(_mix(self.seed, stream))
        size = self.sizes[split]
        if self.series == "narma10":
            inputs, targets = narma10_set(size, self.length, generator=generator)
        else:
            x = mackey_glass(size, self.length + self.horizon, generator=generator) - 1.0
            inputs, targets = x[:, : self.length], x[:, self.horizon :]
        mask = torch.ones(size, self.length)
        mask[:, : self.washout] = 0.0
        return [
            {"inputs": inputs[i : i + self.batch_size, :, None], "targets": targets[i : i + self.batch_size, :, None],
             "mask": mask[i : i + self.batch_size], "length": self.length}
            for i in range(0, size, self.batch_size)
        ]

    def _loader(self, split: Literal["train", "val", "test"]) -> DataLoader:
        """The batches of ``split``; under DDP each process gets its own share: of the training batches
        (``distributed_sampler``, the first repeated where they do not divide by the processes), of the
        validation and test sequences (``fixed_set_loader``: each on exactly one process)."""
        batches = self.make_set(split)
        if split != "train":
            return fixed_set_loader(batches, self.trainer)
        sampler = distributed_sampler(batches, self.trainer, shuffle=False, seed=self.seed)
        # resumed in the middle of an epoch: its remaining batches, not its first ones again
        return ResumableLoader(batches, batch_size=None, sampler=sampler, trainer=self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
