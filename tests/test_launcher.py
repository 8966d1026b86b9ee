"""Suites on a cluster (memnet.cli.suite.launcher): settings, bad input, the sbatch script, a fake Slurm,
and the real thing through submitit's local executor: one job killed by a preemption signal and requeued."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from submitit.core.utils import FailedJobError, UncompletedJobError

from memnet import suite as S
from memnet.cli import main as cli_main
from memnet.cli.suite import launcher as L
from memnet.cli.suite import runner as R

ROOT = Path(__file__).resolve().parents[1]
# A tiny NTM on copy that trains for a while (epochs of 2 steps, last.ckpt after each).
TINY_RUN = {
    "seeds": [0],
    "budget": {"max_steps": 24},
    "seed_args": ["seed_everything", "data.init_args.seed"],
    "overrides": {
        "trainer.logger": False,
        "trainer.enable_model_summary": False,
        "trainer.num_sanity_val_steps": 0,
        "trainer.callbacks": [],
        "model.init_args.net.init_args.memory_size": 6,
        "model.init_args.net.init_args.word_size": 4,
        "model.init_args.net.init_args.controller.init_args.hidden_size": 5,
        "data.init_args.batch_size": 2,
        "data.init_args.batches_per_epoch": 2,
        "data.init_args.val_size": 2,
        "data.init_args.task.init_args.width": 3,
        "data.init_args.task.init_args.max_length": 3,
        "data.init_args.val_lengths": [3],
    },
}


def write_suite(path: Path, *, name: str = "cluster", launcher: dict | None = None,
                budgets: dict[str, int] | None = None) -> Path:
    experiments = [{"name": n, "configs": [str(ROOT / "configs" / "ntm" / "copy.yaml")]} for n in ("a", "b")]
    for experiment in experiments:
        if budgets and experiment["name"] in budgets:
            experiment["budget"] = {"max_steps": budgets[experiment["name"]]}
    data = {"name": name, "defaults": TINY_RUN, "experiments": experiments}
    if launcher is not None:
        data["launcher"] = launcher
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def launcher_line(path: Path) -> int:
    return path.read_text().splitlines().index("launcher:") + 1


def suite_main(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_status:
        cli_main(["suite", *argv])
    return exit_status.value.code


@pytest.mark.parametrize(("value", "expected"),
                         [(30, 30), ("45", 45), ("04:00:00", 240), ("1-02:00", 1560), ("0:01:30", 2),
                          ("30:00", 30), ("30:30", 31), ("1-02", 1560), ("2-00:00:30", 2881)])
def test_time_limits_in_minutes(value, expected):
    # read as Slurm reads --time: "30:00" is minutes:seconds (30 minutes), not 30 hours
    assert L.minutes(value, "time") == expected


def test_a_bad_time_limit_is_one_line():
    with pytest.raises(S.SuiteError, match=r"^--time: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS \(Slurm's formats\), got 'soon'$"):
        L.merge(L.LauncherConfig(), name="slurm", settings={"time": "soon"}, slurm=[])


def test_settings_from_the_suite_file_and_the_command_line(tmp_path):
    path = write_suite(tmp_path / "s.yaml", launcher={
        "name": "slurm", "partition": "gpu", "time": "02:00:00", "cpus": 4, "slurm": {"qos": "low"}})
    suite = S.load_suite(path)
    assert suite.launcher.name == "slurm" and suite.launcher.settings["partition"] == "gpu"
    merged = L.merge(suite.launcher, name=None, settings={"partition": "debug", "gpus_per_job": 2, "mem_gb": None},
                     slurm=["constraint=a100"])
    assert merged.executor_parameters() == {
        "slurm_partition": "debug", "timeout_min": 120, "cpus_per_task": 4, "gpus_per_node": 2,
        "slurm_qos": "low", "slurm_constraint": "a100"}
    local = L.merge(suite.launcher, name="submitit-local", settings={}, slurm=[])
    assert not any(key.startswith("slurm_") for key in local.executor_parameters())


def test_an_unknown_launcher_in_the_suite_file_is_one_line(tmp_path):
    path = write_suite(tmp_path / "s.yaml", launcher={"name": "pbs"})
    with pytest.raises(S.SuiteError) as error:
        S.load_suite(path)
    assert str(error.value) == (f"{path}:{launcher_line(path)}: launcher: unknown launcher 'pbs'; expected one "
                                "of local, slurm, submitit-local")


def test_an_unknown_launcher_on_the_command_line_is_refused(tmp_path, capsys):
    path = write_suite(tmp_path / "s.yaml")
    assert suite_main("run", str(path), "--launcher", "pbs") == 2
    assert "argument --launcher: invalid choice: 'pbs'" in capsys.readouterr().err


def test_a_slurm_option_submitit_does_not_know_is_one_line(tmp_path, capsys):
    path = write_suite(tmp_path / "s.yaml")
    assert suite_main("run", str(path), "--launcher", "slurm", "--slurm", "qoss=high") == 2
    assert capsys.readouterr().err.strip() == (
        "memnet suite: --slurm: 'qoss' is not a Slurm option submitit knows; did you mean qos?")
    path = write_suite(tmp_path / "t.yaml", launcher={"name": "slurm", "slurm": {"partion": "gpu"}})
    with pytest.raises(S.SuiteError, match=rf"t\.yaml:{launcher_line(path)}: launcher\.slurm: 'partion' is not "
                                           r"a Slurm option submitit knows; did you mean partition"):
        S.load_suite(path)


def test_slurm_settings_with_the_local_launcher_are_refused(tmp_path, capsys):
    path = write_suite(tmp_path / "s.yaml")
    assert suite_main("run", str(path), "--partition", "gpu") == 2
    assert "--partition applies to --launcher slurm or submitit-local" in capsys.readouterr().err


def test_slurm_without_a_cluster_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    path = write_suite(tmp_path / "s.yaml")
    assert suite_main("run", str(path), "--launcher", "slurm", "--results", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memnet suite: --launcher slurm: no Slurm here") and "\n" not in err


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``srun`` and ``sbatch`` stand-ins on PATH: sbatch keeps the script it is given and answers a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    for script in bin_dir.iterdir():
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_slurm_submits_one_array_job_per_run_with_the_settings(fake_slurm, monkeypatch, capsys):
    monkeypatch.chdir(fake_slurm)
    path = write_suite(fake_slurm / "s.yaml", launcher={"name": "slurm", "account": "proj", "array_parallelism": 1})
    assert suite_main("run", str(path), "--results", "r", "--partition", "gpu", "--time", "01:30:00",
                      "--gpus-per-job", "1", "--cpus", "6", "--mem-gb", "20", "--slurm", "qos=high") == 0
    script = (fake_slurm / "submitted.sh").read_text()
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=6", "--mem=20GB",
                 "--account=proj", "--qos=high", "--array=0-1%1", "--job-name=memnet-cluster"):
        assert f"#SBATCH {line}" in script, line
    assert "submitted 2 jobs (slurm" in capsys.readouterr().out
    states = L.run_states(fake_slurm / "r")
    assert [(s["run"], s["state"], s["job_id"]) for s in states] == [
        ("a/seed_0", "pending", "4242_0"), ("b/seed_0", "pending", "4242_1")]
    assert suite_main("status", "r") == 0
    assert "| a/seed_0 | pending | submitted (job 4242_0) |" in capsys.readouterr().out


def test_a_run_whose_slurm_job_is_still_queued_is_not_submitted_again(fake_slurm, monkeypatch, capsys):
    """`memnet suite run --launcher slurm` again while its jobs were pending or running submitted every run again:
    two jobs would train into one run folder. A run whose job squeue still lists (not ended) is said and left out;
    one whose job ended (listed as COMPLETED, or no longer listed) is submitted again; where squeue cannot answer,
    the run is not submitted again either, its job.json named."""
    monkeypatch.chdir(fake_slurm)
    path = write_suite(fake_slurm / "s.yaml", launcher={"name": "slurm"})
    squeue = fake_slurm / "bin" / "squeue"

    def answer(script: str) -> None:
        squeue.write_text(f"#!/bin/sh\n{script}\n")
        squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)

    assert suite_main("run", str(path), "--results", "r") == 0
    capsys.readouterr()
    answer('echo "4242_0 PENDING"; echo "4242_1 RUNNING"')
    (fake_slurm / "submitted.sh").unlink()
    assert suite_main("run", str(path), "--results", "r") == 0
    assert capsys.readouterr().out.splitlines() == [
        "[suite cluster] a/seed_0 not submitted again: its job 4242_0, submitted before, is pending in Slurm's queue",
        "[suite cluster] b/seed_0 not submitted again: its job 4242_1, submitted before, is running in Slurm's queue",
        ("[suite cluster] nothing submitted: 0 runs done, 2 with a job submitted before; follow them with: "
        "memnet suite status r")]
    assert not (fake_slurm / "submitted.sh").exists()
    assert len(L._events(fake_slurm / "r")) == 2  # the first two submissions only
    answer('echo "4242_1 COMPLETED"')  # a's job gone from the queue, b's ended
    assert suite_main("run", str(path), "--results", "r") == 0
    assert "submitted 2 jobs (slurm; 0 runs already done)" in capsys.readouterr().out
    answer('echo "4242_1 RUNNING"')
    (fake_slurm / "submitted.sh").unlink()
    assert suite_main("run", str(path), "--results", "r") == 0
    out = capsys.readouterr().out
    assert "b/seed_0 not submitted again: its job 4242_1, submitted before, is running" in out
    assert "submitted 1 jobs (slurm; 0 runs already done, 1 with a job submitted before)" in out
    submitted = [(e["run"], e["job_id"]) for e in L._events(fake_slurm / "r")]
    assert submitted[4:] == [("a/seed_0", "4242")]  # a alone, a job of its own
    answer('echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1')
    assert suite_main("run", str(path), "--results", "r") == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "[suite cluster] a/seed_0 not submitted again: its job 4242, submitted before, may still be in Slurm's "
        "queue, and squeue failed (exit 1: slurm_load_jobs error: Unable to contact slurm controller); once it has "
        "ended, delete r/a/seed_0/job.json to submit it again")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--cpus", "0", "--cpus must be a positive integer, got 0"),
    ("--gpus-per-job", "0", "--gpus-per-job must be a positive integer, got 0"),
    ("--array-parallelism", "-2", "--array-parallelism must be a positive integer, got -2"),
    ("--mem-gb", "-3", "--mem-gb must be a positive number of GB, got -3.0"),
    ("--mem-gb", "nan", "--mem-gb must be a positive number of GB, got nan"),
])
def test_a_bad_cluster_setting_on_the_command_line_is_refused_before_submitting(fake_slurm, monkeypatch, capsys,
                                                                                  flag, value, message):
    """The suite file's section refused these; on the command line they went to sbatch as written
    (``#SBATCH --cpus-per-task=0``, ``--mem=-3GB``) and the command exited 0."""
    monkeypatch.chdir(fake_slurm)
    path = write_suite(fake_slurm / "s.yaml")
    assert suite_main("run", str(path), "--results", "r", "--launcher", "slurm", flag, value) == 2
    assert capsys.readouterr().err.strip() == f"memnet suite: {message}"
    assert not (fake_slurm / "submitted.sh").exists() and not (fake_slurm / "r").exists()


def test_a_bad_memory_in_the_suite_file_is_refused_naming_its_line(tmp_path):
    path = write_suite(tmp_path / "s.yaml", launcher={"name": "slurm", "mem_gb": 0})
    with pytest.raises(S.SuiteError) as error:
        S.load_suite(path)
    assert str(error.value) == f"{path}:{launcher_line(path)}: launcher.mem_gb must be a positive number of GB, got 0"


@pytest.mark.parametrize("jobs, threads", [(1, "4"), (2, "2"), (8, "1")])
def test_a_run_gets_threads_for_the_cores_it_may_use_not_the_whole_node(tmp_path, monkeypatch, jobs, threads):
    """A Slurm job of --cpus 4 on a 64-core node: its affinity is 4 cores. The threads were counted from
    os.cpu_count(), 64 for a job's one run, so 64 threads contended for 4 cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {8, 9, 10, 11}, raising=False)
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    assert S.SuiteRunner(suite, tmp_path / "r", jobs=jobs, base_dir=ROOT)._env(0)["OMP_NUM_THREADS"] == threads


def test_status_and_report_of_partial_results(tmp_path, capsys):
    """A finished, a failed, a requeued and a never-started run: status names each; the report stands."""
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    suite = S.Suite(suite.name, "", suite.experiments + (replace(suite.experiments[0], name="c"),
                                                          replace(suite.experiments[0], name="d")), str(tmp_path))
    results = tmp_path / "r"
    runner = S.SuiteRunner(suite, results)
    results.mkdir()
    runner._write_suite_file()
    a, b, c, _never_started = S.expand_runs(suite, results)
    for run in (a, b, c):
        run.folder.mkdir(parents=True)
    runner._write_record(a, status="done", metrics={"val/bits_per_seq": 1.5}, train_seconds=90.0)
    runner._write_record(b, status="failed", stage="train", error="ValueError: memory_size must be positive")
    runner._write_record(c, status="requeued", requeues=1, resume_from=str(c.folder / "last.ckpt"))
    runner._event(event="requeued", run=c.name, requeues=1)
    states = {s["run"]: (s["state"], s["detail"]) for s in L.run_states(results)}
    assert states == {
        "a/seed_0": ("finished", "1.5 min of training"),
        "b/seed_0": ("failed", "train: ValueError: memory_size must be positive"),
        "c/seed_0": ("requeued", "resumes from last.ckpt"),
        "d/seed_0": ("pending", "not started"),
    }
    assert suite_main("report", str(results), "--no-wandb") == 0
    report = json.loads((results / "report" / "leaderboard.json").read_text())
    assert [(row["experiment"], row["done"], row["failed"]) for row in report["leaderboard"]] == [
        ("a", 1, 0), ("b", 0, 1), ("c", 0, 0), ("d", 0, 0)]


class FakeJob:
    """A submitted job of :class:`FakeExecutor`: ``wait`` plays ``ending`` on the run's SuiteJob."""

    def __init__(self, suite_job: L.SuiteJob, ending, job_id: str) -> None:
        self.suite_job, self.ending, self.job_id = suite_job, ending, job_id
        self.error: Exception | None = None

    def wait(self) -> None:
        if self.ending is not None:
            self.error = self.ending(self.suite_job)
            self.ending = None

    def exception(self) -> Exception | None:
        self.wait()
        return self.error


class FakeExecutor:
    """submitit's ``AutoExecutor`` without processes: it keeps the jobs it is given (``FakeExecutor.jobs``)."""

    jobs: ClassVar[list[FakeJob]] = []
    ending = None  # (SuiteJob) -> the job's exception or None: what a job does when waited for

    def __init__(self, folder: Path, cluster: str) -> None:
        self.folder = folder

    def update_parameters(self, **parameters) -> None:
        pass

    @contextlib.contextmanager
    def batch(self):
        yield

    def submit(self, suite_job: L.SuiteJob) -> FakeJob:
        job = FakeJob(pickle.loads(pickle.dumps(suite_job)), FakeExecutor.ending, f"77_{len(FakeExecutor.jobs)}")
        FakeExecutor.jobs.append(job)
        return job


def use_fake_executor(monkeypatch) -> type[FakeExecutor]:
    import submitit

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    monkeypatch.setattr(FakeExecutor, "jobs", [])
    monkeypatch.setattr(FakeExecutor, "ending", None)
    return FakeExecutor


@pytest.fixture
def fake_executor(monkeypatch):
    return use_fake_executor(monkeypatch)


def test_submitit_local_says_which_slurm_settings_it_leaves_out(tmp_path, fake_executor, capsys):
    """A Slurm suite tried here (``--launcher submitit-local``): its partition, account and ``slurm:`` options are left
    out, and said to be, not dropped unsaid."""
    path = write_suite(tmp_path / "s.yaml", launcher={
        "name": "slurm", "partition": "gpu", "cpus": 2, "slurm": {"qos": "low"}})
    suite = S.load_suite(path)
    local = L.merge(suite.launcher, name="submitit-local", settings={"account": "lab"}, slurm=["constraint=a100"])
    assert local.left_out() == ["account", "partition", "slurm constraint", "slurm qos"]
    L.submit(suite, S.expand_runs(suite, tmp_path / "r"), tmp_path / "r", local, base_dir=tmp_path, wait=False)
    assert ("submitit-local runs here and leaves out the Slurm settings: account, partition, slurm constraint, "
            "slurm qos") in capsys.readouterr().out
    assert L.merge(suite.launcher, name=None, settings={}, slurm=[]).left_out() == []  # slurm: every one kept


def test_wait_counts_only_the_submitted_runs_and_a_run_left_unfinished_fails(tmp_path, fake_executor, capsys):
    """Run a finished before; b is submitted and its job ends with the run left requeued (submitit refused
    to requeue it again): the command fails, b's record says why and keeps its training time."""
    path = write_suite(tmp_path / "s.yaml")
    results = tmp_path / "r"
    suite = S.load_suite(path)
    a, b = S.expand_runs(suite, results)
    runner = S.SuiteRunner(suite, results)
    a.folder.mkdir(parents=True)
    runner._write_record(a, status="done", metrics={"val/bits_per_seq": 1.5}, train_seconds=90.0)
    refused = "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times."

    def left_requeued(job: L.SuiteJob) -> Exception:
        run = job._run()
        for _ in range(3):
            runner._event(event="requeued", run=run.name)
        runner._write_record(run, status="requeued", requeues=3, resume_from=None, train_seconds=12.5)
        return FailedJobError(f"Job (task=0) failed during processing with trace:\n{'-' * 22}\nTraceback (most "
                              f"recent call last):\n  File \"x.py\", line 1\n{refused}\n{'-' * 22}\nYou can check")

    fake_executor.ending = left_requeued
    assert suite_main("run", str(path), "--results", str(results), "--only", "b", "--launcher",
                      "submitit-local", "--no-report", "--no-wandb") == 1
    out = capsys.readouterr().out
    assert "jobs ended: 0 done, 1 failed" in out and f"FAILED b/seed_0 (job): {refused}" in out
    record = b.record()
    assert (record["status"], record["stage"], record["train_seconds"], record["requeues"]) == (
        "failed", "job", 12.5, 3)
    assert record["error"] == f"{refused} (the run left requeued)"
    assert {s["run"]: s["state"] for s in L.run_states(results)} == {"a/seed_0": "finished", "b/seed_0": "failed"}


def _preempted_job(tmp_path: Path, monkeypatch, handler) -> tuple[L.SuiteJob, S.Run]:
    """A SuiteJob whose training (a stand-in for ``memnet fit``) gets the preemption signal after 42 s of
    training; ``handler(job)`` plays submitit's signal handler. Returns the job, called, and its run."""
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    results = tmp_path / "r"

    def run_one(self: S.SuiteRunner, run: S.Run, on_lock=None) -> tuple[str, str]:
        run.folder.mkdir(parents=True, exist_ok=True)
        self._write_record(run, status="running", train_seconds=0.0, started_at=time.time())
        os.kill(os.getpid(), signal.SIGUSR1)  # what Slurm sends before preempting or timing out a job
        while not self.stopping:
            time.sleep(0.01)
        self._write_record(run, status="interrupted", train_seconds=42.0)
        return "interrupted", f"interrupted {run.name}"

    monkeypatch.setattr(S.SuiteRunner, "run_one", run_one)
    job = L.SuiteJob(str(results), "a/seed_0", str(tmp_path), suite.to_dict())
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handler(job))
    try:
        job()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    return job, S.expand_runs(suite, results)[0]


