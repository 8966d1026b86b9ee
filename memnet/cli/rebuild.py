"""One place that rebuilds a run: its model and data from ``config.yaml``, its weights from a checkpoint.

Used by ``memnet evaluate``, ``memnet babi-table``, the suite's evaluations and
``memnet probe``. A run's folder, as ``memnet fit`` writes it::

    runs/<project>/<id>/config.yaml              the full resolved config (the ``fit`` subcommand's)
    runs/<project>/<id>/checkpoints/last.ckpt    and best-*.ckpt
    runs/latest.json                             the latest run's summary (checkpoints, metrics)

The saved config holds the keys only ``memnet fit`` accepts (``ckpt_path``,
``weights_only``, …: :func:`fit_only_keys`); :func:`config_text` strips them, once,
for every parser built here.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from memnet.checkpoint import read_checkpoint
from memnet.cli.configs import ConfigError, find_config, load_config
from memnet.cli.lightning_cli import LATEST_RUN_FILE, MemnetCLI
from memnet.cli.typos import ParseRefusal
from memnet.models.pretrained import match_dtype
from memnet.utils import MemnetError, run_config_candidates

LATEST = "latest"  # --ckpt_path latest: the best (else last) checkpoint of runs/latest.json
QUIET = ("--trainer.logger=false", "--trainer.enable_progress_bar=false")
# A checkpoint is scored in this one process, on one device, whatever the run trained with: under DDP each
# process would score its share of the questions (and the launcher would start the command again in new
# processes); predictions would come back from the first share only.
ONE_PROCESS = ("--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto")


class RebuildError(ValueError):
    """A run that cannot be rebuilt as asked (bad path, config or checkpoint); the message names it."""


def resolve_checkpoint(ckpt_path: str, latest_file: str | Path | None = None) -> Path:
    """The checkpoint file: ``ckpt_path`` itself, or for ``latest`` the best (else last) of the latest run."""
    if ckpt_path != LATEST:
        path = Path(ckpt_path)
        if not path.is_file():
            raise RebuildError(f"--ckpt_path: no checkpoint file at {path}")
        return path
    latest = Path(latest_file or LATEST_RUN_FILE)
    if not latest.is_file():
        raise RebuildError(f"--ckpt_path latest: {latest} not found; train first (memnet fit ...)")
    try:
        summary = json.loads(latest.read_text())
    except json.JSONDecodeError as error:
        raise RebuildError(f"--ckpt_path latest: {latest} line {error.lineno} is not JSON: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RebuildError(f"--ckpt_path latest: {latest} cannot be read ({error})") from None
    keys = ("best_checkpoint", "last_checkpoint")
    if not isinstance(summary, dict) or not any(key in summary for key in keys):
        shown = json.dumps(summary)
        shown = shown if len(shown) <= 80 else shown[:79] + "…"
        raise RebuildError(
            f"--ckpt_path latest: {latest} is not a run summary (expected a JSON object with "
            f"{' and/or '.join(keys)}, as `memnet fit` writes); got {type(summary).__name__} {shown}"
        )
    for key in keys:
        candidate = summary.get(key)
        if isinstance(candidate, str) and candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RebuildError(
        f"--ckpt_path latest: {latest} names no existing checkpoint "
        f"(best_checkpoint={summary.get('best_checkpoint')!r}, last_checkpoint={summary.get('last_checkpoint')!r})"
    )


def default_config(checkpoint: Path) -> Path:
    """The run's ``config.yaml``: in the parent of the checkpoint's ``checkpoints/`` folder, else beside it
    (:func:`memnet.utils.run_config_candidates`)."""
    candidates = run_config_candidates(checkpoint)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RebuildError(
        f"--config: no config.yaml beside the checkpoint (looked at {', '.join(map(str, candidates))}); "
        "pass --config"
    )


def fit_only_keys() -> set[str]:
    """Arguments of ``Trainer.fit`` that the CLI adds to the ``fit`` subcommand's config (and saves)."""
    import pytorch_lightning as pl

    return set(inspect.signature(pl.Trainer.fit).parameters) - {
        "self", "model", "train_dataloaders", "val_dataloaders", "datamodule"}


def config_text(config: str | Path) -> str:
    """The config's YAML text without the keys only ``memnet fit`` accepts (``ckpt_path``, ``weights_only``).

    A run's saved ``config.yaml`` is the ``fit`` subcommand's config; a parser built
    without a subcommand (``run=False``) refuses those keys.
    """
    try:
        config = find_config(config)  # a file, or a shipped config's name (ntm/copy)
        content = load_config(config)  # its extends fragments stacked (a run's config.yaml has none)
    except ConfigError as error:  # a name found nowhere is already "--config NAME: ..."
        message = str(error)
        raise RebuildError(message if message.startswith("--config") else f"--config: {message}") from None
    for key in fit_only_keys():
        content.pop(key, None)
    return yaml.safe_dump(content, sort_keys=False)


