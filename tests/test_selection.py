"""The selection protocol: the run with the best named metric on a named split, never the test split."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from memnet.selection import SelectionError, check_select, mean_std, select_run, summarize

WHERE = "suite.yaml:7: experiment 'memn2n'"


def _record(seed: int, train_error: float, test_mean: float, status: str = "done") -> dict:
    return {"seed": seed, "status": status,
            "metrics": {"train/error": train_error, "val/error": 100 - train_error, "test/error": test_mean}}


def test_picks_the_lowest_training_error_not_the_lowest_test_error():
    records = [_record(0, 3.0, 10.0), _record(1, 1.5, 30.0), _record(2, 2.0, 5.0)]
    chosen = select_run(records, check_select({"metric": "error", "split": "train"}, WHERE))
    assert chosen["seed"] == 1 and chosen["value"] == 1.5 and chosen["candidates"] == 3
    highest = select_run(records, check_select({"metric": "error", "split": "val", "mode": "max"}, WHERE))
    assert highest["seed"] == 1 and highest["value"] == 98.5  # val/error 98.5 is the largest


def test_only_finished_runs_with_the_metric_compete():
    records = [_record(0, 0.1, 1.0, status="failed"), {"seed": 1, "status": "done", "metrics": {}},
               _record(2, 4.0, 9.0), _record(3, float("nan"), 1.0), _record(4, False, 1.0)]
    chosen = select_run(records, check_select({"metric": "error", "split": "train"}, WHERE))
    assert chosen["seed"] == 2 and chosen["candidates"] == 1  # a `false` read back from a record is no 0.0
    assert select_run(records[:2], check_select({"metric": "error", "split": "train"}, WHERE)) is None


@pytest.mark.parametrize("spec, field", [({"metric": "error", "split": "test"}, "split is 'test'"),
                                         ({"metric": "test/error", "split": "train"}, "metric is 'test/error'")])
def test_the_test_split_is_refused_naming_the_field(spec, field):
    with pytest.raises(SelectionError, match=rf"suite.yaml:7: experiment 'memn2n': select.{field}: the test "
                                             r"split may not choose the reported run"):
        check_select(spec, WHERE)


@pytest.mark.parametrize("spec, message", [
    ({"metric": "error"}, "select.split must be given"),
    ({"split": "train"}, "select.metric must be given"),
    ({"metric": "error", "split": "validation"}, "select.split must be one of train, val"),
    ({"metric": "error", "split": "train", "mode": "lowest"}, "select.mode must be 'min' or 'max'"),
    ({"metric": "error", "split": "train", "by": "x"}, "select: unknown key 'by'"),
    ({"metric": "train/error", "split": "train"}, "select.metric is a name without its split"),
    ("train/error", "select must be a mapping"),
])
def test_bad_rules_name_the_field(spec, message):
    with pytest.raises(SelectionError, match=message):
        check_select(spec, WHERE)


def test_mean_std():
    assert mean_std([]) is None
    assert mean_std([2.0]) == {"mean": 2.0, "std": 0.0, "n": 1}
    stat = mean_std([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0 and stat["std"] == pytest.approx(1.0) and stat["n"] == 3


def test_the_memn2n_references_name_the_papers_selection():
    references = json.loads(resources.files("memnet.references").joinpath("babi.json").read_text())
    by_key = {r["key"]: r for r in references["references"]}
    for key in ("memn2n-1k", "memn2n-10k"):
        rule = check_select({k: v for k, v in by_key[key]["selection"].items() if k != "runs"}, key)
        assert rule == {"metric": "error", "split": "train", "mode": "min"}
        assert by_key[key]["selection"]["runs"] == 10 and "lowest training error" in by_key[key]["statistic"]


def test_summary_puts_the_selected_run_beside_the_mean_over_seeds():
    records = [_record(0, 3.0, 10.0), _record(1, 1.5, 30.0), _record(2, 2.0, 5.0), _record(3, 0.0, 0.0, "failed")]
    summary = summarize(records, check_select({"metric": "error", "split": "train"}, WHERE),
                        lambda record: {"test error": record["metrics"]["test/error"]})
    assert summary["rule"] == "lowest train/error" and summary["seed"] == 1 and summary["candidates"] == 3
    assert summary["selected"] == {"test error": 30.0}
    over = summary["over_seeds"]["test error"]
    assert over["mean"] == pytest.approx(15.0) and over["std"] == pytest.approx(13.2287566) and over["n"] == 3


# -- the suite's hook: `select` in a suite file, the selected run in the report ---------------------


def _suite_results(folder, select: dict) -> object:
    """A results folder of one bAbI experiment, three seeds, as `memnet suite run` writes it."""
    experiment = {"name": "memn2n", "configs": ["configs/memn2n/babi_joint_1k.yaml"], "overrides": {},
                  "seeds": [0, 1, 2], "budget": {"max_epochs": 1}, "evaluate": {"kind": "babi", "split": "test"},
                  "model": "MemN2N", "task": "babi-1k", "seed_args": ["seed_everything"], "select": select}
    folder.mkdir(parents=True)
    (folder / "suite.json").write_text(json.dumps({"name": "babi", "description": "", "path": "",
                                                   "experiments": [experiment]}))
    # seed s: training error (2, 0.5, 1)[s]; every task's test error (10, 30, 20)[s]
    for seed, train_error, test_error in ((0, 2.0, 10.0), (1, 0.5, 30.0), (2, 1.0, 20.0)):
        run = folder / "memn2n" / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({
            "status": "done", "seed": seed, "experiment": "memn2n",
            "metrics": {"train/error": train_error, "val/loss": 1.0},
            "evaluation": {"kind": "babi", "status": "done", "split": "test",
                           "babi_error": {str(k): test_error for k in range(1, 21)}},
            "train_seconds": 1.0,
        }))
    return folder


def test_suite_reports_the_selected_run_beside_the_mean_over_seeds(tmp_path):
    from memnet.cli import suite as S

    results = _suite_results(tmp_path / "results", {"metric": "error", "split": "train", "mode": "min"})
    report = S.write_report(results)
    (row,) = report["leaderboard"]
    assert row["selected"]["seed"] == 1 and row["selected"]["rule"] == "lowest train/error"
    assert row["selected"]["selected"]["bAbI mean error %"] == pytest.approx(30.0)
    over = row["selected"]["over_seeds"]["bAbI mean error %"]
    assert over["mean"] == pytest.approx(20.0) and over["std"] == pytest.approx(10.0)
    columns = [model["experiment"] for model in report["babi"]["models"]]
    assert columns == ["memn2n: seed 1, lowest train/error of 3", "memn2n"]
    markdown = (results / "report" / "leaderboard.md").read_text()
    assert "- **memn2n**: seed 1, the lowest train/error (0.5) of 3 runs; " in markdown
    assert "bAbI mean error % 30 (all 3 seeds: 20 ± 10)" in markdown
    mean_row = next(line for line in markdown.splitlines() if line.startswith("| mean error %"))
    assert mean_row.startswith("| mean error % | 30.0 | 20.0 ± 10.0 | 12.4 |")


def test_suite_file_selecting_on_the_test_split_is_refused(tmp_path, monkeypatch):
    import yaml

    from memnet.cli import suite as S

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "experiments": [{
        "name": "memn2n", "configs": ["configs/memn2n/babi_task_1k.yaml"], "budget": {"max_epochs": 1},
        "select": {"metric": "error", "split": "test"}}]}, sort_keys=False))
    with pytest.raises(S.SuiteError, match=r"s.yaml:\d+: experiment 'memn2n': select.split is 'test': the test split"):
        S.load_suite(path)
    assert S.load_suite("configs/suites/babi-1k.yaml").experiments[0].select == {
        "metric": "error", "split": "train", "mode": "min"}


def test_a_rule_whose_metric_no_run_logged_is_named_not_dropped_unsaid(tmp_path):
    from memnet.cli import suite as S

    results = _suite_results(tmp_path / "results", {"metric": "eror", "split": "train", "mode": "min"})
    report = S.build_report(results)
    (row,) = report["leaderboard"]
    note = ("select: no finished run logged a finite train/eror, so no run is selected "
            "(is select.metric a name the model logs?)")
    assert row["selected"] is None and note in row["evaluation_notes"]
    assert [model["experiment"] for model in report["babi"]["models"]] == ["memn2n"]
    assert f"memn2n: {note}" in report["babi"]["models"][0]["notes"]


def test_finished_seeds_left_out_of_the_selection_are_named(tmp_path):
    """Seed 1 did not log train/error, seed 2 diverged (NaN): the selection is of seed 0 alone, which the report said
    only as "of 1 runs" beside "3/3" finished; the two are named with what they had."""
    from memnet.cli import suite as S

    results = _suite_results(tmp_path / "results", {"metric": "error", "split": "train", "mode": "min"})
    for seed, value in ((1, None), (2, float("nan"))):
        path = results / "memn2n" / f"seed_{seed}" / "metrics.json"
        record = json.loads(path.read_text())
        record["metrics"]["train/error"] = value
        path.write_text(json.dumps(record))
    report = S.build_report(results)
    (row,) = report["leaderboard"]
    assert (row["selected"]["seed"], row["selected"]["candidates"]) == (0, 1)
    assert row["selected"]["left_out"] == [{"seed": 1, "value": None}, {"seed": 2, "value": "nan"}]
    note = ("select: seed 1 (no train/error), seed 2 (train/error nan) left out of the selection, which is of the "
            "other 1 finished runs")
    assert note in row["evaluation_notes"] and f"memn2n: {note}" in report["babi"]["models"][-1]["notes"]
    assert "NaN" not in json.dumps(report)  # the JSON leaderboard stays JSON


# -- the selected run is compared by the weights it was tested on -------------------------------------


def _tested_results(folder, *, with_checkpoint_metrics: bool) -> object:
    """Two bAbI seeds whose final training error and tested checkpoint's training error rank them apart.

    Seed 0 ends at train/error 0.5 but was tested on its best-by-val/loss checkpoint, at 4.0 (test error 30);
    seed 1 ends at 2.0, its tested checkpoint at 1.0 (test error 10). ``with_checkpoint_metrics=False`` writes
    the records as an older memnet did, without the checkpoint's metrics.
    """
    experiment = {"name": "reader", "configs": ["configs/memn2n/babi_joint_1k.yaml"], "overrides": {},
                  "seeds": [0, 1], "budget": {"max_epochs": 1}, "evaluate": {"kind": "babi", "split": "test"},
                  "model": "LSTM", "task": "babi-1k", "seed_args": ["seed_everything"],
                  "select": {"metric": "error", "split": "train", "mode": "min"}}
    folder.mkdir(parents=True)
    (folder / "suite.json").write_text(json.dumps({"name": "babi", "description": "", "path": "",
                                                   "experiments": [experiment]}))
    for seed, final, tested, test_error in ((0, 0.5, 4.0, 30.0), (1, 2.0, 1.0, 10.0)):
        run = folder / "reader" / f"seed_{seed}"
        run.mkdir(parents=True)
        record = {
            "status": "done", "seed": seed, "experiment": "reader",
            "metrics": {"train/error": final, "val/loss": 1.0},
            "checkpoint": f"reader/seed_{seed}/checkpoints/best-epoch=003.ckpt",
            "evaluation": {"kind": "babi", "status": "done", "split": "test",
                           "babi_error": {str(k): test_error for k in range(1, 21)}},
            "train_seconds": 1.0,
        }
        if with_checkpoint_metrics:
            record["checkpoint_metrics"] = {"train/error": tested, "val/loss": 0.9}
        (run / "metrics.json").write_text(json.dumps(record))
    return folder


def test_an_evaluated_run_is_compared_by_its_tested_checkpoints_metrics_not_its_end():
    rule = check_select({"metric": "error", "split": "train"}, WHERE)
    evaluation = {"kind": "babi", "status": "done"}
    records = [{"seed": 0, "status": "done", "metrics": {"train/error": 0.5}, "evaluation": evaluation,
                "checkpoint_metrics": {"train/error": 4.0}},
               {"seed": 1, "status": "done", "metrics": {"train/error": 2.0}, "evaluation": evaluation,
                "checkpoint_metrics": {"train/error": 1.0}},
               {"seed": 2, "status": "done", "metrics": {"train/error": 0.1},  # not evaluated: its end is reported
                "checkpoint_metrics": {"train/error": 9.0}}]
    chosen = select_run(records[:2], rule)
    assert (chosen["seed"], chosen["value"], chosen["by_final_metrics"]) == (1, 1.0, [])
    assert select_run(records, rule)["seed"] == 2
    # the checkpoint saved before the metric was logged: that run falls back to its end, and says so
    records[1]["checkpoint_metrics"] = {"val/loss": 0.3}
    chosen = select_run(records[:2], rule)
    assert (chosen["seed"], chosen["value"], chosen["by_final_metrics"]) == (1, 2.0, [1])  # its end: 2.0 < 4.0


def test_suite_selects_the_seed_whose_tested_checkpoint_has_the_lower_training_error(tmp_path):
    from memnet.cli import suite as S

    results = _tested_results(tmp_path / "results", with_checkpoint_metrics=True)
    report = S.write_report(results)
    (row,) = report["leaderboard"]
    assert row["selected"]["seed"] == 1 and row["selected"]["value"] == 1.0
    assert row["selected"]["selected"]["bAbI mean error %"] == pytest.approx(10.0)
    assert not any(note.startswith("select:") for note in row["evaluation_notes"])
    assert [model["experiment"] for model in report["babi"]["models"]] == [
        "reader: seed 1, lowest train/error of 2", "reader"]
    markdown = (results / "report" / "leaderboard.md").read_text()
    assert "- **reader**: seed 1, the lowest train/error (1) of 2 runs; " in markdown


def test_an_old_record_without_the_checkpoints_metrics_is_selected_by_its_end_and_named(tmp_path):
    from memnet.cli import suite as S

    results = _tested_results(tmp_path / "results", with_checkpoint_metrics=False)
    report = S.write_report(results)
    (row,) = report["leaderboard"]
    assert row["selected"]["seed"] == 0 and row["selected"]["value"] == 0.5  # as before: the final train/error
    assert row["selected"]["by_final_metrics"] == [0, 1]
    note = ("select: seed 0, 1 compared by train/error at the end of training, not by that of the checkpoint "
            "tested, which may be other weights (its record does not hold the checkpoint's: written by an older "
            "memnet, or the checkpoint was saved before the metric was logged)")
    assert note in row["evaluation_notes"]
    assert f"reader: {note}" in report["babi"]["models"][-1]["notes"]
    assert note in (results / "report" / "leaderboard.md").read_text()
