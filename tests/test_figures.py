"""The figures of ``memnet figures`` (memnet.figures, memnet.cli.figures), on tiny sizes."""

from __future__ import annotations

from dataclasses import replace
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
    from memnet.cli.configs import load_config

    config = ROOT / "configs/esn/narma10.yaml"
    reservoir = reservoir_args(load_config(config), str(config))
    assert reservoir["spectral_radius"] == 0.9
    path, distances = draw_echo_state(tmp_path / "e.png", {**reservoir, "reservoir_size": 30}, steps=40,
                                      batch_size=2)
    assert is_png(path) and sorted(distances) == [0.9, 1.5, 3.0]
    assert distances[0.9][-1] < 1e-2 * distances[0.9][0]


def test_echo_state_config_without_a_reservoir_is_named(tmp_path):
    from memnet.cli.configs import load_config

    config = ROOT / "configs/lstm/copy.yaml"
    with pytest.raises(ValueError, match=r"lstm/copy.yaml.*needs memnet.controllers.EchoStateController"):
        reservoir_args(load_config(config), str(config))


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


def test_memory_access_of_a_float64_dnc_from_a_float32_batch(tmp_path):
    """A network rebuilt from a ``64-true`` run has float64 weights; the task's batch is float32."""
    task = CopyTask(width=3, min_length=1, max_length=3)
    batch = task.sample_batch(torch.Generator().manual_seed(0), 2, 3)
    assert batch["inputs"].dtype == torch.float32
    dnc = DNC(task.input_size, task.output_size, controller=partial(LSTMController, hidden_size=6),
              memory_size=7, word_size=5).double()
    paths = draw_memory_access(tmp_path / "dnc.png", dnc, batch)
    assert [p.name for p in paths] == ["dnc.png", "dnc_usage_link.png"] and all(map(is_png, paths))


# ----------------------------------------------------------------------------- the command


def quick_roles(monkeypatch, steps: int = 3) -> None:
    """Train the command's small models for a few steps only (the real recipes take seconds each)."""
    from memnet.cli import figures as command

    for name, role in list(command.ROLES.items()):
        if isinstance(role.train, command.Recipe):
            monkeypatch.setitem(command.ROLES, name, command.Role(role.kind, role.fits,
                                                                  replace(role.train, steps=steps)))


