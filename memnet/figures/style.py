"""What every figure shares: matplotlib on the Agg backend (no display needed) and one way to save (written beside
its name and renamed onto it)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from memnet.utils import save_figure_atomic

DPI = 100  # committed PNGs stay small (tens to a few hundred kB)

__all__ = ["DPI", "plt", "save"]


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` (folders are created), close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=DPI)  # a kill while it is written leaves the earlier figure whole
    plt.close(fig)
    return path
