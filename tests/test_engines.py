"""The execution paths of the memory models (eager, fused, compiled) compute the same thing."""

from __future__ import annotations

import json
import logging
from functools import partial

import pytest
import torch
from tiny_run import tiny_run

from memnet.controllers import FeedForwardController, LSTMController
from memnet.models import core
from memnet.models.dnc import DNC
from memnet.models.ntm import NTM


def _ntm(*, hidden=13, memory_size=11, word_size=6, reads=2, writes=2, layers=1, controller=None, **options):
    controller = controller or partial(LSTMController, hidden_size=hidden, num_layers=layers)
    return NTM(9, 5, controller=controller, memory_size=memory_size, word_size=word_size,
               num_reads=reads, num_writes=writes, **options)


def _dnc(*, memory_size=7, reads=3, **options):
    return DNC(9, 5, controller=partial(LSTMController, hidden_size=12), memory_size=memory_size,
               word_size=4, num_reads=reads, **options)


def _outputs_and_grads(net, engine, inputs, *, memory_size=None):
    net.engine = engine
    net.zero_grad(set_to_none=True)
    logits = net(inputs, memory_size=memory_size)
    upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=logits.dtype)
    (logits * upstream).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def _assert_engines_equal(net, engines, *, batch, steps=6, dtype=torch.float64, memory_size=None, seed=0):
    torch.manual_seed(seed)
    net = net.to(dtype)
    inputs = torch.randn(batch, steps, 9, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    expected, expected_grads = _outputs_and_grads(net, "eager", inputs, memory_size=memory_size)
    for engine in engines:
        got, got_grads = _outputs_and_grads(net, engine, inputs, memory_size=memory_size)
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance, msg=f"{engine} outputs")
        assert got_grads.keys() == expected_grads.keys()
        for name, grad in got_grads.items():
            torch.testing.assert_close(grad, expected_grads[name], rtol=tolerance, atol=tolerance,
                                       msg=f"{engine} gradient of {name}")


