"""Config files: stacking inside a file (``extends``), shipped configs by name, ``memnet configs``.

A config may start with ``extends``: one fragment or a list of fragments, each a path
relative to the including file, else the name of a shipped config or fragment (``ntm/copy``,
``recipes/copy``: how a config of your own stacks the shipped ones from an installed wheel);
fragments may extend others::

    # configs/ntm/copy.yaml
    extends: [../recipes/copy.yaml, ../recipes/memory_access.yaml]
    model: ...

The fragments are merged in order, then the file itself, **later wins**:

- mappings merge key by key, recursively;
- ``trainer.callbacks`` lists are **appended** in the same order (fragments' callbacks
  first), so a callback fragment adds its callbacks to every config that extends it; an
  entry with ``replace: true`` instead takes the place of the one callback of its
  ``class_path`` stacked before it (its own ``init_args``, the position kept): how one
  config changes a shared callback's settings (``configs/ntm/repeat_copy.yaml``);
- every other list, and every scalar, is **replaced** by the later value
  (``val_lengths: [20]`` in a file overrides a fragment's);
- a fragment reached twice in one stack (``ntm/copy_small`` and ``recipes/memory_access``
  both stack ``recipes/memory_callbacks``) is stacked once, where it is first reached, so
  its callbacks are not added twice.

The whole is resolved before the Lightning CLI sees it, so ``--print_config`` and a
run's saved ``config.yaml`` hold the resolved whole (``memnet evaluate`` rebuilds runs
from it), and ``--config a.yaml --config b.yaml`` still stacks files as the CLI does.

``--config`` also takes the name of a shipped config, ``ntm/copy`` (or
``configs/ntm/copy.yaml`` from outside a clone): the ``configs/`` folder of the clone
the code runs from, else the copy packaged in the installed wheel (``memnet.configs``).
``memnet configs`` lists them; ``memnet configs NAME`` prints one resolved.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import get_loader

from memnet.cli.typos import CommandParser

EXTENDS_KEY = "extends"
APPENDED_LISTS: tuple[tuple[str, ...], ...] = (("trainer", "callbacks"),)
FRAGMENT_FOLDERS = ("recipes",)  # fragments: stacked by configs, not runnable alone
NOT_LIGHTNING_FOLDERS = ("suites",)  # suite files (memnet suite), not Lightning configs
SUFFIX = ".yaml"
PACKAGE = "memnet.configs"  # where the wheel carries configs/ (see setup.py)


class ConfigError(ValueError):
    """A config that cannot be found or stacked; the message names the file and key."""


def configs_root() -> Path:
    """The folder of shipped configs: the clone's ``configs/``, else the installed package's copy."""
    clone = Path(__file__).resolve().parents[2]
    if (clone / "pyproject.toml").is_file() and (clone / "configs").is_dir():
        return clone / "configs"
    spec = importlib.util.find_spec(PACKAGE)  # a folder without __init__.py: a namespace package
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"no shipped configs: neither {clone / 'configs'} (a clone) nor the package {PACKAGE} "
            "(an install of the memnet wheel) exists"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def config_names(root: Path | None = None, *, fragments: bool = False) -> list[str]:
    """Names (``ntm/copy``) of the shipped Lightning configs, or of the fragments if ``fragments``."""
    root = configs_root() if root is None else root
    names = []
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        parts = path.relative_to(root).parts
        if parts[0] in NOT_LIGHTNING_FOLDERS or (parts[0] in FRAGMENT_FOLDERS) != fragments:
            continue
        names.append(path.relative_to(root).with_suffix("").as_posix())
    return names


def find_config(name: str | Path, root: Path | None = None) -> Path:
    """The file a ``--config`` value names: an existing path, else a shipped config.

    ``ntm/copy``, ``ntm/copy.yaml`` and ``configs/ntm/copy.yaml`` all name the shipped
    ``configs/ntm/copy.yaml``. An unknown name fails listing the closest shipped names.
    """
    path = Path(name)
    if path.is_file():
        return path
    root = configs_root() if root is None else root
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    for candidate in (root / relative, root / relative.with_name(relative.name + SUFFIX)):
        if relative.parts and candidate.is_file():
            return candidate
    known = config_names(root) + config_names(root, fragments=True)
    wanted = relative.as_posix().removesuffix(SUFFIX)
    close = difflib.get_close_matches(wanted, known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(
        f"--config {name}: neither a file nor a shipped config{hint} (`memnet configs` lists them)"
    )


def load_config(path: str | Path) -> dict[str, Any]:
    """The file's config with its ``extends`` fragments merged in (see the module docstring)."""
    return _load(Path(path), (), set())


def config_files(path: str | Path) -> list[Path]:
    """The file and every fragment it stacks (``extends``, followed through), resolved and sorted."""
    stacked: set[Path] = set()
    _load(Path(path), (), stacked)
    return sorted(stacked)


