"""Task-suite evaluation: run a suite of experiments × seeds, then tabulate, plot and log it.

    memnet suite run configs/suites/algorithmic.yaml --jobs 2     train every run, evaluate, report
    memnet suite report runs/suites/algorithmic                   the leaderboard from what is on disk
    memnet suite run SUITE --launcher slurm --partition gpu ...   one Slurm job per run (memnet.cli.launcher)
    memnet suite status runs/suites/algorithmic                   each run: pending, running, finished, ...

A suite file is YAML::

    name: algorithmic                      # the suite's name: W&B group, default results folder
    description: NTM paper tasks           # optional
    results: runs/suites/algorithmic       # optional; default runs/suites/<name>
    launcher: {name: slurm, partition: gpu, time: "04:00:00"}   # optional (memnet.cli.launcher)
    defaults:                              # optional; merged into every experiment (experiment wins)
      seeds: 3                             # n (seeds 0..n-1) or a list [0, 1, 2]
      budget: {max_steps: 10000}           # max_steps, max_epochs and/or max_time ("DD:HH:MM:SS")
      overrides: {trainer.log_every_n_steps: 50}
      seed_args: [seed_everything, data.init_args.seed]   # the fields a run's seed is written to
    experiments:
      - name: ntm-copy                     # unique; letters, digits, '-', '_', '.'
        configs: [configs/ntm/copy.yaml]   # stacked in order, like repeated --config
        overrides:                         # any CLI field, dotted, as in --key=value
          model.init_args.net.init_args.memory_size: 128
        evaluate: {kind: algorithmic, lengths: [20, 40, 80, 120]}   # or {kind: babi, split: test}
        model: NTM                         # labels for the tables (default: the first config's
        task: copy                         #   folder and file name, configs/<model>/<task>.yaml)

Every experiment × seed is one *run*, trained in its own process through the real
training entry point (``python -m memnet.cli fit ...``, the code of ``memnet fit``),
so one failure does not stop the others. A results folder holds::

    RESULTS/suite.json                        the resolved suite
    RESULTS/events.jsonl                      one line per training start, finish, failure
    RESULTS/<experiment>/seed_<s>/
        command.json                          the argv of the training command
        config.yaml                           the full resolved config (written by memnet fit)
        checkpoints/last.ckpt, best-*.ckpt    checkpoints (resumed from last.ckpt after a kill)
        train.log, evaluate.log               the processes' output
        summary.json                          written by memnet fit when training finished
        metrics.json                          the run's record: status, metrics, evaluation, error
    RESULTS/report/                           leaderboard.md/.csv/.json, babi.md, lengths.md, *.png

A run whose ``metrics.json`` says ``done`` is skipped on the next ``suite run``; a
run with a ``last.ckpt`` but no record resumes from it; a failed run is tried again.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml

DEFAULT_RESULTS_ROOT = Path("runs") / "suites"
REPORT_DIR = "report"
RECORD_FILE = "metrics.json"
BABI_FAIL_THRESHOLD = 5.0  # a bAbI task counts as failed above 5% test error (Weston et al. 2015)
BABI_TASKS = tuple(str(k) for k in range(1, 21))
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUITE_KEYS = {"name", "description", "results", "defaults", "experiments", "launcher"}
DEFAULTS_KEYS = {"seeds", "budget", "overrides", "seed_args", "evaluate"}
EXPERIMENT_KEYS = {
    "name",
    "configs",
    "overrides",
    "seeds",
    "budget",
    "evaluate",
    "model",
    "task",
    "seed_args",
}
BUDGET_KEYS = ("max_steps", "max_epochs", "max_time")
POLL_SECONDS = 0.2  # how often the scheduler looks at its runs
PROGRESS_SECONDS = 30.0  # a progress line at least this often while runs go on
ERROR_CHARS = 600  # the longest error message kept in a run's record
LOG_SCALE_RATIO = 100.0  # a length plot whose values span more than this factor gets a log y-axis


class SuiteError(ValueError):
    """A suite file or results folder that cannot be used; the message names the file, line and entry."""


# ---------------------------------------------------------------------------------------------
# Suite files
# ---------------------------------------------------------------------------------------------


class _Mapping(dict):
    """A YAML mapping that remembers its line and the line of each key (1-based)."""

    line: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.key_lines: dict[Any, int] = {}


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise SuiteError(f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True)
class Experiment:
    """One model on one task: the configs to stack, overrides, seeds, budget and evaluation.

    Attributes:
        name: unique within the suite; the run folders are ``<results>/<name>/seed_<s>``.
        configs: config files, stacked in order (later wins).
        overrides: dotted CLI field -> value, given as ``--field=value`` after the configs.
        seeds: one run per seed.
        budget: ``max_steps`` / ``max_epochs`` / ``max_time`` for the trainer.
        evaluate: ``{"kind": ..., ...}`` evaluation after training, or None.
        model: label of the model in the tables.
        task: label of the task in the tables.
        seed_args: the fields each run's seed is written to.
    """

    name: str
    configs: tuple[str, ...]
    overrides: dict[str, Any]
    seeds: tuple[int, ...]
    budget: dict[str, Any]
    evaluate: dict[str, Any] | None
    model: str
    task: str
    seed_args: tuple[str, ...] = ("seed_everything",)


@dataclass(frozen=True)
class Suite:
    """A named list of experiments (see the module docstring for the file format)."""

    name: str
    description: str
    experiments: tuple[Experiment, ...]
    path: str = ""
    results: str | None = None
    launcher: Any = None  # the ``launcher:`` section, a memnet.cli.launcher.LauncherConfig

    def default_results(self) -> Path:
        return Path(self.results) if self.results else DEFAULT_RESULTS_ROOT / self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "path": self.path,
            "experiments": [
                {
                    "name": e.name,
                    "configs": list(e.configs),
                    "overrides": e.overrides,
                    "seeds": list(e.seeds),
                    "budget": e.budget,
                    "evaluate": e.evaluate,
                    "model": e.model,
                    "task": e.task,
                    "seed_args": list(e.seed_args),
                }
                for e in self.experiments
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Suite:
        experiments = tuple(
            Experiment(
                name=e["name"],
                configs=tuple(e["configs"]),
                overrides=dict(e["overrides"]),
                seeds=tuple(e["seeds"]),
                budget=dict(e["budget"]),
                evaluate=e.get("evaluate"),
                model=e["model"],
                task=e["task"],
                seed_args=tuple(e.get("seed_args", ("seed_everything",))),
            )
            for e in data["experiments"]
        )
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            experiments=experiments,
            path=data.get("path", ""),
        )


def load_suite(path: str | Path, *, base_dir: str | Path | None = None) -> Suite:
    """Read and check a suite file; every problem raises ``SuiteError`` before anything runs.

    Args:
        path: the suite YAML.
        base_dir: folder that relative config paths are resolved from (default: the
            current working directory, where ``memnet fit`` would resolve them).

    Raises:
        SuiteError: naming the file, the line and the entry, for an unknown key, a
            missing config file, a duplicate experiment name, zero seeds, a bad budget,
            override or evaluation.
    """
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    text = path.read_text()
    try:
        loader = _LineLoader(text)
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise SuiteError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, _Mapping):
        raise SuiteError(
            f"{path}: a suite file is a mapping with 'name' and 'experiments', got {type(data).__name__}"
        )
    where = str(path)
    _check_keys(data, SUITE_KEYS, where, "suite")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SuiteError(
            f"{where}:{data.key_lines.get('name', data.line)}: 'name' must be a name of letters, "
            f"digits, '-', '_', '.', got {name!r}"
        )
    defaults = data.get("defaults") or _Mapping()
    if not isinstance(defaults, dict):
        raise SuiteError(f"{where}:{data.key_lines['defaults']}: 'defaults' must be a mapping")
    _check_keys(defaults, DEFAULTS_KEYS, where, "defaults")
    entries = data.get("experiments")
    if not isinstance(entries, list) or not entries:
        raise SuiteError(
            f"{where}:{data.key_lines.get('experiments', data.line)}: 'experiments' must be a "
            "non-empty list of experiments"
        )
    experiments: list[Experiment] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        experiment = _parse_experiment(entry, defaults, where, index, base)
        line = getattr(entry, "line", 0)
        if experiment.name in seen:
            raise SuiteError(
                f"{where}:{line}: experiment {experiment.name!r} (entry {index + 1}): duplicate "
                f"experiment name, first defined on line {seen[experiment.name]}"
            )
        seen[experiment.name] = line
        experiments.append(experiment)
    description = data.get("description") or ""
    results = data.get("results")
    if results is not None and not isinstance(results, str):
        raise SuiteError(f"{where}:{data.key_lines['results']}: 'results' must be a folder path")
    from memnet.cli.launcher import from_section  # the cluster launchers (submitit), checked here

    launcher = from_section(data.get("launcher"), f"{where}:{data.key_lines.get('launcher', data.line)}")
    return Suite(
        name=name,
        description=str(description),
        experiments=tuple(experiments),
        path=str(path),
        results=results,
        launcher=launcher,
    )


def _check_keys(mapping: dict, allowed: set[str], where: str, what: str) -> None:
    for key in mapping:
        if key not in allowed:
            line = getattr(mapping, "key_lines", {}).get(key, getattr(mapping, "line", 0))
            raise SuiteError(
                f"{where}:{line}: {what}: unknown key {key!r}; allowed keys: {', '.join(sorted(allowed))}"
            )


def _parse_experiment(entry: Any, defaults: dict, where: str, index: int, base: Path) -> Experiment:
    if not isinstance(entry, dict):
        raise SuiteError(
            f"{where}: experiment entry {index + 1} must be a mapping with 'name' and 'configs', "
            f"got {entry!r}"
        )
    line = getattr(entry, "line", 0)
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SuiteError(
            f"{where}:{line}: experiment entry {index + 1}: 'name' must be a name of letters, digits, "
            f"'-', '_', '.', got {name!r}"
        )
    label = f"experiment {name!r}"
    _check_keys(entry, EXPERIMENT_KEYS, where, label)

    def at(key: str) -> str:
        return f"{where}:{entry.key_lines.get(key, line) if isinstance(entry, _Mapping) else line}: {label}"

    configs = entry.get("configs")
    if isinstance(configs, str):
        configs = [configs]
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
        raise SuiteError(
            f"{at('configs')}: 'configs' must be a non-empty list of config file paths"
        )
    for config in configs:
        if not _resolve(config, base).is_file():
            raise SuiteError(
                f"{at('configs')}: config file {config!r} does not exist "
                f"(looked in {_resolve(config, base).parent})"
            )

    seeds = _parse_seeds(
        entry["seeds"] if "seeds" in entry else defaults.get("seeds", 1), at("seeds")
    )

    overrides: dict[str, Any] = {}
    for source, key_where in (
        (defaults.get("overrides"), f"{where}: defaults"),
        (entry.get("overrides"), at("overrides")),
    ):
        if source is None:
            continue
        if not isinstance(source, dict):
            raise SuiteError(
                f"{key_where}: 'overrides' must be a mapping of dotted field names to values, "
                f"e.g. {{trainer.max_steps: 100}}"
            )
        for key, value in source.items():
            if not isinstance(key, str) or not re.match(r"^[A-Za-z_][\w.]*$", key):
                raise SuiteError(
                    f"{key_where}: override {key!r} must be a dotted field name such as "
                    "'model.init_args.net.init_args.memory_size'"
                )
            if key.removeprefix("trainer.") in BUDGET_KEYS:
                raise SuiteError(
                    f"{key_where}: override {key!r}: give the training length in 'budget', not in "
                    "'overrides'"
                )
            overrides[key] = value

    budget = dict(defaults.get("budget") or {})
    if "budget" in entry:
        if not isinstance(entry["budget"], dict):
            raise SuiteError(
                f"{at('budget')}: 'budget' must be a mapping with {', '.join(BUDGET_KEYS)}"
            )
        budget.update(entry["budget"])
    for key, value in budget.items():
        if key not in BUDGET_KEYS:
            raise SuiteError(
                f"{at('budget')}: budget: unknown key {key!r}; allowed: {', '.join(BUDGET_KEYS)}"
            )
        if key == "max_time":
            if not (isinstance(value, str) and re.match(r"^\d+:\d{2}:\d{2}:\d{2}$", value)):
                raise SuiteError(
                    f"{at('budget')}: budget.max_time must be 'DD:HH:MM:SS', got {value!r}"
                )
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SuiteError(
                f"{at('budget')}: budget.{key} must be a positive integer, got {value!r}"
            )
    if not budget:
        raise SuiteError(
            f"{at('budget')}: no budget: give 'budget' ({', '.join(BUDGET_KEYS)}) in the experiment "
            "or in 'defaults'"
        )

    evaluate = entry["evaluate"] if "evaluate" in entry else defaults.get("evaluate")
    if evaluate is not None:
        if not isinstance(evaluate, dict) or evaluate.get("kind") not in EVALUATORS:
            raise SuiteError(
                f"{at('evaluate')}: 'evaluate' must be a mapping with kind one of "
                f"{sorted(EVALUATORS)}, got {evaluate!r}"
            )
        evaluate = EVALUATORS[evaluate["kind"]].check(dict(evaluate), at("evaluate"))

    seed_args = (
        entry["seed_args"]
        if "seed_args" in entry
        else defaults.get("seed_args", ["seed_everything"])
    )
    if isinstance(seed_args, str):
        seed_args = [seed_args]
    if (
        not isinstance(seed_args, list)
        or not seed_args
        or not all(isinstance(s, str) for s in seed_args)
    ):
        raise SuiteError(
            f"{at('seed_args')}: 'seed_args' must be a non-empty list of dotted field names"
        )

    model, task = _default_labels(configs[0])
    for key in ("model", "task"):
        if key in entry and not isinstance(entry[key], str):
            raise SuiteError(f"{at(key)}: {key!r} must be a string label")
    return Experiment(
        name=name,
        configs=tuple(configs),
        overrides=overrides,
        seeds=seeds,
        budget=budget,
        evaluate=evaluate,
        model=entry.get("model", model),
        task=entry.get("task", task),
        seed_args=tuple(seed_args),
    )


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise SuiteError(
            f"{where}: 'seeds' must be a count ≥ 1 or a non-empty list of integers, got {value!r}"
        )
    if isinstance(value, int):
        if value < 1:
            raise SuiteError(
                f"{where}: 'seeds' is {value}: a suite needs at least one seed per experiment "
                "(a count ≥ 1 or a non-empty list of integers)"
            )
        return tuple(range(value))
    if isinstance(value, list):
        if not value:
            raise SuiteError(
                f"{where}: 'seeds' is an empty list: a suite needs at least one seed per experiment"
            )
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
            raise SuiteError(f"{where}: 'seeds' must hold integers ≥ 0, got {value!r}")
        if len(set(value)) != len(value):
            raise SuiteError(f"{where}: 'seeds' holds a seed twice: {value!r}")
        return tuple(value)
    raise SuiteError(
        f"{where}: 'seeds' must be a count ≥ 1 or a non-empty list of integers, got {value!r}"
    )


def _resolve(path: str | Path, base: Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else base / path


def _default_labels(config: str) -> tuple[str, str]:
    """configs/<model>/<task>.yaml -> (model, task)."""
    path = Path(config)
    return path.parent.name or path.stem, path.stem


# ---------------------------------------------------------------------------------------------
# Evaluation hooks, by task kind
# ---------------------------------------------------------------------------------------------


class EvaluationUnavailable(RuntimeError):
    """The code that evaluates this kind of task is not in this checkout."""


@dataclass(frozen=True)
class Evaluator:
    """How runs of one task kind are evaluated after training.

    Attributes:
        check: ``(spec, where) -> spec`` validates the suite's ``evaluate`` entry.
        command: ``(run, checkpoint, spec) -> argv`` of the evaluation process (run
            with the project's Python), or raises ``EvaluationUnavailable``.
        collect: ``(run, spec) -> dict`` reads what the process wrote.
    """

    check: Callable[[dict, str], dict]
    command: Callable[[Run, str, dict], list[str]]
    collect: Callable[[Run, dict], dict]


ALGORITHMIC_OPTIONS = (
    "memory_size",
    "num_sequences",
    "batch_size",
    "seed",
)  # passed on to `memnet evaluate`


def _check_algorithmic(spec: dict, where: str) -> dict:
    unknown = set(spec) - {"kind", "lengths", *ALGORITHMIC_OPTIONS}
    if unknown:
        raise SuiteError(
            f"{where}: evaluate: unknown key {min(unknown)!r}; allowed: kind, lengths, "
            f"{', '.join(ALGORITHMIC_OPTIONS)}"
        )
    lengths = spec.get("lengths")
    if (
        not isinstance(lengths, list)
        or not lengths
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in lengths)
    ):
        raise SuiteError(
            f"{where}: evaluate.lengths must be a non-empty list of positive integers, got {lengths!r}"
        )
    for key in ALGORITHMIC_OPTIONS:
        low = 0 if key == "seed" else 1
        if key in spec and (
            not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < low
        ):
            raise SuiteError(
                f"{where}: evaluate.{key} must be an integer ≥ {low}, got {spec[key]!r}"
            )
    return spec


def _algorithmic_command(run: Run, checkpoint: str, spec: dict) -> list[str]:
    if find_spec("memnet.evaluation") is None:
        raise EvaluationUnavailable(
            "length generalisation not measured: memnet.evaluation (`memnet evaluate`) is not in this checkout"
        )
    argv = [
        "-m",
        "memnet.cli",
        "evaluate",
        "--ckpt_path",
        checkpoint,
        "--lengths",
        *[str(n) for n in spec["lengths"]],
        "--out",
        str(run.folder / "evaluation"),
    ]
    for key in ALGORITHMIC_OPTIONS:
        if key in spec:
            argv += [f"--{key}", str(spec[key])]
    return argv


def _algorithmic_collect(run: Run, spec: dict) -> dict:
    """Bits per sequence at each length from what ``memnet evaluate --out`` wrote (``results.json``)."""
    folder = run.folder / "evaluation"
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    by_length: dict[str, float] = {}
    train_range: list[int] | None = None
    for path in found:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        by_length.update(_lengths_from(data))
        if isinstance(data, dict) and isinstance(data.get("train_range"), list):
            train_range = [int(n) for n in data["train_range"]]
    if not by_length:
        raise EvaluationUnavailable(
            f"`memnet evaluate` wrote no bits-per-sequence results under {folder}"
        )
    result = {"bits_per_seq": {k: by_length[k] for k in sorted(by_length, key=int)}}
    if train_range is not None:
        result["train_range"] = train_range
    return result


def _lengths_from(data: Any) -> dict[str, float]:
    """Length -> bits per sequence, from the shapes ``memnet evaluate`` may write.

    Accepted: ``{"lengths": [{"length": 20, "bits_per_seq": ...}, ...]}``, a bare list of
    such rows, ``{"bits_per_seq": {"20": ...}}`` or flat metric keys ``*len_20/bits_per_seq``.
    """
    out: dict[str, float] = {}
    rows = (
        data.get("lengths", data.get("results", data.get("rows")))
        if isinstance(data, dict)
        else data
    )
    if isinstance(rows, list):
        for row in rows:
            if isinstance(row, dict) and "length" in row:
                value = row.get("bits_per_seq", row.get("bits_per_sequence"))
                if isinstance(value, (int, float)):
                    out[str(int(row["length"]))] = float(value)
    if isinstance(data, dict):
        table = data.get("bits_per_seq")
        if isinstance(table, dict):
            out.update(
                {str(int(k)): float(v) for k, v in table.items() if isinstance(v, (int, float))}
            )
        for key, value in data.items():
            match = re.search(r"len_(\d+)/bits_per_seq$", str(key))
            if match and isinstance(value, (int, float)):
                out[match.group(1)] = float(value)
    return out


def _check_babi(spec: dict, where: str) -> dict:
    unknown = set(spec) - {"kind", "split"}
    if unknown:
        raise SuiteError(f"{where}: evaluate: unknown key {min(unknown)!r}; allowed: kind, split")
    spec.setdefault("split", "test")
    if spec["split"] not in ("test", "valid"):
        raise SuiteError(
            f"{where}: evaluate.split must be 'test' or 'valid', got {spec['split']!r}"
        )
    return spec


def _babi_command(run: Run, checkpoint: str, spec: dict) -> list[str]:
    """The test split through ``memnet babi-table`` (tasks.babi); other splits through ``validate``."""
    if find_spec("tasks.babi") is None:
        raise EvaluationUnavailable(
            "bAbI per-task error not measured: tasks.babi (`memnet babi-table`) is not in this checkout"
        )
    out = run.folder / "evaluation" / f"babi_{spec['split']}.json"
    config = str(run.folder / "config.yaml")
    if spec["split"] == "test":
        return ["-m", "memnet.cli", "babi-table", "--ckpt_path", checkpoint, "--config", config,
                "--name", run.experiment.name, "--json", str(out)]  # fmt: skip
    return ["-m", "memnet.suite", "_evaluate", "validate", "--config", config,
            "--ckpt_path", checkpoint, "--out", str(out)]  # fmt: skip


def _babi_collect(run: Run, spec: dict) -> dict:
    path = run.folder / "evaluation" / f"babi_{spec['split']}.json"
    if not path.is_file():
        raise EvaluationUnavailable(f"the bAbI evaluation wrote no results ({path} missing)")
    data = json.loads(path.read_text())
    if run.experiment.name in data and isinstance(data[run.experiment.name], dict):
        # memnet babi-table --json: {column name: {task: error %}}
        data = {f"task_{task}/error": error for task, error in data[run.experiment.name].items()}
    errors = babi_errors_from_metrics(data)
    if not errors:
        raise EvaluationUnavailable(
            f"no per-task bAbI error in {path}: the model logs no "
            "'<stage>/task_<k>/error' (or accuracy) metrics"
        )
    return {"babi_error": errors, "split": spec["split"]}


def babi_errors_from_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Per-task test error in % from logged metrics.

    Errors are read as percent, the way ``memnet.lightning.QAModule`` logs them
    (``test/task_3/error``); accuracies as fractions in [0, 1] (``test/task_3/accuracy``).
    """
    errors: dict[str, float] = {}
    for key, value in metrics.items():
        match = re.search(r"(?:task|qa)_?(\d+)/(error|accuracy|acc)$", str(key))
        if not match or not isinstance(value, (int, float)) or match.group(1) not in BABI_TASKS:
            continue
        errors[match.group(1)] = (
            float(value) if match.group(2) == "error" else 100.0 * (1.0 - float(value))
        )
    return {k: errors[k] for k in sorted(errors, key=int)}


EVALUATORS: dict[str, Evaluator] = {
    "algorithmic": Evaluator(_check_algorithmic, _algorithmic_command, _algorithmic_collect),
    "babi": Evaluator(_check_babi, _babi_command, _babi_collect),
}


def _evaluate_main(argv: list[str]) -> None:
    """``python -m memnet.suite _evaluate test|validate --config C --ckpt_path P --out J``.

    Runs ``memnet test`` (or ``validate``) on a checkpoint and writes the logged metrics as JSON.
    """
    parser = argparse.ArgumentParser(prog="memnet suite _evaluate")
    parser.add_argument("stage", choices=["test", "validate"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from memnet.cli import MemnetCLI

    config = yaml.safe_load(Path(args.config).read_text())
    # options of `fit` saved with the run, which a config for `test` must not hold
    for key in ("ckpt_path", "weights_only"):
        config.pop(key, None)
    cli = MemnetCLI(
        args=[
            "--config",
            json.dumps(config),
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ],
        run=False,
    )
    run = cli.trainer.test if args.stage == "test" else cli.trainer.validate
    results = run(
        cli.model, datamodule=cli.datamodule, ckpt_path=args.ckpt_path, weights_only=False
    )
    metrics: dict[str, float] = {}
    for block in results:
        metrics.update({k: float(v) for k, v in block.items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Running a suite
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One experiment at one seed, and its folder."""

    suite: str
    experiment: Experiment
    seed: int
    results: Path

    @property
    def name(self) -> str:
        return f"{self.experiment.name}/seed_{self.seed}"

    @property
    def folder(self) -> Path:
        return self.results / self.experiment.name / f"seed_{self.seed}"

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD_FILE

    def record(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self) -> bool:
        """Trained, and evaluated if the experiment asks for an evaluation."""
        record = self.record()
        if record is None or record.get("status") != "done":
            return False
        return (
            self.experiment.evaluate is None
            or (record.get("evaluation") or {}).get("status") == "done"
        )

    def is_trained(self) -> bool:
        record = self.record()
        return (
            record is not None
            and record.get("status") in ("trained", "done")
            and (self.folder / "summary.json").is_file()
        )

    def last_checkpoint(self) -> Path | None:
        path = self.folder / "checkpoints" / "last.ckpt"
        return path if path.is_file() else None

    def fit_argv(self, *, base: Path, resume_from: Path | None = None) -> list[str]:
        """Arguments of ``memnet fit`` for this run (without the program name)."""
        experiment = self.experiment
        argv = ["fit"]
        for config in experiment.configs:
            argv += ["--config", str(_resolve(config, base).resolve())]
        for key, value in experiment.overrides.items():
            argv.append(f"--{key}={_cli_value(value)}")
        for key, value in experiment.budget.items():
            argv.append(f"--trainer.{key}={_cli_value(value)}")
        for key in experiment.seed_args:
            argv.append(f"--{key}={self.seed}")
        argv.append(f"--checkpoint.dirpath={(self.folder / 'checkpoints').resolve()}")
        if "trainer.enable_progress_bar" not in experiment.overrides:
            argv.append("--trainer.enable_progress_bar=false")
        if _uses_wandb_logger(experiment, base):
            logger = "--trainer.logger.init_args."
            argv += [
                f"{logger}save_dir={self.folder.resolve()}",
                f"{logger}group={self.suite}",
                f"{logger}name={experiment.name}-seed{self.seed}",
                f"{logger}job_type=train",
            ]
        if resume_from is not None:
            argv.append(f"--ckpt_path={resume_from.resolve()}")
        return argv


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value)


def _uses_wandb_logger(experiment: Experiment, base: Path) -> bool:
    """Whether the stacked configs leave the default W&B logger (or name WandbLogger) in place."""
    logger: Any = "default"
    for config in experiment.configs:
        from memnet.cli.configs import load_config

        data = load_config(_resolve(config, base))  # its extends fragments stacked
        trainer = data.get("trainer")
        if isinstance(trainer, dict) and "logger" in trainer:
            logger = trainer["logger"]
    for key, value in experiment.overrides.items():
        if key == "trainer.logger":
            logger = value
        elif key.startswith("trainer.logger."):
            return False  # the suite's own logger fields would clash with the user's
    if logger == "default":
        return True
    return isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger")


def with_overrides(suite: Suite, assignments: list[str]) -> Suite:
    """The suite with ``FIELD=VALUE`` overrides (values read as YAML) added to every experiment."""
    extra: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not re.match(r"^[A-Za-z_][\w.]*$", key):
            raise SuiteError(
                f"--set {assignment!r}: expected FIELD=VALUE with a dotted field name, "
                "e.g. trainer.devices=2"
            )
        if key.removeprefix("trainer.") in BUDGET_KEYS:
            raise SuiteError(
                f"--set {assignment!r}: the training length is the suite's 'budget'; edit the suite file"
            )
        try:
            extra[key] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SuiteError(
                f"--set {assignment!r}: the value is not valid YAML: {error}"
            ) from None
    if not extra:
        return suite
    experiments = tuple(replace(e, overrides={**e.overrides, **extra}) for e in suite.experiments)
    return replace(suite, experiments=experiments)


def expand_runs(suite: Suite, results: Path, only: list[str] | None = None) -> list[Run]:
    """Every experiment × seed, in suite order; ``only`` keeps the named experiments."""
    names = {e.name for e in suite.experiments}
    for name in only or []:
        if name not in names:
            raise SuiteError(
                f"--only {name!r}: no such experiment in suite {suite.name!r}; "
                f"experiments: {', '.join(sorted(names))}"
            )
    return [
        Run(suite.name, experiment, seed, results)
        for experiment in suite.experiments
        if not only or experiment.name in only
        for seed in experiment.seeds
    ]


class _Progress:
    """The whole suite's progress on one line: done, running, failed, pending, time left."""

    def __init__(self, name: str, total: int, jobs: int, skipped: int, stream=None) -> None:
        self.name, self.total, self.jobs = name, total, jobs
        self.done, self.failed, self.running = skipped, 0, 0
        self.started = time.monotonic()
        self.durations: list[float] = []
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.last_print = 0.0

    def line(self) -> str:
        pending = self.total - self.done - self.failed - self.running
        elapsed = time.monotonic() - self.started
        left = "?"
        if self.durations:
            per_run = sum(self.durations) / len(self.durations)
            left = _duration(per_run * (pending + self.running / 2) / max(1, self.jobs))
        elif pending + self.running == 0:
            left = _duration(0)
        return (
            f"[suite {self.name}] {self.done}/{self.total} done, {self.running} running, "
            f"{self.failed} failed, {pending} pending | elapsed {_duration(elapsed)}, left ~{left}"
        )

    def event(self, message: str) -> None:
        with self.lock:
            print(f"{message}\n{self.line()}", file=self.stream, flush=True)
            self.last_print = time.monotonic()

    def tick(self) -> None:
        with self.lock:
            if time.monotonic() - self.last_print >= PROGRESS_SECONDS:
                print(self.line(), file=self.stream, flush=True)
                self.last_print = time.monotonic()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class SuiteRunner:
    """Runs the runs of a suite, ``jobs`` at a time, each in its own process.

    Args:
        suite: the suite.
        results: the results folder.
        jobs: runs at once.
        gpus_per_job: if set, run slot i sees GPUs ``i*k .. i*k+k-1`` (``CUDA_VISIBLE_DEVICES``).
        base_dir: folder that relative config paths are resolved from.
        stream: where progress is printed.
    """

    def __init__(
        self,
        suite: Suite,
        results: Path,
        *,
        jobs: int = 1,
        gpus_per_job: int | None = None,
        base_dir: Path | None = None,
        stream: Any = None,
    ) -> None:
        if not isinstance(jobs, int) or jobs < 1:
            raise SuiteError(f"--jobs must be a positive integer, got {jobs!r}")
        if gpus_per_job is not None and gpus_per_job < 1:
            raise SuiteError(f"--gpus-per-job must be a positive integer, got {gpus_per_job!r}")
        self.suite = suite
        self.results = Path(results)
        self.jobs = jobs
        self.gpus_per_job = gpus_per_job
        self.base = Path(base_dir) if base_dir is not None else Path.cwd()
        self.stream = stream or sys.stdout
        self.events_lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.free_slots: list[int] = list(range(jobs))
        self.slots_lock = threading.Lock()
        self.stopping = False

    def run(self, runs: list[Run]) -> dict[str, int]:
        """Train and evaluate every run that is not done; returns counts by outcome."""
        self.results.mkdir(parents=True, exist_ok=True)
        self._write_suite_file()
        todo = [r for r in runs if not r.is_done()]
        progress = _Progress(
            self.suite.name, len(runs), self.jobs, len(runs) - len(todo), self.stream
        )
        progress.event(
            f"[suite {self.suite.name}] {len(runs)} runs, {len(runs) - len(todo)} already done, "
            f"results in {self.results}"
        )
        counts = {"done": 0, "failed": 0, "interrupted": 0, "skipped": len(runs) - len(todo)}
        previous_handler = None
        if threading.current_thread() is threading.main_thread():  # SIGTERM stops like Ctrl-C
            previous_handler = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._run_all(todo, progress, counts)
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        return counts

    def run_one(self, run: Run) -> tuple[str, str]:
        """Train and evaluate one run here and now (a cluster job's work); returns (outcome, message)."""
        return self._train_and_evaluate(run, 0)

    def _run_all(self, todo: list[Run], progress: _Progress, counts: dict[str, int]) -> None:
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(self._run_one, run, progress) for run in todo]
            try:
                while not all(f.done() for f in futures):
                    time.sleep(POLL_SECONDS)
                    progress.tick()
            except KeyboardInterrupt:
                self.stopping = True
                for future in futures:
                    future.cancel()
                for process in list(self.processes):
                    _terminate(process)
                raise
            for future in futures:
                counts[future.result()] += 1

    def _write_suite_file(self) -> None:
        path = self.results / "suite.json"
        path.write_text(json.dumps(self.suite.to_dict(), indent=2, sort_keys=True) + "\n")

    def _event(self, **fields: Any) -> None:
        fields["time"] = round(time.time(), 3)
        with self.events_lock, open(self.results / "events.jsonl", "a") as handle:
            handle.write(json.dumps(fields, sort_keys=True) + "\n")

    def _run_one(self, run: Run, progress: _Progress) -> str:
        with self.slots_lock:
            slot = self.free_slots.pop(0)
        try:
            if self.stopping:
                return "interrupted"
            with progress.lock:
                progress.running += 1
            started = time.monotonic()
            outcome, message = self._train_and_evaluate(run, slot)
            with progress.lock:
                progress.running -= 1
                progress.durations.append(time.monotonic() - started)
                if outcome == "done":
                    progress.done += 1
                elif outcome == "failed":
                    progress.failed += 1
            progress.event(message)
            return outcome
        finally:
            with self.slots_lock:
                self.free_slots.append(slot)

    def _env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("WANDB_SILENT", "true")
        if "OMP_NUM_THREADS" not in env:  # share the cores between the runs going at once
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        if self.gpus_per_job:
            first = slot * self.gpus_per_job
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(self.gpus_per_job))
        return env

    def _process(self, argv: list[str], log: Path, slot: int) -> int:
        with open(log, "a") as handle:
            handle.write(f"$ {sys.executable} {' '.join(argv)}\n")
            handle.flush()
            process = subprocess.Popen(
                [sys.executable, *argv],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=self._env(slot),
            )
            self.processes.add(process)
            try:
                return process.wait()
            finally:
                self.processes.discard(process)

    def _train_and_evaluate(self, run: Run, slot: int) -> tuple[str, str]:
        run.folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        summary_path = run.folder / "summary.json"
        previous = run.record() or {}
        trained = run.is_trained()
        train_seconds = float(previous.get("train_seconds", 0.0)) if trained else 0.0
        if not trained:
            summary_path.unlink(missing_ok=True)
            resume = run.last_checkpoint()
            argv = ["-m", "memnet.cli", *run.fit_argv(base=self.base, resume_from=resume)]
            (run.folder / "command.json").write_text(
                json.dumps({"argv": argv, "cwd": str(self.base)}, indent=2)
            )
            self._event(event="start", run=run.name, resume_from=str(resume) if resume else None)
            self._write_record(run, status="running", resume_from=str(resume) if resume else None)
            code = self._process(argv, run.folder / "train.log", slot)
            train_seconds = time.monotonic() - started
            if self.stopping:
                self._event(event="interrupted", run=run.name)
                self._write_record(run, status="interrupted", train_seconds=round(train_seconds, 3))
                return "interrupted", f"interrupted {run.name} (resumes from its last checkpoint)"
            if code != 0 or not summary_path.is_file():
                error = _error_from_log(run.folder / "train.log", code)
                self._event(event="failed", run=run.name, stage="train", returncode=code)
                self._write_record(
                    run,
                    status="failed",
                    stage="train",
                    returncode=code,
                    error=error,
                    train_seconds=round(train_seconds, 3),
                )
                return "failed", f"FAILED {run.name} (training, exit {code}): {error}"
            self._event(event="trained", run=run.name)
            self._write_record(run, status="trained", train_seconds=round(train_seconds, 3))
        summary = json.loads(summary_path.read_text())
        checkpoint = summary.get("best_checkpoint") or summary.get("last_checkpoint")
        evaluation: dict[str, Any] | None = None
        spec = run.experiment.evaluate
        if spec is not None:
            evaluation = self._evaluate(run, spec, checkpoint, slot)
        record = self._write_record(
            run,
            status="done",
            metrics=summary.get("metrics", {}),
            evaluation=evaluation,
            checkpoint=checkpoint,
            last_checkpoint=summary.get("last_checkpoint"),
            config=str(run.folder / "config.yaml"),
            wandb_dir=summary.get("wandb_dir"),
            train_seconds=round(train_seconds, 3),
        )
        self._event(event="done", run=run.name)
        note = ""
        if evaluation and evaluation.get("status") != "done":
            note = f" (evaluation {evaluation.get('status')}: {evaluation.get('error')})"
        return "done", f"done {run.name} in {_duration(record['train_seconds'])}{note}"

    def _evaluate(self, run: Run, spec: dict, checkpoint: str | None, slot: int) -> dict[str, Any]:
        evaluator = EVALUATORS[spec["kind"]]
        if not checkpoint:
            return {
                "kind": spec["kind"],
                "status": "failed",
                "error": "training left no checkpoint to evaluate",
            }
        try:
            argv = evaluator.command(run, checkpoint, spec)
        except EvaluationUnavailable as error:
            return {"kind": spec["kind"], "status": "unavailable", "error": str(error)}
        code = self._process(argv, run.folder / "evaluate.log", slot)
        if code != 0:
            return {
                "kind": spec["kind"],
                "status": "failed",
                "error": _error_from_log(run.folder / "evaluate.log", code),
            }
        try:
            result = evaluator.collect(run, spec)
        except EvaluationUnavailable as error:
            return {"kind": spec["kind"], "status": "unavailable", "error": str(error)}
        return {"kind": spec["kind"], "status": "done", **result}

    def _write_record(self, run: Run, **fields: Any) -> dict[str, Any]:
        record = {
            "suite": self.suite.name,
            "experiment": run.experiment.name,
            "seed": run.seed,
            "model": run.experiment.model,
            "task": run.experiment.task,
            **fields,
        }
        partial = run.record_path.with_name(f".{RECORD_FILE}.partial")
        partial.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(partial, run.record_path)
        return record


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _terminate(process: subprocess.Popen) -> None:
    try:
        process.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass


def _error_from_log(path: Path, code: int) -> str:
    """The last error of a log: its ``SomethingError: message`` line and the lines that explain it."""
    try:
        lines = [
            line.strip()
            for line in path.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith("$ ")  # the command line the suite wrote
        ]
    except OSError:
        return f"exit code {code}, no log"
    for index in range(len(lines) - 1, -1, -1):
        if re.match(r"^([\w.]*(Error|Exception)|error|memnet)\b.*?: ", lines[index]):
            detail = [lines[index]]
            for line in lines[index + 1 :]:
                if line.startswith(("Given value", "Traceback", "[", "wandb:")):
                    break
                detail.append(line)
            return " | ".join(detail)[:ERROR_CHARS]
    return lines[-1][:ERROR_CHARS] if lines else f"exit code {code}, empty log"


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def load_references() -> dict[str, Any]:
    """The published bAbI numbers shipped with memnet (``memnet/references/babi.json``)."""
    text = resources.files("memnet").joinpath("references", "babi.json").read_text()
    return json.loads(text)


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _format(stat: tuple[float, float] | None, digits: int = 3, n: int = 1) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return (
        f"{mean:.{digits}g}"
        if n <= 1
        else f"{mean:.{digits}g} ± {std:.{digits - 1 if digits > 1 else 1}g}"
    )


def _fixed(stat: tuple[float, float] | None, decimals: int, n: int) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.{decimals}f}" if n <= 1 else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


@dataclass
class _ExperimentResults:
    experiment: Experiment
    records: list[dict[str, Any]] = field(default_factory=list)

    def done(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") == "done"]

    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") == "failed"]


def collect(results: str | Path) -> tuple[Suite, list[_ExperimentResults]]:
    """The suite and every run record under a results folder."""
    results = Path(results)
    suite_file = results / "suite.json"
    if not suite_file.is_file():
        raise SuiteError(
            f"{results} is not a suite results folder: {suite_file} is missing "
            "(it is written by `memnet suite run`)"
        )
    suite = Suite.from_dict(json.loads(suite_file.read_text()))
    collected = []
    for experiment in suite.experiments:
        entry = _ExperimentResults(experiment)
        for seed in experiment.seeds:
            record = Run(suite.name, experiment, seed, results).record()
            entry.records.append(
                record if record is not None else {"seed": seed, "status": "missing"}
            )
        collected.append(entry)
    return suite, collected


def _score_columns(entry: _ExperimentResults) -> dict[str, list[float]]:
    """Leaderboard column -> one value per finished seed."""
    columns: dict[str, list[float]] = {}
    for record in entry.done():
        metrics = record.get("metrics") or {}
        for key in COLUMN_ORDER:
            if isinstance(metrics.get(key), (int, float)):
                columns.setdefault(key, []).append(float(metrics[key]))
        errors = _babi_errors(record)
        if errors:
            columns.setdefault("bAbI mean error %", []).append(sum(errors.values()) / len(errors))
            columns.setdefault("bAbI failed tasks", []).append(
                float(sum(v > BABI_FAIL_THRESHOLD for v in errors.values()))
            )
        if isinstance(record.get("train_seconds"), (int, float)):
            columns.setdefault("train s", []).append(float(record["train_seconds"]))
    return columns


def _babi_errors(record: dict[str, Any]) -> dict[str, float]:
    evaluation = record.get("evaluation") or {}
    if evaluation.get("status") == "done" and evaluation.get("babi_error"):
        return {str(k): float(v) for k, v in evaluation["babi_error"].items()}
    return {}


def _length_values(record: dict[str, Any]) -> tuple[dict[str, float], set[str], list[int] | None]:
    """Bits per sequence by length, the lengths that come from training's validation only,
    and the training range of lengths (from ``memnet evaluate``) if known.

    Where ``memnet evaluate`` measured a length, its number is used (one protocol for every
    length); the validation of training fills in the lengths it did not measure.
    """
    metrics = record.get("metrics") or {}
    values = {
        m.group(1): float(v)
        for k, v in metrics.items()
        if (m := re.match(r"^val/len_(\d+)/bits_per_seq$", k)) and isinstance(v, (int, float))
    }
    from_validation = set(values)
    evaluation = record.get("evaluation") or {}
    train_range = None
    if evaluation.get("status") == "done":
        for length, value in (evaluation.get("bits_per_seq") or {}).items():
            values[str(length)] = float(value)
            from_validation.discard(str(length))
        train_range = evaluation.get("train_range")
    return values, from_validation, train_range


COLUMN_ORDER = (
    "val/loss",
    "val/bits_per_seq",
    "val/bit_errors_per_seq",
    "val/excess_bits_per_seq",
    "val/sequence_accuracy",
    "val/token_accuracy",
    "val/nrmse",
    "val/error",
    "val/mean_task_error",
    "val/failed_tasks",
    "bAbI mean error %",
    "bAbI failed tasks",
    "train s",
)


def _evaluation_notes(entry: _ExperimentResults) -> list[str]:
    """Why a finished run has no evaluation numbers (code missing, evaluation failed), once each."""
    notes = set()
    for record in entry.done():
        evaluation = record.get("evaluation") or {}
        if evaluation.get("status") not in (None, "done") and evaluation.get("error"):
            notes.add(str(evaluation["error"]))
    return sorted(notes)


def build_report(results: str | Path) -> dict[str, Any]:
    """Every table of the report, as plain data (the JSON leaderboard)."""
    suite, collected = collect(results)
    columns = [c for c in COLUMN_ORDER if any(c in _score_columns(e) for e in collected)]
    leaderboard = []
    for entry in collected:
        scores = _score_columns(entry)
        n = len(entry.done())
        row: dict[str, Any] = {
            "experiment": entry.experiment.name,
            "model": entry.experiment.model,
            "task": entry.experiment.task,
            "seeds": len(entry.experiment.seeds),
            "done": n,
            "failed": len(entry.failed()),
            "missing": len(entry.experiment.seeds) - n - len(entry.failed()),
        }
        for column in columns:
            stat = _mean_std(scores.get(column, []))
            row[column] = (
                None
                if stat is None
                else {"mean": stat[0], "std": stat[1], "n": len(scores[column])}
            )
        row["errors"] = [
            {"seed": r.get("seed"), "stage": r.get("stage"), "error": r.get("error")}
            for r in entry.failed()
        ]
        notes = _evaluation_notes(entry)
        row["evaluation_notes"] = notes
        leaderboard.append(row)

    lengths_table = []
    for entry in collected:
        if (entry.experiment.evaluate or {}).get("kind") != "algorithmic" and not any(
            _length_values(r)[0] for r in entry.done()
        ):
            continue
        by_length: dict[str, list[float]] = {}
        validation_only: set[str] = set()
        train_range: list[int] | None = None
        validated: set[str] = set()  # lengths of training's validation: the longest trained on
        for record in entry.done():
            values, from_validation, record_range = _length_values(record)
            validation_only |= from_validation
            validated |= {
                m.group(1)
                for key in record.get("metrics") or {}
                if (m := re.match(r"^val/len_(\d+)/bits_per_seq$", key))
            }
            train_range = train_range or record_range
            for length, value in values.items():
                by_length.setdefault(length, []).append(value)
        if train_range is None and validated:
            train_range = [min(int(n) for n in validated), max(int(n) for n in validated)]
        wanted = [str(n) for n in (entry.experiment.evaluate or {}).get("lengths", [])]
        cells = {}
        for length in sorted(set(by_length) | set(wanted), key=int):
            stat = _mean_std(by_length.get(length, []))
            cells[length] = (
                None
                if stat is None
                else {"mean": stat[0], "std": stat[1], "n": len(by_length[length])}
            )
        lengths_table.append(
            {
                "experiment": entry.experiment.name,
                "model": entry.experiment.model,
                "task": entry.experiment.task,
                "training_range": train_range,
                "validation_only": sorted(validation_only, key=int),
                "bits_per_seq": cells,
                "notes": _evaluation_notes(entry),
            }
        )

    babi_table = None
    babi_entries = [
        e
        for e in collected
        if (e.experiment.evaluate or {}).get("kind") == "babi"
        or any(_babi_errors(r) for r in e.done())
    ]
    if babi_entries:
        references = load_references()
        models = []
        for entry in babi_entries:
            runs = [_babi_errors(r) for r in entry.done()]
            runs = [r for r in runs if r]
            per_task = {}
            for task in BABI_TASKS:
                stat = _mean_std([r[task] for r in runs if task in r])
                per_task[task] = None if stat is None else {"mean": stat[0], "std": stat[1]}
            mean_error = _mean_std([sum(r.values()) / len(r) for r in runs])
            failed = _mean_std(
                [float(sum(v > BABI_FAIL_THRESHOLD for v in r.values())) for r in runs]
            )
            notes = _evaluation_notes(entry)
            measured = sum(stat is not None for stat in per_task.values())
            if runs and measured < len(BABI_TASKS):
                partial = (
                    f"{entry.experiment.name}: only {measured} of {len(BABI_TASKS)} tasks measured; "
                    "its mean error and failed count cover those only"
                )
                notes = sorted({*notes, partial})
            models.append(
                {
                    "experiment": entry.experiment.name,
                    "model": entry.experiment.model,
                    "task": entry.experiment.task,
                    "runs": len(runs),
                    "tasks_measured": measured,
                    "split": (entry.experiment.evaluate or {}).get("split", "test"),
                    "per_task": per_task,
                    "mean_error": None
                    if mean_error is None
                    else {"mean": mean_error[0], "std": mean_error[1]},
                    "failed": None if failed is None else {"mean": failed[0], "std": failed[1]},
                    "notes": notes,
                }
            )
        babi_table = {
            "task_names": references["task_names"],
            "models": models,
            "references": references["references"],
        }
    return {
        "suite": suite.name,
        "description": suite.description,
        "columns": columns,
        "leaderboard": leaderboard,
        "lengths": lengths_table,
        "babi": babi_table,
    }


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(stat: dict | None, digits: int = 4) -> str:
    if stat is None:
        return "—"
    n = stat.get("n", 2)
    return _format((stat["mean"], stat["std"]), digits, n)


def leaderboard_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and string rows of the leaderboard (the markdown, CSV and W&B tables share them)."""
    header = ["experiment", "model", "task", "runs ok", *report["columns"], "status"]
    rows = []
    for row in report["leaderboard"]:
        status = []
        if row["failed"]:
            status.append(
                "; ".join(
                    f"seed {e['seed']} failed ({e['stage']}): {e['error']}" for e in row["errors"]
                )
            )
        if row["missing"]:
            status.append(f"{row['missing']} not finished")
        status += row["evaluation_notes"]
        rows.append(
            [
                row["experiment"],
                row["model"],
                row["task"],
                f"{row['done']}/{row['seeds']}",
                *[_cell(row[c]) for c in report["columns"]],
                "; ".join(status) or "ok",
            ]
        )
    return header, rows


def lengths_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    lengths = sorted({n for row in report["lengths"] for n in row["bits_per_seq"]}, key=int)
    header = ["experiment", "model", "task", *[f"L={n}" for n in lengths], "notes"]
    rows = []
    for row in report["lengths"]:
        cells = []
        low, high = row["training_range"] or (0, 0)
        for n in lengths:
            stat = row["bits_per_seq"].get(n)
            text = _cell(stat) if n in row["bits_per_seq"] else ""
            if stat is not None and low <= int(n) <= high:
                text += " *"
            if stat is not None and n in row["validation_only"]:
                text += " (val)"
            cells.append(text)
        rows.append([row["experiment"], row["model"], row["task"], *cells, "; ".join(row["notes"])])
    return header, rows


def babi_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    table = report["babi"]
    references = table["references"]
    header = [
        "task",
        *[
            m["experiment"] + ("" if m.get("split", "test") == "test" else f" ({m['split']} split)")
            for m in table["models"]
        ],
        *[r["label"] for r in references],
    ]
    rows = []

    def ref_cell(ref: dict, value: Any, std: Any = None) -> str:
        if value is None:
            return ""
        return f"{value:.1f}" if std is None else f"{value:.1f} ± {std:.1f}"

    for task in BABI_TASKS:
        row = [f"{task}: {table['task_names'][task]}"]
        for model in table["models"]:
            stat = model["per_task"][task]
            row.append(
                "—" if stat is None else _fixed((stat["mean"], stat["std"]), 1, model["runs"])
            )
        for ref in references:
            per_task = ref.get("per_task") or {}
            row.append(ref_cell(ref, per_task.get(task), (ref.get("per_task_std") or {}).get(task)))
        rows.append(row)
    mean_row, failed_row = ["mean error %"], [f"failed tasks (> {BABI_FAIL_THRESHOLD:g}%)"]
    for model in table["models"]:
        for target, key, decimals in ((mean_row, "mean_error", 1), (failed_row, "failed", 1)):
            stat = model[key]
            text = (
                "—"
                if stat is None
                else _fixed((stat["mean"], stat["std"]), decimals, model["runs"])
            )
            if stat is not None and model["tasks_measured"] < len(BABI_TASKS):
                text += f" [{model['tasks_measured']}/{len(BABI_TASKS)} tasks]"
            target.append(text)
    for ref in references:
        mean_row.append(ref_cell(ref, ref.get("mean_error"), ref.get("mean_error_std")))
        failed = ref.get("failed")
        failed_row.append(
            ""
            if failed is None
            else (
                f"{failed:g}"
                if ref.get("failed_std") is None
                else f"{failed:g} ± {ref['failed_std']:g}"
            )
        )
    rows += [mean_row, failed_row]
    return header, rows


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown (deterministic: the same results give the same text)."""
    parts = [f"# Suite `{report['suite']}`"]
    if report["description"]:
        parts.append(report["description"].strip())
    parts.append(
        "## Leaderboard\n\nmean ± sample std over the seeds that finished; metrics from the last "
        "validation of training unless named otherwise.\n\n"
        + _markdown_table(*leaderboard_rows(report))
    )
    if report["lengths"]:
        parts.append(
            "## Algorithmic tasks: bits per sequence by length\n\nthe NTM paper's cost (binary "
            "cross-entropy per sequence, in bits), mean ± std over seeds, measured by `memnet "
            "evaluate`; '*' marks lengths inside the training range, '(val)' a number from the "
            "last validation of training (where `memnet evaluate` did not run).\n\n"
            + _markdown_table(*lengths_rows(report))
        )
    if report["babi"]:
        refs = "\n".join(
            f"- **{r['label']}**: {r['citation']}; {r['source']} ({r['statistic']})."
            for r in report["babi"]["references"]
        )
        parts.append(
            "## bAbI: test error % per task\n\nours: mean ± std over seeds; a task fails above "
            f"{BABI_FAIL_THRESHOLD:g}% error. Published columns (blank where the paper's per-task "
            "number is not stored):\n\n" + refs + "\n\n" + _markdown_table(*babi_rows(report))
        )
        notes = sorted({n for m in report["babi"]["models"] for n in m["notes"]})
        if notes:
            parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts) + "\n"


def render_csv(report: dict[str, Any]) -> str:
    """The leaderboard as CSV: one row per experiment, mean and std in separate columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "experiment",
            "model",
            "task",
            "seeds",
            "done",
            "failed",
            "missing",
            *[f"{c} {part}" for c in report["columns"] for part in ("mean", "std")],
            "errors",
        ]
    )
    for row in report["leaderboard"]:
        values = []
        for column in report["columns"]:
            stat = row[column]
            values += ["", ""] if stat is None else [f"{stat['mean']:.6g}", f"{stat['std']:.6g}"]
        writer.writerow(
            [
                row["experiment"],
                row["model"],
                row["task"],
                row["seeds"],
                row["done"],
                row["failed"],
                row["missing"],
                *values,
                "; ".join(str(e["error"]) for e in row["errors"]),
            ]
        )
    return buffer.getvalue()


def plot_report(report: dict[str, Any], folder: Path) -> list[Path]:
    """Error versus length per model, and bAbI per-task bars, as PNG; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    metadata = {"Software": None}  # no version stamp: the same report gives the same bytes
    rows = [r for r in report["lengths"] if any(s is not None for s in r["bits_per_seq"].values())]
    if rows:
        tasks = sorted({r["task"] for r in rows})
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for row in (r for r in rows if r["task"] == task):
                points = [(int(n), s) for n, s in row["bits_per_seq"].items() if s is not None]
                points.sort()
                ax.errorbar(
                    [p[0] for p in points],
                    [p[1]["mean"] for p in points],
                    yerr=[p[1]["std"] for p in points],
                    marker="o",
                    capsize=3,
                    label=row["experiment"],
                )
                if row["training_range"]:  # the longest training length
                    ax.axvline(row["training_range"][1], color="grey", linestyle=":", linewidth=0.8)
            values = [
                s["mean"]
                for r in rows
                if r["task"] == task
                for s in r["bits_per_seq"].values()
                if s
            ]
            if values and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO:
                ax.set_yscale("log")
            ax.set_title(task)
            ax.set_xlabel("sequence length")
            ax.set_ylabel("bits per sequence")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / "lengths.png"
        fig.savefig(path, dpi=100, metadata=metadata)
        plt.close(fig)
        written.append(path)
    babi = report["babi"]
    if babi and any(m["runs"] for m in babi["models"]):
        models = [m for m in babi["models"] if m["runs"]]
        fig, ax = plt.subplots(figsize=(12, 4))
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            xs = [int(t) + (i - (len(models) - 1) / 2) * width for t in BABI_TASKS]
            ys = [(model["per_task"][t] or {}).get("mean", float("nan")) for t in BABI_TASKS]
            es = [(model["per_task"][t] or {}).get("std", 0.0) for t in BABI_TASKS]
            ax.bar(xs, ys, width=width, yerr=es, capsize=2, label=model["experiment"])
        markers = iter("xv^sd+")
        for ref in babi["references"]:
            if ref.get("per_task"):
                ax.plot(
                    [int(t) for t in BABI_TASKS],
                    [ref["per_task"][t] for t in BABI_TASKS],
                    linestyle="none",
                    marker=next(markers, "."),
                    color="black",
                    markersize=4,
                    zorder=3,
                    label=f"{ref['label']} (published)",
                )
        ax.set_xlim(0.5, len(BABI_TASKS) + 0.5)
        ax.axhline(
            BABI_FAIL_THRESHOLD,
            color="red",
            linestyle="--",
            linewidth=0.8,
            label="5% (failed above)",
        )
        ax.set_xticks([int(t) for t in BABI_TASKS])
        ax.set_xlabel("bAbI task")
        ax.set_ylabel("test error %")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / "babi.png"
        fig.savefig(path, dpi=100, metadata=metadata)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write leaderboard.md/.csv/.json (and babi/lengths PNGs) to ``out`` (default RESULTS/report)."""
    report = build_report(results)
    out = Path(out) if out is not None else Path(results) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(render_markdown(report))
    (out / "leaderboard.csv").write_text(render_csv(report))
    (out / "leaderboard.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    plot_report(report, out)
    return report


def log_to_wandb(report: dict[str, Any], results: Path, out: Path) -> str | None:
    """Log the tables (``wandb.Table``) and plots in one summary run, grouped by the suite's name.

    Offline unless ``WANDB_MODE=online``; returns the run's folder.
    """
    import wandb

    mode = "online" if os.environ.get("WANDB_MODE") == "online" else "offline"
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "memnet"),
        group=report["suite"],
        name=f"{report['suite']}-summary",
        job_type="suite-report",
        dir=str(results),
        mode=mode,
        config={"suite": report["suite"]},
    )
    try:
        payload: dict[str, Any] = {}
        header, rows = leaderboard_rows(report)
        payload["leaderboard"] = wandb.Table(columns=header, data=rows)
        if report["lengths"]:
            header, rows = lengths_rows(report)
            payload["lengths"] = wandb.Table(columns=header, data=rows)
        if report["babi"]:
            header, rows = babi_rows(report)
            payload["babi"] = wandb.Table(columns=header, data=rows)
        for png in sorted(out.glob("*.png")):
            payload[f"plots/{png.stem}"] = wandb.Image(str(png))
        run.log(payload)
        return str(Path(run.dir).parent)
    finally:
        run.finish()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from memnet.cli.launcher import LAUNCHERS

    parser = argparse.ArgumentParser(
        prog="memnet suite", description="Run a suite of experiments and report it."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="train and evaluate every experiment × seed of a suite file"
    )
    run.add_argument("suite", help="suite YAML, e.g. configs/suites/smoke.yaml")
    run.add_argument(
        "--results", help="results folder (default: the suite's 'results' or runs/suites/<name>)"
    )
    run.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    run.add_argument(
        "--gpus-per-job",
        type=int,
        default=None,
        help="give each concurrent run its own GPUs through CUDA_VISIBLE_DEVICES",
    )
    run.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="run only these experiments")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="overrides",
        help="an override for every experiment, e.g. --set trainer.devices=2 --set "
        "trainer.strategy=ddp (the value is read as YAML); repeatable",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the suite and print the commands; train nothing",
    )
    cluster = run.add_argument_group("cluster", "one job per run through submitit (memnet.cli.launcher); "
                                     "also from a 'launcher:' section of the suite file")
    cluster.add_argument("--launcher", choices=LAUNCHERS, default=None,
                         help="local (default: this machine, --jobs at a time), slurm, or submitit-local "
                         "(the Slurm code path as local subprocesses)")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--time", help="time limit per job: minutes or [D-]HH:MM[:SS] (default 04:00:00)")
    cluster.add_argument("--cpus", type=int, help="CPUs per job")
    cluster.add_argument("--mem-gb", type=float, dest="mem_gb", help="memory per job, GB")
    cluster.add_argument("--account", help="Slurm account")
    cluster.add_argument("--array-parallelism", type=int, dest="array_parallelism",
                         help="jobs of the array running at once")
    cluster.add_argument("--slurm", action="append", default=[], metavar="OPTION=VALUE",
                         help="any other Slurm option submitit knows, e.g. --slurm qos=high; repeatable")
    cluster.add_argument("--wait", action="store_true",
                         help="wait for the jobs, then write the report (always with submitit-local)")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--no-wandb", action="store_true", help="do not log the summary run to W&B")
    status = commands.add_parser("status", help="the state of every run: pending, running, finished, "
                                 "failed (with the error), requeued")
    status.add_argument("results", help="results folder written by `memnet suite run`")
    report = commands.add_parser("report", help="leaderboard, tables and plots of a results folder")
    report.add_argument("results", help="results folder written by `memnet suite run`")
    report.add_argument("--out", help="where the report goes (default RESULTS/report)")
    report.add_argument("--no-wandb", action="store_true", help="do not log the summary run to W&B")
    return parser


def _report(results: Path, out: str | None, wandb_on: bool) -> None:
    report = write_report(results, out)
    folder = Path(out) if out else results / REPORT_DIR
    print(render_markdown(report))
    print(
        f"report written to {folder} (leaderboard.md, leaderboard.csv, leaderboard.json"
        + "".join(f", {p.name}" for p in sorted(folder.glob("*.png")))
        + ")"
    )
    if wandb_on:
        try:
            where = log_to_wandb(report, results, folder)
            print(f"W&B summary run: {where}")
        except Exception as error:  # noqa: BLE001 - the report on disk stands without W&B
            print(f"W&B summary run not logged: {type(error).__name__}: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``memnet suite run|report``; returns the exit status (1 if a run failed or the input is bad)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            _report(Path(args.results), args.out, not args.no_wandb)
            return 0
        if args.command == "status":
            from memnet.cli.launcher import render_status, run_states

            print(render_status(run_states(Path(args.results))))
            return 0
        suite = with_overrides(load_suite(args.suite), args.overrides)
        results = Path(args.results) if args.results else suite.default_results()
        runs = expand_runs(suite, results, args.only)
        from memnet.cli import launcher

        settings = {key: getattr(args, key) for key in launcher.SETTINGS if key != "gpus_per_job"}
        settings["gpus_per_job"] = args.gpus_per_job
        chosen = launcher.merge(suite.launcher or launcher.LauncherConfig(), name=args.launcher,
                                settings=settings, slurm=args.slurm)
        if chosen.name != "local" and not args.dry_run:
            counts = launcher.submit(suite, runs, results, chosen, base_dir=Path.cwd(),
                                     wait=args.wait or chosen.name == "submitit-local")
            if "done" in counts and not args.no_report:
                _report(results, None, not args.no_wandb)
            return 1 if counts.get("failed") else 0
        runner = SuiteRunner(suite, results, jobs=args.jobs, gpus_per_job=args.gpus_per_job)
        if args.dry_run:
            for run in runs:
                state = (
                    "done" if run.is_done() else ("resume" if run.last_checkpoint() else "train")
                )
                argv_ = run.fit_argv(base=runner.base, resume_from=run.last_checkpoint())
                print(f"[{state}] {run.name}: memnet {' '.join(argv_)}")
            return 0
        counts = runner.run(runs)
        print(
            f"[suite {suite.name}] finished: {counts['done']} trained now, {counts['skipped']} already done, "
            f"{counts['failed']} failed"
        )
        if not args.no_report:
            _report(results, None, not args.no_wandb)
        return 1 if counts["failed"] else 0
    except SuiteError as error:
        print(f"memnet suite: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "memnet suite: interrupted; run the same command again to finish the missing runs "
            "(finished runs are kept, started ones resume from their last checkpoint)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_evaluate":
        _evaluate_main(sys.argv[2:])
    else:
        raise SystemExit(main())
