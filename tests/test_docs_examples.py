"""The documentation's worked examples run: docs/examples/*.py (a controller, a memory model, a task)
and their YAML configs through ``memnet fit``, and every ```python block of the docs pages (a snippet block runs the file it includes)."""

from __future__ import annotations

import doctest
import importlib
import re
from functools import partial
from pathlib import Path

import pytest
import torch

from memnet.cli import main as memnet_main
from memnet.models.ntm import NTM

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"


@pytest.fixture
def examples(monkeypatch):
    """Import a module of docs/examples by name (the folder is put on sys.path, as the docs say)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


def test_minimal_gated_unit_drives_an_ntm(examples):
    unit = examples("minimal_gated_unit").MinimalGatedUnit
    ntm = NTM(5, 3, memory_size=9, word_size=4, controller=partial(unit, hidden_size=6))
    assert ntm.controller.input_size == 5 + 4 and ntm.controller.output_size == 6
    inputs = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0))
    logits = ntm(inputs)
    assert logits.shape == (2, 7, 3)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ntm.controller.parameters())


def test_minimal_gated_unit_keeps_the_state_where_the_gate_is_shut(examples):
    unit = examples("minimal_gated_unit").MinimalGatedUnit(3, hidden_size=4)
    with torch.no_grad():
        unit.gate.bias.fill_(-1e4)  # f = 0: h_t = h_{t-1}
    state = torch.randn(2, 4)
    output, new_state = unit.step(torch.randn(2, 3), state)
    assert torch.equal(output, state) and torch.equal(new_state, state)


def test_ring_buffer_writes_in_order_and_reads_by_content(examples):
    memory = examples("ring_buffer_memory").RingBufferMemory(5, 3, memory_size=4, word_size=6, num_reads=2)
    inputs = torch.randn(3, 9, 5, generator=torch.Generator().manual_seed(1))
    logits, trace = memory(inputs, return_trace=True)
    assert logits.shape == (3, 9, 3)
    assert trace.read_weights.shape == (3, 9, 2, 4) and trace.write_weights.shape == (3, 9, 1, 4)
    assert torch.equal(trace.write_weights[0, :, 0].argmax(-1), torch.arange(9) % 4)  # slot t mod N
    torch.testing.assert_close(trace.read_weights.sum(-1), torch.ones(3, 9, 2))
    _, larger = memory(inputs, memory_size=11, return_trace=True)
    assert larger.read_weights.shape[-1] == 11


def test_reverse_task_worked_example_and_samples(examples):
    module = examples("reverse_task")
    result = doctest.testmod(module, verbose=False)
    assert result.attempted >= 3 and result.failed == 0
    task = module.ReverseTask(width=3, min_length=1, max_length=6)
    batch = task.sample_batch(torch.Generator().manual_seed(2), 4, 5)
    assert batch["inputs"].shape == (4, 11, 4) and batch["mask"].sum() == 4 * 5
    assert torch.equal(batch["targets"][:, 6:], batch["inputs"][:, :5, :3].flip(1))


@pytest.mark.parametrize("config", ["controller.yaml", "memory.yaml", "task.yaml"])
def test_example_config_trains_through_memnet_fit(examples, tmp_path, monkeypatch, config):
    monkeypatch.chdir(tmp_path)
    memnet_main(["fit", "--config", str(EXAMPLES / config), "--trainer.fast_dev_run=true",
                 "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                 "--trainer.enable_model_summary=false", "--data.init_args.batch_size=2"])


@pytest.mark.parametrize("page", sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")))
def test_python_blocks_of_the_docs_run(page, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.DOTALL)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        included = re.fullmatch(r'--8<-- "(.*?)"\n', block)  # a snippet: the page shows that file
        if included:
            block = (ROOT / included.group(1)).read_text()
        exec(compile(block, page, "exec"), {"__name__": "docs"})  # noqa: S102 -- the docs are ours