def test_a_requeued_run_keeps_its_training_time(tmp_path, monkeypatch):
    requeued = []

    def requeue(job: L.SuiteJob) -> None:  # submitit: checkpoint, requeue, exit
        requeued.append(job.checkpoint())
        raise SystemExit(-1)

    with pytest.raises(SystemExit):
        _preempted_job(tmp_path, monkeypatch, requeue)
    record = json.loads((tmp_path / "r" / "a" / "seed_0" / S.RECORD_FILE).read_text())
    assert (record["status"], record["requeues"], record["train_seconds"]) == ("requeued", 1, 42.0)
    (delayed,) = requeued  # the job submitted again, with the suite it was submitted with
    assert delayed.function.run_name == "a/seed_0" and delayed.function.suite["name"] == "cluster"


def test_a_job_submitit_does_not_requeue_leaves_its_run_failed(tmp_path, monkeypatch):
    """After max_num_timeout timeouts submitit calls checkpoint() and then refuses to requeue."""
    def refuse(job: L.SuiteJob) -> None:
        job.checkpoint()
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    with pytest.raises(UncompletedJobError):
        _preempted_job(tmp_path, monkeypatch, refuse)
    record = json.loads((tmp_path / "r" / "a" / "seed_0" / S.RECORD_FILE).read_text())
    assert (record["status"], record["stage"], record["train_seconds"], record["requeues"]) == (
        "failed", "job", 42.0, 0)
    assert record["error"] == "UncompletedJobError: Job not requeued because: timed-out too many times."
    assert json.loads((tmp_path / "r" / "a" / "seed_0" / L.JOB_FILE).read_text())["state"] == "failed"
    assert L._requeue_count(tmp_path / "r", "a/seed_0") == 0  # the requeue submitit refused is not counted


