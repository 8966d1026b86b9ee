"""CUDA checks: the same numbers on the GPU as on the CPU, the compiled engine with CUDA graphs equal to
the fused one, and training through the CLI on a GPU (compiled, CUDA graphs, bfloat16, resumed)."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from memnet.controllers import LSTMController
from memnet.models.dnc import DNC
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


def test_memn2n_random_noise_draws_the_same_time_rows_on_the_gpu_as_on_the_cpu(monkeypatch):
    from memnet.models.memn2n import MemN2N

    rows = {"cpu": [], "cuda": []}
    draw = MemN2N.time_indices

    def recorded(self, present, generator=None):
        times = draw(self, present, generator)
        rows[times.device.type].append(times.cpu())
        return times

    monkeypatch.setattr(MemN2N, "time_indices", recorded)
    story = torch.randint(1, 23, (3, 7, 5))
    story[1, 4:], story[2, 2:] = 0, 0  # stories of 7, 4 and 2 sentences
    query = torch.randint(1, 23, (3, 4))
    for device in ("cpu", "cuda"):  # a seeded training run on each
        model = MemN2N(23, 9, embedding_size=6, memory_size=12, random_noise=0.3, seed=5).to(device).train()
        for _ in range(4):
            model(story.to(device), query.to(device))
    assert all(torch.equal(cpu, gpu) for cpu, gpu in zip(rows["cpu"], rows["cuda"], strict=True))
    assert any(not torch.equal(times, rows["cpu"][0]) for times in rows["cpu"])  # the rows are drawn


def test_fit_on_gpu_through_the_cli(tmp_path, monkeypatch):
    from memnet.cli import main

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs" / "ntm" / "copy_small.yaml"), "--trainer.accelerator=gpu",
          "--trainer.devices=1", "--trainer.max_steps=5", "--trainer.enable_progress_bar=false",
          "--trainer.logger=false", "--data.init_args.batches_per_epoch=5"])
    assert (tmp_path / "runs" / "latest.json").is_file()


def _pair(model, **sizes):
    """The same weights twice: the fused engine and the compiled one with CUDA graphs, on the GPU."""
    make = {
        "NTM": lambda engine, **kw: NTM(6, 5, controller=partial(LSTMController, hidden_size=16), memory_size=12,
                                        word_size=6, num_reads=2, num_writes=2, engine=engine, **kw),
        "DNC": lambda engine, **kw: DNC(6, 5, controller=partial(LSTMController, hidden_size=16), memory_size=12,
                                        word_size=6, num_reads=2, engine=engine, **kw),
    }[model]
    torch.manual_seed(0)
    fused = make("fused").cuda()
    graphed = make("compiled", compile_mode="reduce-overhead", **sizes).cuda()
    graphed.load_state_dict(fused.state_dict())
    return fused, graphed


@pytest.mark.parametrize("model", ["NTM", "DNC"])
def test_compiled_with_cuda_graphs_equals_fused_over_training_steps_and_lengths(model):
    """Three training steps of each length (CUDA-graph trees replay the recorded graphs), a
    no-grad forward between them, then another length and batch: outputs and gradients equal."""
    torch._dynamo.reset()
    fused, graphed = _pair(model)
    generator = torch.Generator().manual_seed(1)
    for batch, steps in ((4, 9), (4, 9), (4, 9), (4, 13), (1, 9)):
        inputs = torch.randn(batch, steps, 6, generator=generator).cuda()
        weights = torch.randn(batch, steps, 5, generator=generator).cuda()
        results = []
        for net in (fused, graphed):
            net.zero_grad(set_to_none=True)
            logits = net(inputs)
            (logits * weights).sum().backward()
            with torch.no_grad():
                evaluation = net(inputs)
            results.append((logits.detach().clone(), evaluation.clone(),
                            {name: p.grad.clone() for name, p in net.named_parameters()}))
        (expected, expected_eval, expected_grads), (got, got_eval, got_grads) = results
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_eval, expected_eval, rtol=1e-5, atol=1e-5)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert graphed.compilations >= 1


def test_the_benchmark_runs_the_compiled_cuda_graph_and_whole_step_graph_paths(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--device", "cuda", "--models", "NTM",
         "--paths", "compiled", "graphed", "--compile-mode", "reduce-overhead", "--batch-sizes", "2",
         "--length", "2", "--steps", "2", "--repeats", "2", "--min-seconds", "0", "--warmup", "3", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert out.is_file(), result.stderr
    rows = json.loads(out.read_text())["results"]  # a failed setting's row says why (the exit status is then 1)
    assert [(row["path"], row.get("error")) for row in rows] == [("compiled", None), ("graphed", None)]
    assert result.returncode == 0, result.stderr
    assert all(row["sequences_per_second"] > 0 for row in rows)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_compiled_cuda_graph_config_trains_and_resumes_through_the_cli(precision, tmp_path, monkeypatch):
    from memnet.cli import main

    monkeypatch.chdir(tmp_path)
    torch._dynamo.reset()
    common = ["--config", str(ROOT / "configs" / "ntm" / "copy_small.yaml"), "--trainer.accelerator=gpu",
              "--trainer.devices=1", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
              f"--trainer.precision={precision}", "--data.init_args.batches_per_epoch=4",
              "--model.init_args.net.init_args.engine=compiled",
              "--model.init_args.net.init_args.compile_mode=reduce-overhead"]
    main(["fit", *common, "--trainer.max_steps=8"])
    first = json.loads((tmp_path / "runs" / "latest.json").read_text())
    assert all(torch.isfinite(torch.tensor(v)) for v in first["metrics"].values()), first["metrics"]
    main(["fit", *common, "--trainer.max_steps=12", "--ckpt_path", first["last_checkpoint"]])
    checkpoint = torch.load(first["last_checkpoint"], weights_only=False, map_location="cpu")
    assert checkpoint["global_step"] == 12
