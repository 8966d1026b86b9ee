"""Suites on a cluster: every run of ``memnet suite run`` as its own job, through submitit.

    memnet suite run SUITE --launcher slurm --partition gpu --time 04:00:00 --gpus-per-job 1 \\
        --cpus 8 --mem-gb 32 --account myproject --array-parallelism 16 [--slurm qos=high]
    memnet suite status RESULTS            each run: pending, running, finished, failed, requeued
    memnet suite report RESULTS            the leaderboard of what has finished so far

Launchers: ``local`` (the default: runs on this machine, ``--jobs`` at a time), ``slurm``
(one Slurm job per experiment × seed, submitted as a job array) and ``submitit-local``
(the same jobs as real local subprocesses through submitit's local executor: the Slurm
code path on one machine, for trying a suite before the cluster).

The settings come from the command line or a ``launcher:`` section of the suite file
(the command line wins)::

    launcher:
      name: slurm                 # local | slurm | submitit-local
      partition: gpu
      time: "04:00:00"            # per job, as Slurm reads --time: minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
      gpus_per_job: 1
      cpus: 8                     # CPUs per job
      mem_gb: 32
      account: myproject
      array_parallelism: 16       # jobs of the array running at once
      slurm: {qos: high}          # any other option submitit's Slurm executor knows

A job runs its run exactly as ``--launcher local`` does (``memnet fit`` in a
subprocess, then the evaluation) and writes the same files, so ``memnet suite
report`` and a later ``memnet suite run`` treat both alike: finished runs are
skipped, cut ones resume from their ``last.ckpt``. A job that Slurm preempts or that
reaches its time limit gets submitit's signal: it stops its training (the last
checkpoint stays), marks the run ``requeued`` (keeping its training time) and is
requeued, and the new job resumes from ``last.ckpt``; a job that submitit does not
requeue (timed out more than its ``max_num_timeout``) leaves its run ``failed``.
With ``--wait`` the command waits for its jobs and fails (exit 1) if any of the runs
it submitted is not finished.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memnet.cli.suite.errors import SuiteError
from memnet.cli.suite.runner import (
    ERROR_CHARS,
    LOCK_FILE,
    Run,
    SuiteRunner,
    _terminate,
    check_records,
    expand_runs,
    holder_name,
    lock_holder,
)
from memnet.cli.suite.spec import EVENTS_FILE, JOBS_DIR, SUITE_FILE, Suite, read_results_suite
from memnet.utils import is_integer, is_number, write_text_atomic

LAUNCHERS = ("local", "slurm", "submitit-local")
JOB_FILE = "job.json"  # per run: launcher, job id, pid and host of the job running it
JOB_LOCK_FILE = "job.lock"  # per run: flock-ed while job.json is read and written (write_job_file)
STOP_SECONDS = 60.0  # how long a preempted job waits for its training process to stop
# memnet's names of the launcher settings -> submitit's (AutoExecutor) parameter names
SETTINGS = {
    "partition": "slurm_partition",
    "time": "timeout_min",
    "gpus_per_job": "gpus_per_node",
    "cpus": "cpus_per_task",
    "mem_gb": "mem_gb",
    "account": "slurm_account",
    "array_parallelism": "slurm_array_parallelism",
}
SECTION_KEYS = {"name", "slurm", *SETTINGS}
DEFAULT_TIME = "04:00:00"


@dataclass(frozen=True)
class LauncherConfig:
    """The launcher and its settings, merged from the suite file and the command line.

    Attributes:
        name: ``local``, ``slurm`` or ``submitit-local``.
        settings: memnet's names (``partition``, ``time``, ...) -> values.
        slurm: further submitit Slurm options (without the ``slurm_`` prefix) -> values.
    """

    name: str = "local"
    settings: dict[str, Any] | None = None
    slurm: dict[str, Any] | None = None

    def left_out(self) -> list[str]:
        """The Slurm settings a ``submitit-local`` launch leaves out (its executor knows none), as the user wrote them."""
        if self.name == "slurm":
            return []
        settings = [key.replace("_", "-") for key in (self.settings or {}) if SETTINGS[key].startswith("slurm_")]
        return sorted(settings) + sorted(f"slurm {key}" for key in (self.slurm or {}))

    def executor_parameters(self) -> dict[str, Any]:
        """The ``update_parameters`` of a submitit ``AutoExecutor``."""
        settings = dict(self.settings or {})
        settings.setdefault("time", DEFAULT_TIME)
        parameters = {SETTINGS[key]: value for key, value in settings.items()}
        parameters["timeout_min"] = minutes(settings["time"], "time")
        if self.name == "slurm":
            parameters.update({f"slurm_{key}": value for key, value in (self.slurm or {}).items()})
        else:  # the local executor knows no Slurm options
            parameters = {k: v for k, v in parameters.items() if not k.startswith("slurm_")}
        return parameters


# Slurm's time formats (sbatch --time): minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds. "30:00" is 30 minutes, as Slurm reads it.
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (Slurm's formats)"


def minutes(value: Any, where: str) -> int:
    """A job time limit in whole minutes (seconds round up), read as Slurm reads ``--time``.

    ``30`` and ``"30:00"`` are 30 minutes, ``"04:00:00"`` 4 hours, ``"1-02"`` and ``"1-02:00"`` 26 hours.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip() if isinstance(value, str) else None
    days, hours, mins, secs = 0, 0, 0, 0
    match = None
    if text is not None:
        if "-" in text:
            match = re.fullmatch(r"(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?", text)
            if match:
                days, hours, mins, secs = (int(g) if g else 0 for g in match.groups())
        else:
            match = re.fullmatch(r"\d+(?::\d+){0,2}", text)
            if match:
                parts = [int(p) for p in text.split(":")]
                if len(parts) == 1:
                    mins = parts[0]
                elif len(parts) == 2:
                    mins, secs = parts
                else:
                    hours, mins, secs = parts
    if not match:
        raise SuiteError(f"{where}: expected {TIME_FORMATS}, got {value!r}")
    total = days * 1440 + hours * 60 + mins + (1 if secs else 0)
    if total < 1:
        raise SuiteError(f"{where}: the time limit must be at least one minute, got {value!r}")
    return total


