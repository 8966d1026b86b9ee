"""The suite's report: leaderboard (mean ± std over seeds), lengths, fixed repeat counts and bAbI tables, plots, W&B.

Scores come from ``memnet.metrics`` (mean error, failed tasks); tables are written by
``memnet.cli.tables``; the plots are ``memnet.plots.plot_suite_report``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from memnet.cli import tables
from memnet.cli.suite.ensemble import read_ensemble
from memnet.cli.suite.evaluators import BABI_TASKS, evaluation_options, repeat_pairs
from memnet.cli.suite.evaluators import record_babi_errors as _babi_errors
from memnet.cli.suite.runner import Run, not_in_suite_note, runs_not_in_suite, settings_changes
from memnet.cli.suite.spec import REPORT_DIR, Experiment, Suite, read_results_suite
from memnet.metrics import FAILED_TASK_ERROR as BABI_FAIL_THRESHOLD
from memnet.metrics import by_length as logged_by_length
from memnet.metrics import failed_tasks
from memnet.metrics import mean_error as mean_task_error
from memnet.plots import plot_suite_report
from memnet.selection import mean_std, metric_key, summarize
from memnet.utils import is_integer, is_number, logged_wandb_id, replace_file_set, wandb_mode

# what `memnet suite report` writes into its folder, replaced as one set (a figure with nothing to draw is not written)
REPORT_FILES = ("leaderboard.md", "leaderboard.csv", "repeats.csv", "lengths.png", "babi.png", "leaderboard.json")


def load_references() -> dict[str, Any]:
    """The published bAbI numbers shipped with memnet (``memnet/references/babi.json``)."""
    text = resources.files("memnet").joinpath("references", "babi.json").read_text()
    return json.loads(text)


def _nonfinite(values_by_seed: dict[Any, float | None]) -> list[Any]:
    """The seeds whose value is NaN or infinite (left out of a mean, so they are named instead)."""
    return [seed for seed, value in values_by_seed.items() if value is not None and not math.isfinite(value)]


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


def _task_error(stat: dict[str, float], n: int) -> str:
    """A bAbI task's error % with one decimal, as the papers print it; more where one would hide a failure
    (5.04% is failed, "5.0" is not), as ``memnet babi-table`` prints it."""
    decimals = 1
    while (stat["mean"] > BABI_FAIL_THRESHOLD and float(f"{stat['mean']:.{decimals}f}") <= BABI_FAIL_THRESHOLD
           and decimals < 6):
        decimals += 1
    return _fixed((stat["mean"], stat["std"]), decimals, n)


@dataclass
class _ExperimentResults:
    experiment: Experiment
    records: list[dict[str, Any]] = field(default_factory=list)

    def done(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") == "done"]

    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") == "failed"]


def collect(results: str | Path) -> tuple[Suite, list[_ExperimentResults]]:
    """The suite and every run record under a results folder.

    Raises:
        SuiteError: a run's record is there but damaged (:meth:`Run.read_record`), naming it: it was reported as a
            missing run, its numbers left out of the means without a word.
    """
    results = Path(results)
    suite = read_results_suite(results)
    collected = []
    for experiment in suite.experiments:
        entry = _ExperimentResults(experiment)
        for seed in experiment.seeds:
            run = Run(suite.name, experiment, seed, results)
            record = run.read_record()
            if record is not None:
                record["trained_lengths"] = _trained_lengths(run.folder / "config.yaml")
            entry.records.append(
                record if record is not None else {"seed": seed, "status": "missing"}
            )
        collected.append(entry)
    return suite, collected


def _trained_lengths(config: Path) -> list[int] | None:
    """The task's training range of lengths, [min_length, max_length], from a run's saved config.yaml (its
    ``data.init_args.task.init_args``); None where the run has no such task or no readable config."""
    try:
        saved = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    data = saved.get("data") if isinstance(saved, dict) else None
    task = ((data or {}).get("init_args") or {}).get("task") if isinstance(data, dict) else None
    arguments = (task.get("init_args") or {}) if isinstance(task, dict) else {}
    low, high = arguments.get("min_length"), arguments.get("max_length")
    return [low, high] if is_integer(low) and is_integer(high) else None


def _score_columns(entry: _ExperimentResults) -> dict[str, dict[Any, float]]:
    """Leaderboard column -> seed -> its value, for every finished seed that has one."""
    columns: dict[str, dict[Any, float]] = {}
    for record in entry.done():
        seed = record.get("seed")
        metrics = record.get("metrics") or {}
        for key in COLUMN_ORDER:
            if is_number(metrics.get(key)):
                columns.setdefault(key, {})[seed] = float(metrics[key])
        errors = _babi_errors(record, _babi_split(entry.experiment))
        if errors:
            columns.setdefault("bAbI mean error %", {})[seed] = mean_task_error(errors.values())
            columns.setdefault("bAbI failed tasks", {})[seed] = float(failed_tasks(errors.values()))
            columns.setdefault(BABI_MEASURED, {})[seed] = float(len(errors))
        if is_number(record.get("train_seconds")):
            columns.setdefault("train s", {})[seed] = float(record["train_seconds"])
    return columns


def _babi_split(experiment: Experiment) -> str:
    """The split an experiment's bAbI evaluation asks for (the test split unless it says otherwise)."""
    return (experiment.evaluate or {}).get("split", "test")


