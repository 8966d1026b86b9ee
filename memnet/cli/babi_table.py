"""``memnet babi-table``: test error per bAbI task of checkpoints, as the papers print it.

    memnet babi-table --ckpt_path RUN/checkpoints/last.ckpt [--name MemN2N] [--config C]
                      [--results saved.json] [--markdown T.md] [--csv T.csv] [--json T.json]
    memnet babi-table --ensemble NAME --ckpt_path RUN_A/checkpoints/last.ckpt --ckpt_path RUN_B/... [...]

Each checkpoint is tested with its run's ``config.yaml`` (``memnet.cli.rebuild``);
checkpoints given the same ``--name`` fill one column. With ``--ensemble`` the checkpoints
answer together, as one column: each test question's answer probabilities are averaged over
them (the mean of their softmaxes), and the ensemble answers the class of highest mean. The per-task errors are the
``test/task_<k>/error`` a ``memnet.lightning.QAModule`` logs; the mean error and the
failed-task count (above 5%) are ``memnet.metrics``'s.

``--json`` writes (and ``--results`` reads) the one schema of per-task errors:
``{column name: {task: error %}}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch

from memnet.cli import tables
from memnet.cli.rebuild import (
    ONE_PROCESS,
    RebuildError,
    default_config,
    instantiate,
    loading,
    resolve_checkpoint,
    run_stage,
)
from memnet.cli.typos import CommandParser
from memnet.metrics import FAILED_TASK_ERROR, answer_errors, failed_tasks, mean_error, task_errors
from memnet.utils import write_text_atomic
from tasks.babi import ALL_TASKS, TASK_NAMES


def read_results(path: str | Path) -> dict[str, dict[int, float]]:
    """Per-task errors saved by ``--json``: {column name: {task: error %}}; the file is named on error."""
    path = Path(path)

    def once(pairs: list[tuple[str, object]]) -> dict[str, object]:
        """A JSON object whose keys are each given once: json keeps the last of a key given twice, unsaid."""
        keys = [key for key, _ in pairs]
        twice = next((key for key in keys if keys.count(key) > 1), None)
        if twice is not None:
            raise RebuildError(f"{path}: the key {twice!r} is given twice in one object (the later would replace "
                               "the earlier unseen)")
        return dict(pairs)

    try:
        loaded = json.loads(path.read_text(), object_pairs_hook=once)
    except json.JSONDecodeError as error:
        raise RebuildError(f"{path} line {error.lineno} is not JSON: {error.msg}") from None
    except UnicodeDecodeError as error:  # a checkpoint given as --results: codecs' traceback
        raise RebuildError(f"{path}: not a JSON text file (byte {error.start} is no UTF-8 text); --results reads "
                           "the per-task errors --json wrote, a checkpoint is given with --ckpt_path") from None
    if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
        raise RebuildError(f"{path}: expected {{column name: {{task: error %}}}} as written by --json")
    try:
        results = {name: {int(t): float(e) for t, e in errors.items()} for name, errors in loaded.items()}
    except (TypeError, ValueError):
        raise RebuildError(f"{path}: tasks must be integers and errors numbers") from None
    for name, errors in results.items():
        if len(errors) != len(loaded[name]):  # "1" and "01" (or " 1") are one task: the later replaced the earlier
            raise RebuildError(f"{path}: column {name!r} names a task twice ({', '.join(map(repr, loaded[name]))})")
        for task, error in errors.items():
            if task not in TASK_NAMES:  # a task 0 or 21 would vanish from the table unseen
                raise RebuildError(f"{path}: column {name!r} has task {task}, expected tasks 1-20")
            if not 0.0 <= error <= 100.0:
                raise RebuildError(f"{path}: column {name!r}, task {task}: error {error} is not a percentage in "
                                   "[0, 100]")
    return results


def babi_table(results: dict[str, dict[int, float]], *, tasks: Sequence[int] = ALL_TASKS) -> tuple[str, str]:
    """The papers' table: a row per task, a column per model, then mean error and failed tasks.

    Args:
        results: model name -> {task number -> test error in percent}.
        tasks: the rows.

    Returns:
        (markdown, csv). A task a model was not evaluated on is ``–`` (empty in
        CSV); the mean and the failed count (error > 5%) are over the tasks evaluated,
        with their number in brackets when it is not every row.
    """
    names = list(results)

    def summary(errors: dict[int, float]) -> tuple[str, str]:
        values = [errors[t] for t in tasks if t in errors]
        if not values:
            return "", ""
        suffix = "" if len(values) == len(tasks) else f" ({len(values)} task{'s' if len(values) > 1 else ''})"
        return f"{mean_error(values):.1f}{suffix}", f"{failed_tasks(values)}{suffix}"

    def cell(error: float) -> str:
        """One decimal, as the papers print it; more where one would hide a failure (5.04% is failed, "5.0" is not)."""
        text, decimals = f"{error:.1f}", 1
        while error > FAILED_TASK_ERROR and float(text) <= FAILED_TASK_ERROR and decimals < 6:
            decimals += 1
            text = f"{error:.{decimals}f}"
        return text

    header = ["task"] + names
    rows = [[f"{t}: {TASK_NAMES[t]}"] + [cell(results[n][t]) if t in results[n] else "" for n in names]
            for t in tasks]
    summaries = [summary(results[n]) for n in names]
    rows.append(["mean error (%)"] + [s[0] for s in summaries])
    rows.append([f"failed tasks (> {FAILED_TASK_ERROR:g}%)"] + [s[1] for s in summaries])
    markdown = tables.markdown_table(header, rows, align=["left"] + ["right"] * len(names), empty="–")
    return markdown, tables.csv_table(header, rows)


def checkpoint_names(paths: Sequence[str]) -> list[str]:
    """A column name per checkpoint: its run folder's name (``latest`` resolved first), with the folder
    above it where two runs share a name (a suite's ``memn2n/seed_0`` and ``memn2n_big/seed_0``)."""
    runs = [resolve_checkpoint(path).resolve().parent.parent for path in paths]
    names = [run.name for run in runs]
    return [f"{run.parent.name}/{run.name}" if names.count(run.name) > 1 else run.name for run in runs]


def evaluate_checkpoint(ckpt_path: str | Path, config: str | Path | None = None,
                        overrides: Sequence[str] = ()) -> dict[int, float]:
    """Test error per task of one checkpoint, run through ``memnet test`` with the run's config.

    The config defaults to ``config.yaml`` of the run folder (the parent of the
    checkpoint's folder), as saved by ``memnet fit``.
    """
    errors = task_errors(run_stage("test", ckpt_path, config, overrides), "test")
    if not errors:
        raise RebuildError(f"{ckpt_path}: the test logged no per-task errors (is its model a memnet QAModule?)")
    return errors


def predict_checkpoint(ckpt_path: str | Path, config: str | Path | None = None) -> dict[str, Any]:
    """One checkpoint's answers to every test question, through ``memnet predict`` with the run's config:
    ``probabilities`` (Q, A) float32, the true ``answer`` (Q,) and the ``task`` (Q,) of each question,
    predicted in this process on one device (``ONE_PROCESS``: a DDP run's config would return one share);
    and, where the data has a vocabulary (``tasks.babi.Vocabulary``), ``words``: the words its probability
    columns name (the answer words; the whole vocabulary where the model answers over all of it)."""
    checkpoint = resolve_checkpoint(str(ckpt_path))
    configs = [config if config is not None else default_config(checkpoint)]
    cli = instantiate(configs, ["--trainer.callbacks=[]", "--trainer.limit_predict_batches=1.0", *ONE_PROCESS])
    with loading(checkpoint, configs):
        batches = cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=str(checkpoint),
                                      weights_only=False)
    if not batches or not isinstance(batches[0], dict) or "probabilities" not in batches[0]:
        raise RebuildError(f"{ckpt_path}: its model gave no answer probabilities (is it a memnet QAModule?)")
    answers = {key: torch.cat([batch[key].cpu() for batch in batches]) for key in ("probabilities", "answer", "task")}
    vocabulary = getattr(cli.datamodule, "vocabulary", None)
    if vocabulary is not None:
        answers["words"] = column_words(vocabulary, answers["probabilities"].shape[-1])
    return answers


