"""Lightning callbacks: pictures of memory access, and helpers to find a run's folder."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from memnet.plots import plot_dnc_memory, plot_memory_access


def run_dir(trainer: pl.Trainer) -> Path:
    """The folder of this run: the parent of its checkpoint folder.

    Without checkpointing (e.g. ``fast_dev_run``) it is ``<root>/runs/debug``, so a
    debug run never writes into the working directory itself.
    """
    callback = trainer.checkpoint_callback
    if not trainer.fast_dev_run and callback is not None and getattr(callback, "dirpath", None):
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


class LinearStartSwitch(pl.Callback):
    """Linear start (MemN2N paper, §4.2): put the softmax back when validation loss stops falling.

    Works on any module whose ``net`` has a ``softmax_enabled`` flag and an
    ``enable_softmax()`` method (``memnet.models.memn2n.MemN2N`` built with
    ``linear_start: true``); does nothing otherwise. After each validation epoch
    in the linear phase, if ``monitor`` did not fall below its best value for
    ``patience`` epochs in a row (or ``max_epochs`` linear epochs have passed),
    the softmax is switched on; the switch is logged as ``linear_start/switched``
    and its epoch kept in ``switched_at``.

    Args:
        monitor: the metric watched.
        patience: epochs without improvement before the switch.
        max_epochs: optional cap on the linear phase.
    """

    def __init__(self, monitor: str = "val/loss", patience: int = 1, max_epochs: int | None = None) -> None:
        if patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs!r}")
        self.monitor = monitor
        self.patience = patience
        self.max_epochs = max_epochs
        self.best: float | None = None
        self.stale = 0
        self.switched_at: int | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = getattr(pl_module, "net", None)
        if trainer.sanity_checking or net is None or not hasattr(net, "enable_softmax"):
            return
        if bool(net.softmax_enabled):
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is None or value < self.best:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        linear_epochs = trainer.current_epoch + 1
        if self.stale >= self.patience or (self.max_epochs is not None and linear_epochs >= self.max_epochs):
            net.enable_softmax()
            self.switched_at = trainer.current_epoch
            pl_module.log("linear_start/switched", float(trainer.current_epoch))

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale, "switched_at": self.switched_at}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict["best"]
        self.stale = state_dict["stale"]
        self.switched_at = state_dict["switched_at"]

class LastAndBestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every validation.

    Lightning rewrites ``last.ckpt`` only when a top-k checkpoint was saved in the
    same step, so after an epoch that did not improve the monitored metric the
    "last" checkpoint is stale and a resumed run would repeat training. This
    subclass always saves it, so a run resumes from where it was.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._should_refresh_last(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_refresh_last(trainer) and self._should_save_on_train_epoch_end(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _should_refresh_last(self, trainer: pl.Trainer) -> bool:
        return bool(self.save_last) and not self._should_skip_saving_checkpoint(trainer)