def test_a_signal_before_the_job_waits_on_its_run_still_leaves_the_run_failed(tmp_path, monkeypatch):
    """The run's thread can get to the signal before the main thread waits on it (a busy machine: CI failed so):
    the refusal then came out of ``Thread.start``, outside the handling that marks the run failed."""
    start = threading.Thread.start

    def start_then_pause(thread: threading.Thread) -> None:
        start(thread)
        time.sleep(2.0)  # the run writes its record and signals meanwhile; the handler runs in this sleep

    def refuse(job: L.SuiteJob) -> None:
        job.checkpoint()
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    monkeypatch.setattr(threading.Thread, "start", start_then_pause)
    with pytest.raises(UncompletedJobError):
        _preempted_job(tmp_path, monkeypatch, refuse)
    record = json.loads((tmp_path / "r" / "a" / "seed_0" / S.RECORD_FILE).read_text())
    assert (record["status"], record.get("stage"), record["train_seconds"]) == ("failed", "job", 42.0)


def test_a_job_whose_run_handling_raises_leaves_its_run_failed_with_the_error(tmp_path, monkeypatch):
    """An exception of the suite's own handling in a job (here: after training started) fails the run, named, as the
    local launcher does; it ended the job's thread unsaid, the job returned normally and the run stayed "running"."""
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    results = tmp_path / "r"
    results.mkdir()
    S.SuiteRunner(suite, results)._write_suite_file()  # what `memnet suite status` reads

    def broken(self: S.SuiteRunner, run: S.Run, slot: int) -> tuple[str, str]:
        run.folder.mkdir(parents=True, exist_ok=True)
        self._write_record(run, status="running", train_seconds=0.0, started_at=time.time())
        raise KeyError("babi_error")

    monkeypatch.setattr(S.SuiteRunner, "_train_and_evaluate", broken)
    outcome = L.SuiteJob(str(results), "a/seed_0", str(tmp_path), suite.to_dict())()
    assert outcome["outcome"] == "failed"
    record = json.loads((results / "a" / "seed_0" / S.RECORD_FILE).read_text())
    assert (record["status"], record["stage"], record["error"]) == (
        "failed", "train", "memnet suite: KeyError: 'babi_error'")
    assert {s["run"]: s["state"] for s in L.run_states(results)}["a/seed_0"] == "failed"