def merge(base: dict[str, Any], override: dict[str, Any], where: tuple[str, ...] = ()) -> dict[str, Any]:
    """``override`` over ``base``: mappings merged, ``trainer.callbacks`` appended, the rest replaced."""
    merged = dict(base)
    for key, value in override.items():
        field = (*where, key)
        if isinstance(value, dict) and isinstance(merged.get(key, {}), dict):
            merged[key] = merge(merged.get(key, {}), value, field)
        elif field in APPENDED_LISTS and (key in merged or isinstance(value, list)):
            base_list = merged.get(key, [])
            if not isinstance(base_list, list) or not isinstance(value, list):
                raise ConfigError(
                    f"{'.'.join(field)}: both sides must be lists to stack, got "
                    f"{type(base_list).__name__} and {type(value).__name__}"
                )
            merged[key] = _append(base_list, value, field)
        else:
            merged[key] = value
    return merged


REPLACE_KEY = "replace"


def _append(base: list[Any], entries: list[Any], field: tuple[str, ...]) -> list[Any]:
    """``entries`` after ``base``; an entry with ``replace: true`` takes the place of its class's one entry in ``base``."""
    stacked = list(base)
    for number, entry in enumerate(entries):
        if not (isinstance(entry, dict) and REPLACE_KEY in entry):
            stacked.append(entry)
            continue
        where = f"{'.'.join(field)}[{number}]"
        flag, class_path = entry[REPLACE_KEY], entry.get("class_path")
        if flag is not True:
            raise ConfigError(f"{where}: {REPLACE_KEY} must be true (or left out), got {flag!r}")
        matches = [i for i, old in enumerate(base) if isinstance(old, dict) and old.get("class_path") == class_path]
        if len(matches) != 1:
            found = "none" if not matches else f"{len(matches)}"
            raise ConfigError(
                f"{where}: {REPLACE_KEY}: true needs exactly one {class_path} in the callbacks stacked before "
                f"this file, found {found}"
            )
        stacked[matches[0]] = {k: v for k, v in entry.items() if k != REPLACE_KEY}
    return stacked


def read_text(path: Path) -> str:
    """The text of a config file; a file that cannot be read, or is no text (a checkpoint), is a ConfigError naming it."""
    try:
        return path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    except UnicodeDecodeError as error:  # `--config last.ckpt` for `--ckpt_path last.ckpt`: a traceback before
        raise ConfigError(f"{path}: not a YAML text file (byte {error.start} is no UTF-8 text); a config is YAML, "
                          "a checkpoint is given with --ckpt_path") from None


def _read(path: Path) -> dict[str, Any]:
    return _parse(read_text(path), str(path))


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        content = get_loader("yaml")(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    check_unique_keys(text, source)
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(content).__name__}")
    return content


def check_unique_keys(text: str, source: str) -> None:
    """Refuse a key given twice in one mapping of a config's YAML ``text`` (valid YAML, as ``_parse`` checks).

    YAML loaders keep the last of two equal keys without a word: a second ``trainer:`` block
    replaced the whole first one, and its ``max_steps`` was silently not the one that ran.
    """
    nodes = [yaml.compose(text, Loader=yaml.SafeLoader)]
    while nodes:
        node = nodes.pop()
        if isinstance(node, yaml.SequenceNode):
            nodes.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                nodes.append(value)
                if not isinstance(key, yaml.ScalarNode) or key.value == "<<":  # a YAML merge key may repeat
                    continue
                if key.value in first:
                    raise ConfigError(
                        f"{source} line {key.start_mark.line + 1}: key {key.value!r} given twice in one mapping "
                        f"(first at line {first[key.value]}); the later would replace the earlier whole: merge them"
                    )
                first[key.value] = key.start_mark.line + 1


def _fragments(content: dict[str, Any], source: str) -> list[str]:
    extends = content.pop(EXTENDS_KEY, [])
    if isinstance(extends, str):
        extends = [extends]
    if not isinstance(extends, list) or not all(isinstance(item, str) and item for item in extends):
        raise ConfigError(
            f"{source}: {EXTENDS_KEY}: expected a file name or a list of file names "
            f"(relative to this file, or shipped config names), got {extends!r}"
        )
    return extends