def _stale_options(record: dict[str, Any], experiment: Experiment) -> list[str]:
    """How the options a run's evaluation ran with differ from those the suite's ``evaluate`` asks for now (e.g.
    ``num_sequences: 6, now 100``); none where they agree or the record does not say (an older memnet).

    ``suite run --only``/``--seeds`` rewrites suite.json for every experiment but evaluates only its runs again:
    the others keep numbers measured under the old options (``evaluators.evaluation_answers``)."""
    evaluation = record.get("evaluation") or {}
    if experiment.evaluate is None or evaluation.get("status") != "done" or "options" not in evaluation:
        return []
    then, now = evaluation["options"] or {}, evaluation_options(experiment.evaluate)
    return [f"{key}: {then.get(key, 'unset')!r}, now {now.get(key, 'unset')!r}"
            for key in sorted(set(then) | set(now)) if then.get(key) != now.get(key)]


def _length_values(record: dict[str, Any]) -> tuple[dict[str, float], set[str], list[int] | None]:
    """Bits per sequence by length, the lengths that come from training's validation only,
    and the training range of lengths (from ``memnet evaluate``) if known.

    Where ``memnet evaluate`` measured a length, its number is used (one protocol for every
    length); the validation of training fills in the lengths it did not measure.
    """
    metrics = record.get("metrics") or {}
    values = {str(length): value for length, value in logged_by_length(metrics, "bits_per_seq").items()}
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
BABI_SCORES = ("bAbI mean error %", "bAbI failed tasks")  # a mean over each seed's measured tasks
UNSELECTED_SCORES = ("train s",)  # a leaderboard column the selected run's line leaves out: not a score
# the fewest bAbI tasks a seed in those means measured (of 20): a mean over 12 tasks is not one over 20
BABI_MEASURED = "bAbI tasks measured"


def _selection(entry: _ExperimentResults) -> dict[str, Any] | None:
    """The run the experiment's ``select`` rule picks, its scores beside their mean ± s.d. over the seeds.

    The scores are the leaderboard's columns (:func:`_score_columns`), and so are the means: a column's mean is
    over the same seeds in both, whichever of them were evaluated on bAbI. A selected run with a bAbI error shows
    the paper's two numbers (mean error, failed tasks), another run its logged metrics.
    """
    if entry.experiment.select is None:
        return None
    by_seed = _score_columns(entry)

    def scores(record: dict[str, Any]) -> dict[str, float]:
        seed = record.get("seed")
        return {name: by_seed[name][seed] for name in COLUMN_ORDER if seed in by_seed.get(name, {})}

    summary = summarize(entry.records, entry.experiment.select, scores)
    if summary is None:
        return None
    babi = any(name in summary["selected"] for name in BABI_SCORES)
    shown = [name for name in COLUMN_ORDER if (name in BABI_SCORES) == babi and name not in UNSELECTED_SCORES]
    return {**summary, "selected": {name: value for name, value in summary["selected"].items() if name in shown},
            "over_seeds": {name: stat for name, stat in summary["over_seeds"].items() if name in shown}}


