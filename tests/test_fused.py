"""The fused NTM operations equal the reference functions, values and gradients."""

from __future__ import annotations

import pytest
import torch

from memnet import addressing, allocation, fused
from memnet import memory as mem


def _reference_address(memory, prev_weights, keys, strengths, gates, shift_weights, gammas):
    content = addressing.content_weights(memory, keys, strengths)
    gated = addressing.interpolate(content, prev_weights, gates)
    return addressing.sharpen(addressing.shift(gated, shift_weights), gammas)


def _address_inputs(b, h, n, w, s, *, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(b, n, w, generator=g, dtype=dtype)
    prev = torch.softmax(torch.randn(b, h, n, generator=g, dtype=dtype) * 3, -1)
    keys = torch.randn(b, h, w, generator=g, dtype=dtype)
    strengths = torch.rand(b, h, generator=g, dtype=dtype) * 5
    gates = torch.rand(b, h, generator=g, dtype=dtype)
    shifts = torch.softmax(torch.randn(b, h, s, generator=g, dtype=dtype), -1)
    gammas = 1 + torch.rand(b, h, generator=g, dtype=dtype) * 3
    return [t.requires_grad_() for t in (memory, prev, keys, strengths, gates, shifts, gammas)]


def _write_inputs(b, h, n, w, *, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(b, n, w, generator=g, dtype=dtype)
    weights = torch.softmax(torch.randn(b, h, n, generator=g, dtype=dtype), -1)
    erase = torch.rand(b, h, w, generator=g, dtype=dtype)
    add = torch.randn(b, h, w, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (memory, weights, erase, add)]


def _values_and_grads(fn, inputs, seed=1):
    out = fn(*inputs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, upstream)
    return out, grads


@pytest.mark.parametrize("b,h,n,w,s", [(3, 1, 7, 5, 3), (1, 2, 11, 4, 5), (2, 4, 6, 3, 1), (2, 3, 5, 2, 9)])
def test_address_equals_reference_values_and_grads(b, h, n, w, s):
    inputs = _address_inputs(b, h, n, w, s)
    expected, expected_grads = _values_and_grads(_reference_address, inputs)
    got, got_grads = _values_and_grads(fused.address, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("b,h,n,w", [(3, 1, 7, 5), (2, 3, 6, 4), (1, 2, 5, 2)])
def test_write_equals_reference_values_and_grads(b, h, n, w):
    inputs = _write_inputs(b, h, n, w)
    expected, expected_grads = _values_and_grads(mem.write, inputs)
    got, got_grads = _values_and_grads(fused.write, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("h,s", [(1, 3), (3, 5)])
def test_address_gradcheck(h, s):
    assert torch.autograd.gradcheck(fused.address, _address_inputs(2, h, 6, 4, s, seed=3))


@pytest.mark.parametrize("h", [1, 3])
def test_write_gradcheck(h):
    assert torch.autograd.gradcheck(fused.write, _write_inputs(2, h, 5, 3, seed=4))


def test_address_of_an_all_but_zero_weighting_has_finite_grads():
    inputs = _address_inputs(2, 1, 6, 4, 3, seed=5)
    with torch.no_grad():
        inputs[1].zero_()  # previous weighting 0, gate 0: the shifted weighting is all zero
        inputs[4].zero_()
    expected, expected_grads = _values_and_grads(_reference_address, inputs)
    got, got_grads = _values_and_grads(fused.address, inputs)
    torch.testing.assert_close(got, expected)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        assert torch.isfinite(got_grad).all()
        torch.testing.assert_close(got_grad, expected_grad)


def test_address_rejects_an_even_shift_window():
    inputs = _address_inputs(2, 1, 6, 4, 3)
    inputs[5] = torch.full((2, 1, 4), 0.25, dtype=torch.float64)
    with pytest.raises(ValueError, match="shift window S must be odd"):
        fused.address(*inputs)


@pytest.mark.parametrize("b,h,n,w", [(3, 1, 7, 5), (2, 4, 6, 3)])
def test_content_weights_equal_reference_and_gradcheck(b, h, n, w):
    memory, _, keys, strengths, *_ = _address_inputs(b, h, n, w, 3, seed=6)
    inputs = [memory, keys, strengths]
    expected, expected_grads = _values_and_grads(addressing.content_weights, inputs)
    got, got_grads = _values_and_grads(fused.content_weights, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-10)
    assert torch.autograd.gradcheck(fused.content_weights, inputs)


def _usage(b, n, seed, dtype=torch.float64):
    usage = torch.rand(b, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    usage[0, :2] = 0.0  # ties at zero, as at the start of an episode
    return usage.requires_grad_()


@pytest.mark.parametrize("b,n", [(3, 7), (1, 5), (2, 16)])
def test_allocation_equals_reference_and_gradcheck(b, n):
    inputs = [_usage(b, n, seed=7)]
    expected, expected_grads = _values_and_grads(allocation.allocation_weights, inputs)
    got, got_grads = _values_and_grads(fused.allocation_weights, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grads[0], expected_grads[0], rtol=0, atol=1e-10)
    # Distinct usages: finite differences must not reorder the sort.
    distinct = torch.randperm(n, generator=torch.Generator().manual_seed(8)).double() / n + 0.02
    assert torch.autograd.gradcheck(fused.allocation_weights, [distinct.expand(b, n).clone().requires_grad_()])



@pytest.mark.parametrize("engine", [allocation.allocation_weights, fused.allocation_weights], ids=["eager", "fused"])
@pytest.mark.parametrize("free", ["all", "one"])
def test_allocation_gradient_with_free_slots_is_float32_accurate(engine, free):
    # A free slot (usage 0, lifted to 1e-6; every slot at an episode's start) sorts first with a ≈ 1:
    # its gradient Σ_{j>k} ∂L/∂a_j a_j / u_k must not be taken as a difference cancelling a_k's term
    # (the fused backward's was up to 0.04 off here in float32, against the float64 gradient).
    g = torch.Generator().manual_seed(4)
    usage = torch.zeros(4, 8, dtype=torch.float64)
    if free == "one":
        usage = 0.5 + 0.5 * torch.rand(4, 8, generator=g, dtype=torch.float64)
        usage[:, 3] = 0.0
    upstream = torch.randn(4, 8, generator=g, dtype=torch.float64)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        leaf = usage.to(dtype).detach().requires_grad_()
        (engine(leaf) * upstream.to(dtype)).sum().backward()
        grads[dtype] = leaf.grad.double()
    torch.testing.assert_close(grads[torch.float32], grads[torch.float64], rtol=0, atol=2e-6)

@pytest.mark.parametrize("b,n", [(3, 7), (1, 4)])
def test_link_update_equals_reference_and_gradcheck(b, n):
    g = torch.Generator().manual_seed(9)
    link = torch.rand(b, n, n, generator=g, dtype=torch.float64) / n
    precedence = torch.softmax(torch.randn(b, n, generator=g, dtype=torch.float64), -1) * 0.9
    write = torch.softmax(torch.randn(b, n, generator=g, dtype=torch.float64), -1) * 0.8
    inputs = [t.requires_grad_() for t in (link, precedence, write)]
    expected, expected_grads = _values_and_grads(allocation.update_link, inputs)
    got, got_grads = _values_and_grads(fused.update_link, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-10)
    assert torch.autograd.gradcheck(fused.update_link, inputs)


def _link_inputs(b, n, seed=9):
    g = torch.Generator().manual_seed(seed)
    link = torch.rand(b, n, n, generator=g, dtype=torch.float64) / n
    precedence = torch.softmax(torch.randn(b, n, generator=g, dtype=torch.float64), -1) * 0.9
    write = torch.softmax(torch.randn(b, n, generator=g, dtype=torch.float64), -1) * 0.8
    return [t.requires_grad_() for t in (link, precedence, write)]


@pytest.mark.parametrize("name,function,inputs", [
    ("address", fused.address, lambda: _address_inputs(2, 2, 6, 4, 3)),
    ("content_weights", fused.content_weights, lambda: [_address_inputs(2, 2, 6, 4, 3)[i] for i in (0, 2, 3)]),
    ("write", fused.write, lambda: _write_inputs(2, 2, 6, 4)),
    ("write", fused.write, lambda: _write_inputs(2, 1, 6, 4)),
    ("allocation_weights", fused.allocation_weights, lambda: [_usage(2, 6, seed=7)]),
    ("update_link", fused.update_link, lambda: _link_inputs(2, 5)),
])
def test_a_second_derivative_through_a_fused_operation_raises_rather_than_being_wrong(name, function, inputs):
    """The hand-written backward passes are exact to first order only: a gradient penalty
    (``create_graph=True``) through them would miss every term through what the forward saved."""
    inputs = inputs()
    out = function(*inputs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    _, expected = _values_and_grads(function, inputs)
    grads = torch.autograd.grad(out, inputs, upstream, create_graph=True)
    for got, want in zip(grads, expected):  # the first derivatives are those of an ordinary backward
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    penalty = sum((grad**2).sum() for grad in grads)
    with pytest.raises(RuntimeError, match=rf"memnet.fused.{name} has no second derivative"):
        torch.autograd.grad(penalty, inputs, allow_unused=True)


# Each a shape that broadcast silently to a result of the right size, or failed inside torch with a message
# naming no argument; the fused operations name it as the reference functions do. Sizes B, H, N, W, S = 3, 4, 7, 5, 3.
B, H, N, W, S = 3, 4, 7, 5, 3


def _address_with(index, bad):
    inputs = [t.detach() for t in _address_inputs(B, H, N, W, S)]
    inputs[index] = bad
    return fused.address(*inputs)


def _content_with(index, bad):
    memory, _, keys, strengths, *_ = (t.detach() for t in _address_inputs(B, H, N, W, S))
    inputs = [memory, keys, strengths]
    inputs[index] = bad
    return fused.content_weights(*inputs)


def _write_with(index, bad):
    inputs = [t.detach() for t in _write_inputs(B, H, N, W)]
    inputs[index] = bad
    return fused.write(*inputs)


def _link_with(index, bad):
    inputs = [t.detach() for t in _link_inputs(B, N)]
    inputs[index] = bad
    return fused.update_link(*inputs)


_double = {"dtype": torch.float64}
BAD_SHAPES = {
    "address: memory of one episode for a batch": (
        lambda: _address_with(0, torch.randn(1, N, W, **_double)),
        r"keys: expected \(B, H, W\) = \(1, H, 5\) matching memory \(B, N, W\), got \(3, 4, 5\)"),
    "address: previous weights of one head": (
        lambda: _address_with(1, torch.softmax(torch.randn(B, 1, N, **_double), -1)),
        (r"prev_weights: expected \(B, H, N\) = \(3, 4, 7\) matching keys \(B, H, W\) and memory \(B, N, W\), "
         r"got \(3, 1, 7\)")),
    "address: one strength for all heads": (
        lambda: _address_with(3, torch.ones(B, 1, **_double)),
        r"strengths: expected \(B, H\) = \(3, 4\) matching keys \(B, H, W\), got \(3, 1\)"),
    "address: one gate for all heads": (
        lambda: _address_with(4, torch.rand(B, 1, **_double)),
        r"gates: expected \(B, H\) = \(3, 4\) matching keys \(B, H, W\), got \(3, 1\)"),
    "address: one shift distribution for all heads": (
        lambda: _address_with(5, torch.softmax(torch.randn(B, 1, S, **_double), -1)),
        r"shift_weights: expected \(B, H, S\) = \(3, 4, S\) matching prev_weights \(B, H, N\), got \(3, 1, 3\)"),
    "address: gammas of one episode for a batch": (
        lambda: _address_with(6, 1 + torch.rand(1, H, **_double)),
        r"gammas: expected \(B, H\) = \(3, 4\) matching keys \(B, H, W\), got \(1, 4\)"),
    "content_weights: one strength for all heads": (
        lambda: _content_with(2, torch.ones(B, 1, **_double)),
        r"strengths: expected \(B, H\) = \(3, 4\) matching keys \(B, H, W\), got \(3, 1\)"),
    "content_weights: memory of one episode for a batch": (
        lambda: _content_with(0, torch.randn(1, N, W, **_double)),
        r"keys: expected \(B, H, W\) = \(1, H, 5\) matching memory \(B, N, W\), got \(3, 4, 5\)"),
    "write: memory of one episode for a batch": (
        lambda: _write_with(0, torch.randn(1, N, W, **_double)),
        r"weights: expected \(B, H, N\) = \(1, H, 7\) matching memory \(B, N, W\), got \(3, 4, 7\)"),
    "write: one erase vector for all heads": (
        lambda: _write_with(2, torch.rand(B, 1, W, **_double)),
        (r"erase: expected \(B, H, W\) = \(3, 4, 5\) matching weights \(B, H, N\) and memory \(B, N, W\), "
         r"got \(3, 1, 5\)")),
    "write: one erase value per head": (
        lambda: _write_with(2, torch.rand(B, H, 1, **_double)),
        r"erase: expected \(B, H, W\) = \(3, 4, 5\) .*, got \(3, 4, 1\)"),
    "write: add vectors one too wide": (
        lambda: _write_with(3, torch.randn(B, H, W + 1, **_double)),
        r"add: expected \(B, H, W\) = \(3, 4, 5\) .*, got \(3, 4, 6\)"),
    "allocation_weights: usage without a batch": (
        lambda: fused.allocation_weights(torch.rand(N, **_double)),
        r"usage must have shape \(B, N\), got \(7,\)"),
    "update_link: link of one episode for a batch": (
        lambda: _link_with(0, torch.rand(1, N, N, **_double) / N),
        r"prev_link must have shape \(B, N, N\) = \(3, 7, 7\), got \(1, 7, 7\)"),
    "update_link: precedence of one episode for a batch": (
        lambda: _link_with(1, torch.softmax(torch.randn(1, N, **_double), -1)),
        r"prev_precedence \(1, 7\) and write_weights \(3, 7\) must both have shape \(B, N\)"),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_a_wrong_shape_is_named_not_broadcast(case):
    make, match = BAD_SHAPES[case]
    with pytest.raises(ValueError, match=match):
        make()


def test_the_shape_checks_trace_as_guards_alone_at_any_sizes():
    """``torch.compile`` traces the entry checks as guards on sizes: one graph per call (no break), the same
    graph as without them (no comparison node at the dynamic sizes of a second shape); a wrong shape is still
    named. (``dynamic=True`` from the first call is not tried: dynamo fails on these autograd Functions then,
    checks or not.)"""
    import operator

    def step(memory, prev, keys, strengths, gates, shifts, gammas, erase, add, usage, link, precedence):
        weights = fused.address(memory, prev, keys, strengths, gates, shifts, gammas)
        memory = fused.write(memory, weights[:, 1:], erase, add)
        allocation_weights = fused.allocation_weights(usage)
        return memory, fused.content_weights(memory, keys, strengths), fused.update_link(link, precedence,
                                                                                        allocation_weights)

    def arguments(batch, slots, heads=3):
        g = torch.Generator().manual_seed(batch)
        distribution = lambda *shape: torch.softmax(torch.randn(*shape, generator=g), dim=-1)
        return [torch.randn(batch, slots, W, generator=g), distribution(batch, heads, slots),
                torch.randn(batch, heads, W, generator=g), torch.rand(batch, heads, generator=g),
                torch.rand(batch, heads, generator=g), distribution(batch, heads, S),
                1 + torch.rand(batch, heads, generator=g), torch.rand(batch, heads - 1, W, generator=g),
                torch.randn(batch, heads - 1, W, generator=g), torch.rand(batch, slots, generator=g),
                torch.rand(batch, slots, slots, generator=g) / slots, distribution(batch, slots)]

    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    for batch, slots in ((B, N), (B + 1, N + 2)):  # the second shape recompiles once, with dynamic sizes
        inputs = [t.requires_grad_() for t in arguments(batch, slots)]
        for got, expected in zip(compiled(*inputs), step(*inputs)):
            torch.testing.assert_close(got, expected)
        sum(out.sum() for out in compiled(*inputs)).backward()
    assert len(graphs) == 2
    comparisons = {operator.eq, operator.ne, operator.not_}
    assert not [node for graph in graphs for node in graph.graph.nodes
                if node.op == "call_function" and node.target in comparisons]
    bad = arguments(B, N)
    bad[3] = torch.rand(B, 1)  # one strength for every head
    with pytest.raises(ValueError, match=r"strengths: expected \(B, H\) = \(3, 3\) matching keys"):
        torch.compile(step, backend="eager")(*bad)
