"""The Lightning CLI with memnet's defaults: W&B offline, checkpoints of last and best, seeding.

``MemnetCLI`` serves ``memnet fit / validate / test / predict`` and, with ``run=False``,
every command that rebuilds a run (``memnet.cli.rebuild``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import lazy_instance
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.plugins.io import CheckpointIO, TorchCheckpointIO

from memnet.callbacks import (
    METRICS_KEY,
    LastAndBestCheckpoint,
    OfflineFirstWandbLogger,
    WandbTrackingGuard,
    guard_wandb_logger,
)
from memnet.checkpoint import check_finite_state, unreadable_checkpoint
from memnet.cli.configs import (
    ConfigError,
    find_config,
    is_inline_config,
    load_config,
    resolve_config_args,
)
from memnet.cli.errors import TRACEBACK_ENV, chain
from memnet.cli.typos import (
    ParseRefusal,
    Refused,
    UnknownOption,
    UnknownOptionError,
    all_keys,
    given_where,
    refused_key,
    unknown_option,
)
from memnet.cli.values import BadValueError, bad_value, value_where
from memnet.models.core import compile_seconds
from memnet.training import check_learning_rates, check_scheduler_settings
from memnet.utils import (
    MemnetError,
    fsync,
    logged_wandb_id,
    partial_beside,
    remove_stale_partials_in,
    run_dir,
    wandb_mode,
    wandb_offline,
    write_text_atomic,
)

RUNS_DIR = "runs"
WANDB_PROJECT = "memnet"  # the default logger's W&B project
LATEST_RUN_FILE = Path(RUNS_DIR) / "latest.json"
LIGHTNING_CKPT_WORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself
# validate / test / predict --ckpt_path untrained: the config's freshly initialised weights, asked for by name
# (without a --ckpt_path Lightning scores them too, and its numbers were taken for a trained model's)
UNTRAINED = "untrained"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a file beside it (``.<name>.<host>.<pid>.partial``), then renames it into place.

    A crash while saving leaves the previous checkpoint intact; a reader never
    sees a half-written file. The ``.partial`` files (or folders) a crash left behind
    are removed by a later save once stale (:func:`memnet.utils.remove_stale_partials_in`: a dead writer's of this
    host, unwritten for 5 minutes; an earlier naming's after an hour), and never block it; another live run's,
    saving into the same folder, and another host's stay. A write that fails (disk
    full, folder read-only) removes its own ``.partial`` file and stops the run with
    one line naming the file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:  # as Lightning's TorchCheckpointIO
            raise TypeError(f"Trainer.save_checkpoint(..., storage_options=...) is not supported by {type(self).__name__}")
        path = Path(path)
        # this process's own (.<name>.<host>.<pid>.partial): a second run saving into the same folder writes its own
        partial = partial_beside(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # those of saves that were killed; not another live writer's (its rename failed: 'could not write the
            # checkpoint')
            remove_stale_partials_in(path.parent)
            # straight into the partial file: Lightning's own save stages the bytes in the system's temporary folder
            # (fsspec's transaction, tempfile.mkstemp() in /tmp) and moves them here, so a full /tmp failed every
            # checkpoint of a run whose folder had room, and a save killed meanwhile left its copy there for good
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
            fsync(partial)  # the bytes on disk before the rename, and the rename itself after it:
            os.replace(partial, path)  # a power cut leaves the old checkpoint or the new one, never an empty file
            fsync(path.parent)
        except Exception as error:  # noqa: BLE001 -- torch.save reports a full disk as a RuntimeError
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
            raise MemnetError(f"could not write the checkpoint {path}: {reason} (is the disk full or the "
                              "folder read-only?)") from None

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """Lightning's loading, with a damaged file or non-finite weights reported in one line naming it."""
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise MemnetError(f"--ckpt_path: no checkpoint file at {path}") from None
        except Exception as error:  # noqa: BLE001 -- torch.load raises many kinds on a damaged file
            raise unreadable_checkpoint(path, error) from None
        # a file torch.load reads but Lightning cannot restore (a bare state_dict, a tensor, another tool's dict)
        # stopped with Lightning's KeyError: 'pytorch-lightning_version' traceback
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            keys = list(checkpoint) if isinstance(checkpoint, dict) else []
            held = (f"a dict of {', '.join(map(repr, keys[:4]))}{', …' if len(keys) > 4 else ''}"
                    if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}")
            raise MemnetError(f"{path}: not a Lightning checkpoint (it holds {held}, no 'state_dict'); give a "
                              "checkpoint `memnet fit` wrote (runs/<project>/<run>/checkpoints/*.ckpt)")
        check_finite_state(checkpoint["state_dict"], path)
        self.loaded_step = checkpoint.get("global_step")  # after fit: did this run train at all?
        self.loaded_path = str(Path(path).resolve())
        self.loaded_metrics = checkpoint.get(METRICS_KEY) or {}
        return checkpoint