def _selection_notes(entry: _ExperimentResults, selected: dict[str, Any] | None) -> list[str]:
    """Why an experiment with a ``select`` rule shows no selected run though runs finished (a metric no
    run logged: a typo, or a model that does not log it), instead of dropping the selected row unsaid; the
    finished seeds left out of the selection (the metric missing, NaN or infinite: a diverged seed), which the
    selected run's "of k runs" counted out unsaid; and the evaluated seeds compared by their final metrics, not
    by those of the checkpoint they were tested on (``memnet.selection.selection_value``), which may be other
    weights."""
    rule = entry.experiment.select
    if rule is None or not entry.done():
        return []
    if selected is None:
        return [(f"select: no finished run logged a finite {metric_key(rule)}, so no run is selected "
                 "(is select.metric a name the model logs?)")]
    notes = []
    left_out = selected.get("left_out") or []
    if left_out:
        key = metric_key(rule)
        seeds = ", ".join(f"seed {run['seed']} ({f'no {key}' if run['value'] is None else f'{key} ' + run['value']})"
                          for run in left_out)
        notes.append(f"select: {seeds} left out of the selection, which is of the other {selected['candidates']} "
                     "finished runs")
    fallback = selected.get("by_final_metrics") or []
    if fallback:
        notes.append(f"select: seed {', '.join(map(str, fallback))} compared by {metric_key(rule)} at the end of "
                     "training, not by that of the checkpoint tested, which may be other weights (its record does not "
                     "hold the checkpoint's: written by an older memnet, or the checkpoint was saved before the metric "
                     "was logged)")
    return notes


def selected_lines(report: dict[str, Any]) -> list[str]:
    """One line per experiment with a ``select`` rule: the chosen run beside the mean ± s.d."""
    lines = []
    for row in report["leaderboard"]:
        chosen = row.get("selected")
        if not chosen:
            continue
        parts = []
        for name, value in chosen["selected"].items():
            over = chosen["over_seeds"].get(name)
            spread = "" if over is None else f" (all {over['n']} seeds: {_format((over['mean'], over['std']), 4, over['n'])})"
            parts.append(f"{name} {value:.4g}{spread}")
        lines.append(
            f"- **{row['experiment']}**: seed {chosen['seed']}, the {chosen['rule']} "
            f"({chosen['value']:.4g}) of {chosen['candidates']} runs; " + "; ".join(parts)
        )
    return lines


def _evaluation_notes(entry: _ExperimentResults) -> list[str]:
    """Why a finished run has no evaluation numbers (code missing, evaluation failed), once each."""
    notes = set()
    for record in entry.done():
        evaluation = record.get("evaluation") or {}
        if evaluation.get("status") not in (None, "done") and evaluation.get("error"):
            notes.add(str(evaluation["error"]))
    return sorted(notes)


