"""A new controller: the minimal gated unit (Zhou et al. 2016), one gate instead of the GRU's two.

    f_t = σ(W_f [x_t, h_{t−1}] + b_f)                  forget gate
    h̃_t = tanh(W_h [x_t, f_t ∘ h_{t−1}] + b_h)          candidate
    h_t = (1 − f_t) ∘ h_{t−1} + f_t ∘ h̃_t

A controller implements ``initial_state`` and ``step``; ``Controller.forward`` loops
over ``step`` (override it where a fused kernel exists). The first constructor
argument is the input width, which a memory model fills in (input + read vectors).
"""

from __future__ import annotations

import torch
from torch import nn

from memnet.controllers import Controller


class MinimalGatedUnit(Controller):
    """A minimal gated unit with the controller interface.

    Args:
        input_size: D, width of one input step.
        hidden_size: units of h; also ``output_size``.
    """

    def __init__(self, input_size: int, *, hidden_size: int = 100) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = hidden_size
        self.gate = nn.Linear(input_size + hidden_size, hidden_size)
        self.candidate = nn.Linear(input_size + hidden_size, hidden_size)

    def initial_state(self, batch_size, *, device=None, dtype=None):
        """h_0 = 0, (B, hidden_size)."""
        return torch.zeros(batch_size, self.output_size, device=device, dtype=dtype)

    def step(self, x, state):
        """x (B, D), h (B, hidden_size) -> output h_t (B, hidden_size), new state h_t."""
        forget = torch.sigmoid(self.gate(torch.cat([x, state], dim=-1)))
        candidate = torch.tanh(self.candidate(torch.cat([x, forget * state], dim=-1)))
        hidden = (1 - forget) * state + forget * candidate
        return hidden, hidden
