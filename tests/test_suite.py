"""memnet.cli.suite (memnet suite): suite files, running (resumable, failures isolated), reports, references."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from memnet.cli import main as cli_main
from memnet.cli import suite as S
from memnet.cli.suite import command as command_module
from memnet.cli.suite import evaluators, launcher

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _checkout_latest_run_kept():
    """The suites here run from the repository root (their configs are relative to it), so every training run
    rewrites ``runs/latest.json`` there: put back what a developer's checkout had (``--ckpt_path latest``)."""
    latest = ROOT / "runs" / "latest.json"
    kept = latest.read_bytes() if latest.is_file() else None
    yield
    if kept is not None:
        latest.write_bytes(kept)
    else:
        latest.unlink(missing_ok=True)

# Tiny sizes: every run trains 4 steps of batch 3 on copy sequences of length ≤ 3.
TINY_DEFAULTS = {
    "seeds": 2,
    "budget": {"max_steps": 4},
    "seed_args": ["seed_everything", "data.init_args.seed"],
    "overrides": {
        "trainer.logger": False,
        "trainer.enable_model_summary": False,
        "trainer.num_sanity_val_steps": 0,
        "trainer.callbacks": [],
        "data.init_args.batch_size": 3,
        "data.init_args.batches_per_epoch": 2,
        "data.init_args.val_size": 3,
        "data.init_args.task.init_args.width": 5,
        "data.init_args.task.init_args.max_length": 3,
        "data.init_args.val_lengths": [3],
    },
}
NTM = {
    "name": "ntm-copy",
    "configs": ["configs/ntm/copy.yaml"],
    "overrides": {
        "model.init_args.net.init_args.memory_size": 7,
        "model.init_args.net.init_args.word_size": 4,
        "model.init_args.net.init_args.controller.init_args.hidden_size": 6,
    },
    # length generalisation through `memnet evaluate`: trained on lengths 1-3, tested at 3 and 6
    "evaluate": {"kind": "algorithmic", "lengths": [3, 6], "num_sequences": 6, "batch_size": 3},
}
LSTM = {
    "name": "lstm-copy",
    "configs": ["configs/lstm/copy.yaml"],
    "overrides": {
        "model.init_args.net.init_args.controller.init_args.hidden_size": 6,
        "model.init_args.net.init_args.controller.init_args.num_layers": 1,
    },
}


def write_suite(path: Path, experiments: list[dict], name: str = "tiny", **extra) -> Path:
    path.write_text(
        yaml.safe_dump(
            {"name": name, "defaults": TINY_DEFAULTS, "experiments": experiments, **extra},
            sort_keys=False,
        )
    )
    return path


def events(results: Path, kind: str = "start") -> list[dict]:
    path = results / "events.jsonl"
    if not path.is_file():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == kind]


def suite_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "memnet.cli", "suite", *args]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny suite (2 experiments × 2 seeds), killed after its first finished run, then run again."""
    folder = tmp_path_factory.mktemp("suite")
    suite_file = write_suite(folder / "tiny.yaml", [NTM, LSTM])
    results = folder / "results"
    log = folder / "first.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            suite_command("run", str(suite_file), "--results", str(results), "--no-report"),
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the suite and its training runs
        )
    deadline = time.monotonic() + 300
    try:
        while not events(results, "done"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the first run did not finish in 300 s"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the suite and the training process it started
        process.wait()
    done_at_kill = sorted(e["run"] for e in events(results, "done"))
    starts_before = len(events(results, "start"))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = S.main(["run", str(suite_file), "--results", str(results), "--no-wandb"])
    finally:
        os.chdir(cwd)
    return {
        "results": results,
        "code": code,
        "done_at_kill": done_at_kill,
        "starts_before": starts_before,
        "suite_file": suite_file,
    }


def test_killed_suite_reruns_only_the_missing_runs(finished):
    assert finished["code"] == 0
    starts = events(finished["results"], "start")
    rerun = starts[finished["starts_before"] :]
    assert 1 <= len(finished["done_at_kill"]) < 4
    assert sorted(e["run"] for e in rerun) == sorted(
        {"ntm-copy/seed_0", "ntm-copy/seed_1", "lstm-copy/seed_0", "lstm-copy/seed_1"}
        - set(finished["done_at_kill"])
    )
    # running once more trains nothing
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert (
            S.main(
                [
                    "run",
                    str(finished["suite_file"]),
                    "--results",
                    str(finished["results"]),
                    "--no-report",
                ]
            )
            == 0
        )
    finally:
        os.chdir(cwd)
    assert len(events(finished["results"], "start")) == len(starts)


def test_run_folders_hold_config_checkpoint_metrics_and_logs(finished):
    for experiment in ("ntm-copy", "lstm-copy"):
        for seed in (0, 1):
            folder = finished["results"] / experiment / f"seed_{seed}"
            record = json.loads((folder / "metrics.json").read_text())
            assert (
                record["status"] == "done"
                and record["seed"] == seed
                and record["experiment"] == experiment
            )
            # relative to the results folder, which can be moved
            assert record["config"] == f"{experiment}/seed_{seed}/config.yaml"
            assert record["checkpoint"].startswith(f"{experiment}/seed_{seed}/checkpoints/")
            assert (finished["results"] / record["checkpoint"]).is_file()
            assert "val/loss" in record["metrics"]
            # the metrics of the weights the evaluation tested, as that checkpoint holds them
            tested = torch.load(finished["results"] / record["checkpoint"], weights_only=True)
            assert "val/loss" in record["checkpoint_metrics"]
            assert record["checkpoint_metrics"] == pytest.approx(tested["memnet_metrics"])
            config = yaml.safe_load((folder / "config.yaml").read_text())
            assert config["seed_everything"] == seed and config["data"]["init_args"]["seed"] == seed
            assert config["trainer"]["max_steps"] == 4
            assert (folder / "train.log").read_text().strip()
            argv = json.loads((folder / "command.json").read_text())["argv"]
            assert argv[:3] == ["-m", "memnet.cli", "fit"]
            assert (
                0
                < torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)[
                    "global_step"
                ]
                <= 4
            )
    # the two seeds are different runs
    losses = [
        json.loads((finished["results"] / "lstm-copy" / f"seed_{s}" / "metrics.json").read_text())[
            "metrics"
        ]["val/loss"]
        for s in (0, 1)
    ]
    assert losses[0] != losses[1]


def test_report_has_one_row_per_experiment_with_mean_and_std(finished):
    report = S.write_report(finished["results"])
    rows = {row["experiment"]: row for row in report["leaderboard"]}
    assert list(rows) == ["ntm-copy", "lstm-copy"]
    for row in rows.values():
        assert (row["done"], row["failed"], row["missing"]) == (2, 0, 0)
        assert row["val/loss"]["n"] == 2 and row["val/loss"]["std"] >= 0
    losses = [
        json.loads((finished["results"] / "ntm-copy" / f"seed_{s}" / "metrics.json").read_text())[
            "metrics"
        ]["val/loss"]
        for s in (0, 1)
    ]
    assert rows["ntm-copy"]["val/loss"]["mean"] == pytest.approx(sum(losses) / 2)
    markdown = (finished["results"] / "report" / "leaderboard.md").read_text()
    assert (
        "| ntm-copy | ntm | copy | 2/2 |" in markdown
        and "| lstm-copy | lstm | copy | 2/2 |" in markdown
    )
    csv_lines = (finished["results"] / "report" / "leaderboard.csv").read_text().splitlines()
    assert csv_lines[0].startswith(
        "experiment,model,task,seeds,done,failed,missing,val/loss mean,val/loss std"
    )
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["ntm-copy", "lstm-copy"]
    # the bits per sequence at the training length (3) are in the length table
    lengths = {row["experiment"]: row for row in report["lengths"]}
    assert lengths["ntm-copy"]["training_range"] == [1, 3]
    assert lengths["lstm-copy"]["training_range"] == [1, 3]  # no evaluation: its task's, from its config.yaml
    assert lengths["lstm-copy"]["validation_only"] == ["3"]
    assert lengths["ntm-copy"]["validation_only"] == []
    assert lengths["ntm-copy"]["bits_per_seq"]["3"]["n"] == 2
    # ... and at the longer length from `memnet evaluate`, one value per seed
    evaluated = [
        json.loads((finished["results"] / "ntm-copy" / f"seed_{s}" / "metrics.json").read_text())[
            "evaluation"
        ]
        for s in (0, 1)
    ]
    assert all(e["status"] == "done" and set(e["bits_per_seq"]) == {"3", "6"} for e in evaluated)
    six = [e["bits_per_seq"]["6"] for e in evaluated]
    assert lengths["ntm-copy"]["bits_per_seq"]["6"]["mean"] == pytest.approx(sum(six) / 2)
    assert "L=6" in markdown and " * |" in markdown and " * (val) |" in markdown
    assert (finished["results"] / "report" / "lengths.png").stat().st_size > 0


def test_missing_evaluation_code_is_reported_not_faked(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(evaluators, "find_spec", lambda name: None)
    path = write_suite(tmp_path / "s.yaml", [NTM])
    (experiment,) = S.load_suite(path).experiments
    run = S.Run("tiny", experiment, 0, tmp_path)
    with pytest.raises(S.EvaluationUnavailable, match="memnet evaluate"):
        S.EVALUATORS["algorithmic"].command(run, "last.ckpt", experiment.evaluate)
    babi = {"kind": "babi", "split": "test"}
    with pytest.raises(S.EvaluationUnavailable, match="tasks.babi"):
        S.EVALUATORS["babi"].command(run, "last.ckpt", babi)
    # the runner records it, and the report says so instead of printing numbers
    runner = S.SuiteRunner(S.load_suite(path), tmp_path)
    evaluation = runner._evaluate(run, experiment.evaluate, "last.ckpt", 0)
    assert evaluation["status"] == "unavailable"
    runner._write_suite_file()
    run.folder.mkdir(parents=True)
    runner._write_record(
        run, status="done", metrics={"val/len_3/bits_per_seq": 2.5}, evaluation=evaluation
    )
    (row,) = S.build_report(tmp_path)["lengths"]
    assert row["bits_per_seq"]["6"] is None and row["bits_per_seq"]["3"]["mean"] == 2.5
    assert row["validation_only"] == ["3"]
    assert "memnet evaluate" in row["notes"][0]
    assert "not in this checkout" in S.render_markdown(S.build_report(tmp_path))


def test_report_is_identical_when_rendered_twice(finished, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    S.write_report(finished["results"], first)
    S.write_report(finished["results"], second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.json", "lengths.png"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_half_finished_run_resumes_from_its_last_checkpoint(finished, tmp_path):
    """A run killed after its checkpoint at step 4 continues from it up to the new budget of 6 steps."""
    suite_file = write_suite(
        tmp_path / "longer.yaml",
        [{**LSTM, "seeds": [0], "budget": {"max_steps": 6}}],
        name="longer",
    )
    results = tmp_path / "results"
    source = finished["results"] / "lstm-copy" / "seed_0"
    target = results / "lstm-copy" / "seed_0"
    shutil.copytree(
        source / "checkpoints", target / "checkpoints"
    )  # what a kill after the checkpoint leaves
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert S.main(["run", str(suite_file), "--results", str(results), "--no-report"]) == 0
    finally:
        os.chdir(cwd)
    (start,) = events(results, "start")
    # the checkpoint the training resumed, relative to the results folder as the record's other paths: an absolute
    # path named the folder's old place once it was moved
    assert start["resume_from"] == "lstm-copy/seed_0/checkpoints/last.ckpt"
    resumed = (target / "checkpoints" / "last.ckpt").resolve()
    assert f"--ckpt_path={resumed}" in json.loads((target / "command.json").read_text())["argv"]
    log = (target / "train.log").read_text()
    assert f"Restoring states from the checkpoint path at {resumed}" in log and "`max_steps=6` reached" in log
    moved = tmp_path / "moved"
    results.rename(moved)
    assert (moved / start["resume_from"]).is_file()


@pytest.mark.parametrize("status", ["interrupted", "running"])
def test_train_seconds_count_the_time_before_an_interruption(finished, tmp_path, status):
    """'train s' of a resumed run adds the time spent before: recorded at SIGTERM, or up to the last
    checkpoint when the attempt was killed while running."""
    suite_file = write_suite(tmp_path / "longer.yaml", [{**LSTM, "seeds": [0], "budget": {"max_steps": 6}}],
                             name="longer")
    results = tmp_path / "results"
    target = results / "lstm-copy" / "seed_0"
    shutil.copytree(finished["results"] / "lstm-copy" / "seed_0" / "checkpoints", target / "checkpoints")
    checkpoint_time = (target / "checkpoints" / "last.ckpt").stat().st_mtime
    record = {"status": status, "train_seconds": 1000.0}
    if status == "running":  # killed: started 500 s before its last checkpoint was written
        record["started_at"] = checkpoint_time - 500.0
    (target / S.RECORD_FILE).write_text(json.dumps(record))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert S.main(["run", str(suite_file), "--results", str(results), "--no-report"]) == 0
    finally:
        os.chdir(cwd)
    done = json.loads((target / S.RECORD_FILE).read_text())
    spent_before = 1000.0 + (500.0 if status == "running" else 0.0)
    assert done["status"] == "done" and spent_before < done["train_seconds"] < spent_before + 300


def test_failing_experiment_is_reported_and_the_others_go_on(tmp_path):
    broken = {
        **LSTM,
        "name": "broken",
        "seeds": [0],
        "overrides": {
            **LSTM["overrides"],
            "model.init_args.net.init_args.controller.init_args.hidden_size": -2,
        },
    }
    good = {**LSTM, "seeds": [0]}
    suite_file = write_suite(tmp_path / "mixed.yaml", [broken, good], name="mixed")
    results = tmp_path / "results"
    result = subprocess.run(
        suite_command("run", str(suite_file), "--results", str(results), "--no-wandb"),
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    record = json.loads((results / "broken" / "seed_0" / "metrics.json").read_text())
    assert record["status"] == "failed" and record["stage"] == "train" and record["returncode"] != 0
    assert "hidden_size" in record["error"]
    assert (
        json.loads((results / "lstm-copy" / "seed_0" / "metrics.json").read_text())["status"]
        == "done"
    )
    assert "FAILED broken/seed_0" in result.stdout
    rows = {row["experiment"]: row for row in S.build_report(results)["leaderboard"]}
    assert rows["broken"]["failed"] == 1 and rows["broken"]["val/loss"] is None
    assert "hidden_size" in rows["broken"]["errors"][0]["error"]
    assert rows["lstm-copy"]["done"] == 1
    markdown = (results / "report" / "leaderboard.md").read_text()
    assert "seed 0 failed (train):" in markdown and "hidden_size" in markdown


def test_a_failed_attempt_is_reported_with_its_own_error_not_an_earlier_attempts(tmp_path, monkeypatch, capsys):
    """A run's train.log is appended to by every attempt: one that fails with a ValueError, then one killed by the
    OOM killer (SIGKILL, no error line), was reported with the first attempt's ValueError (fixed since)."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "killed.yaml", [{**LSTM, "seeds": [0]}])
    results = tmp_path / "r"
    attempts = iter([("ValueError: data.init_args.batch_size must be positive, got 0\n", 1),
                     ("Epoch 3: 50%| 1/2 [00:00<00:00]\n", -9)])

    class Training:  # stands in for `memnet fit`: writes its output, then ends with its exit code
        def __init__(self, argv, *, stdout, **kwargs):
            output, self.returncode = next(attempts)
            stdout.write(output)

        def wait(self) -> int:
            return self.returncode

    monkeypatch.setattr(subprocess, "Popen", Training)
    for expected in ("ValueError: data.init_args.batch_size must be positive, got 0",
                     "killed by SIGKILL (exit -9); its log's last line: Epoch 3: 50%| 1/2 [00:00<00:00]"):
        assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 1
        record = json.loads((results / "lstm-copy" / "seed_0" / "metrics.json").read_text())
        assert (record["status"], record["stage"], record["error"]) == ("failed", "train", expected)
        assert f"FAILED lstm-copy/seed_0 (training, exit {record['returncode']}): {expected}" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# bAbI tables and the published references (from results written by hand: no training)
