"""A mistyped option name in one line: the key, the class it was given to, and the names it takes.

jsonargparse reports an unknown key of a class given by ``class_path``
(``--model.init_args.net.init_args.memroy_size 5``, or the same key in a ``--config`` file)
after the whole usage text (some 77 lines for ``memnet fit``), at the bottom of a Union error::

    error: Parser key "model":
      Does not validate against any of the Union subtypes
      Subtypes: [<class 'pytorch_lightning.core.module.LightningModule'>, <class 'NoneType'>]
      Errors:
        - Problem with given class_path 'memnet.lightning.SequenceModule':
            Parser key "net":
              Problem with given class_path 'memnet.models.ntm.NTM':
                Option 'memroy_size' is not accepted
        - Expected a <class 'NoneType'>
      ...

:func:`unknown_option` reads that nesting back (the keys and classes above the option) and
:meth:`UnknownOption.describe` says it in one line, with the closest of the class's
``__init__`` parameters::

    --model.init_args.net.init_args.memroy_size: memnet.models.ntm.NTM takes no option 'memroy_size';
    did you mean memory_size?

An option the parser itself does not know, before any class sees it, was the whole usage and
``error: unrecognized arguments: --trainer.max_stpes 5`` (a config file's key: ``Group 'trainer'
does not accept option 'max_stpes'``, ``Option 'trainr.max_steps' is not accepted``):
:func:`refused_key` reads the key back, and the parser says it in the same line, with the closest
of the names it takes there (``memnet.cli.lightning_cli.MemnetArgumentParser``)::

    --trainer.max_stpes: the Trainer takes no option 'max_stpes'; did you mean max_steps?
    --seed_everythin: memnet fit takes no option 'seed_everythin'; did you mean seed_everything?

A value of the wrong type is said in one line by :mod:`memnet.cli.values`; any other parser error (a stray
value) is left to jsonargparse as it was; ``MEMNET_TRACEBACK=1`` shows jsonargparse's whole report for a
mistyped key too.

memnet's own commands (evaluate, probe, figures, ...) parse with :class:`CommandParser`: an
option none of their arguments takes is named first, in one line with the closest options
(``memnet evaluate: unrecognized option --lenghts; did you mean --lengths?``), and an option is
never taken for a longer one it begins (``--length 20`` is not ``--lengths 20``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
import shlex
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from memnet.utils import MemnetError

_KEY = re.compile(r'^Parser key "([^"]+)":$')
_CLASS = re.compile(r"^Problem with given class_path '([^']+)':$")
_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_CLASS_IN_LINE = re.compile(r"class_path='([^']+)'")  # a class behind a Callable type names itself in its line
_LIST = re.compile(r"^Subtypes: \[list\[")  # the key holds a list of classes (trainer.callbacks)
_UNRECOGNIZED = "unrecognized arguments: "  # argparse's extras, joined by spaces: the unknown option first
_GROUP_REFUSES = re.compile(r"^Group '([^']+)' does not accept option '([^']+)'$")  # a config's trainer: {max_stpes: 5}
_TOP_REFUSES = re.compile(r"^Option '([^']+)' is not accepted$")  # a config's trainr: {...}, as trainr.max_steps
_SUBCOMMAND_REFUSES = re.compile(r"^Subcommand '([^']+)' does not accept option '([^']+)'$")  # either, checked whole
INLINE_SHOWN = 60  # the characters of a config given as text that name it in a message
CLOSE_AS_BEST = 0.05  # a second suggestion only as near as the first: memory_sise -> memory_size, not memory_init too


@dataclass(frozen=True)
class UnknownOption:
    """An option a class given by ``class_path`` does not take.

    Attributes:
        key: where it was given, in the config's own spelling, ``model.init_args.net.init_args.memroy_size``;
            for an entry of a list of classes, the list's key alone (``trainer.callbacks``).
        class_path: the class, ``memnet.models.ntm.NTM``.
        option: the name it does not take, ``memroy_size``.
        owner: who refused it where that is not said by ``class_path`` alone: ``the Trainer`` (a Lightning
            group of the parser), ``memnet fit`` (an option of the command itself).
        names: the names ``owner`` takes, where they are not ``class_path``'s ``__init__`` parameters
            (the parser's own options).
    """

    key: str
    class_path: str
    option: str
    owner: str | None = None
    names: tuple[str, ...] | None = None

    def describe(self, where: str | None = None) -> str:
        """One line: ``WHERE: CLASS takes no option 'NAME'; did you mean CLOSE?`` (``where`` defaults to the key)."""
        names = list(self.names) if self.names is not None else parameter_names(self.class_path)
        close = closest(self.option, names)
        if close:
            hint = f"; did you mean {' or '.join(close)}?"
        elif names:
            hint = f" (it takes {', '.join(names)})"
        else:
            hint = ""
        return f"{where or self.key}: {self.owner or self.class_path} takes no option {self.option!r}{hint}"


class ParseRefusal(MemnetError):
    """What the parser refused, in one line (exit 2): ``found`` (a refusal that can ``describe(where)`` itself)
    and where it was given (the option typed, a ``--config`` file and line), None where not known."""

    def __init__(self, found: Any, where: str | None = None) -> None:
        super().__init__(found.describe(where))
        self.found = found
        self.where = where


class UnknownOptionError(ParseRefusal):
    """The parser met an option that the class it was given to does not take (one line, exit 2)."""

    @property
    def unknown(self) -> UnknownOption:
        return self.found


def unknown_option(text: str) -> UnknownOption | None:
    """The one unknown option of a class that jsonargparse's error ``text`` reports, or None.

    None where the text reports something else, or several unknown options (a Union of classes
    that each refuse the key: which one was meant is not known).
    """
    stack: list[tuple[int, str, str]] = []  # (indent, "key" | "list" | "class", name) of the lines above this one
    found: set[UnknownOption] = set()
    for line in text.splitlines():
        body = line.strip()
        indent = len(line) - len(line.lstrip())
        if body.startswith("- "):  # an entry of "Errors:": its text starts two columns in
            body, indent = body[2:], indent + 2
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if match := _KEY.match(body):
            stack.append((indent, "key", match.group(1)))
        elif match := _CLASS.match(body):
            stack.append((indent, "class", match.group(1)))
        elif _LIST.match(body) and stack and stack[-1][1] == "key":
            stack[-1] = (stack[-1][0], "list", stack[-1][2])
        elif match := _OPTION.search(body):
            inline = _CLASS_IN_LINE.search(body)
            if inline:
                class_path = inline.group(1)
            else:  # the option's own class is the line just above it
                class_path = stack[-1][2] if stack and stack[-1][1] == "class" else None
            if class_path is not None and stack[0][1] in ("key", "list"):
                found.add(UnknownOption(_key(stack, match.group(1)), class_path, match.group(1)))
    return found.pop() if len(found) == 1 else None


def _key(stack: list[tuple[int, str, str]], option: str) -> str:
    """The dotted key of ``option`` under the keys and classes of ``stack``; a list's key where one holds it."""
    parts: list[str] = []
    for _, kind, name in stack:
        if kind == "list":
            return ".".join([*parts, name])
        parts.append(name if kind == "key" else "init_args")
    return ".".join([*parts, "init_args", option] if stack[-1][1] == "key" else [*parts, option])


class Refused(NamedTuple):
    """A key that the parser refused itself, before any class saw it.

    Attributes:
        key: dotted, without dashes: ``trainer.max_stpes``, ``trainr.max_steps``, ``ckpt_pth``.
        typed: the option as typed on the command line, ``--trainer.max_stpes``; None for a config's key.
        subcommand: the subcommand whose config holds it, where the parser's message names it (``fit``).
    """

    key: str
    typed: str | None = None
    subcommand: str | None = None


def refused_key(message: str, args: Sequence[str], parser: argparse.ArgumentParser) -> Refused | None:
    """The key that the parser's own ``message`` refuses, or None for any other message.

    ``unrecognized arguments: --trainer.max_stpes 5`` gives ``trainer.max_stpes`` typed ``--trainer.max_stpes``
    where the first of them is an item of ``args`` that the parser reads as an option (not a negative
    number, not a stray value: those are left to the parser's own report). A config's key:
    ``Subcommand 'fit' does not accept option 'trainer.max_stpes'`` (its whole config checked),
    ``Group 'trainer' does not accept option 'max_stpes'`` and ``Option 'trainr.max_steps' is not
    accepted`` (checked as it was read, under ``--print_config``).
    """
    if message.startswith(_UNRECOGNIZED):
        first = message.removeprefix(_UNRECOGNIZED).split(" ")[0]
        if first not in args or not read_as_option(parser, first):
            return None
        typed = first.split("=", 1)[0]
        return Refused(typed.lstrip(parser.prefix_chars), typed)
    if match := _SUBCOMMAND_REFUSES.match(message):
        return Refused(match.group(2), subcommand=match.group(1))
    if match := _GROUP_REFUSES.match(message):
        return Refused(f"{match.group(1)}.{match.group(2)}")
    if match := _TOP_REFUSES.match(message):
        return Refused(match.group(1))
    return None


def read_as_option(parser: argparse.ArgumentParser, arg: str) -> bool:
    """Whether argparse reads ``arg`` as an option (of ``parser``'s or not), as its ``_parse_optional`` tells:
    a negative number (where no option looks like one), a lone ``-`` or a string with a space is a value."""
    if len(arg) < 2 or arg[0] not in parser.prefix_chars or " " in arg:
        return False
    return not (parser._negative_number_matcher.match(arg) and not parser._has_negative_number_optionals)


def closest(name: str, names: Sequence[str]) -> list[str]:
    """The names nearest ``name`` (difflib's ratio at least 0.6), the nearest and any as near as it (within 0.05)."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    ratio = [difflib.SequenceMatcher(None, name, other).ratio() for other in close]
    return [other for other, score in zip(close, ratio) if score >= ratio[0] - CLOSE_AS_BEST]


def parameter_names(class_path: str) -> list[str]:
    """The parameters of ``class_path``'s ``__init__``, and of its bases' where it passes ``**kwargs`` on to them (as
    jsonargparse reads them: ``OfflineFirstWandbLogger(offline, **kwargs)`` takes ``WandbLogger``'s ``save_dir``
    too); none where it cannot be imported or inspected."""
    module, _, name = class_path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for cls in inspect.getmro(target) if inspect.isclass(target) else (target,):
        init = cls.__init__ if inspect.isclass(cls) else cls
        if init is object.__init__:
            break
        try:
            parameters = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            break
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                  and p.name != "self" and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def given_where(unknown: UnknownOption, argv: Sequence[str], config_keys: Any = None) -> str | None:
    """Where ``unknown`` was given, as the user wrote it: ``--model.net.memroy_size`` on the command line, or
    ``--config FILE: model.init_args...`` for the first ``--config`` value whose content holds the key (the
    text itself, quoted, for an inline config: ``--config '{trainer: {max_stpes: 5}}': trainer.max_stpes``), or
    ``--trainer FILE: trainer.max_stpes`` for a file or text given to the key's group itself.

    ``config_keys(value)`` gives the keys a ``--config`` value holds (a set), or None for one it cannot
    read. None where neither is found: the key alone is said.
    """
    root = unknown.key.split(".")[0]
    for arg in argv:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if name.split(".")[0] == root and name.split(".")[-1] == unknown.option:
            return f"--{name}"
    if config_keys is None:
        return None
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if name not in ("--config", "-c", f"--{root}") or (not equals and index + 1 >= len(argv)):
            continue
        value = value if equals else argv[index + 1]
        keys = config_keys(value)
        if keys is not None and unknown.option in keys:
            return f"{'--config' if name == '-c' else name} {config_shown(value)}: {unknown.key}"
    return None


def config_shown(value: str) -> str:
    """A ``--config`` value as a message names it: a file's path whole, config text on one line (a message is one
    line), its first 60 characters for a longer one."""
    if is_file(value):
        return shlex.quote(value)
    text = " ".join(value.split())
    return f"{shlex.quote(text[:INLINE_SHOWN])}…" if len(text) > INLINE_SHOWN else shlex.quote(text)


def is_file(value: str) -> bool:
    """Whether ``value`` names a file (not config text: a text too long for a file name is not one)."""
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # "File name too long", an embedded NUL
        return False


def all_keys(content: Any) -> set[str]:
    """Every mapping key anywhere in a loaded YAML document."""
    if isinstance(content, dict):
        return {str(key) for key in content} | {key for value in content.values() for key in all_keys(value)}
    if isinstance(content, list):
        return {key for value in content for key in all_keys(value)}
    return set()


class CommandParser(argparse.ArgumentParser):
    """argparse for memnet's own commands: an unknown option refused first, in one line, with the closest names.

    argparse reported a required option missing before an unknown one (``memnet evaluate --lenghts 20``:
    "the following arguments are required: --lengths"), or "unrecognized arguments" after its usage,
    and took any beginning of an option for it (``--length 20`` for ``--lengths 20``): here no
    option is abbreviated (``allow_abbrev=False``), and an option this parser does not take stops it
    before anything else, ``memnet evaluate: unrecognized option --lenghts; did you mean --lengths?``,
    exit 2. A subcommand's parser (``add_subparsers``) is one too and checks its own options.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        unknown = next(self._unknown_options(args), None)
        if unknown is not None:
            self.exit(2, f"{self.prog}: {unrecognized(unknown, self._option_string_actions, self.prog)}\n")
        self._check_command_given(args)
        return super().parse_known_args(args, namespace)

    def _check_command_given(self, args: Sequence[str]) -> None:
        """A required subcommand not given (``memnet suite``) in one line that lists them; argparse said ``the
        following arguments are required: command`` after its usage. ``--help`` goes on to argparse's help."""
        for action in self._actions:
            if not (isinstance(action, argparse._SubParsersAction) and action.required):
                continue
            if any(arg in ("-h", "--help") or not read_as_option(self, arg) for arg in args):
                return  # a command, or a value argparse judges (an unknown command is said by _check_value)
            self.exit(2, f"{self.prog}: a command is needed: {', '.join(action.choices)} ({self.prog} --help)\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """A subcommand none of this parser's takes (``memnet suite rnu``) in one line with the close ones;
        argparse said ``argument command: invalid choice: 'rnu' (choose from 'run', ...)`` after its usage."""
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            self.exit(2, f"{self.prog}: {unknown_command(value, list(action.choices), f'{self.prog} --help')}\n")
        super()._check_value(action, value)

    def _unknown_options(self, args: Sequence[str]) -> Iterator[str]:
        """The arguments argparse would read as an option of this parser that it does not have.

        As argparse's ``_parse_optional`` tells an option from a value, abbreviations aside: a
        negative number, a lone ``-`` or a string with a space is a value. After ``--`` or a
        subcommand's name the rest is not this parser's.
        """
        subcommands = {name for action in self._actions if isinstance(action, argparse._SubParsersAction)
                       for name in action.choices}
        for arg in args:
            if arg == "--" or arg in subcommands:
                return
            if not read_as_option(self, arg):
                continue
            name = arg.split("=", 1)[0]
            if name in self._option_string_actions:
                continue
            if arg[1] not in self.prefix_chars and arg[:2] in self._option_string_actions:
                continue  # a short option with its value attached, -j2
            yield name


def unknown_command(name: str, commands: Sequence[str], listing: str) -> str:
    """``unknown command 'fti'; did you mean fit?``, or the commands where none is close (``listing`` says where
    each is described: ``memnet --help``)."""
    close = closest(name, commands)
    if close:
        return f"unknown command {name!r}; did you mean {' or '.join(close)}?"
    return f"unknown command {name!r}; the commands are {', '.join(commands)} ({listing})"


def unrecognized(option: str, known: Iterable[str], prog: str) -> str:
    """``unrecognized option --lenghts; did you mean --lengths?``, or ``(memnet evaluate --help lists its options)``."""
    close = closest(option, [name for name in known if name.startswith("--")])
    if close:
        return f"unrecognized option {option}; did you mean {' or '.join(close)}?"
    return f"unrecognized option {option} ({prog} --help lists its options)"
