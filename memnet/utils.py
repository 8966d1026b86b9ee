"""Small helpers shared across memnet: argument checks, the W&B mode."""

from __future__ import annotations

import os


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


def wandb_offline() -> bool:
    """W&B stays offline unless the user opted in with ``WANDB_MODE=online``."""
    return os.environ.get("WANDB_MODE", "offline") != "online"


def wandb_mode() -> str:
    """``"offline"`` or ``"online"`` for ``wandb.init(mode=...)``, as :func:`wandb_offline` decides."""
    return "offline" if wandb_offline() else "online"