# ---------------------------------------------------------------------------------------------


def fake_babi_results(folder: Path) -> Path:
    """A results folder with one bAbI experiment of two seeds, as `memnet suite run` writes it."""
    experiment = {
        "name": "memn2n-babi",
        "configs": ["configs/memn2n/babi.yaml"],
        "overrides": {},
        "seeds": [0, 1],
        "budget": {"max_epochs": 1},
        "evaluate": {"kind": "babi", "split": "test"},
        "model": "memn2n",
        "task": "babi-1k",
        "seed_args": ["seed_everything"],
    }
    folder.mkdir(parents=True)
    (folder / "suite.json").write_text(
        json.dumps(
            {"name": "babi-fake", "description": "", "path": "", "experiments": [experiment]}
        )
    )
    for seed in (0, 1):
        # task k has error k + seed %: tasks 6..20 fail for seed 0, 5..20 for seed 1
        errors = {str(k): float(k + seed) for k in range(1, 21)}
        run = folder / "memn2n-babi" / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(
            json.dumps(
                {
                    "status": "done",
                    "seed": seed,
                    "experiment": "memn2n-babi",
                    "metrics": {"val/loss": 1.0 + seed},
                    "evaluation": {
                        "kind": "babi",
                        "status": "done",
                        "split": "test",
                        "babi_error": errors,
                    },
                    "train_seconds": 1.0,
                }
            )
        )
    return folder


def test_references_are_loaded_with_citations_and_consistent_means():
    references = S.load_references()["references"]
    assert {r["key"] for r in references} >= {"memn2n-1k", "memn2n-10k", "dnc-10k", "lstm-1k"}
    for ref in references:
        assert ref["citation"] and ref["source"] and ref["label"]
        if ref["per_task"] is not None:
            values = list(ref["per_task"].values())
            assert len(values) == 20
            assert sum(values) / 20 == pytest.approx(ref["mean_error"], abs=0.05)
            if "per_task_std" not in ref:  # one run: its failed tasks are countable from the table
                assert sum(v > 5 for v in values) == ref["failed"]


def test_babi_table_prints_ours_beside_the_published_columns(tmp_path):
    results = fake_babi_results(tmp_path / "results")
    report = S.write_report(results)
    (model,) = report["babi"]["models"]
    assert model["mean_error"]["mean"] == pytest.approx(
        11.0
    )  # mean of k over 1..20 is 10.5, plus 0.5
    assert model["failed"]["mean"] == pytest.approx(15.5)  # 15 and 16 failed tasks
    assert model["per_task"]["3"]["mean"] == pytest.approx(3.5)
    markdown = (results / "report" / "leaderboard.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| task |"))
    assert (
        header
        == "| task | memn2n-babi (mean of 2 seeds) | MemN2N 1k | LSTM 1k | MemN2N 10k | DNC 10k | DNC 10k best |"
    )
    row19 = next(line for line in markdown.splitlines() if line.startswith("| 19: path finding"))
    assert row19 == "| 19: path finding | 19.5 ± 0.7 | 88.0 | 92.0 |  | 64.6 ± 37.4 |  |"
    mean_row = next(line for line in markdown.splitlines() if line.startswith("| mean error %"))
    assert mean_row == "| mean error % | 11.0 ± 0.7 | 12.4 | 51.3 | 7.5 | 16.7 ± 7.6 | 3.8 |"
    failed_row = next(line for line in markdown.splitlines() if line.startswith("| failed tasks"))
    assert failed_row == "| failed tasks (> 5%) | 15.5 ± 0.7 | 11 | 20 | 6 | 11.2 ± 5.4 | 2 |"
    assert "Sukhbaatar" in markdown and "Graves" in markdown
    assert (results / "report" / "babi.png").stat().st_size > 0


def test_a_plot_with_nothing_left_to_draw_is_not_kept_from_an_earlier_report(tmp_path):
    """babi.png of an earlier report would be logged to W&B as the current one once its runs train again."""
    results = fake_babi_results(tmp_path / "results")
    S.write_report(results)
    assert (results / "report" / "babi.png").is_file()
    for seed in (0, 1):  # both seeds training again (`suite run` after a change): nothing finished to plot
        record = results / "memn2n-babi" / f"seed_{seed}" / "metrics.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "status": "running"}))
    report = S.write_report(results)
    assert report["babi"]["models"][0]["runs"] == 0
    assert not (results / "report" / "babi.png").exists()


def test_a_report_whose_figure_fails_leaves_the_earlier_report_whole_not_mixed(tmp_path, monkeypatch):
    """Each file was renamed into place on its own: a figure that failed (or a kill) after the tables left the new
    leaderboard.md/.csv/.json beside the earlier report's babi.png, drawn from other errors."""
    from memnet.cli.suite import report as report_module

    results = fake_babi_results(tmp_path / "results")
    S.write_report(results)
    folder = results / "report"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.json", "babi.png"} <= set(before)
    record = results / "memn2n-babi" / "seed_1" / "metrics.json"  # seed 1 evaluated again: other errors
    fields = json.loads(record.read_text())
    fields["evaluation"]["babi_error"] = {task: 0.5 for task in fields["evaluation"]["babi_error"]}
    record.write_text(json.dumps(fields))

    def failing_plot(*args, **kwargs):
        raise RuntimeError("the figure failed")

    monkeypatch.setattr(report_module, "plot_suite_report", failing_plot)
    with pytest.raises(RuntimeError, match="the figure failed"):
        S.write_report(results)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # whole, and nothing beside it
    S.write_report(results)
    after = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)


def _fake_checkpoints(results: Path) -> dict[str, int]:
    """A checkpoint file and summary.json per seed of `fake_babi_results`: checkpoint path -> seed."""
    paths = {}
    for seed in (0, 1):
        checkpoint = results / "memn2n-babi" / f"seed_{seed}" / "checkpoints" / "last.ckpt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"weights")
        (checkpoint.parents[1] / "summary.json").write_text(json.dumps(  # as `memnet fit` writes it: absolute paths
            {"run_dir": str(checkpoint.parents[1]), "best_checkpoint": None, "last_checkpoint": str(checkpoint)}))
        paths[str(checkpoint)] = seed
    return paths


def test_suite_ensemble_tests_the_seeds_together_and_the_report_shows_it(tmp_path, monkeypatch, capsys):
    from memnet.cli import babi_table

    results = fake_babi_results(tmp_path / "results")
    seeds = _fake_checkpoints(results)
    # two questions per task, both answered by class 0: seed 0 right on the first and wrong on the second, seed 1
    # the other way round, each less sure where it is wrong, so that their mean is right on both
    sure, unsure = [0.9, 0.1], [0.4, 0.6]
    answers = {0: [sure, unsure] * 20, 1: [[0.45, 0.55], [0.7, 0.3]] * 20}
    asked = []

    def predict(checkpoint, config=None):
        asked.append((seeds[str(checkpoint)], Path(config).name))
        return {"probabilities": torch.tensor(answers[seeds[str(checkpoint)]]), "answer": torch.zeros(40).long(),
                "task": torch.arange(1, 21).repeat_interleave(2)}

    monkeypatch.setattr(babi_table, "predict_checkpoint", predict)
    assert S.main(["ensemble", str(results), "--no-wandb"]) == 0
    assert asked == [(0, "config.yaml"), (1, "config.yaml")]
    ensemble = json.loads((results / "memn2n-babi" / "ensemble.json").read_text())
    assert ensemble["seeds"] == [0, 1] and ensemble["babi_error"] == {str(k): 0.0 for k in range(1, 21)}
    markdown = (results / "report" / "leaderboard.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| task |"))
    assert header.startswith("| task | memn2n-babi: ensemble of seeds 0, 1 (answer probabilities averaged) | "
                             "memn2n-babi (mean of 2 seeds) | MemN2N 1k |")
    mean_row = next(line for line in markdown.splitlines() if line.startswith("| mean error %"))
    assert mean_row.startswith("| mean error % | 0.0 | 11.0 ± 0.7 |")
    assert "changed since" not in markdown and "the ensemble is of seeds" not in markdown

    # a seed trained again (its checkpoint rewritten), then a seed no longer done: the report says so
    checkpoint = next(iter(seeds))
    os.utime(checkpoint, ns=(1, 1))
    assert "a seed's checkpoint changed since the ensemble was tested" in S.render_markdown(S.build_report(results))
    record = results / "memn2n-babi" / "seed_1" / "metrics.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "status": "failed"}))
    assert ("the ensemble is of seeds 0, 1, the seeds tested now are 0; `memnet suite ensemble"
            in S.render_markdown(S.build_report(results)))
    capsys.readouterr()
    assert S.main(["ensemble", str(results), "--only", "memn2n-babi", "--no-wandb"]) == 2
    assert "memn2n-babi: 1 seed(s) tested on the test split; an ensemble needs at least two" in capsys.readouterr().err
    assert S.main(["ensemble", str(results), "--only", "nope", "--no-wandb"]) == 2
    assert "--only: no experiment 'nope' in suite 'babi-fake'; it has memn2n-babi" in capsys.readouterr().err


def test_suite_ensemble_only_of_an_experiment_not_tested_on_babi_names_it(tmp_path, capsys):
    """`--only` of an experiment without a bAbI test evaluation is refused in one line showing the suite file's
    setting to give it (the line read 'split: test}})')."""
    results = fake_babi_results(tmp_path / "results")
    suite = json.loads((results / "suite.json").read_text())
    suite["experiments"].append({**suite["experiments"][0], "name": "ntm-copy", "task": "copy",
                                 "evaluate": {"kind": "algorithmic", "lengths": [20, 40]}})
    (results / "suite.json").write_text(json.dumps(suite))
    assert S.main(["ensemble", str(results), "--only", "ntm-copy", "--no-wandb"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--only: 'ntm-copy' is not evaluated on bAbI's test split (evaluate: {kind: babi, split: test}), "
        "so it has no answers to average")


def test_suite_ensemble_of_a_seed_with_a_damaged_record_names_it_not_an_ensemble_of_the_others(
        tmp_path, monkeypatch, capsys):
    """A seed whose metrics.json is cut short was left out of the ensemble unsaid (with three seeds or more, an
    ensemble of the others was written, exit 0 from make_ensembles); it is named."""
    from memnet.cli import babi_table

    results = fake_babi_results(tmp_path / "results")
    seeds = _fake_checkpoints(results)
    asked = []

    def predict(checkpoint, config=None):
        asked.append(seeds[str(checkpoint)])
        return {"probabilities": torch.full((40, 2), 0.5), "answer": torch.zeros(40).long(),
                "task": torch.arange(1, 21).repeat_interleave(2)}

    monkeypatch.setattr(babi_table, "predict_checkpoint", predict)
    record = results / "memn2n-babi" / "seed_1" / "metrics.json"
    record.write_text(record.read_text()[:40])  # cut short, as by a kill
    from memnet.cli.suite.ensemble import make_ensembles

    with pytest.raises(S.SuiteError, match=re.escape(f"{record}: the record of run memn2n-babi/seed_1 is damaged")):
        make_ensembles(results)  # not an ensemble of the seeds left (here none: "skipped", and no error)
    assert S.main(["ensemble", str(results), "--no-wandb"]) == 2
    assert f"{record}: the record of run memn2n-babi/seed_1 is damaged" in capsys.readouterr().err
    assert asked == [] and not (results / "memn2n-babi" / "ensemble.json").exists()


def test_a_results_folder_moved_or_copied_elsewhere_keeps_its_ensemble(tmp_path, monkeypatch):
    """ensemble.json names the checkpoints relative to the results folder, and the checkpoint of a run (summary.json:
    absolute, where `memnet fit` trained it) is looked for in the run's folder where it is now: a moved folder's
    ensemble is unchanged, a copy's seeds are the copy's checkpoints. An ensemble.json of absolute paths still reads.
    The absolute paths had a moved folder's ensemble "of seeds 0, 1, the seeds tested now are none"."""
    from memnet.cli import babi_table
    from memnet.cli.suite.ensemble import members

    results = fake_babi_results(tmp_path / "results")
    _fake_checkpoints(results)
    asked = []

    def predict(checkpoint, config=None):
        asked.append(Path(checkpoint))
        return {"probabilities": torch.tensor([[0.9, 0.1]] * 20), "answer": torch.zeros(20).long(),
                "task": torch.arange(1, 21)}

    def ensemble_notes(folder: Path) -> list[str]:
        markdown = S.render_markdown(S.build_report(folder))
        assert "| memn2n-babi: ensemble of seeds 0, 1 (answer probabilities averaged) |" in markdown
        return [line for line in markdown.splitlines() if "`memnet suite ensemble" in line]

    monkeypatch.setattr(babi_table, "predict_checkpoint", predict)
    assert S.main(["ensemble", str(results), "--no-wandb"]) == 0
    written = Path("memn2n-babi") / "ensemble.json"
    stamps = json.loads((results / written).read_text())["checkpoints"]
    checkpoints = [f"memn2n-babi/seed_{seed}/checkpoints/last.ckpt" for seed in (0, 1)]
    assert [stamp["path"] for stamp in stamps] == checkpoints

    moved = tmp_path / "elsewhere" / "results"
    moved.parent.mkdir()
    os.rename(results, moved)  # a move keeps the files' times
    assert ensemble_notes(moved) == []
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)  # so does a copy that keeps them (cp -a, rsync -a, copytree)
    suite = S.Suite.from_dict(json.loads((copy / "suite.json").read_text()))
    assert [checkpoint for _, checkpoint, _ in members(suite, suite.experiments[0], copy)] == [
        copy.absolute() / checkpoint for checkpoint in checkpoints]
    assert ensemble_notes(copy) == []
    asked.clear()
    assert S.main(["ensemble", str(copy), "--no-wandb"]) == 0
    assert asked == [copy.absolute() / checkpoint for checkpoint in checkpoints]

    # written by an older memnet: the absolute paths of the folder it was in then
    kept = json.loads((moved / written).read_text())
    kept["checkpoints"] = [{**stamp, "path": str(results / stamp["path"])} for stamp in kept["checkpoints"]]
    (moved / written).write_text(json.dumps(kept))
    assert ensemble_notes(moved) == []
    os.utime(moved / checkpoints[0], ns=(1, 1))  # a checkpoint written again is still told apart
    assert "a seed's checkpoint changed since the ensemble was tested" in ensemble_notes(moved)[0]


def test_suite_run_makes_the_ensembles_its_file_asks_for_once(tmp_path, monkeypatch):
    from memnet.cli import babi_table
    from memnet.cli.suite.ensemble import make_ensembles

    results = fake_babi_results(tmp_path / "results")
    seeds = _fake_checkpoints(results)
    asked = []

    def predict(checkpoint, config=None):
        asked.append(seeds[str(checkpoint)])
        return {"probabilities": torch.tensor([[0.9, 0.1]] * 20), "answer": torch.zeros(20).long(),
                "task": torch.arange(1, 21)}

    monkeypatch.setattr(babi_table, "predict_checkpoint", predict)
    assert make_ensembles(results, ["memn2n-babi"], flagged=True) == []  # the suite file does not ask for one
    suite = json.loads((results / "suite.json").read_text())
    suite["experiments"][0]["evaluate"]["ensemble"] = True
    (results / "suite.json").write_text(json.dumps(suite))
    assert make_ensembles(results, ["memn2n-babi"], flagged=True) == [results / "memn2n-babi" / "ensemble.json"]
    assert asked == [0, 1]
    assert make_ensembles(results, ["memn2n-babi"], flagged=True) == [] and asked == [0, 1]  # nothing changed
    os.utime(next(iter(seeds)), ns=(1, 1))  # a seed trained again: the next `suite run` averages anew
    assert make_ensembles(results, ["memn2n-babi"], flagged=True) and asked == [0, 1, 0, 1]
    # the runs evaluated before the key was added are still done: `ensemble` is not an option of a run's evaluation
    spec = S.EVALUATORS["babi"].check({"kind": "babi", "split": "test", "ensemble": True}, "here")
    record = json.loads((results / "memn2n-babi" / "seed_0" / "metrics.json").read_text())
    assert evaluators.evaluation_answers(spec, {**record["evaluation"], "options": {}})


