"""A value of the wrong type in one line: the key, what it takes, the value given, and where it was given.

jsonargparse reports a value it cannot take (``--trainer.max_steps lots``, or ``memory_size: big`` in a
``--config`` file) after the whole usage text (some 67 lines for ``memnet fit``); for a class given by
``class_path`` at the bottom of a Union error::

    error: Parser key "model":
      Does not validate against any of the Union subtypes
      Subtypes: [<class 'pytorch_lightning.core.module.LightningModule'>, <class 'NoneType'>]
      Errors:
        - Problem with given class_path 'memnet.lightning.SequenceModule':
            Parser key "net":
              Problem with given class_path 'memnet.models.ntm.NTM':
                Parser key "memory_size":
                  Expected a <class 'int'>. Got value: big
        - Expected a <class 'NoneType'>
      ...

:func:`bad_value` reads that nesting back (as :func:`memnet.cli.typos.unknown_option` does for a key) to
the innermost key, its types and the value, and :func:`value_where` finds where the value was given: the
option typed, or the first ``--config`` (or group's ``--trainer FILE``) that holds it, with the line of a
file that holds it itself (not through ``extends``)::

    --model.init_args.net.init_args.memory_size: expected an int, got 'big'
    --config mine.yaml, line 5: model.init_args.net.init_args.memory_size: expected an int, got 'big'
    --model.init_args.scheduler_interval: expected one of 'step', 'epoch', got 'hourly'

A value whose types are not plain values (a class, a path) is left to jsonargparse's report;
``MEMNET_TRACEBACK=1`` shows that report for these too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from memnet.cli.typos import ParseRefusal, config_shown, is_file

_KEY = re.compile(r'(?:^|: )Parser key "([^"]+)":$')  # alone on its line, or after a Callable's "...class: "
_CLASS = re.compile(r"^Problem with given class_path '([^']+)':$")
_CALLABLE = "expects a function or a callable class: "  # the line of a Callable's class (an optimiser) and its key
_EXPECTED = re.compile(r"^Expected a (.+)\. Got value: (.*)$")  # a single type
_SUBTYPES = "Subtypes: ["  # a Union's types, then "Given value: VALUE" at the same depth
_GIVEN = "Given value: "
_GOT = ". Got value: "  # a Callable's "Given value: fast. Got value: Namespace(...)"
_CLASS_TYPE = re.compile(r"^<class '([^']+)'>$")
PLAIN = {"int": "an int", "float": "a float", "str": "a string", "bool": "true/false", "NoneType": "null",
         "pathlib.Path": "a path", "dict": "a mapping", "list": "a list"}  # how a type is said


@dataclass(frozen=True)
class BadValue:
    """A value that the key it was given to does not take.

    Attributes:
        key: in the config's own spelling, ``model.init_args.net.init_args.memory_size``, ``trainer.max_steps``.
        value: as jsonargparse got it, ``big``.
        expected: what the key takes, said: ``an int``, ``one of 'step', 'epoch'``, ``a float or null``.
    """

    key: str
    value: str
    expected: str

    def describe(self, where: str | None = None) -> str:
        """``WHERE: expected TYPE, got 'VALUE'`` (``where`` defaults to the key)."""
        return f"{where or self.key}: expected {self.expected}, got {self.value!r}"


class BadValueError(ParseRefusal):
    """The parser met a value that its key does not take (one line, exit 2)."""

    @property
    def bad(self) -> BadValue:
        return self.found


@dataclass
class _Node:
    indent: int
    kind: str  # "key" | "class"
    name: str
    lines: list[str]
    children: list[_Node]


def bad_value(text: str) -> BadValue | None:
    """The one value of a wrong type that jsonargparse's error ``text`` reports, or None.

    None where the text reports something else (an unknown key, a class that does not import), a type that is
    no plain value (a class, a Callable), or several values (which one was meant is not known).
    """
    roots: list[_Node] = []
    stack: list[_Node] = []
    for line in text.splitlines():
        body = line.strip()
        if not body:
            continue
        indent = len(line) - len(line.lstrip())
        # an entry of "Errors:" (its lines below it further in), or of a config's errors (below its text:
        # "- Parser key "trainer.max_steps":", then "  Expected ..."): at the dash's depth
        body = body.removeprefix("- ")
        while stack and stack[-1].indent >= indent:
            stack.pop()
        if match := _KEY.search(body):
            if _CALLABLE in body:  # "Type typing.Callable[...] expects a function or a callable class: Parser key "lr":"
                _push(roots, stack, _Node(indent, "class", "", [], []))
                indent += 1  # the key sits under the Callable's class
            _push(roots, stack, _Node(indent, "key", match.group(1), [], []))
        elif match := _CLASS.match(body):
            _push(roots, stack, _Node(indent, "class", match.group(1), [], []))
        elif stack:
            stack[-1].lines.append(body)
    found = {bad for root in roots for bad in _leaves(root, [])}
    return found.pop() if len(found) == 1 else None


def _push(roots: list[_Node], stack: list[_Node], node: _Node) -> None:
    (stack[-1].children if stack else roots).append(node)
    stack.append(node)


def _leaves(node: _Node, keys: list[str]) -> list[BadValue]:
    """The bad values of the innermost keys under ``node``, ``keys`` the dotted key above it."""
    keys = [*keys, node.name] if node.kind == "key" else [*keys, "init_args"]
    if node.children:
        return [bad for child in node.children for bad in _leaves(child, keys)]
    if node.kind != "key":
        return []
    types, value = _types_and_value(node.lines)
    expected = _expected(types) if types is not None and value is not None else None
    return [BadValue(".".join(keys), value, expected)] if expected is not None else []


def _types_and_value(lines: list[str]) -> tuple[list[str] | None, str | None]:
    """The types a key's error lines name (a Union's subtypes, or the one expected) and the value given."""
    for line in lines:
        if line.startswith(_SUBTYPES):
            given = next((other[len(_GIVEN):] for other in lines if other.startswith(_GIVEN)), None)
            if given is not None and _GOT in given:
                given = given.split(_GOT, 1)[0]
            return _split(line[len(_SUBTYPES):-1]), given
    for line in lines:
        if match := _EXPECTED.match(line):
            return [match.group(1)], match.group(2)
    return None, None


def _split(text: str) -> list[str]:
    """``A, B[C, D], E`` at its top level: ``[A, B[C, D], E]``."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    return [*parts, text[start:].strip()]


