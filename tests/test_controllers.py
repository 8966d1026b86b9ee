"""Controllers: step loop equals whole-sequence forward, hand-written recurrences, the reservoir."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from memnet.controllers import (
    EchoStateController,
    ElmanRNN,
    FeedForwardController,
    GRUController,
    JordanRNN,
    LSTMController,
    echo_state_gap,
)
from memnet.models.ntm import NTM
from memnet.models.recurrent import RecurrentModel

B, T, D = 3, 6, 5

CONTROLLERS = {
    "elman_tanh": partial(ElmanRNN, hidden_size=4, num_layers=2),
    "elman_relu": partial(ElmanRNN, hidden_size=4, nonlinearity="relu"),
    "jordan": partial(JordanRNN, hidden_size=4, output_units=7),
    "jordan_identity": partial(JordanRNN, hidden_size=4, output_activation="identity"),
    "lstm": partial(LSTMController, hidden_size=4, num_layers=2),
    "gru": partial(GRUController, hidden_size=4, num_layers=2),
    "esn": partial(EchoStateController, reservoir_size=9, leak_rate=0.6, bias_scaling=0.2, include_input=True),
    "feedforward": partial(FeedForwardController, hidden_size=4, num_layers=2),
}


def _inputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_step_loop_equals_forward(name):
    torch.manual_seed(0)
    controller = CONTROLLERS[name](D).double()
    inputs = _inputs()
    outputs, final = controller(inputs)
    assert outputs.shape == (B, T, controller.output_size)
    state = controller.initial_state(B, dtype=torch.float64)
    for t in range(T):
        output, state = controller.step(inputs[:, t], state)
        torch.testing.assert_close(output, outputs[:, t])
    torch.testing.assert_close(state, final)


@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_every_controller_drives_an_ntm(name):
    torch.manual_seed(0)
    ntm = NTM(D, 2, controller=CONTROLLERS[name], memory_size=7, word_size=3, num_reads=2)
    logits = ntm(_inputs().float())
    assert logits.shape == (B, T, 2)
    logits.sum().backward()
    assert ntm.output.weight.grad is not None and torch.isfinite(ntm.output.weight.grad).all()


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_matches_hand_written_loop(nonlinearity):
    torch.manual_seed(1)
    rnn = ElmanRNN(D, hidden_size=4, nonlinearity=nonlinearity).double()
    inputs = _inputs(1)
    f = torch.tanh if nonlinearity == "tanh" else torch.relu
    p = rnn.rnn
    h = torch.zeros(B, 4, dtype=torch.float64)
    expected = []
    for t in range(T):
        h = f(h @ p.weight_hh_l0.T + inputs[:, t] @ p.weight_ih_l0.T + p.bias_ih_l0 + p.bias_hh_l0)
        expected.append(h)
    outputs, _ = rnn(inputs)
    torch.testing.assert_close(outputs, torch.stack(expected, dim=1))


def test_jordan_matches_hand_written_loop():
    torch.manual_seed(2)
    rnn = JordanRNN(D, hidden_size=4, output_units=7, output_activation="sigmoid").double()
    inputs = _inputs(2)
    U, b = rnn.input_to_hidden.weight, rnn.input_to_hidden.bias
    W = rnn.output_to_hidden.weight
    V, c = rnn.hidden_to_output.weight, rnn.hidden_to_output.bias
    o = torch.zeros(B, 7, dtype=torch.float64)
    expected = []
    for t in range(T):
        h = torch.tanh(inputs[:, t] @ U.T + b + o @ W.T)
        o = torch.sigmoid(h @ V.T + c)
        expected.append(o)
    outputs, final = rnn(inputs)
    torch.testing.assert_close(outputs, torch.stack(expected, dim=1))
    torch.testing.assert_close(final, o)


def test_jordan_gradcheck():
    torch.manual_seed(3)
    rnn = JordanRNN(2, hidden_size=3, output_units=2).double()
    inputs = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rnn(x)[0], (inputs,))


def test_esn_matches_hand_written_loop():
    esn = EchoStateController(D, reservoir_size=9, leak_rate=0.3, bias_scaling=0.5, seed=4).double()
    inputs = _inputs(4)
    x = torch.zeros(B, 9, dtype=torch.float64)
    expected = []
    for t in range(T):
        update = torch.tanh(inputs[:, t] @ esn.input_weight.T + x @ esn.recurrent_weight.T + esn.bias)
        x = 0.7 * x + 0.3 * update
        expected.append(x)
    torch.testing.assert_close(esn(inputs)[0], torch.stack(expected, dim=1))


@pytest.mark.parametrize("radius", [0.5, 0.95, 1.3])
@pytest.mark.parametrize("sparsity", [0.0, 0.8])
def test_esn_spectral_radius_is_exact(radius, sparsity):
    esn = EchoStateController(D, reservoir_size=50, spectral_radius=radius, sparsity=sparsity, seed=5)
    measured = torch.linalg.eigvals(esn.recurrent_weight.double()).abs().max().item()
    assert abs(measured - radius) < 1e-4
    zeros = (esn.recurrent_weight == 0).double().mean().item()
    assert abs(zeros - sparsity) < 0.05


def test_esn_same_seed_same_reservoir_other_seed_other():
    a, b, c = (EchoStateController(D, reservoir_size=11, seed=s) for s in (7, 7, 8))
    torch.testing.assert_close(a.recurrent_weight, b.recurrent_weight)
    assert not torch.equal(a.recurrent_weight, c.recurrent_weight)


def test_esn_reservoir_is_not_trained():
    torch.manual_seed(6)
    model = RecurrentModel(D, 2, controller=partial(EchoStateController, reservoir_size=13, seed=6))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["output.weight", "output.bias"]
    before = {name: buffer.clone() for name, buffer in model.controller.named_buffers()}
    assert set(before) == {"recurrent_weight", "input_weight", "bias"}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    readout = model.output.weight.clone()
    model(_inputs(6).float()).pow(2).sum().backward()
    for buffer in model.controller.buffers():
        assert buffer.grad is None and not buffer.requires_grad
    optimizer.step()
    for name, buffer in model.controller.named_buffers():
        assert torch.equal(buffer, before[name])
    assert not torch.equal(model.output.weight, readout)  # the readout does learn
    assert set(model.state_dict()) >= {"controller.recurrent_weight", "controller.input_weight"}


def test_echo_state_property_holds_below_radius_one():
    esn = EchoStateController(1, reservoir_size=40, spectral_radius=0.8, input_scaling=0.5, seed=9)
    inputs = torch.rand(3, 200, 1, generator=torch.Generator().manual_seed(9)) - 0.5
    gap = echo_state_gap(esn, inputs, generator=torch.Generator().manual_seed(10))
    assert gap.shape == (200,)
    assert gap[0] > 0.5
    assert gap[-1] < 1e-6 * gap[0]


def test_echo_state_property_can_fail_for_a_large_radius():
    """A reservoir with ρ = 3 and tiny inputs keeps two different trajectories apart."""
    esn = EchoStateController(1, reservoir_size=40, spectral_radius=3.0, input_scaling=0.01, seed=9)
    inputs = torch.rand(3, 200, 1, generator=torch.Generator().manual_seed(9)) - 0.5
    gap = echo_state_gap(esn, inputs, generator=torch.Generator().manual_seed(10))
    assert gap[-1] > 0.1


@pytest.mark.parametrize(
    "factory, match",
    [
        (partial(ElmanRNN, nonlinearity="sigmoid"), r"nonlinearity must be one of \['relu', 'tanh'\], got 'sigmoid'"),
        (partial(JordanRNN, nonlinearity="gelu"), r"nonlinearity must be one of"),
        (partial(JordanRNN, output_activation="relu6"), r"output_activation must be one of"),
        (partial(EchoStateController, spectral_radius=0.0), r"spectral_radius must lie in \(0, inf\), got 0.0"),
        (partial(EchoStateController, spectral_radius=-1.0), r"spectral_radius must lie in \(0, inf\)"),
        (partial(EchoStateController, leak_rate=0.0), r"leak_rate must lie in \(0.0, 1.0\], got 0.0"),
        (partial(EchoStateController, leak_rate=1.5), r"leak_rate must lie in \(0.0, 1.0\]"),
        (partial(EchoStateController, sparsity=1.0), r"sparsity must lie in \[0.0, 1.0\), got 1.0"),
        (partial(EchoStateController, sparsity=-0.1), r"sparsity must lie in \[0.0, 1.0\)"),
        (partial(EchoStateController, reservoir_size=0), r"reservoir_size must be a positive integer"),
        (partial(EchoStateController, spectral_radius=float("inf")), r"spectral_radius must lie in \(0, inf\), got inf"),
        (partial(EchoStateController, input_scaling=float("inf")), r"input_scaling must lie in \[0, inf\), got inf"),
        (partial(EchoStateController, bias_scaling=float("inf")), r"bias_scaling must lie in \[0, inf\), got inf"),
        # torch's own errors named neither the option nor the range ("Overflow when unpacking long long", "manual_seed
        # expected a long, but got float"), and a bool drew the reservoir of seed 1
        (partial(EchoStateController, seed=2**70), (r"seed \(of the reservoir draw\) must be an integer in "
                                                    r"\[-2\*\*63, 2\*\*64\), got 1180591620717411303424")),
        (partial(EchoStateController, seed=1.5), r"seed \(of the reservoir draw\) must be an integer .* got 1.5"),
        (partial(EchoStateController, seed=True), r"seed \(of the reservoir draw\) must be an integer .* got True"),
        (partial(GRUController, hidden_size=0), r"hidden_size must be a positive integer"),
        (partial(ElmanRNN, dropout=1.0), r"dropout must lie in \[0.0, 1.0\)"),
    ],
)
def test_bad_arguments_are_named(factory, match):
    with pytest.raises(ValueError, match=match):
        factory(D)


def test_esn_reservoir_with_no_weights_is_refused():
    with pytest.raises(ValueError, match="spectral radius 0"):
        EchoStateController(1, reservoir_size=1, sparsity=0.99, seed=0)
