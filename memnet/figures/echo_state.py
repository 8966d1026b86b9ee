"""The echo-state property, seen: does a reservoir forget where it started?

Two copies of one reservoir (same W, W_in, b) start from different states x_a(0), x_b(0)
and receive the same input u(1), u(2), …; the distance ‖x_a(t) − x_b(t)‖ is drawn against t.
With the echo-state property (Jaeger 2001) it decays to 0: the state becomes a function of
the input history alone, which is what lets a trained read-out use it. A spectral radius
ρ(W) below 1 gives it for most inputs; well above 1 the autonomous dynamics take over and
the two trajectories stay apart. Beside the distances, the eigenvalues of each reservoir's W
on the complex plane, with the unit circle.

Axes:  b - batch, t - time, n - reservoir units
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from memnet.controllers import EchoStateController
from memnet.figures.style import plt, save

DISTANCE_FLOOR = 1e-12  # distances are drawn on a log axis; an exact 0 is drawn at this floor


def reservoir_args(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``EchoStateController`` init_args of a resolved ``memnet fit`` config (e.g. ``configs/esn/narma10.yaml``).

    Args:
        config: the config as a mapping, its ``extends`` already resolved (``memnet.cli.configs.load_config``).
        source: where it came from, for error messages.

    Looks under ``model.init_args.net.init_args.controller``; raises ``ValueError`` naming the
    source and the field when the config holds no echo-state controller.
    """
    node: Any = config
    for key in ("model", "init_args", "net", "init_args", "controller"):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"{source}: no model.init_args.net.init_args.controller (missing {key!r})")
        node = node[key]
    class_path = node.get("class_path", "") if isinstance(node, Mapping) else ""
    if class_path.rsplit(".", 1)[-1] != EchoStateController.__name__:
        raise ValueError(f"{source}: model.init_args.net.init_args.controller is {class_path!r}; "
                         f"the echo-state figure needs memnet.controllers.{EchoStateController.__name__}")
    return dict(node.get("init_args") or {})


def state_distance(
    controller: EchoStateController, inputs: torch.Tensor, first: torch.Tensor, second: torch.Tensor
) -> torch.Tensor:
    """‖x_a(t) − x_b(t)‖ of one reservoir run from two initial states on the same input.

    Args:
        controller: the reservoir.
        inputs: (B, T, D) the common input.
        first: (B, N) the first initial state x_a(0).
        second: (B, N) the second initial state x_b(0).

    Returns:
        (T + 1,) the Euclidean distance at t = 0, 1, …, T, averaged over the batch.
    """
    with torch.no_grad():
        runs = [controller(inputs, start)[0][..., : controller.reservoir_size] for start in (first, second)]
    start = (first - second).norm(dim=-1).mean(dim=0, keepdim=True)
    return torch.cat([start, (runs[0] - runs[1]).norm(dim=-1).mean(dim=0)])


def draw_echo_state(
    path: str | Path,
    reservoir: dict[str, Any],
    *,
    input_size: int = 1,
    radii: Sequence[float] | None = None,
    steps: int = 200,
    batch_size: int = 8,
    input_range: tuple[float, float] = (0.0, 0.5),
    seed: int = 0,
) -> tuple[Path, dict[float, torch.Tensor]]:
    """The echo-state figure: state distances against time (left), eigenvalues of W (right).

    Args:
        path: the PNG to write.
        reservoir: ``EchoStateController`` keyword arguments (see ``reservoir_args``).
        input_size: D of the reservoir's input.
        radii: spectral radii to compare (default: the config's and 1.5, 3.0); the reservoir
            is otherwise the same draw (same seed, sparsity, scalings).
        steps: T, the input steps.
        batch_size: B, input sequences the distance is averaged over.
        input_range: the input is uniform in this range (NARMA-10's is [0, 0.5]).
        seed: draws the input and the initial states (uniform in [−1, 1]^N).

    Returns:
        The path written and, per spectral radius, the (T + 1,) distances.
    """
    reservoir = dict(reservoir)
    shipped = float(reservoir.get("spectral_radius", 0.9))
    radii = list(radii) if radii is not None else [shipped, 1.5, 3.0]
    generator = torch.Generator().manual_seed(seed)
    low, high = input_range
    inputs = low + (high - low) * torch.rand(batch_size, steps, input_size, generator=generator, dtype=torch.float64)
    distances: dict[float, torch.Tensor] = {}
    eigenvalues: dict[float, torch.Tensor] = {}
    for radius in radii:
        controller = EchoStateController(input_size, **{**reservoir, "spectral_radius": radius}).double()
        size = controller.reservoir_size
        first, second = (2 * torch.rand(batch_size, size, generator=generator, dtype=torch.float64) - 1
                         for _ in range(2))
        distances[radius] = state_distance(controller, inputs, first, second)
        eigenvalues[radius] = torch.linalg.eigvals(controller.recurrent_weight.double())

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.5, 1]})
    colours = {radius: f"C{i}" for i, radius in enumerate(radii)}
    for radius, distance in distances.items():
        label = f"ρ(W) = {radius:g}" + (" (the config's)" if radius == shipped else "")
        left.semilogy(range(len(distance)), distance.clamp_min(DISTANCE_FLOOR), label=label, color=colours[radius])
    left.set(xlabel="time step t", ylabel="‖x_a(t) − x_b(t)‖",
             title=f"two copies of a {size}-unit reservoir, different starts, the same input")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    circle = torch.linspace(0, 2 * torch.pi, 256)
    right.plot(torch.cos(circle), torch.sin(circle), "k--", linewidth=1, label="unit circle")
    for radius, values in sorted(eigenvalues.items(), reverse=True):
        right.scatter(values.real, values.imag, s=4, alpha=0.6, color=colours[radius], label=f"ρ(W) = {radius:g}")
    right.set(xlabel="Re λ", ylabel="Im λ", title="eigenvalues λ of W")
    right.set_aspect("equal")
    right.legend(fontsize=7, markerscale=3, loc="upper right")
    right.grid(alpha=0.3)
    return save(fig, path), distances