def _expected(types: list[str]) -> str | None:
    """``an int or null``, ``one of 'step', 'epoch'``; None where any type is a class of no plain value."""
    choices: list[str] = []
    said: list[str] = []
    for text in types:
        if text.startswith(("typing.Literal[", "Literal[")):
            try:
                choices += [repr(value) for value in ast.literal_eval(text[text.index("["):])]
            except (ValueError, SyntaxError):
                return None
        elif match := _CLASS_TYPE.match(text):
            name = match.group(1)
            if name in PLAIN:
                said.append(PLAIN[name])
            elif name == "torch.Tensor":  # beside a float (an optimiser's lr): a number given in a config is one
                continue
            else:
                return None
        elif re.fullmatch(r"(list|tuple|set)\[.+\]", text):
            item = _expected([f"<class '{text[text.index('[') + 1:-1]}'>"]) or text[text.index("[") + 1:-1]
            said.append(f"a {text[:text.index('[')]} of {item.removeprefix('an ').removeprefix('a ')}")
        elif text.startswith("dict["):
            said.append("a mapping")
        else:
            return None
    if choices:
        null = "null" in said
        said = [item for item in said if item != "null"]
        said.insert(0, f"one of {', '.join(choices + (['null'] if null else []))}")
    return " or ".join(said) if said else None


def value_where(bad: BadValue, argv: Sequence[str], config: Callable[[str], Any]) -> str | None:
    """Where ``bad`` was given, as the user wrote it: ``--trainer.max_steps`` on the command line (or its short
    form, ``--model.net.memory_size``), or ``--config FILE, line N: KEY`` for the first ``--config`` value (or group's
    own, ``--trainer FILE``) that gives the key that value, in ``argv``'s order, as jsonargparse reads them.

    ``config(value)`` gives the content of a ``--config`` value (its fragments stacked), or None for one it
    cannot read. None where neither is found: the key alone is said.
    """
    parts = bad.key.split(".")
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if not equals:
            value = argv[index + 1] if index + 1 < len(argv) else None
        if (name.startswith("--") and name[2:].split(".")[0] == parts[0] and name[2:].split(".")[-1] == parts[-1]
                and str(value) == bad.value):
            return name
        if name not in ("--config", "-c", f"--{parts[0]}") or value is None:
            continue
        within = parts if name != f"--{parts[0]}" else parts[1:]  # a group's own file holds its keys alone
        content = config(value)
        if _at(content, within) is not _MISSING and str(_at(content, within)) == bad.value:
            line = _line(value, within) if is_file(value) else None
            shown = f"{'--config' if name == '-c' else name} {config_shown(value)}"
            return f"{shown}, line {line}: {bad.key}" if line else f"{shown}: {bad.key}"
    return None


_MISSING = object()


def _at(content: Any, keys: Sequence[str]) -> Any:
    """The value at the dotted ``keys`` of a loaded YAML document, or ``_MISSING``."""
    for key in keys:
        if not isinstance(content, dict) or key not in content:
            return _MISSING
        content = content[key]
    return content


def _line(path: str, keys: Sequence[str]) -> int | None:
    """The line of the value at ``keys`` in the YAML file ``path`` itself, or None (not there: a fragment's)."""
    try:
        with open(path, encoding="utf-8") as file:
            node = yaml.compose(file)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((value for name, value in node.value if getattr(name, "value", None) == key), None)
        if node is None:
            return None
    return node.start_mark.line + 1
