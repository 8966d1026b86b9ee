"""The unfolded computational graph of a recurrent network, traced from the real module.

``torch.fx`` traces ``step`` of a memnet controller or model (anything with
``initial_state`` and ``step``) called ``steps`` times in a row, so the graph is the
one PyTorch runs, not a drawing of it. Every parameter appears once, as its own node,
with an edge to each operation of each time step that reads it: the unrolled graph of
the textbook (Goodfellow et al. 2016, §10.1), where the same weights are shared across time.
The picture is drawn with matplotlib alone (no graphviz).

    graph = unrolled_graph(net, steps=3)          # an UnrolledGraph: nodes, edges, steps
    draw_unrolled_graphs("graph.png", {"one step": unrolled_graph(controller, steps=1), ...})

Node kinds: ``input`` x(t), ``state`` h(0) and the states after each step, ``output`` y(t),
``parameter`` (shared), ``op`` (every other traced operation; item selections of a tuple
are folded into their source).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn

from memnet.figures.style import plt, save
from memnet.utils import is_integer

KIND_COLOURS = {"input": "#cfe2f3", "state": "#d9ead3", "output": "#e6d0ee", "parameter": "#fce5cd", "op": "#eeeeee"}


def mark_state(value: torch.Tensor, name: str, step: int) -> torch.Tensor:
    """Identity; in a traced graph it names a state tensor (``name`` after ``step`` steps)."""
    return value


def mark_output(value: torch.Tensor, step: int) -> torch.Tensor:
    """Identity; in a traced graph it names the output y(``step``)."""
    return value


torch.fx.wrap("mark_state")
torch.fx.wrap("mark_output")


@dataclass
class GraphNode:
    """One node of the drawing: its label, kind and time step (0 for the initial state, None for a parameter)."""

    name: str
    label: str
    kind: str
    step: int | None


@dataclass
class UnrolledGraph:
    """The traced graph, reduced to what the drawing needs.

    Attributes:
        nodes: name -> node, in the traced order.
        edges: (source name, target name) pairs.
        steps: the number of unrolled steps.
    """

    nodes: dict[str, GraphNode] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    steps: int = 1

    def uses(self, name: str) -> list[str]:
        """The nodes that read node ``name``."""
        return [target for source, target in self.edges if source == name]


class _Unrolled(nn.Module):
    """``net.step`` applied ``steps`` times; forward(inputs (B, T, D), initial state parts as a tuple)."""

    def __init__(self, net: nn.Module, steps: int, state_names: list[str], template: Any) -> None:
        super().__init__()
        self.net = net
        self.steps = steps
        self.state_names = state_names
        self.template = template

    def forward(self, inputs: torch.Tensor, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        state = _rebuild(self.template, iter([parts[i] for i in range(len(self.state_names))]))
        outputs = []
        for t in range(1, self.steps + 1):
            output, state = self.net.step(inputs[:, t - 1], state)
            parts = [mark_state(part, name, t) for part, name in zip(_parts(state), self.state_names)]
            state = _rebuild(self.template, iter(parts))
            outputs.append(mark_output(output, t))
        return tuple(outputs)


def _parts(state: Any) -> list[Any]:
    if isinstance(state, (tuple, list)):
        return [part for item in state for part in _parts(item)]
    return [state]


def _rebuild(template: Any, parts: Any) -> Any:
    if isinstance(template, (tuple, list)):
        built = [_rebuild(item, parts) for item in template]
        return type(template)(*built) if hasattr(template, "_fields") else type(template)(built)
    return next(parts)


def state_names(state: Any) -> list[str]:
    """Names of a state's tensors: ``h`` for a single tensor, ``h`` and ``c`` for an LSTM's pair, else s1, s2, …"""
    count = len(_parts(state))
    if count == 1:
        return ["h"]
    if count == 2:
        return ["h", "c"]
    return [f"s{i + 1}" for i in range(count)]


def unrolled_graph(net: nn.Module, *, steps: int = 3) -> UnrolledGraph:
    """Trace ``steps`` calls of ``net.step`` with ``torch.fx`` and reduce the graph for drawing.

    Args:
        net: a controller or model with ``initial_state(batch_size)`` and ``step(x, state)``.
        steps: T, the unrolled steps.

    Returns:
        The ``UnrolledGraph``: inputs x(1..T), the initial state, every traced operation, the
        state after each step, the outputs y(1..T), and each parameter once.
    """
    if not (hasattr(net, "initial_state") and hasattr(net, "step")):
        raise TypeError(f"net must have initial_state() and step(); {type(net).__name__} has not")
    if not is_integer(steps) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    template = net.initial_state(1)
    names = state_names(template)
    wrapper = _Unrolled(net, steps, names, template)
    traced = torch.fx.symbolic_trace(wrapper)
    graph = UnrolledGraph(steps=steps)
    parameters = dict(net.named_parameters())
    alias: dict[str, str] = {}  # folded node -> the node it stands for
    step = 1
    placeholders = [node.name for node in traced.graph.nodes if node.op == "placeholder"]  # inputs, parts

    def source(node: torch.fx.Node) -> str:
        return alias.get(node.name, node.name)

    def add(name: str, label: str, kind: str, node_step: int | None, reads: list[torch.fx.Node]) -> None:
        graph.nodes[name] = GraphNode(name, label, kind, node_step)
        for read in reads:
            if source(read) in graph.nodes and (source(read), name) not in graph.edges:
                graph.edges.append((source(read), name))

    for node in traced.graph.nodes:
        reads = list(node.all_input_nodes)
        if node.op == "placeholder":
            continue
        if node.op == "call_function" and node.target is operator.getitem and node.args[0].name in placeholders:
            index = node.args[1]
            if node.args[0].name == placeholders[0]:  # inputs[:, t − 1]
                add(node.name, f"x({index[1] + 1})", "input", index[1] + 1, [])
            else:  # parts[i]
                add(node.name, f"{names[index]}(0)", "state", 0, [])
        elif node.op == "get_attr":
            target = node.target.removeprefix("net.")
            if target in graph.nodes:
                alias[node.name] = target
            else:
                add(target, _short(target), "parameter", None, [])
                alias[node.name] = target
        elif node.op == "call_function" and node.target is mark_state:
            add(node.name, f"{node.args[1]}({node.args[2]})", "state", node.args[2], reads)
            step = node.args[2] + 1
        elif node.op == "call_function" and node.target is mark_output:
            add(node.name, f"y({node.args[1]})", "output", node.args[1], reads)
        elif node.op == "call_function" and node.target is operator.getitem:
            alias[node.name] = source(node.args[0])
        elif node.op in ("call_function", "call_method", "call_module"):
            if node.op == "call_module":
                module = node.target.removeprefix("net.")
                label = f"{module}\n{type(wrapper.get_submodule(node.target)).__name__}"
                for own in wrapper.get_submodule(node.target).named_parameters(recurse=False):
                    qualified = f"{module}.{own[0]}" if module else own[0]
                    if qualified in parameters and qualified not in graph.nodes:
                        add(qualified, _short(qualified), "parameter", None, [])
            else:
                label = getattr(node.target, "__name__", str(node.target))
            add(node.name, label, "op", min(step, steps), reads)
            if node.op == "call_module":
                module = node.target.removeprefix("net.")
                for own in wrapper.get_submodule(node.target).named_parameters(recurse=False):
                    qualified = f"{module}.{own[0]}" if module else own[0]
                    graph.edges.append((qualified, node.name))
    return graph


def _short(qualified: str) -> str:
    """``controller.lstm.weight_hh_l0`` -> ``lstm.\\nweight_hh_l0`` (the last two parts, on two lines)."""
    parts = qualified.split(".")
    return "\n".join(parts[-2:]) if len(parts) > 1 else qualified


def layout(graph: UnrolledGraph) -> dict[str, tuple[float, float]]:
    """x, y of every node: time runs left to right, step by step; parameters on a row of their own on top.

    Within a step a node's column is its longest path from the nodes of earlier steps;
    nodes of one column are stacked downwards.
    """
    depth: dict[str, int] = {}
    readers: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for a, b in graph.edges:
        readers[b].append(a)
    for name, node in graph.nodes.items():  # traced order is a topological order
        if node.kind == "parameter":
            continue
        inside = [depth[a] for a in readers[name]
                  if graph.nodes[a].kind != "parameter" and graph.nodes[a].step == node.step and a in depth]
        depth[name] = 1 + max(inside) if inside else 0
    offsets, x = {}, 0.0
    for t in range(graph.steps + 1):
        offsets[t] = x
        columns = [depth[n] for n, node in graph.nodes.items() if node.step == t and n in depth]
        x += (max(columns) + 1 if columns else 0) + 0.6
    positions: dict[str, tuple[float, float]] = {}
    filled: dict[tuple[int, int], int] = {}
    for name, node in graph.nodes.items():
        if node.kind == "parameter":
            continue
        column = (node.step, depth[name])
        row = filled.get(column, 0)
        filled[column] = row + 1
        positions[name] = (offsets[node.step] + depth[name], -row)
    params = [n for n, node in graph.nodes.items() if node.kind == "parameter"]
    width = max((p[0] for p in positions.values()), default=0.0)
    for i, name in enumerate(params):
        positions[name] = (width * (i + 0.5) / max(1, len(params)), 1.6)
    return positions


def draw_graph(ax: plt.Axes, graph: UnrolledGraph, title: str) -> None:
    """Draw ``graph`` on ``ax``: coloured boxes by kind, arrows for data, thin orange arrows from shared parameters."""
    positions = layout(graph)
    for a, b in graph.edges:
        parameter = graph.nodes[a].kind == "parameter"
        ax.annotate("", xy=positions[b], xytext=positions[a],
                    arrowprops={"arrowstyle": "-|>", "color": "#e69138" if parameter else "#555555",
                                "lw": 0.6 if parameter else 1.0, "alpha": 0.55 if parameter else 0.9,
                                "shrinkA": 14, "shrinkB": 14, "connectionstyle": "arc3,rad=0.05"})
    for name, node in graph.nodes.items():
        x, y = positions[name]
        ax.text(x, y, node.label, ha="center", va="center", fontsize=7, zorder=3,
                bbox={"boxstyle": "round,pad=0.3", "facecolor": KIND_COLOURS[node.kind], "edgecolor": "#888888"})
    xs = [p[0] for p in positions.values()]
    ys = [p[1] for p in positions.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def draw_unrolled_graphs(path: str | Path, graphs: dict[str, UnrolledGraph]) -> Path:
    """One panel per graph (title -> graph), stacked, with a legend of the node kinds."""
    if not graphs:
        raise ValueError("graphs must hold at least one title -> UnrolledGraph entry")
    widths = [max(6.0, 1.1 * len(layout(g))) for g in graphs.values()]
    fig, axes = plt.subplots(len(graphs), 1, figsize=(min(18.0, max(widths)), 3.6 * len(graphs)), squeeze=False)
    for ax, (title, graph) in zip(axes[:, 0], graphs.items()):
        draw_graph(ax, graph, title)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colour, edgecolor="#888888") for colour in KIND_COLOURS.values()]
    fig.legend(handles, ["input x(t)", "state", "output y(t)", "parameter (shared across time)", "operation"],
               loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.08)
    return save(fig, path)
