"""Controllers: the networks that drive a memory, one time step at a time.

Every controller has the same interface, so that any of them can sit in front
of any memory (NTM, DNC) or run on its own as a sequence model:

    controller = LSTMController(input_size, hidden_size=100)
    state = controller.initial_state(batch_size)          # nothing kept on self
    output, state = controller.step(x, state)             # x (B, D) -> output (B, output_size)
    outputs, state = controller(inputs)                    # inputs (B, T, D) -> (B, T, output_size)

``forward`` over a whole sequence uses the library's fused kernel where one
exists; it equals the ``step`` loop (tested).

The family:

    ElmanRNN               h(t) = f(W h(t−1) + U x(t) + b)            hidden-to-hidden recurrence
    JordanRNN              h(t) = f(W o(t−1) + U x(t) + b), o(t) = g(V h(t) + c)   output-to-hidden
    LSTMController         gated cell (Hochreiter & Schmidhuber 1997)
    GRUController          gated recurrent unit (Cho et al. 2014)
    EchoStateController    fixed random reservoir, only the readout is trained (Jaeger 2001)
    FeedForwardController  no recurrence (the NTM paper's feed-forward controller)

A memory model builds its controller from a factory that takes the input size,
because that size depends on the memory (input width + read vectors); in YAML
the factory is a ``class_path`` with ``init_args`` that leave ``input_size`` out.

Axes:  b - batch, t - time, l - layers, d - features, n - reservoir units, h - hidden units
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from einops import einsum
from torch import nn

from memnet.utils import check_positive, check_range, is_integer

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


    def project_inputs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Work on the leading inputs of a whole sequence that no step depends on, done once.

        A memory model's controller reads concat(x_t, r_{t−1}) at step t; x_t is known
        for every t before the loop starts. ``project_inputs`` takes x for all t, and
        ``projected_step`` then combines its slice at t with the rest of the step's
        input. The default does nothing ahead (``projected_step`` concatenates and calls
        ``step``); the LSTM multiplies x by its input weights for all t at once.

        Args:
            inputs: (..., D_x) the leading D_x features of every step's input, each step
                projected on its own (the models pass them time first, (T, B, D_x)).

        Returns:
            (..., P) projected inputs, and a context that ``projected_step`` needs
            (computed once per sequence, e.g. weights concatenated for one matmul).
        """
        return inputs, None

    def projected_step(
        self, projected: torch.Tensor, rest: torch.Tensor, state: ControllerState, context: Any
    ) -> tuple[torch.Tensor, ControllerState]:
        """``step`` on concat(x_t, rest) given ``projected`` (B, P), the slice at t of
        ``project_inputs``, and rest (B, D − D_x): output (B, output_size) and the new state."""
        return self.step(torch.cat([projected, rest], dim=-1), state)


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
        check_range("dropout", dropout, 0.0, 1.0, high_open=True)
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
        # torch.lstm_cell on nn.LSTM's own weights: the same arithmetic as the fused
        # kernel, without its per-call set-up (which dominates at one step).
        hs, cs = state
        new_h, new_c = [], []
        for layer in range(self.num_layers):
            h, c = torch.lstm_cell(
                x,
                (hs[layer], cs[layer]),
                getattr(self.lstm, f"weight_ih_l{layer}"),
                getattr(self.lstm, f"weight_hh_l{layer}"),
                getattr(self.lstm, f"bias_ih_l{layer}"),
                getattr(self.lstm, f"bias_hh_l{layer}"),
            )
            new_h.append(h)
            new_c.append(c)
            x = h
            if self.training and self.lstm.dropout and layer < self.num_layers - 1:
                x = torch.nn.functional.dropout(x, self.lstm.dropout)
        return x, (torch.stack(new_h), torch.stack(new_c))

    def forward(self, inputs, state=None):
        if state is None:
            state = self.initial_state(inputs.shape[0], device=inputs.device, dtype=inputs.dtype)
        return self.lstm(inputs, state)

    def project_inputs(self, inputs):
        # W_ih x_t + b_ih + b_hh of the first layer for all t at once; the step then
        # needs one matmul of concat(rest, h) with concat(W_ih[:, D_x:], W_hh).
        width = inputs.shape[-1]
        weight_ih = self.lstm.weight_ih_l0
        projected = torch.nn.functional.linear(inputs, weight_ih[:, :width], self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0)
        context = torch.cat([weight_ih[:, width:], self.lstm.weight_hh_l0], dim=1).t()  # (D − D_x + H, 4H)
        return projected, context

    def projected_step(self, projected, rest, state, context):
        hs, cs = state
        gates = torch.addmm(projected, torch.cat([rest, hs[0]], dim=-1), context)
        in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=-1)
        c = torch.sigmoid(forget_gate) * cs[0] + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
        h = torch.sigmoid(out_gate) * torch.tanh(c)
        if self.num_layers == 1:
            return h, (h.unsqueeze(0), c.unsqueeze(0))
        x = h
        if self.training and self.lstm.dropout:
            x = torch.nn.functional.dropout(x, self.lstm.dropout)
        upper, (upper_h, upper_c) = self._upper_layers(x, (hs[1:], cs[1:]))
        return upper, (torch.cat([h.unsqueeze(0), upper_h]), torch.cat([c.unsqueeze(0), upper_c]))

    def _upper_layers(self, x, state):
        hs, cs = state
        new_h, new_c = [], []
        for index in range(1, self.num_layers):
            h, c = torch.lstm_cell(
                x,
                (hs[index - 1], cs[index - 1]),
                getattr(self.lstm, f"weight_ih_l{index}"),
                getattr(self.lstm, f"weight_hh_l{index}"),
                getattr(self.lstm, f"bias_ih_l{index}"),
                getattr(self.lstm, f"bias_hh_l{index}"),
            )
            new_h.append(h)
            new_c.append(c)
            x = h
            if self.training and self.lstm.dropout and index < self.num_layers - 1:
                x = torch.nn.functional.dropout(x, self.lstm.dropout)
        return x, (torch.stack(new_h), torch.stack(new_c))


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