class RunConfigSaver(SaveConfigCallback):
    """Saves the full resolved config as ``config.yaml`` in the run's own folder, and logs it to the loggers.

    The folder is the parent of the checkpoint folder, so ``memnet evaluate
    --ckpt_path runs/.../checkpoints/last.ckpt`` finds the config beside it. It is saved when
    training starts: a resumed run that has nothing left to train leaves its folder as it was.
    Its ``ckpt_path`` is saved as null, so that ``--config <run>/config.yaml`` starts a new run
    whether or not this one was resumed. The loggers (W&B's run config) get the same whole
    config, not only the module's own arguments.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pass  # the checkpoint folder is only known once ModelCheckpoint is set up

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        config = self.config.clone()
        if "ckpt_path" in config:
            config.ckpt_path = None
        path = run_dir(trainer) / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.parser.dump(config, skip_none=False)  # what parser.save writes with multifile=False
        try:
            # renamed into place: a resumed run rewrites the config its checkpoints are rebuilt from, and a full disk
            # or a kill while writing it in place left it cut short (evaluate/export of every checkpoint refused)
            write_text_atomic(path, text)
        except OSError as error:
            raise MemnetError(f"could not write the run's config {path}: {error.strerror or error} (is the disk "
                              "full or the folder read-only?)") from None
        resolved = yaml.safe_load(text)
        for logger in trainer.loggers:
            logger.log_hyperparams(resolved)
        self.already_saved = True


LIGHTNING_OPTIMISER_KEYS = ("optimizer", "lr_scheduler")  # LightningCLI's own, beside the model's


def lightning_optimiser_refused(key: str) -> str:
    """The line for LightningCLI's top-level ``--optimizer`` / ``--lr_scheduler``, which memnet does not use."""
    return (f"--{key}: memnet's optimiser and schedule are the model's, model.init_args.optimizer and "
            "model.init_args.scheduler (e.g. --model.init_args.optimizer torch.optim.SGD "
            "--model.init_args.optimizer.init_args.lr 0.1); Lightning's top-level --optimizer and --lr_scheduler would "
            "replace the module's configure_optimizers, leaving out the config's optimiser, its schedule and memnet's "
            "checks of them")