def test_a_job_that_finds_its_run_held_leaves_it_and_says_so_in_its_job_file(tmp_path, monkeypatch):
    """A job whose run another process holds (a local `memnet suite run` at it, or another job) wrote job.json
    'running' with its own job id before it found the lock held, and ended at once: `memnet suite status` named it as
    the job training the run, and a later `suite run` asked Slurm about it, found it ended and submitted the run
    again, to be left again. Its job.json says it left the run, and to whom; a run whose lock is held is not
    submitted again; once let go, it is."""
    import fcntl

    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue: a job the run's job.json calls unended cannot be asked
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    results = tmp_path / "r"
    results.mkdir()
    runner = S.SuiteRunner(suite, results)
    runner._write_suite_file()
    run = S.expand_runs(suite, results)[0]
    run.folder.mkdir(parents=True)
    runner._write_record(run, status="running", train_seconds=0.0, started_at=time.time())  # the holder's
    L.write_job_file(run, launcher="slurm", job_id="4242_0", state="pending")  # as submit() writes it
    with open(run.folder / "suite.lock", "a+") as held:  # as another process at the run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps({"pid": 4321, "host": "node7"}))
        held.flush()
        outcome = L.SuiteJob(str(results), run.name, str(tmp_path), suite.to_dict())()
        assert outcome["outcome"] == "busy"
        job = json.loads((run.folder / L.JOB_FILE).read_text())
        assert (job["state"], job["job_id"], job["holder"]) == ("busy", "4242_0", {"pid": 4321, "host": "node7"})
        assert {s["run"]: s["detail"] for s in L.run_states(results)}["a/seed_0"] == (
            "training (job 4242_0 left it: process 4321 on node7 held it)")
        assert L.still_submitted([run]) == {"a/seed_0": (
            f"process 4321 on node7 is training or evaluating it now (it holds {run.folder / 'suite.lock'})")}
    assert L.still_submitted([run]) == {}  # let go: submitted again


