"""One line instead of a traceback: what the ``memnet`` command prints when it stops on bad input.

:func:`one_line` turns an exception into the message a user needs (the file, field or
value at fault and what was expected), or None for an exception it does not know
(a bug: the traceback is then shown). The entry point prints ``memnet: <message>``
on stderr and exits with status 2 (1 for a diverged training, as before).
``MEMNET_TRACEBACK=1`` shows the full traceback instead.

Known: memnet's own ``MemnetError``; Lightning's ``MisconfigurationException`` (a Trainer option out of
range, ``--trainer.max_steps -5``); a ``ValueError``, ``TypeError`` or ``FileNotFoundError`` raised by
memnet's or the tasks' code, even when the config parser wrapped it (a size of 0
given on the command line); a ``FloatingPointError`` (diverged loss); a state dict
that does not fit the config's model; a file that cannot be written (read-only
folder, disk full) or read; a YAML syntax error.
"""

from __future__ import annotations

import errno
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import yaml

_REPO = Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = (str(_REPO / "memnet") + os.sep, str(_REPO / "tasks") + os.sep)  # "our code"
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR,
                errno.ENOENT}
TRACEBACK_ENV = "MEMNET_TRACEBACK"


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or during, outermost first."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def raised_by_memnet(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in memnet's or the tasks' code."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(PACKAGE_ROOTS)


def one_line(error: BaseException, ckpt_path: str | None = None) -> str | None:
    """The message for ``error``, or None if it is not one the user can fix from the message alone."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from memnet.utils import MemnetError

    errors = list(chain(error))
    for item in errors:
        if isinstance(item, (MemnetError, FloatingPointError)):
            return _first_line(item)
    for item in errors:  # Lightning's own check of a Trainer option, which names it: `max_steps` must be ...
        if isinstance(item, MisconfigurationException):
            return _first_line(item)
    for item in reversed(errors):  # the innermost of our own messages: the one that names the field
        if isinstance(item, (ValueError, TypeError, FileNotFoundError)) and raised_by_memnet(item):
            return _first_line(item)
    for item in errors:
        text = str(item)
        if isinstance(item, RuntimeError) and text.startswith("Error(s) in loading state_dict"):
            problems = "; ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
            where = f"--ckpt_path {ckpt_path}" if ckpt_path else "the checkpoint"
            return (f"{where} does not fit the model of the config (was it trained with another config?): "
                    f"{_shorten(problems)}")
        if isinstance(item, yaml.YAMLError):
            return f"YAML syntax error: {_yaml_where(item)}"
        if isinstance(item, OSError) and item.errno in WRITE_ERRNOS and item.filename:
            return f"cannot use {item.filename}: {item.strerror}"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _shorten(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _yaml_where(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return problem
    return f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: {problem}"


def ckpt_path_of(argv: list[str]) -> str | None:
    """The value of ``--ckpt_path`` in a command line, if any."""
    for index, arg in enumerate(argv):
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
        if arg == "--ckpt_path" and index + 1 < len(argv):
            return argv[index + 1]
    return None