def column_words(vocabulary, columns: int) -> tuple[str, ...]:
    """The words a model's ``columns`` answer probabilities name: answer class a is ``vocabulary.answers[a]``
    (``tasks.babi.Vocabulary``); a model that answers over the whole vocabulary (MemN2N's ``answer_layer:
    vocabulary``) has its answers first, then its other words, so there the whole vocabulary names them."""
    return tuple(vocabulary.answers) if columns == vocabulary.num_answers else tuple(vocabulary.tokens)


def ensemble_task_errors(predictions: Sequence[dict[str, Any]],
                         names: Sequence[str] | None = None) -> dict[int, float]:
    """Test error per task (%) of models answering together: each question's answer probabilities
    averaged over the models, the class of highest mean answered (a NaN answer is wrong).

    Args:
        predictions: per model, as :func:`predict_checkpoint` returns them, on the same questions.
        names: each model's name for the errors (default: its position).

    Raises:
        RebuildError: fewer than two models, or models that were not asked the same questions with the
            same answer classes (another data split, task set or vocabulary), or whose ``words`` (where both
            have them) name another word in one column: their probabilities would be averaged column by
            column as if they agreed.
    """
    names = list(names) if names is not None else [f"model {i + 1}" for i in range(len(predictions))]
    if len(predictions) < 2:
        raise RebuildError(f"an ensemble needs at least two checkpoints, got {len(predictions)}")
    first = predictions[0]
    for name, other in zip(names[1:], predictions[1:]):
        if other["probabilities"].shape != first["probabilities"].shape:
            raise RebuildError(f"{name} answered {tuple(other['probabilities'].shape)} (questions, answer classes) "
                               f"where {names[0]} answered {tuple(first['probabilities'].shape)}: the checkpoints "
                               "must share the test questions and the answer vocabulary")
        words, other_words = first.get("words"), other.get("words")
        if words is not None and other_words is not None and tuple(words) != tuple(other_words):
            index, mine, theirs = next((i, a, b) for i, (a, b) in enumerate(zip_longest(words, other_words))
                                       if a != b)
            what = "answer class" if len(words) == first["probabilities"].shape[-1] else "vocabulary word"
            raise RebuildError(f"{name} and {names[0]} have other vocabularies: their {what} {index} is {theirs!r} "
                               f"in {name}, {mine!r} in {names[0]}; an ensemble averages the answer probabilities "
                               "column by column, so its checkpoints must be trained on data with one vocabulary")
        if not (torch.equal(other["answer"], first["answer"]) and torch.equal(other["task"], first["task"])):
            raise RebuildError(f"{name} was tested on other questions or answer classes than {names[0]} "
                               "(another task set or vocabulary): an ensemble averages answers to the same questions")
    mean = torch.stack([p["probabilities"].float() for p in predictions]).mean(0)
    wrong, tasks = answer_errors(mean, first["answer"]), first["task"]
    return {int(task): float(wrong[tasks == task].double().mean()) * 100.0 for task in torch.unique(tasks).tolist()}


