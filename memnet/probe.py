"""Gradients through time: how much of a loss at the end of a sequence reaches each hidden state.

For a batch, ``gradient_through_time`` runs a network step by step and
measures ‖∂L/∂h(t)‖ for every step t, where h(t) is the state entering step t
(the initial state for t = 0) and L, by default, is the loss of the last
scored output step only. It exposes the long-term dependency problem: in a
vanilla RNN h(t) = f(W h(t−1) + U x(t)), ∂h(t)/∂h(t−1) = diag(f′) W, so the
gradient shrinks (or grows) roughly like ρ(W)^(T−t) — geometrically — while
gated cells (LSTM, GRU) and an external memory (NTM) can carry it unchanged.

    from memnet.probe import gradient_through_time, gradient_through_time_by_part, plot_gradient_curves
    norms = gradient_through_time(model, batch["inputs"], batch["targets"], mask=batch["mask"])  # (T,)
    parts = gradient_through_time_by_part(model, batch["inputs"], batch["targets"])  # part -> (T,)
    plot_gradient_curves("probe.png", {"LSTM": norms})

``GradientProbe`` is the Lightning callback (logs the curve to W&B and saves a
PNG); ``memnet probe`` (``memnet.cli.probe``) draws the comparison of several configs
(``configs/probe/``) in one figure.

Works with any network that has ``initial_state(batch_size, device=, dtype=)``
and ``step(x, state) -> (logits, state)``: ``RecurrentModel`` with any
controller, ``NTM``. A state may be a tensor or (nested) tuples of tensors.

A conditional ``RecurrentModel`` (y(t−1) → h(t)) runs as it is evaluated: fed its
own prediction after a scored step and the target after an unscored one. Its h(t)
is its whole state, ``ConditionalState(controller, prev_output)``: the fed-back
y(t−1) counts in ‖∂L/∂h(t)‖ with ``state_part: all``, though no gradient flows from
it back into h(t−1) (the prediction is fed back detached, the target is data);
``state_part: controller`` leaves it out, the controller's state alone.

The norm is over the whole state, so a model's parts add up in it (squares):
``gradient_through_time_by_part`` gives each part's own, the fields of the state (an NTM's
``controller``, ``memory``, ``read_vectors``, ``weights``). An NTM's or a DNC's h(0) holds the
initial memory M(0), under ``memory_init: constant`` (the default) every entry ``CONSTANT_INIT``
(1e-6). Content addressing's cosine divides by a slot's norm, so ∂L/∂M(0) is scaled by 1/1e-6:
it is almost all of ‖∂L/∂h(0)‖, and it says how sensitive the first step's addressing is to that
constant, not how much gradient reaches the start of the sequence. On copy (length 10, an LSTM
controller of 32, 16 × 8 memory, untrained) ‖∂L/∂M(0)‖ is 3.26 where ‖∂L/∂M(1)‖ is 0.034 and the
controller's part of h(0) 1.0e-3; with the constant at 1e-4 it is 0.090, the rest unchanged; after 300
training steps 2.8e3 for 4.4 at t = 1. Compare memory models with others from t = 1, or by part.

Axes:  b - batch, t - time, d - features
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger
from torch import nn

from memnet.training import KeyedStateCallback
from memnet.utils import (
    fitting,
    gather_objects,
    is_integer,
    logged_step,
    run_dir,
    save_figure_atomic,
    validation_count,
    validation_file_name,
)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Norms are drawn on a log axis; a norm of exactly 0 (a state that cannot
# reach the loss) is drawn at this floor instead of vanishing from the plot.
PLOT_FLOOR = 1e-30


def last_step_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each sequence's last scored step, summed over features, mean over the scored sequences.

    logits, targets (B, T, D); mask (B, T). Each sequence is scored at its own
    last step with mask 1 (sequences of one batch can end at different steps:
    repeat copy's counts), a sequence with none not at all (nor counted in the mean:
    a batch with unscored rows gives the loss of its scored ones); if no sequence
    has a scored step, every sequence's last step.
    """
    batch, steps = logits.shape[:2]
    scored = mask > 0
    if scored.any():
        last = (steps - 1) - scored.flip(1).int().argmax(dim=1)
        weight = scored.any(dim=1).to(logits.dtype)
    else:
        last = torch.full((batch,), steps - 1, device=logits.device)
        weight = torch.ones(batch, dtype=logits.dtype, device=logits.device)
    rows = torch.arange(batch, device=logits.device)
    nats = F.binary_cross_entropy_with_logits(logits[rows, last], targets[rows, last], reduction="none").sum(-1)
    return (nats * weight).sum() / weight.sum()