@pytest.mark.parametrize("spec, message", [
    ({"kind": "babi", "ensemble": "yes"}, "here: evaluate.ensemble must be true or false, got 'yes'"),
    ({"kind": "babi", "split": "valid", "ensemble": True}, "it needs split: test, got 'valid'"),
    ({"kind": "babi", "ensembles": True}, "here: evaluate: unknown key 'ensembles'; allowed: kind, split, ensemble"),
])
def test_a_bad_ensemble_option_is_refused(spec, message):
    with pytest.raises(S.SuiteError, match=re.escape(message)):
        S.EVALUATORS["babi"].check(spec, "here")


def test_a_selected_run_without_bAbI_errors_on_the_split_is_named_not_dropped_unsaid(tmp_path):
    results = fake_babi_results(tmp_path / "results")
    suite = json.loads((results / "suite.json").read_text())
    suite["experiments"][0]["select"] = {"metric": "loss", "split": "val", "mode": "min"}  # seed 0: val/loss 1.0
    (results / "suite.json").write_text(json.dumps(suite))
    record = results / "memn2n-babi" / "seed_0" / "metrics.json"
    evaluated = json.loads(record.read_text())
    evaluated["evaluation"]["split"] = "valid"  # evaluated on another split than the suite's `test`
    record.write_text(json.dumps(evaluated))
    report = S.build_report(results)
    assert [m["experiment"] for m in report["babi"]["models"]] == ["memn2n-babi"]  # no selected column
    (model,) = report["babi"]["models"]
    assert ("memn2n-babi: the selected run (seed 0) has no bAbI test error on the 'test' split, so the table has no "
            "column for it; `memnet suite run` evaluates it") in model["notes"]
    # the mean column says it is over one of the two seeds, and which: seed 0 was evaluated on another split
    header, _ = S.babi_rows(report)
    assert header[1] == "memn2n-babi (mean of 1 of 2 seeds: 1)"


def test_summary_run_logs_wandb_tables_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    results = fake_babi_results(tmp_path / "results")
    report = S.write_report(results)
    where = Path(S.log_to_wandb(report, results, results / "report"))
    tables = sorted(p.name for p in where.rglob("*.table.json"))
    assert any(name.startswith("leaderboard") for name in tables)
    assert any(name.startswith("babi") for name in tables)


def test_a_results_folder_reported_twice_logs_one_wandb_summary_run(tmp_path, monkeypatch):
    """Each report started a new W&B run (a random id): two summary runs of one suite after two reports. The id is
    the results folder's, so a re-report updates the run (online: resumed; offline: its folders share the id, and
    ``wandb sync`` of the later one replaces the earlier one's); another results folder has its own."""
    import shutil

    from memnet.cli.suite.report import summary_run_id

    monkeypatch.setenv("WANDB_MODE", "offline")
    results = fake_babi_results(tmp_path / "results")
    other = tmp_path / "other"
    shutil.copytree(results, other)  # the same suite, reported in another folder
    report = S.write_report(results)
    first = Path(S.log_to_wandb(report, results, results / "report"))
    second = Path(S.log_to_wandb(S.write_report(results), results, results / "report"))
    assert first != second and first.parent == second.parent == results / "wandb"
    ids = sorted(p.stem.removeprefix("run-") for p in (results / "wandb").glob("offline-run-*/run-*.wandb"))
    suite = report["suite"]
    assert len(ids) == 2 and ids[0] == ids[1] and ids[0].startswith(f"{suite}-summary-"), ids
    elsewhere = Path(S.log_to_wandb(S.write_report(other), other, other / "report"))
    assert elsewhere.name.split("-")[-1] != ids[0].split("-")[-1] and elsewhere.name.endswith(summary_run_id(suite, other))
    assert summary_run_id(suite, results) == ids[0]  # read back from the folder, and derived alike without it
    shutil.rmtree(results / "wandb")
    assert summary_run_id(suite, results) == ids[0]
    assert len(summary_run_id("s" * 80, results)) == 64


def test_suite_report_with_wandb_disabled_names_no_summary_run_folder(tmp_path, monkeypatch, capsys):
    """WANDB_MODE=disabled: W&B hands out a stand-in run whose folder is never written; the report says it logged none."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = fake_babi_results(tmp_path / "results")
    with pytest.raises(SystemExit) as done:
        cli_main(["suite", "report", str(results)])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "W&B summary run not logged: WANDB_MODE=disabled" in out
    assert "W&B summary run: " not in out and not (results / "wandb").exists()


def test_babi_results_of_memnet_babi_table_are_collected(tmp_path):
    experiment = S.Experiment(name="memn2n", configs=("c.yaml",), overrides={}, seeds=(0,),
                              budget={"max_epochs": 1}, evaluate={"kind": "babi", "split": "test"},
                              model="memn2n", task="babi")  # fmt: skip
    run = S.Run("s", experiment, 0, tmp_path)
    argv = S.EVALUATORS["babi"].command(run, "best.ckpt", experiment.evaluate)
    assert argv[:3] == ["-m", "memnet.cli", "babi-table"] and "--json" in argv
    out = Path(argv[argv.index("--json") + 1])
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"memn2n": {"1": 2.5, "12": 7.0}}))  # what `memnet babi-table` writes
    collected = S.EVALUATORS["babi"].collect(run, experiment.evaluate)
    assert collected == {"babi_error": {"1": 2.5, "12": 7.0}, "split": "test"}


def test_babi_validation_split_goes_through_suite_evaluate_in_the_same_schema(tmp_path, capsys):
    spec = {"kind": "babi", "split": "valid"}
    experiment = S.Experiment(name="memn2n", configs=("c.yaml",), overrides={}, seeds=(0,),
                              budget={"max_epochs": 1}, evaluate=spec, model="memn2n", task="babi")  # fmt: skip
    run = S.Run("s", experiment, 0, tmp_path)
    argv = S.EVALUATORS["babi"].command(run, "best.ckpt", spec)
    assert argv[:6] == ["-m", "memnet.cli", "suite", "_evaluate", "validate", "--config"]
    assert argv[argv.index("--name") + 1] == "memn2n"
    out = Path(argv[argv.index("--out") + 1])
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"memn2n": {"3": 40.0}}))  # what `memnet suite _evaluate` writes
    assert S.EVALUATORS["babi"].collect(run, spec) == {"babi_error": {"3": 40.0}, "split": "valid"}
    out.write_text(json.dumps({"other": {"3": 40.0}}))
    with pytest.raises(S.EvaluationUnavailable, match="no per-task bAbI error for memn2n"):
        S.EVALUATORS["babi"].collect(run, spec)
    with pytest.raises(SystemExit) as exit_info:  # the hidden subcommand parses its own options
        cli_main(["suite", "_evaluate", "--help"])
    assert exit_info.value.code == 0 and "--ckpt_path" in capsys.readouterr().out


def test_algorithmic_results_must_follow_the_evaluate_schema(tmp_path):
    spec = {"kind": "algorithmic", "lengths": [20]}
    experiment = S.Experiment(name="ntm", configs=("c.yaml",), overrides={}, seeds=(0,),
                              budget={"max_steps": 1}, evaluate=spec, model="NTM", task="copy")  # fmt: skip
    run = S.Run("s", experiment, 0, tmp_path)
    folder = run.folder / "evaluation"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"bits_per_seq": {"20": 1.0}}))  # an old guessed shape
    with pytest.raises(S.EvaluationUnavailable, match="'lengths' list"):
        S.EVALUATORS["algorithmic"].collect(run, spec)
    rows = [{"length": 20, "bits_per_seq": 1.5, "bit_errors_per_seq": 0.0, "sequences": 4}]
    (folder / "results.json").write_text(json.dumps({"lengths": rows, "train_range": [1, 10]}))
    assert S.EVALUATORS["algorithmic"].collect(run, spec) == {"bits_per_seq": {"20": 1.5}, "train_range": [1, 10]}


def test_an_algorithmic_evaluation_runs_on_the_engine_the_suite_names(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = S.EVALUATORS["algorithmic"].check({"kind": "algorithmic", "lengths": [20], "engine": "fused"}, "here")
    experiment = S.Experiment(name="dnc", configs=("c.yaml",), overrides={}, seeds=(0,),
                              budget={"max_steps": 1}, evaluate=spec, model="DNC", task="priority_sort")  # fmt: skip
    argv = S.EVALUATORS["algorithmic"].command(S.Run("s", experiment, 0, tmp_path), "best.ckpt", spec)
    assert argv[argv.index("--engine") + 1] == "fused"
    without = S.EVALUATORS["algorithmic"].command(S.Run("s", experiment, 0, tmp_path), "best.ckpt",
                                                  {"kind": "algorithmic", "lengths": [20]})
    assert "--engine" not in without  # the checkpoint's own
    with pytest.raises(S.SuiteError, match=r"here: evaluate.engine must be one of eager, fused, compiled, got 'fast'"):
        S.EVALUATORS["algorithmic"].check({"kind": "algorithmic", "lengths": [20], "engine": "fast"}, "here")


def test_babi_errors_from_logged_metrics():
    metrics = {
        "test/task_1/error": 2.0,
        "test/task_2/error": 0.5,
        "test/task_12/accuracy": 0.9,
        "test/qa3/acc": 0.97,
        "test/loss": 1.0,
        "test/task_21/error": 3.0,
    }
    assert S.babi_errors_from_metrics(metrics) == pytest.approx(
        {"1": 2.0, "2": 0.5, "3": 3.0, "12": 10.0}
    )
    # another split is never read as the test error, and 95% accuracy is 5% exactly (a pass)
    assert S.babi_errors_from_metrics({"test/task_3/error": 12.0, "val/task_3/error": 2.0, "train/task_3/error": 0.0,
                                       "task_4/error": 1.0, "test/task_1/accuracy": 0.95}) == {"1": 5.0, "3": 12.0,
                                                                                               "4": 1.0}


def results_folder(root: Path, experiment: dict, records: dict[int, dict]) -> Path:
    """A suite results folder written by hand: suite.json and each seed's metrics.json."""
    spec = S.Experiment(name=experiment["name"], configs=("c.yaml",), overrides={}, seeds=tuple(records),
                        budget={"max_steps": 1}, evaluate=experiment.get("evaluate"), model="M", task="T",
                        select=experiment.get("select"))
    root.mkdir(parents=True)
    (root / "suite.json").write_text(json.dumps(S.Suite(name="s", description="", experiments=(spec,)).to_dict()))
    for seed, record in records.items():
        folder = root / spec.name / f"seed_{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"seed": seed, "status": "done", **record}))
    return root


def test_a_suite_run_into_a_results_folder_keeps_the_experiments_run_there_before_that_it_does_not_define(
        tmp_path, capsys):
    """suite.json was the last `memnet suite run`'s alone: a smaller suite file run into the folder had the report and
    status drop every finished run of the experiments it does not define, exit 0. They are kept in suite.json as they
    were run (one line says so); an experiment with nothing on disk is not; a name in both takes the new definition,
    and a finished seed on disk that it does not list is named by the report and status."""
    from memnet.cli.suite.spec import read_results_suite

    root = results_folder(tmp_path / "r", {"name": "e"}, {0: {"metrics": {"val/loss": 0.2}},
                                                          1: {"metrics": {"val/loss": 0.4}}})
    (e,) = read_results_suite(root).experiments
    never_run = replace(e, name="never-run")  # in suite.json, no run on disk: not kept
    (root / "suite.json").write_text(json.dumps(S.Suite("s", "", (e, never_run)).to_dict()))
    small = replace(e, name="f", seeds=(0,), model="N")
    stream = io.StringIO()
    S.SuiteRunner(S.Suite("s", "", (small,), "small.yaml"), root, stream=stream)._write_suite_file()
    assert read_results_suite(root).experiments == (small, e)
    assert stream.getvalue().count("\n") == 1 and "keeps 1 experiment" in stream.getvalue() and ": e " in (
        stream.getvalue()), stream.getvalue()
    report = S.build_report(root)
    assert [(row["experiment"], row["done"]) for row in report["leaderboard"]] == [("f", 0), ("e", 2)]
    assert {s["run"]: s["state"] for s in launcher.run_states(root)} == {
        "f/seed_0": "pending", "e/seed_0": "finished", "e/seed_1": "finished"}
    # e again with one seed: the new definition wins, f (nothing on disk) goes, e/seed_1 is named, not dropped unsaid
    one_seed = replace(e, seeds=(0,), model="M1")
    S.SuiteRunner(S.Suite("s", "", (one_seed,), "one.yaml"), root, stream=io.StringIO())._write_suite_file()
    assert read_results_suite(root).experiments == (one_seed,)
    report = S.build_report(root)
    assert report["not_in_suite"] == ["e/seed_1"]
    assert "e/seed_1" in S.render_markdown(report)
    assert S.main(["status", str(root)]) == 0
    assert "e/seed_1" in capsys.readouterr().out


