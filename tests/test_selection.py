"""The selection protocol: the run with the best named metric on a named split, never the test split."""

from __future__ import annotations

import json
from importlib import resources

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
               _record(2, 4.0, 9.0), _record(3, float("nan"), 1.0)]
    chosen = select_run(records, check_select({"metric": "error", "split": "train"}, WHERE))
    assert chosen["seed"] == 2 and chosen["candidates"] == 1
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
