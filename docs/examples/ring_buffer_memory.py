"""A new memory model: a ring buffer written in order and read by content.

Each step writes one vector into the next slot (slot t mod N, erasing what was
there), so the memory holds the last N steps; R read heads then read it by
content, as an NTM head without location addressing:

    M_t = write(M_{t−1}, w^w_t = one_hot(t mod N), e = 1, a = tanh(W_a h_t))
    w^r_t = content_weights(M_t, k_t, β_t),   r_t = read(M_t, w^r_t)
    y_t = W_y [h_t, r_t]

It composes memnet's pure functions (``memnet.addressing``, ``memnet.memory``) and
any controller; ``forward`` takes ``memory_size`` and ``return_trace`` like the NTM,
so ``memnet evaluate`` can enlarge the memory and ``MemoryAccessPlot`` can draw it.

Axes:  b - batch, t - time, r - read heads, n - slots, w - slot width
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from memnet import memory as mem
from memnet.addressing import content_weights
from memnet.controllers import ControllerFactory, LSTMController


class RingBufferTrace(NamedTuple):
    """read_weights (B, T, R, N) and write_weights (B, T, 1, N), for plots."""

    read_weights: torch.Tensor
    write_weights: torch.Tensor


class RingBufferMemory(nn.Module):
    """A controller with a ring-buffer memory read by content.

    Args:
        input_size: D_in.
        output_size: D_out (logits).
        controller: factory ``input_size -> Controller`` (default an LSTM of 100 units).
        memory_size: N, slots (the steps remembered).
        word_size: W, slot width.
        num_reads: R, read heads.
    """

    def __init__(self, input_size: int, output_size: int, *, controller: ControllerFactory | None = None,
                 memory_size: int = 32, word_size: int = 16, num_reads: int = 1) -> None:
        super().__init__()
        self.memory_size, self.word_size, self.num_reads = memory_size, word_size, num_reads
        self.controller = (controller or LSTMController)(input_size + num_reads * word_size)
        hidden = self.controller.output_size
        self.write_vector = nn.Linear(hidden, word_size)                 # a_t
        self.read_keys = nn.Linear(hidden, num_reads * (word_size + 1))  # k_t and β_t of each read head
        self.output = nn.Linear(hidden + num_reads * word_size, output_size)

    def forward(self, inputs: torch.Tensor, *, memory_size: int | None = None, return_trace: bool = False):
        """inputs (B, T, D_in) -> logits (B, T, D_out) [, RingBufferTrace]."""
        batch, steps, _ = inputs.shape
        slots = memory_size or self.memory_size
        memory = inputs.new_zeros(batch, slots, self.word_size)
        reads = inputs.new_zeros(batch, self.num_reads, self.word_size)
        state = self.controller.initial_state(batch, device=inputs.device, dtype=inputs.dtype)
        outputs, read_trace, write_trace = [], [], []
        for t in range(steps):
            hidden, state = self.controller.step(torch.cat([inputs[:, t], mem.flatten_heads(reads)], -1), state)
            write_weights = inputs.new_zeros(batch, 1, slots)
            write_weights[..., t % slots] = 1.0                          # the next slot of the ring
            add = rearrange(torch.tanh(self.write_vector(hidden)), "b w -> b 1 w")
            memory = mem.write(memory, write_weights, torch.ones_like(add), add)
            keys = rearrange(self.read_keys(hidden), "b (r k) -> b r k", r=self.num_reads)
            read_weights = content_weights(memory, keys[..., :-1], 1 + F.softplus(keys[..., -1]))
            reads = mem.read(memory, read_weights)
            outputs.append(self.output(torch.cat([hidden, mem.flatten_heads(reads)], -1)))
            read_trace.append(read_weights)
            write_trace.append(write_weights)
        logits = torch.stack(outputs, dim=1)
        if not return_trace:
            return logits
        return logits, RingBufferTrace(torch.stack(read_trace, 1), torch.stack(write_trace, 1))
