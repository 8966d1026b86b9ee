"""The Lightning CLI with memnet's defaults: W&B offline, checkpoints of last and best, seeding.

``MemnetCLI`` serves ``memnet fit / validate / test / predict`` and, with ``run=False``,
every command that rebuilds a run (``memnet.cli.rebuild``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from jsonargparse import lazy_instance
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from memnet.callbacks import LastAndBestCheckpoint, run_dir
from memnet.cli.configs import ConfigError, resolve_config_args
from memnet.utils import wandb_offline

RUNS_DIR = "runs"
LATEST_RUN_FILE = Path(RUNS_DIR) / "latest.json"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, then renames it into place.

    A crash while saving leaves the previous checkpoint intact; a reader never
    sees a half-written file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


class RunConfigSaver(SaveConfigCallback):
    """Saves the full resolved config as ``config.yaml`` in the run's own folder.

    The folder is the parent of the checkpoint folder, so ``memnet evaluate
    --ckpt_path runs/.../checkpoints/last.ckpt`` finds the config beside it.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pass  # the checkpoint folder is only known once ModelCheckpoint is set up

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        path = run_dir(trainer) / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
        self.already_saved = True


class MemnetCLI(LightningCLI):
    """LightningCLI with memnet's defaults: W&B offline, checkpoints of last and best, seeding."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        kwargs.setdefault(
            "trainer_defaults",
            {
                "logger": lazy_instance(
                    WandbLogger, save_dir=RUNS_DIR, project="memnet", offline=wandb_offline()
                ),
                "enable_progress_bar": True,
            },
        )
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` alone, their ``--config`` values resolved first (shipped names,
        ``extends`` stacked: memnet.cli.configs).

        memnet's commands hand over what they parsed from ``sys.argv``; Lightning would warn
        on every ``memnet fit ...`` that ``args`` and ``sys.argv`` were both given.
        """
        if isinstance(args, list):
            try:
                args = resolve_config_args(args)
            except ConfigError as error:
                raise SystemExit(f"memnet: {error}") from None
        self.config = parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """The config given on the command line is authoritative.

        Lightning would otherwise apply the hyper-parameters saved in a checkpoint
        over ``--config`` and command-line values, so ``memnet test --ckpt_path X
        --model.init_args.eval_memory_size 512`` would silently use the saved value.
        The run's full config is kept beside its checkpoints (``config.yaml``).
        """

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
        if not config.get("plugins"):
            config["plugins"] = [AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LastAndBestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}-{step}",
            }
        )
        parser.link_arguments("data.input_size", "model.init_args.net.init_args.input_size", apply_on="instantiate")
        parser.link_arguments("data.output_size", "model.init_args.net.init_args.output_size", apply_on="instantiate")

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        callback = trainer.checkpoint_callback
        summary = {
            "run_dir": str(run_dir(trainer)),
            "config": str(run_dir(trainer) / "config.yaml"),
            "best_checkpoint": getattr(callback, "best_model_path", "") or None,
            "last_checkpoint": getattr(callback, "last_model_path", "") or None,
            "wandb_dir": _wandb_dir(trainer),
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        }
        LATEST_RUN_FILE.parent.mkdir(parents=True, exist_ok=True)
        (run_dir(trainer) / "summary.json").write_text(json.dumps(summary, indent=2))
        LATEST_RUN_FILE.write_text(json.dumps(summary, indent=2))
        print("\nrun folder:       ", summary["run_dir"])
        print("best checkpoint:  ", summary["best_checkpoint"])
        print("last checkpoint:  ", summary["last_checkpoint"])
        if summary["wandb_dir"]:
            print("W&B run:          ", summary["wandb_dir"], "(offline)" if wandb_offline() else "")


def _wandb_dir(trainer: pl.Trainer) -> str | None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            try:
                return str(Path(logger.experiment.dir).parent)
            except Exception:  # noqa: BLE001 -- a disabled or failed W&B run: the rest of the summary still stands
                return None
    return None


