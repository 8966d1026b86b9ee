"""The suite's two refusals: a file or folder it cannot use, and an evaluation it cannot run."""

from __future__ import annotations


class SuiteError(ValueError):
    """A suite file or results folder that cannot be used; the message names the file, line and entry."""


class EvaluationUnavailable(RuntimeError):
    """The code that evaluates this kind of task is not in this checkout."""
