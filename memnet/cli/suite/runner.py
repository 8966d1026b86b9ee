"""Running a suite: every experiment × seed trained in its own process, resumable, failures isolated.

Each run goes through the real training entry point (``python -m memnet fit ...``),
then through its experiment's evaluator (``memnet.cli.suite.evaluators``); its
record (``metrics.json``) says done, failed or missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from memnet.checkpoint import saved_metrics
from memnet.cli.suite.errors import EvaluationUnavailable, SuiteError
from memnet.cli.suite.evaluators import EVALUATORS, evaluation_answers, evaluation_options
from memnet.cli.suite.spec import (
    BUDGET_KEYS,
    EVENTS_FILE,
    SUITE_FILE,
    TASK_FIELD,
    Experiment,
    Suite,
    _check_repeat_task,
    _resolve,
    read_results_suite,
)
from memnet.selection import CHECKPOINT_METRICS
from memnet.utils import is_integer, logged_wandb_id, write_text_atomic

RECORD_FILE = "metrics.json"
LOCK_FILE = "suite.lock"  # per run: flock-ed by the process training or evaluating it, which writes its pid, host, job
LOCK_CHECK_SECONDS = 5.0  # the longest a run waits for the checks (lock_holder) of its lock to let go
LOCK_RETRY_SECONDS = 0.01  # how often it tries again meanwhile
POLL_SECONDS = 0.2  # how often the scheduler looks at its runs
PROGRESS_SECONDS = 30.0  # a progress line at least this often while runs go on
ERROR_CHARS = 600  # the longest error message kept in a run's record
CONFIG_DIGESTS = "config_sha256"  # the settings' key: each stacked config file -> the sha256 of its bytes


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
        """The run's record (``metrics.json``); None where there is none, or it is damaged (:meth:`read_record`)."""
        try:
            return self.read_record()
        except SuiteError:
            return None

    def read_record(self) -> dict[str, Any] | None:
        """The run's record (``metrics.json``); None where there is none yet (the run never started).

        Raises:
            SuiteError: the record is there but cannot be used (unreadable, not JSON, not a JSON object), naming
                the file and what is wrong with it: it is what says whether the run is done, and a run taken for
                not done would be trained again over what it holds.
        """
        path = self.record_path
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            problem = f"unreadable ({error})"
        else:
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                problem = "empty" if not text.strip() else f"not JSON ({error})"
            else:
                if isinstance(record, dict):
                    return record
                problem = f"not a JSON object but {type(record).__name__}"
        raise SuiteError(f"{path}: the record of run {self.name} is damaged: {problem}; it says whether the run "
                         f"is done, so nothing was trained over it: mend it, or delete the run's folder {self.folder} "
                         "to train the run anew")

    def is_done(self) -> bool:
        """Trained, and evaluated if the experiment asks for an evaluation."""
        record = self.record()
        if record is None or record.get("status") != "done":
            return False
        return evaluation_answers(self.experiment.evaluate, record.get("evaluation"))

    def is_trained(self) -> bool:
        """Training finished (its ``summary.json`` is there): what is left is the evaluation, if any.

        A run whose evaluation failed is trained too: the next ``suite run`` evaluates it again. So is a run whose
        cluster job ended (failed at stage ``job``) or was requeued after its training finished: ``summary.json`` is
        removed before every training starts and written by ``memnet fit`` only at its end, so its being there says
        the last training finished, and only the evaluation is left to do.
        """
        record = self.record()
        if record is None or not (self.folder / "summary.json").is_file():
            return False
        status, stage = record.get("status"), record.get("stage")
        return status in ("trained", "done", "requeued") or (status == "failed" and stage in ("evaluate", "job"))

    def summary(self) -> dict[str, Any] | None:
        """What ``memnet fit`` wrote at the end of training (``summary.json``); None before that."""
        try:
            summary = json.loads((self.folder / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return summary if isinstance(summary, dict) else None

    def path_in_summary(self, summary: dict[str, Any], key: str) -> str | None:
        """A path of ``summary.json`` (``best_checkpoint``, ``wandb_dir``, ...) where it is now, absolute.

        ``memnet fit`` writes the absolute paths of the folder it trained in (its ``run_dir``); a results folder
        moved or copied since holds the same files in this run's folder now, and they are taken from there.
        """
        path = summary.get(key)
        if not isinstance(path, str) or not path:
            return None
        trained_in = summary.get("run_dir")
        if isinstance(trained_in, str) and trained_in:
            try:
                return str(self.folder.absolute() / Path(path).relative_to(trained_in))
            except ValueError:  # not in the run's folder: kept as written
                pass
        return str(Path(path).absolute())

    def trained_checkpoint(self) -> str | None:
        """The checkpoint a trained run is evaluated on: its best, else its last (from ``summary.json``), in this
        run's folder wherever the results folder is now."""
        summary = self.summary()
        if summary is None:
            return None
        return self.path_in_summary(summary, "best_checkpoint") or self.path_in_summary(summary, "last_checkpoint")

    def in_results(self, path: str | Path | None) -> str | None:
        """``path`` as a run's record keeps it: relative to the results folder where it lies in it, so that the
        folder can be moved or copied; elsewhere as it is."""
        if path is None:
            return None
        try:
            return Path(path).resolve().relative_to(self.results.resolve()).as_posix()
        except ValueError:
            return str(path)

    def settings(self) -> dict[str, Any]:
        """What the run is trained with, as the suite names it (configs, overrides, budget, seed_args), and
        the contents of its config files (``config_sha256``: each config and every fragment it extends -> the
        sha256 of its bytes), kept in its record so that a report can tell a run trained under other settings
        than the suite's now, a config file edited in place included (:func:`settings_changes`)."""
        experiment = self.experiment
        return json.loads(json.dumps({"configs": list(experiment.configs), "overrides": experiment.overrides,
                                      "budget": experiment.budget, "seed_args": list(experiment.seed_args),
                                      CONFIG_DIGESTS: _config_digests(experiment.configs)}))

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
        stacked = _stacked_logger(experiment, base)
        if _is_wandb_logger(stacked):
            logger = "--trainer.logger.init_args."
            if stacked is True:
                # Lightning's "the default logger", memnet's W&B logger (MemnetCLI), named as its class: after
                # `logger: true` the parser takes none of its fields, and without them W&B's files went to the
                # working folder's runs/wandb/, ungrouped, and a resumed training started another W&B run
                from memnet.callbacks import OfflineFirstWandbLogger
                from memnet.cli.lightning_cli import WANDB_PROJECT

                default = f"{OfflineFirstWandbLogger.__module__}.{OfflineFirstWandbLogger.__name__}"
                argv += [f"--trainer.logger={default}", f"{logger}project={WANDB_PROJECT}"]
            argv += [
                f"{logger}save_dir={self.folder.resolve()}",
                f"{logger}group={self.suite}",
                f"{logger}name={experiment.name}-seed{self.seed}",
                f"{logger}job_type=train",
            ]
            # a resumed training (interrupted, preempted, requeued) continues the W&B run it logged to, as
            # `memnet fit --ckpt_path <run>/checkpoints/last.ckpt` does: it started a new run of the same name
            # (the logger's save_dir is the run's folder: its W&B runs are in <folder>/wandb/)
            wandb_id = logged_wandb_id(self.folder) if resume_from is not None else None
            if wandb_id is not None:
                argv.append(f"{logger}id={wandb_id}")
        if resume_from is not None:
            argv.append(f"--ckpt_path={resume_from.resolve()}")
        return argv


def _config_digests(configs: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """Each config file and every fragment it extends -> the sha256 of its bytes (None: it cannot be read now)."""
    from memnet.cli.configs import ConfigError, config_files

    digests: dict[str, str | None] = {}
    for config in configs:
        try:
            files = config_files(config)
        except ConfigError:  # unreadable, or its fragments cannot be followed: the file alone
            files = [Path(config).resolve()]
        for path in files:
            try:
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                digests[str(path)] = None
    return digests


def settings_changes(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two runs' settings (:meth:`Run.settings`), e.g. ``overrides.x: 0.1, now 0.01``, and
    each config file whose contents changed; none where they are the same. Settings recorded before the contents
    were (without ``config_sha256``), and a file that cannot be read, are compared without them."""
    changes = []
    for section in ("configs", "overrides", "budget", "seed_args"):
        before, after = then.get(section), now.get(section)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += [f"{section}.{key}: {before.get(key, 'unset')!r}, now {after.get(key, 'unset')!r}"
                        for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
        elif section == "configs" and isinstance(before, list) and isinstance(after, list):
            # the same shipped config of another checkout (a second one for long suites: git worktree add) is
            # the same config; its contents are compared below
            if [_in_checkout(path) for path in before] != [_in_checkout(path) for path in after]:
                changes.append(f"{section}: {before!r}, now {after!r}")
        elif before != after:
            changes.append(f"{section}: {before!r}, now {after!r}")
    before, after = then.get(CONFIG_DIGESTS), now.get(CONFIG_DIGESTS)
    if isinstance(before, dict) and isinstance(after, dict):
        before = {_in_checkout(path): digest for path, digest in before.items()}
        named = {_in_checkout(path): path for path in after}  # said as the file is now
        after = {_in_checkout(path): digest for path, digest in after.items()}
        changes += [f"{named[key]}: its contents changed" for key in sorted(set(before) & set(after), key=named.get)
                    if None not in (before[key], after[key]) and before[key] != after[key]]
    return changes


def _in_checkout(path: str) -> str:
    """A config file's path from its checkout's ``configs/`` folder on (``configs/ntm/copy.yaml``), so that the
    same config of two checkouts compares equal; a path outside any ``configs/`` folder as it is."""
    parts = Path(path).parts
    if "configs" not in parts:
        return str(path)
    return Path(*parts[len(parts) - 1 - parts[::-1].index("configs"):]).as_posix()


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value)


def _stacked_logger(experiment: Experiment, base: Path) -> Any:
    """The ``trainer.logger`` the stacked configs and overrides give: ``"default"`` where none sets it, None where
    an override sets one of its fields (``trainer.logger.init_args.*``: the suite's own would clash with them)."""
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
            return None  # the suite's own logger fields would clash with the user's
    return logger


def _is_wandb_logger(logger: Any) -> bool:
    """Whether a stacked ``trainer.logger`` is W&B's: memnet's default (unset, or ``true``) or a WandbLogger."""
    if logger == "default" or logger is True:
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
    task_fields = [key for key in extra if key == TASK_FIELD or key.startswith(TASK_FIELD + ".")]
    for experiment in experiments if task_fields else ():  # the task as load_suite checks it, --set's now
        repeats = (experiment.evaluate or {}).get("repeats")
        if repeats is not None:
            where = f"--set {', '.join(task_fields)}: {suite.path}: experiment {experiment.name!r}"
            _check_repeat_task(experiment.configs, experiment.overrides, repeats, where)
    return replace(suite, experiments=experiments)


def expand_runs(suite: Suite, results: Path, only: list[str] | None = None,
                seeds: list[int] | None = None) -> list[Run]:
    """Every experiment × seed, in suite order; ``only`` keeps the named experiments, ``seeds`` those seeds.

    A seed that none of the kept experiments lists is refused (a typo would otherwise run nothing).
    """
    names = {e.name for e in suite.experiments}
    for name in only or []:
        if name not in names:
            raise SuiteError(
                f"--only {name!r}: no such experiment in suite {suite.name!r}; "
                f"experiments: {', '.join(sorted(names))}"
            )
    kept = [e for e in suite.experiments if not only or e.name in only]
    listed = sorted({seed for e in kept for seed in e.seeds})
    for seed in seeds or []:
        if seed not in listed:
            raise SuiteError(
                f"--seeds {seed}: no experiment {'of --only ' if only else ''}in suite {suite.name!r} has that seed; "
                f"its seeds: {', '.join(map(str, listed))}"
            )
    return [
        Run(suite.name, experiment, seed, results)
        for experiment in kept
        for seed in experiment.seeds
        if not seeds or seed in seeds
    ]


def _previous_suite(results: Path) -> Suite | None:
    """The suite ``RESULTS/suite.json`` holds, or None where there is none or it cannot be read (written anew)."""
    try:
        return read_results_suite(results)
    except SuiteError:
        return None


def check_results_suite(suite: Suite, results: Path) -> None:
    """Refuse a results folder that holds another suite's runs (its ``suite.json`` names another suite).

    Raises:
        SuiteError: naming both suites: run into one folder, the last one's suite.json alone was reported.
    """
    previous = _previous_suite(results)
    if previous is not None and previous.name != suite.name:
        raise SuiteError(
            f"{results} holds the runs of suite {previous.name!r} ({results / SUITE_FILE}), not of {suite.name!r}: "
            f"one report would cover the two suites' experiments under one name; give suite {suite.name!r} a results "
            f"folder of its own (--results), or name it {previous.name!r} in its file to add to that suite's"
        )


def merged_suite(suite: Suite, results: Path) -> tuple[Suite, list[str]]:
    """The suite written as ``RESULTS/suite.json``: ``suite``, then the experiments of the suite.json there before
    that ``suite`` does not define and that have a run on disk (a ``metrics.json``), as they were run, so that the
    report and status still cover them, each against the settings it was trained with. A name in both takes
    ``suite``'s definition; an experiment whose folder was moved away is dropped.

    Returns:
        the suite to write and the names of the experiments it kept from before.

    Raises:
        SuiteError: the folder holds another suite's runs (:func:`check_results_suite`).
    """
    check_results_suite(suite, results)
    previous = _previous_suite(results)
    names = {e.name for e in suite.experiments}
    kept = [e for e in (previous.experiments if previous is not None else ())
            if e.name not in names and any((results / e.name).glob(f"seed_*/{RECORD_FILE}"))]
    if not kept:
        return suite, []
    return replace(suite, experiments=suite.experiments + tuple(kept)), [e.name for e in kept]


def runs_not_in_suite(suite: Suite, results: Path) -> list[str]:
    """The run folders under ``results`` with a ``metrics.json`` that ``suite`` does not list (an experiment's seed
    that a suite file run into the folder since does not name), as ``experiment/seed_<s>``: the report and status
    leave them out, and name them."""
    listed = {run.name for run in expand_runs(suite, results)}
    found = [(record.parent.parent.name, record.parent.name.removeprefix("seed_"))
             for record in results.glob(f"*/seed_*/{RECORD_FILE}")]
    found.sort(key=lambda run: (run[0], not run[1].isdigit(), int(run[1]) if run[1].isdigit() else 0, run[1]))
    return [name for name in (f"{experiment}/seed_{seed}" for experiment, seed in found) if name not in listed]


def not_in_suite_note(names: list[str]) -> str:
    """One line naming the runs on disk that suite.json does not list, and how to have them reported."""
    return (f"not reported: {len(names)} run(s) on disk that the results folder's suite.json does not list (a suite "
            f"file run into it since defines their experiments otherwise): {', '.join(names)}; `memnet suite run` of "
            "a suite file that lists them (their seeds, the settings they were trained with) reports them")


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


def _seconds_before(previous: dict[str, Any], resume: Path | None) -> float:
    """Training seconds a resumed run already spent: what its record holds, plus, for an attempt
    killed while running (no time recorded), the time from its start to its last checkpoint."""
    if resume is None:
        return 0.0
    before = float(previous.get("train_seconds", 0.0) or 0.0)
    if previous.get("status") == "running" and isinstance(previous.get("started_at"), (int, float)):
        before += max(0.0, resume.stat().st_mtime - float(previous["started_at"]))
    return before


@contextlib.contextmanager
def run_lock(folder: Path, warn: Callable[[str], None] | None = None) -> Iterator[dict[str, Any] | None]:
    """Hold a run's lock (``suite.lock`` in its folder) while its body trains or evaluates it; yields None when
    held here, else who holds it (``pid``, ``host`` and, in a cluster job, ``job_id``: :func:`job_id_here`; another
    ``memnet suite run`` or cluster job at that run).

    The lock is the kernel's (``flock``), so a process that dies, killed included, leaves no lock behind: the file
    stays, saying who held it last, and the next process takes it. Where there is no ``flock`` (Windows, a
    filesystem without it: a Lustre mount without its ``flock`` option) nothing is held and None is yielded: the
    run goes on, and ``warn`` is told why in one line.
    """
    try:
        import fcntl
    except ImportError:
        if warn is not None:
            warn(f"{folder / LOCK_FILE}: no lock taken (no flock on this system): another memnet suite or job at "
                 "this run would not be kept off it")
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as handle:
        holder: dict[str, Any] | None = None
        try:
            _take_lock(handle, fcntl)
        except BlockingIOError:  # held by another process
            holder = _holder(handle)
        except OSError as error:  # no flock on this filesystem: not held
            if warn is not None:
                warn(f"{folder / LOCK_FILE}: no lock taken (flock: {type(error).__name__}: {error}; the filesystem "
                     "does not support it): another memnet suite or job at this run would not be kept off it")
        else:
            handle.seek(0)
            handle.truncate()
            job_id = job_id_here()
            handle.write(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                     **({"job_id": job_id} if job_id else {})}) + "\n")
            handle.flush()
        yield holder  # the lock goes with the file's closing


def _take_lock(handle: Any, fcntl: Any) -> None:
    """Take a run's lock (exclusive), or raise ``BlockingIOError`` where another process holds it.

    A holder (:func:`run_lock`) holds it exclusive; a check (:func:`lock_holder`) holds it shared for an instant. A
    lock found taken that can be taken shared is only checked: it is tried again (every ``LOCK_RETRY_SECONDS``, for
    ``LOCK_CHECK_SECONDS`` at most), so that a run starting while ``--dry-run`` or a submission looks at
    its lock is not left as another process's.
    """
    deadline = time.monotonic() + LOCK_CHECK_SECONDS
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # raises BlockingIOError where a holder holds it
            fcntl.flock(handle, fcntl.LOCK_UN)
            if time.monotonic() > deadline:  # checked without end: no check holds it that long
                raise
            time.sleep(LOCK_RETRY_SECONDS)


def job_id_here() -> str | None:
    """The id of the cluster job this process runs in, as ``job.json`` names jobs (submitit's ``job_id``): a
    ``submitit-local`` job's (``SUBMITIT_LOCAL_JOB_ID``), else a Slurm array task's (``<array job>_<task>``), else
    a Slurm job's (``SLURM_JOB_ID``); None outside a job."""
    env = os.environ
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return env["SUBMITIT_LOCAL_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def holder_name(holder: dict[str, Any]) -> str:
    """A lock's holder (:func:`run_lock`) in words: ``process 4321 on node7``, and ``of job 4242_0`` where it runs in
    a cluster job."""
    who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
    return f"{who} of job {holder['job_id']}" if holder.get("job_id") else who


def _holder(handle: Any) -> dict[str, Any]:
    """Who holds a lock, as its file says (``pid``, ``host``, ``job_id`` in a cluster job); empty where it cannot be
    read (being written now)."""
    handle.seek(0)
    try:
        holder = json.loads(handle.read())
    except json.JSONDecodeError:  # its holder is writing it now
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_holder(folder: Path) -> dict[str, Any] | None:
    """Who holds a run's lock (:func:`run_lock`) now, without taking it: its ``pid`` and ``host``, or None where no
    process holds it (or there is no ``flock``). The lock is tried shared for an instant and let go at once: a run
    that tries to take it in that instant finds it held shared only, and tries again (:func:`_take_lock`)."""
    try:
        import fcntl
    except ImportError:
        return None
    path = folder / LOCK_FILE
    if not path.is_file():  # never locked
        return None
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(handle)
            except OSError:  # no flock on this filesystem
                return None
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # gone meanwhile, or unreadable: nothing to say who holds it
        return None
    return None


def _busy(run: Run, holder: dict[str, Any]) -> tuple[str, str]:
    """The outcome of a run another process holds (:func:`run_lock`)."""
    who = holder_name(holder)
    return "busy", (f"skipped {run.name}: another memnet suite ({who}) is training or evaluating it now (it holds "
                    f"{run.folder / LOCK_FILE}); not run here")


def check_records(runs: list[Run]) -> None:
    """Every run's record that is there can be read (:meth:`Run.read_record`), before anything is trained.

    Raises:
        SuiteError: the first damaged record, named with what is wrong with it and how to redo its run.
    """
    for run in runs:
        run.read_record()


def check_fit_arguments(runs: list[Run], base: Path) -> None:
    """Parse every experiment's ``memnet fit`` arguments (first seed) as the run would, instantiating nothing.

    A typo in an override key (``model.init_args.net.init_args.memroy_size``) or a
    value of the wrong type is a ``SuiteError`` naming the experiment and the parser's
    complaint, before anything trains (``memnet suite run --dry-run``).
    """
    import contextlib
    import io

    from memnet.cli.lightning_cli import MemnetCLI
    from memnet.cli.typos import ParseRefusal

    checked: set[str] = set()
    for run in runs:
        if run.experiment.name in checked:
            continue
        checked.add(run.experiment.name)
        argv = [arg for arg in run.fit_argv(base=base) if not arg.startswith("--ckpt_path")]
        errors = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            try:
                MemnetCLI(args=[*argv, "--print_config"])
                code = 0
            except SystemExit as exit_info:
                code = exit_info.code
            except ParseRefusal as error:  # a mistyped key or a value of the wrong type, already one line naming it
                code, errors = 1, io.StringIO(f"error: {error}")
            except Exception as error:  # noqa: BLE001 -- a config the CLI cannot even build
                code, errors = 1, io.StringIO(f"error: {type(error).__name__}: {error}")
        if code not in (0, None):
            raise SuiteError(f"experiment {run.experiment.name!r}: its memnet fit arguments do not parse: "
                             f"{_innermost_parser_error(errors.getvalue())}")


def _innermost_parser_error(text: str) -> str:
    """The line that names the culprit in the parser's nested error ("Option 'memroy_size' is not accepted")."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if start is None:
        return lines[-1].strip() if lines else "unknown error"
    noise = ("Subtypes:", "Errors:", "Given value", "Does not validate", "- Expected a <class 'NoneType'>")
    block = [line for line in lines[start + 1:] if line.strip() and not line.strip().startswith(noise)]
    if not block:
        return lines[start].removeprefix("error:").strip()
    deepest = max(block, key=lambda line: len(line) - len(line.lstrip()))
    return deepest.strip().removeprefix("- ")


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
        if not is_integer(jobs) or jobs < 1:
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
        self.warned_unlocked = False

    def _unlocked(self, message: str) -> None:
        """A run's lock that could not be taken (:func:`run_lock`): said once, for the first run (all share it)."""
        with self.slots_lock:
            if self.warned_unlocked:
                return
            self.warned_unlocked = True
        print(f"[suite {self.suite.name}] warning: {message}", file=self.stream, flush=True)

    def run(self, runs: list[Run]) -> dict[str, int]:
        """Train and evaluate every run that is not done.

        Returns:
            counts: ``done`` (trained and evaluated now), ``evaluated`` (trained before, only
            evaluated now), ``failed`` (training or evaluation), ``interrupted``, ``busy`` (another
            process was at it: :func:`run_lock`) and ``skipped`` (done before).
        """
        check_records(runs)  # a damaged record would read as "not done", and its run be trained again
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
        for run in runs:  # a suite file changed since: said here, and named beside the numbers in the report
            trained_with = (run.record() or {}).get("settings")
            kept = run.is_done() or run.is_trained()
            if trained_with is not None and settings_changes(trained_with, run.settings()) and (
                    kept or run.last_checkpoint()):
                what = "kept as trained" if kept else "resumed from its last checkpoint"
                progress.event(f"[suite {self.suite.name}] warning: {run.name} was trained with other settings than "
                               f"the suite's now; {what} (the report names it; move its folder away to train it anew)")
        counts = {"done": 0, "evaluated": 0, "failed": 0, "interrupted": 0, "busy": 0,
                  "skipped": len(runs) - len(todo)}
        previous_handler = None
        if threading.current_thread() is threading.main_thread():  # SIGTERM stops like Ctrl-C
            previous_handler = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._run_all(todo, progress, counts)
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        return counts

    def run_one(self, run: Run, on_lock: Callable[[dict[str, Any] | None], None] | None = None) -> tuple[str, str]:
        """Train and evaluate one run here and now (a cluster job's work); returns (outcome, message),
        the outcome one of ``done``, ``evaluated``, ``failed``, ``interrupted``, ``busy`` (:func:`run_lock`).
        ``on_lock(holder)`` is called once the run's lock is tried: with None where it is held here (before anything
        is trained), else with who holds it (the run is then left alone).

        An exception of the suite's own handling fails the run at once, named (:meth:`_crashed`), as with the local
        launcher: in a job it ended the job's thread unsaid, the job returned as if done and left the run "running"
        for ``memnet suite status`` ever after."""
        with run_lock(run.folder, self._unlocked) as holder:
            if on_lock is not None:
                on_lock(holder)
            if holder is not None:
                return _busy(run, holder)
            try:
                return self._train_and_evaluate(run, 0)
            except Exception as error:  # noqa: BLE001 - a defect here fails this run now, named
                return self._crashed(run, error)

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
        suite, kept = merged_suite(self.suite, self.results)
        if kept:
            print(f"[suite {self.suite.name}] {SUITE_FILE} keeps {len(kept)} experiment(s) run into {self.results} "
                  f"before that {self.suite.path or 'this suite'} does not define, as they were run: "
                  f"{', '.join(kept)} (the report and status show them; move an experiment's folder away to drop it)",
                  file=self.stream, flush=True)
        text = json.dumps(suite.to_dict(), indent=2, sort_keys=True) + "\n"
        write_text_atomic(self.results / SUITE_FILE, text)  # a kill while writing leaves the previous one whole

    def _event(self, **fields: Any) -> None:
        fields["time"] = round(time.time(), 3)
        with self.events_lock, open(self.results / EVENTS_FILE, "a") as handle:
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
            with run_lock(run.folder, self._unlocked) as holder:
                if holder is not None:
                    outcome, message = _busy(run, holder)
                elif run.is_done():  # finished meanwhile by the process that held it
                    outcome, message = "skipped", f"{run.name} was finished meanwhile by another memnet suite"
                else:
                    try:
                        outcome, message = self._train_and_evaluate(run, slot)
                    except Exception as error:  # noqa: BLE001 - a defect here fails this run now, named; the others go on
                        outcome, message = self._crashed(run, error)
            with progress.lock:
                progress.running -= 1
                if outcome == "busy":
                    progress.total -= 1
                else:
                    progress.durations.append(time.monotonic() - started)
                if outcome in ("done", "evaluated", "skipped"):
                    progress.done += 1
                elif outcome == "failed":
                    progress.failed += 1
            progress.event(message)
            return outcome
        finally:
            with self.slots_lock:
                self.free_slots.append(slot)

    def _crashed(self, run: Run, error: Exception) -> tuple[str, str]:
        """A run whose handling here raised (not its training or evaluation process, which fail by exit code): it is
        recorded failed at once, at the stage it was in, where the thread's exception would surface only when every
        run had finished, the run left "running" or "trained" and counted as running until then."""
        stage = "evaluate" if run.is_trained() else "train"  # a trained run is evaluated again by the next `suite run`
        text = f"{type(error).__name__}: {error}"
        self._event(event="failed", run=run.name, stage=stage, error=text)
        self._write_record(run, status="failed", stage=stage, error=f"memnet suite: {text}",
                           **{key: value for key, value in (run.record() or {}).items()
                              if key in ("train_seconds", "resume_from")})
        return "failed", f"FAILED {run.name} ({stage}): memnet suite: {text}"

    def _env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("WANDB_SILENT", "true")
        # each training its own W&B service: one inherited from this process (a wandb.init before the suite ran)
        # still held the W&B run of an attempt that ended, and its resumed training failed "run ID ... is in use"
        env.pop("WANDB_SERVICE", None)
        if "OMP_NUM_THREADS" not in env:  # share the cores between the runs going at once
            env["OMP_NUM_THREADS"] = str(max(1, usable_cores() // self.jobs))
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
            before = _seconds_before(previous, resume)
            settings = run.settings()
            # a run resumed under other settings than its checkpoint was trained with: the first ones stay named
            started_with = (previous.get("resumed_from_settings") or previous.get("settings")) if resume else None
            provenance = {"settings": settings, "resumed_from_settings": started_with if started_with is not None
                          and settings_changes(started_with, settings) else None}
            argv = ["-m", "memnet.cli", *run.fit_argv(base=self.base, resume_from=resume)]
            write_text_atomic(run.folder / "command.json",  # renamed into place: never half a command
                              json.dumps({"argv": argv, "cwd": str(self.base)}, indent=2))
            # relative to the results folder, as the record's other paths: a moved folder still names its checkpoint
            self._event(event="start", run=run.name, resume_from=run.in_results(resume))
            self._write_record(run, status="running", resume_from=run.in_results(resume),
                               train_seconds=round(before, 3), started_at=time.time(), **provenance)
            code = self._process(argv, run.folder / "train.log", slot)
            train_seconds = before + time.monotonic() - started
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
        checkpoint = run.trained_checkpoint()
        evaluation: dict[str, Any] | None = None
        spec = run.experiment.evaluate
        if spec is not None:
            evaluation = self._evaluate(run, spec, checkpoint, slot)
        fields = {
            "metrics": summary.get("metrics", {}),
            # those of the weights the evaluation tested (a best-by-val/loss checkpoint is not the run's end): a
            # `select` rule compares the runs by them (memnet.selection)
            CHECKPOINT_METRICS: saved_metrics(checkpoint) if checkpoint else None,
            "evaluation": evaluation,
            # relative to the results folder: a folder moved or copied elsewhere still names its own files
            "checkpoint": run.in_results(checkpoint),
            "last_checkpoint": run.in_results(run.path_in_summary(summary, "last_checkpoint")),
            "config": run.in_results(run.folder / "config.yaml"),
            "wandb_dir": run.in_results(run.path_in_summary(summary, "wandb_dir")),
            "train_seconds": round(train_seconds, 3),
        }
        if evaluation is not None and evaluation.get("status") != "done":
            # a failure: the next `suite run` evaluates the trained run again (Run.is_trained)
            error = evaluation.get("error") or f"evaluation {evaluation.get('status')}"
            self._event(event="failed", run=run.name, stage="evaluate", evaluation=evaluation.get("status"))
            self._write_record(run, status="failed", stage="evaluate", error=error, **fields)
            return "failed", f"FAILED {run.name} (evaluation {evaluation.get('status')}): {error}"
        self._write_record(run, status="done", **fields)
        self._event(event="done", run=run.name)
        if trained:  # only evaluated now (or, with nothing to evaluate, only recorded)
            what = "evaluated" if spec is not None else "recorded"
            return "evaluated", f"done {run.name}: {what} now, trained before (in {_duration(train_seconds)})"
        return "done", f"done {run.name} in {_duration(train_seconds)}"

    def plan(self, run: Run) -> tuple[str, str]:
        """What :meth:`run` would do with ``run`` now, for ``--dry-run``: (what, the command as a shell line).

        ``what`` is ``done`` (nothing: the command it was trained with), ``busy`` (another process holds its lock
        now: :func:`lock_holder`; the run skips it), ``train``, ``resume`` (from its ``last.ckpt``), ``evaluate``
        (trained before; only its evaluation runs) or ``record`` (trained before, nothing to evaluate: only its
        record is written).
        """
        holder = None if run.is_done() else lock_holder(run.folder)
        if holder is not None:
            who = holder_name(holder)
            return "busy", (f"another memnet suite ({who}) is training or evaluating it now (it holds "
                            f"{run.folder / LOCK_FILE}); it is skipped")
        if run.is_done() or not run.is_trained():
            resume = run.last_checkpoint()
            what = "done" if run.is_done() else ("resume" if resume else "train")
            return what, _command_line(["-m", "memnet.cli", *run.fit_argv(base=self.base, resume_from=resume)])
        spec = run.experiment.evaluate
        if spec is None:
            return "record", "nothing to evaluate; its record is written as done"
        checkpoint = run.trained_checkpoint()
        if not checkpoint:
            return "evaluate", "cannot evaluate (a failure): training left no checkpoint to evaluate"
        try:
            evaluator = EVALUATORS[spec["kind"]]
            commands = [evaluator.command(run, checkpoint, spec), *evaluator.more_commands(run, checkpoint, spec)]
        except EvaluationUnavailable as error:
            return "evaluate", f"cannot evaluate (a failure): {error}"
        return "evaluate", " && ".join(map(_command_line, commands))  # run in turn, each if the one before succeeded

    def _evaluate(self, run: Run, spec: dict, checkpoint: str | None, slot: int) -> dict[str, Any]:
        evaluator = EVALUATORS[spec["kind"]]
        if not checkpoint:
            return {
                "kind": spec["kind"],
                "status": "failed",
                "error": "training left no checkpoint to evaluate",
            }
        try:
            commands = [evaluator.command(run, checkpoint, spec), *evaluator.more_commands(run, checkpoint, spec)]
        except EvaluationUnavailable as error:
            return {"kind": spec["kind"], "status": "unavailable", "error": str(error)}
        for argv in commands:  # in turn (the fixed repeat counts after the lengths), stopping at the first failure
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
        return {"kind": spec["kind"], "status": "done", "options": evaluation_options(spec), **result}

    def _write_record(self, run: Run, **fields: Any) -> dict[str, Any]:
        previous = run.record() or {}
        for key in ("settings", "resumed_from_settings"):  # what the run was trained with, kept until it trains again
            if key not in fields and previous.get(key) is not None:
                fields[key] = previous[key]
        record = {
            "suite": self.suite.name,
            "experiment": run.experiment.name,
            "seed": run.seed,
            "model": run.experiment.model,
            "task": run.experiment.task,
            **fields,
        }
        write_text_atomic(run.record_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return record


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, which Slurm (and ``taskset``, a container's cpuset)
    narrows to the job's ``--cpus-per-task``, where ``os.cpu_count()`` counts every core of the node (a job of 8
    CPUs on a 128-core node ran its training with 128 threads on 8 cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def _command_line(argv: list[str]) -> str:
    """A process's argv (without the Python) as a shell line: ``memnet ...`` for ``-m memnet.cli ...``."""
    if argv[:2] == ["-m", "memnet.cli"]:
        return shlex.join(["memnet", *argv[2:]])
    return shlex.join([sys.executable, *argv])


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _terminate(process: subprocess.Popen) -> None:
    try:
        process.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass


def _error_from_log(path: Path, code: int) -> str:
    """The last error of a log's last attempt: its ``SomethingError: message`` line and the lines that explain it.

    A run's log is appended to by every attempt, each after the command line the suite wrote (``$ ...``): only the
    lines after the last one are read, or an attempt killed without a word (the kernel's OOM killer) was reported
    with the error of an earlier attempt, one fixed since. Such a kill (a negative ``code``) is named by its signal.
    """
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"exit code {code}, no log"
    starts = [index for index, line in enumerate(lines) if line.startswith("$ ")]  # the command lines the suite wrote
    lines = [line.strip() for line in lines[starts[-1] + 1 if starts else 0:] if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        if re.match(r"^([\w.]*(Error|Exception)|error|memnet)\b.*?: ", lines[index]):
            detail = [lines[index]]
            for line in lines[index + 1 :]:
                if line.startswith(("Given value", "Traceback", "[", "wandb:")):
                    break
                detail.append(line)
            return " | ".join(detail)[:ERROR_CHARS]
    if code < 0:
        try:
            killed = f"killed by {signal.Signals(-code).name} (exit {code})"
        except ValueError:
            killed = f"killed by signal {-code} (exit {code})"
        return (killed + (f"; its log's last line: {lines[-1]}" if lines else ""))[:ERROR_CHARS]
    return lines[-1][:ERROR_CHARS] if lines else f"exit code {code}, empty log"
