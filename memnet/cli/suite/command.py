"""``memnet suite run|status|report|ensemble``: the suite's command line.

    memnet suite run configs/suites/algorithmic.yaml --jobs 2     train every run, evaluate, report
    memnet suite run SUITE --launcher slurm --partition gpu ...   one Slurm job per run (launcher.py)
    memnet suite status runs/suites/algorithmic                   each run: pending, running, finished, ...
    memnet suite report runs/suites/algorithmic                   the leaderboard from what is on disk
    memnet suite ensemble runs/suites/babi-1k --only memn2n       a bAbI experiment's seeds answering together
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from memnet.cli.rebuild import run_stage
from memnet.cli.suite import launcher
from memnet.cli.suite.ensemble import make_ensembles
from memnet.cli.suite.errors import SuiteError
from memnet.cli.suite.report import REPORT_DIR, log_to_wandb, render_markdown, write_report
from memnet.cli.suite.runner import (
    SuiteRunner,
    check_fit_arguments,
    check_records,
    check_results_suite,
    expand_runs,
    not_in_suite_note,
    runs_not_in_suite,
    with_overrides,
)
from memnet.cli.suite.spec import load_suite, read_results_suite
from memnet.cli.typos import CommandParser
from memnet.metrics import task_errors
from memnet.utils import wandb_mode, write_text_atomic


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
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
    run.add_argument("--jobs", type=int, default=1,
                     help="runs at once on this machine (default 1), with the local launcher only: "
                     "the slurm launcher's is --array-parallelism, and submitit-local starts every job at once")
    run.add_argument(
        "--gpus-per-job",
        type=int,
        default=None,
        help="GPUs per run: its own through CUDA_VISIBLE_DEVICES locally, --gpus-per-node of its job on Slurm "
        "(default: the suite file's launcher.gpus_per_job)",
    )
    run.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="run only these experiments")
    run.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="run only these of the suite's seeds (e.g. one seed still missing); the report still covers every seed done",
    )
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
    cluster = run.add_argument_group("cluster", "one job per run through submitit (memnet.cli.suite.launcher); "
                                     "also from a 'launcher:' section of the suite file")
    cluster.add_argument("--launcher", choices=launcher.LAUNCHERS, default=None,
                         help="local (default: this machine, --jobs at a time), slurm, or submitit-local "
                         "(the Slurm code path as local subprocesses)")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--time", help="time limit per job, as Slurm reads it: minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]] (default 04:00:00)")
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
                                 "failed (with the error), requeued, damaged (an unreadable record, named)")
    status.add_argument("results", help="results folder written by `memnet suite run`")
    report = commands.add_parser("report", help="leaderboard, tables and plots of a results folder")
    report.add_argument("results", help="results folder written by `memnet suite run`")
    report.add_argument("--out", help="where the report goes (default RESULTS/report)")
    report.add_argument("--no-wandb", action="store_true", help="do not log the summary run to W&B")
    ensemble = commands.add_parser(
        "ensemble", help="test each bAbI experiment's seeds together (answer probabilities averaged), "
        "then the report with that column")
    ensemble.add_argument("results", help="results folder written by `memnet suite run`")
    ensemble.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="these experiments only")
    ensemble.add_argument("--out", help="where the report goes (default RESULTS/report)")
    ensemble.add_argument("--no-wandb", action="store_true", help="do not log the summary run to W&B")
    return parser


def _report(results: Path, out: str | None, wandb_on: bool) -> None:
    report = write_report(results, out)
    folder = Path(out) if out else results / REPORT_DIR
    print(render_markdown(report))
    print(
        f"report written to {folder} (leaderboard.md, leaderboard.csv, leaderboard.json"
        + (", repeats.csv" if report.get("repeats") else "")
        + "".join(f", {p.name}" for p in sorted(folder.glob("*.png")))
        + ")"
    )
    if wandb_on and wandb_mode() == "disabled":  # W&B hands out a stand-in run whose folder is never written
        print("W&B summary run not logged: WANDB_MODE=disabled")
    elif wandb_on:
        try:
            where = log_to_wandb(report, results, folder)
            print(f"W&B summary run: {where}")
        except Exception as error:  # noqa: BLE001 - the report on disk stands without W&B
            print(f"W&B summary run not logged: {type(error).__name__}: {error}", file=sys.stderr)


def _report_after_run(results: Path, wandb_on: bool) -> None:
    """The report at the end of ``suite run``, which covers every run of the results folder: one it cannot be made
    of (another experiment's damaged record, with ``--only``) is a warning line, not a failure of the runs just
    judged; the exit status is theirs, and ``memnet suite report`` makes the report once the record is mended."""
    try:
        _report(results, None, wandb_on)
    except SuiteError as error:
        print(f"memnet suite: warning: report not written: {error}", file=sys.stderr)


def _ensembles(results: Path, experiments: list[str]) -> bool:
    """The ensembles the suite file asks for (``evaluate.ensemble``) of the experiments just run; True if one failed
    (the runs stand; the message says which and why, and ``memnet suite ensemble`` makes it again)."""
    try:
        for path in make_ensembles(results, sorted(set(experiments)), flagged=True):
            print(f"[ensemble] written {path}")
    except SuiteError as error:
        print(f"memnet suite: ensemble not made: {error}", file=sys.stderr)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    """``memnet suite run|status|report|ensemble``; returns the exit status (1 if a run failed or the input is bad)."""
    if argv and argv[0] == "_evaluate":  # the runner's evaluation of a bAbI run on a split
        return evaluate_main(list(argv[1:]))
    args = _parser().parse_args(argv)
    try:
        out = getattr(args, "out", None)
        if out is not None and Path(out).exists() and not Path(out).is_dir():  # before the ensembles are made
            raise SuiteError(f"--out: {out} is a file, not a folder; give --out a folder (it is made if missing)")
        if args.command == "report":
            _report(Path(args.results), args.out, not args.no_wandb)
            return 0
        if args.command == "ensemble":
            for path in make_ensembles(Path(args.results), args.only):
                print(f"[ensemble] written {path}")
            _report(Path(args.results), args.out, not args.no_wandb)
            return 0
        if args.command == "status":
            print(launcher.render_status(launcher.run_states(Path(args.results))))
            unlisted = runs_not_in_suite(read_results_suite(args.results), Path(args.results))
            if unlisted:
                print(not_in_suite_note(unlisted))
            return 0
        suite = with_overrides(load_suite(args.suite), args.overrides)
        results = Path(args.results) if args.results else suite.default_results()
        runs = expand_runs(suite, results, args.only, args.seeds)
        check_results_suite(suite, results)  # another suite's folder: refused before anything is written
        check_records(runs)  # before anything is written or submitted (a damaged record reads as "not done")
        settings = {key: getattr(args, key) for key in launcher.SETTINGS if key != "gpus_per_job"}
        settings["gpus_per_job"] = args.gpus_per_job
        chosen = launcher.merge(suite.launcher or launcher.LauncherConfig(), name=args.launcher,
                                settings=settings, slurm=args.slurm)
        if chosen.name != "local" and args.jobs != 1:
            instead = ("limit the jobs running at once with --array-parallelism" if chosen.name == "slurm"
                       else "it starts every job at once; use --launcher local --jobs N to run N at once")
            raise SuiteError(f"--jobs {args.jobs} applies to the local launcher, not to --launcher {chosen.name}: "
                             f"{instead}")
        if chosen.name != "local" and not args.dry_run:
            counts = launcher.submit(suite, runs, results, chosen, base_dir=Path.cwd(),
                                     wait=args.wait or chosen.name == "submitit-local")
            waited = args.wait or chosen.name == "submitit-local"
            ensemble_failed = waited and _ensembles(results, [run.experiment.name for run in runs])
            if "done" in counts and not args.no_report:
                _report_after_run(results, not args.no_wandb)
            return 1 if counts.get("failed") or ensemble_failed else 0
        # the command line's --gpus-per-job, else the suite file's launcher.gpus_per_job (merged above)
        gpus_per_job = (chosen.settings or {}).get("gpus_per_job")
        runner = SuiteRunner(suite, results, jobs=args.jobs, gpus_per_job=gpus_per_job)
        if args.dry_run:
            check_fit_arguments(runs, runner.base)
            if chosen.name == "local" and gpus_per_job:
                slots = "; ".join(f"slot {slot}: CUDA_VISIBLE_DEVICES={runner._env(slot)['CUDA_VISIBLE_DEVICES']}"
                                  for slot in range(args.jobs))
                print(f"[local] {args.jobs} at once, {gpus_per_job} GPU(s) per run ({slots})")
            # a cluster launcher leaves out a run whose job, submitted before, has not ended (launcher.submit)
            submitted = launcher.still_submitted([run for run in runs if not run.is_done()]) if (
                chosen.name != "local") else {}
            for run in runs:
                if run.name in submitted:
                    print(f"[busy] {run.name}: not submitted again: {submitted[run.name]}")
                    continue
                what, command = runner.plan(run)
                print(f"[{what}] {run.name}: {command}")
            return 0
        counts = runner.run(runs)
        evaluated = f"{counts['evaluated']} only evaluated now (trained before), " if counts["evaluated"] else ""
        print(
            f"[suite {suite.name}] finished: {counts['done']} trained now, {evaluated}{counts['skipped']} "
            f"already done, {counts['failed']} failed"
            + (f", {counts['busy']} left to the other memnet suite at them" if counts["busy"] else "")
        )
        ensemble_failed = _ensembles(results, [run.experiment.name for run in runs])
        if not args.no_report:
            _report_after_run(results, not args.no_wandb)
        return 1 if counts["failed"] or ensemble_failed else 0
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


def evaluate_main(argv: list[str]) -> int:
    """``memnet suite _evaluate test|validate --config C --ckpt_path P --name N --out J`` (the runner's).

    Runs ``memnet test`` (or ``validate``) on a checkpoint (``memnet.cli.rebuild.run_stage``)
    and writes its per-task errors as ``memnet babi-table --json`` does: ``{N: {task: error %}}``.
    """
    parser = CommandParser(prog="memnet suite _evaluate")
    parser.add_argument("stage", choices=["test", "validate"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--name", required=True, help="the column (the experiment's name)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logged = run_stage(args.stage, args.ckpt_path, args.config)
    errors = task_errors(logged, "test" if args.stage == "test" else "val")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps({args.name: errors}, indent=2, sort_keys=True))  # never half a file
    return 0
