"""The ``memnet`` command: the Lightning CLI plus memnet's own subcommands.

    memnet fit --config configs/ntm/copy.yaml              train
    memnet validate --config ... --ckpt_path PATH           evaluate a checkpoint on the validation set
    memnet test / predict ...                               likewise on the test set
    memnet evaluate --ckpt_path PATH --lengths 20 40 80     length generalisation (memnet.cli.evaluate)
    memnet probe configs/probe/*.yaml --out PNG             ‖∂L/∂h(t)‖ of each config's model (memnet.cli.probe)
    memnet figures [--only NAME ...] [--out DIR]            the chapter's figures into docs/figures (memnet.cli.figures)
    memnet suite run configs/suites/smoke.yaml --jobs 2     a suite of experiments × seeds (memnet.cli.suite)
    memnet suite report runs/suites/smoke                   its leaderboard, tables and plots
    memnet export --ckpt_path PATH --out DIR                the network as safetensors + config (memnet.cli.export)
    memnet configs [NAME]                                   the shipped configs (--config ntm/copy works too)
    memnet data babi                                        fetch, verify and extract bAbI (memnet.cli.data)
    memnet babi-table --ckpt_path PATH                      test error per bAbI task (memnet.cli.babi_table)

This package is the top floor: nothing in memnet or tasks imports it. One module per
subcommand; ``memnet.cli.lightning_cli`` holds the Lightning CLI with memnet's defaults
and ``memnet.cli.rebuild`` the one way to rebuild a run from its checkpoint and config.

Configs stack (``--config a.yaml --config b.yaml``, later wins; inside a file,
``extends: [fragment.yaml]``, see memnet.cli.configs) and any field can
be overridden (``--model.init_args.net.init_args.memory_size 64``). The data
module's sizes are linked once to the network's (``input_size``, ``output_size``).

Logging goes to Weights & Biases, **offline** unless ``WANDB_MODE=online`` is set;
runs are written under ``runs/`` of the working directory.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import sys

import yaml

from memnet.cli.configs import ConfigError, find_config, is_inline_config, read_text
from memnet.cli.errors import TRACEBACK_ENV, ckpt_path_of, one_line
from memnet.cli.lightning_cli import (
    LATEST_RUN_FILE,
    RUNS_DIR,
    AtomicCheckpointIO,
    MemnetCLI,
    RunConfigSaver,
)
from memnet.cli.typos import unknown_command
from memnet.utils import MemnetError, wandb_offline

__all__ = [
    "COMMANDS",
    "LATEST_RUN_FILE",
    "RUNS_DIR",
    "AtomicCheckpointIO",
    "MemnetCLI",
    "RunConfigSaver",
    "main",
    "wandb_offline",
]

LIGHTNING_COMMANDS = {
    "fit": "train a model: memnet fit --config configs/ntm/copy.yaml",
    "validate": "score a checkpoint on the validation set (--config, --ckpt_path)",
    "test": "score a checkpoint on the test set (--config, --ckpt_path)",
    "predict": "print a checkpoint's predictions on the predict set (--config, --ckpt_path)",
}

# name -> (module with main(argv), one line of help); each module is imported only when its command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": ("memnet.cli.evaluate", "length generalisation of a checkpoint: table, figures, results.json"),
    "probe": ("memnet.cli.probe", "gradient through time, ‖∂L/∂h(t)‖, of each config's model in one figure"),
    "figures": ("memnet.cli.figures", "the chapter's figures into docs/figures (--only NAME ...)"),
    "suite": ("memnet.cli.suite", "run a suite of experiments × seeds, then its leaderboard and plots"),
    "export": ("memnet.cli.export", "a checkpoint's network as safetensors + config (memnet.models.load)"),
    "configs": ("memnet.cli.configs", "list the shipped configs, or print one resolved (memnet configs NAME)"),
    "data": ("memnet.cli.data", "fetch, verify and extract a data set (memnet data babi)"),
    "babi-table": ("memnet.cli.babi_table", "test error per bAbI task of checkpoints, markdown and CSV"),
}


def usage() -> str:
    """``memnet --help``: every subcommand with a line each."""
    width = max(map(len, [*LIGHTNING_COMMANDS, *COMMANDS]))
    lines = ["usage: memnet SUBCOMMAND [options]   (memnet SUBCOMMAND --help for its options)", "",
             "Differentiable neural memory: train, evaluate and compare NTM, DNC, MemN2N and",
             "recurrent models. W&B logs offline unless WANDB_MODE=online.", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``memnet`` console script (and of ``python -m memnet``).

    A known problem (bad value, damaged file, unwritable folder, see
    ``memnet.cli.errors``) is printed as one line ``memnet: …`` and exits with
    status 2 (1 for a diverged training); ``MEMNET_TRACEBACK=1`` shows the traceback.
    Output cut off by its reader (``memnet configs | head``) ends quietly with status 141.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    console_logging()
    try:
        _dispatch(argv)
    except BrokenPipeError:
        # the reader of stdout went away (`memnet configs | head`): what it wanted is printed; no traceback, and the
        # interpreter's flush of stdout at exit must not fail again on the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell reports a program the pipe stopped
    except Exception as error:
        message = one_line(error, ckpt_path_of(argv))
        if message is None or os.environ.get(TRACEBACK_ENV):
            raise
        print(f"memnet: {message}", file=sys.stderr)
        raise SystemExit(1 if isinstance(error, FloatingPointError) else 2) from None


def console_logging() -> None:
    """Print memnet's own log records (INFO and up: compilations and their time, fallbacks) on stderr.

    Only where nothing is configured yet: a program that set up ``logging`` itself (a
    handler on the root or the ``memnet`` logger) keeps its own.
    """
    logger = logging.getLogger("memnet")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _dispatch(argv: list[str]) -> None:
    """Run the subcommand ``argv`` names."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        code = module.main(argv[1:])
        if isinstance(code, int) and not isinstance(code, bool):  # a command that returns its exit status
            raise SystemExit(code)
        return
    check_command(argv)
    check_config_files(argv)
    MemnetCLI(args=argv)


