"""Suite files: the YAML of ``memnet suite``, parsed with PyYAML and checked, every error naming
the file, the line and the experiment (``defaults`` and its line, for a bad value an experiment
takes from there).

The whole command: ``memnet.cli.suite`` (spec, evaluators, runner, report, command).

    memnet suite run configs/suites/algorithmic.yaml --jobs 2     train every run, evaluate, report
    memnet suite report runs/suites/algorithmic                   the leaderboard from what is on disk

A suite file is YAML::

    name: algorithmic                      # the suite's name: W&B group, default results folder
    description: NTM paper tasks           # optional
    results: runs/suites/algorithmic       # optional; default runs/suites/<name>
    launcher: {name: slurm, partition: gpu, time: "04:00:00"}   # optional (memnet.cli.suite.launcher)
    defaults:                              # optional; merged into every experiment (experiment wins)
      seeds: 3                             # n (seeds 0..n-1) or a list [0, 1, 2]
      budget: {max_steps: 10000}           # max_steps, max_epochs and/or max_time ("DD:HH:MM:SS")
      overrides: {trainer.log_every_n_steps: 50}
      seed_args: [seed_everything, data.init_args.seed]   # the fields a run's seed is written to
    experiments:
      - name: ntm-copy                     # unique; letters, digits, '-', '_', '.'; not one of the
                                           #   suite's own entries of RESULTS (report, jobs, wandb, ...)
        configs: [configs/ntm/copy.yaml]   # stacked in order, like repeated --config; a path not
                                           #   found from here names a shipped config (ntm/copy)
        overrides:                         # any CLI field, dotted, as in --key=value
          model.init_args.net.init_args.memory_size: 128
        evaluate: {kind: algorithmic, lengths: [20, 40, 80, 120]}   # or {kind: babi, split: test}
                                           #   repeat copy also takes repeats: [10, 20] (and
                                           #   repeat_lengths, default its lengths): fixed counts
        model: NTM                         # labels for the tables (default: the first config's
        task: copy                         #   folder and file name, configs/<model>/<task>.yaml)
        select: {metric: error, split: train, mode: min}   # optional: report the run of lowest
                                           #   train/error beside the mean ± s.d. over the seeds
                                           #   (memnet.selection; never the test split)

Every experiment × seed is one *run*, trained in its own process through the real
training entry point (``python -m memnet.cli fit ...``, the code of ``memnet fit``),
so one failure does not stop the others. A results folder holds::

    RESULTS/suite.json                        the resolved suite, and the experiments run before
                                              that it does not define (runner.merged_suite)
    RESULTS/events.jsonl                      one line per training start, finish, failure
    RESULTS/<experiment>/seed_<s>/
        command.json                          the argv of the training command
        config.yaml                           the full resolved config (written by memnet fit)
        checkpoints/last.ckpt, best-*.ckpt    checkpoints (resumed from last.ckpt after a kill)
        train.log, evaluate.log               the processes' output
        evaluation/, evaluation_repeats/      what `memnet evaluate` wrote (the second: evaluate.repeats)
        summary.json                          written by memnet fit when training finished
        metrics.json                          the run's record: status, metrics, evaluation, error
        job.json                              the cluster job running it (launcher, job id, state)
        job.lock                              held (flock) while job.json is read and written
        suite.lock                            held (flock) by the process training or evaluating it (its pid,
                                              host and cluster job id)
    RESULTS/report/                           leaderboard.md/.csv/.json, babi.md, lengths.md, *.png
    RESULTS/jobs/, RESULTS/wandb/             submitit's job files; the W&B summary run

A run whose ``metrics.json`` says ``done`` is skipped on the next ``suite run``; a
run with a ``last.ckpt`` but no record resumes from it; a failed run is tried again (one
whose evaluation failed is only evaluated again). A ``metrics.json`` that is there but
cannot be read stops ``suite run`` before anything trains, naming it (exit 2).
"""


