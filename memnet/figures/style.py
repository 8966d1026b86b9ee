"""What every figure shares: matplotlib on the Agg backend (no display needed) and one way to save."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DPI = 100  # committed PNGs stay small (tens to a few hundred kB)

__all__ = ["DPI", "plt", "save"]


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` (folders are created), close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