RECURRENT_NONLINEARITIES = ("relu", "tanh")


def _check_nonlinearity(nonlinearity: str, *, name: str = "nonlinearity") -> None:
    if nonlinearity not in RECURRENT_NONLINEARITIES:
        raise ValueError(f"{name} must be one of {list(RECURRENT_NONLINEARITIES)}, got {nonlinearity!r}")


class _FusedRNNController(Controller):
    """Shared code of the controllers backed by one fused ``nn.RNN`` or ``nn.GRU``.

    The state is h, (L, B, hidden_size). ``step`` runs the cell of each layer
    (``torch.gru_cell``, ``torch.rnn_tanh_cell``, ``torch.rnn_relu_cell``) on the
    module's own weights: the fused kernel's arithmetic, so ``forward`` equals
    the ``step`` loop, without its per-call set-up, and traceable by
    ``torch.compile``.
    """

    rnn: nn.RNNBase
    hidden_size: int
    num_layers: int

    def initial_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device, dtype=dtype)

    def _cell(self):
        if isinstance(self.rnn, nn.GRU):
            return torch.gru_cell
        return torch.rnn_tanh_cell if self.rnn.nonlinearity == "tanh" else torch.rnn_relu_cell

    def step(self, x, state):
        cell = self._cell()
        new_h = []
        for layer in range(self.num_layers):
            h = cell(
                x,
                state[layer],
                getattr(self.rnn, f"weight_ih_l{layer}"),
                getattr(self.rnn, f"weight_hh_l{layer}"),
                getattr(self.rnn, f"bias_ih_l{layer}"),
                getattr(self.rnn, f"bias_hh_l{layer}"),
            )
            new_h.append(h)
            x = h
            if self.training and self.rnn.dropout and layer < self.num_layers - 1:
                x = torch.nn.functional.dropout(x, self.rnn.dropout)
        return x, torch.stack(new_h)

    def forward(self, inputs, state=None):
        if state is None:
            state = self.initial_state(inputs.shape[0], device=inputs.device, dtype=inputs.dtype)
        return self.rnn(inputs, state)


