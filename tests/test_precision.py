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


def _ngrams_data(batch_size=4):
    from tasks.algorithmic import AlgorithmicDataModule, DynamicNGramsTask

    task = DynamicNGramsTask(order=3, min_length=200, max_length=200)
    return AlgorithmicDataModule(task, batch_size=batch_size, batches_per_epoch=1, val_lengths=[200], val_size=8,
                                 seed=3)


def test_the_optimal_cost_keeps_its_precision_through_the_bf16_true_cast_of_the_batch():
    """``bf16-true`` casts every floating tensor of a batch to bfloat16 before the data module's hook:
    the Bayes-optimal cost (about 126 bits per sequence, bfloat16's step 0.5 there) came out rounded."""
    from pytorch_lightning.plugins.precision import HalfPrecision

    data = _ngrams_data()
    batch = next(iter(data.val_dataloader()))
    cast = HalfPrecision("bf16-true").convert_input(dict(batch))
    assert cast["inputs"].dtype == torch.bfloat16  # the network's inputs in its dtype, as before
    restored = data.on_before_batch_transfer(cast, 0)
    assert restored["optimal_bits"].dtype == batch["optimal_bits"].dtype
    # float32's own round-off (the batch was drawn in parts, summed in another order), not bfloat16's 0.5
    torch.testing.assert_close(restored["optimal_bits"], batch["optimal_bits"], rtol=1e-6, atol=0)
    assert torch.equal(restored["inputs"], cast["inputs"]) and restored["inputs"].dtype == torch.bfloat16


def test_the_logged_optimal_cost_under_bf16_true_is_the_exact_one():
    from functools import partial

    import pytorch_lightning as pl

    from memnet.controllers import GRUController
    from memnet.models.recurrent import RecurrentModel

    data = _ngrams_data()
    optimal = torch.cat([batch["optimal_bits"].double() for batch in data.val_dataloader()])
    module = SequenceModule(RecurrentModel(1, 1, controller=partial(GRUController, hidden_size=3)))
    trainer = pl.Trainer(precision="bf16-true", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    scores = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert scores["val/optimal_bits_per_seq"] == pytest.approx(float(optimal.mean()), rel=1e-6, abs=0)
    excess = scores["val/bits_per_seq"] - scores["val/optimal_bits_per_seq"]
    assert scores["val/excess_bits_per_seq"] == pytest.approx(excess, abs=1e-3)
