"""The tutorial notebook (notebooks/ntm_copy.ipynb): its code on a tiny setting (fast), and the whole
notebook top to bottom through nbmake (slow: a few minutes of training on a CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "ntm_copy.ipynb"
# Overrides of the parameters cell: a few steps of a tiny NTM, two short evaluation lengths.
TINY = {"max_steps": 4, "batch_size": 2, "validate_every": 2, "train_lengths": (1, 3), "memory_size": 5,
        "word_size": 4, "hidden_size": 6, "eval_lengths": [3, 7], "eval_memory_size": 9,
        "num_sequences": 3, "threads": 1, "out": "pictures"}


def code_cells() -> list[nbformat.NotebookNode]:
    return [cell for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]


def test_the_first_code_cell_holds_every_parameter():
    parameters = code_cells()[0]
    assert parameters.metadata.get("tags") == ["parameters"]
    names: dict = {}
    exec(parameters.source, names)  # noqa: S102 -- our notebook
    assert set(TINY) <= set(names), f"the parameters cell lacks {sorted(set(TINY) - set(names))}"


def test_notebook_code_runs_on_a_tiny_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cells = code_cells()
    namespace: dict = {"__name__": "notebook"}
    exec(cells[0].source, namespace)  # noqa: S102
    namespace.update(TINY)
    threads = torch.get_num_threads()
    try:
        for cell in cells[1:]:
            exec(compile(cell.source, str(NOTEBOOK), "exec"), namespace)  # noqa: S102
    finally:
        torch.set_num_threads(threads)  # the notebook sets its own; leave the other tests theirs
    assert namespace["trainer"].global_step == TINY["max_steps"]
    assert [row["length"] for row in namespace["rows"]] == TINY["eval_lengths"]
    assert [row["slots"] for row in namespace["rows"]] == [9, 9]  # eval_memory_size, not the trained 5
    assert (tmp_path / "pictures" / "memory_access.png").stat().st_size > 0
    assert (tmp_path / "pictures" / "error_vs_length.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "step     2:" in printed and "bits per sequence at length 3" in printed


def test_the_notebook_is_stored_without_outputs():
    """Outputs are produced by running it (nbmake in CI), not committed."""
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells())


@pytest.mark.slow
def test_the_whole_notebook_runs_with_nbmake(tmp_path):
    copy = tmp_path / NOTEBOOK.name  # nbmake runs a notebook in its own folder: keep the pictures out of the clone
    copy.write_text(NOTEBOOK.read_text())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=1800", "-p", "no:cacheprovider",
         "-q", "-o", "addopts=", str(copy)],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert (tmp_path / "ntm_copy_tutorial" / "memory_access.png").is_file()
