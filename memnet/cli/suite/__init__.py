"""``memnet suite``: a suite of experiments × seeds, trained, evaluated, tabulated, plotted and logged.

Split by job:

    memnet.cli.suite.spec         suite files: PyYAML with line marks, every error naming file, line, experiment
    memnet.cli.suite.evaluators   how a run is evaluated by task kind, through `memnet evaluate` / `babi-table`
    memnet.cli.suite.runner       runs in their own processes, resumable, failures isolated
    memnet.cli.suite.report       leaderboard, lengths and bAbI tables, W&B (the plots: memnet.plots)
    memnet.cli.suite.command      `memnet suite run|report`

The suite-file format and the results folder are described in ``memnet.cli.suite.spec``.
"""

from memnet.cli.suite.command import evaluate_main, main
from memnet.cli.suite.errors import EvaluationUnavailable, SuiteError
from memnet.cli.suite.evaluators import EVALUATORS, Evaluator, babi_errors_from_metrics
from memnet.cli.suite.report import (
    REPORT_DIR,
    babi_rows,
    build_report,
    collect,
    leaderboard_rows,
    lengths_rows,
    load_references,
    log_to_wandb,
    render_csv,
    render_markdown,
    render_repeats_csv,
    repeats_rows,
    write_report,
)
from memnet.cli.suite.runner import RECORD_FILE, Run, SuiteRunner, expand_runs, with_overrides
from memnet.cli.suite.spec import DEFAULT_RESULTS_ROOT, Experiment, Suite, load_suite

__all__ = [
    "DEFAULT_RESULTS_ROOT", "EVALUATORS", "RECORD_FILE", "REPORT_DIR", "EvaluationUnavailable", "Evaluator",
    "Experiment", "Run", "Suite", "SuiteError", "SuiteRunner", "babi_errors_from_metrics", "babi_rows",
    "build_report", "collect", "evaluate_main", "expand_runs", "leaderboard_rows", "lengths_rows",
    "load_references", "load_suite", "log_to_wandb", "main", "render_csv", "render_markdown", "render_repeats_csv",
    "repeats_rows", "with_overrides", "write_report",
]