def test_a_suite_of_another_name_is_refused_in_a_results_folder_of_a_suite(tmp_path, monkeypatch, capsys):
    """Two suites (two names) run into one results folder wrote over each other's suite.json: the report covered the
    last one's experiments, under its name, the other's runs left out unsaid. Refused before anything runs."""
    monkeypatch.chdir(ROOT)
    root = results_folder(tmp_path / "r", {"name": "e"}, {0: {"metrics": {"val/loss": 0.2}}})
    before = (root / "suite.json").read_bytes()
    suite_file = write_suite(tmp_path / "other.yaml", [LSTM], name="other")
    for extra in (["--dry-run"], ["--no-report", "--no-wandb"]):
        assert S.main(["run", str(suite_file), "--results", str(root), *extra]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "suite 's'" in error and "'other'" in error, error
    assert (root / "suite.json").read_bytes() == before and not (root / "lstm-copy").exists()


def test_a_nan_seed_is_left_out_of_the_mean_counted_out_of_n_and_named(tmp_path):
    root = results_folder(tmp_path / "r", {"name": "e", "select": {"metric": "loss", "split": "train", "mode": "min"}},
                          {0: {"metrics": {"train/loss": 0.1, "val/loss": 0.2}},
                           1: {"metrics": {"train/loss": 0.3, "val/loss": float("nan")}},
                           2: {"metrics": {"train/loss": 0.4, "val/loss": 0.4}}})
    report = S.build_report(root)
    row = report["leaderboard"][0]
    assert row["val/loss"] == pytest.approx({"mean": 0.3, "std": 0.1414213562, "n": 2})
    assert row["selected"]["over_seeds"]["val/loss"] == pytest.approx({"mean": 0.3, "std": 0.1414213562, "n": 2})
    header, rows = S.leaderboard_rows(report)
    assert dict(zip(header, rows[0]))["status"] == "val/loss of seed 1 is nan, left out of its mean"


def test_the_selected_run_line_averages_the_seeds_the_leaderboard_averages(tmp_path):
    """The selected run has no bAbI error on the suite's split (seed 0, evaluated on another): its line shows its
    metrics beside their means over every seed, as the leaderboard's columns have them; the seeds with a bAbI
    error used to be left out of those means ("all 1 seeds: 0.2" beside a val/loss column of 0.4 ± 0.2)."""
    tasks = {str(k): 1.0 for k in range(1, 21)}
    evaluated = {"kind": "babi", "status": "done", "split": "test", "babi_error": tasks}
    root = results_folder(tmp_path / "r", {"name": "e", "evaluate": {"kind": "babi", "split": "test"},
                                           "select": {"metric": "loss", "split": "train", "mode": "min"}},
                          {0: {"metrics": {"train/loss": 0.1, "val/loss": 0.2},
                               "evaluation": {**evaluated, "split": "valid"}},
                           1: {"metrics": {"train/loss": 0.3, "val/loss": 0.4}, "evaluation": evaluated},
                           2: {"metrics": {"train/loss": 0.4, "val/loss": 0.6}, "evaluation": evaluated}})
    report = S.build_report(root)
    row = report["leaderboard"][0]
    assert row["selected"]["seed"] == 0 and row["selected"]["selected"] == {"val/loss": 0.2}
    assert row["val/loss"] == pytest.approx({"mean": 0.4, "std": 0.2, "n": 3})
    assert row["selected"]["over_seeds"]["val/loss"] == row["val/loss"]
    assert "val/loss 0.2 (all 3 seeds: 0.4 ± 0.2)" in S.render_markdown(report)


def test_the_csv_leaderboard_says_how_many_seeds_each_mean_is_over(tmp_path):
    """The CSV has no notes column: a seed left out of a mean (NaN, or a metric it did not log) must show in n,
    and one value has no sample s.d. (not a spread of 0)."""
    root = results_folder(tmp_path / "r", {"name": "e"},
                          {0: {"metrics": {"val/loss": 0.2}},
                           1: {"metrics": {"val/loss": float("nan"), "val/error": 7.0}},
                           2: {"metrics": {"val/loss": 0.4}}})
    S.write_report(root)
    (row,) = csv.DictReader(io.StringIO((root / "report" / "leaderboard.csv").read_text()))
    assert row["done"] == "3"
    assert (row["val/loss mean"], row["val/loss n"]) == ("0.3", "2")
    assert (row["val/error mean"], row["val/error std"], row["val/error n"]) == ("7", "", "1")


def test_a_lengths_cell_never_mixes_evaluated_and_validation_numbers(tmp_path):
    evaluated = {"status": "done", "bits_per_seq": {"20": 1.0, "40": 5.0}, "train_range": [1, 20]}
    root = results_folder(tmp_path / "r", {"name": "ntm", "evaluate": {"kind": "algorithmic", "lengths": [20, 40]}},
                          {0: {"metrics": {"val/len_20/bits_per_seq": 0.5}, "evaluation": evaluated},
                           1: {"metrics": {"val/len_20/bits_per_seq": 51.0},
                               "evaluation": {"status": "failed", "error": "boom"}},
                           2: {"metrics": {"val/len_20/bits_per_seq": 0.7},
                               "evaluation": {**evaluated, "bits_per_seq": {"20": 3.0, "40": 7.0}}}})
    row = S.build_report(root)["lengths"][0]
    assert row["bits_per_seq"]["20"] == pytest.approx({"mean": 2.0, "std": 1.4142135623, "n": 2})
    assert row["validation_only"] == []
    assert "L=20: seed 1 not evaluated, left out (its validation value is another protocol)" in row["notes"]
    # no seed evaluated: the validation numbers, marked as such
    root = results_folder(tmp_path / "v", {"name": "ntm"}, {0: {"metrics": {"val/len_20/bits_per_seq": 0.5}},
                                                             1: {"metrics": {"val/len_20/bits_per_seq": 1.5}}})
    row = S.build_report(root)["lengths"][0]
    assert row["bits_per_seq"]["20"]["mean"] == 1.0 and row["validation_only"] == ["20"]


def test_babi_cells_count_their_own_seeds_and_a_short_run_is_named(tmp_path):
    full = {str(t): 0.0 for t in range(1, 21)}
    full["3"] = 40.0
    part = {k: v for k, v in full.items() if k != "3"}
    root = results_folder(tmp_path / "r", {"name": "memn2n", "evaluate": {"kind": "babi", "split": "test"}},
                          {0: {"metrics": {}, "evaluation": {"status": "done", "babi_error": full, "split": "test"}},
                           1: {"metrics": {}, "evaluation": {"status": "done", "babi_error": part, "split": "test"}}})
    report = S.build_report(root)
    model = report["babi"]["models"][0]
    assert model["per_task"]["3"] == {"mean": 40.0, "std": 0.0, "n": 1} and model["per_task"]["1"]["n"] == 2
    assert model["notes"] == [("memn2n: seed 1 measured 19 of 20 tasks; a run's mean error and failed count "
                               "cover its measured tasks only")]
    _, rows = S.babi_rows(report)
    assert rows[2][:2] == ["3: three supporting facts", "40.0"]  # one seed: no "± 0.0"
    assert rows[0][1] == "0.0 ± 0.0"


def test_a_babi_task_above_five_percent_is_never_printed_as_five(tmp_path):
    """5.04% is a failed task: "5.0" in the table would read as a pass beside a failed count that counts it."""
    errors = {str(t): 0.0 for t in range(1, 21)}
    evaluation = {"status": "done", "split": "test"}
    root = results_folder(tmp_path / "r", {"name": "memn2n", "evaluate": {"kind": "babi", "split": "test"},
                                           "select": {"metric": "loss", "split": "val", "mode": "min"}},
                          {0: {"metrics": {"val/loss": 0.1}, "evaluation": {**evaluation,
                                                                            "babi_error": {**errors, "3": 5.04}}},
                           1: {"metrics": {"val/loss": 0.2}, "evaluation": {**evaluation,
                                                                            "babi_error": {**errors, "3": 5.06}}}})
    report = S.build_report(root)
    assert report["babi"]["models"][0]["failed"]["mean"] == 1.0  # seed 0's task 3 counts as failed
    _, rows = S.babi_rows(report)
    assert rows[2][:3] == ["3: three supporting facts", "5.04", "5.05 ± 0.01"]
    assert rows[0][:3] == ["1: single supporting fact", "0.0", "0.0 ± 0.0"]


def test_a_babi_seed_that_measured_fewer_tasks_is_marked_in_every_leaderboard(tmp_path):
    """A mean error over 12 tasks is not one over 20: leaderboard.md, .csv and .json say how many were measured."""
    full, part = {str(t): 1.0 for t in range(1, 21)}, {str(t): 10.0 for t in range(1, 13)}
    evaluated = {"status": "done", "split": "test"}

    def leaderboards(folder: str, seeds: dict[int, dict]) -> tuple[dict, dict, str]:
        root = results_folder(tmp_path / folder, {"name": "memn2n", "evaluate": {
            "kind": "babi", "split": "test"}}, {s: {"metrics": {}, "evaluation": {**evaluated, "babi_error": errors}}
                                                for s, errors in seeds.items()})
        S.write_report(root)
        out = root / "report"
        (csv_row,) = csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text()))
        (md_row,) = [line for line in (out / "leaderboard.md").read_text().splitlines() if line.startswith("| memn2n")]
        return json.loads((out / "leaderboard.json").read_text())["leaderboard"][0], csv_row, md_row

    row, csv_row, md_row = leaderboards("short", {0: full, 1: part})
    assert row["bAbI tasks measured"] == 12 and csv_row["bAbI tasks measured"] == "12"
    assert "| 5.5 ± 6.36 [12/20 tasks] | 6 ± 8.49 [12/20 tasks] |" in md_row
    note = "seed 1 measured 12 of 20 bAbI tasks; a run's bAbI mean error and failed count cover its measured tasks only"
    assert row["evaluation_notes"] == [note] and note in md_row
    row, csv_row, md_row = leaderboards("full", {0: full, 1: full})  # every task measured: the count, no mark
    assert row["bAbI tasks measured"] == 20 and csv_row["bAbI tasks measured"] == "20"
    assert "| 1 ± 0 | 0 ± 0 | ok |" in md_row and row["evaluation_notes"] == []


def test_babi_seeds_of_another_split_are_left_out_and_evaluated_again(tmp_path):
    errors = {str(t): 1.0 for t in range(1, 21)}
    evaluate = {"kind": "babi", "split": "test"}
    root = results_folder(tmp_path / "r", {"name": "memn2n", "evaluate": evaluate},
                          {0: {"metrics": {}, "evaluation": {"status": "done", "babi_error": errors, "split": "valid"}},
                           1: {"metrics": {}, "evaluation": {"status": "done", "split": "test",
                                                              "babi_error": {**errors, "1": 9.0}}}})
    report = S.build_report(root)
    model = report["babi"]["models"][0]
    assert model["runs"] == 1 and model["per_task"]["1"] == {"mean": 9.0, "std": 0.0, "n": 1}
    assert any("seed 0 evaluated on another split than 'test', left out" in note for note in model["notes"])
    assert report["leaderboard"][0]["bAbI mean error %"]["n"] == 1
    experiment = S.load_suite(write_suite(tmp_path / "b.yaml", [{**GOOD, "evaluate": evaluate}])).experiments[0]
    stale, current = S.Run("s", experiment, 0, root), S.Run("s", experiment, 1, root)
    for run, record in ((stale, {"split": "valid"}), (current, {"split": "test"})):
        run.folder.mkdir(parents=True, exist_ok=True)
        run.record_path.write_text(json.dumps({"status": "done", "evaluation": {"status": "done", "babi_error": errors,
                                                                                 **record}}))
    assert not stale.is_done() and current.is_done()


def test_a_babi_seed_of_another_split_is_named_in_the_leaderboard_it_is_left_out_of(tmp_path):
    """The leaderboard's bAbI columns leave a seed evaluated on another split out, as the bAbI table does: its row
    (2/2 runs ok) says so, not "ok" beside a mean of one seed."""
    errors = {str(t): 1.0 for t in range(1, 21)}
    root = results_folder(tmp_path / "r", {"name": "memn2n", "evaluate": {"kind": "babi", "split": "test"}},
                          {0: {"metrics": {}, "evaluation": {"status": "done", "babi_error": errors, "split": "valid"}},
                           1: {"metrics": {}, "evaluation": {"status": "done", "split": "test",
                                                              "babi_error": {**errors, "1": 9.0}}}})
    report = S.build_report(root)
    row = report["leaderboard"][0]
    assert row["bAbI mean error %"] == {"mean": 1.4, "std": 0.0, "n": 1}
    note = ("seed 0 evaluated on another split than 'test', left out of the bAbI columns; `memnet suite run` "
            "evaluates it on 'test'")
    assert row["evaluation_notes"] == [note]
    header, rows = S.leaderboard_rows(report)
    assert dict(zip(header, rows[0]))["status"] == note


def test_an_algorithmic_run_evaluated_at_fewer_lengths_is_evaluated_again(tmp_path):
    experiment = S.load_suite(write_suite(tmp_path / "a.yaml", [{**GOOD, "evaluate": {
        "kind": "algorithmic", "lengths": [20, 40]}}])).experiments[0]
    run = S.Run("s", experiment, 0, tmp_path / "r")
    run.folder.mkdir(parents=True)
    for lengths, done in (({"20": 1.0}, False), ({"20": 1.0, "40": 2.0}, True)):
        run.record_path.write_text(json.dumps({"status": "done", "evaluation": {"status": "done",
                                                                                 "bits_per_seq": lengths}}))
        assert run.is_done() is done


def test_a_seed_evaluated_with_other_evaluation_options_is_left_out_of_the_lengths_table(tmp_path):
    """The suite's evaluate.num_sequences changed and only seed 0 was evaluated again (`suite run --seeds 0`
    rewrites suite.json): seed 1's numbers, measured on 6 sequences, are not averaged in under the new options."""
    spec = {"kind": "algorithmic", "lengths": [20, 40], "num_sequences": 100}
    evaluated = {"status": "done", "train_range": [1, 20], "options": {"num_sequences": 100}}
    root = results_folder(tmp_path / "r", {"name": "ntm", "evaluate": spec},
                          {0: {"metrics": {}, "evaluation": {**evaluated, "bits_per_seq": {"20": 1.0, "40": 5.0}}},
                           1: {"metrics": {}, "evaluation": {**evaluated, "options": {"num_sequences": 6},
                                                              "bits_per_seq": {"20": 3.0, "40": 50.0}}}})
    row = S.build_report(root)["lengths"][0]
    assert row["bits_per_seq"]["40"] == {"mean": 5.0, "std": 0.0, "n": 1}
    assert row["bits_per_seq"]["20"] == {"mean": 1.0, "std": 0.0, "n": 1}
    assert ("seed 1 was evaluated with other evaluation options than the suite's now (num_sequences: 6, now 100), "
            "left out; `memnet suite run` evaluates it again") in row["notes"]


def test_a_seed_evaluated_at_fewer_lengths_is_named_where_it_is_left_out(tmp_path):
    """evaluate.lengths grew from [20, 40] to [20, 40, 80] and only seed 0 was evaluated again: L=80 is seed 0's
    alone, and says so (seed 1 is evaluated there on the next `suite run`)."""
    evaluated = {"status": "done", "train_range": [1, 20], "options": {}}
    root = results_folder(tmp_path / "r", {"name": "ntm", "evaluate": {"kind": "algorithmic", "lengths": [20, 40, 80]}},
                          {0: {"metrics": {}, "evaluation": {**evaluated, "bits_per_seq": {"20": 1.0, "40": 5.0,
                                                                                             "80": 9.0}}},
                           1: {"metrics": {}, "evaluation": {**evaluated, "bits_per_seq": {"20": 3.0, "40": 7.0}}}})
    row = S.build_report(root)["lengths"][0]
    assert row["bits_per_seq"]["80"] == {"mean": 9.0, "std": 0.0, "n": 1} and row["bits_per_seq"]["40"]["n"] == 2
    assert row["notes"] == [("L=80: seed 1 not evaluated at this length, left out; `memnet suite run` evaluates it "
                             "again")]


def test_without_an_evaluation_the_trained_lengths_come_from_the_run_config_not_its_validation(tmp_path):
    """A run trained on lengths 1-3 and validated at 3 and 6, not evaluated: the range was taken from the
    validation lengths, [3, 6], and L=6 was marked `*` (inside training) while L=1-2 would not have been."""
    root = results_folder(tmp_path / "r", {"name": "ntm"},
                          {0: {"metrics": {"val/len_3/bits_per_seq": 0.5, "val/len_6/bits_per_seq": 9.0}}})
    (root / "ntm" / "seed_0" / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"class_path": "tasks.algorithmic.AlgorithmicDataModule", "init_args": {
            "task": {"class_path": "tasks.algorithmic.CopyTask", "init_args": {"min_length": 1, "max_length": 3}},
            "val_lengths": [3, 6]}}}))
    report = S.build_report(root)
    assert report["lengths"][0]["training_range"] == [1, 3]
    header, rows = S.lengths_rows(report)
    cells = dict(zip(header, rows[0]))
    assert cells["L=3"].endswith(" * (val)") and "*" not in cells["L=6"]
    (root / "ntm" / "seed_0" / "config.yaml").write_text("data: {init_args: {}}\n")  # no task range: as before
    assert S.build_report(root)["lengths"][0]["training_range"] == [3, 6]


def test_a_run_evaluated_with_other_evaluation_options_is_evaluated_again(tmp_path, monkeypatch):
    """evaluate.memory_size (or num_sequences, seed, engine) changed in the suite file: the numbers measured
    with the old options are not kept under the new ones."""
    spec = {"kind": "algorithmic", "lengths": [3, 6], "memory_size": 64}
    suite = S.load_suite(write_suite(tmp_path / "a.yaml", [{**GOOD, "evaluate": spec}]))
    run = S.Run("s", suite.experiments[0], 0, tmp_path / "r")
    run.folder.mkdir(parents=True)
    fake_evaluation(monkeypatch, "pass")
    evaluation = S.SuiteRunner(suite, tmp_path / "r")._evaluate(run, run.experiment.evaluate, "best.ckpt", 0)
    assert evaluation["options"] == {"memory_size": 64}
    for options, done in (({"memory_size": 128}, False), ({"memory_size": 64}, True)):
        run.record_path.write_text(json.dumps({"status": "done", "evaluation": {**evaluation, "options": options}}))
        assert run.is_done() is done


# ---------------------------------------------------------------------------------------------
# Bad suite files: each fails before anything runs, naming the entry
# ---------------------------------------------------------------------------------------------

GOOD = {
    "name": "ntm-copy",
    "configs": ["configs/ntm/copy.yaml"],
    "seeds": 1,
    "budget": {"max_steps": 2},
}