ROOT_OPTIONS = ("-h", "--help", "-c", "--config", "--print_config")  # the Lightning parser's own, before fit


def check_command(argv: list[str]) -> None:
    """The command line names a command, and only the Lightning parser's own options come before it.

    A first argument that is no command (``memnet fti``) is one line with the close commands, or all of them: the
    Lightning parser said ``error: argument subcommand: invalid choice: 'fti' (choose from 'fit', 'validate',
    'test', 'predict')`` under its usage, naming ``__main__.py`` and none of memnet's own commands.
    An option of the command's given before it (``memnet --trainer.max_steps 5 fit ...``) is one line saying
    that options go after the command, with the command line so: the parser took ``5`` for the command
    (``invalid choice: '5'``) or said ``unrecognized arguments: --trainer.max_steps=5``. ``-c``/``--config``
    and ``--print_config`` before ``fit`` are the parser's own and stay as they were.
    """
    index, option = 0, None  # option: where the first option that is not the parser's own is
    while index < len(argv):
        arg = argv[index]
        if arg in LIGHTNING_COMMANDS or (arg in COMMANDS and option is not None):
            if option is not None:
                moved = [*argv[:option], arg, *argv[option:index], *argv[index + 1:]]
                raise MemnetError(f"{argv[option].split('=', 1)[0]}: options go after the command: "
                                  f"memnet {shlex.join(moved)}")
            return
        if arg in ("-c", "--config"):  # its value may be anything, a file named fit too
            index += 2
            continue
        if arg.split("=", 1)[0] in ROOT_OPTIONS or (arg.startswith("-c") and not arg.startswith("--")):
            pass
        elif arg.startswith("-") and len(arg) > 1:
            option = index if option is None else option
        elif option is None:
            raise MemnetError(unknown_command(arg, [*LIGHTNING_COMMANDS, *COMMANDS], "memnet --help"))
        index += 1  # after an option, a word that is no command is taken for its value
    if option is not None:
        raise MemnetError(f"{argv[option].split('=', 1)[0]}: no command; options go after one: memnet COMMAND "
                          f"{shlex.join(argv)} (memnet --help lists the commands)")


def check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` exists and is valid YAML; else one line naming the file, line and column.

    (The parser would report a syntax error in ``"<unicode string>"``, after its usage text.)
    """
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg in ("--config", "-c") and index + 1 < len(argv):
            value = argv[index + 1]
        else:
            continue
        if is_inline_config(value) or "://" in value:
            continue  # an inline YAML string or a remote URL, not a file name
        try:
            path = find_config(value)  # a file, or a shipped config's name (ntm/copy)
            text = read_text(path)
        except ConfigError as error:
            raise MemnetError(str(error)) from None
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise MemnetError(f"--config {path}{where}: YAML syntax error, {problem}") from None


if __name__ == "__main__":
    main()
