"""Which run of several seeds a suite reports: the best by a named metric on a named split.

Papers often report one run of many: the MemN2N paper keeps, of 10 runs, the one with
the lowest *training* error (the authors' README; ``memnet/references/babi.json``).
A suite experiment names the rule::

    select: {metric: error, split: train, mode: min}    # the run with the lowest train/error

and the report shows the selected run beside the mean ± s.d. over every seed. The
rule reads ``<split>/<metric>`` of the weights whose numbers are reported: for a run the
suite evaluated, the checkpoint it tested (its best by ``val/loss`` where the config
monitors it), from the metrics saved in that checkpoint (the record's
``checkpoint_metrics``); for a run without an evaluation, whose reported numbers are those
of its end, its final metrics (what ``memnet fit`` wrote to ``summary.json``). An evaluated
run whose record lacks them (written by an older memnet) is compared by its final metrics,
and :func:`select_run` names it. The test split may not choose: a test score selected on
the test set would be no test score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from memnet.utils import is_number

SELECT_KEYS = ("metric", "split", "mode")
SELECT_SPLITS = ("train", "val")  # the splits a selection may read; never "test"
SELECT_MODES = ("min", "max")
CHECKPOINT_METRICS = "checkpoint_metrics"  # a run record's key: the metrics saved with the checkpoint it tested


class SelectionError(ValueError):
    """A selection rule that cannot be used; the message names the field."""


def check_select(spec: Any, where: str) -> dict[str, str]:
    """The rule with its defaults (``mode: min``), or a :class:`SelectionError` naming the field.

    Args:
        spec: the ``select`` mapping of a suite file.
        where: ``file:line: experiment 'name'``, put in front of every message.
    """
    if not isinstance(spec, dict):
        raise SelectionError(f"{where}: select must be a mapping {{metric, split, mode}}, got {spec!r}")
    unknown = set(spec) - set(SELECT_KEYS)
    if unknown:
        raise SelectionError(f"{where}: select: unknown key {min(unknown)!r}; allowed: {', '.join(SELECT_KEYS)}")
    for key in ("metric", "split"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise SelectionError(f"{where}: select.{key} must be given as a name, got {spec.get(key)!r}")
    split, metric, mode = spec["split"], spec["metric"], spec.get("mode", "min")
    for field, value in (("split", split), ("metric", metric)):
        if value == "test" or value.startswith("test/"):
            raise SelectionError(
                f"{where}: select.{field} is {value!r}: the test split may not choose the reported run "
                f"(its score would be selected on the test set); use select.split {' or '.join(SELECT_SPLITS)}"
            )
    if split not in SELECT_SPLITS:
        raise SelectionError(f"{where}: select.split must be one of {', '.join(SELECT_SPLITS)}, got {split!r}")
    if "/" in metric:
        raise SelectionError(
            f"{where}: select.metric is a name without its split (e.g. 'error'), got {metric!r}"
        )
    if mode not in SELECT_MODES:
        raise SelectionError(f"{where}: select.mode must be 'min' or 'max', got {mode!r}")
    return {"metric": metric, "split": split, "mode": mode}


def metric_key(spec: dict[str, str]) -> str:
    """The logged name the rule reads, e.g. ``train/error``."""
    return f"{spec['split']}/{spec['metric']}"


def selection_value(record: dict[str, Any], key: str) -> tuple[Any, bool]:
    """The value of ``key`` a run is compared by, and whether it is its final value standing in for its tested one.

    A run with an evaluation is compared by its tested checkpoint's metrics (``checkpoint_metrics``), a run
    without one by its final metrics (``metrics``), the numbers the report shows for each. An evaluated run
    whose record does not hold the checkpoint's value (an older memnet's record, or a checkpoint saved before
    the metric was logged) falls back to its final one: ``(value, True)``.
    """
    final = (record.get("metrics") or {}).get(key)
    if not record.get("evaluation"):
        return final, False
    tested = (record.get(CHECKPOINT_METRICS) or {}).get(key)
    if is_number(tested) and math.isfinite(tested):
        return tested, False
    return final, True


def select_run(records: Sequence[dict[str, Any]], spec: dict[str, str]) -> dict[str, Any] | None:
    """The finished run the rule picks, or None when no run logged the metric.

    Args:
        records: run records (``metrics.json``) with ``status``, ``seed``, ``metrics`` and, for an
            evaluated run, ``evaluation`` and ``checkpoint_metrics`` (:func:`selection_value`).
        spec: a rule from :func:`check_select`.

    Returns:
        ``{"seed", "value", "record", "candidates", "by_final_metrics", "left_out"}``: the chosen run, its value
        of the metric, its record, how many runs had the metric, the seeds of the evaluated candidates
        compared by their final value for want of their tested checkpoint's, and the finished runs that did not
        compete, ``{"seed", "value"}`` with their value as text (``nan``, ``inf``) or None where they have none,
        so that a report names them (a diverged seed, a metric one seed did not log). Ties go to the first seed.
    """
    key = metric_key(spec)
    candidates, by_final_metrics, left_out = [], [], []
    for record in records:
        if record.get("status") != "done":
            continue
        value, fallback = selection_value(record, key)
        if is_number(value) and math.isfinite(value):
            candidates.append((float(value), record))
            if fallback:
                by_final_metrics.append(record.get("seed"))
        else:
            left_out.append({"seed": record.get("seed"), "value": f"{value:g}" if is_number(value) else None})
    if not candidates:
        return None
    sign = 1.0 if spec["mode"] == "min" else -1.0
    value, record = min(candidates, key=lambda pair: sign * pair[0])
    return {"seed": record.get("seed"), "value": value, "record": record, "candidates": len(candidates),
            "by_final_metrics": by_final_metrics, "left_out": left_out}


def mean_std(values: Sequence[float | None]) -> dict[str, float] | None:
    """Mean and sample standard deviation (0 for one value) of the finite values, with their number n.

    A NaN, infinite or missing value is left out and not counted in n (a diverged seed would
    otherwise make the mean NaN, or, dropped but counted, look like agreement); None when no
    value is finite.
    """
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def summarize(records: Sequence[dict[str, Any]], spec: dict[str, str],
              scores: Callable[[dict[str, Any]], dict[str, float]]) -> dict[str, Any] | None:
    """The selected run's scores beside the mean ± s.d. of every finished seed's.

    Args:
        records: one experiment's run records.
        spec: a rule from :func:`check_select`.
        scores: a run record -> named scores (e.g. ``{"bAbI mean error %": 12.0}``); a
            run without a score is left out of that score's mean.

    Returns:
        ``{"rule", "seed", "value", "candidates", "by_final_metrics", "left_out", "selected", "over_seeds"}``
        (``rule`` like ``lowest train/error``; ``by_final_metrics`` and ``left_out`` as :func:`select_run` has them;
        ``selected`` the chosen run's scores; ``over_seeds`` score -> mean/std/n), or None when no
        run logged the metric.
    """
    chosen = select_run(records, spec)
    if chosen is None:
        return None
    every = [scores(record) for record in records if record.get("status") == "done"]
    names = sorted({name for run in every for name in run})
    return {
        "rule": f"{'lowest' if spec['mode'] == 'min' else 'highest'} {metric_key(spec)}",
        "seed": chosen["seed"],
        "value": chosen["value"],
        "candidates": chosen["candidates"],
        "by_final_metrics": chosen["by_final_metrics"],
        "left_out": chosen["left_out"],
        "selected": scores(chosen["record"]),
        "over_seeds": {name: mean_std([run[name] for run in every if name in run]) for name in names},
    }
