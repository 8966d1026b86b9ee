"""Lightning callbacks: pictures of memory access, and helpers to find a run's folder."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from memnet.plots import plot_dnc_memory, plot_memory_access


def run_dir(trainer: pl.Trainer) -> Path:
    """The folder of this run: the parent of its checkpoint folder.

    Without checkpointing (e.g. ``fast_dev_run``) it is ``<root>/runs/debug``, so a
    debug run never writes into the working directory itself.
    """
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath).parent
    return Path(trainer.default_root_dir) / "runs" / "debug"


class MemoryAccessPlot(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, draw the NTM figure for one fixed example.

    The example is the first sequence of the first validation batch (fixed by
    the data module's seed). The PNG goes to ``<run>/memory_access/epoch_XXXX.png``
    and, with a W&B logger, is logged as the image ``memory_access``. Works for
    any network whose ``forward`` accepts ``return_trace=True`` and returns
    ``(logits, trace)`` with ``read_weights`` and ``write_weights`` of shape
    (B, T, heads, N); other networks are skipped.

    Args:
        every_n_epochs: draw every this many validation epochs.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self.last_path: Path | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        if not trainer.is_global_zero:
            return
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        batch = next(iter(loader))
        path = run_dir(trainer) / "memory_access" / f"epoch_{trainer.current_epoch:04d}.png"
        drawn = draw_memory_access(pl_module, batch, path, title=f"epoch {trainer.current_epoch}")
        if drawn is None:
            return
        self.last_path = drawn
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="memory_access", images=[str(drawn)], step=trainer.global_step)


def draw_memory_access(module: torch.nn.Module, batch: dict, path: Path, *, title: str = "", **kwargs) -> Path | None:
    """Run ``module`` with a trace on the first sequence of ``batch`` and save the figure.

    Returns the path, or None if the module's network records no trace.
    """
    inputs = batch["inputs"][:1].to(module.device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            result = module(inputs, return_trace=True, **kwargs)
    except TypeError:
        return None
    finally:
        module.train(was_training)
    logits, trace = result
    drawn = plot_memory_access(
        path,
        inputs=inputs[0],
        targets=batch["targets"][0],
        outputs=torch.sigmoid(logits[0]),
        read_weights=trace.read_weights[0],
        write_weights=trace.write_weights[0],
        title=title,
    )
    if hasattr(trace, "usage") and hasattr(trace, "link"):  # DNC: usage, last link matrix, read modes
        modes = getattr(trace, "read_modes", None)
        plot_dnc_memory(Path(path).with_name(Path(path).stem + "_dnc.png"), usage=trace.usage[0],
                        link=trace.link[0, -1], read_modes=None if modes is None else modes[0], title=title)
    return drawn