def _settings_notes(entry: _ExperimentResults) -> list[str]:
    """The finished runs trained under other settings than the suite's now, or resumed under other settings
    than they started with, a config file edited in place included: their numbers are in the tables, so they
    are named (records without settings, written by an older memnet, cannot tell; those without the config
    files' contents are compared without them)."""
    current = Run("", entry.experiment, 0, Path()).settings()
    notes = []
    for record in entry.done():
        seed, settings = record.get("seed"), record.get("settings")
        changes = settings_changes(settings, current) if settings is not None else []
        if changes:
            notes.append(f"seed {seed} was trained with other settings than the suite's now "
                         f"({'; '.join(changes)}); its numbers are in the means")
        started = record.get("resumed_from_settings")
        changes = settings_changes(started, settings) if settings is not None and started is not None else []
        if changes:
            notes.append(f"seed {seed} was resumed with other settings than it started with ({'; '.join(changes)})")
    return notes


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
        nonfinite = []
        for column in columns:
            by_seed = scores.get(column, {})
            row[column] = mean_std(list(by_seed.values()))
            nonfinite += [f"{column} of seed {seed} is {by_seed[seed]:g}, left out of its mean"
                          for seed in _nonfinite(by_seed)]
        measured = scores.get(BABI_MEASURED, {})
        if any(column in columns for column in BABI_SCORES):
            row[BABI_MEASURED] = int(min(measured.values())) if measured else None
        short = [f"seed {seed} measured {k:g} of {len(BABI_TASKS)} bAbI tasks"
                 for seed, k in measured.items() if k < len(BABI_TASKS)]
        tasks_notes = [", ".join(short) + "; a run's bAbI mean error and failed count cover its measured tasks "
                       "only"] if short else []  # as the bAbI table's notes say it
        split = _babi_split(entry.experiment)
        other = [str(r.get("seed")) for r in entry.done() if _babi_errors(r) and not _babi_errors(r, split)]
        if other:  # left out of the bAbI columns (_score_columns), as the bAbI table's notes say it
            tasks_notes.append(f"seed {', '.join(other)} evaluated on another split than {split!r}, left out of the "
                               f"bAbI columns; `memnet suite run` evaluates it on {split!r}")
        row["errors"] = [
            {"seed": r.get("seed"), "stage": r.get("stage"), "error": r.get("error")}
            for r in entry.failed()
        ]
        notes = _evaluation_notes(entry)
        row["selected"] = _selection(entry)
        row["evaluation_notes"] = [*notes, *_settings_notes(entry), *_selection_notes(entry, row["selected"]),
                                   *tasks_notes, *nonfinite]
        leaderboard.append(row)

    lengths_table = []
    for entry in collected:
        if (entry.experiment.evaluate or {}).get("kind") != "algorithmic" and not any(
            _length_values(r)[0] for r in entry.done()
        ):
            continue
        # length -> seed -> value, from `memnet evaluate` and from training's validation: a cell takes
        # one protocol only (evaluated where any seed was evaluated), never a mix of the two
        evaluated: dict[str, dict[Any, float]] = {}
        validation: dict[str, dict[Any, float]] = {}
        train_range: list[int] | None = None
        validated: set[str] = set()  # lengths of training's validation: the longest trained on
        length_notes: list[str] = []
        stale_seeds = set()
        for record in entry.done():
            stale = _stale_options(record, entry.experiment)
            if stale:  # measured under other options: never averaged in under the suite's options now
                stale_seeds.add(record.get("seed"))
                length_notes.append(f"seed {record.get('seed')} was evaluated with other evaluation options than "
                                    f"the suite's now ({'; '.join(stale)}), left out; `memnet suite run` evaluates "
                                    "it again")
                record = {**record, "evaluation": None}
            values, from_validation, record_range = _length_values(record)
            validated |= {str(length) for length in logged_by_length(record.get("metrics") or {}, "bits_per_seq")}
            train_range = train_range or record_range or record.get("trained_lengths")
            for length, value in values.items():
                target = validation if length in from_validation else evaluated
                target.setdefault(length, {})[record.get("seed")] = value
        if train_range is None and validated:  # no task range known (an older run folder): the validation's
            train_range = [min(int(n) for n in validated), max(int(n) for n in validated)]
        wanted = [str(n) for n in (entry.experiment.evaluate or {}).get("lengths", [])]
        cells = {}
        validation_only: set[str] = set()
        for length in sorted(set(evaluated) | set(validation) | set(wanted), key=int):
            by_seed = evaluated.get(length)
            if by_seed is None and length in validation:
                by_seed = validation[length]
                validation_only.add(length)
            elif by_seed is not None and length in validation:
                left = ", ".join(str(seed) for seed in validation[length])
                length_notes.append(f"L={length}: seed {left} not evaluated, left out (its validation value "
                                    "is another protocol)")
            if by_seed is not None and length in wanted:  # evaluated at fewer lengths than the suite asks now
                unsaid = [r.get("seed") for r in entry.done() if r.get("seed") not in by_seed
                          and r.get("seed") not in validation.get(length, {}) and r.get("seed") not in stale_seeds]
                if unsaid:
                    length_notes.append(f"L={length}: seed {', '.join(map(str, unsaid))} not evaluated at this "
                                        "length, left out; `memnet suite run` evaluates it again")
            by_seed = by_seed or {}
            cells[length] = mean_std(list(by_seed.values()))
            length_notes += [f"L={length}: seed {seed} at {by_seed[seed]:g}, left out of the mean"
                             for seed in _nonfinite(by_seed)]
        lengths_table.append(
            {
                "experiment": entry.experiment.name,
                "model": entry.experiment.model,
                "task": entry.experiment.task,
                "training_range": train_range,
                "validation_only": sorted(validation_only, key=int),
                "bits_per_seq": cells,
                "notes": [*_evaluation_notes(entry), *_settings_notes(entry), *length_notes],
            }
        )

    repeats_table = [row for row in map(_repeats_row, collected) if row is not None]

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
            # the seeds evaluated on the split the suite asks for; one evaluated on another (a suite file
            # changed since) is left out and named, never averaged in under this split's heading
            split = _babi_split(entry.experiment)
            evaluated = [(r, _babi_errors(r, split)) for r in entry.done()]
            evaluated = [(r, errors) for r, errors in evaluated if errors]
            other = [r.get("seed") for r in entry.done() if _babi_errors(r) and not _babi_errors(r, split)]
            runs = [errors for _, errors in evaluated]
            per_task = {task: mean_std([r[task] for r in runs if task in r]) for task in BABI_TASKS}
            mean_error = mean_std([mean_task_error(r.values()) for r in runs])
            failed = mean_std(
                [float(failed_tasks(r.values())) for r in runs]
            )
            notes = set(_evaluation_notes(entry)) | {f"{entry.experiment.name}: {note}" for note in _settings_notes(entry)}
            measured = sum(stat is not None for stat in per_task.values())
            short = [(record.get("seed"), len(errors)) for record, errors in evaluated if len(errors) < len(BABI_TASKS)]
            if short:
                notes.add(
                    f"{entry.experiment.name}: "
                    + ", ".join(f"seed {seed} measured {k} of {len(BABI_TASKS)} tasks" for seed, k in short)
                    + "; a run's mean error and failed count cover its measured tasks only"
                )
            if other:
                notes.add(f"{entry.experiment.name}: seed {', '.join(map(str, other))} evaluated on another split "
                          f"than {split!r}, left out; `memnet suite run` again evaluates it on {split!r}")
            selected = _selection(entry)
            notes = sorted(notes | {f"{entry.experiment.name}: {note}" for note in _selection_notes(entry, selected)})
            if selected is not None:
                chosen = next(r for r in entry.done() if r.get("seed") == selected["seed"])
                errors = _babi_errors(chosen, split)
                if not errors:  # its column would vanish while the leaderboard names it the selected run
                    notes.append(f"{entry.experiment.name}: the selected run (seed {selected['seed']}) has no bAbI "
                                 f"test error on the {split!r} split, so the table has no column for it; "
                                 f"`memnet suite run` evaluates it")
                    notes.sort()
                if errors:
                    models.append(
                        {
                            "experiment": f"{entry.experiment.name}: seed {selected['seed']}, "
                            f"{selected['rule']} of {selected['candidates']}",
                            "model": entry.experiment.model,
                            "task": entry.experiment.task,
                            "runs": 1,
                            "tasks_measured": len(errors),
                            "split": split,
                            "per_task": {t: ({"mean": errors[t], "std": 0.0, "n": 1} if t in errors else None)
                                         for t in BABI_TASKS},
                            "mean_error": {"mean": mean_task_error(errors.values()), "std": 0.0, "n": 1},
                            "failed": {"mean": float(failed_tasks(errors.values())), "std": 0.0, "n": 1},
                            "notes": [],
                        }
                    )
            ensemble, ensemble_notes = read_ensemble(suite, entry.experiment, results)
            notes = sorted(set(notes) | set(ensemble_notes))
            if ensemble is not None and split == "test":
                errors = ensemble["babi_error"]
                seeds = ensemble["seeds"]
                models.append(
                    {
                        "experiment": f"{entry.experiment.name}: ensemble of seeds "
                        f"{', '.join(map(str, seeds))} (answer probabilities averaged)",
                        "model": entry.experiment.model,
                        "task": entry.experiment.task,
                        "runs": 1,
                        "ensemble_of": seeds,
                        "tasks_measured": len(errors),
                        "split": split,
                        "per_task": {t: ({"mean": errors[t], "std": 0.0, "n": 1} if t in errors else None)
                                     for t in BABI_TASKS},
                        "mean_error": {"mean": mean_task_error(errors.values()), "std": 0.0, "n": 1},
                        "failed": {"mean": float(failed_tasks(errors.values())), "std": 0.0, "n": 1},
                        "notes": [],
                    }
                )
            models.append(
                {
                    "experiment": entry.experiment.name,
                    "model": entry.experiment.model,
                    "task": entry.experiment.task,
                    "runs": len(runs),
                    "seeds": [record.get("seed") for record, _ in evaluated],  # the seeds in its means
                    "experiment_seeds": len(entry.experiment.seeds),
                    "tasks_measured": measured,
                    "split": split,
                    "per_task": per_task,
                    "mean_error": mean_error,
                    "failed": failed,
                    "notes": notes,
                }
            )
        babi_table = {
            "task_names": references["task_names"],
            "models": models,
            "references": references["references"],
        }
    report = {
        "suite": suite.name,
        "description": suite.description,
        "columns": columns,
        "leaderboard": leaderboard,
        "lengths": lengths_table,
        "babi": babi_table,
    }
    if repeats_table:  # only then: a suite without evaluate.repeats reports what it always did
        report["repeats"] = repeats_table
    unlisted = runs_not_in_suite(suite, Path(results))
    if unlisted:  # only then, as repeats: run folders on disk that suite.json does not list, named, not dropped
        report["not_in_suite"] = unlisted
    return report


