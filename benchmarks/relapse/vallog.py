"""A callback for the long relapse runs: one JSON line per validation epoch (step, value, learning rate).

Used from a config as ``class_path: vallog.ValidationLog`` with ``benchmarks/relapse`` on
``PYTHONPATH`` (see ``benchmarks/relapse/long_runs.sh``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl


class ValidationLog(pl.Callback):
    """Appends ``{"step", "val_bits", "lr", "wall_s"}`` to ``path`` after each validation epoch."""

    def __init__(self, path: str, monitor: str = "val/bits_per_seq") -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.start = time.time()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        row = {"step": trainer.global_step, "val_bits": round(float(trainer.callback_metrics[self.monitor]), 5),
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "wall_s": round(time.time() - self.start, 1)}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