class MemnetArgumentParser(LightningArgumentParser):
    """Lightning's parser; a key that the class it was given to does not take is an ``UnknownOptionError``,
    and so is an option of the parser's own that it does not have (``--trainer.max_stpes``, ``--ckpt_pth``,
    a config's ``trainr:``).

    jsonargparse printed the whole usage (~77 lines for ``memnet fit``), then the key at the bottom
    of a Union error, or ``unrecognized arguments: --trainer.max_stpes 5``; the ``memnet`` command says
    it in one line instead (``memnet.cli.typos``), with the closest names: a Lightning group's options
    (``the Trainer``'s, ``checkpoint``'s class's), or the command's own (``memnet fit``'s). A value of the
    wrong type (``--trainer.max_steps lots``) is a ``BadValueError`` (``memnet.cli.values``).
    Every other error, and every error under ``MEMNET_TRACEBACK=1``, is jsonargparse's as before.
    No option is abbreviated: argparse took ``--trainer.max_step 5`` for ``--trainer.max_steps 5``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # only a parser that would exit: jsonargparse's inner parsers (exit_on_error=False) raise to the one above,
        # whose message holds the whole path from the top key down
        if self.exit_on_error and not os.environ.get(TRACEBACK_ENV):
            # one found already, in a --config given as text, which jsonargparse wrapped: 'Parser key "config": ...'
            found = next((item for item in chain(ex) if isinstance(item, ParseRefusal)), None)
            if found is not None:
                raise found
            unknown = unknown_option(message)
            if unknown is not None and unknown.key.partition(".")[0] in LIGHTNING_OPTIMISER_KEYS:
                raise MemnetError(lightning_optimiser_refused(unknown.key.partition(".")[0]))
            top = _TOP_KEY.match(message)
            if top is not None and top.group(1) in LIGHTNING_OPTIMISER_KEYS:  # a key both of the Union's classes refuse
                raise MemnetError(lightning_optimiser_refused(top.group(1)))
            nested = _NESTED_ARG.search(message)
            if top is not None and nested is not None and "class_path" not in message:
                raise MemnetError(_option_of_no_class(top.group(1), nested.group(1), getattr(self, "args", None) or []))
            if unknown is not None:
                raise UnknownOptionError(unknown)
            # the parser's own options: its argv's unknown option (ex is None), or a config's key (a KeyError)
            refused = refused_key(message, getattr(self, "args", None) or [], self)
            if refused is not None and (ex is None or isinstance(ex, (KeyError, argparse.ArgumentError))):
                unknown = self._unknown_own_option(refused)
                if unknown is not None:
                    raise UnknownOptionError(unknown, refused.typed)
            bad = bad_value(message)  # a value of the wrong type: trainer.max_steps lots
            if bad is not None:
                raise BadValueError(bad)
        super().error(message, ex)

    def _unknown_own_option(self, refused: Refused) -> UnknownOption | None:
        """The key (``trainer.max_stpes``, ``ckpt_pth``) as an option that a group of the parser, or the command,
        does not take, with the names it does; None where the names are not known (then jsonargparse says it)."""
        parser, subcommand = self, getattr(self, "subcommand", None)
        if self._subcommands_action is not None:  # memnet fit's root parser: a config's key of the subcommand's
            if refused.typed is not None:  # an option before the subcommand (memnet --foo fit): left to jsonargparse
                return None
            subcommand = refused.subcommand or self._subcommand_given()
            parser = self._subcommands_action.choices.get(subcommand)
            if parser is None:
                return None
        key = refused.key
        root, _, rest = key.partition(".")
        if rest and root in parser.groups:  # --trainer.max_stpes: a Lightning group's option
            names = _own_names(parser, f"{root}.")
            group_class = getattr(parser.groups[root], "group_class", None)
            if root == "trainer":
                owner = "the Trainer"
            elif group_class is not None:
                owner = f"{group_class.__module__}.{group_class.__qualname__}"
            else:
                return None
            return UnknownOption(key, "", rest, owner, names) if names else None
        owner = f"memnet {subcommand}" if subcommand else "a memnet config"  # no subcommand: a run rebuilt
        return UnknownOption(root, "", root, owner, _own_names(parser, ""))

    def _subcommand_given(self) -> str | None:
        """The subcommand in this root parser's argv (``memnet fit ...``), not a ``--config`` value of that name."""
        args = getattr(self, "args", None) or []
        for index, arg in enumerate(args):
            if arg in self._subcommands_action.choices and (index == 0 or args[index - 1] not in ("-c", "--config")):
                return arg
        return None


_TOP_KEY = re.compile(r'^Parser key "([^"]+)":')  # the key jsonargparse's error is about, on its first line
_NESTED_ARG = re.compile(r"^  Given value: NestedArg\(key='([^']+)'", re.MULTILINE)  # --KEY.NAME VALUE given to it


def _option_of_no_class(key: str, option: str, args: list[str]) -> str:
    """``--trainer.logger false --trainer.logger.init_args.x 1``: an option of a key that holds no class.

    jsonargparse printed the whole usage, then that ``trainer.logger`` did not validate against any of its Union's
    types (``Expected a <class 'bool'>``, ``Given value: NestedArg(key='x', val='1')``).
    """
    typed, given = f"--{key}.{option}", None
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name.startswith(f"--{key}.") and name.rpartition(".")[2] == option:
            typed = name
            break
        if name == f"--{key}":  # the last value given before the option
            given = value if equals else (args[index + 1] if index + 1 < len(args) else None)
    said = f"it was given --{key} {given}" if given is not None else "the config gives it none"
    return (f"{typed}: {key} holds no class to take option {option!r} ({said}); give it a class first, "
            f"--{key} CLASS_PATH, then its options")


def _own_names(parser: argparse.ArgumentParser, prefix: str) -> tuple[str, ...]:
    """The options ``--PREFIX<name>`` of ``parser``, a name each (no ``--help``, no ``.help`` or ``+`` forms)."""
    names = []
    for option in parser._option_string_actions:
        name = option[2:] if option.startswith("--") else ""
        if name.startswith(prefix) and name != "help":
            name = name[len(prefix):]
            if name and "." not in name and not name.endswith("+"):
                names.append(name)
    return tuple(names)