def instantiate(configs: Sequence[str | Path], overrides: Sequence[str] = ()) -> MemnetCLI:
    """The run's model, data module and trainer (not run), through the real CLI parser, no logger."""
    args = [arg for config in configs for arg in ("--config", config_text(config))]
    try:
        return MemnetCLI(args=[*args, *QUIET, *overrides], run=False)
    except ParseRefusal as error:  # a key the current code's class no longer takes, or a value it no longer takes
        raise RebuildError(
            # the key as the file holds it (error.unknown): the parser was given the file's text, not its name
            f"--config: {', '.join(map(str, configs))} does not parse with the current code: "
            f"{error.found.describe(None)}; a run saved by "
            "an older version needs --config with a current config"
        ) from None
    except SystemExit:  # the parser printed what it refused; say which file and what to do
        raise RebuildError(
            f"--config: {', '.join(map(str, configs))} does not parse with the current code (see the "
            "parser's error above); a run saved by an older version needs --config with a current config"
        ) from None


def does_not_fit(checkpoint: Path, configs: Sequence[str | Path], error: RuntimeError) -> RebuildError:
    """The error for a state dict that ``load_state_dict`` refused, in one line naming the checkpoint and the config.

    torch puts each missing, unexpected or mismatched key on a line of its own, and the ``memnet`` command prints
    the first line only (``Error(s) in loading state_dict for QAModule:``): the lines are joined.
    """
    problems = "; ".join(line.strip() for line in str(error).splitlines()[1:] if line.strip()) or str(error)
    problems = problems if len(problems) <= 400 else problems[:399] + "…"
    return RebuildError(
        f"--ckpt_path: {checkpoint} does not fit the model of {', '.join(map(str, configs))}: {problems}")


@contextlib.contextmanager
def loading(checkpoint: Path, configs: Sequence[str | Path]) -> Iterator[None]:
    """Around a ``trainer.test/validate/predict(ckpt_path=checkpoint)``: a state dict that does not fit is
    :func:`does_not_fit` naming ``checkpoint``. The command's own message named the first ``--ckpt_path`` of its
    command line, which for ``memnet babi-table`` with several is not always the one at fault."""
    try:
        yield
    except RuntimeError as error:
        if not str(error).startswith("Error(s) in loading state_dict"):
            raise
        raise does_not_fit(checkpoint, configs, error) from None


def load_checkpoint(module: torch.nn.Module, checkpoint: Path, configs: Sequence[str | Path]) -> None:
    """Load a Lightning checkpoint's ``state_dict`` into ``module``, naming what does not fit."""
    try:
        state = read_checkpoint(checkpoint)  # a damaged file or non-finite weights: one line naming them
    except MemnetError as error:
        raise RebuildError(f"--ckpt_path: {error}") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise RebuildError(f"--ckpt_path: {checkpoint} holds no 'state_dict' (not a Lightning checkpoint)")
    match_dtype(module, state["state_dict"])  # a float64 run is rebuilt (evaluated, exported) in float64
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise does_not_fit(checkpoint, configs, error) from None


def build(configs: Sequence[str | Path], checkpoint: Path, device: torch.device) -> tuple[Any, Any]:
    """Model (a LightningModule with the checkpoint's weights, in eval mode) and data module."""
    cli = instantiate(configs)
    load_checkpoint(cli.model, checkpoint, configs)
    return cli.model.to(device).eval(), cli.datamodule


def run_stage(
    stage: str, checkpoint: str | Path, config: str | Path | None = None, overrides: Sequence[str] = ()
) -> dict[str, float]:
    """``memnet test`` or ``validate`` of a checkpoint with its run's config; the logged metrics.

    The config defaults to ``config.yaml`` of the run folder; the run's own callbacks
    are left out (they are for training), and so are its ``limit_val_batches`` and
    ``limit_test_batches``: the whole split is scored, in this process on one device
    (a run trained with DDP too: ``ONE_PROCESS``).
    """
    if stage not in ("test", "validate"):
        raise RebuildError(f"stage must be 'test' or 'validate', got {stage!r}")
    checkpoint = resolve_checkpoint(str(checkpoint))
    configs = [config if config is not None else default_config(checkpoint)]
    # the whole split, whatever limits the run trained with (a limit given in ``overrides`` still wins): the
    # sets are in task order, so a limit drops the last tasks and scores one on part of its questions, unmarked
    cli = instantiate(configs, ["--trainer.callbacks=[]", "--trainer.limit_test_batches=1.0",
                                "--trainer.limit_val_batches=1.0", *ONE_PROCESS, *overrides])
    trainer_stage = cli.trainer.test if stage == "test" else cli.trainer.validate
    with loading(checkpoint, configs):
        blocks = trainer_stage(cli.model, datamodule=cli.datamodule, ckpt_path=str(checkpoint), weights_only=False)
    metrics: dict[str, float] = {}
    for block in blocks:
        metrics.update({key: float(value) for key, value in block.items()})
    return metrics
