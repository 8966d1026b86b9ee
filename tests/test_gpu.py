"""CUDA checks: the same numbers on the GPU as on the CPU, and training through the CLI on a GPU."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from memnet.controllers import LSTMController
from memnet.models.ntm import NTM

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gpu


def test_ntm_forward_and_gradients_match_cpu():
    torch.manual_seed(0)
    cpu = NTM(9, 8, controller=partial(LSTMController, hidden_size=16), memory_size=12, word_size=6,
              num_reads=2, num_writes=2).double()
    gpu = NTM(9, 8, controller=partial(LSTMController, hidden_size=16), memory_size=12, word_size=6,
              num_reads=2, num_writes=2).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    inputs = torch.randn(3, 7, 9, dtype=torch.float64)
    out_cpu, out_gpu = cpu(inputs), gpu(inputs.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu)
    out_cpu.sum().backward()
    out_gpu.sum().backward()
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, msg=name)


def test_fit_on_gpu_through_the_cli(tmp_path, monkeypatch):
    from memnet.cli import main

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs" / "ntm" / "copy_small.yaml"), "--trainer.accelerator=gpu",
          "--trainer.devices=1", "--trainer.max_steps=5", "--trainer.enable_progress_bar=false",
          "--data.init_args.batches_per_epoch=5"])
    assert (tmp_path / "runs" / "latest.json").is_file()
