"""Every precision setting trains, validates and draws its figures: callbacks and evaluation follow the
model's dtype (a float32 batch is cast to float64 or bfloat16 weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memnet.cli import main
from memnet.evaluation import evaluate_length
from memnet.lightning import SequenceModule
from memnet.models.ntm import NTM
from tasks.algorithmic import CopyTask

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--trainer.fast_dev_run=true", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    "--model.init_args.net.init_args.memory_size=6", "--model.init_args.net.init_args.word_size=5",
    "--model.init_args.net.init_args.controller.init_args.hidden_size=7",
    "--data.init_args.batch_size=2", "--data.init_args.val_size=2",
    "--data.init_args.task.init_args.max_length=3", "--data.init_args.val_lengths=[3]",
]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("model", ["ntm", "dnc"])
@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed", "bf16-true"])
def test_fit_with_every_precision_draws_the_memory_figure(model, precision, tmp_path):
    main(["fit", "--config", str(ROOT / "configs" / model / "copy.yaml"), *TINY, f"--trainer.precision={precision}"])
    assert (tmp_path / "runs" / "debug" / "memory_access" / "epoch_0000.png").is_file()


@pytest.mark.parametrize(("model", "name"), [("dnc", "DNC"), ("ntm", "NTM")])
def test_float16_is_refused_naming_the_option(model, name, capsys):
    """In float16 the NTM's gradients were NaN from the first step (ε² of the norms underflows), every step
    was skipped, and the run stopped with advice to lower the learning rate (or, with few steps, exited 0)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / model / "copy.yaml"), *TINY, "--trainer.precision=16-true"])
    assert exit_info.value.code == 2
    assert f"memnet: trainer.precision '16-true' is not supported by {name}" in capsys.readouterr().err


def test_ntm_gradients_in_float16_are_not_finite():
    """Why the NTM refuses ``16-true``: its addressing's epsilons underflow in float16."""
    torch.manual_seed(0)
    net = NTM(5, 4, memory_size=6, word_size=5)
    inputs = torch.rand(2, 3, 5)
    for dtype, finite in ((torch.float16, False), (torch.bfloat16, True)):
        net.zero_grad()
        logits = net.to(dtype)(inputs.to(dtype))
        logits.float().square().mean().backward()
        assert all(bool(p.grad.isfinite().all()) for p in net.parameters()) is finite, dtype
    assert "16-true" in NTM.refuses_precisions


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_evaluation_casts_the_batch_to_the_model_dtype(dtype):
    task = CopyTask(width=3, max_length=4)
    module = SequenceModule(NTM(task.input_size, task.output_size, memory_size=6, word_size=4)).to(dtype).eval()
    row, _ = evaluate_length(module, task, 4, slots=6, num_sequences=3, batch_size=2,
                             seed=0, device=torch.device("cpu"))
    assert row["sequences"] == 3 and row["bits_per_seq"] > 0
