"""``memnet probe CONFIG... --out PNG``: ‖∂L/∂h(t)‖ of each config's model, in one figure.

Each config's model and data are built as ``memnet fit`` would build them
(``memnet.cli.rebuild``), trained for the given numbers of steps and probed with
``memnet.probe.gradient_through_time`` on the first validation batch. The figure draws the norm over the
whole state; the table printed gives it at t = 0, 1, T/2 and T − 1, and for a state of several parts (an
NTM's, a DNC's) each part's below it: an NTM's or a DNC's h(0) is mostly its initial memory's, whose
constant of 1e-6 scales it (``memnet.probe``), so such models compare from t = 1 or by the controller's row.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from memnet.cli.rebuild import instantiate
from memnet.cli.typos import CommandParser
from memnet.lightning import SequenceModule
from memnet.metrics import sequence_metrics
from memnet.probe import (
    LOSSES,
    gradient_through_time,
    gradient_through_time_by_part,
    plot_gradient_panels,
)
from memnet.utils import is_integer


def compare(
    configs: Sequence[str | Path],
    *,
    labels: Sequence[str] | None = None,
    train_steps: Sequence[int] = (0,),
    max_sequences: int = 16,
    loss: Literal["last", "all"] = "last",
    by_part: bool = False,
) -> dict[int, dict[str, Any]]:
    """Build each config's model and data (as ``memnet fit`` would), train, and probe along the way.

    Each model is trained on its config's training stream with its config's
    optimiser and learning-rate scheduler (stepped every step, or at the end of
    every pass over the training loader with ``scheduler_interval: epoch``), gradients
    clipped as ``trainer.gradient_clip_val`` and ``gradient_clip_algorithm`` say,
    fed as its module feeds it (a conditional network the true previous outputs),
    and probed on the first validation batch after each number of training
    steps in ``train_steps`` (0: at initialisation), with the memory slots its
    validation has (the module's ``eval_memory_size`` where set), as ``GradientProbe`` probes it.
    What the loop does not apply (a ReduceLROnPlateau, which steps on validations; the config's callbacks
    but ``GradientProbe`` and ``MemoryAccessPlot``; ``accumulate_grad_batches``; a precision other than
    32) is named in one warning line on stderr; a OneCycleLR shorter than ``train_steps`` is refused.

    Returns:
        steps -> label -> (T,) norms, labels in the order of ``configs``; with ``by_part``, label -> part ->
        (T,) norms (``memnet.probe.gradient_through_time_by_part``: an NTM's ``controller``, ``memory``, ...).
    """
    if labels is not None and len(labels) != len(configs):
        raise ValueError(f"labels must name every config: {len(labels)} labels for {len(configs)} configs")
    if not train_steps or any(not is_integer(n) or n < 0 for n in train_steps):
        raise ValueError(f"train_steps must hold non-negative integers, got {list(train_steps)!r}")
    checkpoints = sorted(set(train_steps))
    stems = [Path(config).stem for config in configs]  # lstm/copy.yaml and gru/copy.yaml: LSTM/COPY, GRU/COPY
    default_labels = [(f"{Path(config).parent.name}/{stem}" if stems.count(stem) > 1 else stem).upper()
                      for config, stem in zip(configs, stems)]
    chosen = list(labels) if labels is not None else default_labels
    repeated = sorted({label for label in chosen if chosen.count(label) > 1})
    if repeated:
        raise ValueError(f"labels must differ (a curve would replace another): {', '.join(repeated)} given twice")
    results: dict[int, dict[str, Any]] = {n: {} for n in checkpoints}
    for i, config in enumerate(configs):
        if not Path(config).is_file():
            raise FileNotFoundError(f"config {config} does not exist")
        cli = instantiate([config])
        module, data = cli.model, cli.datamodule
        if not isinstance(module, SequenceModule):  # else a KeyError on its batches (seq2seq, bAbI), or a regression
            # network trained and probed with the binary cross-entropy of its real-valued targets (an ESN on NARMA-10)
            raise TypeError(
                f"config {config}: memnet probe trains and probes networks on binary sequences "
                f"(memnet.lightning.SequenceModule and its subclasses), but its model is {type(module).__name__}")
        label = labels[i] if labels is not None else default_labels[i]
        optimizer = module.optimizer(module.parameters())
        built = module.scheduler(optimizer) if getattr(module, "scheduler", None) is not None else None
        interval = getattr(module, "scheduler_interval", "step")
        trainer_config = cli.config.get("trainer", {})
        clip = trainer_config.get("gradient_clip_val")
        clip_by_value = trainer_config.get("gradient_clip_algorithm") == "value"
        scheduler = _applied_scheduler(config, built, interval, max(checkpoints))
        _warn_not_applied(config, trainer_config, plateau=built is not None and scheduler is None)
        probe_batch = next(iter(data.val_dataloader()))
        rows = slice(0, max_sequences)
        batches = iter(data.train_dataloader())
        done = 0
        for target_steps in checkpoints:
            module.train()
            while done < target_steps:
                batch = next(batches, None)
                if batch is None:  # the end of a pass over the training loader: an epoch of memnet fit
                    if scheduler is not None and interval == "epoch":
                        scheduler.step()
                    batches = iter(data.train_dataloader())
                    continue
                # as the module trains it: a conditional network is fed the true previous outputs (teacher forcing)
                kwargs = module.forward_kwargs(batch) if hasattr(module, "forward_kwargs") else {}
                logits = module.net(batch["inputs"], **kwargs)
                metrics = sequence_metrics(logits, batch["targets"], batch["mask"])
                optimizer.zero_grad()
                metrics["loss"].backward()
                if clip and clip_by_value:
                    torch.nn.utils.clip_grad_value_(module.parameters(), clip)
                elif clip:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
                optimizer.step()
                if scheduler is not None and interval == "step":
                    scheduler.step()
                done += 1
            if done:
                print(f"{config}: {done} training steps, last batch {metrics['bits_per_seq'].detach().item():.1f} bits/seq")
            module.eval()
            # the module, not its net: the memory has the slots validation runs with (its eval_memory_size)
            probe = gradient_through_time_by_part if by_part else gradient_through_time
            norms = probe(module, probe_batch["inputs"][rows], probe_batch["targets"][rows],
                          mask=probe_batch["mask"][rows], loss=loss)
            results[target_steps][label + _radius(module.net)] = norms
    return results


def _applied_scheduler(config: str | Path, scheduler: Any, interval: str, steps: int) -> Any:
    """The scheduler the probe's loop steps: None for a ReduceLROnPlateau (it steps on validations, which the
    loop has none of); a OneCycleLR shorter than the training is refused (torch stops at its end)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return None
    total = getattr(scheduler, "total_steps", None)
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and interval == "step" and steps > total:
        raise ValueError(f"config {config}: its OneCycleLR schedule is {total} steps long (total_steps), but "
                         f"--train-steps asks for {steps}; probe at most {total} steps or lengthen the schedule")
    return scheduler


# callbacks that change nothing of the training: the probe itself, figures
_INERT_CALLBACKS = ("GradientProbe", "MemoryAccessPlot")


def _warn_not_applied(config: str | Path, trainer_config: Any, *, plateau: bool) -> None:
    """One line on stderr naming what of ``config``'s training the probe's loop does not apply."""
    missing = []
    if plateau:
        missing.append("model.init_args.scheduler ReduceLROnPlateau (it steps on validations)")
    callbacks = trainer_config.get("callbacks") or []
    names = [str(getattr(c, "class_path", None) or (c.get("class_path") if isinstance(c, dict) else type(c).__name__))
             .rsplit(".", 1)[-1] for c in (callbacks if isinstance(callbacks, list) else [callbacks])]
    names = [name for name in names if name not in _INERT_CALLBACKS]
    if names:
        missing.append(f"trainer.callbacks {', '.join(names)}")
    accumulate = trainer_config.get("accumulate_grad_batches")
    if accumulate not in (None, 1):
        missing.append(f"trainer.accumulate_grad_batches {accumulate}")
    precision = trainer_config.get("precision")
    if precision not in (None, 32, "32", "32-true"):
        missing.append(f"trainer.precision {precision}")
    if missing:
        print(f"memnet probe: warning: {config}: the probe's training loop does not apply {'; '.join(missing)} "
              "(memnet fit does; the loop applies the optimiser, a per-step or per-epoch scheduler and gradient "
              "clipping)", file=sys.stderr)


def _radius(net: nn.Module) -> str:
    """" (ρ(W) = 0.60)" for a vanilla RNN's recurrent matrix, else ""."""
    rnn = getattr(getattr(net, "controller", None), "rnn", None)
    if not isinstance(rnn, nn.RNN):
        return ""
    radius = torch.linalg.eigvals(rnn.weight_hh_l0.detach().double()).abs().max().item()
    return f" (ρ(W) = {radius:.2f})"


def main(argv: Sequence[str] | None = None) -> None:
    """``memnet probe CONFIG... --out PNG``: one gradient-through-time line per config."""
    parser = CommandParser(
        prog="memnet probe",
        description="Draw ‖∂L/∂h(t)‖ against t for the model of each config, on its first validation batch.",
    )
    parser.add_argument("configs", nargs="+", help="memnet fit configs (e.g. configs/probe/*.yaml)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per config (default: config names)")
    parser.add_argument("--train-steps", type=int, nargs="+", default=[0],
                        help="probe after each of these numbers of training steps, one panel each (0: untrained; default: 0)")
    parser.add_argument("--max-sequences", type=int, default=16, help="sequences of the batch probed (default: %(default)s)")
    parser.add_argument("--loss", choices=sorted(LOSSES), default="last", help="loss at the last scored step, or all (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = compare(args.configs, labels=args.labels, train_steps=args.train_steps,
                      max_sequences=args.max_sequences, loss=args.loss, by_part=True)
    totals = {steps: {label: _total(parts) for label, parts in curves.items()} for steps, curves in results.items()}
    panels = {}
    scored = "the last scored step" if args.loss == "last" else "every scored step"
    for steps, curves in totals.items():
        length = len(next(iter(curves.values())))
        when = f"after {steps} training steps" if steps else "at initialisation"
        panels[f"loss at {scored} of T = {length}, {when}"] = curves
    path = plot_gradient_panels(args.out, panels)
    memory = False
    for steps, curves in results.items():
        print(f"\n{steps} training steps")
        print(f"{'model':<28} {'‖∂L/∂h(0)‖':>12} {'‖∂L/∂h(1)‖':>12} {'‖∂L/∂h(T/2)‖':>14} {'‖∂L/∂h(T−1)‖':>14}")
        for label, parts in curves.items():
            rows = [(label, _total(parts))] + ([(f"  {part}", norms) for part, norms in parts.items()]
                                               if len(parts) > 1 else [])
            for name, norms in rows:
                length = len(norms)
                second = f"{norms[1]:>12.3e}" if length > 1 else f"{'':>12}"
                print(f"{name:<28} {norms[0]:>12.3e} {second} {norms[length // 2]:>14.3e} {norms[-1]:>14.3e}")
            memory = memory or "memory" in parts
    if memory:
        print("\nh(t) is the whole state, its parts indented. A memory's part of h(0) is the initial memory M(0)'s: "
              "under memory_init constant (every entry 1e-6) content addressing's cosine divides by the slots' "
              "norms, so ‖∂L/∂M(0)‖ is scaled by 1/1e-6, a sensitivity to that constant, not gradient carried "
              "back through time; compare such a model from t = 1, or by its controller's row")
    print(f"wrote {path}")


def _total(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The norm over the whole state: the root sum of squares of its parts' (``gradient_through_time``)."""
    return torch.stack([norms.pow(2) for norms in parts.values()]).sum(dim=0).sqrt()