def _repeats_row(entry: _ExperimentResults) -> dict[str, Any] | None:
    """The experiment's bits per sequence at fixed repeat counts (``evaluate.repeats``: ``memnet evaluate
    --repeats``), mean ± s.d. over its seeds at each (length, repeats); None where it asks for none and has none.

    A seed evaluated with other options than the suite's now, or without a row asked for, is left out of that cell
    and named, as in the lengths table."""
    wanted = repeat_pairs(entry.experiment.evaluate)
    measured: dict[tuple[str, str], dict[Any, float]] = {}
    train_repeats: list[int] | None = None
    train_range: list[int] | None = None
    notes: list[str] = []
    stale_seeds = set()
    for record in entry.done():
        evaluation = record.get("evaluation") or {}
        if evaluation.get("status") != "done" or not evaluation.get("bits_per_seq_repeats"):
            continue
        stale = _stale_options(record, entry.experiment)
        if stale:
            stale_seeds.add(record.get("seed"))
            notes.append(f"seed {record.get('seed')} was evaluated with other evaluation options than the suite's now "
                         f"({'; '.join(stale)}), left out; `memnet suite run` evaluates it again")
            continue
        train_repeats = train_repeats or evaluation.get("train_repeats")
        train_range = train_range or evaluation.get("train_range") or record.get("trained_lengths")
        for length, by_repeats in evaluation["bits_per_seq_repeats"].items():
            for repeats, value in by_repeats.items():
                measured.setdefault((str(length), str(repeats)), {})[record.get("seed")] = float(value)
    if not wanted and not measured:
        return None
    pairs = sorted(set(measured) | {(str(n), str(r)) for n, r in wanted}, key=lambda pair: (int(pair[0]),
                                                                                           int(pair[1])))
    for record in entry.done():  # evaluated at fewer (length, repeats) than the suite asks now: named, once a seed
        seed = record.get("seed")
        unsaid = [f"L={n}, R={r}" for n, r in wanted if seed not in measured.get((str(n), str(r)), {})]
        if unsaid and seed not in stale_seeds:
            where = "at the fixed repeat counts" if len(unsaid) == len(wanted) else f"at {'; '.join(unsaid)}"
            notes.append(f"seed {seed} not evaluated {where}, left out; `memnet suite run` evaluates it again")
    cells: dict[str, dict[str, Any]] = {}
    for length, repeats in pairs:
        by_seed = measured.get((length, repeats), {})
        cells.setdefault(length, {})[repeats] = mean_std(list(by_seed.values()))
        notes += [f"L={length}, R={repeats}: seed {seed} at {by_seed[seed]:g}, left out of the mean"
                  for seed in _nonfinite(by_seed)]
    return {
        "experiment": entry.experiment.name,
        "model": entry.experiment.model,
        "task": entry.experiment.task,
        "training_range": train_range,
        "train_repeats": train_repeats,
        "bits_per_seq": cells,  # length -> repeats -> mean ± s.d. over the seeds
        "notes": [*_evaluation_notes(entry), *notes],
    }


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return tables.markdown_table(header, rows).rstrip("\n")


