"""How a suite evaluates a finished run, by task kind, through the other ``memnet`` commands.

    algorithmic   ``memnet evaluate`` (length generalisation); read back as its one result
                  schema, ``memnet.protocols.EvaluationResult`` (``results.json``); with ``repeats`` (repeat
                  copy), a second ``memnet evaluate --repeats`` into ``evaluation_repeats/``: the rows of
                  fixed repeat counts, kept apart from the table of one score per length
    babi          ``memnet babi-table --json`` (test split) or ``memnet suite _evaluate validate``;
                  read back as the per-task error schema ``{name: {task: error %}}``
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memnet.cli.suite.errors import EvaluationUnavailable, SuiteError
from memnet.metrics import BABI_TASK_KEYS as BABI_TASKS
from memnet.protocols import EVALUATION_FILE, ResultSchemaError, read_evaluation

if TYPE_CHECKING:
    from memnet.cli.suite.runner import Run


@dataclass(frozen=True)
class Evaluator:
    """How runs of one task kind are evaluated after training.

    Attributes:
        check: ``(spec, where) -> spec`` validates the suite's ``evaluate`` entry.
        command: ``(run, checkpoint, spec) -> argv`` of the evaluation process (run
            with the project's Python), or raises ``EvaluationUnavailable``.
        collect: ``(run, spec) -> dict`` reads what the process(es) wrote.
        more_commands: ``(run, checkpoint, spec) -> [argv, ...]``, the processes run after ``command``, in order,
            each only if the one before succeeded (the algorithmic evaluation's fixed repeat counts); none by default.
    """

    check: Callable[[dict, str], dict]
    command: Callable[[Run, str, dict], list[str]]
    collect: Callable[[Run, dict], dict]
    more_commands: Callable[[Run, str, dict], list[list[str]]] = lambda run, checkpoint, spec: []


ALGORITHMIC_OPTIONS = (
    "memory_size",
    "num_sequences",
    "batch_size",
    "seed",
)  # passed on to `memnet evaluate`


# `memnet evaluate --engine`: the network's execution path in the evaluation (default: the checkpoint's).
# A run trained on the compiled engine is evaluated faster on the fused one: `memnet evaluate` compiles
# graphs of its own (the DNC of priority sort: 34.6 s in all on the compiled engine, 7.0 s fused).
EVALUATION_ENGINES = ("eager", "fused", "compiled")


# the fixed repeat counts of repeat copy (`memnet evaluate --repeats`), scored at ``repeat_lengths`` (default: the
# entry's ``lengths``) into their own folder, beside the per-length evaluation (``evaluation/``)
REPEATS_KEYS = ("repeats", "repeat_lengths")
REPEATS_FOLDER = "evaluation_repeats"


def _positive_integers(value: Any) -> bool:
    """Whether ``value`` is a non-empty list of integers ≥ 1 (no bool, no float such as 10.0, no string)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value))


