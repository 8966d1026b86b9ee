"""Controllers: the networks that drive a memory, one time step at a time.

Every controller has the same interface, so that any of them can sit in front
of any memory (NTM, DNC) or run on its own as a sequence model:

    controller = LSTMController(input_size, hidden_size=100)
    state = controller.initial_state(batch_size)          # nothing kept on self
    output, state = controller.step(x, state)             # x (B, D) -> output (B, output_size)
    outputs, state = controller(inputs)                    # inputs (B, T, D) -> (B, T, output_size)

``forward`` over a whole sequence uses the library's fused kernel where one
exists; it equals the ``step`` loop (tested).

A memory model builds its controller from a factory that takes the input size,
because that size depends on the memory (input width + read vectors); in YAML
the factory is a ``class_path`` with ``init_args`` that leave ``input_size`` out.

Axes:  b - batch, t - time, l - layers, d - features
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from torch import nn

from memnet.utils import check_positive

ControllerState = Any  # a tensor or a tuple of tensors; opaque to the caller


class Controller(nn.Module):
    """Interface of every controller.

    Attributes:
        input_size: D, the width of one input step.
        output_size: the width of ``step``'s output, read by heads and output layers.
    """

    input_size: int
    output_size: int

    def initial_state(
        self, batch_size: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> ControllerState:
        """The state before the first step, for ``batch_size`` sequences."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: ControllerState) -> tuple[torch.Tensor, ControllerState]:
        """One step: x (B, D) and the previous state -> output (B, output_size) and the new state."""
        raise NotImplementedError

    def forward(
        self, inputs: torch.Tensor, state: ControllerState | None = None
    ) -> tuple[torch.Tensor, ControllerState]:
        """A whole sequence: inputs (B, T, D) -> outputs (B, T, output_size), final state.

        The default loops over ``step``; controllers with a fused kernel override it.
        """
        if state is None:
            state = self.initial_state(inputs.shape[0], device=inputs.device, dtype=inputs.dtype)
        outputs = []
        for t in range(inputs.shape[1]):
            output, state = self.step(inputs[:, t], state)
            outputs.append(output)
        return torch.stack(outputs, dim=1), state


ControllerFactory = Callable[[int], Controller]


class LSTMController(Controller):
    """Multi-layer LSTM (Hochreiter & Schmidhuber 1997) with the step interface.

    The state is ``(h, c)``, each (L, B, hidden_size). ``step`` and ``forward`` share
    one ``nn.LSTM``, so the fused kernel runs whole sequences and a step is the
    same kernel on a sequence of length one.

    Args:
        input_size: D.
        hidden_size: units per layer (100 in the NTM paper's copy experiments).
        num_layers: stacked layers.
        dropout: dropout between layers (only with ``num_layers > 1``).
    """

    def __init__(
        self, input_size: int, *, hidden_size: int = 100, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        self.input_size = input_size
        self.output_size = hidden_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, dropout=dropout)

    def initial_state(self, batch_size, *, device=None, dtype=None):
        shape = (self.num_layers, batch_size, self.hidden_size)
        return (
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    def step(self, x, state):
        output, state = self.lstm(x.unsqueeze(1), state)
        return output.squeeze(1), state

    def forward(self, inputs, state=None):
        if state is None:
            state = self.initial_state(inputs.shape[0], device=inputs.device, dtype=inputs.dtype)
        return self.lstm(inputs, state)


class FeedForwardController(Controller):
    """A multi-layer perceptron with no recurrence (the NTM paper's feed-forward controller).

    All memory of the past must then come through the read vectors. The state is
    an empty tuple.

    Args:
        input_size: D.
        hidden_size: units per hidden layer.
        num_layers: hidden layers (at least 1).
        activation: ``relu``, ``tanh`` or ``sigmoid``.
    """

    def __init__(
        self,
        input_size: int,
        *,
        hidden_size: int = 100,
        num_layers: int = 1,
        activation: Literal["relu", "tanh", "sigmoid"] = "relu",
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        self.input_size = input_size
        self.output_size = hidden_size
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(input_size if i == 0 else hidden_size, hidden_size), _activation(activation)]
        self.net = nn.Sequential(*layers)

    def initial_state(self, batch_size, *, device=None, dtype=None):
        return ()

    def step(self, x, state):
        return self.net(x), state

    def forward(self, inputs, state=None):
        return self.net(inputs), ()


def _activation(name: str) -> nn.Module:
    activations = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    if name not in activations:
        raise ValueError(f"activation must be one of {sorted(activations)}, got {name!r}")
    return activations[name]()