def test_memnet_figures_only_composition_through_the_cli(tmp_path, monkeypatch, capsys):
    from memnet.cli import main

    quick_roles(monkeypatch)
    main(["figures", "--only", "composition", "--out", str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["composition.png"]
    assert is_png(tmp_path / "composition.png")
    out = capsys.readouterr().out
    assert "lstm: trained a RecurrentModel with an LSTMController" in out and "gru: trained" in out


def test_a_copy_model_as_repeat_copy_checkpoint_is_named(tmp_path, monkeypatch, capsys):
    """An NTM of copy given as ntm-repeat-copy.ckpt stopped with 'CopyTask.sample_batch() got an unexpected keyword
    argument 'repeats'', no file named."""
    from memnet.cli import figures as command

    task = command._copy_task()
    net = command._ntm(task).eval()
    monkeypatch.setitem(command.ROLES, "ntm-repeat-copy", command.Role("an NTM of repeat copy",
                                                                       lambda n: isinstance(n, NTM),
                                                                       lambda seed: (net, task, "given")))
    with pytest.raises(command.FigureError, match="ntm-repeat-copy holds an NTM with an LSTMController trained on "
                                                  "copy; the ntm-repeat-copy figure needs an NTM of repeat copy"):
        command.draw(["ntm-repeat-copy"], out=tmp_path, seed=0, log=lambda line: None)


def test_only_given_twice_draws_both_lists(tmp_path, monkeypatch):
    """``--only graph --only echo-state`` drew echo-state alone: the second --only replaced the first, unsaid."""
    from memnet.cli import figures as command

    asked: list[list[str]] = []
    monkeypatch.setattr(command, "draw", lambda names, **kwargs: asked.append(list(names)) or [])
    command.main(["--only", "graph", "--only", "echo-state", "composition", "--out", str(tmp_path)])
    assert asked == [["graph", "echo-state", "composition"]]


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_threads_below_one_is_refused_in_one_line(tmp_path, capsys, threads):
    """--threads 0 stopped with torch's 'set_num_threads expects a positive integer' traceback."""
    from memnet.cli import figures as command

    with pytest.raises(SystemExit) as exit_info:
        command.main(["--only", "graph", "--threads", threads, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"--threads must be a positive number of threads, got {threads}" in capsys.readouterr().err


def test_memnet_figures_unknown_name_lists_the_known_ones(tmp_path, capsys):
    from memnet.cli import main

    with pytest.raises(SystemExit):
        main(["figures", "--only", "composition", "compositon", "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert "unknown figure 'compositon'" in error
    assert "known figures: composition, echo-state, graph, gradient" in error
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


RECURRENT_CONFIG = """
model:
  class_path: memnet.lightning.SequenceModule
  init_args:
    net:
      class_path: memnet.models.recurrent.RecurrentModel
      init_args:
        controller:
          class_path: memnet.controllers.{controller}
          init_args: {{hidden_size: 5}}
data:
  class_path: tasks.algorithmic.AlgorithmicDataModule
  init_args:
    task:
      class_path: tasks.algorithmic.CopyTask
      init_args: {{width: 3, min_length: 1, max_length: 3}}
    val_lengths: [3]
"""


def write_checkpoint(folder: Path, role: str, controller: type) -> Path:
    """``<role>.ckpt`` holding a RecurrentModel with ``controller`` (5 units, copy of width 3), and its ``<role>.yaml``."""
    from memnet.lightning import SequenceModule

    task = CopyTask(width=3, min_length=1, max_length=3)
    (folder / f"{role}.yaml").write_text(RECURRENT_CONFIG.format(controller=controller.__name__))
    net = RecurrentModel(task.input_size, task.output_size, controller=partial(controller, hidden_size=5))
    torch.save({"state_dict": SequenceModule(net).state_dict()}, folder / f"{role}.ckpt")
    return folder / f"{role}.ckpt"


def test_checkpoint_of_the_wrong_kind_says_which_kind_is_needed(tmp_path, capsys):
    from memnet.cli import main

    write_checkpoint(tmp_path, "lstm", GRUController)
    with pytest.raises(SystemExit):
        main(["figures", "--only", "composition", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert f"{tmp_path / 'lstm.ckpt'} holds a RecurrentModel with a GRUController" in error
    assert "the composition figure needs a RecurrentModel with an LSTMController" in error


def test_checkpoint_of_the_right_kind_is_drawn_from(tmp_path, monkeypatch, capsys):
    from memnet.cli import main

    quick_roles(monkeypatch)
    path = write_checkpoint(tmp_path, "lstm", LSTMController)
    main(["figures", "--only", "composition", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert f"lstm: {path}" in out and "gru: trained" in out  # no gru.ckpt: trained briefly
    assert is_png(tmp_path / "out" / "composition.png")


def test_checkpoints_folder_must_exist(tmp_path, capsys):
    from memnet.cli import main

    with pytest.raises(SystemExit):
        main(["figures", "--only", "graph", "--checkpoints", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert f"--checkpoints: {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err


def test_every_figure_of_the_command_writes_its_pngs(tmp_path, monkeypatch):
    from memnet.cli import figures as command

    quick_roles(monkeypatch)
    monkeypatch.setattr(command, "ERROR_LENGTHS", (0.5, 1))
    monkeypatch.setattr(command, "ERROR_SEQUENCES", 4)
    names = [name for name in command.FIGURES if name != "memn2n-attention"]
    logged: list[str] = []
    written = command.draw(names, out=tmp_path, seed=0, log=logged.append)
    expected = {"composition.png", "echo_state.png", "unrolled_graph.png", "gradient_through_time.png",
                "ntm_copy_memory_access.png", "ntm_repeat_copy_memory_access.png", "dnc_copy_memory_access.png",
                "dnc_copy_memory_access_usage_link.png", "dnc_repeat_copy_memory_access.png",
                "dnc_repeat_copy_memory_access_usage_link.png", "ntm_copy_error_vs_length.png"}
    assert {p.name for p in written} == expected
    assert all(is_png(p) for p in written)
    assert sum("trained" in line for line in logged) == 7  # each model trained once, then reused


def test_captions_name_the_task_a_model_was_trained_on_not_the_role(tmp_path, monkeypatch):
    """An ``ntm-copy`` checkpoint is any NTM (Role.fits): one trained on repeat copy was drawn under the titles
    'NTM on copy' (error against length) and 'trained on copy' (gradient through time), which it was not."""
    from memnet.cli import figures as command

    quick_roles(monkeypatch)
    task = command._repeat_copy_task()
    net = command._ntm(task).eval()  # untrained will do: the captions are what is tested
    monkeypatch.setitem(command.ROLES, "ntm-copy", command.Role("an NTM", lambda n: isinstance(n, NTM),
                                                                lambda seed: (net, task, "given")))
    monkeypatch.setattr(command, "ERROR_LENGTHS", (1,))
    monkeypatch.setattr(command, "ERROR_SEQUENCES", 2)
    titles: list[str] = []
    monkeypatch.setattr(command, "plot_error_vs_length", lambda path, **kwargs: titles.append(kwargs["title"]) or path)
    monkeypatch.setattr(command, "plot_gradient_panels", lambda path, panels, **kwargs: titles.extend(panels) or path)
    command.draw(["error-vs-length", "gradient"], out=tmp_path, seed=0, log=lambda line: None)
    assert "NTM on repeat copy" in titles
    trained = [title for title in titles if title.startswith("trained")]
    assert len(trained) == 1 and trained[0].startswith("trained on RNN copy, LSTM copy, GRU copy, NTM repeat copy ")
    assert "(loss at the last step of sequences of twice the training length)" in trained[0]


BABI_ARCHIVE = ROOT.parent / "shared" / "data" / "babi" / "tasks_1-20_v1-2.tar.gz"


@pytest.mark.skipif(not BABI_ARCHIVE.is_file(), reason=f"bAbI archive not found at {BABI_ARCHIVE}")
def test_memn2n_attention_figure_on_real_babi(tmp_path, monkeypatch):
    from memnet.cli import figures as command

    monkeypatch.setenv("MEMNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEMNET_DATA_DIR", str(BABI_ARCHIVE.parent))
    monkeypatch.setattr(command, "BABI_EPOCHS", 1)
    written = command.draw(["memn2n-attention"], out=tmp_path, log=lambda line: None)
    assert [p.name for p in written] == ["memn2n_attention.png"] and is_png(written[0])


def test_memn2n_figure_without_data_says_where_to_get_it(tmp_path, monkeypatch):
    from memnet.cli import figures as command

    monkeypatch.setenv("MEMNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("tasks.babi.archive.candidate_data_dirs", lambda data_dir=None: [tmp_path / "no-babi"])
    with pytest.raises(command.FigureError, match=r"found no data: .*memnet data babi.*memn2n.ckpt"):
        command.draw(["memn2n-attention"], out=tmp_path, log=lambda line: None)


def test_a_prediction_outside_the_answers_is_named_not_an_index_error():
    from types import SimpleNamespace

    from memnet.cli.figures import _predicted_word

    vocabulary = SimpleNamespace(num_answers=2, tokens=["<pad>", "<unk>", "<eos>", "<eoq>", "garden", "kitchen",
                                                        "john", "went"],
                                 decode_answer=lambda c: ["garden", "kitchen"][c])
    net = SimpleNamespace(answer_offset=4)
    # columns: the 2 answers, the 4 specials, the other words (tokens 6, 7), then the time words
    assert [_predicted_word(vocabulary, net, c) for c in (1, 2, 6, 7, 9)] == [
        "kitchen", "<pad> (not an answer)", "john (not an answer)", "went (not an answer)",
        "time word 1 (not an answer)"]


def test_attention_on_nil_slots_is_drawn_as_its_own_row(tmp_path, monkeypatch):
    """With ``empty_memory: nil`` the slots past the story keep part of each hop's attention: the figure shows
    it in an "(empty slots)" row, so that every hop's column sums to 1."""
    import matplotlib.pyplot as plt

    from memnet.figures import attention as figure

    torch.manual_seed(0)
    net = MemN2N(12, 4, embedding_size=5, hops=3, memory_size=6, answer_offset=4, seed=0, empty_memory="nil")
    story = torch.tensor([[5, 6, 7], [8, 9, 0], [10, 11, 6], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    attention, _ = memn2n_attention(net, story, torch.tensor([9, 10]))
    assert (attention[:, 3:].sum(-1) > 0.01).all()
    monkeypatch.setattr(figure, "save", lambda fig, path: fig)
    drawn = plot_memn2n_attention(tmp_path / "a.png", attention, sentences=["c", "b", "a"], question="q",
                                  answer="x", predicted="y")
    ax = drawn.axes[0]
    image = torch.as_tensor(ax.images[0].get_array())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c", "(empty slots)"]
    torch.testing.assert_close(image.sum(0), torch.ones(3))
    plt.close(drawn)


def test_a_linear_start_models_scores_are_drawn_as_scores_and_said_to_be(tmp_path, monkeypatch):
    """In its linear start a MemN2N attends with the scores u·m_i, no softmax: once drawn on the 0-1 scale
    of a softmax, clipped, with nothing saying so."""
    import matplotlib.pyplot as plt

    from memnet.figures import attention as figure

    torch.manual_seed(0)
    net = MemN2N(12, 4, embedding_size=5, hops=3, memory_size=6, answer_offset=4, seed=0, linear_start=True,
                 init_std=1.0)
    story = torch.tensor([[5, 6, 7], [8, 9, 0], [10, 11, 6], [0, 0, 0]])
    attention, _ = memn2n_attention(net, story, torch.tensor([9, 10]))
    assert float(attention.abs().max()) > 1 and (attention[:, 3] == 0).all()  # scores, 0 on the empty slot
    monkeypatch.setattr(figure, "save", lambda fig, path: fig)
    drawn = plot_memn2n_attention(tmp_path / "a.png", attention, sentences=["c", "b", "a"], question="q",
                                  answer="x", predicted="y", softmax=False)
    ax = drawn.axes[0]
    low, high = ax.images[0].get_clim()
    assert low <= float(attention.min()) and high >= float(attention.max()) > 1  # the scale holds every score
    assert drawn.axes[1].get_ylabel() == "scores, linear start: no softmax"  # the colour bar
    assert ax.get_title().endswith("(scores, linear start: no softmax)")
    plt.close(drawn)
    softmax = plot_memn2n_attention(tmp_path / "b.png", attention.softmax(-1), sentences=["c", "b", "a"],
                                    question="q", answer="x", predicted="y")
    assert softmax.axes[0].images[0].get_clim() == (0, 1) and "linear start" not in softmax.axes[0].get_title()
    plt.close(softmax)


@pytest.mark.skipif(not BABI_ARCHIVE.is_file(), reason=f"bAbI archive not found at {BABI_ARCHIVE}")
def test_memn2n_attention_rows_are_the_sentences_in_memory_when_the_net_has_more_slots(tmp_path, monkeypatch):
    """The data module keeps the story's last data.memory_size sentences; a net built with more slots must not
    label its rows with older sentences that never reached the memory."""
    from types import SimpleNamespace

    from memnet.cli import figures as command
    from memnet.models.memn2n import MemN2N
    from tasks.babi.data import BabiDataModule

    monkeypatch.setenv("MEMNET_CACHE_DIR", str(tmp_path / "cache"))
    data = BabiDataModule(data_dir=str(BABI_ARCHIVE.parent), tasks=2, memory_size=3, batch_size=4)
    data.setup("test")
    net = MemN2N(len(data.vocabulary.tokens), data.vocabulary.num_answers, embedding_size=8, hops=2, memory_size=20,
                 answer_offset=4)
    drawn = {}
    monkeypatch.setattr(command, "plot_memn2n_attention",
                        lambda path, attention, **kwargs: drawn.update(attention=attention, **kwargs) or path)
    command.figure_memn2n_attention(tmp_path, SimpleNamespace(get=lambda *names: (net, data)), seed=0)
    assert len(drawn["sentences"]) == drawn["attention"].shape[-1] == 3  # the 3 sentences in memory, newest first
    assert drawn["softmax"] is True
    net.softmax_enabled.fill_(False)  # a checkpoint still in its linear start: its scores are drawn as scores
    command.figure_memn2n_attention(tmp_path, SimpleNamespace(get=lambda *names: (net, data)), seed=0)
    assert drawn["softmax"] is False