def _check_algorithmic(spec: dict, where: str) -> dict:
    unknown = set(spec) - {"kind", "lengths", "engine", *ALGORITHMIC_OPTIONS, *REPEATS_KEYS}
    if unknown:
        raise SuiteError(
            f"{where}: evaluate: unknown key {min(unknown)!r}; allowed: kind, lengths, engine, "
            f"{', '.join(ALGORITHMIC_OPTIONS)}, {', '.join(REPEATS_KEYS)}"
        )
    if "engine" in spec and spec["engine"] not in EVALUATION_ENGINES:
        raise SuiteError(
            f"{where}: evaluate.engine must be one of {', '.join(EVALUATION_ENGINES)}, got {spec['engine']!r}"
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
    if "repeat_lengths" in spec and "repeats" not in spec:
        raise SuiteError(f"{where}: evaluate.repeat_lengths is the lengths of the fixed repeat counts; it needs "
                         "evaluate.repeats (e.g. repeats: [10, 20])")
    for key in REPEATS_KEYS:
        if key in spec and not _positive_integers(spec[key]):
            what = "repeat counts" if key == "repeats" else "lengths"
            raise SuiteError(f"{where}: evaluate.{key} must be a non-empty list of positive integers ({what} ≥ 1), "
                             f"got {spec[key]!r}")
        twice = sorted({n for n in spec.get(key) or [] if spec[key].count(n) > 1})
        if twice:
            raise SuiteError(f"{where}: evaluate.{key} names {', '.join(map(str, twice))} more than once: "
                             f"{spec[key]!r}")
    return spec


def repeat_pairs(spec: dict | None) -> list[tuple[int, int]]:
    """The (length, repeats) rows an algorithmic ``evaluate`` entry asks for at fixed repeat counts: each of its
    ``repeat_lengths`` (default: its ``lengths``) with each of its ``repeats``; none without ``repeats``."""
    spec = spec or {}
    if spec.get("kind") != "algorithmic" or not spec.get("repeats"):
        return []
    return [(length, repeats) for length in spec.get("repeat_lengths") or spec["lengths"]
            for repeats in spec["repeats"]]


def _algorithmic_command(run: Run, checkpoint: str, spec: dict) -> list[str]:
    if find_spec("memnet.evaluation") is None:
        raise EvaluationUnavailable(
            "length generalisation not measured: memnet.evaluation (`memnet evaluate`) is not in this checkout"
        )
    return _evaluate_argv(checkpoint, spec["lengths"], run.folder / "evaluation", spec)


def _algorithmic_repeats_commands(run: Run, checkpoint: str, spec: dict) -> list[list[str]]:
    """``memnet evaluate --repeats`` at the entry's ``repeats`` (and ``repeat_lengths``) into ``evaluation_repeats/``,
    with the same options as the per-length evaluation; none without ``repeats``."""
    if not spec.get("repeats"):
        return []
    lengths = spec.get("repeat_lengths") or spec["lengths"]
    return [_evaluate_argv(checkpoint, lengths, run.folder / REPEATS_FOLDER, spec, spec["repeats"])]


def _evaluate_argv(checkpoint: str, lengths: list[int], out: Path, spec: dict,
                   repeats: list[int] | None = None) -> list[str]:
    argv = [
        "-m",
        "memnet.cli",
        "evaluate",
        "--ckpt_path",
        checkpoint,
        "--lengths",
        *[str(n) for n in lengths],
        *(["--repeats", *[str(r) for r in repeats]] if repeats else []),
        "--out",
        str(out),
    ]
    for key in (*ALGORITHMIC_OPTIONS, "engine"):
        if key in spec:
            argv += [f"--{key}", str(spec[key])]
    return argv


def _read_results(path: Path, command: str) -> dict:
    """The ``results.json`` that ``command`` wrote at ``path``, or ``EvaluationUnavailable`` saying why not."""
    if not path.is_file():
        raise EvaluationUnavailable(f"{command} wrote no bits-per-sequence results ({path} missing)")
    try:
        return read_evaluation(path)
    except ResultSchemaError as error:
        raise EvaluationUnavailable(f"{command} results unreadable: {error}") from None


def _algorithmic_collect(run: Run, spec: dict) -> dict:
    """Bits per sequence at each length from what ``memnet evaluate --out`` wrote (``results.json``,
    the one result schema ``memnet.protocols.EvaluationResult``)."""
    path = run.folder / "evaluation" / EVALUATION_FILE
    result = _read_results(path, "`memnet evaluate`")
    if any("repeats" in row for row in result["lengths"]):  # several rows a length: not one score per length
        raise EvaluationUnavailable(f"{path} holds rows of fixed repeat counts (memnet evaluate --repeats), not "
                                    "one bits-per-sequence score per length; evaluate the run again without --repeats")
    by_length = {str(int(row["length"])): float(row["bits_per_seq"]) for row in result["lengths"]}
    if not by_length:
        raise EvaluationUnavailable(f"`memnet evaluate` wrote no bits-per-sequence results in {path}")
    collected: dict[str, Any] = {"bits_per_seq": {k: by_length[k] for k in sorted(by_length, key=int)}}
    if None not in (result.get("train_range") or [None]):
        collected["train_range"] = [int(n) for n in result["train_range"]]
    if repeat_pairs(spec):
        collected.update(_repeats_collect(run, spec))
    return collected


def _repeats_collect(run: Run, spec: dict) -> dict:
    """Bits per sequence at each (length, repeats) of the entry from what ``memnet evaluate --repeats`` wrote into
    ``evaluation_repeats/``: ``{"bits_per_seq_repeats": {length: {repeats: bits}}, "train_repeats": [lo, hi]}``."""
    path = run.folder / REPEATS_FOLDER / EVALUATION_FILE
    result = _read_results(path, "`memnet evaluate --repeats`")
    rows = result["lengths"]
    if not rows or any("repeats" not in row for row in rows):
        raise EvaluationUnavailable(f"{path} holds rows without a fixed repeat count, not those of `memnet evaluate "
                                    "--repeats`; evaluate the run again")
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        table.setdefault(str(int(row["length"])), {})[str(int(row["repeats"]))] = float(row["bits_per_seq"])
    missing = [f"{length} ({repeats} repeats)" for length, repeats in repeat_pairs(spec)
               if str(repeats) not in table.get(str(length), {})]
    if missing:
        raise EvaluationUnavailable(f"{path} has no row at length {', '.join(missing)}; evaluate the run again")
    collected: dict[str, Any] = {"bits_per_seq_repeats": {
        length: {r: table[length][r] for r in sorted(table[length], key=int)} for length in sorted(table, key=int)}}
    if None not in (result.get("train_repeats") or [None]):
        collected["train_repeats"] = [int(n) for n in result["train_repeats"]]
    return collected


def _check_babi(spec: dict, where: str) -> dict:
    unknown = set(spec) - {"kind", "split", "ensemble"}
    if unknown:
        raise SuiteError(f"{where}: evaluate: unknown key {min(unknown)!r}; allowed: kind, split, ensemble")
    spec.setdefault("split", "test")
    if spec["split"] not in ("test", "valid"):
        raise SuiteError(
            f"{where}: evaluate.split must be 'test' or 'valid', got {spec['split']!r}"
        )
    if "ensemble" in spec and not isinstance(spec["ensemble"], bool):
        raise SuiteError(f"{where}: evaluate.ensemble must be true or false, got {spec['ensemble']!r}")
    if spec.get("ensemble") and spec["split"] != "test":
        raise SuiteError(f"{where}: evaluate.ensemble averages the seeds' answers to the test questions; "
                         f"it needs split: test, got {spec['split']!r}")
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
    return ["-m", "memnet.cli", "suite", "_evaluate", "validate", "--config", config, "--ckpt_path", checkpoint,
            "--name", run.experiment.name, "--out", str(out)]  # fmt: skip


def _babi_collect(run: Run, spec: dict) -> dict:
    """Per-task errors as ``memnet babi-table --json`` (and ``suite _evaluate``) write them:
    ``{column name: {task: error %}}``, the column being the experiment's name."""
    from memnet.cli.babi_table import read_results
    from memnet.cli.rebuild import RebuildError

    path = run.folder / "evaluation" / f"babi_{spec['split']}.json"
    if not path.is_file():
        raise EvaluationUnavailable(f"the bAbI evaluation wrote no results ({path} missing)")
    try:
        columns = read_results(path)
    except RebuildError as error:
        raise EvaluationUnavailable(f"the bAbI evaluation's results are unreadable: {error}") from None
    errors = columns.get(run.experiment.name, {})
    if not errors:
        raise EvaluationUnavailable(
            f"no per-task bAbI error for {run.experiment.name} in {path}: the model logs no "
            "'<stage>/task_<k>/error' metrics (is it a memnet.lightning.QAModule?)"
        )
    return {"babi_error": {str(task): error for task, error in sorted(errors.items())}, "split": spec["split"]}


def record_babi_errors(record: dict[str, Any], split: str | None = None) -> dict[str, float]:
    """A run record's per-task bAbI errors; {} if it has none, or (``split`` given) they are of another split."""
    evaluation = record.get("evaluation") or {}
    if split is not None and evaluation.get("split", "test") != split:
        return {}
    if evaluation.get("status") == "done" and evaluation.get("babi_error"):
        return {str(k): float(v) for k, v in evaluation["babi_error"].items()}
    return {}


def babi_errors_from_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Per-task test error in % from metrics logged by any code (e.g. a W&B export).

    memnet's own runs are read through the per-task schema (``_babi_collect``); this
    reader also accepts other names. Errors are read as percent, the way ``memnet.lightning.QAModule`` logs them
    (``test/task_3/error``); accuracies as fractions in [0, 1] (``test/task_3/accuracy``), rounded to 1e-6 %
    so that an accuracy of 0.95 is 5% exactly (a pass, not a failed task). Only the test split (``test/``) or
    names without a split are read: a ``val/`` or ``train/`` error is never taken for a test error.
    """
    errors: dict[str, float] = {}
    for key, value in metrics.items():
        match = re.fullmatch(r"(?:test/)?(?:task|qa)_?(\d+)/(error|accuracy|acc)", str(key))
        if not match or not isinstance(value, (int, float)) or match.group(1) not in BABI_TASKS:
            continue
        errors[match.group(1)] = (
            float(value) if match.group(2) == "error" else round(100.0 * (1.0 - float(value)), 6)
        )
    return {k: errors[k] for k in sorted(errors, key=int)}


def evaluation_options(spec: dict) -> dict:
    """The options an evaluation ran with besides its kind, split and lengths (``num_sequences``, ``seed``,
    ``memory_size``, ...), kept in the run's record beside its numbers."""
    # ``ensemble`` is the experiment's, made after its seeds (``memnet.cli.suite.ensemble``), not an option of a run's
    # the rows asked for (lengths, repeat counts) are not options: a record is checked for each (evaluation_answers)
    return {key: value for key, value in spec.items()
            if key not in ("kind", "split", "lengths", "ensemble", *REPEATS_KEYS)}


def evaluation_answers(spec: dict | None, evaluation: dict | None) -> bool:
    """Whether a run's stored evaluation is the one the suite's ``evaluate`` entry asks for now.

    A bAbI evaluation must be of the same split, an algorithmic one must cover every length asked
    for, and both must have run with the same options (``evaluation_options``): a suite file changed
    after its runs were evaluated gets them evaluated again, instead of reporting the old numbers
    under the new heading.
    """
    if spec is None:
        return True
    evaluation = evaluation or {}
    if evaluation.get("status") != "done":
        return False
    if "options" in evaluation and evaluation["options"] != evaluation_options(spec):
        return False  # e.g. evaluate.memory_size or num_sequences changed (a record without options cannot tell)
    if spec.get("kind") == "babi":
        return evaluation.get("split", "test") == spec.get("split", "test")
    if spec.get("kind") == "algorithmic":
        fixed = evaluation.get("bits_per_seq_repeats") or {}
        return ({str(n) for n in spec.get("lengths", [])} <= set(evaluation.get("bits_per_seq") or {})
                and all(str(r) in (fixed.get(str(n)) or {}) for n, r in repeat_pairs(spec)))
    return True


EVALUATORS: dict[str, Evaluator] = {
    "algorithmic": Evaluator(_check_algorithmic, _algorithmic_command, _algorithmic_collect,
                             _algorithmic_repeats_commands),
    "babi": Evaluator(_check_babi, _babi_command, _babi_collect),
}