@pytest.mark.parametrize("batch,sizes", [
    (3, {}),
    (1, {"reads": 1, "writes": 1, "memory_size": 16}),
    (4, {"reads": 1, "writes": 3, "word_size": 3}),
    (2, {"layers": 2}),
    (2, {"controller": partial(FeedForwardController, hidden_size=10)}),
    (2, {"learn_initial_state": True, "memory_init": "learned", "shift_range": 2}),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ntm_fused_equals_eager(batch, sizes, dtype):
    _assert_engines_equal(_ntm(**sizes), ["fused"], batch=batch, dtype=dtype)


@pytest.mark.parametrize("batch,options", [
    (3, {}),
    (1, {"reads": 1}),
    (4, {"link_sparsity": 3}),
    (2, {"use_allocation": False}),
    (2, {"use_links": False, "memory_size": 5}),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dnc_fused_equals_eager(batch, options, dtype):
    _assert_engines_equal(_dnc(**options), ["fused"], batch=batch, dtype=dtype)


@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_fused_equals_eager_with_an_enlarged_memory(make):
    _assert_engines_equal(make(), ["fused"], batch=2, memory_size=23)


@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_step_and_trace_are_those_of_the_reference_loop(make):
    net = make().double()
    inputs = torch.randn(2, 5, 9, dtype=torch.float64)
    logits, _ = net(inputs, return_trace=True)
    torch.testing.assert_close(net(inputs), logits, rtol=0, atol=1e-12)
    state = net.initial_state(2, dtype=torch.float64)
    for t in range(5):
        step_logits, state = net.step(inputs[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_unknown_engine_is_named(make):
    with pytest.raises(ValueError, match=r"engine must be one of \['eager', 'fused', 'compiled'\], got 'jit'"):
        make(engine="jit")


# -- the compiled engine, through light backends so that the tests stay fast: "eager"
#    (dynamo's graph capture and guards, which decide recompilation) and, in the slow
#    tests, "aot_eager" (also autograd's tracing of the fused functions) -------------

@pytest.mark.parametrize("make", [_ntm, pytest.param(_dnc, marks=pytest.mark.slow)])
def test_compiled_equals_eager_and_lengths_do_not_recompile(make):
    torch._dynamo.reset()
    net = make(engine="compiled", compile_backend="eager")
    # T = 7: the first step eager, then 4 steps in one call and 2 one at a time: two graphs.
    _assert_engines_equal(net, ["compiled"], batch=2, steps=7)
    compilations = net.compilations
    assert compilations == 2
    for steps in (3, 6, 2, 1, 13):  # other sequence lengths, same batch and memory
        _assert_engines_equal(net, ["compiled"], batch=2, steps=steps, seed=steps)
    assert net.compilations == compilations


@pytest.mark.parametrize("unroll,steps,graphs", [(1, 6, 1), (3, 7, 1), (5, 9, 2), (8, 4, 1)])
def test_compiled_unroll_equals_eager(unroll, steps, graphs):
    torch._dynamo.reset()
    net = _ntm(engine="compiled", compile_backend="eager", compile_unroll=unroll)
    _assert_engines_equal(net, ["compiled"], batch=3, steps=steps)
    assert net.compilations == graphs  # a K-step graph only where T − 1 ≥ K, a one-step one for the rest


def test_the_compile_clock_times_the_tracing_and_the_backward_compiled_at_the_first_backward(caplog):
    """A backend's own time misses dynamo's tracing and AOTAutograd's lazy backward; the clock has both."""
    torch._dynamo.reset()
    before, seconds = len(core.COMPILE_CLOCK.events), core.compile_seconds()
    net = _ntm(engine="compiled", compile_backend="aot_eager", compile_unroll=1)  # one graph: the one-step one
    with caplog.at_level(logging.INFO, logger="memnet.models.core"):
        loss = net(torch.randn(2, 3, 9)).sum()
        assert [kind for kind, _, _ in core.COMPILE_CLOCK.events[before:]] == ["trace and compile"]
        loss.backward()
    events = core.COMPILE_CLOCK.events[before:]
    assert [kind for kind, _, _ in events] == ["trace and compile", "backward"]
    assert events[0][1] == events[1][1]  # the same graph's compile id
    assert all(took > 0 for _, _, took in events)
    assert core.compile_seconds() == pytest.approx(seconds + sum(took for _, _, took in events))
    assert f"torch.compile backward of graph {events[1][1]} took" in caplog.text
    net(torch.randn(2, 5, 9)).sum().backward()  # compiled already: the clock stands still
    assert len(core.COMPILE_CLOCK.events) == before + 2


@pytest.mark.parametrize("unroll", [0, -2])
def test_compile_unroll_must_be_positive(unroll):
    with pytest.raises(ValueError, match="compile_unroll"):
        _ntm(engine="compiled", compile_unroll=unroll)


@pytest.mark.slow
@pytest.mark.parametrize("make", [_ntm, _dnc])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_handles_a_last_batch_of_another_size_and_an_enlarged_memory(make, backend):
    torch._dynamo.reset()
    net = make(engine="compiled", compile_backend=backend)
    _assert_engines_equal(net, ["compiled"], batch=3, steps=4)
    first = net.compilations
    _assert_engines_equal(net, ["compiled"], batch=1, steps=4)  # a last, smaller batch
    _assert_engines_equal(net, ["compiled"], batch=3, steps=4, memory_size=19)  # memory enlarged at evaluation
    _assert_engines_equal(net, ["compiled"], batch=5, steps=4, memory_size=29)
    # Each new shape compiles at most once (then shapes are dynamic), never once per call.
    assert first == 1 and net.compilations <= first + 3
    again = net.compilations
    _assert_engines_equal(net, ["compiled"], batch=4, steps=4, memory_size=13)
    assert net.compilations <= again + 1


@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_an_unknown_compile_mode_or_a_mode_without_inductor_is_named(make):
    with pytest.raises(ValueError, match=r"compile_mode must be 'auto', one of \['default', 'reduce-overhead'.*got 'fast'"):
        make(engine="compiled", compile_mode="fast")
    with pytest.raises(ValueError, match="compile_mode 'reduce-overhead' is a mode of the inductor backend; "
                                         "compile_backend is 'eager'"):
        make(engine="compiled", compile_backend="eager", compile_mode="reduce-overhead")


def test_auto_compile_mode_is_cuda_graphs_on_a_gpu_and_the_default_elsewhere():
    net = _ntm(engine="compiled")
    assert net.compile_mode == "auto"
    assert net._compile_mode_on(torch.device("cuda", 0)) == "reduce-overhead"
    assert net._compile_mode_on(torch.device("cpu")) is None
    assert _ntm(engine="compiled", compile_backend="eager")._compile_mode_on(torch.device("cuda")) is None
    assert _ntm(engine="compiled", compile_mode=None)._compile_mode_on(torch.device("cuda")) is None
    assert _ntm(engine="compiled", compile_mode="max-autotune")._compile_mode_on(torch.device("cpu")) == "max-autotune"
    # and 8 steps a call on a GPU at every batch size (the CPU's default depends on the batch)
    assert (net._unroll(1, torch.device("cuda")), net._unroll(4096, torch.device("cuda"))) == (8, 8)
    assert (net._unroll(1, torch.device("cpu")), net._unroll(128, torch.device("cpu"))) == (4, 1)


@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_a_compile_mode_compiles_through_inductors_own_wrapper_of_that_mode(make, monkeypatch):
    """What torch.compile(mode=...) compiles with; here a stand-in that records the mode and runs
    dynamo's graph as captured (the real inductor with CUDA graphs runs in the CUDA tests)."""
    modes = []

    class Wrapper:
        def __init__(self, mode, options, dynamic):
            modes.append(mode)

        def __call__(self, graph_module, example_inputs):
            return graph_module.forward

    monkeypatch.setattr(torch, "_TorchCompileInductorWrapper", Wrapper)
    monkeypatch.setattr(core, "compile_unavailable", lambda backend: None)
    monkeypatch.setattr(core, "_SHARED", {})  # compiled functions of no earlier test (their wrapper is inductor's)
    torch._dynamo.reset()
    net = make(engine="compiled", compile_mode="max-autotune-no-cudagraphs")
    _assert_engines_equal(net, ["compiled"], batch=2, steps=7)
    assert modes == ["max-autotune-no-cudagraphs"] * 2 and net.compilations == 2  # the 4-step and 1-step functions


def test_compile_unavailable_logs_and_runs_fused(monkeypatch, caplog):
    monkeypatch.setattr(core, "compile_unavailable", lambda backend: "InvalidCxxCompiler: no working C++ compiler")
    net = _ntm(engine="compiled")
    with caplog.at_level(logging.WARNING, logger="memnet.models.core"):
        _assert_engines_equal(net, ["compiled"], batch=2, steps=3)
    assert "engine 'compiled' is unavailable (InvalidCxxCompiler: no working C++ compiler)" in caplog.text
    assert net.compilations == 0


def test_an_unknown_compile_backend_is_named():
    assert "unknown torch.compile backend 'nope'" in core.compile_unavailable("nope")
    assert core.compile_unavailable("aot_eager") is None


def test_a_failing_compiler_falls_back_to_fused_mid_run(caplog):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("compiler crashed")

    torch._dynamo.reset()
    net = _ntm(engine="compiled")
    net.compile_backend = broken_backend
    with caplog.at_level(logging.WARNING, logger="memnet.models.core"):
        _assert_engines_equal(net, ["compiled"], batch=2, steps=3)
    assert caplog.text.count("compiled step failed") == 1 and "running the fused path" in caplog.text



def test_a_model_error_under_the_compiled_engine_raises_and_leaves_it_compiled(caplog):
    torch._dynamo.reset()
    net = _ntm(engine="compiled", compile_backend="eager").double()
    inputs = torch.randn(2, 6, 9, dtype=torch.float64)
    net(inputs)
    _, context = net.controller.project_inputs(inputs.transpose(0, 1))
    state = net.initial_state(2, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="memnet.models.core"), pytest.raises(RuntimeError):
        net._compiled_steps(4)(torch.randn(4, 2, 3, dtype=torch.float64), context, state)  # a wrong width
    assert "from now on" not in caplog.text
    before = net.compilations
    _assert_engines_equal(net, ["compiled"], batch=2, steps=6)  # still compiled: no new graph, no fallback
    assert net.compilations == before and "from now on" not in caplog.text


def test_models_of_the_same_sizes_share_the_compiled_graphs_and_are_freed():
    """The second model runs the graphs the first compiled, on its own weights; neither is kept alive."""
    import gc
    import weakref

    torch._dynamo.reset()
    torch.manual_seed(0)
    first = _ntm(engine="compiled", compile_backend="eager")
    _assert_engines_equal(first, ["compiled"], batch=2, steps=7)
    assert first.compilations == 2
    torch.manual_seed(1)
    second = _ntm(engine="compiled", compile_backend="eager")
    assert not torch.equal(second.output.weight, first.output.weight)
    _assert_engines_equal(second, ["compiled"], batch=2, steps=7, seed=3)
    assert second.compilations == 0
    other = _ntm(engine="compiled", compile_backend="eager", word_size=5)  # other sizes: graphs of its own
    _assert_engines_equal(other, ["compiled"], batch=2, steps=7)
    assert other.compilations >= 1
    alive = [weakref.ref(net) for net in (first, second, other)]
    del first, second, other
    gc.collect()
    assert [ref() for ref in alive] == [None, None, None]


def test_past_the_recompile_limit_a_model_runs_the_fused_path_and_says_so(monkeypatch, caplog):
    """dynamo runs a function uncompiled, silently, once it has compiled ``recompile_limit`` variants of it."""
    torch._dynamo.reset()
    monkeypatch.setattr(core, "RECOMPILE_LIMIT", 1)
    first = _ntm(engine="compiled", compile_backend="eager", compile_unroll=1)
    _assert_engines_equal(first, ["compiled"], batch=2, steps=4)
    assert first.compilations == 1
    other = _ntm(engine="compiled", compile_backend="eager", compile_unroll=1, word_size=5)  # a second variant
    with caplog.at_level(logging.WARNING, logger="memnet.models.core"):
        _assert_engines_equal(other, ["compiled"], batch=2, steps=4)
        _assert_engines_equal(other, ["compiled"], batch=2, steps=5)
    assert other.compilations == 0
    assert caplog.text.count("limit of 1 graphs for this function is reached; running the fused path") == 1
    _assert_engines_equal(first, ["compiled"], batch=2, steps=4)  # the compiled variant still runs
    assert first.compilations == 1

@pytest.mark.slow
@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_inductor_compiled_equals_eager(make):
    if core.compile_unavailable("inductor"):
        pytest.skip(core.compile_unavailable("inductor"))
    torch._dynamo.reset()
    net = make(engine="compiled")
    _assert_engines_equal(net, ["compiled"], batch=2, steps=4, dtype=torch.float32)


# Backward functions that ask the device for a value (whether a factor is 0, how many nonzeros):
# a host sync, which a CUDA graph of the whole training step cannot capture.
SYNCING_BACKWARDS = ("ProdBackward", "CumprodBackward", "NonzeroBackward", "MaskedSelectBackward", "IndexBackward")


def _backward_nodes(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_the_fused_training_graph_has_no_backward_that_syncs_with_the_device(make):
    net = make(engine="fused")
    logits = net(torch.randn(2, 5, net.input_size))
    nodes = _backward_nodes(logits.sum())
    assert not [name for name in nodes if name.startswith(SYNCING_BACKWARDS)], sorted(nodes)


def test_state_dict_keys_and_parameter_order_are_those_of_earlier_checkpoints():
    # Checkpoints written before the shared core (keys and optimizer-state order) still load.
    ntm = NTM(4, 3, controller=partial(LSTMController, hidden_size=5), memory_size=6, word_size=2)
    assert list(ntm.state_dict()) == [
        "controller.lstm.weight_ih_l0", "controller.lstm.weight_hh_l0", "controller.lstm.bias_ih_l0",
        "controller.lstm.bias_hh_l0", "heads.project.weight", "heads.project.bias", "output.weight", "output.bias"]
    dnc = DNC(4, 3, controller=partial(LSTMController, hidden_size=5), memory_size=6, word_size=2)
    assert [name for name, _ in dnc.named_parameters()] == [
        "controller.lstm.weight_ih_l0", "controller.lstm.weight_hh_l0", "controller.lstm.bias_ih_l0",
        "controller.lstm.bias_hh_l0", "interface.project.weight", "interface.project.bias", "output.weight",
        "output.bias"]


TINY_COMPILED_RUN = tiny_run(trainer={"default_root_dir": "run"}, net={"engine": "compiled", "compile_backend": "eager"})


@pytest.mark.slow
def test_a_compiled_config_trains_through_the_cli_and_resumes(tmp_path, monkeypatch):
    from memnet.cli import main as memnet_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_COMPILED_RUN)
    torch._dynamo.reset()
    memnet_main(["fit", "--config", "tiny.yaml"])
    (summary,) = tmp_path.glob("**/summary.json")
    assert json.loads(summary.read_text())["compile_seconds"] > 0  # the tracing, at least
    (checkpoint,) = tmp_path.glob("**/checkpoints/last.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    memnet_main(["fit", "--config", "tiny.yaml", "--trainer.max_steps", "4", "--ckpt_path", str(checkpoint)])
    resumed = max(tmp_path.glob("**/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
    assert torch.load(resumed, map_location="cpu", weights_only=False)["global_step"] == 4


def test_compile_unroll_by_default_unrolls_small_batches_only():
    torch._dynamo.reset()
    net = _ntm(engine="compiled", compile_backend="eager")
    assert net.compile_unroll is None and net._unroll(1) == core.AUTO_UNROLL == 4
    assert net._unroll(63) == 4 and net._unroll(64) == 1  # the NTM: one step a call from batch 64
    _assert_engines_equal(net, ["compiled"], batch=2, steps=5)  # 4 steps in one call: the unrolled graph only
    assert net.compilations == 1
    assert _ntm(engine="compiled", compile_unroll=2)._unroll(500) == 2
    assert _dnc(engine="compiled")._unroll(4096) == 4  # the DNC unrolls at every batch size


@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_a_gradient_penalty_runs_on_eager_and_is_refused_by_fused_rather_than_wrong(make):
    net = make().double()
    inputs = torch.randn(2, 3, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for engine in ("eager", "fused"):
        net.engine = engine
        params = list(net.parameters())
        grads = torch.autograd.grad(net(inputs).sigmoid().sum(), params, create_graph=True)
        penalty = sum((grad**2).sum() for grad in grads)
        if engine == "eager":
            assert all(torch.isfinite(g).all() for g in torch.autograd.grad(penalty, params, allow_unused=True)
                       if g is not None)
        else:
            with pytest.raises(RuntimeError, match="has no second derivative"):
                torch.autograd.grad(penalty, params, allow_unused=True)


@pytest.mark.parametrize("make", [_ntm, _dnc])
def test_an_unknown_engine_set_on_a_built_model_is_named(make):
    net = make()
    net.engine = "compile"  # not checked by the constructor: set afterwards, as `memnet evaluate --engine` does
    with pytest.raises(ValueError, match=r"engine must be one of \['eager', 'fused', 'compiled'\], got 'compile'"):
        net(torch.randn(2, 3, 9))


def test_a_compile_backend_set_on_a_built_model_runs_every_graph_from_then_on():
    ran = []

    def recording(name):
        def backend(graph_module, example_inputs):
            def run(*args):
                ran.append(name)
                return graph_module.forward(*args)
            return run
        return backend

    torch._dynamo.reset()
    net = _ntm(engine="compiled", compile_backend=recording("a"), compile_mode=None)
    net(torch.randn(2, 4, 9))  # the first step, then 3 one at a time: the one-step graph
    assert ran == ["a"] * 3
    ran.clear()
    net.compile_backend = recording("b")
    net(torch.randn(2, 6, 9))  # the first step, 4 in one call, then 1: both graphs of the new backend
    assert ran == ["b", "b"]
