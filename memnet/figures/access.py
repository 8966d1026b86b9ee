"""Memory access of a trained NTM or DNC on one example, drawn with ``memnet.plots``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from memnet.plots import first_sequence_steps, plot_dnc_memory, plot_memory_access
from memnet.utils import parameter_dtype


def draw_memory_access(
    path: str | Path, net: nn.Module, batch: dict, *, title: str = "", memory_size: int | None = None
) -> list[Path]:
    """Run ``net`` with a trace on the first sequence of ``batch``; draw its reads and writes (and, for a DNC, usage and links).

    Args:
        path: the PNG of the read and write weightings; a DNC's usage, last link matrix and read
            modes go beside it as ``<stem>_usage_link.png``.
        net: a network whose forward takes ``return_trace=True`` (``NTM``, ``DNC``).
        batch: ``inputs`` (B, T, D_in), ``targets`` (B, T, D_out), optionally ``mask`` (B, T); the inputs
            are cast to the network's dtype and device (a network trained in ``64-true`` or ``bf16-true``
            precision has float64 or bfloat16 weights, a task's batch float32). Only the first sequence's
            own steps are drawn, not its padding to a longer one (:func:`memnet.plots.first_sequence_steps`).
        title: figure title.
        memory_size: N for this run (default the network's).

    Returns:
        The paths written.
    """
    device = next((p.device for p in net.parameters()), None)
    steps = first_sequence_steps(batch)
    inputs = batch["inputs"][:1, :steps].to(device=device, dtype=parameter_dtype(net))
    kwargs = {} if memory_size is None else {"memory_size": memory_size}
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logits, trace = net(inputs, return_trace=True, **kwargs)
    finally:
        net.train(was_training)
    paths = [plot_memory_access(path, inputs=inputs[0], targets=batch["targets"][0, :steps], outputs=torch.sigmoid(logits[0]),
                                read_weights=trace.read_weights[0], write_weights=trace.write_weights[0], title=title)]
    if hasattr(trace, "usage") and hasattr(trace, "link"):
        path = Path(path)
        paths.append(plot_dnc_memory(path.with_name(f"{path.stem}_usage_link.png"), usage=trace.usage[0],
                                     link=trace.link[0, -1], read_modes=trace.read_modes[0], title=title))
    return paths
