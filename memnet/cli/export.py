"""``memnet export``: a checkpoint's network as a portable folder (safetensors + config).

    memnet export --ckpt_path PATH|latest --out DIR [--config CFG ...] [--push-to-hub OWNER/NAME]

The run is rebuilt from its ``config.yaml`` (or the ``--config`` files) as
``memnet evaluate`` does, the checkpoint's weights are loaded, and the network
alone (no LightningModule, optimiser or training state) is written to ``DIR``:

    model.safetensors   its weights
    config.json         its class path and every constructor argument (and the run's
                        eval_memory_size, where it has one)

``memnet.models.load(DIR)`` rebuilds it (see :mod:`memnet.models.pretrained`), with the memory
size the run evaluated with (``model.init_args.eval_memory_size``) where it set one.
``--push-to-hub`` also uploads the folder to the Hugging Face Hub (network and a
token needed).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

from memnet.cli.rebuild import RebuildError as EvaluationError
from memnet.cli.rebuild import default_config, instantiate, load_checkpoint, resolve_checkpoint
from memnet.cli.typos import CommandParser
from memnet.models.pretrained import HUB_REPO_ID, PretrainedError, push_to_hub, save


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandParser(
        prog="memnet export", description="Write a checkpoint's network as safetensors weights plus its config."
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint file, or 'latest' (runs/latest.json)")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    parser.add_argument("--config", action="append", default=None,
                        help="config file(s) of the run (default: the run's config.yaml)")
    parser.add_argument("--push-to-hub", dest="push_to_hub", default=None, metavar="OWNER/NAME",
                        help="also upload the folder to this Hugging Face Hub repository")
    return parser.parse_args(argv)


def network_config(cli: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of the network in ``cli`` (a ``MemnetCLI`` that was not run).

    Arguments the CLI links from the data module (``input_size``, ``output_size``) are
    not in the parsed config; they are read from the data module, else from the network.
    """
    model_args = cli.config.model.init_args
    if "net" not in model_args:
        raise EvaluationError(f"--config: the model {cli.config.model.class_path} has no 'net' to export")
    config = model_args.net.as_dict()
    net, datamodule = cli.model.net, cli.datamodule
    parameters = inspect.signature(type(net).__init__).parameters
    for name, value in config["init_args"].items():
        required = name in parameters and parameters[name].default is inspect.Parameter.empty
        if value is None and required:
            source = datamodule if hasattr(datamodule, name) else net
            if not hasattr(source, name):
                raise EvaluationError(f"--config: {config['class_path']} argument {name} is unset and neither "
                                      "the data module nor the network has it")
            config["init_args"][name] = getattr(source, name)
    return config


def run(args: argparse.Namespace) -> Path:
    """Export as ``args`` say; return the folder written."""
    if args.push_to_hub and not HUB_REPO_ID.match(args.push_to_hub):  # refuse before the slow rebuild
        raise PretrainedError(f"--push-to-hub: {args.push_to_hub!r} is not a Hub repository id (owner/name)")
    checkpoint = resolve_checkpoint(args.ckpt_path)
    out = Path(args.out)
    if out.name in ("", "..") or out.resolve() == Path.cwd():  # refuse before the slow rebuild (save's own check)
        raise PretrainedError(f"--out: {args.out!r} names the current folder or one above it, which the export would "
                              "replace; give the new folder's name, e.g. --out exported")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # refuse before the slow rebuild
        raise PretrainedError(f"--out: {out} exists and is not an empty folder; choose a new folder or empty it")
    configs = args.config or [default_config(checkpoint)]
    cli = instantiate(configs)
    load_checkpoint(cli.model, checkpoint, configs)
    net = cli.model.net.to(torch.device("cpu")).eval()
    # the run validated and tested with eval_memory_size slots: the loaded network runs with them too
    eval_memory_size = getattr(cli.model, "eval_memory_size", None)
    folder = save(net, network_config(cli), out, eval_memory_size=eval_memory_size)
    slots = "" if eval_memory_size is None else f"; it runs with the run's eval_memory_size, {eval_memory_size} slots"
    print(f"exported {type(net).__name__} from {checkpoint} to {folder} "
          f"(load with memnet.models.load({str(folder)!r}){slots})")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(folder, args.push_to_hub)}")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``memnet export``; returns the exit status: 2 on bad input (a checkpoint, config, ``--out``
    or Hub id it cannot use), as every ``memnet`` command and argparse."""
    args = parse_args(argv)
    try:
        run(args)
    except (EvaluationError, PretrainedError) as error:
        print(f"memnet export: {error}", file=sys.stderr)
        return 2
    return 0