class MemnetCLI(LightningCLI):
    """LightningCLI with memnet's defaults: W&B offline, checkpoints of last and best, seeding."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", MemnetArgumentParser)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        kwargs.setdefault(
            "trainer_defaults",
            {
                "logger": lazy_instance(OfflineFirstWandbLogger, save_dir=RUNS_DIR, project=WANDB_PROJECT),
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
        given = args
        if isinstance(args, list):
            try:
                args = resolve_config_args(args)
            except ConfigError as error:
                raise MemnetError(str(error)) from None  # one line from main, exit 2
        try:
            self.config = parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)
        except UnknownOptionError as error:  # named as the user gave it: the option typed, or the --config file
            where = error.where or (given_where(error.unknown, given, _config_keys) if isinstance(given, list) else None)
            raise UnknownOptionError(error.unknown, where) from None
        except BadValueError as error:  # named as the user gave it: the option typed, or the --config file and line
            where = error.where or (value_where(error.bad, given, _config) if isinstance(given, list) else None)
            raise BadValueError(error.bad, where) from None
        if isinstance(args, list):
            self._keep_ckpt_path(args)
        target = self.config.get(self.config.get("subcommand")) if "subcommand" in self.config else self.config
        for key in LIGHTNING_OPTIMISER_KEYS:
            if target is not None and target.get(key) is not None:
                raise MemnetError(lightning_optimiser_refused(key))

    def _keep_ckpt_path(self, args: list[str]) -> None:
        """``--ckpt_path X`` typed on the command line wins over any ``--config`` given after it.

        A run's saved ``config.yaml`` holds ``ckpt_path: null`` (the ``fit`` subcommand's config),
        so ``memnet test --ckpt_path X --config <run>/config.yaml`` parsed as written would test
        untrained weights, and ``fit`` would start again from step 0, both without a word.
        """
        given = None
        for i, arg in enumerate(args):
            if arg == "--ckpt_path" and i + 1 < len(args):
                given = args[i + 1]
            elif arg.startswith("--ckpt_path="):
                given = arg.split("=", 1)[1]
        if given is None:
            return
        subcommand = self.config.get("subcommand")
        target = self.config.get(subcommand) if subcommand else self.config
        if target is not None and "ckpt_path" in target:
            target["ckpt_path"] = given

    def _parse_ckpt_path(self) -> None:
        """The config given on the command line is authoritative.

        Lightning would otherwise apply the hyper-parameters saved in a checkpoint
        over ``--config`` and command-line values, so ``memnet test --ckpt_path X
        --model.init_args.eval_memory_size 512`` would silently use the saved value.
        The run's full config is kept beside its checkpoints (``config.yaml``).
        """

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):  # the user's own CheckpointIO stays
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        if config.get("logger") is True:
            # Lightning's "the default logger" is memnet's (offline-first W&B in runs/); Lightning's own would
            # put the run in ./lightning_logs/version_N/ instead of runs/memnet/<id>/
            config["logger"] = OfflineFirstWandbLogger(save_dir=RUNS_DIR, project=WANDB_PROJECT)
        _offline_unless_opted_in(config.get("logger"))
        # Lightning's own WandbLogger named in a config (or a subclass): a W&B error while logging stopped the fit
        # before any checkpoint; guarded as memnet's own, it warns once and the training goes on
        logger = config.get("logger")
        for item in logger if isinstance(logger, list) else [logger]:
            guard_wandb_logger(item)
        self._place_run(config, callbacks)
        return super()._instantiate_trainer(config, callbacks)

    def _place_run(self, config: dict[str, Any], callbacks: list) -> None:
        """Give the run its folder: its own under ``runs/``, or, resuming, the folder it was in.

        * ``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues ``<run>``: checkpoints,
          config and summary go there, and the W&B run of the same id is resumed
          (``resume="allow"``; W&B names the folder after its run id: :func:`_continue_wandb_run`).
        * Without a logger (``--trainer.logger false``) Lightning would use the working
          folder itself; the run gets ``<default_root_dir>/runs/memnet/run-<time>-<pid>/``.
        An explicit ``--checkpoint.dirpath`` is left alone; where it is ``<run>/checkpoints`` (a suite's run, or its
        ``config.yaml``, resumed) the W&B run goes on too.
        """
        checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
        self._check_stage_ckpt_path(checkpoint)
        self._check_ckpt_file(config)
        if self.subcommand == "fit":  # torch refuses it in a traceback, OneCycleLR's max_lr not at all
            check_learning_rates(self.model)
            check_scheduler_settings(self.model)
        resumed = self._resumed_run_dir()
        logger = config.get("logger")
        continues = checkpoint is not None and (
            checkpoint.dirpath is None or Path(checkpoint.dirpath).resolve() == (resumed or Path()) / "checkpoints")
        if resumed is not None and continues:  # its checkpoints go back where they were: the same run goes on
            _continue_wandb_run(resumed, logger)
        if checkpoint is None or checkpoint.dirpath is not None:
            return
        if self.subcommand == "fit" and self.config.get("fit", {}).get("ckpt_path") == "last":
            raise MemnetError(_last_in_a_new_folder())
        if resumed is not None:
            checkpoint.dirpath = str(resumed / "checkpoints")
        elif not logger:
            root = Path(config.get("default_root_dir") or ".")
            stem = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            folder, count = root / RUNS_DIR / "memnet" / stem, 1
            while folder.exists():  # two runs of one process within a second
                count += 1
                folder = folder.with_name(f"{stem}-{count}")
            checkpoint.dirpath = str((folder / "checkpoints").resolve())

    def _check_stage_ckpt_path(self, checkpoint: ModelCheckpoint | None) -> None:
        """``validate / test / predict --ckpt_path last | best | latest`` is refused, naming the latest run's files.

        Lightning's ``last`` and ``best`` are the checkpoints of a ``fit`` in the same process or folder; in a
        fresh process memnet's run has none, so ``last`` warned and scored the untrained weights (exit 0) and
        ``best`` stopped with a traceback. ``latest`` is memnet's word for ``evaluate``, ``export`` and
        ``babi-table``. With ``--checkpoint.dirpath`` given, ``last`` is the ``last.ckpt`` there, as in Lightning.
        ``fit --ckpt_path best`` is refused too: the best of a fit's fresh ModelCheckpoint is always none yet, and
        Lightning stopped with a traceback. No ``--ckpt_path`` at all is refused as well (Lightning scored the
        config's freshly initialised weights, exit 0), unless it is ``--ckpt_path untrained``, which asks for them;
        ``fit --ckpt_path untrained`` is refused saying so (it was told only that no file is called so).
        """
        if self.subcommand == "fit" and self.config.get("fit", {}).get("ckpt_path") == "best":
            raise MemnetError(_special_ckpt_path_refused("fit", "best"))
        if (self.subcommand == "fit" and self.config.get("fit", {}).get("ckpt_path") == UNTRAINED
                and not Path(UNTRAINED).is_file()):  # a checkpoint file of that name is still a checkpoint
            raise MemnetError(_untrained_for_fit_refused())
        if self.subcommand not in ("validate", "test", "predict"):
            return
        ckpt_path = self.config.get(self.subcommand, {}).get("ckpt_path")
        if ckpt_path is None:
            raise MemnetError(_no_ckpt_path_refused(self.subcommand))
        if ckpt_path == "last" and checkpoint is not None and checkpoint.dirpath is not None:
            return
        if ckpt_path in ("last", "best", "latest"):
            raise MemnetError(_special_ckpt_path_refused(self.subcommand, ckpt_path))

    def _check_ckpt_file(self, trainer_config: dict[str, Any]) -> None:
        """A ``--ckpt_path`` naming no file is refused here, before the logger starts its run.

        Lightning finds out only when it loads the checkpoint, after W&B has opened a run: each mistyped
        path left an empty ``runs/wandb/offline-run-*`` behind (which ``wandb sync`` would upload).
        Lightning's own words (``last``, a registry) and remote paths (``s3://``) are its to resolve; ``hpc``
        with no ``hpc_ckpt_<n>.ckpt`` in the trainer's ``default_root_dir`` (where Lightning looks; it writes
        one when SLURM stops a job to requeue it) is refused here too: Lightning stopped with a traceback.
        """
        ckpt_path = self.config.get(self.subcommand, {}).get("ckpt_path") if self.subcommand else None
        if ckpt_path == "hpc":
            root = str(trainer_config.get("default_root_dir") or os.getcwd())
            if "://" not in root and not any(re.fullmatch(r"hpc_ckpt_\d+\.ckpt", path.name)
                                             for path in Path(root).glob("hpc_ckpt_*.ckpt")):
                raise MemnetError(
                    f"--ckpt_path hpc: no HPC checkpoint (hpc_ckpt_<n>.ckpt, which Lightning writes when SLURM stops "
                    f"a job to requeue it) in {root}, trainer.default_root_dir; give --ckpt_path a checkpoint "
                    f"file{_latest_files()}")
            return
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_WORDS or "://" in str(ckpt_path):
            return
        if ckpt_path == UNTRAINED and self.subcommand in ("validate", "test", "predict"):
            return
        if str(ckpt_path).lower().startswith("registry:"):  # Lightning's model registry
            return
        if not Path(ckpt_path).is_file():
            raise MemnetError(f"--ckpt_path: no checkpoint file at {ckpt_path}")

    def _resumed_run_dir(self) -> Path | None:
        """The run folder of ``fit --ckpt_path`` when the checkpoint sits in a run's ``checkpoints/``."""
        if self.subcommand != "fit":
            return None
        ckpt_path = self.config.get(self.subcommand, {}).get("ckpt_path")
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_WORDS:
            return None
        path = Path(ckpt_path).resolve()
        return path.parent.parent if path.parent.name == "checkpoints" else None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """Lightning's keyword arguments of ``trainer.<subcommand>``; ``--ckpt_path untrained`` is no checkpoint."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand in ("validate", "test", "predict") and kwargs.get("ckpt_path") == UNTRAINED:
            kwargs["ckpt_path"] = None
        return kwargs

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LastAndBestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}-{step}",
                "checkpoint.enable_version_counter": False,  # a resumed run rewrites its last.ckpt, not last-v1.ckpt
            }
        )
        parser.link_arguments("data.input_size", "model.init_args.net.init_args.input_size", apply_on="instantiate")
        parser.link_arguments("data.output_size", "model.init_args.net.init_args.output_size", apply_on="instantiate")

    def before_fit(self) -> None:
        check_decode_lengths(self.model, self.datamodule, "fit")
        # torch.compile's clock is the process's (memnet.models.core.CompileClock); a run reports its own share
        self._compile_seconds_at_start = compile_seconds()

    def before_validate(self) -> None:
        check_decode_lengths(self.model, self.datamodule, "validate")

    def before_test(self) -> None:
        check_decode_lengths(self.model, self.datamodule, "test")

    def before_predict(self) -> None:
        check_decode_lengths(self.model, self.datamodule, "predict")

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        checkpoint_io = trainer.strategy.checkpoint_io
        loaded_step = getattr(checkpoint_io, "loaded_step", None)
        callback = trainer.checkpoint_callback
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        last_checkpoint = getattr(callback, "last_model_path", "") or None
        if loaded_step is not None and loaded_step == trainer.global_step:  # resumed a finished run
            if (run_dir(trainer) / "summary.json").is_file():
                print(f"\nnothing to train: the checkpoint is already at step {loaded_step} (trainer.max_steps / "
                      f"max_epochs reached); {run_dir(trainer)} and {LATEST_RUN_FILE} are left as they were")
                return
            # Training ended but the process was stopped before it wrote its summary (e.g. a job preempted
            # while closing): the run is finished now, with the metrics saved in its last checkpoint.
            print(f"\nnothing to train: the checkpoint is already at step {loaded_step}; the run had stopped "
                  "before writing its summary, which is written now from that checkpoint")
            metrics = {**getattr(checkpoint_io, "loaded_metrics", {}), **metrics}
            last_checkpoint = last_checkpoint or getattr(checkpoint_io, "loaded_path", None)
        summary = {
            "run_dir": str(run_dir(trainer)),
            "config": str(run_dir(trainer) / "config.yaml"),
            "best_checkpoint": getattr(callback, "best_model_path", "") or None,
            "last_checkpoint": last_checkpoint,
            "wandb_dir": _wandb_dir(trainer),
            "metrics": metrics,
        }
        compiling = compile_seconds() - getattr(self, "_compile_seconds_at_start", 0.0)
        if compiling > 0:  # this run's torch.compile: tracing, forward and backward graphs
            summary["compile_seconds"] = round(compiling, 2)
        LATEST_RUN_FILE.parent.mkdir(parents=True, exist_ok=True)
        # renamed into place: `--ckpt_path latest` read while two runs end together never reads half a file
        for path in (run_dir(trainer) / "summary.json", LATEST_RUN_FILE):
            try:
                write_text_atomic(path, json.dumps(summary, indent=2))
            except OSError as error:  # a full disk's error names no file: a traceback at the end of a finished run
                resume = f"; a fit resumed from {last_checkpoint} writes it" if last_checkpoint else ""
                raise MemnetError(f"could not write the run's summary {path}: {error.strerror or error} (is the disk "
                                  f"full or the folder read-only?); the checkpoints are whole{resume}") from None
        print("\nrun folder:       ", summary["run_dir"])
        print("best checkpoint:  ", summary["best_checkpoint"])
        print("last checkpoint:  ", summary["last_checkpoint"])
        if "compile_seconds" in summary:
            print(f"torch.compile:     {summary['compile_seconds']:.1f} s of this run's time (tracing, forward and "
                  "backward graphs)")
        if summary["wandb_dir"]:
            print("W&B run:          ", summary["wandb_dir"], "(offline)" if wandb_offline() else "")
        for logger in trainer.loggers:  # said again at the end: the warning is far up a long run's output
            if getattr(logger, "stopped", None) and isinstance(logger, WandbTrackingGuard):
                print(f"W&B logging stopped during training ({logger.stopped}); the run's folder has it all")


# the data module's options that give the lengths each command draws its targets at: fit trains at the task's range,
# validates, and is refused for a test set that ``memnet test`` of its checkpoints could never score
DECODED_LENGTHS = {"fit": ("max_length", "val_lengths", "test_lengths"), "validate": ("val_lengths",),
                   "test": ("test_lengths",), "predict": ("test_lengths",)}


def check_decode_lengths(model: Any, datamodule: Any, subcommand: str) -> None:
    """Refuse an encoder–decoder whose ``max_decode_length`` is below a target length the command will meet.

    ``Seq2Seq`` refuses a target longer than its ``max_decode_length`` at the batch that holds it: ``memnet fit``
    trained to the end and the first test batch of ``memnet test`` then stopped, naming neither the length nor the
    option. Each length ``L`` of the command's sets gives targets of ``task.output_length(L)`` tokens (EOS included).

    Raises:
        MemnetError: naming the data option, the length, its target length and ``max_decode_length``.
    """
    limit = getattr(getattr(model, "net", None), "max_decode_length", None)
    task = getattr(datamodule, "task", None)
    if limit is None or not hasattr(task, "output_length"):
        return
    for option in DECODED_LENGTHS[subcommand]:
        if option == "max_length":
            where, lengths = "data.init_args.task.init_args.max_length", [task.max_length]
        else:
            where, lengths = f"data.init_args.{option}", list(getattr(datamodule, option, None) or [])
        for length in lengths:
            steps = int(task.output_length(length))
            if steps > limit:
                raise MemnetError(
                    f"{where}: length {length} gives targets of {steps} tokens (EOS included), more than the decoder's "
                    f"max_decode_length {limit}; raise model.init_args.net.init_args.max_decode_length to ≥ {steps} "
                    f"or drop length {length}")


def _config(value: str) -> Any:
    """The content of the config ``value`` names (its fragments stacked) or holds as text; None for a remote one or
    one that cannot be read."""
    if "://" in value:
        return None
    try:
        return yaml.safe_load(value) if is_inline_config(value) else load_config(find_config(value))
    except (ConfigError, OSError, yaml.YAMLError):
        return None


def _config_keys(value: str) -> set[str] | None:
    """Every key in the config ``value`` names (its fragments stacked) or holds as text; None for a remote one or
    one that cannot be read."""
    content = _config(value)
    return None if content is None else all_keys(content)


def _offline_unless_opted_in(logger: Any) -> None:
    """Lightning's own ``WandbLogger`` in a config (``offline: false`` by default there) logs offline unless the user
    opted in with ``WANDB_MODE=online``: it went online, to the network, though nothing asked for it. memnet's
    ``OfflineFirstWandbLogger`` decides by itself (an ``offline: false`` given to it is kept as given)."""
    for item in logger if isinstance(logger, list) else [logger]:
        if (isinstance(item, WandbLogger) and not isinstance(item, OfflineFirstWandbLogger) and not item._offline
                and wandb_mode() == "offline" and getattr(item, "_experiment", None) is None):
            item._offline = True  # read when its run starts: WANDB_MODE=dryrun for wandb.init
            print(f"W&B logs offline (WANDB_MODE=online to sync): {type(item).__name__} was given offline=False, "
                  "Lightning's default", file=sys.stderr)


def _continue_wandb_run(resumed: Path, logger: Any) -> None:
    """A W&B logger of ``fit --ckpt_path <resumed>/checkpoints/...`` logs on to the W&B run ``<resumed>`` logged to.

    That run is the one logged in the run's own folder (``<resumed>/wandb/``, where ``memnet suite`` puts it), else
    the one the folder is named after where it lies as Lightning places a W&B run, ``<save_dir>/<project>/<id>/``
    (memnet's ``runs/memnet/<id>/``). Any other folder (a suite's ``<experiment>/seed_0`` trained without W&B) gets
    a new W&B run: its name was taken as the id, so that every hand-resumed suite run of every experiment logged to
    one W&B run ``seed_0``. An ``id`` the user gave is kept.
    """
    for item in logger if isinstance(logger, list) else [logger]:
        if not isinstance(item, WandbLogger) or getattr(item, "_experiment", None) is not None:
            continue
        if item._wandb_init.get("id"):  # WandbLogger keeps its wandb.init arguments here until the run starts
            continue
        # Lightning's layout, <save_dir>/<project>/<W&B id>/, whether or not W&B's own files are still there
        named_by_wandb = (resumed.parent.name == item._project
                          and resumed.parent.parent == Path(item.save_dir or ".").resolve())
        wandb_id = logged_wandb_id(resumed) or (resumed.name if named_by_wandb else None)
        if wandb_id is not None:
            item._wandb_init.update(id=wandb_id, resume="allow")
            item._id = wandb_id


def _wandb_dir(trainer: pl.Trainer) -> str | None:
    if wandb_mode() == "disabled":  # W&B hands out a stand-in run whose folder is never written
        return None
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            try:
                return str(Path(logger.experiment.dir).parent)
            except Exception:  # noqa: BLE001 -- a disabled or failed W&B run: the rest of the summary still stands
                return None
    return None


def _special_ckpt_path_refused(subcommand: str, ckpt_path: str) -> str:
    """Why ``memnet validate / test / predict --ckpt_path last|best|latest`` is refused, and the files to give."""
    return (f"--ckpt_path {ckpt_path}: memnet {subcommand} takes a checkpoint file (Lightning's 'last' and 'best' are "
            "those of a fit in the same process, which has none, and 'latest' is understood by memnet evaluate, "
            f"export and babi-table){_latest_files()}")


def _latest_files() -> str:
    """``"; the latest run's (runs/latest.json) are best: ..., last: ..."``, or that it names none."""
    try:
        latest = json.loads(LATEST_RUN_FILE.read_text())
    except (OSError, ValueError):
        latest = {}
    files = [f"{key}: {latest[f'{key}_checkpoint']}" for key in ("best", "last")
             if isinstance(latest, dict) and latest.get(f"{key}_checkpoint")]
    return f"; the latest run's ({LATEST_RUN_FILE}) are {', '.join(files)}" if files else f"; {LATEST_RUN_FILE} names none"


def _no_ckpt_path_refused(subcommand: str) -> str:
    """Why ``memnet validate / test / predict`` without ``--ckpt_path`` is refused, and what to give."""
    return (f"no --ckpt_path: memnet {subcommand} would score the config's untrained, freshly initialised weights; "
            f"give --ckpt_path a checkpoint file{_latest_files()} (or --ckpt_path {UNTRAINED} to score the untrained "
            "weights on purpose)")


def _untrained_for_fit_refused() -> str:
    """Why ``memnet fit --ckpt_path untrained`` is refused: the word is for validate / test / predict."""
    return (f"--ckpt_path {UNTRAINED}: memnet fit starts from the config's freshly initialised weights without "
            f"--ckpt_path; '{UNTRAINED}' is for memnet validate / test / predict, to score those weights on purpose "
            "(give fit --ckpt_path a checkpoint file to resume from it)")


def _last_in_a_new_folder() -> str:
    """Why ``fit --ckpt_path last`` is refused where memnet places the run, and what resumes the latest run."""
    where = "--ckpt_path <run>/checkpoints/last.ckpt"
    try:
        latest = json.loads(LATEST_RUN_FILE.read_text()).get("last_checkpoint")
    except (OSError, ValueError, AttributeError):
        latest = None
    if latest:
        where += f" (the latest run's: --ckpt_path {latest})"
    return ("--ckpt_path last: Lightning looks for last.ckpt in this run's checkpoint folder, and memnet gives every "
            f"new run a folder of its own, so it would find none and train from scratch; resume a run with {where}, "
            "or give --checkpoint.dirpath the folder whose last.ckpt to continue")
