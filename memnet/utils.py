"""Small helpers shared across memnet: argument checks, each process's share of the data, the W&B mode."""

from __future__ import annotations

import os
from collections.abc import Sized
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DistributedSampler


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive integer.

    >>> check_positive(memory_size=128, num_reads=0)
    Traceback (most recent call last):
    ...
    ValueError: num_reads must be a positive integer, got 0
    """
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the interval [low, high].

    ``low_open`` / ``high_open`` exclude an end: (low, high], [low, high), (low, high).
    """
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def distributed_position(trainer: Any) -> tuple[int, int]:
    """(rank, world size) of this process in ``trainer``'s run; (0, 1) without a trainer or on one device.

    Data modules use it to give every DDP process its own share of the data.
    """
    if trainer is None:
        return 0, 1
    return int(getattr(trainer, "global_rank", 0)), int(getattr(trainer, "world_size", 1))


def distributed_sampler(dataset: Sized, trainer: Any, *, shuffle: bool, seed: int) -> DistributedSampler | None:
    """A ``DistributedSampler`` giving this process its share of ``dataset``, or None on one process.

    The share is rank r's every world-size-th example (shuffled by ``seed`` and the
    epoch when ``shuffle``; Lightning calls ``set_epoch``). Where the size is not a
    multiple of the world size, the last examples are repeated so every process has
    as many batches (``torch.utils.data.DistributedSampler``'s rule).
    """
    rank, world_size = distributed_position(trainer)
    if world_size <= 1:
        return None
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)


def parameter_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter (the default dtype if it has none).

    A batch built outside the Trainer (a callback, ``memnet evaluate``) is cast to it,
    so a model trained in ``64-true`` or ``bf16-true`` precision gets inputs it can multiply.
    """
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.get_default_dtype()


def check_sequence_inputs(inputs: torch.Tensor, input_size: int, *, model: str,
                          memory_size: int | None = None) -> None:
    """Refuse, with one line naming ``model``, what a sequence model's ``forward`` cannot run.

    ``inputs`` must be (B, T, D_in) with D_in = ``input_size``, B ≥ 1 and T ≥ 1; a
    ``memory_size`` given for the call must be a positive integer (0 is not "the
    trained size").
    """
    if inputs.dim() != 3 or inputs.shape[-1] != input_size:
        raise ValueError(f"{model}: inputs must have shape (B, T, D_in={input_size}), got {tuple(inputs.shape)}")
    if inputs.shape[0] == 0 or inputs.shape[1] == 0:
        raise ValueError(f"{model}: inputs of shape {tuple(inputs.shape)} are empty; "
                         "a batch needs at least one sequence (B ≥ 1) of at least one step (T ≥ 1)")
    if memory_size is not None and (isinstance(memory_size, bool) or not isinstance(memory_size, int)
                                    or memory_size < 1):
        raise ValueError(f"{model}: memory_size must be a positive integer, got {memory_size!r}")


def wandb_offline() -> bool:
    """W&B stays offline unless the user opted in with ``WANDB_MODE=online``."""
    return os.environ.get("WANDB_MODE", "offline") != "online"


def wandb_mode() -> str:
    """``"offline"`` or ``"online"`` for ``wandb.init(mode=...)``, as :func:`wandb_offline` decides."""
    return "offline" if wandb_offline() else "online"


def run_dir(trainer: Any) -> Path:
    """The folder of a Lightning run: the parent of its checkpoint folder.

    Without checkpointing (e.g. ``fast_dev_run``) it is ``<root>/runs/debug``, so a
    debug run never writes into the working directory itself.
    """
    callback = trainer.checkpoint_callback
    if not trainer.fast_dev_run and callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath).parent
    return Path(trainer.default_root_dir) / "runs" / "debug"


class MemnetError(ValueError):
    """A problem with the user's input or files that memnet explains in one line.

    The ``memnet`` command prints its message alone (no traceback) and exits with
    status 2. It is a ``ValueError``, so callers that catch those still do.
    """