@pytest.mark.parametrize(("outcome", "state"), [("done", "finished"), ("failed", "failed")])
def test_a_job_that_ends_says_so_in_its_job_file(tmp_path, monkeypatch, outcome, state):
    """A job that ended normally left its job.json 'running': Slurm's queue said otherwise, but a submitit-local job is
    judged by its process, and while that pid lived (the job's controller, or any process given the pid since) a
    later `suite run` did not submit the failed run again ('its submitit-local job (process ...) is still
    running'). The job writes 'finished' or 'failed' as it ends."""
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    results = tmp_path / "r"
    results.mkdir()
    S.SuiteRunner(suite, results)._write_suite_file()
    run = S.expand_runs(suite, results)[0]
    # as submit() writes it; the pid a live process's (this one's), as the job's controller is just after its end
    L.write_job_file(run, launcher="submitit-local", job_id=str(os.getpid()), state="pending")

    def trained(self: S.SuiteRunner, run: S.Run, slot: int) -> tuple[str, str]:
        self._write_record(run, status="done" if outcome == "done" else "failed", stage="train")
        return outcome, f"{outcome} {run.name}"

    monkeypatch.setattr(S.SuiteRunner, "_train_and_evaluate", trained)
    assert L.SuiteJob(str(results), run.name, str(tmp_path), suite.to_dict())()["outcome"] == outcome
    assert json.loads((run.folder / L.JOB_FILE).read_text())["state"] == state
    assert L.still_submitted([run]) == {}  # a failed run is submitted again


def test_a_submitit_local_job_is_told_from_a_later_process_of_its_pid(tmp_path, fake_executor, monkeypatch, capsys):
    """A submitit-local job was judged alive by its pid alone: one killed without a word (no 'failed' in its
    job.json), its pid given since to another process, kept its run from being submitted again for as long as that
    process lived. submit() records the job process's start (/proc/<pid>/stat), and a process of that pid that
    started otherwise is not the job."""
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    results = tmp_path / "r"
    runs = S.expand_runs(suite, results, ["a"])
    mine = str(os.getpid())  # a live process: this one stands for the job's
    submit = FakeExecutor.submit
    monkeypatch.setattr(FakeExecutor, "submit", lambda self, suite_job: replace_job_id(submit(self, suite_job), mine))
    local = L.merge(suite.launcher or L.LauncherConfig(), name="submitit-local", settings={}, slurm=[])
    L.submit(suite, runs, results, local, base_dir=tmp_path, wait=False)
    job_file = runs[0].folder / L.JOB_FILE
    job = json.loads(job_file.read_text())
    assert (job["job_id"], job["state"], job["job_started"]) == (mine, "pending", L._process_start(mine))
    assert L.still_submitted(runs) == {"a/seed_0": (
        f"its submitit-local job (process {mine}), submitted before, is still running")}
    job["job_started"] = str(int(job["job_started"]) - 1)  # the job's process started before this one of its pid
    job_file.write_text(json.dumps(job))
    assert L.still_submitted(runs) == {}


def test_a_job_that_writes_its_state_during_submission_keeps_it(tmp_path, fake_executor, monkeypatch):
    """submit() wrote each run's job.json 'pending' after executor.batch() returned, when submitit-local's jobs had
    started (batch() starts them as it closes): a job fast enough to have written 'running', or even 'finished',
    was marked pending again, and a later `suite run` took it for a job still waiting. job.json is written 'pending'
    before the submission and gets its job id after it; a state its job wrote meanwhile stays."""
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    results = tmp_path / "r"
    a, b = S.expand_runs(suite, results)
    seen = {}

    @contextlib.contextmanager
    def batch(self):
        yield
        seen.update({run.name: json.loads((run.folder / L.JOB_FILE).read_text())["state"] for run in (a, b)})
        # submitit submits the jobs as the batch closes; they start before it returns: a's trains, b's has ended
        L.write_job_file(a, state="running", holder=None, job_id=FakeExecutor.jobs[0].job_id, pid=9001)
        L.write_job_file(b, state="finished", job_id=FakeExecutor.jobs[1].job_id, pid=9002)

    monkeypatch.setattr(FakeExecutor, "batch", batch)
    local = L.merge(suite.launcher or L.LauncherConfig(), name="submitit-local", settings={}, slurm=[])
    assert L.submit(suite, [a, b], results, local, base_dir=tmp_path, wait=False)["submitted"] == 2
    assert seen == {"a/seed_0": "pending", "b/seed_0": "pending"}  # written before the jobs were submitted
    jobs = {run.name: json.loads((run.folder / L.JOB_FILE).read_text()) for run in (a, b)}
    assert {name: (job["state"], job["job_id"], job["pid"], job["launcher"]) for name, job in jobs.items()} == {
        "a/seed_0": ("running", "77_0", 9001, "submitit-local"),
        "b/seed_0": ("finished", "77_1", 9002, "submitit-local")}

    @contextlib.contextmanager
    def refused(self):
        yield
        raise RuntimeError("sbatch: error: Batch job submission failed")

    monkeypatch.setattr(FakeExecutor, "batch", refused)
    job_file = a.folder / L.JOB_FILE
    before = job_file.read_text()
    with pytest.raises(RuntimeError, match="submission failed"):
        L.submit(suite, [a, b], results, L.merge(local, name="slurm", settings={}, slurm=[]), base_dir=tmp_path,
                 wait=False)
    assert job_file.read_text() == before  # a refused submission leaves each job.json as it was


