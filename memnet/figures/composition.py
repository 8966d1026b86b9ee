"""Repeated function composition: why long-term dependencies are hard (Goodfellow et al. 2016, §10.7).

A recurrent network with no input applies the same transition h(t) = f(h(t−1)) again
and again. Sweep the initial state along one direction d of the state space,
h(0) = s·d for s on a grid, and look at one projection p·h(k) of the state after
k applications: with every composition the curve s ↦ p·h(k) gets flatter almost
everywhere and steeper in a few places, so the derivative ∂h(k)/∂h(0) mostly
vanishes and sometimes explodes. For a linear map h(t) = W h(t−1) the curve is the
straight line s ↦ s·(pᵀ Wᵏ d), whose slope shrinks or grows like ρ(W)ᵏ.

    curves = composition_curves(controller_transition(controller), direction=d, projection=p,
                                sweep=torch.linspace(-20, 20, 401), steps=5)   # (K + 1, S)

Axes:  s - swept points, d - flat state features, k - compositions
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import einsum
from torch import nn

from memnet.controllers import Controller, ElmanRNN
from memnet.figures.style import plt, save
from memnet.utils import is_integer

Transition = Callable[[torch.Tensor], torch.Tensor]  # flat states (S, D) -> flat states (S, D)


def composition_curves(
    transition: Transition,
    *,
    direction: torch.Tensor,
    projection: torch.Tensor,
    sweep: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """p·h(k) for h(0) = s·d swept over s, after k = 0, 1, …, ``steps`` applications of the transition.

    Args:
        transition: one step with no input, flat states (S, D) -> (S, D).
        direction: (D,) the direction d the initial state is swept along.
        projection: (D,) the projection p to one dimension.
        sweep: (S,) the coordinates s of the initial states along d.
        steps: K, the most compositions drawn.

    Returns:
        (K + 1, S): row k is p·h(k) at every swept point (row 0 is p·h(0) = s·(p·d)).
    """
    if direction.dim() != 1 or projection.shape != direction.shape:
        raise ValueError(f"direction and projection must both be (D,), got {tuple(direction.shape)} "
                         f"and {tuple(projection.shape)}")
    if sweep.dim() != 1:
        raise ValueError(f"sweep must be (S,), got {tuple(sweep.shape)}")
    if not is_integer(steps) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    states = einsum(sweep, direction, "s, d -> s d")
    curves = [einsum(states, projection, "s d, d -> s")]
    with torch.no_grad():
        for _ in range(steps):
            states = transition(states)
            curves.append(einsum(states, projection, "s d, d -> s"))
    return torch.stack(curves)


def state_size(controller: Controller) -> int:
    """D, the number of features of one sequence's state (all state tensors flattened together)."""
    return sum(part.numel() for part in _parts(controller.initial_state(1)))


