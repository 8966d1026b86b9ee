"""Sequence models with no external memory: a controller and an output layer.

The baseline of the NTM paper (an LSTM, 3 layers of 256 units on copy) is
``RecurrentModel(input_size, output_size, controller=partial(LSTMController,
hidden_size=256, num_layers=3))``. Whole sequences go through the controller's
``forward``, which uses PyTorch's fused kernel where there is one.

Axes:  b - batch, t - time, d - features
"""

from __future__ import annotations

import torch
from torch import nn

from memnet.controllers import ControllerFactory, ControllerState, LSTMController
from memnet.utils import check_positive


class RecurrentModel(nn.Module):
    """Controller followed by a linear read-out at every step.

    Args:
        input_size: D_in.
        output_size: D_out (logits).
        controller: factory ``input_size -> Controller``; default an LSTM with 100 units.
    """

    def __init__(
        self, input_size: int, output_size: int, *, controller: ControllerFactory | None = None
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, output_size=output_size)
        self.input_size = input_size
        self.output_size = output_size
        factory = controller if controller is not None else LSTMController
        self.controller = factory(input_size)
        self.output = nn.Linear(self.controller.output_size, output_size)

    def initial_state(self, batch_size: int, *, device=None, dtype=None) -> ControllerState:
        return self.controller.initial_state(batch_size, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: ControllerState) -> tuple[torch.Tensor, ControllerState]:
        """One step: x (B, D_in) -> logits (B, D_out) and the new state."""
        hidden, state = self.controller.step(x, state)
        return self.output(hidden), state

    def forward(self, inputs: torch.Tensor, *, state: ControllerState | None = None) -> torch.Tensor:
        """inputs (B, T, D_in) -> logits (B, T, D_out)."""
        hidden, _ = self.controller(inputs, state)
        return self.output(hidden)