from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from memnet.cli.suite.errors import SuiteError
from memnet.cli.suite.evaluators import EVALUATORS
from memnet.selection import SelectionError, check_select
from memnet.utils import is_integer

DEFAULT_RESULTS_ROOT = Path("runs") / "suites"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SUITE_KEYS = {"name", "description", "results", "defaults", "experiments", "launcher"}
DEFAULTS_KEYS = {"seeds", "budget", "overrides", "seed_args", "evaluate", "select"}
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
    "select",
}
BUDGET_KEYS = ("max_steps", "max_epochs", "max_time")
# What the suite itself writes in a results folder, beside the experiments' folders RESULTS/<experiment>/
SUITE_FILE = "suite.json"  # the resolved suite (memnet.cli.suite.runner)
TASK_FIELD = "data.init_args.task"  # the algorithmic task, whose class says whether evaluate.repeats can be asked
EVENTS_FILE = "events.jsonl"  # training starts, finishes, failures (memnet.cli.suite.runner)
REPORT_DIR = "report"  # leaderboard and plots (memnet.cli.suite.report)
JOBS_DIR = "jobs"  # submitit's scripts, pickles and logs (memnet.cli.suite.launcher)
WANDB_DIR = "wandb"  # the W&B summary run: wandb.init(dir=RESULTS) (memnet.cli.suite.report)
RESERVED_NAMES = (EVENTS_FILE, JOBS_DIR, REPORT_DIR, SUITE_FILE, WANDB_DIR)  # no experiment may take these


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
        configs: the config files' absolute paths, stacked in order (later wins).
        overrides: dotted CLI field -> value, given as ``--field=value`` after the configs.
        seeds: one run per seed.
        budget: ``max_steps`` / ``max_epochs`` / ``max_time`` for the trainer.
        evaluate: ``{"kind": ..., ...}`` evaluation after training, or None.
        model: label of the model in the tables.
        task: label of the task in the tables.
        seed_args: the fields each run's seed is written to.
        select: ``{"metric", "split", "mode"}``: the run the report selects (``memnet.selection``), or None.
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
    select: dict[str, str] | None = None


@dataclass(frozen=True)
class Suite:
    """A named list of experiments (see the module docstring for the file format)."""

    name: str
    description: str
    experiments: tuple[Experiment, ...]
    path: str = ""
    results: str | None = None
    launcher: Any = None  # the ``launcher:`` section, a memnet.cli.suite.launcher.LauncherConfig

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
                    "select": e.select,
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
                select=e.get("select"),
            )
            for e in data["experiments"]
        )
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            experiments=experiments,
            path=data.get("path", ""),
        )


def read_results_suite(results: str | Path) -> Suite:
    """The suite a results folder was run with, from its ``suite.json``.

    Raises:
        SuiteError: naming the folder when it has no ``suite.json``, and the file when it is not
            the JSON ``memnet suite run`` writes (truncated, or edited by hand).
    """
    results = Path(results)
    suite_file = results / SUITE_FILE
    if not suite_file.is_file():
        raise SuiteError(
            f"{results} is not a suite results folder: {suite_file} is missing "
            "(it is written by `memnet suite run`)"
        )
    try:
        return Suite.from_dict(json.loads(suite_file.read_text()))
    except json.JSONDecodeError as error:
        problem = f"not JSON ({error})"
    except (KeyError, TypeError, AttributeError) as error:  # JSON, but not a suite's: a key missing, a wrong type
        problem = f"not a suite as `memnet suite run` writes it ({type(error).__name__}: {error})"
    except (OSError, UnicodeDecodeError) as error:
        problem = f"unreadable ({error})"
    raise SuiteError(f"{suite_file}: {problem}; `memnet suite run SUITE --results {results}` writes it again "
                     "(finished runs are kept)")


