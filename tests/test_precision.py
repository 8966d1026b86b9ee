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


def test_dnc_refuses_float16_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "dnc" / "copy.yaml"), *TINY, "--trainer.precision=16-true"])
    assert exit_info.value.code == 2
    assert "memnet: trainer.precision '16-true' is not supported by DNC" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_evaluation_casts_the_batch_to_the_model_dtype(dtype):
    task = CopyTask(width=3, max_length=4)
    module = SequenceModule(NTM(task.input_size, task.output_size, memory_size=6, word_size=4)).to(dtype).eval()
    row, _ = evaluate_length(module, task, 4, slots=6, num_sequences=3, batch_size=2,
                             seed=0, device=torch.device("cpu"))
    assert row["sequences"] == 3 and row["bits_per_seq"] > 0