def _cell(stat: dict | None, digits: int = 4) -> str:
    if stat is None:
        return "—"
    n = stat.get("n", 2)
    return _format((stat["mean"], stat["std"]), digits, n)


def _tasks_mark(row: dict[str, Any]) -> str:
    """`` [k/20 tasks]`` for a leaderboard row whose bAbI means average a seed that measured only k tasks, else ''."""
    measured = row.get(BABI_MEASURED)
    return f" [{measured}/{len(BABI_TASKS)} tasks]" if measured is not None and measured < len(BABI_TASKS) else ""


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
        mark = _tasks_mark(row)
        rows.append(
            [
                row["experiment"],
                row["model"],
                row["task"],
                f"{row['done']}/{row['seeds']}",
                *[_cell(row[c]) + (mark if c in BABI_SCORES and row[c] is not None else "") for c in report["columns"]],
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


def _repeat_columns(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (length, repeats) of the fixed-repeats table, by length, then repeats."""
    return sorted({(n, r) for row in report.get("repeats", []) for n in row["bits_per_seq"]
                   for r in row["bits_per_seq"][n]}, key=lambda pair: (int(pair[0]), int(pair[1])))


def repeats_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and string rows of the fixed-repeats table: a column per (length L, repeats R), '*' where both L and
    R lie inside training's (lengths and repeat counts)."""
    pairs = _repeat_columns(report)
    header = ["experiment", "model", "task", *[f"L={n}, R={r}" for n, r in pairs], "notes"]
    rows = []
    for row in report.get("repeats", []):
        low, high = row["train_repeats"] or (0, 0)
        shortest, longest = row.get("training_range") or (0, 0)
        cells = []
        for n, r in pairs:
            present = r in row["bits_per_seq"].get(n, {})
            stat = row["bits_per_seq"][n][r] if present else None
            trained = low <= int(r) <= high and shortest <= int(n) <= longest
            cells.append((_cell(stat) if present else "") + (" *" if stat is not None and trained else ""))
        rows.append([row["experiment"], row["model"], row["task"], *cells, "; ".join(row["notes"])])
    return header, rows


def render_repeats_csv(report: dict[str, Any]) -> str:
    """The fixed-repeats table as CSV, a row per experiment, length and repeats: mean, std (none for one value) and n."""
    header = ["experiment", "model", "task", "length", "repeats", "bits_per_seq mean", "bits_per_seq std",
              "bits_per_seq n"]
    rows = []
    for row in report.get("repeats", []):
        for n in sorted(row["bits_per_seq"], key=int):
            for r in sorted(row["bits_per_seq"][n], key=int):
                stat = row["bits_per_seq"][n][r]
                count = stat.get("n", 2) if stat is not None else 0
                values = ["", "", 0] if stat is None else [f"{stat['mean']:.6g}",
                                                           f"{stat['std']:.6g}" if count > 1 else "", count]
                rows.append([row["experiment"], row["model"], row["task"], n, r, *values])
    return tables.csv_table(header, rows)


def _seeds_label(model: dict[str, Any]) -> str:
    """How many seeds a bAbI column's mean ± s.d. is over, and which of the experiment's are not in it (not
    finished, failed, or evaluated on another split): nothing for a column of one run of a one-seed experiment."""
    seeds, total = model.get("seeds"), model.get("experiment_seeds")
    if seeds is None or total is None or (len(seeds) == 1 and total == 1):
        return ""
    if len(seeds) == total:
        return f" (mean of {total} seeds)"
    return f" (mean of {len(seeds)} of {total} seeds: {', '.join(map(str, seeds)) or 'none'})"


def babi_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    table = report["babi"]
    references = table["references"]
    header = [
        "task",
        *[
            m["experiment"] + _seeds_label(m) + ("" if m.get("split", "test") == "test" else f" ({m['split']} split)")
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
            row.append("—" if stat is None else _task_error(stat, stat.get("n", model["runs"])))
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
                else _fixed((stat["mean"], stat["std"]), decimals, stat.get("n", model["runs"]))
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
        "validation of training unless named otherwise."
        + (f" A bAbI mean error or failed count marked [k/{len(BABI_TASKS)} tasks] averages a seed that "
           "measured only k tasks (named in its status)." if any(map(_tasks_mark, report["leaderboard"])) else "")
        + "\n\n"
        + _markdown_table(*leaderboard_rows(report))
    )
    selected = selected_lines(report)
    if selected:
        parts.append(
            "## Selected runs\n\nthe run each experiment's `select` rule picks (never on the test "
            "split; an evaluated run is compared by the metrics of the checkpoint it was tested on), its "
            "numbers beside the mean ± s.d. over every seed that finished, as the leaderboard has them.\n\n"
            + "\n".join(selected)
        )
    if report["lengths"]:
        parts.append(
            "## Algorithmic tasks: bits per sequence by length\n\nthe NTM paper's cost (binary "
            "cross-entropy per sequence, in bits), mean ± std over seeds, measured by `memnet "
            "evaluate`; '*' marks lengths inside the training range, '(val)' a number from the "
            "last validation of training (where `memnet evaluate` did not run).\n\n"
            + _markdown_table(*lengths_rows(report))
        )
    if report.get("repeats"):
        parts.append(
            "## Repeat copy: bits per sequence at fixed repeat counts\n\nevery sequence of a cell at length L "
            "with exactly R repeats (`memnet evaluate --repeats`, the suite's `evaluate.repeats`), mean ± std over "
            "seeds; '*' marks a length and a repeat count both inside the training range.\n\n"
            + _markdown_table(*repeats_rows(report))
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
    if report.get("not_in_suite"):
        note = not_in_suite_note(report["not_in_suite"])
        parts.append(note[0].upper() + note[1:] + ".")
    return "\n\n".join(parts) + "\n"


def render_csv(report: dict[str, Any]) -> str:
    """The leaderboard as CSV: one row per experiment, mean, std and n in separate columns (and, beside the bAbI
    columns, the fewest tasks a seed in their means measured).

    n is the number of seeds in that mean: the CSV has no notes column, and a seed left out (a NaN, a metric it
    did not log) would otherwise read as one of ``done``; the std of one value is empty (no sample s.d.), as the
    markdown shows no ± for it, not a spread of 0."""
    babi = any(column in report["columns"] for column in BABI_SCORES)
    header = (
        [
            "experiment",
            "model",
            "task",
            "seeds",
            "done",
            "failed",
            "missing",
            *[f"{c} {part}" for c in report["columns"] for part in ("mean", "std", "n")],
            *([BABI_MEASURED] if babi else []),
            "errors",
        ]
    )
    rows = []
    for row in report["leaderboard"]:
        values = []
        for column in report["columns"]:
            stat = row[column]
            n = stat.get("n", 2) if stat is not None else 0
            values += ["", "", 0] if stat is None else [f"{stat['mean']:.6g}", f"{stat['std']:.6g}" if n > 1 else "",
                                                       n]
        if babi:
            values.append("" if row.get(BABI_MEASURED) is None else row[BABI_MEASURED])
        rows.append(
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
    return tables.csv_table(header, rows)


def write_report(results: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write leaderboard.md/.csv/.json (and babi/lengths PNGs; repeats.csv where an experiment has fixed repeat
    counts) to ``out`` (default RESULTS/report), as one set
    replacing an earlier report's (``leaderboard.json`` renamed in last: a folder holding it holds one whole report)."""
    report = build_report(results)
    out = Path(out) if out is not None else Path(results) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)

    def write_set(staging: Path) -> None:
        (staging / "leaderboard.md").write_text(render_markdown(report))
        (staging / "leaderboard.csv").write_text(render_csv(report))
        if report.get("repeats"):
            (staging / "repeats.csv").write_text(render_repeats_csv(report))
        plot_suite_report(report, staging)
        (staging / "leaderboard.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    # one set (memnet.utils.replace_file_set): a report stopped halfway (a kill, a full disk, a figure that fails)
    # leaves the earlier report whole, never this one's leaderboard.md beside the earlier leaderboard.json or babi.png
    replace_file_set(out, write_set, belongs=REPORT_FILES.__contains__, last="leaderboard.json")
    return report


WANDB_ID_CHARS = 64  # the longest summary run id made here


def summary_run_id(suite: str, results: Path) -> str:
    """The W&B id of the results folder's summary run: the one logged there before (``RESULTS/wandb``), else
    ``<suite>-summary-<digest>``, the digest of the suite's name and the folder's resolved path.

    Each ``memnet suite report`` started a new W&B run (a random id), so a results folder reported twice had
    two summary runs of one suite. Given the same id with ``resume="allow"``, an online report logs on to the
    run (its tables at a new step, the newest in the run's summary); offline, W&B cannot look the run up, and
    each report writes its own ``offline-run-<time>-<id>`` folder of that id: ``wandb sync`` of a later one
    replaces what an earlier one uploaded, the same run either way.
    """
    logged = logged_wandb_id(results)
    if logged is not None:  # a report before this one, here (an older memnet's random id, or a folder moved)
        return logged
    digest = hashlib.sha256(f"{suite}\0{results.resolve()}".encode()).hexdigest()[:12]
    stem = f"-summary-{digest}"
    return suite[:WANDB_ID_CHARS - len(stem)] + stem


def log_to_wandb(report: dict[str, Any], results: Path, out: Path) -> str | None:
    """Log the tables (``wandb.Table``) and plots in one summary run, grouped by the suite's name.

    Offline unless ``WANDB_MODE=online``; returns the run's folder. The run is the results folder's own
    (:func:`summary_run_id`): reported again, the same W&B run is updated, not a second one made.
    """
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "memnet"),
        group=report["suite"],
        name=f"{report['suite']}-summary",
        job_type="suite-report",
        dir=str(results),  # W&B writes RESULTS/wandb (spec.WANDB_DIR, a reserved experiment name)
        mode=wandb_mode(),
        config={"suite": report["suite"]},
        id=summary_run_id(report["suite"], results),
        resume="allow",
    )
    try:
        payload: dict[str, Any] = {}
        header, rows = leaderboard_rows(report)
        payload["leaderboard"] = wandb.Table(columns=header, data=rows)
        if report["lengths"]:
            header, rows = lengths_rows(report)
            payload["lengths"] = wandb.Table(columns=header, data=rows)
        if report.get("repeats"):
            header, rows = repeats_rows(report)
            payload["repeats"] = wandb.Table(columns=header, data=rows)
        if report["babi"]:
            header, rows = babi_rows(report)
            payload["babi"] = wandb.Table(columns=header, data=rows)
        for png in sorted(out.glob("*.png")):
            payload[f"plots/{png.stem}"] = wandb.Image(str(png))
        run.log(payload)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