def load_suite(path: str | Path, *, base_dir: str | Path | None = None) -> Suite:
    """Read and check a suite file; every problem raises ``SuiteError`` before anything runs.

    Args:
        path: the suite YAML.
        base_dir: folder that relative config paths are resolved from (default: the
            current working directory, where ``memnet fit`` would resolve them); a path
            that is not there names a shipped config, as in ``memnet fit --config``.

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
    if defaults.get("budget") is not None and not isinstance(defaults["budget"], dict):
        line = getattr(defaults, "key_lines", {}).get("budget", getattr(defaults, "line", 0))
        raise SuiteError(
            f"{where}:{line}: defaults: 'budget' must be a mapping with {', '.join(BUDGET_KEYS)}, "
            f"got {defaults['budget']!r}"
        )
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
    from memnet.cli.suite.launcher import from_section  # the cluster launchers (submitit)

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
    if name.casefold() in RESERVED_NAMES:  # casefold: one folder on a case-insensitive file system (macOS)
        raise SuiteError(
            f"{where}:{line}: experiment {name!r} (entry {index + 1}): the name is reserved, its runs would share "
            f"RESULTS/{name} with what the suite writes there itself; reserved names: {', '.join(RESERVED_NAMES)}"
        )
    label = f"experiment {name!r}"
    _check_keys(entry, EXPERIMENT_KEYS, where, label)

    def written(owner: dict, section: str, key: Any = None) -> str:
        """``file:line: whose`` of ``owner[section]`` (``owner`` the experiment or ``defaults``), on the line of
        its field ``key`` where one is given."""
        whose = label if owner is entry else "defaults"
        written_on = _key_line(owner, section, getattr(owner, "line", line))
        if key is not None:
            written_on = _key_line(owner.get(section), key, written_on)
        return f"{where}:{written_on}: {whose}"

    def at(key: str) -> str:
        """Where the value of ``key`` is written: in the experiment, else in the ``defaults`` it takes it from."""
        return written(defaults if key not in entry and key in defaults else entry, key)

    configs = entry.get("configs")
    if isinstance(configs, str):
        configs = [configs]
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
        raise SuiteError(
            f"{at('configs')}: 'configs' must be a non-empty list of config file paths"
        )
    resolved = tuple(str(find_config_file(config, base, at("configs"))) for config in configs)

    seeds = _parse_seeds(
        entry["seeds"] if "seeds" in entry else defaults.get("seeds", 1), at("seeds")
    )

    overrides: dict[str, Any] = {}
    for owner in (defaults, entry):
        source = owner.get("overrides")
        if source is None:
            continue
        if not isinstance(source, dict):
            raise SuiteError(
                f"{written(owner, 'overrides')}: 'overrides' must be a mapping of dotted field names to values, "
                f"e.g. {{trainer.max_steps: 100}}"
            )
        for key, value in source.items():
            key_where = written(owner, "overrides", key)
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
        # the experiment's value of the field, else the one it takes from defaults: named on its own line
        key_where = written(entry if key in (entry.get("budget") or {}) else defaults, "budget", key)
        if key not in BUDGET_KEYS:
            raise SuiteError(
                f"{key_where}: budget: unknown key {key!r}; allowed: {', '.join(BUDGET_KEYS)}"
            )
        if key == "max_time":
            if not (isinstance(value, str) and re.match(r"^\d+:\d{2}:\d{2}:\d{2}$", value)):
                raise SuiteError(
                    f"{key_where}: budget.max_time must be 'DD:HH:MM:SS', got {value!r}"
                )
        elif not is_integer(value) or value < 1:
            raise SuiteError(
                f"{key_where}: budget.{key} must be a positive integer, got {value!r}"
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
        if evaluate.get("repeats") is not None:  # only repeat copy has a repeat count to fix
            _check_repeat_task(resolved, overrides, evaluate["repeats"], at("evaluate"))

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

    select = entry.get("select", defaults.get("select"))
    if select is not None:
        try:
            select = check_select(select, at("select"))
        except SelectionError as error:
            raise SuiteError(str(error)) from None

    model, task = _default_labels(configs[0])
    for key in ("model", "task"):
        if key in entry and not isinstance(entry[key], str):
            raise SuiteError(f"{at(key)}: {key!r} must be a string label")
    return Experiment(
        name=name,
        configs=resolved,
        overrides=overrides,
        seeds=seeds,
        budget=budget,
        evaluate=evaluate,
        model=entry.get("model", model),
        task=entry.get("task", task),
        seed_args=tuple(seed_args),
        select=select,
    )


def _check_repeat_task(configs: tuple[str, ...], overrides: dict[str, Any], repeats: list[int], where: str) -> None:
    """Refuse ``evaluate.repeats`` for an experiment whose task has no repeat count (copy, priority sort, ...): the
    task its stacked configs and overrides name (``data.init_args.task``) must have ``with_repeats``, as
    ``memnet evaluate --repeats`` requires, or the suite would train every run before its evaluation failed.

    Raises:
        SuiteError: ``where`` (the suite file, line and experiment), the counts and the task.
    """
    import importlib

    from memnet.cli.configs import ConfigError, load_config

    asked = f"evaluate.repeats {repeats!r}"
    task: Any = None
    for config in configs:
        try:
            data = load_config(config).get("data")
        except (ConfigError, OSError, ValueError) as error:
            raise SuiteError(f"{where}: {asked}: cannot read the task of {config}: {error}") from None
        found = ((data or {}).get("init_args") or {}).get("task") if isinstance(data, dict) else None
        if found is not None:
            task = found
    task = overrides.get(TASK_FIELD, task)
    class_path = task.get("class_path") if isinstance(task, dict) else task
    class_path = overrides.get(f"{TASK_FIELD}.class_path", class_path)
    if not isinstance(class_path, str) or not class_path:
        raise SuiteError(f"{where}: {asked}: the experiment's configs name no task (data.init_args.task.class_path), "
                         "so no repeat count to fix; repeats are for repeat copy (tasks.algorithmic.RepeatCopyTask)")
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        cls = None
    if cls is None:
        raise SuiteError(f"{where}: {asked}: the task {class_path} cannot be imported, so whether it has a repeat "
                         "count cannot be told; repeats are for repeat copy (tasks.algorithmic.RepeatCopyTask)")
    if not hasattr(cls, "with_repeats"):
        raise SuiteError(f"{where}: {asked}: the task {class_path} has no repeat count (only repeat copy's sequences "
                         "have one, tasks.algorithmic.RepeatCopyTask); drop evaluate.repeats")


def _key_line(mapping: Any, key: Any, default: int) -> int:
    """The line ``key`` is written on in ``mapping`` (one the suite file's loader read), else ``default``."""
    return mapping.key_lines.get(key, default) if isinstance(mapping, _Mapping) else default


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


def find_config_file(config: str, base: Path, where: str) -> Path:
    """The absolute path of a suite's config entry: relative to ``base``, else as ``memnet fit --config``
    finds it (``memnet.cli.configs.find_config``: a path from here, or a shipped config such as
    ``configs/ntm/copy.yaml`` or ``ntm/copy``), so that a shipped suite runs from any folder.

    Raises:
        SuiteError: ``where`` (the suite file, line and experiment), the entry and the folders looked in.
    """
    from memnet.cli.configs import ConfigError, find_config

    path = _resolve(config, base)
    if not path.is_file():
        try:
            path = find_config(config)
        except ConfigError as error:
            raise SuiteError(
                f"{where}: config file {config!r} does not exist (looked in {path.parent}, "
                f"then among the shipped configs: {error})"
            ) from None
    return path.resolve()


def _default_labels(config: str) -> tuple[str, str]:
    """configs/<model>/<task>.yaml -> (model, task)."""
    path = Path(config)
    return path.parent.name or path.stem, path.stem