def slurm_options() -> set[str]:
    """Every option of submitit's Slurm executor (``partition``, ``qos``, ``constraint``, ...)."""
    from submitit import SlurmExecutor

    return set(SlurmExecutor._valid_parameters())


def check_slurm_option(key: str, where: str) -> None:
    """Refuse an option submitit's Slurm executor does not know, naming the close matches."""
    known = slurm_options()
    if key not in known:
        close = difflib.get_close_matches(key, sorted(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
        raise SuiteError(f"{where}: {key!r} is not a Slurm option submitit knows{hint}")


COUNTS = ("gpus_per_job", "cpus", "array_parallelism")  # settings that are whole numbers of at least one


def check_settings(settings: dict[str, Any], named: Any) -> None:
    """Refuse a count below one (``cpus``, ``gpus_per_job``, ``array_parallelism``) or a memory that is not a
    positive number, in one line naming the setting as the user wrote it (``named(key)``) and its value: Slurm
    would be handed ``--cpus-per-task=0`` or ``--mem=-3GB``."""
    for key in COUNTS:
        value = settings.get(key)
        if value is not None and (not is_integer(value) or value < 1):
            raise SuiteError(f"{named(key)} must be a positive integer, got {value!r}")
    value = settings.get("mem_gb")
    if value is not None and (not is_number(value) or not math.isfinite(value) or value <= 0):
        raise SuiteError(f"{named('mem_gb')} must be a positive number of GB, got {value!r}")


def from_section(section: Any, where: str) -> LauncherConfig:
    """The ``launcher:`` section of a suite file, checked (``where`` names the file and line)."""
    if section is None:
        return LauncherConfig()
    if not isinstance(section, dict):
        raise SuiteError(f"{where}: 'launcher' must be a mapping, e.g. {{name: slurm, partition: gpu}}")
    unknown = sorted(set(section) - SECTION_KEYS)
    if unknown:
        raise SuiteError(f"{where}: launcher: unknown key {unknown[0]!r}; allowed keys: "
                         f"{', '.join(sorted(SECTION_KEYS))} (other Slurm options go under 'slurm:')")
    name = section.get("name", "local")
    if name not in LAUNCHERS:
        raise SuiteError(f"{where}: launcher: unknown launcher {name!r}; expected one of {', '.join(LAUNCHERS)}")
    slurm = section.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SuiteError(f"{where}: launcher.slurm must be a mapping of Slurm options")
    for key in slurm:
        check_slurm_option(str(key), f"{where}: launcher.slurm")
    settings = {key: section[key] for key in SETTINGS if section.get(key) is not None}
    check_settings(settings, lambda key: f"{where}: launcher.{key}")
    if "time" in settings:
        minutes(settings["time"], f"{where}: launcher.time")
    return LauncherConfig(name=name, settings=settings, slurm=dict(slurm))


def merge(file_config: LauncherConfig, *, name: str | None, settings: dict[str, Any],
          slurm: list[str]) -> LauncherConfig:
    """The suite file's launcher with the command line's ``--launcher``, settings and ``--slurm K=V`` over it."""
    chosen = name or file_config.name
    if chosen not in LAUNCHERS:
        raise SuiteError(f"--launcher: unknown launcher {chosen!r}; expected one of {', '.join(LAUNCHERS)}")
    given = {k: v for k, v in settings.items() if v is not None}
    check_settings(given, lambda key: f"--{key.replace('_', '-')}")
    merged = {**(file_config.settings or {}), **given}
    options = dict(file_config.slurm or {})
    for assignment in slurm:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise SuiteError(f"--slurm {assignment!r}: expected OPTION=VALUE, e.g. --slurm qos=high")
        check_slurm_option(key, "--slurm")
        options[key] = value
    if "time" in merged:
        minutes(merged["time"], "--time")
    if chosen == "local":
        given = sorted(k for k in settings if settings[k] is not None and k != "gpus_per_job") + (
            ["slurm"] if slurm else [])
        if given:
            raise SuiteError(f"--{given[0].replace('_', '-')} applies to --launcher slurm or submitit-local, "
                             "not to the local launcher")
    return LauncherConfig(name=chosen, settings=merged, slurm=options)


class SuiteJob:
    """A cluster job's work: train and evaluate one run of a suite, as ``--launcher local`` does.

    Pickled by submitit and called in the job. On preemption or at the time limit
    submitit calls :meth:`checkpoint`, which stops the training process (its last
    checkpoint stays), marks the run ``requeued`` and returns the job to submit again;
    the next job resumes the run from ``last.ckpt``. Where submitit then refuses to
    requeue (a job timed out more than ``max_num_timeout`` times), the run is marked
    ``failed`` with submitit's reason.

    Args:
        results: the suite's results folder.
        run_name: ``<experiment>/seed_<s>``.
        base_dir: the folder relative config paths are resolved from.
        suite: the suite as submitted (``Suite.to_dict()``), carried in the job's pickle so that
            a job that starts later trains what was submitted, whatever ``RESULTS/suite.json``
            says by then; None (a job pickled by an older memnet) reads ``RESULTS/suite.json``.
    """

    def __init__(self, results: str, run_name: str, base_dir: str, suite: dict[str, Any] | None = None) -> None:
        self.results = results
        self.run_name = run_name
        self.base_dir = base_dir
        self.suite = suite
        self._runner: SuiteRunner | None = None
        self._worker: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"results": self.results, "run_name": self.run_name, "base_dir": self.base_dir, "suite": self.suite}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def _suite(self) -> Suite:
        if self.suite is not None:
            return Suite.from_dict(self.suite)
        return Suite.from_dict(json.loads((Path(self.results) / SUITE_FILE).read_text()))

    def _run(self) -> Run:
        for run in expand_runs(self._suite(), Path(self.results)):
            if run.name == self.run_name:
                return run
        where = "the submitted suite" if self.suite is not None else f"{self.results}/suite.json"
        raise SuiteError(f"{where} has no run {self.run_name!r}")

    def __call__(self) -> dict[str, str]:
        run = self._run()
        if run.is_done():  # a job requeued after its run finished: nothing left to do
            write_job_file(run, state="finished")
            return {"run": run.name, "outcome": "done", "message": f"{run.name} was already done"}
        self._runner = SuiteRunner(self._suite(), Path(self.results), jobs=1, base_dir=Path(self.base_dir))
        outcome: dict[str, str] = {}

        def locked(holder: dict[str, Any] | None) -> None:
            # "running" only once the run is this job's: a job that finds another process at it leaves it, and its
            # job.json says so, not that this job (ended at once) is training it
            if holder is not None:
                write_job_file(run, state="busy", holder=holder)
            elif not self._runner.stopping:  # a signal before the lock marked the run requeued: left so
                write_job_file(run, state="running", holder=None)

        def work() -> None:
            result, message = self._runner.run_one(run, on_lock=locked)
            outcome.update(outcome=result, message=message)

        # The run goes on in a thread, so that the main thread stays free for submitit's signal handler.
        self._worker = threading.Thread(target=work, name=f"suite-run {run.name}", daemon=True)
        try:
            # started inside the try: a signal that comes before the first join (a preemption at once, or a
            # busy machine) must end the run the same way
            self._worker.start()
            while self._worker.is_alive():
                self._worker.join(timeout=0.5)
        except Exception as error:
            # submitit's signal handler raises here when it does not requeue the job (after
            # checkpoint() marked the run requeued): the run ends with this job, a failure
            _job_failed(self._runner, run, f"{type(error).__name__}: {error}", requeue_refused=True)
            raise
        ended = {"done": "finished", "evaluated": "finished", "failed": "failed"}.get(outcome.get("outcome", ""))
        if ended is not None:  # said here, where only squeue knew it ended (and a submitit-local job's pid, reused)
            write_job_file(run, state=ended)
        print(outcome.get("message", ""), flush=True)
        return {"run": run.name, **outcome}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the training process, mark the run ``requeued``; submitit resubmits the returned job.

        The record keeps the training time spent so far, which the resumed run adds to.
        """
        from submitit.helpers import DelayedSubmission

        runner, worker = self._runner, self._worker
        if runner is not None and worker is not None:
            run = self._run()
            runner.stopping = True
            for process in list(runner.processes):
                _terminate(process)
            worker.join(timeout=STOP_SECONDS)
            requeues = _requeue_count(Path(self.results), run.name) + 1
            runner._event(event="requeued", run=run.name, requeues=requeues, **_job_identity())
            runner._write_record(run, status="requeued", requeues=requeues,
                                 resume_from=run.in_results(run.last_checkpoint()),
                                 train_seconds=_seconds_so_far(run.record() or {}))
            write_job_file(run, state="requeued")
        return DelayedSubmission(SuiteJob(self.results, self.run_name, self.base_dir, self.suite))


def _seconds_so_far(record: dict[str, Any]) -> float:
    """The training seconds of a run stopped now: those its record holds, plus, if its training is
    still marked running (the process did not stop in time), the time since that attempt started."""
    seconds = float(record.get("train_seconds", 0.0) or 0.0)
    if record.get("status") == "running" and isinstance(record.get("started_at"), (int, float)):
        seconds += max(0.0, time.time() - float(record["started_at"]))
    return round(seconds, 3)


def _job_failed(runner: SuiteRunner, run: Run, error: str, **event: Any) -> None:
    """Record that ``run``'s job ended without finishing it (stage ``job``), keeping its training time."""
    previous, error = run.record() or {}, error[:ERROR_CHARS]
    runner._event(event="failed", run=run.name, stage="job", error=error, **event)
    requeues = _requeue_count(runner.results, run.name)  # less a requeue that submitit refused
    runner._write_record(run, status="failed", stage="job", error=error, train_seconds=_seconds_so_far(previous),
                         requeues=requeues, resume_from=previous.get("resume_from"))
    write_job_file(run, state="failed")


def _job_identity() -> dict[str, Any]:
    identity: dict[str, Any] = {"pid": os.getpid(), "host": os.uname().nodename}
    try:
        import submitit

        identity["job_id"] = submitit.JobEnvironment().job_id
    except RuntimeError:  # not inside a submitit job
        pass
    return identity


def write_job_file(run: Run, *, submitted: bool = False, **fields: Any) -> None:
    """Record who runs ``run`` (launcher state, job id, pid, host) beside its other files; a field given as None is
    removed.

    The file is read and written under ``job.lock`` (:func:`_job_file_lock`), so that the submitter and the job, which
    both write it, never write over what the other wrote between its reading and its writing. ``submitted``: the
    submitter's own fields once the job is submitted (its job id): they are written whole only while the run is still
    ``pending``; where its job has written a state since (it started as the batch closed), they only fill in the
    fields the job left out, and the job's state, pid and host stay.
    """
    run.folder.mkdir(parents=True, exist_ok=True)
    path = run.folder / JOB_FILE
    with _job_file_lock(run.folder):
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        previous = previous if isinstance(previous, dict) else {}
        if submitted and previous.get("state", "pending") != "pending":  # the job's own state: kept
            record = {**{key: value for key, value in fields.items() if value is not None}, **previous}
        else:
            record = {**previous, **_job_identity(), **fields, "time": round(time.time(), 3)}
        record = {key: value for key, value in record.items() if value is not None}
        write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


_JOB_LOCKS: dict[str, threading.RLock] = {}  # per run folder: the thread of this process that holds job.lock
_JOB_LOCK_DEPTH: dict[str, int] = {}  # per run folder: how deep that thread is in _job_file_lock (read under its lock)


@contextlib.contextmanager
def _job_file_lock(folder: Path) -> Iterator[None]:
    """Hold ``job.lock`` in a run's folder (a ``flock``, waited for: held only while ``job.json`` is read and written);
    where there is no ``flock`` (Windows, a filesystem without it) nothing is held, as before there was one.

    Re-entrant within a thread: a job's signal handler (:meth:`SuiteJob.checkpoint`, which writes ``job.json``) runs
    in the main thread, which may be inside this lock that instant; a second ``flock`` on a new handle of the same file
    waited for the first, its own, for ever. The thread that holds it takes it again without a second ``flock``;
    another thread of this process waits for it (a lock per folder), and another process for the ``flock``.
    """
    key = os.path.abspath(folder)
    lock = _JOB_LOCKS.setdefault(key, threading.RLock())  # setdefault: one lock per folder, whichever thread asks
    with lock:
        depth = _JOB_LOCK_DEPTH.get(key, 0)
        _JOB_LOCK_DEPTH[key] = depth + 1  # before the flock: a handler from here on takes no second one
        try:
            if depth:
                yield
                return
            try:
                import fcntl
            except ImportError:
                yield
                return
            with open(folder / JOB_LOCK_FILE, "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                except OSError:  # no flock on this filesystem
                    pass
                yield  # the lock goes with the file's closing
        finally:
            _JOB_LOCK_DEPTH[key] = depth  # after the closing: a handler in between would take a second flock


def _job_file_text(run: Run) -> str | None:
    try:
        return (run.folder / JOB_FILE).read_text()
    except OSError:
        return None


def _restore_job_file(run: Run, text: str | None) -> None:
    """``job.json`` back to ``text`` (None: none), after a submission that failed; unless a job wrote it since."""
    path = run.folder / JOB_FILE
    with _job_file_lock(run.folder):
        try:
            state = json.loads(path.read_text()).get("state")
        except (OSError, json.JSONDecodeError, AttributeError):
            state = None
        if state != "pending":  # a job started all the same, and said so
            return
        if text is None:
            path.unlink(missing_ok=True)
        else:
            write_text_atomic(path, text)


def _events(results: Path) -> list[dict[str, Any]]:
    try:
        lines = (results / EVENTS_FILE).read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return events


def _requeue_count(results: Path, name: str, events: list[dict[str, Any]] | None = None) -> int:
    """How many times ``name`` was requeued: its ``requeued`` events, less those submitit then refused."""
    events = _events(results) if events is None else events
    mine = [e for e in events if e.get("run") == name]
    return (sum(1 for e in mine if e.get("event") == "requeued")
            - sum(1 for e in mine if e.get("event") == "failed" and e.get("requeue_refused")))


# job.json's states of a job that has not ended (the job writes "finished" or "failed" when it ends, "busy" when it
# found another process at its run and left it)
UNENDED_JOB_STATES = ("pending", "running", "requeued")
# squeue's states of a job that has ended (squeue -j lists a job a few minutes after its end, in these)
ENDED_SLURM_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                                "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT"})
SQUEUE_SECONDS = 60.0  # the longest squeue is waited for