def test_the_submitters_job_id_waits_for_a_job_writing_its_job_file(tmp_path):
    """The submitter's job id, added after the submission, was read-modify-written unguarded: a job writing its
    state between the submitter's reading and writing lost it. Both write job.json under job.lock."""
    import fcntl

    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    run = S.expand_runs(suite, tmp_path / "r")[0]
    L.write_job_file(run, launcher="slurm", state="pending")  # as submit() writes it before submitting
    with open(run.folder / L.JOB_LOCK_FILE, "a") as held:  # the job, between its reading and its writing
        fcntl.flock(held, fcntl.LOCK_EX)
        submitter = threading.Thread(target=L.write_job_file, args=(run,),
                                     kwargs={"submitted": True, "job_id": "4242_0"})
        submitter.start()
        submitter.join(timeout=0.5)
        assert submitter.is_alive()  # waits for the job's writing
        job = json.loads((run.folder / L.JOB_FILE).read_text())
        (run.folder / L.JOB_FILE).write_text(json.dumps({**job, "state": "running", "pid": 9001}))
    submitter.join(timeout=10)
    job = json.loads((run.folder / L.JOB_FILE).read_text())
    assert (job["state"], job["job_id"], job["pid"], job["launcher"]) == ("running", "4242_0", 9001, "slurm")


def test_a_signal_while_the_job_writes_its_job_file_does_not_hang(tmp_path, monkeypatch):
    """The job's signal handler (checkpoint(): preemption, the time limit) writes job.json in the main thread, which
    may be inside write_job_file, holding job.lock, that instant: its flock on a new handle of the same file waited
    for the first, the same process's, for ever. job.lock is re-entrant within a thread; another process still
    waits for it, and another thread of this process too."""
    import subprocess
    import sys

    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    run = S.expand_runs(suite, tmp_path / "r")[0]
    L.write_job_file(run, state="running", holder=None)
    lock_file = run.folder / L.JOB_LOCK_FILE
    probe = ("import fcntl, sys\nwith open(sys.argv[1], 'a') as f:\n    try:\n        fcntl.flock(f, fcntl.LOCK_EX | "
             "fcntl.LOCK_NB)\n    except BlockingIOError:\n        sys.exit(3)\n")

    def another_process_gets_it() -> bool:
        return subprocess.run([sys.executable, "-c", probe, str(lock_file)], check=False,
                              timeout=60).returncode == 0

    write = L.write_text_atomic
    seen = {}

    def signalled(path, text):  # the handler's path, run as the outer write holds job.lock
        monkeypatch.setattr(L, "write_text_atomic", write)
        L.write_job_file(run, state="requeued")
        seen["excluded"] = not another_process_gets_it()
        other = threading.Thread(target=L.write_job_file, args=(run,), kwargs={"other": 1}, daemon=True)
        other.start()
        other.join(timeout=0.5)
        seen["other thread waits"] = other.is_alive()
        seen["other"] = other
        write(path, text)

    monkeypatch.setattr(L, "write_text_atomic", signalled)
    job = threading.Thread(target=L.write_job_file, args=(run,), kwargs={"state": "finished"}, daemon=True)
    job.start()
    job.join(timeout=20)
    assert not job.is_alive()  # was: blocked on its own flock for ever
    seen["other"].join(timeout=20)
    assert not seen["other"].is_alive()
    assert (seen["excluded"], seen["other thread waits"]) == (True, True)
    assert json.loads((run.folder / L.JOB_FILE).read_text())["other"] == 1
    assert another_process_gets_it()  # released with the outer call


def replace_job_id(job: FakeJob, job_id: str) -> FakeJob:
    job.job_id = job_id
    return job


def test_a_run_lock_that_cannot_be_taken_is_said_once(tmp_path, monkeypatch):
    """On a filesystem without flock (a Lustre mount without its flock option: OSError) no lock was held, unsaid:
    the runs went on unguarded against a second memnet suite. They still go on, and one warning line says why."""
    import errno
    import fcntl
    import io

    def no_flock(handle, operation) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(S.SuiteRunner, "_train_and_evaluate", lambda self, run, slot: ("done", f"done {run.name}"))
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    results = tmp_path / "r"
    stream = io.StringIO()
    counts = S.SuiteRunner(suite, results, stream=stream).run(S.expand_runs(suite, results))
    assert counts["done"] == 2
    warnings = [line for line in stream.getvalue().splitlines() if "warning" in line]
    assert warnings == [  # a's, the first run's: b's alike is not said again
        (f"[suite cluster] warning: {results / 'a' / 'seed_0' / 'suite.lock'}: no lock taken (flock: OSError: [Errno "
         f"{errno.ENOSYS}] Function not implemented; the filesystem does not support it): another memnet suite or "
         "job at this run would not be kept off it")]