@pytest.mark.parametrize(
    ("suite", "message"),
    [
        (
            {"name": "s", "experiments": [GOOD], "experimentz": []},
            r"bad.yaml:\d+: suite: unknown key 'experimentz'",
        ),
        (
            {"name": "s", "experiments": [{**GOOD, "seed": 3}]},
            r"bad.yaml:\d+: experiment 'ntm-copy': unknown key 'seed'",
        ),
        (
            {"name": "s", "experiments": [{**GOOD, "configs": ["configs/ntm/nope.yaml"]}]},
            r"experiment 'ntm-copy': config file 'configs/ntm/nope.yaml' does not exist",
        ),
        (
            {"name": "s", "experiments": [GOOD, {**GOOD, "seeds": 2}]},
            r"bad.yaml:\d+: experiment 'ntm-copy' \(entry 2\): duplicate experiment name, first defined on line \d+",
        ),
        (
            {"name": "s", "experiments": [{**GOOD, "seeds": 0}]},
            r"experiment 'ntm-copy': 'seeds' is 0",
        ),
        (
            {"name": "s", "experiments": [{**GOOD, "seeds": []}]},
            r"experiment 'ntm-copy': 'seeds' is an empty list",
        ),
        (
            {
                "name": "s",
                "defaults": {"seeds": 0},
                "experiments": [{k: v for k, v in GOOD.items() if k != "seeds"}],
            },
            r"bad.yaml:3: defaults: 'seeds' is 0",
        ),
        (
            {"name": "s", "experiments": [{**GOOD, "budget": {"max_steps": 0}}]},
            r"experiment 'ntm-copy': budget.max_steps must be a positive integer",
        ),
        (
            {"name": "s", "experiments": [{k: v for k, v in GOOD.items() if k != "budget"}]},
            r"experiment 'ntm-copy': no budget",
        ),
        (
            {"name": "s", "defaults": {"budget": "100"}, "experiments": [GOOD]},
            r"bad.yaml:3: defaults: 'budget' must be a mapping with max_steps, max_epochs, max_time, got '100'",
        ),
        (
            {"name": "s", "defaults": {"budget": [1]}, "experiments": [GOOD]},
            r"bad.yaml:3: defaults: 'budget' must be a mapping with max_steps, max_epochs, max_time, got \[1\]",
        ),
        (
            {"name": "s", "experiments": [{**GOOD, "overrides": {"trainer.max_steps": 5}}]},
            r"override 'trainer.max_steps': give the training length in 'budget'",
        ),
        (
            {
                "name": "s",
                "experiments": [{**GOOD, "evaluate": {"kind": "algorithmic", "lengths": [0]}}],
            },
            r"experiment 'ntm-copy': evaluate.lengths must be a non-empty list of positive integers",
        ),
        (
            {"name": "s", "experiments": [{**GOOD, "evaluate": {"kind": "poetry"}}]},
            r"experiment 'ntm-copy': 'evaluate' must be a mapping with kind one of \['algorithmic', 'babi'\]",
        ),
        ({"name": "s", "experiments": []}, r"'experiments' must be a non-empty list"),
        (
            {"name": "s", "experiments": [{**GOOD, "name": "a/b"}]},
            r"experiment entry 1: 'name' must be a name",
        ),
    ],
)
def test_bad_suite_file_fails_before_anything_runs(tmp_path, monkeypatch, capsys, suite, message):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    with pytest.raises(S.SuiteError, match=message):
        S.load_suite(path)
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["suite", "run", str(path), "--results", str(results)])
    assert exit_info.value.code == 2
    assert "memnet suite: " in capsys.readouterr().err
    assert not results.exists()


@pytest.mark.parametrize("name", ["report", "jobs", "wandb", "suite.json", "events.jsonl", "Report"])
def test_an_experiment_named_as_what_the_suite_writes_itself_is_refused(tmp_path, monkeypatch, capsys, name):
    """RESULTS/<experiment>/ would share a folder with the report, submitit's jobs or the W&B summary run, or
    be a file the suite writes ("Report" is "report" on a case-insensitive file system): refused on loading."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "reserved.yaml", [LSTM, {**LSTM, "name": name}])
    with pytest.raises(S.SuiteError) as error:
        S.load_suite(path)
    line = 1 + [text.strip() for text in path.read_text().splitlines()].index(f"- name: {name}")
    assert str(error.value) == (
        f"{path}:{line}: experiment {name!r} (entry 2): the name "
        f"is reserved, its runs would share RESULTS/{name} with what the suite writes there itself; reserved names: "
        "events.jsonl, jobs, report, suite.json, wandb")
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["suite", "run", str(path), "--results", str(results)])
    assert exit_info.value.code == 2 and "the name is reserved" in capsys.readouterr().err
    assert not results.exists()
    S.load_suite(write_suite(tmp_path / "near.yaml", [{**LSTM, "name": f"{name}-lstm"}]))  # only the names themselves


def test_error_names_the_line_of_the_entry(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "lines.yaml"
    path.write_text(
        "name: s\n"
        "experiments:\n"
        "  - name: a\n"
        "    configs: [configs/ntm/copy.yaml]\n"
        "    budget: {max_steps: 2}\n"
        "  - name: b\n"
        "    configs: [configs/lstm/copy.yaml]\n"
        "    budget: {max_steps: 2}\n"
        "    seeds: 0\n"
    )
    with pytest.raises(S.SuiteError, match=r"lines.yaml:9: experiment 'b': 'seeds' is 0"):
        S.load_suite(path)


DEFAULTED = """\
name: s
defaults:
  seeds: 2
  budget:
    max_steps: 100
  overrides:
    trainer.log_every_n_steps: 5
  seed_args: [seed_everything]
experiments:
  - name: a
    configs: [configs/ntm/copy.yaml]
"""


@pytest.mark.parametrize(("replaced", "text", "line", "message"), [
    (3, "  seeds: 0", 3, "defaults: 'seeds' is 0"),
    (5, "    max_steps: 0", 5, "defaults: budget.max_steps must be a positive integer, got 0"),
    (5, "    max_stepz: 100", 5, "defaults: budget: unknown key 'max_stepz'"),
    (7, "    trainer.max_epochs: 5", 7, "defaults: override 'trainer.max_epochs': give the training length in"),
    (7, "    - trainer.log_every_n_steps", 6, "defaults: 'overrides' must be a mapping of dotted field names"),
    (8, "  seed_args: []", 8, "defaults: 'seed_args' must be a non-empty list of dotted field names"),
    (8, "  evaluate: {kind: poetry}", 8, "defaults: 'evaluate' must be a mapping with kind one of"),
    (8, "  evaluate: {kind: algorithmic, lengths: [0]}", 8, "defaults: evaluate.lengths must be a non-empty list"),
    (8, "  select: 3", 8, "defaults: select must be a mapping {metric, split, mode}, got 3"),
])
def test_a_bad_value_an_experiment_takes_from_defaults_is_named_on_its_line_in_defaults(
        tmp_path, monkeypatch, replaced, text, line, message):
    """Such an error named the experiment's line (10 here), where the value is not, or no line at all."""
    monkeypatch.chdir(ROOT)
    lines = DEFAULTED.splitlines()
    lines[replaced - 1] = text
    path = tmp_path / "s.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(S.SuiteError) as error:
        S.load_suite(path)
    assert str(error.value).startswith(f"{path}:{line}: {message}")


def test_a_bad_field_of_a_budget_merged_from_defaults_and_the_experiment_is_named_where_it_is_written(
        tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "s.yaml"
    path.write_text(DEFAULTED.replace("max_steps: 100", "max_steps: 0") + "    budget: {max_epochs: 2}\n")
    with pytest.raises(S.SuiteError, match=re.escape(f"{path}:5: defaults: budget.max_steps must be a positive")):
        S.load_suite(path)
    path.write_text(DEFAULTED + "    budget:\n      max_epochs: 0\n")  # the experiment's own: its line
    with pytest.raises(S.SuiteError, match=re.escape(f"{path}:13: experiment 'a': budget.max_epochs must be a")):
        S.load_suite(path)
    path.write_text(DEFAULTED + "    seeds: 0\n")
    with pytest.raises(S.SuiteError, match=re.escape(f"{path}:12: experiment 'a': 'seeds' is 0")):
        S.load_suite(path)
    path.write_text(DEFAULTED + "    overrides:\n      x: 1\n      trainer.max_steps: 5\n")
    with pytest.raises(S.SuiteError, match=re.escape(f"{path}:14: experiment 'a': override 'trainer.max_steps'")):
        S.load_suite(path)


def test_fit_arguments_carry_configs_overrides_budget_seed_and_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = write_suite(
        tmp_path / "args.yaml",
        [
            {
                **NTM,
                "overrides": {
                    "model.init_args.net.init_args.memory_size": 7,
                    "data.init_args.val_lengths": [3, 6],
                },
            }
        ],
    )
    (experiment,) = S.load_suite(path).experiments
    run = S.Run("tiny", experiment, 1, tmp_path / "results")
    argv = run.fit_argv(base=ROOT, resume_from=None)
    assert argv[:3] == ["fit", "--config", str(ROOT / "configs/ntm/copy.yaml")]
    assert "--model.init_args.net.init_args.memory_size=7" in argv
    assert "--data.init_args.val_lengths=[3, 6]" in argv
    assert (
        "--trainer.max_steps=4" in argv
        and "--seed_everything=1" in argv
        and "--data.init_args.seed=1" in argv
    )
    assert (
        f"--checkpoint.dirpath={(tmp_path / 'results' / 'ntm-copy' / 'seed_1' / 'checkpoints').resolve()}"
        in argv
    )
    assert not any(
        a.startswith("--trainer.logger.init_args") for a in argv
    )  # the suite turned the logger off
    # with the default W&B logger, each run is named and grouped by the suite
    plain = S.Experiment(
        name="x",
        configs=("configs/ntm/copy.yaml",),
        overrides={},
        seeds=(0,),
        budget={"max_steps": 1},
        evaluate=None,
        model="ntm",
        task="copy",
    )
    argv = S.Run("tiny", plain, 0, tmp_path).fit_argv(base=ROOT)
    assert (
        "--trainer.logger.init_args.group=tiny" in argv
        and "--trainer.logger.init_args.name=x-seed0" in argv
    )


def _wandb_ids(folder: Path) -> list[str]:
    """The W&B run id of every attempt logged under a suite run's folder (``wandb/*run-*/run-<id>.wandb``)."""
    return sorted(p.stem.removeprefix("run-") for p in folder.glob("wandb/*run-*/run-*.wandb")
                  if not p.parent.is_symlink())


def test_a_resumed_run_continues_the_wandb_run_it_logged_to(tmp_path, monkeypatch):
    """Training cut off (preempted, interrupted) and resumed from last.ckpt logs on to the same W&B run, as
    ``memnet fit --ckpt_path <run>/checkpoints/last.ckpt`` does; it started a new W&B run (another id, the same
    name), so the run's curve was split over two runs and the first one's steps repeated."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline: memnet's default
    defaults = {**TINY_DEFAULTS, "seeds": [0], "overrides": {
        key: value for key, value in TINY_DEFAULTS["overrides"].items() if key != "trainer.logger"}}
    experiment = {**LSTM, "budget": {"max_steps": 2}}

    def suite_file(max_steps: int) -> Path:
        return write_suite(tmp_path / f"w{max_steps}.yaml", [{**experiment, "budget": {"max_steps": max_steps}}],
                           name="w", defaults=defaults)

    results = tmp_path / "results"
    assert S.main(["run", str(suite_file(2)), "--results", str(results), "--no-report"]) == 0
    folder = results / "lstm-copy" / "seed_0"
    (first,) = _wandb_ids(folder)
    record = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**record, "status": "interrupted"}))  # cut before its end
    (folder / "summary.json").unlink()
    run = S.expand_runs(S.load_suite(suite_file(4)), results)[0]
    assert f"--trainer.logger.init_args.id={first}" in run.fit_argv(base=ROOT, resume_from=run.last_checkpoint())
    assert S.main(["run", str(suite_file(4)), "--results", str(results), "--no-report"]) == 0
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert _wandb_ids(folder) == [first, first]  # two attempts, one W&B run
    assert "--trainer.logger.init_args.id=" not in " ".join(run.fit_argv(base=ROOT))  # a new training: W&B's own id


def test_a_suite_with_logger_true_logs_to_w_and_b_in_the_run_folder(tmp_path, monkeypatch):
    """``trainer.logger: true`` is memnet's default W&B logger; the suite named none of its fields there (the parser
    takes none after ``true``), so W&B's files went to the working folder's runs/wandb/, the run ungrouped and
    unnamed, and a resumed training could not find the W&B run to continue."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline: memnet's default
    defaults = {**TINY_DEFAULTS, "seeds": [0], "overrides": {**TINY_DEFAULTS["overrides"], "trainer.logger": True}}
    experiment = {**LSTM, "configs": [str(ROOT / "configs" / "lstm" / "copy.yaml")], "budget": {"max_steps": 2}}
    path = write_suite(tmp_path / "t.yaml", [experiment], name="t", defaults=defaults)
    results = tmp_path / "results"
    assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 0
    folder = results / "lstm-copy" / "seed_0"
    assert len(_wandb_ids(folder)) == 1 and not (tmp_path / "runs" / "wandb").exists()
    logger = yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["logger"]
    assert logger["class_path"] == "memnet.callbacks.OfflineFirstWandbLogger"
    assert {key: logger["init_args"][key] for key in ("project", "group", "name", "job_type")} == {
        "project": "memnet", "group": "t", "name": "lstm-copy-seed0", "job_type": "train"}
    assert Path(json.loads((folder / "summary.json").read_text())["wandb_dir"]).parent == (folder / "wandb").resolve()


