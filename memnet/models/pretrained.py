"""Portable trained networks: weights as safetensors beside the network's config.

A portable folder holds two files and needs neither Lightning nor a training run
to be used:

    model.safetensors   the network's ``state_dict`` (parameters and buffers)
    config.json         {"format": ..., "class_path": "memnet.models.ntm.NTM",
                         "init_args": {... every constructor argument, nested
                         class_path / init_args for the controller ...},
                         "seeds": {"memory_init": 1234},   (random initial memories only)
                         "eval_memory_size": 512}          (runs trained with one only)

``memnet export`` writes one from a checkpoint; :func:`load` (or
``NTM.from_pretrained``) rebuilds the network, optionally with other constructor
arguments, such as a larger memory::

    net = memnet.models.load("exports/ntm-copy", memory_size=256)
    logits = net(inputs)                        # (B, T, D_out)

``init_args.memory_size`` is the N the network was trained with; a run that evaluated with more slots
(``eval_memory_size``) exports that N as ``eval_memory_size``, and :func:`load` builds the network with
it, so that the loaded network runs as the trained one ran in validation and test (an explicit
``memory_size=`` still wins). An export without the field loads with the trained N, as before.

The config is instantiated by jsonargparse, the same machinery that builds the
network from a YAML config in ``memnet fit``, so a portable config reads like the
``net:`` section of a run's ``config.yaml``.

A source that is not a local folder but looks like a Hugging Face Hub repository id
(``owner/name``) is downloaded with ``huggingface_hub`` (only when online);
:func:`push_to_hub` uploads a folder.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memnet.memory import MemoryInit
from memnet.utils import (
    fsync,
    is_integer,
    parameter_dtype,
    partial_beside,
    remove_leftover,
    remove_stale_partials_in,
)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "memnet-network/1"  # bumped when the layout of config.json changes
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PretrainedError(ValueError):
    """A portable folder that cannot be written or read (names the file and what is wrong)."""


def save(net: nn.Module, config: dict[str, Any], out: str | Path, *, eval_memory_size: int | None = None) -> Path:
    """Write ``net``'s weights and ``config`` (``class_path`` and ``init_args``) to the folder ``out``.

    ``out`` must not exist or be empty, so an export never mixes with older files.
    ``eval_memory_size``: the N the run evaluated with (``SequenceModule``'s ``eval_memory_size``),
    kept in ``config.json`` beside the trained ``init_args.memory_size``; :func:`load` builds the
    network with it. The config is checked by rebuilding the network from it (as :func:`load` will)
    and loading the weights back before anything is written. Both files are written to a sibling folder of this
    process's own, ``.<out>.<host>.<pid>.partial`` (:func:`memnet.utils.partial_beside`), that is then renamed to
    ``out``: a crash while writing leaves ``out`` as it was, never half written, and another export into the same
    ``out`` at the same time writes a folder of its own (the second to rename is refused, never merged). A killed
    save's folder is removed by a later save of ``out`` once stale (:func:`memnet.utils.remove_stale_partials_in`).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    out = Path(out)
    # the files are written to a sibling folder renamed onto ``out``: ``.``, ``..`` or ``/`` have no name to write
    # beside (a ValueError from pathlib), and the working folder would be swapped from under the process
    if out.name in ("", "..") or out.resolve() == Path.cwd():
        raise PretrainedError(f"{str(out)!r} names the current folder or one above it, which the export would "
                              "replace; give the new folder's name")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PretrainedError(f"{out} exists and is not an empty folder; choose a new folder or empty it")
    config = {"format": FORMAT, "class_path": config["class_path"], "init_args": config["init_args"]}
    seeds = memory_seeds(net)
    if seeds:
        config["seeds"] = seeds
    if eval_memory_size is not None:
        if not is_integer(eval_memory_size) or eval_memory_size < 1:
            raise PretrainedError(f"eval_memory_size must be a positive integer, got {eval_memory_size!r}")
        if "memory_size" not in config["init_args"]:
            raise PretrainedError(f"eval_memory_size ({eval_memory_size}) needs a network with a memory_size "
                                  f"argument; {config['class_path']} has none")
        config["eval_memory_size"] = int(eval_memory_size)
    # Each tensor its own contiguous copy: safetensors refuses storage shared by several names (tied weights).
    state = {name: tensor.detach().cpu().clone().contiguous() for name, tensor in net.state_dict().items()}
    _load_state(build(loaded_config(config), where="the exported config"), state, "the network", "its config")
    # this process's own: a folder shared with another export of ``out`` at the same time was removed and refilled
    # by it, and renamed with its weights beside this one's config
    partial = partial_beside(out)
    try:
        remove_leftover(partial)  # left by a killed process of this pid: a folder, or a file of that name
        partial.mkdir(parents=True)
        save_file(state, str(partial / WEIGHTS_FILE), metadata={"format": FORMAT, "class_path": config["class_path"]})
        (partial / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        # safetensors creates its file readable by the owner alone (0600, whatever the umask): in a shared
        # folder the others could read config.json but not load the weights. The weights get config.json's mode.
        os.chmod(partial / WEIGHTS_FILE, (partial / CONFIG_FILE).stat().st_mode & 0o777)
        for path in (partial / WEIGHTS_FILE, partial / CONFIG_FILE, partial):
            fsync(path)  # the files on disk before the rename, and the rename itself after it
        os.replace(partial, out)  # onto an empty folder too; one filled meanwhile is refused, not merged
        fsync(out.parent)
        remove_stale_partials_in(out.parent, out.name)  # killed exports' folders, never a live one's
    except Exception as error:  # noqa: BLE001 -- safetensors reports a full disk as its own error type
        shutil.rmtree(partial, ignore_errors=True)
        text = str(error).strip()
        reason = (error.strerror if isinstance(error, OSError) and error.strerror
                  else text.splitlines()[0] if text else type(error).__name__)
        raise PretrainedError(f"could not write the export {out}: {reason}") from None
    return out


def load(source: str | Path, *, device: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """The network stored in ``source``, in eval mode, with its trained weights.

    A network exported from a run with ``eval_memory_size`` has that many memory slots, as the run
    had in validation and test (``memory_size=`` in ``overrides`` sets another).

    Args:
        source: a folder written by ``memnet export`` (or :func:`save`), or a Hugging
            Face Hub repository id ``owner/name`` holding one (needs the network).
        device: where to put the weights.
        **overrides: constructor arguments to change, e.g. ``memory_size=256`` for an
            NTM or a DNC (their weights do not depend on N); an argument the weights
            depend on fails with a message naming the tensors.

    Returns:
        The network (an ``nn.Module``; ``forward`` as documented by its class).
    """
    from safetensors.torch import load_file

    folder = resolve(source)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    config = read_config(config_path)
    # the constructor's arguments, not only those config.json lists: a config written by ``save`` may leave some at
    # their defaults (docs/portable.md's), and ``engine=`` is the network's argument all the same
    arguments = constructor_arguments(config["class_path"])
    unknown = sorted(set(overrides) - set(config["init_args"]) - set(arguments or ()))
    if unknown and arguments is not None:  # (None: a constructor of **kwargs, or one build() will name the error of)
        raise PretrainedError(
            f"{config_path}: {config['class_path']} has no argument {', '.join(unknown)} to override "
            f"(its arguments: {', '.join(arguments)})"
        )
    config = loaded_config(config)
    config["init_args"].update(overrides)
    net = build(config, where=str(config_path))
    if not weights_path.is_file():
        raise PretrainedError(f"{folder}: no {WEIGHTS_FILE} beside {CONFIG_FILE}")
    try:
        state = load_file(weights_path, device="cpu")
    except Exception as error:  # noqa: BLE001 -- safetensors raises its own error types for a damaged file
        raise PretrainedError(f"{weights_path} is not a readable safetensors file: {error}") from None
    _load_state(net, state, str(weights_path), f"{config_path} ({config['class_path']})")
    modules = dict(net.named_modules())
    for name, seed in config.get("seeds", {}).items():
        if isinstance(modules.get(name), MemoryInit):
            modules[name].set_seed(seed)
    return net.to(device).eval()


def constructor_arguments(class_path: str) -> list[str] | None:
    """The names of the arguments that ``class_path``'s constructor takes, in its order; None where it takes any
    (``**kwargs``) or cannot be imported (:func:`build` then says why)."""
    module, _, name = class_path.rpartition(".")
    try:
        parameters = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return [parameter.name for parameter in parameters if parameter.name != "self"
            and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def loaded_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``init_args.memory_size`` set to its ``eval_memory_size``, where it has one: the network
    as the run evaluated it (a copy; an export without the field, from before it was kept, as it is)."""
    slots = config.get("eval_memory_size")
    if slots is None:
        return config
    return {**config, "init_args": {**config["init_args"], "memory_size": slots}}


def memory_seeds(net: nn.Module) -> dict[str, int]:
    """The seeds of ``net``'s ``random`` initial memories (``MemoryInit``), by module name.

    Such a memory is drawn from its seed, which is the process's seed when the network was
    built: neither a weight nor a constructor argument, so the export keeps it beside them
    (a network loaded in another process would otherwise start from another memory).
    """
    return {name: module.seed for name, module in net.named_modules()
            if isinstance(module, MemoryInit) and module.scheme == "random"}


def resolve(source: str | Path) -> Path:
    """A local folder for ``source``: the folder itself, or a download of the Hub repository it names."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise PretrainedError(f"{path} is a file; expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not HUB_REPO_ID.match(str(source)):
        raise PretrainedError(f"{source}: no such folder, and not a Hugging Face Hub repository id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PretrainedError(
            f"{source}: no such folder; to load it from the Hugging Face Hub install huggingface_hub "
            "(pip install 'memnet[hub]')"
        ) from None
    try:
        return Path(snapshot_download(repo_id=str(source), allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))
    except Exception as error:  # noqa: BLE001 -- offline, unknown repository, no access: all one message
        raise PretrainedError(
            f"{source}: no such folder, and the Hugging Face Hub repository could not be downloaded "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from None


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload a portable folder to the Hugging Face Hub repository ``repo_id`` (created if missing).

    Needs ``huggingface_hub``, the network and a token (``huggingface-cli login``).

    Returns:
        The repository's URL.
    """
    if not HUB_REPO_ID.match(repo_id):
        raise PretrainedError(f"--push-to-hub: {repo_id!r} is not a Hub repository id (owner/name)")
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise PretrainedError("--push-to-hub needs huggingface_hub (pip install 'memnet[hub]')") from None
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="memnet export")
    return str(url)


def read_config(path: Path) -> dict[str, Any]:
    """The parsed ``config.json``, checked for its format, ``class_path`` and ``init_args``."""
    if not path.is_file():
        raise PretrainedError(f"{path.parent}: no {CONFIG_FILE} (not a folder written by memnet export)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PretrainedError(f"{path} line {error.lineno} is not JSON: {error.msg}") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"{path} must hold a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise PretrainedError(f"{path}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(config.get("class_path"), str) or not isinstance(config.get("init_args"), dict):
        raise PretrainedError(f"{path}: expected a 'class_path' string and an 'init_args' object")
    seeds = config.get("seeds", {})
    if not isinstance(seeds, dict) or not all(isinstance(seed, int) for seed in seeds.values()):
        raise PretrainedError(f"{path}: 'seeds' must be an object of integer seeds by module name, got {seeds!r}")
    slots = config.get("eval_memory_size")
    if slots is not None and (not is_integer(slots) or slots < 1 or "memory_size" not in config["init_args"]):
        raise PretrainedError(f"{path}: 'eval_memory_size' must be a positive integer beside an "
                              f"init_args.memory_size, got {slots!r}")
    return config


def build(config: dict[str, Any], *, where: str) -> nn.Module:
    """Instantiate ``{"class_path", "init_args"}`` as an ``nn.Module`` with jsonargparse (as the CLI does)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "net", required=True)
    try:
        parsed = parser.parse_object({"net": {"class_path": config["class_path"], "init_args": config["init_args"]}})
        net = parser.instantiate(parsed).net
    except Exception as error:  # noqa: BLE001 -- parser and constructor errors: say which config
        detail = " ".join(str(error).split())
        raise PretrainedError(f"{where}: cannot build {config['class_path']}: {detail}") from None
    return net


def stored_dtype(state: dict[str, Any]) -> torch.dtype | None:
    """The one floating-point dtype of ``state``'s tensors (e.g. float64 from ``precision: 64-true``), else None."""
    dtypes = {value.dtype for value in state.values() if isinstance(value, torch.Tensor) and value.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def match_dtype(module: nn.Module, state: dict[str, Any]) -> None:
    """Cast ``module`` to the dtype its stored weights were trained in, so that loading them does not round them
    (``load_state_dict`` copies into the module's own dtype: float64 weights would land in float32 silently)."""
    dtype = stored_dtype(state)
    if dtype is not None and dtype != parameter_dtype(module):
        module.to(dtype)


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], weights: str, config: str) -> None:
    """Load ``state`` into ``net`` in the weights' dtype; a missing, unexpected or differently shaped tensor is
    one error line."""
    match_dtype(net, state)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} is {tuple(state[k].shape)} in the weights, {tuple(expected[k].shape)} for the config"
        for k in state if k in expected and state[k].shape != expected[k].shape
    ]
    problems = mismatched[:3] + ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
        [f"unexpected {', '.join(unexpected[:5])}"] if unexpected else [])
    if problems:
        raise PretrainedError(f"{weights} does not match {config}: {'; '.join(problems)}")
    net.load_state_dict(state, strict=True)


class Pretrained:
    """Mixin: ``Class.from_pretrained(source, **overrides)`` for a network class.

    The same as :func:`load`, and checks that the stored network is of this class.
    """

    @classmethod
    def from_pretrained(cls, source: str | Path, **overrides: Any) -> nn.Module:
        """The network of ``source`` (see :func:`load`), which must be a ``cls``."""
        net = load(source, **overrides)
        if not isinstance(net, cls):
            raise PretrainedError(
                f"{source} holds a {type(net).__module__}.{type(net).__qualname__}, not a {cls.__qualname__}"
            )
        return net