def test_a_run_that_starts_while_its_lock_is_checked_is_not_left(tmp_path, monkeypatch):
    """lock_holder() (`suite run --dry-run`, a cluster launcher's submission) tests a run's lock by taking it
    shared for an instant: a run starting in that instant found it taken and left the run 'busy', naming the lock's
    last holder, a process long ended ('skipped a/seed_0: another memnet suite (process 4321 on node7) ...'). A run
    that finds its lock held shared only (a check; a holder holds it exclusive) tries again; a holder still keeps it
    off (test_a_job_that_finds_its_run_held_leaves_it_and_says_so_in_its_job_file)."""
    import fcntl

    for name in JOB_ENV:  # not in a job: the lock names no job
        monkeypatch.delenv(name, raising=False)
    suite = S.load_suite(write_suite(tmp_path / "s.yaml"))
    run = S.expand_runs(suite, tmp_path / "r")[0]
    run.folder.mkdir(parents=True)
    (run.folder / "suite.lock").write_text(json.dumps({"pid": 4321, "host": "node7"}) + "\n")  # its last holder
    flock, checker, tries = fcntl.flock, [], []

    def checked_meanwhile(handle, operation) -> None:
        if operation == fcntl.LOCK_EX | fcntl.LOCK_NB:
            tries.append(operation)
            if len(tries) == 1:  # the run's first try: lock_holder holds the lock shared at this very moment
                checker.append(open(run.folder / "suite.lock"))  # noqa: SIM115 -- closed below
                flock(checker[0], fcntl.LOCK_SH | fcntl.LOCK_NB)
            elif checker:  # the check is over: it lets go
                checker.pop().close()
        return flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", checked_meanwhile)
    monkeypatch.setattr(S.SuiteRunner, "_train_and_evaluate", lambda self, run, slot: ("done", f"done {run.name}"))
    outcome, message = S.SuiteRunner(suite, tmp_path / "r").run_one(run)
    assert (outcome, message, len(tries)) == ("done", "done a/seed_0", 2)
    assert json.loads((run.folder / "suite.lock").read_text()) == {"pid": os.getpid(), "host": os.uname().nodename}
    monkeypatch.setattr(R, "LOCK_CHECK_SECONDS", 0.05)
    with open(run.folder / "suite.lock") as stuck:  # held shared without end (no check does): not waited for ever
        flock(stuck, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert S.SuiteRunner(suite, tmp_path / "r").run_one(run)[0] == "busy"


JOB_ENV = ("SUBMITIT_LOCAL_JOB_ID", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


@pytest.mark.parametrize(("env", "job_id"), [
    ({"SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"}, "4242_3"),  # an array's
    ({"SLURM_JOB_ID": "4250"}, "4250"),
    ({"SUBMITIT_LOCAL_JOB_ID": "31337", "SLURM_JOB_ID": "4250"}, "31337"),  # submitit-local, in an allocation
    ({}, None),  # no job: pid and host alone, as before
])
def test_a_runs_lock_records_the_job_that_holds_it(tmp_path, monkeypatch, env, job_id):
    """A run's suite.lock recorded its holder's pid and host only: a run held by a cluster job was named 'process
    4321 on node7', not by the job id squeue and scancel know. The process records its job's id (as job.json names
    jobs: submitit-local's, else Slurm's array task, else Slurm's job) where it runs in one."""
    for name in JOB_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    folder = tmp_path / "run"
    with R.run_lock(folder) as holder:
        assert holder is None
        assert L.lock_holder(folder) == {"pid": os.getpid(), "host": os.uname().nodename,
                                         **({"job_id": job_id} if job_id else {})}


def test_the_job_holding_a_run_is_named_where_its_holder_is(fake_slurm, monkeypatch, capsys):
    """`--dry-run`, a run left to its holder, a submission and `suite status` named the holder 'process 4321 on
    node7'; held by a job, they name the job too."""
    import fcntl

    monkeypatch.chdir(fake_slurm)
    path = write_suite(fake_slurm / "s.yaml")
    suite = S.load_suite(path)
    results = fake_slurm / "r"
    a = S.expand_runs(suite, results)[0]
    a.folder.mkdir(parents=True)
    lock = Path("r/a/seed_0/suite.lock")
    with open(a.folder / "suite.lock", "a+") as held:  # as a job at the run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps({"pid": 4321, "host": "node7", "job_id": "4242_0"}))
        held.flush()
        assert suite_main("run", str(path), "--results", "r", "--dry-run") == 0
        assert capsys.readouterr().out.splitlines()[0] == (
            "[busy] a/seed_0: another memnet suite (process 4321 on node7 of job 4242_0) is training or evaluating it "
            f"now (it holds {lock}); it is skipped")
        assert suite_main("run", str(path), "--results", "r", "--dry-run", "--launcher", "slurm") == 0
        assert capsys.readouterr().out.splitlines()[0] == (
            f"[busy] a/seed_0: not submitted again: process 4321 on node7 of job 4242_0 is training or evaluating it "
            f"now (it holds {lock})")
        S.SuiteRunner(suite, results)._write_suite_file()
        L.write_job_file(a, launcher="slurm", job_id="4243_0", state="pending")  # a job that will find it held
        assert L.SuiteJob(str(results), a.name, str(fake_slurm), suite.to_dict())()["message"] == (
            f"skipped a/seed_0: another memnet suite (process 4321 on node7 of job 4242_0) is training or evaluating "
            f"it now (it holds {results / lock.relative_to('r')}); not run here")
        assert L.run_states(results)[0]["detail"] == (
            "submitted (job 4243_0 left it: process 4321 on node7 of job 4242_0 held it)")


def test_the_dry_run_shows_a_run_another_process_or_job_is_at(fake_slurm, monkeypatch, capsys):
    """`suite run --dry-run` printed '[train] a/seed_0: memnet fit ...' for a run another memnet suite held, which the
    run itself skips, and with --launcher slurm for a run whose job is still queued, which submit leaves out."""
    import fcntl

    monkeypatch.chdir(fake_slurm)
    path = write_suite(fake_slurm / "s.yaml")
    suite = S.load_suite(path)
    a, b = S.expand_runs(suite, fake_slurm / "r")
    b.folder.mkdir(parents=True)
    L.write_job_file(b, launcher="slurm", job_id="4242_1", state="pending")
    squeue = fake_slurm / "bin" / "squeue"
    squeue.write_text('#!/bin/sh\necho "4242_1 PENDING"\n')
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    a.folder.mkdir(parents=True)
    with open(a.folder / "suite.lock", "a+") as held:  # as another process at the run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps({"pid": 4321, "host": "node7"}))
        held.flush()
        busy_a = (f"[busy] a/seed_0: another memnet suite (process 4321 on node7) is training or evaluating it now "
                  f"(it holds {Path('r/a/seed_0/suite.lock')}); it is skipped")
        assert suite_main("run", str(path), "--results", "r", "--dry-run") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == busy_a and lines[1].startswith("[train] b/seed_0: memnet fit ")
        assert suite_main("run", str(path), "--results", "r", "--dry-run", "--launcher", "slurm") == 0
        assert capsys.readouterr().out.splitlines() == [
            (f"[busy] a/seed_0: not submitted again: process 4321 on node7 is training or evaluating it now (it "
             f"holds {Path('r/a/seed_0/suite.lock')})"),
            ("[busy] b/seed_0: not submitted again: its job 4242_1, submitted before, is pending in Slurm's "
             "queue")]
    assert suite_main("run", str(path), "--results", "r", "--dry-run") == 0  # let go: a is trained
    assert capsys.readouterr().out.splitlines()[0].startswith("[train] a/seed_0: memnet fit ")


def test_a_pending_job_trains_the_suite_it_was_submitted_with(tmp_path, monkeypatch):
    """A second submission to the same results folder, or a refused one, does not change a pending job's suite."""
    path = write_suite(tmp_path / "s.yaml")
    results = tmp_path / "r"
    hidden = "model.init_args.net.init_args.controller.init_args.hidden_size"
    with monkeypatch.context() as no_slurm:
        no_slurm.setenv("PATH", str(tmp_path))  # no srun: --launcher slurm is refused
        assert suite_main("run", str(path), "--results", str(results), "--only", "a", "--launcher", "slurm",
                          "--set", f"{hidden}=16") == 2
    assert not (results / "suite.json").exists()  # a refused submission writes nothing
    use_fake_executor(monkeypatch)
    assert suite_main("run", str(path), "--results", str(results), "--only", "a", "--launcher", "slurm",
                      "--set", f"{hidden}=16") == 0
    assert suite_main("run", str(path), "--results", str(results), "--only", "b", "--launcher", "slurm") == 0
    first, _second = FakeExecutor.jobs
    assert json.loads((results / "suite.json").read_text())["experiments"][0]["overrides"][hidden] == 5
    assert first.suite_job._run().experiment.overrides[hidden] == 16


@pytest.mark.parametrize("name", ["slurm", "submitit-local"])
def test_jobs_is_refused_with_the_cluster_launchers(tmp_path, capsys, name):
    path = write_suite(tmp_path / "s.yaml")
    assert suite_main("run", str(path), "--launcher", name, "--jobs", "2", "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"memnet suite: --jobs 2 applies to the local launcher, not to --launcher {name}: ")
    assert ("--array-parallelism" in err) == (name == "slurm")


def test_the_local_launcher_takes_gpus_per_job_from_the_suite_file(tmp_path, monkeypatch, capsys):
    """launcher.gpus_per_job of the suite file, unless --gpus-per-job says otherwise; in the dry run too."""
    seen: list[str | None] = []

    def process(self: S.SuiteRunner, argv: list[str], log: Path, slot: int) -> int:
        seen.append(self._env(slot).get("CUDA_VISIBLE_DEVICES"))
        return 1  # no training: the run fails at once

    monkeypatch.setattr(S.SuiteRunner, "_process", process)
    path = write_suite(tmp_path / "s.yaml", launcher={"name": "local", "gpus_per_job": 1})
    results = str(tmp_path / "r")
    assert suite_main("run", str(path), "--results", results, "--jobs", "2", "--dry-run") == 0
    assert "[local] 2 at once, 1 GPU(s) per run (slot 0: CUDA_VISIBLE_DEVICES=0; slot 1: CUDA_VISIBLE_DEVICES=1)" in (
        capsys.readouterr().out)
    assert suite_main("run", str(path), "--results", results, "--jobs", "2", "--no-report") == 1
    assert len(seen) == 2 and set(seen) <= {"0", "1"}
    seen.clear()
    assert suite_main("run", str(path), "--results", results, "--jobs", "2", "--gpus-per-job", "2",
                      "--no-report") == 1
    assert len(seen) == 2 and set(seen) <= {"0,1", "2,3"}
    bad = write_suite(tmp_path / "bad.yaml", launcher={"name": "local", "gpus_per_job": 0})
    with pytest.raises(S.SuiteError, match=rf"bad\.yaml:{launcher_line(bad)}: launcher\.gpus_per_job must be a "
                                           r"positive integer, got 0$"):
        S.load_suite(bad)


def _wait_for(predicate, seconds: float, what: str, submitter: threading.Thread, results: Path) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if not submitter.is_alive():
            raise AssertionError(f"memnet suite run ended before {what}:\n{L.render_status(L.run_states(results))}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {seconds:.0f} s")
        time.sleep(0.2)


@pytest.mark.timeout(600)  # three training processes and two jobs: about 20 s on the quiet 2-core VM, 35 s under load
def test_submitit_local_jobs_one_preempted_requeued_and_resumed(tmp_path, monkeypatch, capsys):
    """Two runs as two real submitit jobs (local executor, the Slurm code path); one gets the preemption
    signal mid-training, is requeued, resumes from its last.ckpt; the report then has both."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # Run a trains long enough (a second or more) for the signal to land mid-training; a signal that lands
    # after its last checkpoint but before its summary is also a finished run (test_run_folders.py).
    path = write_suite(tmp_path / "s.yaml", budgets={"a": 160})
    results = tmp_path / "r"
    exit_code: list[int] = []
    submitter = threading.Thread(target=lambda: exit_code.append(suite_main(
        "run", str(path), "--results", str(results), "--launcher", "submitit-local", "--time", "20",
        "--no-wandb")))
    submitter.start()
    checkpoint = results / "a" / "seed_0" / "checkpoints" / "last.ckpt"
    job_file = results / "a" / "seed_0" / L.JOB_FILE
    _wait_for(checkpoint.is_file, 300, "run a's first last.ckpt", submitter, results)
    job = json.loads(job_file.read_text())
    assert job["state"] == "running"
    os.kill(job["pid"], signal.SIGUSR2)  # what Slurm sends before preempting or timing out a job
    _wait_for(lambda: json.loads(job_file.read_text())["pid"] != job["pid"], 120, "the requeued job", submitter, results)
    submitter.join(timeout=400)
    assert not submitter.is_alive() and exit_code == [0], L.render_status(L.run_states(results))

    events = [json.loads(line) for line in (results / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start" and e["run"] == "a/seed_0"]
    assert [e["event"] for e in events if e["run"] == "a/seed_0"].count("requeued") == 1
    assert len(starts) == 2 and starts[0]["resume_from"] is None
    assert starts[1]["resume_from"] == "a/seed_0/checkpoints/last.ckpt"  # the requeued job resumed, relative to r
    assert "Restoring states from the checkpoint" in (results / "a" / "seed_0" / "train.log").read_text()
    states = {s["run"]: (s["state"], s["requeues"]) for s in L.run_states(results)}
    assert states == {"a/seed_0": ("finished", 1), "b/seed_0": ("finished", 0)}
    report = json.loads((results / "report" / "leaderboard.json").read_text())
    assert [(row["experiment"], row["done"], row["failed"]) for row in report["leaderboard"]] == [
        ("a", 1, 0), ("b", 1, 0)]
    assert "submitted 2 jobs (submitit-local" in capsys.readouterr().out
