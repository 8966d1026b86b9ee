"""The compiled step loops of the models without an external memory: a conditional
RecurrentModel's inference and the Seq2Seq decoder compute what their eager loops compute."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import torch

from memnet.controllers import GRUController, LSTMController
from memnet.models import core
from memnet.models.recurrent import RecurrentModel
from memnet.models.seq2seq import Seq2Seq

# Light backends keep these fast: "eager" is dynamo's capture and guards (which decide
# recompilation), "aot_eager" adds autograd's tracing of the step.


def _conditional(engine="eager", backend="eager", feedback="probabilities", controller=None):
    torch.manual_seed(0)
    controller = controller or partial(LSTMController, hidden_size=7)
    return RecurrentModel(5, 4, controller=controller, conditional=True, feedback=feedback,
                          engine=engine, compile_backend=backend).double()


def _outputs_and_grads(net, inputs):
    net.zero_grad(set_to_none=True)
    logits = net(inputs)
    (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).reshape(logits.shape)).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}


def _assert_same(got, expected, tolerance=1e-10):
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("feedback", ["probabilities", "bits"])
def test_conditional_inference_compiled_equals_eager_and_lengths_do_not_recompile(backend, feedback):
    torch._dynamo.reset()
    eager, net = _conditional(feedback=feedback), _conditional("compiled", backend, feedback=feedback)
    inputs = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected, expected_grads = _outputs_and_grads(eager, inputs)
    got, got_grads = _outputs_and_grads(net, inputs)
    _assert_same(got, expected)
    assert got_grads.keys() == expected_grads.keys()
    for name in got_grads:
        _assert_same(got_grads[name], expected_grads[name])
    first = net.compilations
    assert first >= 1
    for steps in (4, 9, 2):  # other sequence lengths, the same batch
        inputs = torch.randn(3, steps, 5, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
        _assert_same(_outputs_and_grads(net, inputs)[0], _outputs_and_grads(eager, inputs)[0])
    assert net.compilations == first


def test_conditional_inference_compiled_under_no_grad_and_a_gru():
    torch._dynamo.reset()
    make = partial(_conditional, controller=partial(GRUController, hidden_size=6), feedback="bits")
    eager, net = make(), make("compiled")
    inputs = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        _assert_same(net(inputs), eager(inputs))
        _assert_same(net(inputs[:, :3]), eager(inputs[:, :3]))
    assert net.compilations == 1


def test_teacher_forcing_does_not_compile():
    torch._dynamo.reset()
    net = _conditional("compiled")
    inputs = torch.randn(2, 4, 5, dtype=torch.float64)
    targets = torch.rand(2, 4, 4, dtype=torch.float64)
    _assert_same(net(inputs, targets=targets), _conditional()(inputs, targets=targets))
    assert net.compilations == 0


def _seq2seq(attention, engine="eager", backend="eager", bridge=True):
    torch.manual_seed(0)
    return Seq2Seq(9, 8, encoder=partial(LSTMController, hidden_size=6), decoder=partial(LSTMController, hidden_size=6),
                   embedding_size=5, attention=attention, attention_size=4, max_decode_length=12, bridge=bridge,
                   engine=engine, compile_backend=backend).double()


def _seq2seq_outputs(net, source, target, ratio):
    net.zero_grad(set_to_none=True)
    logits = net(source, target, teacher_forcing_ratio=ratio, generator=torch.Generator().manual_seed(3))
    (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).reshape(logits.shape)).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention,ratio", [("bahdanau", 1.0), ("content", 0.5), ("luong", 0.0), ("none", 0.5)])
def test_seq2seq_decoder_compiled_equals_eager_and_lengths_do_not_recompile(attention, ratio):
    torch._dynamo.reset()
    eager, net = _seq2seq(attention), _seq2seq(attention, "compiled")
    source = torch.randint(3, 9, (3, 5), generator=torch.Generator().manual_seed(4))
    target = torch.randint(3, 8, (3, 6), generator=torch.Generator().manual_seed(5))
    expected, expected_grads = _seq2seq_outputs(eager, source, target, ratio)
    got, got_grads = _seq2seq_outputs(net, source, target, ratio)
    _assert_same(got, expected)
    assert got_grads.keys() == expected_grads.keys()
    for name in got_grads:
        _assert_same(got_grads[name], expected_grads[name])
    first = net.compilations
    assert first >= 1
    for length in (3, 8):  # other target lengths
        target = torch.randint(3, 8, (3, length), generator=torch.Generator().manual_seed(length))
        _assert_same(_seq2seq_outputs(net, source, target, ratio)[0], _seq2seq_outputs(eager, source, target, ratio)[0])
    assert net.compilations == first


@pytest.mark.parametrize("attention", ["none", "bahdanau"])
def test_greedy_decoding_compiled_equals_eager(attention):
    torch._dynamo.reset()
    eager, net = _seq2seq(attention, bridge=False), _seq2seq(attention, "compiled", bridge=False)
    source = torch.randint(3, 9, (4, 6), generator=torch.Generator().manual_seed(6))
    assert torch.equal(net.generate(source), eager.generate(source))
    _assert_same(net(source), eager(source))
    assert net.compilations >= 1


def test_an_unknown_loop_engine_is_named():
    with pytest.raises(ValueError, match=r"engine must be one of \['eager', 'compiled'\], got 'fused'"):
        RecurrentModel(3, 2, conditional=True, engine="fused")
    with pytest.raises(ValueError, match="engine must be one of"):
        Seq2Seq(5, 5, engine="jit")


def test_compile_unavailable_logs_and_runs_eager(monkeypatch, caplog):
    monkeypatch.setattr(core, "compile_unavailable", lambda backend: "InvalidCxxCompiler: no working C++ compiler")
    net = _seq2seq("luong", "compiled")
    source = torch.randint(3, 9, (2, 4))
    with caplog.at_level(logging.WARNING, logger="memnet.models.core"):
        tokens = net.generate(source)
    assert torch.equal(tokens, _seq2seq("luong").generate(source))
    assert "Seq2Seq engine 'compiled' is unavailable (InvalidCxxCompiler: no working C++ compiler); running eager" \
        in caplog.text
    assert net.compilations == 0


def test_a_failing_compiler_falls_back_to_eager_mid_run(caplog):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("compiler crashed")

    torch._dynamo.reset()
    net = _conditional("compiled", broken_backend)
    inputs = torch.randn(2, 4, 5, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="memnet.models.core"):
        got = net(inputs)
        again = net(inputs)
    _assert_same(got, _conditional()(inputs))
    _assert_same(again, got)
    assert caplog.text.count("RecurrentModel compiled step failed") == 1 and "running eager from now on" in caplog.text


@pytest.mark.parametrize("config", ["gru/markov_conditional.yaml", "seq2seq/reverse_bahdanau.yaml"])
def test_a_compiled_loop_config_trains_through_the_cli(config, tmp_path, monkeypatch):
    from pathlib import Path

    from memnet.cli import main as memnet_main
    from memnet.models import recurrent, seq2seq

    monkeypatch.chdir(tmp_path)
    torch._dynamo.reset()
    compilations = []
    original = core.compiled

    def counting_compiled(owner, *args, **options):  # the models the CLI built, to count their graphs
        compilations.append(owner)
        return original(owner, *args, **options)

    for module in (recurrent, seq2seq):
        monkeypatch.setattr(module, "compiled", counting_compiled)
    root = Path(__file__).resolve().parents[1]
    memnet_main(["fit", "--config", str(root / "configs" / config), "--trainer.fast_dev_run=true",
                 "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                 "--model.init_args.net.init_args.engine=compiled",
                 "--model.init_args.net.init_args.compile_backend=eager"])
    assert compilations and all(owner.compilations >= 1 for owner in compilations)


def test_the_cli_prints_memnet_log_records_such_as_compile_times(monkeypatch, capsys):
    """`memnet ...` shows memnet's INFO records (the compile log) where nothing configured logging."""
    import logging

    from memnet.cli import console_logging

    memnet_logger = logging.getLogger("memnet")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(memnet_logger, "handlers", [])
    monkeypatch.setattr(memnet_logger, "level", logging.NOTSET)
    console_logging()
    logging.getLogger("memnet.models.core").info("memnet: compiled NTM step, graph 1 in %.1f s", 2.5)
    assert "memnet: compiled NTM step, graph 1 in 2.5 s" in capsys.readouterr().err

    # a program that configured logging itself keeps its own handlers
    own = logging.StreamHandler()
    monkeypatch.setattr(memnet_logger, "handlers", [own])
    console_logging()
    assert memnet_logger.handlers == [own]