@pytest.mark.parametrize("key, value, expected", [
    ("model.init_args.net.init_args.memroy_size", 7,
     ("--model.init_args.net.init_args.memroy_size: memnet.models.ntm.NTM takes no option 'memroy_size'; did you mean "
      "memory_size?")),
    ("model.init_args.net.init_args.memory_size", "lots", "lots"),
])
def test_dry_run_catches_a_bad_override_before_anything_runs(tmp_path, monkeypatch, capsys, key, value, expected):
    monkeypatch.chdir(ROOT)
    bad = {**NTM, "overrides": {**NTM["overrides"], key: value}}
    path = write_suite(tmp_path / "typo.yaml", [LSTM, bad])
    assert S.main(["run", str(path), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "memnet suite: experiment 'ntm-copy': its memnet fit arguments do not parse:" in err and expected in err
    assert not (tmp_path / "r").exists()


def test_set_adds_an_override_to_every_experiment(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "set.yaml", [NTM, LSTM])
    suite = S.with_overrides(S.load_suite(path), ["trainer.devices=2", "trainer.strategy=ddp"])
    for experiment in suite.experiments:
        assert (
            experiment.overrides["trainer.devices"] == 2
            and experiment.overrides["trainer.strategy"] == "ddp"
        )
    assert (
        S.main(
            [
                "run",
                str(path),
                "--results",
                str(tmp_path / "r"),
                "--dry-run",
                "--set",
                "trainer.accelerator=gpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("--trainer.accelerator=gpu") == 4 and not (tmp_path / "r").exists()
    for bad, message in (
        ("trainer.max_steps=3", "training length"),
        ("devices", "expected FIELD=VALUE"),
    ):
        with pytest.raises(S.SuiteError, match=message):
            S.with_overrides(suite, [bad])


def test_seeds_runs_only_the_named_seeds_and_refuses_an_unknown_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "seeds.yaml", [NTM, {**LSTM, "seeds": [0, 1, 2]}])
    argv = ["run", str(path), "--results", str(tmp_path / "r"), "--dry-run"]
    assert S.main([*argv, "--seeds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["[train] ntm-copy/seed_1", "[train] lstm-copy/seed_1"]
    assert all("--seed_everything=1 " in line for line in lines)
    assert S.main([*argv, "--seeds", "2", "0"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == [
        "[train] ntm-copy/seed_0", "[train] lstm-copy/seed_0", "[train] lstm-copy/seed_2"]
    # seed 2 is the LSTM's only: with --only ntm-copy it names no run, and that is an error, not an empty suite
    assert S.main([*argv, "--only", "ntm-copy", "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert "--seeds 2: no experiment of --only in suite 'tiny' has that seed; its seeds: 0, 1" in err
    assert not (tmp_path / "r").exists()


def trained_before(path: Path, results: Path) -> S.Run:
    """The suite's first run as a kill during its evaluation leaves it: trained (``summary.json``, a
    ``trained`` record after 5 s of training), not evaluated; its checkpoint's folder has a space."""
    suite = S.load_suite(path)
    run = S.expand_runs(suite, results)[0]
    run.folder.mkdir(parents=True)
    checkpoint = str(run.folder / "check points" / "best.ckpt")
    summary = {"best_checkpoint": checkpoint, "last_checkpoint": checkpoint, "metrics": {"val/bits_per_seq": 1.5}}
    (run.folder / "summary.json").write_text(json.dumps(summary))
    S.SuiteRunner(suite, results)._write_record(run, status="trained", train_seconds=5.0)
    return run


def fake_evaluation(monkeypatch, code: str) -> None:
    """The algorithmic evaluation as ``python -c code``; what it "wrote" reads as bits per sequence at L=3 and 6."""
    real = evaluators.EVALUATORS["algorithmic"]
    monkeypatch.setitem(evaluators.EVALUATORS, "algorithmic", evaluators.Evaluator(
        real.check, lambda run, checkpoint, spec: ["-c", code],
        lambda run, spec: {"bits_per_seq": {"3": 0.5, "6": 2.5}}))


def test_dry_run_prints_the_evaluation_of_a_trained_run_and_quotes_for_the_shell(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    spaced = {**NTM, "seeds": [0, 1], "overrides": {**NTM["overrides"], "data.init_args.val_lengths": [3, 6]}}
    path = write_suite(tmp_path / "dry.yaml", [spaced])
    results = tmp_path / "r"
    evaluated = trained_before(path, results)
    assert S.main(["run", str(path), "--results", str(results), "--dry-run"]) == 0
    evaluate, train = capsys.readouterr().out.splitlines()
    checkpoint = evaluated.trained_checkpoint()
    command = evaluators.EVALUATORS["algorithmic"].command(evaluated, checkpoint, evaluated.experiment.evaluate)
    assert evaluate.startswith("[evaluate] ntm-copy/seed_0: memnet evaluate --ckpt_path ")
    assert shlex.split(evaluate.split(": ", 1)[1]) == ["memnet", *command[2:]]
    fresh = S.expand_runs(S.load_suite(path), results)[1]
    assert train.startswith("[train] ntm-copy/seed_1: memnet fit ")
    assert shlex.split(train.split(": ", 1)[1]) == ["memnet", *fresh.fit_argv(base=ROOT)]


@pytest.mark.parametrize("failure", ["failed", "unavailable"])
def test_a_failed_evaluation_fails_the_run_and_is_tried_again(tmp_path, monkeypatch, capsys, failure):
    """An evaluation that fails, or that this checkout cannot run, is a failed run (exit 1, `failed` with
    the evaluation's error in status); the next `suite run` only evaluates it, and says so."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "ev.yaml", [{**NTM, "seeds": [0]}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    if failure == "failed":
        fake_evaluation(monkeypatch, "import sys; sys.exit('ValueError: the checkpoint is unreadable')")
        expected = "ValueError: the checkpoint is unreadable"
    else:
        monkeypatch.setattr(evaluators, "find_spec", lambda name: None)
        expected = "length generalisation not measured: memnet.evaluation (`memnet evaluate`) is not in this checkout"
    assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 1
    assert "finished: 0 trained now, 0 already done, 1 failed" in capsys.readouterr().out
    record = run.record()
    assert (record["status"], record["stage"], record["error"], record["train_seconds"]) == (
        "failed", "evaluate", expected, 5.0)
    assert [(s["state"], s["detail"]) for s in launcher.run_states(results)] == [("failed", f"evaluate: {expected}")]
    monkeypatch.undo()
    monkeypatch.chdir(ROOT)
    fake_evaluation(monkeypatch, "pass")
    assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 0
    assert ("finished: 0 trained now, 1 only evaluated now (trained before), 0 already done, 0 failed"
            in capsys.readouterr().out)
    assert run.is_done() and run.record()["train_seconds"] == 5.0 and not events(results, "start")


@pytest.mark.parametrize("left", [{"status": "failed", "stage": "job", "error": "TIMEOUT (the run left trained)"},
                                  {"status": "requeued", "requeues": 1}])
def test_a_run_whose_job_ended_after_training_finished_is_only_evaluated(tmp_path, monkeypatch, capsys, left):
    """A cluster job that ended (failed at stage `job`) or was requeued while evaluating: the run has its summary.json,
    training finished. It was trained again: `memnet fit` resumed from the final last.ckpt and stopped at once,
    rewriting summary.json from the checkpoint; only its evaluation is left, as for a failed evaluation."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "job.yaml", [{**NTM, "seeds": [0]}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    S.SuiteRunner(S.load_suite(path), results)._write_record(run, train_seconds=5.0, **left)
    runner = S.SuiteRunner(S.load_suite(path), results)
    assert runner.plan(run)[0] == "evaluate"
    fake_evaluation(monkeypatch, "pass")
    assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 0
    assert ("finished: 0 trained now, 1 only evaluated now (trained before), 0 already done, 0 failed"
            in capsys.readouterr().out)
    assert run.is_done() and run.record()["train_seconds"] == 5.0 and not events(results, "start")


def test_a_trained_run_of_a_moved_results_folder_is_evaluated_on_its_own_checkpoint(tmp_path, monkeypatch, capsys):
    """summary.json holds the absolute paths of the folder `memnet fit` trained in: a results folder moved before its
    evaluation ran had the evaluation given a checkpoint where the folder was. The record keeps its paths relative
    to the results folder."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "moved.yaml", [{**NTM, "seeds": [0]}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    checkpoints = run.folder / "checkpoints"
    (run.folder / "summary.json").write_text(json.dumps({  # as `memnet fit` writes it
        "run_dir": str(run.folder), "best_checkpoint": str(checkpoints / "best.ckpt"),
        "last_checkpoint": str(checkpoints / "last.ckpt"), "wandb_dir": str(run.folder / "wandb" / "offline-run-1"),
        "metrics": {"val/bits_per_seq": 1.5}}))
    moved = tmp_path / "elsewhere"
    os.rename(results, moved)
    given = []
    real = evaluators.EVALUATORS["algorithmic"]
    monkeypatch.setitem(evaluators.EVALUATORS, "algorithmic", evaluators.Evaluator(
        real.check, lambda run, checkpoint, spec: given.append(checkpoint) or ["-c", "pass"],
        lambda run, spec: {"bits_per_seq": {"3": 0.5, "6": 2.5}}))
    assert S.main(["run", str(path), "--results", str(moved), "--no-report"]) == 0
    assert given == [str(moved / "ntm-copy" / "seed_0" / "checkpoints" / "best.ckpt")]
    record = json.loads((moved / "ntm-copy" / "seed_0" / "metrics.json").read_text())
    assert {key: record[key] for key in ("checkpoint", "last_checkpoint", "config", "wandb_dir")} == {
        "checkpoint": "ntm-copy/seed_0/checkpoints/best.ckpt",
        "last_checkpoint": "ntm-copy/seed_0/checkpoints/last.ckpt",
        "config": "ntm-copy/seed_0/config.yaml", "wandb_dir": "ntm-copy/seed_0/wandb/offline-run-1"}


@pytest.mark.parametrize("hyper_parameters", [{"lr": 0.1}, {"time": "a datetime.timedelta"}])
def test_a_finished_run_records_the_metrics_of_the_checkpoint_it_was_tested_on(tmp_path, monkeypatch,
                                                                                hyper_parameters):
    """The record keeps, beside the run's final metrics, those saved in the checkpoint its evaluation tested (its
    best, here at another step than the end): a `select` rule compares the runs by them (memnet.selection). A
    checkpoint holding an object the safe unpickler refuses (a timedelta) is read whole, as memnet's own."""
    import datetime

    if "time" in hyper_parameters:
        hyper_parameters = {"time": datetime.timedelta(days=1)}
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "tested.yaml", [{**NTM, "seeds": [0]}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    checkpoint = run.folder / "check points" / "best.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": hyper_parameters,
                "memnet_metrics": {"train/bits_per_seq": 3.0, "val/loss": 0.25}}, checkpoint)
    fake_evaluation(monkeypatch, "pass")
    assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 0
    record = run.record()
    assert record["metrics"] == {"val/bits_per_seq": 1.5}  # the run's end, as summary.json has it
    assert record["checkpoint_metrics"] == {"train/bits_per_seq": 3.0, "val/loss": 0.25}
    assert record["checkpoint"] == "ntm-copy/seed_0/check points/best.ckpt"


def test_a_run_whose_handling_raises_is_failed_at_once_and_evaluated_again(tmp_path, monkeypatch, capsys):
    """An exception in the suite's own handling of a run (here: collecting a finished evaluation) fails that run
    when it happens, named with the stage it was in, where the worker thread kept it until every run had ended
    (the run left `trained`, counted as running); the next `suite run` evaluates it again."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "crash.yaml", [{**NTM, "seeds": [0]}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    fake_evaluation(monkeypatch, "pass")

    def collect(self, *args, **kwargs):
        raise RuntimeError("collect broke")

    monkeypatch.setattr(S.SuiteRunner, "_evaluate", collect)
    assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 1
    out = capsys.readouterr().out
    assert "FAILED ntm-copy/seed_0 (evaluate): memnet suite: RuntimeError: collect broke" in out
    assert "finished: 0 trained now, 0 already done, 1 failed" in out
    record = run.record()
    assert (record["status"], record["stage"], record["error"], record["train_seconds"]) == (
        "failed", "evaluate", "memnet suite: RuntimeError: collect broke", 5.0)
    monkeypatch.undo()
    monkeypatch.chdir(ROOT)
    fake_evaluation(monkeypatch, "pass")
    assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 0
    assert "1 only evaluated now (trained before)" in capsys.readouterr().out and run.is_done()


def test_config_paths_fall_back_to_the_shipped_configs_from_any_folder(tmp_path, monkeypatch):
    """As in `memnet fit --config`: a config path that is not a file from here names a shipped config; the
    suite keeps its absolute path, which memnet fit is given."""
    monkeypatch.chdir(tmp_path)
    for shipped in SUITES:
        for experiment in S.load_suite(shipped).experiments:
            assert all(Path(c).is_absolute() and Path(c).is_file() for c in experiment.configs), experiment.name
    path = write_suite(tmp_path / "short.yaml", [{**LSTM, "configs": ["lstm/copy"]}, NTM])
    lstm, ntm = S.load_suite(path).experiments
    assert lstm.configs == (str(ROOT / "configs" / "lstm" / "copy.yaml"),) and (lstm.model, lstm.task) == (
        "lstm", "copy")
    argv = S.Run("tiny", ntm, 0, tmp_path / "r").fit_argv(base=tmp_path)
    assert argv[:3] == ["fit", "--config", str(ROOT / "configs" / "ntm" / "copy.yaml")]
    bad = write_suite(tmp_path / "bad.yaml", [{**NTM, "configs": ["configs/ntm/copyy.yaml"]}])
    line = bad.read_text().splitlines().index("  configs:") + 1
    with pytest.raises(S.SuiteError) as error:
        S.load_suite(bad)
    assert str(error.value).startswith(
        f"{bad}:{line}: experiment 'ntm-copy': config file 'configs/ntm/copyy.yaml' does not exist (looked in "
        f"{tmp_path / 'configs' / 'ntm'}, then among the shipped configs: --config configs/ntm/copyy.yaml: "
        "neither a file nor a shipped config; close matches: ntm/copy")


def test_a_report_killed_while_writing_leaves_the_earlier_leaderboard_whole(tmp_path, monkeypatch):
    """leaderboard.md/.csv/.json were written in place: a kill halfway left a leaderboard cut short, its last
    experiments missing, that read as the whole suite's."""
    root = results_folder(tmp_path / "r", {"name": "e"}, {0: {"metrics": {"val/loss": 0.2}},
                                                          1: {"metrics": {"val/loss": 0.4}}})
    S.write_report(root)
    names = ("leaderboard.md", "leaderboard.csv", "leaderboard.json")
    before = {name: (root / "report" / name).read_text() for name in names}
    write_text = Path.write_text

    def killed_halfway(self, text, *args, **kwargs):  # half the text reaches the disk, then the kill
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    (root / "e" / "seed_1" / "metrics.json").write_text(json.dumps({"seed": 1, "status": "done",
                                                                    "metrics": {"val/loss": 0.6}}))
    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        S.write_report(root)
    monkeypatch.undo()
    assert {name: (root / "report" / name).read_text() for name in names} == before
    assert not [p.name for p in (root / "report").iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("command", ["report", "ensemble"])
def test_a_report_out_that_is_a_file_is_refused_in_one_line(tmp_path, monkeypatch, capsys, command):
    """suite report --out naming a file stopped with a traceback (FileExistsError from mkdir), and suite ensemble
    only after it had made its ensembles."""
    root = results_folder(tmp_path / "r", {"name": "e"}, {0: {"metrics": {"val/loss": 0.2}}})
    (tmp_path / "afile").write_text("keep")
    monkeypatch.setattr(command_module, "make_ensembles", lambda *args: pytest.fail("ensembles made"))
    assert S.main([command, str(root), "--no-wandb", "--out", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"memnet suite: --out: {tmp_path / 'afile'} is a file, not a folder; give --out a folder (it is made if "
        "missing)")
    assert (tmp_path / "afile").read_text() == "keep"


def test_report_of_a_folder_without_a_suite_is_an_error(tmp_path, capsys):
    assert S.main(["report", str(tmp_path)]) == 2
    assert "is not a suite results folder" in capsys.readouterr().err


@pytest.mark.parametrize("text, problem", [
    ('{"name": "s", "experi', "not JSON (Unterminated string starting at: line 1 column 15 (char 14))"),
    ('{"name": "s"}', "not a suite as `memnet suite run` writes it (KeyError: 'experiments')"),
    ("[1, 2]", "not a suite as `memnet suite run` writes it (TypeError: list indices must be integers"),
])
@pytest.mark.parametrize("command", ["report", "status"])
def test_report_and_status_of_a_damaged_suite_json_name_it(tmp_path, capsys, text, problem, command):
    (tmp_path / "suite.json").write_text(text)  # a run killed while writing it, or an edit by hand
    assert S.main([command, str(tmp_path), "--no-wandb"] if command == "report" else [command, str(tmp_path)]) == 2
    assert f"memnet suite: {tmp_path / 'suite.json'}: {problem}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "status"])
def test_report_and_status_of_a_damaged_run_record_name_it(tmp_path, capsys, command):
    """A metrics.json cut short (a kill while writing it, by an older memnet) read as no record: status said
    "pending, not started" and the report "1 not finished", its mean over the other seed alone, exit 0."""
    root = results_folder(tmp_path / "r", {"name": "e"}, {0: {"metrics": {"val/loss": 0.2}},
                                                          1: {"metrics": {"val/loss": 0.4}}})
    record = root / "e" / "seed_1" / "metrics.json"
    record.write_text('{"seed": 1, "stat')
    damaged = (f"{record}: the record of run e/seed_1 is damaged: not JSON (Unterminated string starting at: line 1 "
               "column 13 (char 12)); it says whether the run is done")
    if command == "report":
        assert S.main(["report", str(root), "--no-wandb"]) == 2
        assert capsys.readouterr().err.startswith(f"memnet suite: {damaged}")
        assert not (root / "report").exists()
    else:
        assert S.main(["status", str(root)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[3].startswith(f"| e/seed_1 | damaged | {damaged}")
        assert lines[-1] == "1 finished, 1 damaged"


def test_a_suite_run_killed_while_writing_suite_json_leaves_the_previous_one_whole(tmp_path, monkeypatch, capsys):
    """suite.json was written in place: a kill halfway left half a file, which status and report then refused."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "s.yaml", [{**LSTM, "seeds": [0]}])
    results = tmp_path / "r"
    results.mkdir()
    S.SuiteRunner(S.load_suite(path), results)._write_suite_file()
    before = (results / "suite.json").read_text()
    write_text = Path.write_text

    def killed_halfway(self, text, *args, **kwargs):  # half the text reaches the disk, then the kill
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    assert S.main(["run", str(path), "--results", str(results), "--no-report", "--set", "data.init_args.batch_size=2"]) == 130
    monkeypatch.undo()
    assert (results / "suite.json").read_text() == before
    assert sorted(p.name for p in results.iterdir()) == ["suite.json"]  # no partial file left beside it
    assert "memnet suite: interrupted" in capsys.readouterr().err


def test_a_run_killed_while_writing_its_command_or_babi_errors_leaves_no_half_file(tmp_path, monkeypatch):
    """command.json and ``suite _evaluate``'s per-task errors were written in place: a kill halfway left half a
    file (a command that is no longer JSON; per-task errors that babi-table --results refused as damaged)."""
    monkeypatch.chdir(ROOT)
    write_text = Path.write_text

    def killed_halfway(self, text, *args, **kwargs):  # half the text reaches the disk, then the kill
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    suite = S.load_suite(write_suite(tmp_path / "s.yaml", [{**LSTM, "seeds": [0]}]))
    (run,) = S.expand_runs(suite, tmp_path / "r")
    monkeypatch.setattr(S.SuiteRunner, "_process", lambda self, argv, log, slot: pytest.fail("trained"))
    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        S.SuiteRunner(suite, tmp_path / "r")._train_and_evaluate(run, 0)
    out = tmp_path / "babi_test.json"
    monkeypatch.setattr(command_module, "run_stage", lambda stage, ckpt, config: {"test/task_1/error": 2.0})
    with pytest.raises(KeyboardInterrupt):
        S.main(["_evaluate", "test", "--config", "c.yaml", "--ckpt_path", "x.ckpt", "--name", "e", "--out", str(out)])
    monkeypatch.undo()
    assert sorted(p.name for p in run.folder.iterdir()) == []
    assert not out.exists()


@pytest.mark.parametrize("text, problem", [
    ('{"status": "do', "not JSON (Unterminated string starting at: line 1 column 12 (char 11))"),
    ("", "empty"),
    ('["done"]', "not a JSON object but list"),
    (b"\xff\xfe", "unreadable ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_damaged_run_record_stops_the_suite_naming_it_not_training_over_the_run(
        tmp_path, monkeypatch, capsys, text, problem, dry_run):
    """A metrics.json that cannot be read was taken for "not done": the run was trained again over its checkpoints
    and record. The suite stops before anything runs, naming the file (exit 2); a missing one is still "not done"."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "s.yaml", [{**NTM, "seeds": [0, 1]}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    (run.folder / "summary.json").unlink()
    (run.record_path.write_bytes if isinstance(text, bytes) else run.record_path.write_text)(text)
    real_run = S.SuiteRunner.run
    monkeypatch.setattr(S.SuiteRunner, "run", lambda self, runs: pytest.fail("the suite went on to train"))
    argv = ["run", str(path), "--results", str(results), "--no-report", *(["--dry-run"] if dry_run else [])]
    assert S.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"memnet suite: {run.record_path}: the record of run ntm-copy/seed_0 is damaged: {problem}; it says whether "
        f"the run is done, so nothing was trained over it: mend it, or delete the run's folder {run.folder} to train "
        "the run anew")
    assert sorted(p.name for p in results.iterdir()) == ["ntm-copy"]  # nothing written: not even suite.json
    with pytest.raises(S.SuiteError, match="the record of run ntm-copy/seed_0 is damaged"):  # nor through the API
        real_run(S.SuiteRunner(S.load_suite(path), results), S.expand_runs(S.load_suite(path), results))
    run.record_path.unlink()  # no record: the run is not done, and is trained
    assert S.SuiteRunner(S.load_suite(path), results).plan(run)[0] == "train"


def test_a_run_another_suite_run_is_at_is_skipped_and_a_dead_holders_lock_does_not_block(tmp_path, monkeypatch,
                                                                                            capsys):
    """Two `memnet suite run` of one results folder trained the same run at once, into one folder (one resumed from
    the other's checkpoints while they were written). The process at a run holds its suite.lock (flock): another
    skips the run in one line; the lock of a process that ended holds nothing, whatever its file says."""
    import fcntl

    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "s.yaml", [{**NTM, "seeds": [0]}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    fake_evaluation(monkeypatch, "pass")
    argv = ["run", str(path), "--results", str(results), "--no-report"]
    with open(run.folder / "suite.lock", "a+") as held:  # as another process at the run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(json.dumps({"pid": 4321, "host": "node7"}))
        held.flush()
        assert S.main(argv) == 0
        out = capsys.readouterr().out
        assert (f"skipped ntm-copy/seed_0: another memnet suite (process 4321 on node7) is training or evaluating it "
                f"now (it holds {run.folder / 'suite.lock'}); not run here") in out
        assert ("finished: 0 trained now, 0 already done, 0 failed, 1 left to the other memnet suite at them"
                in out)
        assert run.record()["status"] == "trained"
    # its holder gone (the flock goes with it), the file saying pid 4321 stays: the run is the next one's
    assert json.loads((run.folder / "suite.lock").read_text()) == {"pid": 4321, "host": "node7"}
    assert S.main(argv) == 0
    assert "1 only evaluated now (trained before)" in capsys.readouterr().out and run.is_done()


def test_only_judges_its_own_runs_and_warns_of_another_experiments_damaged_record(tmp_path, monkeypatch, capsys):
    """`suite run --only ntm-copy` whose run finished ended with exit 2 for the damaged record of another experiment
    (lstm-copy), met by the report written at the end ('memnet suite: .../metrics.json: the record of run
    lstm-copy/seed_0 is damaged ...'); it is a warning line, the exit status that of the runs of --only."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "s.yaml", [{**NTM, "seeds": [0]}, {**LSTM, "seeds": [0]}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    other = S.expand_runs(S.load_suite(path), results, ["lstm-copy"])[0]
    other.folder.mkdir(parents=True)
    other.record_path.write_text('{"seed": 0, "stat')
    fake_evaluation(monkeypatch, "pass")
    assert S.main(["run", str(path), "--results", str(results), "--only", "ntm-copy", "--no-wandb"]) == 0
    captured = capsys.readouterr()
    assert "finished: 0 trained now, 1 only evaluated now (trained before), 0 already done, 0 failed" in captured.out
    assert captured.err.splitlines() == [
        (f"memnet suite: warning: report not written: {other.record_path}: the record of run lstm-copy/seed_0 is "
        "damaged: not JSON (Unterminated string starting at: line 1 column 13 (char 12)); it says whether the run is "
        f"done, so nothing was trained over it: mend it, or delete the run's folder {other.folder} to train the run "
        "anew")]
    assert run.is_done() and other.record_path.read_text() == '{"seed": 0, "stat'


# ---------------------------------------------------------------------------------------------
# The shipped suites
# ---------------------------------------------------------------------------------------------

SUITES = sorted((ROOT / "configs" / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suites_are_valid(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    suite = S.load_suite(path)
    assert suite.name == path.stem
    assert suite.experiments



@pytest.mark.parametrize("path", [p for p in SUITES if p.stem != "smoke"], ids=lambda p: p.stem)
def test_a_shipped_one_cycle_schedule_is_as_long_as_its_run(path, monkeypatch):
    """An experiment on a OneCycleLR trains for the schedule's ``total_steps``: a budget of fewer steps stops the
    run part way through the schedule, its rate never annealed (the algorithmic suite's ntm-copy trained 4,000 steps
    of a 6,000-step schedule and ended at 0.9e-3 of its 3e-3 peak, ntm-ngrams 5,000 of 6,000). The smoke suite's
    two-step runs are exempt."""
    from memnet.cli import configs as C

    monkeypatch.chdir(ROOT)
    for experiment in S.load_suite(path).experiments:
        config: dict = {}
        for name in experiment.configs:
            config = C.merge(config, C.load_config(name))
        scheduler = config.get("model", {}).get("init_args", {}).get("scheduler") or {}
        if not str(scheduler.get("class_path", "")).endswith("OneCycleLR"):
            continue
        total = experiment.overrides.get("model.init_args.scheduler.init_args.total_steps",
                                         (scheduler.get("init_args") or {}).get("total_steps"))
        steps = experiment.budget.get("max_steps", config.get("trainer", {}).get("max_steps"))
        assert steps == total, f"{experiment.name}: {steps} steps on a {total}-step OneCycleLR"

def test_smoke_suite_runs_every_experiment_in_under_three_minutes(tmp_path, monkeypatch):
    """Every run of the smoke suite succeeds, within 3 minutes of two cores.

    The time is checked on the CPU time of the runs (user + system of the processes the
    suite started, over 2 cores), which does not depend on what else the machine is doing.
    """
    from conftest import babi_data_found

    monkeypatch.chdir(ROOT)
    results = tmp_path / "smoke"
    experiments = S.load_suite("configs/suites/smoke.yaml").experiments
    # a clone without the bAbI data runs the rest (tests/conftest.py); with it, every experiment
    ran = [e.name for e in experiments if babi_data_found() or "babi" not in e.task]
    only = [] if len(ran) == len(experiments) else ["--only", *ran]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    code = S.main(
        ["run", "configs/suites/smoke.yaml", "--results", str(results), "--jobs", "2", "--no-wandb", *only]
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = S.build_report(results)
    failed = {
        row["experiment"]: row["errors"]
        for row in report["leaderboard"]
        if row["done"] != row["seeds"] and row["experiment"] in ran
    }
    assert code == 0 and not failed, failed
    assert len(report["leaderboard"]) == len(experiments)
    assert cpu / 2 < 170, f"the smoke suite used {cpu:.0f} CPU-seconds ({wall:.0f} s wall)"


def test_shipped_suite_budgets_fit_inside_their_one_cycle_schedules():
    """A step budget past a OneCycleLR's total_steps is refused at the start of training."""
    from memnet.cli.configs import load_config
    from memnet.cli.suite import load_suite

    root = Path(__file__).resolve().parents[1]
    checked = 0
    for path in sorted((root / "configs" / "suites").glob("*.yaml")):
        suite = load_suite(path, base_dir=root)
        for experiment in suite.experiments:
            total = None
            for config in experiment.configs:
                model = load_config(root / config).get("model", {})
                scheduler = (model.get("init_args") or {}).get("scheduler") or {}
                if scheduler.get("class_path", "").endswith("OneCycleLR"):
                    total = scheduler["init_args"]["total_steps"]
            total = experiment.overrides.get("model.init_args.scheduler.init_args.total_steps", total)
            steps = experiment.budget.get("max_steps")
            if total is not None and steps is not None:
                checked += 1
                assert steps <= total, f"{path.name}: {experiment.name} budget {steps} > total_steps {total}"
    assert checked >= 4


def test_runs_trained_under_other_settings_than_the_suites_now_are_named(tmp_path, monkeypatch, capsys):
    """A suite file edited between two `suite run`s: a run done before is kept, one cut before resumes from its
    checkpoint; the report averages them with the runs trained now, so it names both and what changed."""
    monkeypatch.chdir(ROOT)

    def fake_fit(self, argv, log, slot):  # `memnet fit` as it ends: its summary, the loss it reached
        (log.parent / "summary.json").write_text(json.dumps({"metrics": {"val/loss": 1.0 + len(self.processes)}}))
        return 0

    monkeypatch.setattr(S.SuiteRunner, "_process", fake_fit)
    lr = "model.init_args.optimizer.init_args.lr"
    before = S.load_suite(write_suite(tmp_path / "a.yaml", [{**LSTM, "overrides": {**LSTM["overrides"], lr: 0.1}}]))
    results = tmp_path / "r"
    done, cut = S.expand_runs(before, results)
    S.SuiteRunner(before, results).run([done])
    cut.folder.mkdir(parents=True)
    (cut.folder / "checkpoints").mkdir()
    (cut.folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    S.SuiteRunner(before, results)._write_record(cut, status="interrupted", settings=cut.settings())
    after = S.load_suite(write_suite(tmp_path / "a.yaml", [{**LSTM, "overrides": {**LSTM["overrides"], lr: 0.01}}]))
    capsys.readouterr()
    assert S.SuiteRunner(after, results).run(S.expand_runs(after, results)) == {
        "done": 1, "evaluated": 0, "failed": 0, "interrupted": 0, "busy": 0, "skipped": 1}
    out = capsys.readouterr().out
    assert "warning: lstm-copy/seed_0 was trained with other settings than the suite's now; kept as trained" in out
    assert "warning: lstm-copy/seed_1 was trained with other settings than the suite's now; resumed" in out
    row = S.build_report(results)["leaderboard"][0]
    assert row["done"] == 2
    assert row["evaluation_notes"] == [
        (f"seed 0 was trained with other settings than the suite's now (overrides.{lr}: 0.1, now 0.01); "
         "its numbers are in the means"),
        f"seed 1 was resumed with other settings than it started with (overrides.{lr}: 0.1, now 0.01)",
    ]


def test_the_same_configs_of_another_checkout_are_the_same_settings():
    """A suite run from a second checkout (git worktree add, as docs/suites.md advises for long suites) and
    reported or resumed from the first recorded absolute config paths: every run was 'trained with other settings
    than the suite's now' (configs: ['/a/configs/ntm/x.yaml'], now ['/b/configs/ntm/x.yaml']), contents the same."""
    from memnet.cli.suite.runner import settings_changes

    def settings(root, digest="d1", name="ntm/x.yaml"):
        return {"configs": [f"{root}/configs/{name}"], "overrides": {}, "budget": {}, "seed_args": [],
                "config_sha256": {f"{root}/configs/{name}": digest, f"{root}/configs/recipes/r.yaml": "d2"}}

    assert settings_changes(settings("/work/a"), settings("/work/b")) == []
    assert settings_changes(settings("/work/a"), settings("/work/b", digest="d3")) == [
        "/work/b/configs/ntm/x.yaml: its contents changed"]
    assert settings_changes(settings("/work/a"), settings("/work/b", name="ntm/y.yaml")) == [
        "configs: ['/work/a/configs/ntm/x.yaml'], now ['/work/b/configs/ntm/y.yaml']"]
    mine = {**settings("/work/a"), "configs": ["/home/u/x.yaml"]}  # outside a configs/ folder: the path itself
    assert settings_changes(mine, {**mine, "configs": ["/home/v/x.yaml"]}) == [
        "configs: ['/home/u/x.yaml'], now ['/home/v/x.yaml']"]


def test_a_config_file_edited_in_place_between_runs_is_named_with_the_file(tmp_path, monkeypatch, capsys):
    """The same config paths with other contents (a fragment the config extends, edited between two `suite run`s)
    are other settings, named with the file; a record from before the contents were kept is not named."""
    monkeypatch.chdir(ROOT)

    def fake_fit(self, argv, log, slot):
        (log.parent / "summary.json").write_text(json.dumps({"metrics": {"val/loss": 1.0}}))
        return 0

    monkeypatch.setattr(S.SuiteRunner, "_process", fake_fit)
    own = tmp_path / "configs"
    own.mkdir()
    fragment = own / "lr.yaml"
    fragment.write_text("model:\n  init_args:\n    optimizer:\n      init_args:\n        lr: 0.1\n")
    (own / "copy.yaml").write_text("extends: [lstm/copy, lr.yaml]\n")
    suite = S.load_suite(write_suite(tmp_path / "a.yaml", [{**LSTM, "configs": [str(own / "copy.yaml")], "seeds": 3}]))
    results = tmp_path / "r"
    done, old, cut = S.expand_runs(suite, results)
    assert {str(fragment.resolve()), str(ROOT / "configs" / "lstm" / "copy.yaml")} <= set(
        done.settings()["config_sha256"])
    S.SuiteRunner(suite, results).run([done, old])
    record = old.record()
    del record["settings"]["config_sha256"]  # written before the contents were kept
    old.record_path.write_text(json.dumps(record))
    cut.folder.mkdir(parents=True)
    (cut.folder / "checkpoints").mkdir()
    (cut.folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    S.SuiteRunner(suite, results)._write_record(cut, status="interrupted", settings=cut.settings())
    assert S.build_report(results)["leaderboard"][0]["evaluation_notes"] == []

    fragment.write_text(fragment.read_text().replace("0.1", "0.01"))
    capsys.readouterr()
    assert S.SuiteRunner(suite, results).run(S.expand_runs(suite, results))["done"] == 1  # the cut one, resumed
    out = capsys.readouterr().out
    assert "warning: lstm-copy/seed_0 was trained with other settings than the suite's now; kept" in out
    assert "seed_1 was trained" not in out
    changed = f"{fragment.resolve()}: its contents changed"
    assert S.build_report(results)["leaderboard"][0]["evaluation_notes"] == [
        f"seed 0 was trained with other settings than the suite's now ({changed}); its numbers are in the means",
        f"seed 2 was resumed with other settings than it started with ({changed})",
    ]


# ---------------------------------------------------------------------------------------------
# Fixed repeat counts (evaluate.repeats): a second `memnet evaluate --repeats`, a table of its own
# ---------------------------------------------------------------------------------------------

REPEAT_COPY = {"name": "ntm-rc", "configs": ["configs/ntm/repeat_copy.yaml"], "seeds": 2, "budget": {"max_steps": 2}}
FIXED = {"kind": "algorithmic", "lengths": [1, 10, 20], "num_sequences": 8, "engine": "fused", "repeats": [10, 20],
         "repeat_lengths": [10, 20]}


@pytest.mark.parametrize(("experiment", "message"), [
    ({**GOOD, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": [10]}},
     (r"experiment 'ntm-copy': evaluate.repeats \[10\]: the task tasks.algorithmic.CopyTask has no repeat count "
     r"\(only repeat copy's sequences have one, tasks.algorithmic.RepeatCopyTask\); drop evaluate.repeats")),
    ({**GOOD, "configs": ["configs/ntm/priority_sort.yaml"], "evaluate": {"kind": "algorithmic", "lengths": [10],
                                                                           "repeats": [10]}},
     r"experiment 'ntm-copy': evaluate.repeats \[10\]: the task tasks.algorithmic.PrioritySortTask has no repeat"),
    ({**REPEAT_COPY, "overrides": {"data.init_args.task.class_path": "tasks.algorithmic.CopyTask"},
      "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": [10]}},
     r"experiment 'ntm-rc': evaluate.repeats \[10\]: the task tasks.algorithmic.CopyTask has no repeat count"),
    ({**REPEAT_COPY, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": [0, 10]}},
     (r"experiment 'ntm-rc': evaluate.repeats must be a non-empty list of positive integers \(repeat counts ≥ 1\), "
     r"got \[0, 10\]")),
    ({**REPEAT_COPY, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": [2.5]}},
     r"experiment 'ntm-rc': evaluate.repeats must be a non-empty list of positive integers \(repeat counts ≥ 1\), got \[2.5\]"),
    ({**REPEAT_COPY, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": 10}},
     r"experiment 'ntm-rc': evaluate.repeats must be a non-empty list of positive integers \(repeat counts ≥ 1\), got 10"),
    ({**REPEAT_COPY, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": ["10"]}},
     r"experiment 'ntm-rc': evaluate.repeats must be a non-empty list of positive integers \(repeat counts ≥ 1\), got \['10'\]"),
    ({**REPEAT_COPY, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": [10, 20, 10]}},
     r"experiment 'ntm-rc': evaluate.repeats names 10 more than once: \[10, 20, 10\]"),
    ({**REPEAT_COPY, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": [10], "repeat_lengths": [-1]}},
     r"experiment 'ntm-rc': evaluate.repeat_lengths must be a non-empty list of positive integers \(lengths ≥ 1\), got \[-1\]"),
    ({**REPEAT_COPY, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeat_lengths": [10]}},
     (r"experiment 'ntm-rc': evaluate.repeat_lengths is the lengths of the fixed repeat counts; it needs "
     r"evaluate.repeats")),
])
def test_fixed_repeat_counts_are_refused_on_loading_for_a_task_without_them_or_bad_counts(
        tmp_path, monkeypatch, capsys, experiment, message):
    """memnet evaluate refuses --repeats for a task without a repeat count, and counts below 1 or named twice: the
    suite refuses them when it loads, naming the file and experiment, not after hours of training."""
    monkeypatch.chdir(ROOT)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "experiments": [experiment]}, sort_keys=False))
    with pytest.raises(S.SuiteError, match=rf"^{re.escape(str(path))}:\d+: {message}"):
        S.load_suite(path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["suite", "run", str(path), "--results", str(tmp_path / "results"), "--dry-run"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("assignment", [
    "data.init_args.task.class_path=tasks.algorithmic.CopyTask",
    "data.init_args.task={class_path: tasks.algorithmic.PrioritySortTask}",
    "data.init_args.task=tasks.algorithmic.CopyTask",
])
def test_fixed_repeat_counts_are_refused_on_loading_for_a_task_that_set_changes(
        tmp_path, monkeypatch, capsys, assignment):
    """A task named by `--set` is checked against evaluate.repeats as the suite file's own overrides are: refused
    before anything runs, naming the --set field and the experiment (it trained every run, then every evaluation
    failed: 'the task ... has no repeat count')."""
    monkeypatch.chdir(ROOT)
    path = tmp_path / "rc.yaml"
    experiment = {**REPEAT_COPY, "evaluate": {"kind": "algorithmic", "lengths": [10], "repeats": [10]}}
    path.write_text(yaml.safe_dump({"name": "s", "experiments": [experiment]}, sort_keys=False))
    suite = S.load_suite(path)  # repeat copy: accepted as written
    field = assignment.partition("=")[0]
    message = (rf"^--set {re.escape(field)}: {re.escape(str(path))}: experiment 'ntm-rc': evaluate.repeats \[10\]: "
               r"the task tasks.algorithmic.\w+Task has no repeat count")
    with pytest.raises(S.SuiteError, match=message):
        S.with_overrides(suite, [assignment])
    assert S.with_overrides(suite, ["data.init_args.task.init_args.max_repeats=5"]).experiments[0].overrides
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["suite", "run", str(path), "--results", str(tmp_path / "results"), "--dry-run", "--set", assignment])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "experiment 'ntm-rc'" in error, error
    assert not (tmp_path / "results").exists()


def test_fixed_repeat_counts_are_a_second_memnet_evaluate_into_their_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "rc.yaml", [{**REPEAT_COPY, "evaluate": FIXED}])
    run = trained_before(path, tmp_path / "r")
    spec = run.experiment.evaluate
    assert spec == FIXED  # kept as written (repeat_lengths not filled in)
    checkpoint = run.trained_checkpoint()
    evaluator = evaluators.EVALUATORS["algorithmic"]
    assert evaluator.command(run, checkpoint, spec) == [  # the per-length table, as without repeats
        "-m", "memnet.cli", "evaluate", "--ckpt_path", checkpoint, "--lengths", "1", "10", "20",
        "--out", str(run.folder / "evaluation"), "--num_sequences", "8", "--engine", "fused"]
    assert evaluator.more_commands(run, checkpoint, spec) == [[
        "-m", "memnet.cli", "evaluate", "--ckpt_path", checkpoint, "--lengths", "10", "20", "--repeats", "10", "20",
        "--out", str(run.folder / "evaluation_repeats"), "--num_sequences", "8", "--engine", "fused"]]
    # repeat_lengths left out: the entry's lengths
    no_lengths = {k: v for k, v in FIXED.items() if k != "repeat_lengths"}
    (argv,) = evaluator.more_commands(run, checkpoint, no_lengths)
    assert argv[argv.index("--lengths"):argv.index("--repeats")] == ["--lengths", "1", "10", "20"]
    assert evaluator.more_commands(run, checkpoint, {"kind": "algorithmic", "lengths": [10]}) == []
    # the dry run prints both, run in turn
    assert S.main(["run", str(path), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("[evaluate] ntm-rc/seed_0: memnet evaluate ")
    first, second = line.split(": ", 1)[1].split(" && ")
    assert shlex.split(second) == ["memnet", *evaluator.more_commands(run, checkpoint, spec)[0][2:]]
    assert shlex.split(first) == ["memnet", *evaluator.command(run, checkpoint, spec)[2:]]


def _write_evaluation(folder: Path, rows: list[dict], **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"bit_errors_per_seq": 0.0, "sequences": 8, **row} for row in rows]
    (folder / "results.json").write_text(json.dumps({"lengths": rows, "train_range": [1, 10], **extra}))


def test_fixed_repeat_counts_are_collected_beside_the_lengths_and_a_run_without_them_is_evaluated_again(tmp_path):
    spec = {"kind": "algorithmic", "lengths": [10], "repeats": [10, 20], "repeat_lengths": [10, 20]}
    experiment = S.Experiment(name="ntm", configs=("c.yaml",), overrides={}, seeds=(0,), budget={"max_steps": 1},
                              evaluate=spec, model="NTM", task="repeat_copy")
    run = S.Run("s", experiment, 0, tmp_path)
    _write_evaluation(run.folder / "evaluation", [{"length": 10, "bits_per_seq": 0.5}])
    with pytest.raises(S.EvaluationUnavailable, match="evaluation_repeats/results.json missing"):
        S.EVALUATORS["algorithmic"].collect(run, spec)
    fixed = run.folder / "evaluation_repeats"
    _write_evaluation(fixed, [{"length": 10, "bits_per_seq": 0.5}])  # drawn counts: not the rows asked for
    with pytest.raises(S.EvaluationUnavailable, match="holds rows without a fixed repeat count"):
        S.EVALUATORS["algorithmic"].collect(run, spec)
    rows = [{"length": n, "repeats": r, "bits_per_seq": n + r / 100} for n in (10, 20) for r in (10, 20)]
    _write_evaluation(fixed, rows[:3], repeats=[10, 20], train_repeats=[1, 10])
    with pytest.raises(S.EvaluationUnavailable, match=r"has no row at length 20 \(20 repeats\)"):
        S.EVALUATORS["algorithmic"].collect(run, spec)
    _write_evaluation(fixed, rows, repeats=[10, 20], train_repeats=[1, 10])
    collected = S.EVALUATORS["algorithmic"].collect(run, spec)
    assert collected == {"bits_per_seq": {"10": 0.5}, "train_range": [1, 10], "train_repeats": [1, 10],
                         "bits_per_seq_repeats": {"10": {"10": 10.1, "20": 10.2}, "20": {"10": 20.1, "20": 20.2}}}
    # without repeats the per-length collect is as it was, whatever lies in evaluation_repeats/
    assert S.EVALUATORS["algorithmic"].collect(run, {"kind": "algorithmic", "lengths": [10]}) == {
        "bits_per_seq": {"10": 0.5}, "train_range": [1, 10]}
    # a record evaluated before the suite asked for repeats (or for fewer) is not done: evaluated again
    record = {"status": "done", "options": evaluators.evaluation_options(spec), **collected}
    assert evaluators.evaluation_answers(spec, record)
    assert not evaluators.evaluation_answers(spec, {**record, "bits_per_seq_repeats": {"10": {"10": 1.0}}})
    assert not evaluators.evaluation_answers(spec, {"status": "done", "options": {}, "bits_per_seq": {"10": 0.5}})
    assert evaluators.evaluation_options(spec) == {}  # the rows asked for are not options (nor are the lengths)


def test_a_failing_fixed_repeats_evaluation_fails_the_run(tmp_path, monkeypatch, capsys):
    """The second process (memnet evaluate --repeats) fails: the run is failed with its error, not done with the
    per-length numbers alone; it runs only after the first succeeded."""
    monkeypatch.chdir(ROOT)
    path = write_suite(tmp_path / "rc.yaml", [{**REPEAT_COPY, "seeds": [0], "evaluate": FIXED}])
    results = tmp_path / "r"
    run = trained_before(path, results)
    real = evaluators.EVALUATORS["algorithmic"]
    monkeypatch.setitem(evaluators.EVALUATORS, "algorithmic", evaluators.Evaluator(
        real.check, lambda run, checkpoint, spec: ["-c", "print('lengths done')"], real.collect,
        lambda run, checkpoint, spec: [["-c", "import sys; sys.exit('memnet evaluate: --repeats 20: boom')"]]))
    assert S.main(["run", str(path), "--results", str(results), "--no-report"]) == 1
    record = run.record()
    assert (record["status"], record["stage"], record["error"]) == ("failed", "evaluate",
                                                                     "memnet evaluate: --repeats 20: boom")
    assert (run.folder / "evaluate.log").read_text().count("$ ") == 2


def test_the_report_shows_fixed_repeat_counts_in_their_own_table(tmp_path):
    fixed = {"10": {"10": 0.5, "20": 4.0}, "20": {"10": 1.0, "20": 9.0}}
    evaluated = {"status": "done", "options": {}, "bits_per_seq": {"10": 0.1, "20": 0.3}, "train_range": [1, 10],
                 "train_repeats": [1, 10]}
    spec = {"kind": "algorithmic", "lengths": [10, 20], "repeats": [10, 20]}
    root = results_folder(tmp_path / "r", {"name": "ntm", "evaluate": spec},
                          {0: {"metrics": {}, "evaluation": {**evaluated, "bits_per_seq_repeats": fixed}},
                           1: {"metrics": {}, "evaluation": {**evaluated, "bits_per_seq_repeats": {
                               "10": {"10": 1.5, "20": 6.0}, "20": {"10": 3.0, "20": 11.0}}}},
                           2: {"metrics": {}, "evaluation": evaluated}})  # evaluated before repeats were asked for
    report = S.write_report(root)
    (row,) = report["repeats"]
    assert row["bits_per_seq"]["10"]["10"] == pytest.approx({"mean": 1.0, "std": 0.7071067811, "n": 2})
    assert row["bits_per_seq"]["20"]["20"] == pytest.approx({"mean": 10.0, "std": 1.4142135623, "n": 2})
    assert row["train_repeats"] == [1, 10]
    assert row["notes"] == [("seed 2 not evaluated at the fixed repeat counts, left out; `memnet suite run` evaluates "
                            "it again")]
    header, rows = S.repeats_rows(report)
    assert header == ["experiment", "model", "task", "L=10, R=10", "L=10, R=20", "L=20, R=10", "L=20, R=20", "notes"]
    assert rows[0][3:7] == ["1 ± 0.707 *", "5 ± 1.41", "2 ± 1.41", "10 ± 1.41"]  # '*': L and R both trained
    # the per-length table is the per-length evaluation's, seed 2 included
    assert report["lengths"][0]["bits_per_seq"]["10"] == pytest.approx({"mean": 0.1, "std": 0.0, "n": 3})
    folder = root / "report"
    markdown = (folder / "leaderboard.md").read_text()
    assert "## Repeat copy: bits per sequence at fixed repeat counts" in markdown
    assert "| experiment | model | task | L=10, R=10 | L=10, R=20 | L=20, R=10 | L=20, R=20 | notes |" in markdown
    assert json.loads((folder / "leaderboard.json").read_text())["repeats"] == json.loads(json.dumps(report["repeats"]))
    table = list(csv.DictReader(io.StringIO((folder / "repeats.csv").read_text())))
    assert [(r["length"], r["repeats"], r["bits_per_seq mean"], r["bits_per_seq n"]) for r in table] == [
        ("10", "10", "1", "2"), ("10", "20", "5", "2"), ("20", "10", "2", "2"), ("20", "20", "10", "2")]
    # a suite without repeats: no table, no key, no file (its report is what it was)
    plain = results_folder(tmp_path / "p", {"name": "ntm", "evaluate": {"kind": "algorithmic", "lengths": [10, 20]}},
                           {0: {"metrics": {}, "evaluation": evaluated}})
    report = S.write_report(plain)
    assert "repeats" not in report and not (plain / "report" / "repeats.csv").exists()
    assert "fixed repeat counts" not in (plain / "report" / "leaderboard.md").read_text()
