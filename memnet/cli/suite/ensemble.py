"""``memnet suite ensemble``: a bAbI experiment's seeds answering together, one more column of the report.

    memnet suite ensemble runs/suites/babi-1k [--only memn2n]

The checkpoints the suite tested (one per done seed of an experiment evaluated on the test split) answer
every test question together, through ``memnet babi-table --ensemble``: each question's answer
probabilities averaged over the seeds. The per-task errors go to ``RESULTS/<experiment>/ensemble.json``
with the seeds and the checkpoints they came from (path relative to RESULTS, size and modification time);
the report shows the ensemble beside the selected run and the mean over the seeds, and says when its seeds
or checkpoints are no longer the experiment's (run this command again then).

An ensemble of N seeds costs N trainings; it is not the papers' protocol (one run, chosen by its
training error), so the report labels it as what it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from memnet.cli.suite.errors import SuiteError
from memnet.cli.suite.evaluators import record_babi_errors
from memnet.cli.suite.runner import Run
from memnet.cli.suite.spec import SUITE_FILE, Experiment, Suite
from memnet.utils import write_text_atomic

ENSEMBLE_FILE = "ensemble.json"


def _stamp(checkpoint: Path, results: Path) -> dict[str, Any]:
    """What tells a checkpoint file apart from a later one at the same path; the path relative to the results
    folder, so that a folder moved or copied elsewhere (its files' times kept) still has the same stamps."""
    stat = checkpoint.stat()
    try:
        path = checkpoint.resolve().relative_to(results.resolve()).as_posix()
    except ValueError:  # a checkpoint outside the results folder: named as it is
        path = str(checkpoint)
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _same_stamp(kept: Any, now: dict[str, Any]) -> bool:
    """Whether a stamp of ``ensemble.json`` names the checkpoint stamped ``now``. One written before the stamps were
    relative holds an absolute path, of the results folder where it was then: its tail is compared."""
    if not isinstance(kept, dict) or (kept.get("size"), kept.get("mtime_ns")) != (now["size"], now["mtime_ns"]):
        return False
    path, current = Path(str(kept.get("path"))), Path(now["path"])
    if path.is_absolute() and not current.is_absolute():
        return path.parts[-len(current.parts):] == current.parts
    return path == current


def _tested_on_test_split(record: dict[str, Any] | None) -> bool:
    return record is not None and record.get("status") == "done" and bool(record_babi_errors(record, "test"))


def members(suite: Suite, experiment: Experiment, results: Path) -> list[tuple[int, Path, Path]]:
    """(seed, checkpoint, config) of every seed of ``experiment`` tested on bAbI's test split, in seed order.

    Raises:
        SuiteError: a seed's record (``metrics.json``) is damaged, naming it: such a seed was left out of the
            ensemble unsaid (an ensemble of the others, exit 0).
    """
    found = []
    for seed in experiment.seeds:
        run = Run(suite.name, experiment, seed, results)
        checkpoint = run.trained_checkpoint()
        if _tested_on_test_split(run.read_record()) and checkpoint and Path(checkpoint).is_file():
            found.append((seed, Path(checkpoint), run.folder / "config.yaml"))
    return found


def is_babi_test(experiment: Experiment) -> bool:
    spec = experiment.evaluate or {}
    return spec.get("kind") == "babi" and spec.get("split", "test") == "test"


def make_ensembles(results: str | Path, only: list[str] | None = None, stream: TextIO | None = None, *,
                   flagged: bool = False) -> list[Path]:
    """Test each bAbI experiment's seeds together and write ``<experiment>/ensemble.json``; the files written.

    With ``flagged`` (what ``memnet suite run`` does after its runs), only the experiments whose suite
    file asks for it (``evaluate: {kind: babi, ensemble: true}``), and an ensemble whose seeds and
    checkpoints are unchanged is not tested again.

    Raises:
        SuiteError: not a results folder, an ``--only`` name that is not a bAbI test-split experiment of
            the suite, or fewer than two tested seeds where ``--only`` asked for that experiment.
    """
    from memnet.cli.babi_table import ensemble_task_errors, predict_checkpoint
    from memnet.cli.rebuild import RebuildError

    results = Path(results)
    suite_file = results / SUITE_FILE
    if not suite_file.is_file():
        raise SuiteError(f"{results} is not a suite results folder: {suite_file} is missing "
                         "(it is written by `memnet suite run`)")
    suite = Suite.from_dict(json.loads(suite_file.read_text()))
    names = [e.name for e in suite.experiments]
    strict = bool(only) and not flagged  # `--only` names these experiments: each must get its ensemble
    for name in only if strict else []:
        if name not in names:
            raise SuiteError(f"--only: no experiment {name!r} in suite {suite.name!r}; it has {', '.join(names)}")
        if not is_babi_test(next(e for e in suite.experiments if e.name == name)):
            raise SuiteError(f"--only: {name!r} is not evaluated on bAbI's test split (evaluate: {{kind: babi, "
                             "split: test}), so it has no answers to average")
    written = []
    for experiment in suite.experiments:
        if (only and experiment.name not in only) or not is_babi_test(experiment):
            continue
        if flagged and not (experiment.evaluate or {}).get("ensemble"):
            continue
        found = members(suite, experiment, results)
        if flagged and len(found) >= 2:
            current, notes = read_ensemble(suite, experiment, results)
            if current is not None and not notes:
                continue  # the same seeds' same checkpoints: nothing new to average
        if len(found) < 2:
            message = (f"{experiment.name}: {len(found)} seed(s) tested on the test split; an ensemble needs at "
                       "least two (`memnet suite run` trains and tests the others)")
            if strict:
                raise SuiteError(message)
            print(f"[ensemble] skipped {message}", file=stream)
            continue
        seeds = [seed for seed, _, _ in found]
        print(f"[ensemble] {experiment.name}: seeds {', '.join(map(str, seeds))} answering together", file=stream)
        try:
            predictions = [predict_checkpoint(checkpoint, config) for _, checkpoint, config in found]
            errors = ensemble_task_errors(predictions, [f"seed {seed} ({checkpoint})" for seed, checkpoint, _ in found])
        except RebuildError as error:
            raise SuiteError(f"{experiment.name}: its seeds cannot answer together: {error}") from None
        path = results / experiment.name / ENSEMBLE_FILE
        write_text_atomic(path, json.dumps({
            "experiment": experiment.name, "split": "test", "seeds": seeds,
            "checkpoints": [_stamp(checkpoint, results) for _, checkpoint, _ in found],
            "babi_error": {str(task): error for task, error in sorted(errors.items())},
        }, indent=2) + "\n")  # a report never reads half a file
        written.append(path)
    return written


def read_ensemble(suite: Suite, experiment: Experiment, results: str | Path) -> tuple[dict[str, Any] | None,
                                                                                    list[str]]:
    """The experiment's ``ensemble.json`` (None if there is none or it cannot be read) and notes on it:
    unreadable, or made of other seeds or checkpoints than the experiment's tested seeds now."""
    path = Path(results) / experiment.name / ENSEMBLE_FILE
    if not path.is_file():
        return None, []
    again = f"`memnet suite ensemble {results} --only {experiment.name}` makes it again"
    try:
        ensemble = json.loads(path.read_text())
        errors = {str(int(task)): float(error) for task, error in ensemble["babi_error"].items()}
        seeds = [int(seed) for seed in ensemble["seeds"]]
        stamps = list(ensemble["checkpoints"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        return None, [f"{experiment.name}: {path} is unreadable ({type(error).__name__}: {error}), left out; {again}"]
    ensemble = {**ensemble, "babi_error": errors, "seeds": seeds}
    now = members(suite, experiment, Path(results))
    notes = []
    if [seed for seed, _, _ in now] != seeds:
        notes.append(f"{experiment.name}: the ensemble is of seeds {', '.join(map(str, seeds))}, the seeds tested "
                     f"now are {', '.join(str(seed) for seed, _, _ in now) or 'none'}; {again}")
    elif len(stamps) != len(now) or not all(_same_stamp(kept, _stamp(checkpoint, Path(results)))
                                            for kept, (_, checkpoint, _) in zip(stamps, now)):
        notes.append(f"{experiment.name}: a seed's checkpoint changed since the ensemble was tested; {again}")
    return ensemble, notes