def _load(path: Path, chain: tuple[Path, ...], stacked: set[Path]) -> dict[str, Any]:
    """``path`` resolved; ``chain``: the files including it (cycles); ``stacked``: every file met so far."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved):], resolved))
        raise ConfigError(f"{path}: {EXTENDS_KEY}: a cycle, {cycle}")
    stacked.add(resolved)
    content = _read(path)
    return _stack(content, str(path), path.parent, (*chain, resolved), stacked)


def _stack(
    content: dict[str, Any], source: str, folder: Path, chain: tuple[Path, ...], stacked: set[Path]
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in _fragments(content, source):
        fragment = folder / name
        if not fragment.is_file():
            fragment = _shipped(name, source, looked_at=fragment)
        if fragment.resolve() in stacked and fragment.resolve() not in chain:
            continue  # reached twice (a diamond): stacked once, where first reached
        merged = _merge_from(merged, _load(fragment, chain, stacked), str(fragment))
    return _merge_from(merged, content, source)


def _shipped(name: str, source: str, looked_at: Path) -> Path:
    """A shipped config or fragment named in ``extends`` (``ntm/copy``, ``recipes/copy``)."""
    root = configs_root()
    relative = Path(name.removesuffix(SUFFIX) + SUFFIX)
    if not relative.is_absolute() and ".." not in relative.parts and (root / relative).is_file():
        return root / relative
    raise ConfigError(f"{source}: {EXTENDS_KEY}: no file {name} (looked at {looked_at}) and no shipped config of that name")


def _merge_from(base: dict[str, Any], override: dict[str, Any], source: str) -> dict[str, Any]:
    try:
        return merge(base, override)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def resolve_text(text: str, source: str = "--config", folder: Path | None = None) -> dict[str, Any]:
    """A config given as YAML text, its ``extends`` relative to ``folder`` (default: the working directory)."""
    return _stack(_parse(text, source), source, Path.cwd() if folder is None else folder, (), set())


def dump(content: dict[str, Any]) -> str:
    """YAML text of a resolved config, read back by the CLI to the same values (``class_path`` first)."""
    return yaml.safe_dump(_class_path_first(content), sort_keys=False)


def _class_path_first(value: Any) -> Any:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: key != "class_path")  # stable: the rest keep their order
        return {key: _class_path_first(value[key]) for key in keys}
    if isinstance(value, list):
        return [_class_path_first(item) for item in value]
    return value


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with each ``--config``/``-c`` value resolved for the Lightning CLI.

    A name becomes its file; a file or text with ``extends`` becomes the resolved YAML text
    (the CLI accepts a config as text); anything else (a plain file, a remote URL) is passed
    through unchanged.
    """
    resolved = list(args)
    for index, arg in enumerate(resolved):
        if arg in ("--config", "-c") and index + 1 < len(resolved):
            resolved[index + 1] = _resolve_value(resolved[index + 1])
        elif arg.startswith("--config="):
            resolved[index] = "--config=" + _resolve_value(arg.removeprefix("--config="))
    return resolved


def is_inline_config(value: str) -> bool:
    """Whether a ``--config`` value is YAML text (``{seed_everything: 3}``, ``seed_everything: 3``, several
    lines), not a file or a shipped config's name."""
    return "\n" in value or value.lstrip().startswith(("{", "[")) or ": " in value


def _resolve_value(value: str) -> str:
    if "://" in value:  # a remote config (s3://, https://): the CLI reads it as it is
        return value
    if is_inline_config(value):
        content = _parse(value, "--config")
        return dump(resolve_text(value)) if EXTENDS_KEY in content else value
    path = find_config(value)
    if EXTENDS_KEY not in _read(path):
        return str(path)
    return dump(load_config(path))


SUMMARY_WIDTH = 100  # characters of a config's description in the listing


def _summary(path: Path) -> str:
    """The first sentence of a config file's leading comment (its description), cut to SUMMARY_WIDTH."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    end = re.search(r"(?<! al)\. ", text)  # "Sukhbaatar et al. 2015" does not end a sentence
    text = text[: end.start() + 1] if end else text
    return text if len(text) <= SUMMARY_WIDTH else text[: SUMMARY_WIDTH - 1].rstrip() + "…"


def main(argv: list[str] | None = None) -> int | None:
    """``memnet configs [NAME] [--fragments]``: list the shipped configs, or print one resolved.

    Returns None when done, else the exit status: 2 for a name that is no file and no shipped config (or a config that does
    not stack), as every ``memnet`` command.
    """
    parser = CommandParser(
        prog="memnet configs",
        description="The shipped configs, usable by name (memnet fit --config ntm/copy). "
        "With NAME: that config with its fragments stacked (extends resolved).",
    )
    parser.add_argument("name", nargs="?", help="a config name or file, e.g. ntm/copy")
    parser.add_argument("--fragments", action="store_true", help="list the recipe fragments instead")
    args = parser.parse_args(argv)
    try:
        if args.name:
            sys.stdout.write(dump(load_config(find_config(args.name))))
            return None
        root = configs_root()
        names = config_names(root, fragments=args.fragments)
    except ConfigError as error:
        # find_config speaks of `--config NAME`, the option fit takes; here NAME is typed alone
        message = str(error).removeprefix(f"--config {args.name}: ") if args.name else str(error)
        where = f"{args.name}: " if args.name and message != str(error) else ""
        print(f"memnet configs: {where}{message}", file=sys.stderr)
        return 2
    width = max(map(len, names), default=0)
    print(f"# {'fragments' if args.fragments else 'configs'} in {root}")
    for name in names:
        print(f"{name:<{width}}  {_summary(root / (name + SUFFIX))}".rstrip())