def _slurm_states(job_ids: list[str]) -> dict[str, str] | str:
    """Slurm's state of each of these jobs still in its queue (``4242_0`` -> ``PENDING``), from ``squeue``;
    a job it no longer knows is left out. Where squeue cannot answer: why, as a string."""
    command = ["squeue", "--noheader", "--array", "--format=%i %T", f"--jobs={','.join(job_ids)}"]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"squeue could not be run ({type(error).__name__}: {error})"
    if answer.returncode != 0:
        if "invalid job id" in answer.stderr.lower():  # none of them is known any more: all ended
            return {}
        lines = (answer.stderr or answer.stdout).strip().splitlines()
        return f"squeue failed (exit {answer.returncode}{': ' + lines[-1] if lines else ''})"
    states = {}
    for line in answer.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            states[fields[0]] = fields[1].upper()
    return states


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _process_start(pid: Any) -> str | None:
    """When process ``pid`` started (``starttime`` of ``/proc/<pid>/stat``: clock ticks after boot): with the pid,
    which the kernel gives out again, it names one process. None where it cannot be read (gone, no ``/proc``)."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError, TypeError):
        return None
    fields = text.rpartition(")")[2].split()  # after the command's name, which may hold spaces: state is first
    return fields[19] if len(fields) > 19 else None


def _job_process_alive(job: dict[str, Any]) -> bool:
    """Whether a ``submitit-local`` job's process (its pid is the job id) still runs on this host: the pid alive and,
    where its start was recorded at submission, started then (not a later process given the same pid)."""
    if job.get("host") != os.uname().nodename or not _pid_alive(job.get("job_id")):
        return False
    started = job.get("job_started")
    return started is None or _process_start(job.get("job_id")) == started


def still_submitted(runs: list[Run]) -> dict[str, str]:
    """The runs whose job, submitted before, has not ended: run name -> why it is not submitted again.

    A run's ``job.json`` names its job and the state the job left it in; a job that has not said it ended
    (``pending``, ``running``, ``requeued``) is asked for: a Slurm job in ``squeue`` (one call for all), a
    ``submitit-local`` job by its process on this host (its pid and start: :func:`_job_process_alive`). A job Slurm no longer lists, or lists as ended, and a
    process that is gone have ended (cancelled, killed, node lost): their runs are submitted again. Where squeue
    cannot answer, the run is not submitted again either: two jobs would train into one run folder. Nor is a run
    whose lock a process holds (:func:`lock_holder`: a local ``memnet suite run``, or a job, at it now): its job
    would find it held and leave it.
    """
    busy: dict[str, str] = {}
    for run in runs:
        holder = lock_holder(run.folder)
        if holder is not None:
            busy[run.name] = (f"{holder_name(holder)} is training or evaluating it now (it holds "
                              f"{run.folder / LOCK_FILE})")
    waiting: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run.name in busy:
            continue
        try:
            job = json.loads((run.folder / JOB_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(job, dict) and job.get("job_id") and job.get("state") in UNENDED_JOB_STATES:
            waiting[run.name] = job
    on_slurm = [name for name, job in waiting.items() if job.get("launcher") == "slurm"]
    states = _slurm_states([str(waiting[name]["job_id"]) for name in on_slurm]) if on_slurm else {}
    for name in on_slurm:
        job_id = str(waiting[name]["job_id"])
        if isinstance(states, str):
            folder = next(run.folder for run in runs if run.name == name)
            busy[name] = (f"its job {job_id}, submitted before, may still be in Slurm's queue, and {states}; once it "
                          f"has ended, delete {folder / JOB_FILE} to submit it again")
        elif job_id in states and states[job_id] not in ENDED_SLURM_STATES:
            busy[name] = f"its job {job_id}, submitted before, is {states[job_id].lower()} in Slurm's queue"
    for name, job in waiting.items():
        if job.get("launcher") == "submitit-local" and _job_process_alive(job):
            busy[name] = f"its submitit-local job (process {job['job_id']}), submitted before, is still running"
    return busy


def submit(suite: Suite, runs: list[Run], results: Path, config: LauncherConfig, *, base_dir: Path,
           wait: bool, stream: Any = None) -> dict[str, int]:
    """Submit every run that is not done as its own job; with ``wait``, wait for them all.

    Each job carries the suite as submitted; ``RESULTS/suite.json`` (what ``status`` and
    ``report`` read) is written only once the executor has taken the settings, so that a
    refused submission leaves it as it was.

    Returns:
        counts: ``submitted``, ``skipped`` (already done), ``busy`` (a job submitted before has not ended:
        :func:`still_submitted`, each said in one line) and, with ``wait``, ``done`` and ``failed``
        over the submitted runs: a submitted run that its job left unfinished (requeued, running,
        interrupted) is failed, its record saying why.
    """
    import submitit

    stream = stream or sys.stdout
    runner = SuiteRunner(suite, results, jobs=1, base_dir=base_dir, stream=stream)
    check_records(runs)  # a damaged record would read as "not done", and its run be trained again
    todo = [run for run in runs if not run.is_done()]
    counts = {"submitted": len(todo), "skipped": len(runs) - len(todo)}
    if not todo:
        results.mkdir(parents=True, exist_ok=True)
        runner._write_suite_file()
        print(f"[suite {suite.name}] all {len(runs)} runs are done", file=stream)
        return counts
    busy = still_submitted(todo)  # submitted again, two jobs would train into one run folder
    for run in todo:
        if run.name in busy:
            print(f"[suite {suite.name}] {run.name} not submitted again: {busy[run.name]}", file=stream)
    todo = [run for run in todo if run.name not in busy]
    counts.update(submitted=len(todo), busy=len(busy))
    if not todo:
        print(f"[suite {suite.name}] nothing submitted: {counts['skipped']} runs done, {len(busy)} with a job "
              f"submitted before; follow them with: memnet suite status {results}", file=stream)
        return counts
    cluster = "slurm" if config.name == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=results / JOBS_DIR, cluster=cluster)
    except RuntimeError as error:  # submitit looks for srun
        raise SuiteError(f"--launcher {config.name}: no Slurm here (submitit: {error}); run it on a cluster's "
                         "login node, or try the same jobs locally with --launcher submitit-local") from None
    parameters = config.executor_parameters()
    if config.left_out():  # a Slurm suite tried on this machine: said, not dropped unsaid
        print(f"[suite {suite.name}] {config.name} runs here and leaves out the Slurm settings: "
              f"{', '.join(config.left_out())}", file=stream)
    try:
        executor.update_parameters(name=f"memnet-{suite.name}", **parameters)
    except (ValueError, NameError) as error:  # submitit lists every valid option: keep the first line
        raise SuiteError(f"launcher: {str(error).splitlines()[0]}") from None
    results.mkdir(parents=True, exist_ok=True)
    runner._write_suite_file()
    submitted = suite.to_dict()
    # "pending" before the submission: a job starts as the batch closes (submitit-local's at once), and the state it
    # writes ("running", even "finished") must not be overwritten by this one; its job id is added after (submitted)
    before = {run.name: _job_file_text(run) for run in todo}
    for run in todo:
        write_job_file(run, launcher=config.name, state="pending", job_id=None, holder=None, job_started=None)
    jobs = []
    try:
        with executor.batch():
            for run in todo:
                jobs.append(executor.submit(SuiteJob(str(results.resolve()), run.name, str(base_dir.resolve()),
                                                     submitted)))
    except BaseException:  # not submitted: each job.json as it was
        for run in todo:
            _restore_job_file(run, before[run.name])
        raise
    for run, job in zip(todo, jobs):
        # a submitit-local job is its process: its start time, read now, tells it from a later one of the same pid
        started = _process_start(job.job_id) if config.name == "submitit-local" else None
        write_job_file(run, submitted=True, job_id=str(job.job_id), job_started=started)
        runner._event(event="submitted", run=run.name, launcher=config.name, job_id=str(job.job_id))
    busy_jobs = f", {len(busy)} with a job submitted before" if busy else ""
    print(f"[suite {suite.name}] submitted {len(todo)} jobs ({config.name}; {counts['skipped']} runs already "
          f"done{busy_jobs}); jobs in {results / JOBS_DIR}; follow with: memnet suite status {results}", file=stream)
    if wait:
        counts.update(done=0, failed=0)
        for run, job in zip(todo, jobs):
            job.wait()
            if run.is_done():
                counts["done"] += 1
                continue
            counts["failed"] += 1
            record = run.record() or {}
            if record.get("status") != "failed":  # the job ended without saying why in the run's record
                _job_failed(runner, run, _job_error(job, record))
                record = run.record() or {}
            print(f"FAILED {run.name} ({record.get('stage')}): {record.get('error')}", file=stream)
        print(f"[suite {suite.name}] jobs ended: {counts['done']} done, {counts['failed']} failed", file=stream)
    return counts


def _job_error(job: Any, record: dict[str, Any]) -> str:
    """Why a submitit job ended with its run unfinished: the exception it raised (its last
    ``SomethingError: message`` line), else the state it left the run in."""
    left = f"the run left {record.get('status') or 'not started'}"
    try:
        error = job.exception()
    except Exception as raised:  # noqa: BLE001 -- submitit could not even read the job's outcome
        error = raised
    if error is None:
        return f"the job ended without finishing its run ({left})"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*?: ", line)]
    text = named[-1] if named else f"{type(error).__name__}: {' '.join(lines[:2])}"
    return f"{text} ({left})"[:ERROR_CHARS]


def run_states(results: Path) -> list[dict[str, Any]]:
    """The state of every run of a results folder, from its files.

    States: ``pending`` (not started: submitted, or never tried; or trained, to be
    evaluated again), ``running``, ``requeued`` (stopped by a preemption or the time
    limit, waiting to resume), ``finished``, ``failed`` (with the error: of training,
    of the evaluation, or of a job that ended without finishing its run) and
    ``interrupted`` (stopped by hand; the next ``memnet suite run`` resumes it), and ``damaged``: its record
    (``metrics.json``) cannot be read, named with what is wrong (it read as "pending, not started", and the run
    as one to train anew, where ``memnet suite run`` refuses to go on).
    """
    suite = read_results_suite(results)
    events = _events(results)
    states = []
    for run in expand_runs(suite, results):
        try:
            record = run.read_record() or {}
        except SuiteError as error:
            states.append({"run": run.name, "state": "damaged", "detail": str(error), "requeues": 0, "job_id": None})
            continue
        try:
            job = json.loads((run.folder / JOB_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            job = {}
        requeues = _requeue_count(results, run.name, events)
        status = record.get("status")
        evaluation = record.get("evaluation") or {}
        if run.is_done():
            state, detail = "finished", f"{record.get('train_seconds', 0) / 60:.1f} min of training"
        elif status == "failed":
            state, detail = "failed", f"{record.get('stage', '')}: {record.get('error', '')}".strip(": ")
        elif status == "done" and evaluation.get("status") not in (None, "done"):  # recorded so by older memnet
            state, detail = "failed", f"evaluate: {evaluation.get('error') or evaluation.get('status')}"
        elif status == "done":  # evaluated otherwise than the suite asks for now
            state, detail = "pending", "trained; the next `memnet suite run` evaluates it again"
        elif status == "requeued":
            state, detail = "requeued", "resumes from last.ckpt" if record.get("resume_from") else "restarts"
        elif status in ("running", "trained"):
            state = "running"
            detail = "evaluating" if status == "trained" else (
                "resumed from last.ckpt" if record.get("resume_from") else "training")
        elif status == "interrupted":
            state, detail = "interrupted", "the next `memnet suite run` resumes it"
        else:
            state, detail = "pending", "submitted" if job.get("job_id") else "not started"
        if requeues and state != "requeued":
            detail += f"; requeued {requeues}×"
        if job.get("state") == "busy":  # that job ended at once: the run was another process's
            holder = job.get("holder") or {}
            detail += f" (job {job.get('job_id')} left it: {holder_name(holder)} held it)"
        elif job.get("job_id"):
            detail += f" (job {job['job_id']})"
        states.append({"run": run.name, "state": state, "detail": detail, "requeues": requeues,
                       "job_id": job.get("job_id")})
    return states


def render_status(states: list[dict[str, Any]]) -> str:
    """The states as a markdown table, then the count of each state."""
    lines = ["| run | state | detail |", "| --- | --- | --- |"]
    lines += [f"| {s['run']} | {s['state']} | {s['detail']} |" for s in states]
    tally: dict[str, int] = {}
    for s in states:
        tally[s["state"]] = tally.get(s["state"], 0) + 1
    lines.append("")
    lines.append(", ".join(f"{n} {state}" for state, n in tally.items()))
    return "\n".join(lines)
