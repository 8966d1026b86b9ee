"""The figures of ``memnet figures`` (memnet.figures, memnet.cli.figures), on tiny sizes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from memnet.controllers import EchoStateController, ElmanRNN, GRUController, LSTMController
from memnet.figures.access import draw_memory_access
from memnet.figures.attention import memn2n_attention, plot_memn2n_attention
from memnet.figures.composition import (
    composition_curves,
    controller_transition,
    draw_composition,
    random_rnn,
    spectral_radius,
    state_size,
)
from memnet.figures.echo_state import draw_echo_state, reservoir_args, state_distance
from memnet.figures.graph import draw_unrolled_graphs, unrolled_graph
from memnet.models.dnc import DNC
from memnet.models.memn2n import MemN2N
from memnet.models.ntm import NTM
from memnet.models.recurrent import RecurrentModel
from tasks.algorithmic import CopyTask

ROOT = Path(__file__).resolve().parents[1]


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- composition


def test_linear_composition_matches_powers_of_the_matrix():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(7, 7, generator=generator, dtype=torch.float64) / 2
    direction = torch.randn(7, generator=generator, dtype=torch.float64)
    projection = torch.randn(7, generator=generator, dtype=torch.float64)
    sweep = torch.linspace(-2, 3, 11, dtype=torch.float64)
    curves = composition_curves(lambda h: h @ weight.T, direction=direction, projection=projection,
                                sweep=sweep, steps=5)
    assert curves.shape == (6, 11)
    for k in range(6):
        closed_form = (torch.linalg.matrix_power(weight, k) @ torch.outer(direction, sweep)).T @ projection
        torch.testing.assert_close(curves[k], closed_form)


def test_controller_transition_is_the_rnn_step_with_no_input():
    rnn = random_rnn(hidden_size=6, spectral_radius=1.3, generator=torch.Generator().manual_seed(0))
    assert spectral_radius(rnn.rnn.weight_hh_l0) == pytest.approx(1.3, rel=1e-5)
    states = torch.randn(4, 6)
    expected = torch.tanh(states @ rnn.rnn.weight_hh_l0.T + rnn.rnn.bias_hh_l0 + rnn.rnn.bias_ih_l0)
    torch.testing.assert_close(controller_transition(rnn)(states), expected)


def test_lstm_transition_flattens_h_and_c_of_every_layer():
    lstm = LSTMController(3, hidden_size=5, num_layers=2)
    assert state_size(lstm) == 2 * 2 * 5
    flat = torch.randn(4, 20)
    h, c = flat[:, :10].reshape(4, 2, 5).transpose(0, 1), flat[:, 10:].reshape(4, 2, 5).transpose(0, 1)
    _, (new_h, new_c) = lstm.step(torch.zeros(4, 3), (h.contiguous(), c.contiguous()))
    expected = torch.cat([new_h.transpose(0, 1).reshape(4, 10), new_c.transpose(0, 1).reshape(4, 10)], dim=1)
    torch.testing.assert_close(controller_transition(lstm)(flat), expected)


def test_composition_figure_is_drawn_and_deterministic(tmp_path):
    trained = {"LSTM": LSTMController(2, hidden_size=4), "GRU": GRUController(2, hidden_size=3)}
    path, panels = draw_composition(tmp_path / "c.png", trained=trained, hidden_size=8, steps=3, points=21, seed=1)
    _, again = draw_composition(tmp_path / "d.png", trained=trained, hidden_size=8, steps=3, points=21, seed=1)
    assert is_png(path) and len(panels) == 5
    assert all(curves.shape == (4, 21) for curves in panels.values())
    for title in panels:
        torch.testing.assert_close(panels[title], again[title])


def test_composition_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="direction and projection"):
        composition_curves(lambda h: h, direction=torch.ones(3), projection=torch.ones(4), sweep=torch.ones(2), steps=1)


# ----------------------------------------------------------------------------- echo state


@pytest.mark.parametrize(("radius", "decays"), [(0.5, True), (3.0, False)])
def test_echo_state_distance_decays_only_for_a_contracting_reservoir(radius, decays):
    reservoir = EchoStateController(1, reservoir_size=40, spectral_radius=radius, sparsity=0.5,
                                    input_scaling=0.1, seed=2).double()
    generator = torch.Generator().manual_seed(0)
    inputs = 0.5 * torch.rand(4, 60, 1, generator=generator, dtype=torch.float64)
    first, second = (2 * torch.rand(4, 40, generator=generator, dtype=torch.float64) - 1 for _ in range(2))
    distance = state_distance(reservoir, inputs, first, second)
    assert distance.shape == (61,)
    assert (distance[-1] < 1e-6 * distance[0]) == decays
    if not decays:
        assert distance[-10:].min() > 0.1 * distance[0]


def test_echo_state_figure_reads_the_shipped_config(tmp_path):
    reservoir = reservoir_args(ROOT / "configs/esn/narma10.yaml")
    assert reservoir["spectral_radius"] == 0.9
    path, distances = draw_echo_state(tmp_path / "e.png", {**reservoir, "reservoir_size": 30}, steps=40,
                                      batch_size=2)
    assert is_png(path) and sorted(distances) == [0.9, 1.5, 3.0]
    assert distances[0.9][-1] < 1e-2 * distances[0.9][0]


def test_echo_state_config_without_a_reservoir_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"lstm/copy.yaml.*needs memnet.controllers.EchoStateController"):
        reservoir_args(ROOT / "configs/lstm/copy.yaml")


# ----------------------------------------------------------------------------- unrolled graph


def test_unrolled_graph_shares_each_parameter_across_steps(tmp_path):
    model = RecurrentModel(3, 2, controller=partial(LSTMController, hidden_size=4))
    graph = unrolled_graph(model, steps=3)
    parameters = [name for name, node in graph.nodes.items() if node.kind == "parameter"]
    assert sorted(parameters) == sorted(name for name, _ in model.named_parameters())
    for name in parameters:
        assert sorted(graph.nodes[use].step for use in graph.uses(name)) == [1, 2, 3]
    labels = {node.label: name for name, node in graph.nodes.items()}
    assert {"x(1)", "x(3)", "h(0)", "c(0)", "h(3)", "c(3)", "y(1)", "y(3)"} <= set(labels)
    assert any(graph.nodes[use].step == 2 for use in graph.uses(labels["h(1)"]))  # h(1) feeds step 2
    assert is_png(draw_unrolled_graphs(tmp_path / "g.png", {"3 steps": graph}))


def test_unrolled_graph_of_a_fused_rnn_shows_its_module_parameters():
    graph = unrolled_graph(ElmanRNN(2, hidden_size=3), steps=2)
    weight = graph.nodes["rnn.weight_hh_l0"]
    assert weight.kind == "parameter" and len(graph.uses("rnn.weight_hh_l0")) == 2


# ----------------------------------------------------------------------------- attention and memory access


def test_memn2n_attention_rows_sum_to_one_and_are_drawn(tmp_path):
    torch.manual_seed(0)
    net = MemN2N(12, 4, embedding_size=5, hops=3, memory_size=6, answer_offset=4, seed=0)
    story = torch.tensor([[5, 6, 7], [8, 9, 0], [10, 11, 6], [0, 0, 0]])  # three sentences, one empty slot
    attention, predicted = memn2n_attention(net, story, torch.tensor([9, 10]))
    assert attention.shape == (3, 4) and 0 <= predicted < 4
    torch.testing.assert_close(attention.sum(-1), torch.ones(3))
    assert (attention[:, 3] == 0).all()
    path = plot_memn2n_attention(tmp_path / "a.png", attention, sentences=["c", "b", "a"], question="q",
                                 answer="x", predicted="y", supporting=[1])
    assert is_png(path)


def test_memory_access_of_ntm_and_dnc(tmp_path):
    task = CopyTask(width=3, min_length=1, max_length=3)
    batch = task.sample_batch(torch.Generator().manual_seed(0), 2, 3)
    ntm = NTM(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=6),
              memory_size=7, word_size=5)
    dnc = DNC(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=6),
              memory_size=7, word_size=5)
    assert [is_png(p) for p in draw_memory_access(tmp_path / "ntm.png", ntm, batch)] == [True]
    paths = draw_memory_access(tmp_path / "dnc.png", dnc, batch, memory_size=9)
    assert [p.name for p in paths] == ["dnc.png", "dnc_usage_link.png"] and all(map(is_png, paths))