class ElmanRNN(_FusedRNNController):
    """The vanilla (Elman 1990) recurrent network, multi-layer, on PyTorch's fused ``nn.RNN``.

    Per layer:  h(t) = f(W h(t−1) + U x(t) + b),  f = tanh or relu.
    The controller's output is the top layer's h(t) (B, hidden_size); the
    output o(t) = V h(t) is the read-out of the model that owns the controller
    (``RecurrentModel.output``). The state is h, (L, B, hidden_size).

    Args:
        input_size: D.
        hidden_size: units per layer.
        num_layers: stacked layers.
        nonlinearity: f, ``tanh`` or ``relu``.
        dropout: dropout between layers (only with ``num_layers > 1``).
    """

    def __init__(
        self,
        input_size: int,
        *,
        hidden_size: int = 100,
        num_layers: int = 1,
        nonlinearity: Literal["tanh", "relu"] = "tanh",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        _check_nonlinearity(nonlinearity)
        check_range("dropout", dropout, 0.0, 1.0, high_open=True)
        self.input_size = input_size
        self.output_size = hidden_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.nonlinearity = nonlinearity
        self.rnn = nn.RNN(
            input_size, hidden_size, num_layers, nonlinearity=nonlinearity, batch_first=True, dropout=dropout
        )


class GRUController(_FusedRNNController):
    """Multi-layer gated recurrent unit (Cho et al. 2014) on PyTorch's fused ``nn.GRU``.

    Per layer:
        r = σ(W_r x + U_r h(t−1) + b_r)                  reset gate
        z = σ(W_z x + U_z h(t−1) + b_z)                  update gate
        n = tanh(W_n x + b_n + r ∘ (U_n h(t−1) + b'_n))  candidate
        h(t) = (1 − z) ∘ n + z ∘ h(t−1)

    The state is h, (L, B, hidden_size); the output the top layer's h(t).

    Args:
        input_size: D.
        hidden_size: units per layer.
        num_layers: stacked layers.
        dropout: dropout between layers (only with ``num_layers > 1``).
    """

    def __init__(
        self, input_size: int, *, hidden_size: int = 100, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        check_range("dropout", dropout, 0.0, 1.0, high_open=True)
        self.input_size = input_size
        self.output_size = hidden_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.rnn = nn.GRU(input_size, hidden_size, num_layers, batch_first=True, dropout=dropout)


_OUTPUT_ACTIVATIONS = {"identity": nn.Identity, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class JordanRNN(Controller):
    """The output-recurrent (Jordan 1986) network: the previous *output* feeds the hidden units.

        h(t) = f(W o(t−1) + U x(t) + b)
        o(t) = g(V h(t) + c)

    There is no hidden-to-hidden connection, so everything the network keeps
    from the past must pass through its output o, a narrower and (with
    ``output_activation`` tanh or sigmoid) bounded channel. The state is
    o(t−1), (B, output_units), zero at the start; the controller's output is
    o(t). No fused kernel exists for this recurrence: ``forward`` computes
    U x(t) for all steps in one product and loops over time for the rest.

    Args:
        input_size: D.
        hidden_size: hidden units.
        output_units: width of o (default ``hidden_size``); also the controller's ``output_size``.
        nonlinearity: f, ``tanh`` or ``relu``.
        output_activation: g, ``identity``, ``tanh`` or ``sigmoid``.
    """

    def __init__(
        self,
        input_size: int,
        *,
        hidden_size: int = 100,
        output_units: int | None = None,
        nonlinearity: Literal["tanh", "relu"] = "tanh",
        output_activation: Literal["identity", "tanh", "sigmoid"] = "tanh",
    ) -> None:
        super().__init__()
        output_units = hidden_size if output_units is None else output_units
        check_positive(input_size=input_size, hidden_size=hidden_size, output_units=output_units)
        _check_nonlinearity(nonlinearity)
        if output_activation not in _OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {sorted(_OUTPUT_ACTIVATIONS)}, got {output_activation!r}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = output_units
        self.input_to_hidden = nn.Linear(input_size, hidden_size)  # U and b
        self.output_to_hidden = nn.Linear(output_units, hidden_size, bias=False)  # W
        self.hidden_to_output = nn.Linear(hidden_size, output_units)  # V
        self.nonlinearity = nonlinearity
        self.activation = torch.tanh if nonlinearity == "tanh" else torch.relu
        self.output_activation = _OUTPUT_ACTIVATIONS[output_activation]()

    def initial_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.output_size, device=device, dtype=dtype)

    def _advance(self, drive: torch.Tensor, prev_output: torch.Tensor) -> torch.Tensor:
        """drive U x(t) + b (B, hidden), o(t−1) (B, O) -> o(t) (B, O)."""
        hidden = self.activation(drive + self.output_to_hidden(prev_output))
        return self.output_activation(self.hidden_to_output(hidden))

    def step(self, x, state):
        output = self._advance(self.input_to_hidden(x), state)
        return output, output

    def forward(self, inputs, state=None):
        if state is None:
            state = self.initial_state(inputs.shape[0], device=inputs.device, dtype=inputs.dtype)
        drives = self.input_to_hidden(inputs)  # (B, T, hidden), all steps at once
        outputs = []
        for t in range(inputs.shape[1]):
            state = self._advance(drives[:, t], state)
            outputs.append(state)
        return torch.stack(outputs, dim=1), state


class EchoStateController(Controller):
    """An echo-state network (Jaeger 2001): a fixed random reservoir; only a readout is trained.

    Leaky-integrator reservoir of N units (Jaeger et al. 2007):
        x(t) = (1 − a) x(t−1) + a tanh(W_in u(t) + W x(t−1) + b)
    with leak rate a ∈ (0, 1]. The reservoir weights W (N, N), W_in (N, D) and
    b (N) are drawn once from ``seed`` and stored as buffers: they are saved
    in checkpoints but are not parameters, so no optimiser ever sees or
    changes them. The readout is the owner's linear output layer, trained by
    gradient descent or fitted in closed form (``memnet.models.recurrent.ridge_regression``).

    W is uniform in [−1, 1] with a fraction ``sparsity`` of its entries set to
    zero, then scaled so that its spectral radius (largest |eigenvalue|) is
    exactly ``spectral_radius``. The state is x, (B, N); the output is x(t),
    or concat(x(t), u(t)) with ``include_input``.

    Args:
        input_size: D.
        reservoir_size: N.
        spectral_radius: ρ(W) > 0; below 1 gives the echo-state property for most inputs.
        sparsity: fraction of zero recurrent weights, in [0, 1).
        input_scaling: W_in is uniform in [−input_scaling, input_scaling].
        bias_scaling: b is uniform in [−bias_scaling, bias_scaling] (0: no bias).
        leak_rate: a, in (0, 1]; 1 is the plain (non-leaky) reservoir.
        include_input: append u(t) to the output, so the readout sees the input directly.
        seed: seed of the reservoir draw.
    """

    def __init__(
        self,
        input_size: int,
        *,
        reservoir_size: int = 200,
        spectral_radius: float = 0.9,
        sparsity: float = 0.9,
        input_scaling: float = 1.0,
        bias_scaling: float = 0.0,
        leak_rate: float = 1.0,
        include_input: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, reservoir_size=reservoir_size)
        if not 0 < spectral_radius < math.inf:
            raise ValueError(f"spectral_radius must lie in (0, inf), got {spectral_radius!r}")
        check_range("sparsity", sparsity, 0.0, 1.0, high_open=True)
        check_range("leak_rate", leak_rate, 0.0, 1.0, low_open=True)
        if not 0 <= input_scaling < math.inf:
            raise ValueError(f"input_scaling must lie in [0, inf), got {input_scaling!r}")
        if not 0 <= bias_scaling < math.inf:
            raise ValueError(f"bias_scaling must lie in [0, inf), got {bias_scaling!r}")
        if not is_integer(seed) or not -(2**63) <= seed < 2**64:  # as torch.Generator takes it; its own error names
            raise ValueError(f"seed (of the reservoir draw) must be an integer in [-2**63, 2**64), "
                             f"got {seed!r}")  # neither the option nor the range, and a bool would pass as 1
        self.input_size = input_size
        self.reservoir_size = reservoir_size
        self.spectral_radius = spectral_radius
        self.leak_rate = leak_rate
        self.include_input = include_input
        self.output_size = reservoir_size + (input_size if include_input else 0)

        self.sparsity = sparsity
        self.input_scaling = input_scaling
        self.bias_scaling = bias_scaling
        self.seed = seed
        recurrent, inputs, bias = self._draw(seed)
        self.register_buffer("recurrent_weight", recurrent)  # W (N, N)
        self.register_buffer("input_weight", inputs)  # W_in (N, D)
        self.register_buffer("bias", bias)  # b (N)

    def _draw(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reservoir of ``seed``: W (N, N) scaled to ``spectral_radius``, W_in (N, D), b (N), float32."""
        size = self.reservoir_size
        generator = torch.Generator().manual_seed(seed)
        uniform = lambda *shape: 2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1
        recurrent = uniform(size, size)
        recurrent = recurrent * (torch.rand(recurrent.shape, generator=generator, dtype=torch.float64) >= self.sparsity)
        radius = torch.linalg.eigvals(recurrent).abs().max()
        if radius <= 0:
            raise ValueError(
                f"the drawn reservoir (reservoir_size={size}, sparsity={self.sparsity}, seed={seed}) "
                "has spectral radius 0 and cannot be scaled; lower sparsity or raise reservoir_size"
            )
        recurrent = (recurrent * (self.spectral_radius / radius)).float()
        inputs = (uniform(size, self.input_size) * self.input_scaling).float()
        return recurrent, inputs, (uniform(size) * self.bias_scaling).float()

    def redraw(self, seed: int) -> None:
        """Draw W, W_in and b again from ``seed`` (the other settings unchanged); ``seed`` becomes the draw's seed.

        ``memnet.models.seq2seq.Seq2Seq`` draws a decoder reservoir configured with the encoder's seed
        from a stream of its own this way (the same seed drew the same W for both).
        """
        recurrent, inputs, bias = self._draw(seed)
        self.seed = seed
        with torch.no_grad():
            self.recurrent_weight.copy_(recurrent.to(self.recurrent_weight.device))
            self.input_weight.copy_(inputs.to(self.input_weight.device))
            self.bias.copy_(bias.to(self.bias.device))

    def initial_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.reservoir_size, device=device, dtype=dtype)

    def _advance(self, drive: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """drive W_in u(t) + b (B, N), x(t−1) (B, N) -> x(t) (B, N)."""
        recurrent = self.recurrent_weight.to(state.dtype)
        update = torch.tanh(drive + einsum(state, recurrent, "b m, n m -> b n"))
        return (1 - self.leak_rate) * state + self.leak_rate * update

    def _drive(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (..., D) -> W_in u + b (..., N)."""
        return einsum(inputs, self.input_weight.to(inputs.dtype), "... d, n d -> ... n") + self.bias.to(inputs.dtype)

    def _output(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([state, x], dim=-1) if self.include_input else state

    def step(self, x, state):
        state = self._advance(self._drive(x), state)
        return self._output(state, x), state

    def forward(self, inputs, state=None):
        if state is None:
            state = self.initial_state(inputs.shape[0], device=inputs.device, dtype=inputs.dtype)
        drives = self._drive(inputs)  # (B, T, N), all steps at once
        states = []
        for t in range(inputs.shape[1]):
            state = self._advance(drives[:, t], state)
            states.append(state)
        return self._output(torch.stack(states, dim=1), inputs), state


def echo_state_gap(
    controller: EchoStateController, inputs: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Numerical check of the echo-state property: do two different initial states forget themselves?

    Runs the reservoir on ``inputs`` from two initial states drawn uniformly in
    [−1, 1]^N and returns the distance between the two state trajectories. With
    the echo-state property the gap shrinks towards 0 (the state becomes a
    function of the input history alone).

    Args:
        controller: the reservoir.
        inputs: (B, T, D) the common input.
        generator: draws the two initial states.

    Returns:
        (T,) the Euclidean distance ‖x_a(t) − x_b(t)‖, averaged over the batch.
    """
    batch_size = inputs.shape[0]
    shape = (batch_size, controller.reservoir_size)
    draws = [2 * torch.rand(shape, generator=generator, dtype=inputs.dtype) - 1 for _ in range(2)]
    with torch.no_grad():
        trajectories = [controller(inputs, state.to(inputs.device))[0][..., : controller.reservoir_size]
                        for state in draws]
    return (trajectories[0] - trajectories[1]).norm(dim=-1).mean(dim=0)