def table_main(argv: Sequence[str] | None = None) -> dict[str, dict[int, float]]:
    """``memnet babi-table``: evaluate checkpoints on the test set and print the bAbI table."""
    parser = CommandParser(
        prog="memnet babi-table",
        description="Test error per bAbI task for each checkpoint, as a markdown and CSV table. "
                    "Checkpoints given the same --name (e.g. one per task) fill one column.",
    )
    parser.add_argument("--ckpt_path", action="append", default=[], help="a checkpoint (repeat for more)")
    parser.add_argument("--name", action="append", default=[],
                        help="column name of each --ckpt_path, in order (default: the run folder's name)")
    parser.add_argument("--config", action="append", default=[],
                        help="config of each --ckpt_path, in order (default: config.yaml of its run folder)")
    parser.add_argument("--ensemble", metavar="NAME",
                        help="one column NAME for all the --ckpt_path together: each question's answer "
                             "probabilities averaged over the checkpoints (at least two)")
    parser.add_argument("--results", action="append", default=[],
                        help="a JSON file written by --json, to add its columns without evaluating again")
    parser.add_argument("--markdown", help="also write the markdown table here")
    parser.add_argument("--csv", help="also write the CSV table here")
    parser.add_argument("--json", help="also write the per-task errors here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not args.ckpt_path and not args.results:
        parser.error("give at least one --ckpt_path or --results")
    for option in ("name", "config"):
        given = getattr(args, option)
        if given and len(given) != len(args.ckpt_path):
            parser.error(f"--{option} was given {len(given)} times for {len(args.ckpt_path)} --ckpt_path")
    if args.ensemble is not None:
        if args.name:
            parser.error("--name names one checkpoint's column; with --ensemble the checkpoints fill the one "
                         "column --ensemble names")
        if len(args.ckpt_path) < 2:
            parser.error(f"--ensemble needs at least two --ckpt_path, got {len(args.ckpt_path)}")
        if not args.ensemble.strip():
            parser.error("--ensemble needs a column name")
    results: dict[str, dict[int, float]] = {}
    for path in args.results:
        for name, errors in read_results(path).items():
            column = results.setdefault(name, {})
            twice = sorted(set(column) & set(errors))
            if twice:  # the later file would silently replace the earlier one's numbers
                parser.error(f"the column {name!r} already holds task(s) {', '.join(map(str, twice))}; "
                             f"{path} reports them again: rename one of the columns")
            column.update(errors)
    if args.ensemble is not None:
        if args.ensemble in results:
            parser.error(f"the column {args.ensemble!r} is already in --results: give the ensemble another name")
        configs = args.config or [None] * len(args.ckpt_path)
        predictions = [predict_checkpoint(ckpt, config) for ckpt, config in zip(args.ckpt_path, configs)]
        results[args.ensemble] = ensemble_task_errors(predictions, args.ckpt_path)
        args.ckpt_path = []
    names = list(args.name) if args.name else checkpoint_names(args.ckpt_path)
    for index, ckpt in enumerate(args.ckpt_path):
        config = args.config[index] if args.config else None
        errors = evaluate_checkpoint(ckpt, config)
        column = results.setdefault(names[index], {})
        twice = sorted(set(column) & set(errors))
        if twice:  # one column may gather one model per task, never two models of one task
            parser.error(f"the column {names[index]!r} already holds task(s) {', '.join(map(str, twice))}; "
                         f"{ckpt} reports them again: give it its own --name")
        column.update(errors)
    markdown, csv = babi_table(results)
    print(markdown)
    print(csv)
    for path, text in ((args.markdown, markdown), (args.csv, csv),
                       (args.json, json.dumps(results, indent=2) + "\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(path), text)  # renamed into place: a kill halfway leaves no table cut short
    return results


main = table_main  # the entry point `memnet babi-table` calls