def all_steps_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked binary cross-entropy of every scored step, summed over steps and features, mean over the sequences
    with a scored step (all of them if none has one: the loss is then 0)."""
    nats = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * mask.unsqueeze(-1)
    return nats.sum() / (mask > 0).any(dim=1).sum().clamp_min(1)


LOSSES: dict[str, LossFn] = {"last": last_step_loss, "all": all_steps_loss}


def gradient_through_time(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    loss: Literal["last", "all"] | LossFn = "last",
    state_part: Literal["all", "controller"] = "all",
    memory_size: int | None = None,
) -> torch.Tensor:
    """‖∂L/∂h(t)‖ for every time step t of one batch.

    h(t) is the network's state entering step t: the initial state for t = 0,
    the state after step t − 1 otherwise. A zero perturbation is added to every
    floating tensor of h(t) as step t reads it, and the gradient of L with respect
    to it is the gradient that flows back into h(t) through steps t, t + 1, …:
    with ``all``, that of the losses of steps t and later (the output of step
    t − 1, computed before the perturbation, is not in it), which is the gradient
    through time whose vanishing or explosion the probe measures. Its norm is
    taken over the whole batch and all state tensors together. The network runs
    in eval mode (no dropout) and is left in the mode it was in.

    Args:
        net: a network with ``initial_state`` and ``step`` (or a LightningModule holding one as ``net``).
        inputs: (B, T, D_in).
        targets: (B, T, D_out) binary targets.
        mask: (B, T) scored steps (default: all).
        loss: ``last`` (only the last scored step: the gradient from the end of
            the sequence), ``all`` (every scored step), or a function
            ``(logits, targets, mask) -> scalar``.
        state_part: ``all`` the whole state (an NTM's memory and read vectors
            included; a conditional model's fed-back y(t−1)), or ``controller`` only the
            controller's state (for states with a ``controller`` field; the whole state otherwise).
        memory_size: N, the memory slots of the episode (networks with a memory: NTM, DNC); default the
            network's own, or for a LightningModule its ``eval_memory_size`` where set, as its evaluation runs.

    Returns:
        (T,) float64 norms, on the CPU: the root sum of squares of ``gradient_through_time_by_part``'s parts.
    """
    squares = _squares_by_part(net, inputs, targets, mask=mask, loss=loss, state_part=state_part,
                               memory_size=memory_size)
    return torch.stack(list(squares.values())).sum(dim=0).sqrt()


def gradient_through_time_by_part(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    loss: Literal["last", "all"] | LossFn = "last",
    state_part: Literal["all", "controller"] = "all",
    memory_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """‖∂L/∂h(t)‖ of each part of the state, for every time step t (as ``gradient_through_time``, whose
    norm is their root sum of squares).

    The parts are the fields of a NamedTuple state, each over every tensor under it: an NTM's
    ``controller``, ``memory``, ``read_vectors``, ``weights``; a DNC's ``controller``, ``memory``,
    ``read_vectors``, ``read_weights``, ``write_weights``, ``usage``, ``precedence``, ``link``; a conditional
    model's ``controller`` and ``prev_output``. A state without fields (a ``RecurrentModel``'s tensor or
    (h, c)) is the one part ``state``. With ``state_part: controller`` only ``controller`` is measured.
    A memory model's ``memory`` part at t = 0 is the initial memory's (the module's docstring: under
    ``memory_init: constant`` it is scaled by 1/1e-6).

    Returns:
        part -> (T,) float64 norms, on the CPU, in the state's order.
    """
    squares = _squares_by_part(net, inputs, targets, mask=mask, loss=loss, state_part=state_part,
                               memory_size=memory_size)
    return {part: values.sqrt() for part, values in squares.items()}


def _squares_by_part(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    loss: Literal["last", "all"] | LossFn,
    state_part: Literal["all", "controller"],
    memory_size: int | None,
) -> dict[str, torch.Tensor]:
    """part -> (T,) float64 ‖∂L/∂h_part(t)‖² (``gradient_through_time``'s arguments)."""
    if isinstance(net, pl.LightningModule):
        memory_size = getattr(net, "eval_memory_size", None) if memory_size is None else memory_size
        net = getattr(net, "net", net)
    if not (hasattr(net, "initial_state") and hasattr(net, "step")):
        raise TypeError(f"net must have initial_state() and step(); {type(net).__name__} has not")
    if inputs.dim() != 3 or targets.dim() != 3 or inputs.shape[:2] != targets.shape[:2]:
        raise ValueError(f"inputs (B, T, D_in) and targets (B, T, D_out) must share B and T, got "
                         f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a function, got {loss!r}")
        loss = LOSSES[loss]
    if state_part not in ("all", "controller"):
        raise ValueError(f"state_part must be 'all' or 'controller', got {state_part!r}")
    batch, steps = inputs.shape[:2]
    mask = torch.ones(batch, steps, dtype=inputs.dtype, device=inputs.device) if mask is None else mask
    parameter = next(net.parameters(), None)
    dtype = parameter.dtype if parameter is not None else inputs.dtype
    inputs, targets, mask = inputs.to(dtype), targets.to(dtype), mask.to(dtype)

    probes: list[list[tuple[str, torch.Tensor]]] = []
    outputs = []
    was_training = net.training
    net.eval()  # the network itself, not one draw of its dropout masks
    # cuDNN's RNN backward refuses eval mode; the native kernels compute the same gradient. Out of inference
    # mode too (``trainer.validate`` runs its hooks in it, where enable_grad records nothing), with the batch
    # copied out of it (an inference tensor cannot be saved for backward).
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            inputs, targets, mask = (x.clone() if x.is_inference() else x for x in (inputs, targets, mask))
            sized = {} if memory_size is None else {"memory_size": memory_size}
            state = net.initial_state(batch, device=inputs.device, dtype=dtype, **sized)
            for t in range(steps):
                perturbations: list[tuple[str, torch.Tensor]] = []
                state = _perturb(state, perturbations, state_part, part=None)
                probes.append(perturbations)
                logits, state = net.step(inputs[:, t], state)
                outputs.append(logits)
                if hasattr(state, "_fields") and "prev_output" in state._fields:  # conditional: as evaluated
                    scored = mask[:, t, None] > 0
                    state = state._replace(prev_output=torch.where(scored, state.prev_output, targets[:, t]))
            value = loss(torch.stack(outputs, dim=1), targets, mask)
            flat = [p for step in probes for _, p in step]
            grads = torch.autograd.grad(value, flat, allow_unused=True) if flat else []
    finally:
        net.train(was_training)
    squares: dict[str, torch.Tensor] = {}
    i = 0
    for t, step in enumerate(probes):
        for part, _ in step:
            squares.setdefault(part, torch.zeros(steps, dtype=torch.float64))
            if grads[i] is not None:
                squares[part][t] += float(grads[i].detach().double().pow(2).sum())
            i += 1
    return squares or {"state": torch.zeros(steps, dtype=torch.float64)}


def _perturb(state: Any, perturbations: list[tuple[str, torch.Tensor]], state_part: str, part: str | None) -> Any:
    """Add a zero tensor that requires grad to every floating tensor of ``state`` (or its controller part),
    recorded with its part: the top-level field it is under (``part``), ``state`` for a state without fields."""
    if part is None and hasattr(state, "_fields"):  # the top level of a NamedTuple state: its fields are the parts
        fields = ("controller",) if state_part == "controller" and "controller" in state._fields else state._fields
        return state._replace(**{field: _perturb(getattr(state, field), perturbations, "all", field)
                                 for field in fields})
    part = "state" if part is None else part
    if isinstance(state, torch.Tensor):
        if not state.is_floating_point():
            return state
        zero = torch.zeros_like(state, requires_grad=True)
        perturbations.append((part, zero))
        return state + zero
    if hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(_perturb(s, perturbations, "all", part) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(_perturb(s, perturbations, "all", part) for s in state)
    return state


def plot_gradient_curves(
    path: str | Path, curves: dict[str, torch.Tensor], *, title: str = "", marker: int | None = None
) -> Path:
    """One line per model: ‖∂L/∂h(t)‖ against t on a log scale.

    Args:
        path: the PNG to write (folders are created).
        curves: label -> (T,) norms.
        title: figure title.
        marker: a time step to mark with a vertical line (e.g. the copy task's delimiter).

    Returns:
        The path written.
    """
    return plot_gradient_panels(path, {title: curves}, marker=marker)


def plot_gradient_panels(
    path: str | Path, panels: dict[str, dict[str, torch.Tensor]], *, marker: int | None = None
) -> Path:
    """Side-by-side panels (title -> label -> (T,) norms), one line per model, log scale, shared y axis."""
    if not panels or not all(panels.values()):
        raise ValueError("panels must hold at least one panel, each with at least one label -> norms entry")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for label, norms in curves.items():
            norms = torch.as_tensor(norms, dtype=torch.float64).clamp_min(PLOT_FLOOR)
            ax.semilogy(range(len(norms)), norms.tolist(), label=label, linewidth=1.6)
        if marker is not None:
            ax.axvline(marker, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("time step t")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        if title:
            ax.set_title(title, fontsize=10)
    axes[0, 0].set_ylabel("‖∂L/∂h(t)‖")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)  # a kill while it is written leaves the earlier figure whole
    plt.close(fig)
    return path


class GradientProbe(KeyedStateCallback):
    """Every ``every_n_epochs`` validation epochs, measure ‖∂L/∂h(t)‖ on the first validation batch.

    The curves (one line per probe, labelled ``epoch E, step S``) go to
    ``<run>/gradient_probe/epoch_EEEE_step_SSSSSSSS.png`` (:func:`memnet.utils.validation_file_name`: the epoch
    and the global step, so that several validations of one epoch each keep their figure and their line; and the
    batch inside a window of ``accumulate_grad_batches``);
    with a W&B logger it is logged as the image ``gradient_probe`` and as the
    line chart ``gradient_probe/curve``. The scalars ``probe/log10_grad_first``
    and ``probe/log10_grad_last`` (log10 of the norm at the first and last step)
    are logged with the module's metrics, and for a state of several parts each part's own,
    ``probe/<part>/log10_grad_first`` and ``..._last`` (``gradient_through_time_by_part``: an NTM's
    ``probe/controller/...``, ``probe/memory/...``; the first step's total of an NTM or a DNC is mostly its
    initial memory's, scaled by 1/1e-6, the module's docstring says why). Under ``trainer.validate`` (``memnet validate``) the curve is measured
    and the scalars logged, but no figure is drawn (such a run has no run folder of its own). Networks without
    ``step`` are skipped. Under DDP rank 0 measures and draws, and every process logs its scalars. The memory has
    the slots the validation runs with: the module's ``eval_memory_size`` where set, else the network's N.

    Args:
        every_n_epochs: probe every this many validation epochs.
        max_sequences: sequences of the batch used (the first ones).
        loss: ``last`` or ``all``, as in ``gradient_through_time``.
        state_part: ``all`` or ``controller``, as in ``gradient_through_time``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        *,
        max_sequences: int = 16,
        loss: Literal["last", "all"] = "last",
        state_part: Literal["all", "controller"] = "all",
    ) -> None:
        if not is_integer(every_n_epochs) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        if not is_integer(max_sequences) or max_sequences < 1:
            raise ValueError(f"max_sequences must be a positive integer, got {max_sequences!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if state_part not in ("all", "controller"):
            raise ValueError(f"state_part must be 'all' or 'controller', got {state_part!r}")
        self.every_n_epochs = every_n_epochs
        self.max_sequences = max_sequences
        self.loss = loss
        self.state_part = state_part
        self.curves: dict[str, torch.Tensor] = {}
        self.last_path: Path | None = None

    def state_settings(self) -> dict[str, Any]:
        # the curves drawn so far are kept in checkpoints under what is measured: two probes keep their own
        return {"every_n_epochs": int(self.every_n_epochs), "max_sequences": int(self.max_sequences),
                "loss": self.loss, "state_part": self.state_part}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or validation_count(trainer) % self.every_n_epochs:
            return
        # Rank 0 measures, and every process logs its numbers: logged by rank 0 alone, Lightning took them for
        # rank 0's own share of an epoch value (its warning to use sync_dist, once a key) and the other processes'
        # callback_metrics had no probe/ (a monitor of one was refused there, not on rank 0)
        parts = gather_objects(self._measure(trainer, pl_module) if trainer.is_global_zero else None, trainer)[0]
        if parts is None:
            return
        net = getattr(pl_module, "net", pl_module)
        norms = torch.stack([part.pow(2) for part in parts.values()]).sum(dim=0).sqrt()
        label = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        self.curves[label] = norms
        floor = torch.tensor(PLOT_FLOOR, dtype=torch.float64)
        logged = {"probe/log10_grad_first": norms[0], "probe/log10_grad_last": norms[-1]}
        if len(parts) > 1:  # an NTM's h(0) is mostly its initial memory's: each part's own, the controller's too
            for part, values in parts.items():
                logged |= {f"probe/{part}/log10_grad_first": values[0], f"probe/{part}/log10_grad_last": values[-1]}
        for key, value in logged.items():
            # the same value on every process: their mean is it
            pl_module.log(key, float(torch.log10(value.clamp_min(floor))), sync_dist=True)
        if not trainer.is_global_zero:
            return
        if not fitting(trainer):
            # ``memnet validate`` has no run folder of its own: the figure made a stray runs/memnet/<id>/ that
            # looked like a run (as MemoryAccessPlot's did); its scalars are in the validation's metrics
            return
        path = run_dir(trainer) / "gradient_probe" / validation_file_name(trainer)
        self.last_path = plot_gradient_curves(path, self.curves, title=f"gradient through time, {type(net).__name__}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.log_image(key="gradient_probe", images=[str(self.last_path)], step=logged_step(trainer))
                chart = wandb.plot.line_series(
                    xs=list(range(len(norms))), ys=[norms.tolist()], keys=[label],
                    title="‖∂L/∂h(t)‖", xname="time step",
                )
                # on Lightning's step axis, as WandbLogger logs: an explicit W&B step behind W&B's own counter
                # (which every logged row advances) is dropped with a warning; through the logger, whose W&B
                # errors (memnet's OfflineFirstWandbLogger) stop the tracking, not the training
                logger.log_metrics({"gradient_probe/curve": chart}, step=logged_step(trainer))

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor] | None:
        """Each part's ‖∂L/∂h(t)‖ on the first validation batch (``gradient_through_time_by_part``); None where the
        network has no ``step`` or the batch no ``inputs`` and ``targets``."""
        net = getattr(pl_module, "net", pl_module)
        if not (hasattr(net, "step") and hasattr(net, "initial_state")):
            return None
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        batch = next(iter(loader))
        if not all(key in batch for key in ("inputs", "targets")):
            return None
        rows = slice(0, self.max_sequences)
        return gradient_through_time_by_part(
            net,
            batch["inputs"][rows].to(pl_module.device),
            batch["targets"][rows].to(pl_module.device),
            mask=batch["mask"][rows].to(pl_module.device) if "mask" in batch else None,
            loss=self.loss,
            state_part=self.state_part,
            # the N of the validation it probes (SequenceModule.forward runs evaluation with eval_memory_size)
            memory_size=getattr(pl_module, "eval_memory_size", None),
        )

    def state_dict(self) -> dict:
        return {"curves": {k: v.tolist() for k, v in self.curves.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.curves = {k: torch.tensor(v, dtype=torch.float64) for k, v in state_dict.get("curves", {}).items()}