def controller_transition(controller: Controller) -> Transition:
    """The controller's step with a zero input, on flat states (S, D) -> (S, D).

    The controller's state may be a tensor or a (nested) tuple of tensors with the batch
    on any axis (e.g. an LSTM's (h, c), each (L, B, H)); the flat state concatenates
    every tensor's entries for one sequence, in the order of ``initial_state``.
    """
    one, two = controller.initial_state(1), controller.initial_state(2)
    batch_axes = [_batch_axis(a, b) for a, b in zip(_parts(one), _parts(two))]
    template = one
    parameter = next(controller.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32

    def transition(flat: torch.Tensor) -> torch.Tensor:
        batch = flat.shape[0]
        state = _unflatten(flat.to(dtype), template, batch_axes, batch)
        zero = torch.zeros(batch, controller.input_size, dtype=dtype, device=flat.device)
        _, state = controller.step(zero, state)
        return _flatten(state, batch_axes).to(flat.dtype)

    return transition


def _parts(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [part for item in state for part in _parts(item)]


def _batch_axis(one: torch.Tensor, two: torch.Tensor) -> int:
    """The axis along which ``initial_state(1)`` and ``initial_state(2)`` differ: the batch axis."""
    axes = [i for i, (a, b) in enumerate(zip(one.shape, two.shape)) if a != b]
    if len(axes) != 1:
        raise ValueError(f"cannot tell the batch axis of a state part of shape {tuple(one.shape)}")
    return axes[0]


def _flatten(state: Any, batch_axes: list[int]) -> torch.Tensor:
    parts = [part.movedim(axis, 0).reshape(part.shape[axis], -1) for part, axis in zip(_parts(state), batch_axes)]
    return torch.cat(parts, dim=1)


def _unflatten(flat: torch.Tensor, template: Any, batch_axes: list[int], batch: int) -> Any:
    offset = 0
    axes = iter(batch_axes)

    def build(item: Any) -> Any:
        nonlocal offset
        if isinstance(item, torch.Tensor):
            axis = next(axes)
            width = item.numel()  # the template has batch 1
            moved = item.movedim(axis, 0).shape[1:]
            part = flat[:, offset:offset + width].reshape(batch, *moved).movedim(0, axis)
            offset += width
            return part
        built = [build(x) for x in item]
        return type(item)(*built) if hasattr(item, "_fields") else type(item)(built)

    return build(template)


def random_rnn(
    *, hidden_size: int = 100, spectral_radius: float, generator: torch.Generator, nonlinearity: str = "tanh"
) -> ElmanRNN:
    """A vanilla RNN h(t) = f(W h(t−1) + b) whose random W (Gaussian) is scaled to spectral radius ρ(W).

    The bias b is drawn from N(0, 0.1²) so the curves are not odd functions of s; the
    input weights do not matter (the transition has no input).
    """
    if not spectral_radius > 0:
        raise ValueError(f"spectral_radius must be positive, got {spectral_radius!r}")
    rnn = ElmanRNN(1, hidden_size=hidden_size, nonlinearity=nonlinearity)
    weight = torch.randn(hidden_size, hidden_size, generator=generator, dtype=torch.float64)
    weight = weight * (spectral_radius / torch.linalg.eigvals(weight).abs().max())
    bias = 0.1 * torch.randn(hidden_size, generator=generator)
    with torch.no_grad():
        rnn.rnn.weight_hh_l0.copy_(weight.float())
        rnn.rnn.bias_hh_l0.copy_(bias)
        rnn.rnn.bias_ih_l0.zero_()
    return rnn.eval()


def spectral_radius(matrix: torch.Tensor) -> float:
    """ρ(W), the largest |eigenvalue| of a square matrix (N, N)."""
    return float(torch.linalg.eigvals(matrix.detach().double()).abs().max())


def draw_composition(
    path: str | Path,
    *,
    trained: dict[str, Controller] | None = None,
    radii: Sequence[float] = (0.8, 1.0, 1.5),
    hidden_size: int = 100,
    steps: int = 5,
    sweep_range: float = 20.0,
    points: int = 801,
    seed: int = 0,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """The composition figure: one panel per random RNN spectral radius, then one per trained controller.

    Args:
        path: the PNG to write.
        trained: title -> a trained controller (e.g. an LSTM and a GRU), drawn after the random RNNs.
        radii: ρ(W) of the random vanilla RNNs (below, near and above 1).
        hidden_size: units of the random RNNs (100 in the book's figure).
        steps: K, the most compositions (one curve for each k = 0, …, K).
        sweep_range: s runs over [−sweep_range, sweep_range].
        points: S, the swept points.
        seed: draws the random RNNs, each panel's direction d and projection p.

    Returns:
        The path written and, per panel title, its (K + 1, S) curves.
    """
    generator = torch.Generator().manual_seed(seed)
    sweep = torch.linspace(-sweep_range, sweep_range, points, dtype=torch.float64)
    panels: dict[str, torch.Tensor] = {}
    controllers: dict[str, nn.Module] = {}
    for radius in radii:
        rnn = random_rnn(hidden_size=hidden_size, spectral_radius=radius, generator=generator)
        controllers[f"vanilla RNN, {hidden_size} units, ρ(W) = {radius:g}"] = rnn
    controllers.update(trained or {})
    for title, controller in controllers.items():
        size = state_size(controller)
        direction = torch.randn(size, generator=generator, dtype=torch.float64)
        projection = torch.randn(size, generator=generator, dtype=torch.float64)
        direction, projection = direction / direction.norm(), projection / projection.norm()
        was_training = controller.training
        controller.eval()
        panels[title] = composition_curves(controller_transition(controller), direction=direction,
                                           projection=projection, sweep=sweep, steps=steps)
        controller.train(was_training)
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    colours = plt.cm.viridis(torch.linspace(0, 0.9, steps + 1).tolist())
    for ax, (title, curves) in zip(axes.flat, panels.items()):
        for k, curve in enumerate(curves):
            ax.plot(sweep, curve, color=colours[k], linewidth=1.2, label=f"k = {k}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("initial state's coordinate s along d")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("p · h(k)")
    axes.flat[0].legend(fontsize=7, title="compositions", title_fontsize=7)
    fig.suptitle("Repeated composition of the transition with no input: h(k) = f(f(…f(s·d)))", fontsize=11)
    return save(fig, path), panels
