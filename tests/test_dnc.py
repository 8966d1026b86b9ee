"""Tests of memnet.models.dnc: interface, step/forward, batching, options, trace, bad input.

Sizes all differ (b=3, t=6, d_in=5, d_out=4, n=7, w=9, r=2).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from memnet import allocation
from memnet.controllers import FeedForwardController, LSTMController
from memnet.models.dnc import DNC, DNCInterface, DNCState, link_state_bytes

B, T, D_IN, D_OUT, N, W, R = 3, 6, 5, 4, 7, 9, 2


def make(seed=0, dtype=torch.float64, **kwargs) -> DNC:
    torch.manual_seed(seed)
    options = {"memory_size": N, "word_size": W, "num_reads": R,
               "controller": partial(LSTMController, hidden_size=11)}
    options.update(kwargs)
    return DNC(D_IN, D_OUT, **options).to(dtype)


def inputs(seed=1, dtype=torch.float64, batch=B, steps=T) -> torch.Tensor:
    return torch.rand(batch, steps, D_IN, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_interface_fields_and_squashing():
    interface = DNCInterface(input_size=13, num_reads=R, word_size=W).double()
    xi = interface(10 * torch.randn(B, 13, dtype=torch.float64))
    assert xi.read_keys.shape == (B, R, W) and xi.write_key.shape == (B, 1, W)
    assert xi.read_strengths.shape == (B, R) and xi.read_strengths.min() >= 1
    assert xi.write_strength.shape == (B, 1) and xi.write_strength.min() >= 1
    assert xi.erase.shape == (B, 1, W) and 0 <= xi.erase.min() and xi.erase.max() <= 1
    assert xi.write_vector.shape == (B, 1, W) and xi.write_vector.abs().max() > 1  # not squashed
    for gate in (xi.free_gates, xi.allocation_gate, xi.write_gate):
        assert 0 <= gate.min() and gate.max() <= 1
    assert xi.free_gates.shape == (B, R) and xi.allocation_gate.shape == (B,) and xi.write_gate.shape == (B,)
    assert xi.read_modes.shape == (B, R, 3)
    torch.testing.assert_close(xi.read_modes.sum(-1), torch.ones(B, R, dtype=torch.float64))
    # Fields 2W + W + ... : R·W + R + W + 1 + W + W + 1 + R + 1 + 3R
    assert interface.project.out_features == R * W + R + 3 * W + 3 + R + 3 * R


def test_interface_switches_drop_fields():
    xi = DNCInterface(input_size=13, num_reads=R, word_size=W, use_allocation=False, use_links=False)(
        torch.randn(B, 13)
    )
    assert xi.free_gates is None and xi.allocation_gate is None and xi.read_modes is None


def test_forward_shapes_and_state():
    model = make()
    logits = model(inputs())
    assert logits.shape == (B, T, D_OUT) and torch.isfinite(logits).all()
    state = model.initial_state(B)
    assert isinstance(state, DNCState)
    assert state.memory.shape == (B, N, W) and state.link.shape == (B, N, N)
    assert state.read_weights.shape == (B, R, N) and state.read_vectors.shape == (B, R, W)


def test_forward_equals_step_loop():
    model = make()
    x = inputs()
    state = model.initial_state(B)
    stepped = []
    for t in range(T):
        y, state = model.step(x[:, t], state)
        stepped.append(y)
    torch.testing.assert_close(model(x), torch.stack(stepped, 1))


@pytest.mark.parametrize("options", [{}, {"link_sparsity": 3}, {"use_allocation": False, "use_links": False}])
def test_batch_equals_single_runs(options):
    model = make(**options)
    x = inputs()
    batched = model(x)
    for b in range(B):
        torch.testing.assert_close(model(x[b : b + 1]), batched[b : b + 1])


def test_state_invariants_over_a_run():
    model = make()
    state = model.initial_state(B)
    x = inputs(steps=12)
    for t in range(12):
        _, state = model.step(x[:, t], state)
        assert 0 <= state.usage.min() and state.usage.max() <= 1
        assert torch.all(state.write_weights.sum(-1) <= 1 + 1e-9)
        assert torch.all(state.precedence.sum(-1) <= 1 + 1e-9)
        assert state.read_weights.min() >= 0 and torch.all(state.read_weights.sum(-1) <= 1 + 1e-9)
        assert torch.all(torch.diagonal(state.link, dim1=-2, dim2=-1) == 0)
        assert torch.all(state.link.sum(-1) <= 1 + 1e-9) and torch.all(state.link.sum(-2) <= 1 + 1e-9)


def test_sparse_equals_dense_at_k_equal_n():
    dense = make()
    sparse = make(link_sparsity=N)
    x = inputs()
    logits_dense, trace_dense = dense(x, return_trace=True)
    logits_sparse, trace_sparse = sparse(x, return_trace=True)
    torch.testing.assert_close(logits_sparse, logits_dense)
    torch.testing.assert_close(trace_sparse.link, trace_dense.link)


def test_sparse_link_changes_results_below_n_and_saves_memory():
    x = inputs(steps=10)
    assert not torch.allclose(make(link_sparsity=2)(x), make()(x))
    dense_bytes = link_state_bytes(make(dtype=torch.float32).initial_state(1, memory_size=512))
    sparse_model = make(dtype=torch.float32, link_sparsity=4)
    sparse_bytes = link_state_bytes(sparse_model.initial_state(1, memory_size=512))
    assert dense_bytes == 512 * 512 * 4 and sparse_bytes == 512 * 4 * (4 + 8)


def test_ablation_switches_change_the_model():
    x = inputs()
    full = make()(x)
    no_alloc = make(use_allocation=False)
    no_links = make(use_links=False)
    assert not torch.allclose(no_alloc(x), full) and not torch.allclose(no_links(x), full)
    _, trace = no_links(x, return_trace=True)
    assert torch.all(trace.link == 0)
    assert torch.all(trace.read_modes[..., 1] == 1)
    _, trace = no_alloc(x, return_trace=True)
    assert torch.all(trace.usage == 0) and torch.all(trace.allocation_gate == 0)
    n_full = sum(p.numel() for p in make().parameters())
    n_small = sum(p.numel() for p in make(use_allocation=False, use_links=False).parameters())
    assert n_full - n_small == (R + 1 + 3 * R) * (11 + 1)  # dropped interface rows (weights + bias)


def test_links_off_state_holds_no_link_matrix():
    """``use_links=False`` drops the link matrix (module docstring): no N × N zeros carried in the state."""
    model = make(use_links=False)
    state = model.initial_state(2, memory_size=256)
    assert state.link is None and link_state_bytes(state) == 0
    assert link_state_bytes(make().initial_state(2, memory_size=256)) == 2 * 256 * 256 * 8
    logits, trace = model(inputs(), memory_size=11, return_trace=True)
    assert trace.link.shape == (B, T, 11, 11) and torch.all(trace.link == 0)
    torch.testing.assert_close(logits, make(use_links=False, engine="eager")(inputs(), memory_size=11))


def test_memory_size_changes_at_evaluation():
    model = make()
    x = inputs()
    logits, trace = model(x, memory_size=19, return_trace=True)
    assert logits.shape == (B, T, D_OUT)
    assert trace.read_weights.shape == (B, T, R, 19) and trace.link.shape == (B, T, 19, 19)


def test_trace_shapes_for_memory_access_plot(tmp_path):
    from memnet.plots import plot_dnc_memory, plot_memory_access

    model = make(link_sparsity=3)
    _, trace = model(inputs(), return_trace=True)
    assert trace.read_weights.shape == (B, T, R, N)
    assert trace.write_weights.shape == (B, T, 1, N)
    assert trace.usage.shape == (B, T, N) and trace.link.shape == (B, T, N, N)
    assert trace.read_modes.shape == (B, T, R, 3)
    assert trace.allocation_gate.shape == trace.write_gate.shape == (B, T)
    x = inputs()[0]
    path = plot_memory_access(tmp_path / "access.png", inputs=x, targets=x[:, :D_OUT], outputs=x[:, :D_OUT],
                              read_weights=trace.read_weights[0], write_weights=trace.write_weights[0])
    assert path.stat().st_size > 0
    path = plot_dnc_memory(tmp_path / "dnc.png", usage=trace.usage[0], link=trace.link[0, -1],
                           read_modes=trace.read_modes[0])
    assert path.stat().st_size > 0


def test_feed_forward_controller_works():
    model = make(controller=partial(FeedForwardController, hidden_size=13))
    assert model(inputs()).shape == (B, T, D_OUT)


def test_no_nan_gradients_with_zero_memory_and_tied_usage():
    model = make()
    state = model.initial_state(B)
    state = state._replace(memory=torch.zeros(B, N, W, dtype=torch.float64))  # zero rows, all usage tied at 0
    logits = model(inputs(), state=state)
    logits.sum().backward()
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name


# -- one memory step against the paper's equations (Graves et al. 2016, Methods), in NumPy float64 --


def _paper_step(xi, prev, layout, num_reads, word_size):
    """One example's memory step from its raw interface vector ξ_t, written independently of memnet.

    The guards memnet shares with deepmind/dnc are kept, so that the two agree to rounding: usage
    lifted to ε + (1 − ε) u before allocation, ties sorted by slot index, ε in the cosine's norms.
    """
    from memnet.addressing import NORM_EPS
    from memnet.allocation import USAGE_EPS

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def oneplus(x):
        return 1 + np.log1p(np.exp(x))

    def content(memory, key, strength):  # C(M, k, β) = softmax_i(β D(k, M[i])), D the cosine
        norms = np.sqrt((memory**2).sum(-1) + NORM_EPS**2) * np.sqrt(key @ key + NORM_EPS**2)
        return softmax(strength * (memory @ key) / (norms + NORM_EPS))

    fields, start = {}, 0
    for name, size in layout:
        fields[name], start = xi[start:start + size], start + size
    read_keys = fields["read_keys"].reshape(num_reads, word_size)
    free, g_a, g_w = sigmoid(fields["free_gates"]), sigmoid(fields["allocation_gate"][0]), sigmoid(fields["write_gate"][0])
    modes = softmax(fields["read_modes"].reshape(num_reads, 3))  # π: backward, content, forward
    memory, usage, write, reads, precedence, link = (prev[k] for k in ("M", "u", "ww", "wr", "p", "L"))
    slots = len(usage)
    psi = np.prod([1 - free[r] * reads[r] for r in range(num_reads)], axis=0)  # ψ_t
    usage = (usage + write - usage * write) * psi  # u_t, from the previous write
    lifted = USAGE_EPS + (1 - USAGE_EPS) * usage
    alloc, product = np.zeros(slots), 1.0
    for j in sorted(range(slots), key=lambda j: (lifted[j], j)):  # the free list φ_t
        alloc[j], product = (1 - lifted[j]) * product, product * lifted[j]
    write_content = content(memory, fields["write_key"], oneplus(fields["write_strength"][0]))  # on M_{t−1}
    write = g_w * (g_a * alloc + (1 - g_a) * write_content)
    memory = memory * (1 - np.outer(write, sigmoid(fields["erase"]))) + np.outer(write, fields["write_vector"])
    new_link = np.array([[0.0 if i == j else (1 - write[i] - write[j]) * link[i, j] + write[i] * precedence[j]
                          for j in range(slots)] for i in range(slots)])
    precedence = (1 - write.sum()) * precedence + write
    new_reads = np.stack([
        modes[r, 0] * new_link.T @ reads[r]  # b_t = L_tᵀ w^r_{t−1}
        + modes[r, 1] * content(memory, read_keys[r], oneplus(fields["read_strengths"][r]))  # on M_t
        + modes[r, 2] * new_link @ reads[r]  # f_t = L_t w^r_{t−1}
        for r in range(num_reads)])
    return {"M": memory, "u": usage, "ww": write, "wr": new_reads, "p": precedence, "L": new_link,
            "r": new_reads @ memory, "a": alloc}


@pytest.mark.parametrize("engine", ["eager", "fused"])
def test_memory_steps_equal_the_papers_equations(engine):
    """Three steps of usage, allocation, write, memory, links, precedence, read weightings and vectors."""
    batch, slots, width, reads = 2, 5, 4, 2
    model = make(memory_size=slots, word_size=width, num_reads=reads, engine=engine)
    g = torch.Generator().manual_seed(11)
    rand = partial(torch.rand, generator=g, dtype=torch.float64)

    def spread(*shape, total):  # weightings summing to total
        return torch.softmax(5 * torch.randn(*shape, generator=g, dtype=torch.float64), -1) * total

    state = DNCState(None, torch.randn(batch, slots, width, generator=g, dtype=torch.float64),
                     torch.zeros(batch, reads, width, dtype=torch.float64), spread(batch, reads, slots, total=0.9),
                     spread(batch, slots, total=0.8), rand(batch, slots), spread(batch, slots, total=0.7),
                     rand(batch, slots, slots) / slots * (1 - torch.eye(slots, dtype=torch.float64)))
    state.usage[0, 1:3] = state.write_weights[0, 1:3] = 0.0  # two free slots tied, as early in an episode
    names = {"M": "memory", "u": "usage", "ww": "write_weights", "wr": "read_weights", "p": "precedence", "L": "link"}
    paper = [{key: getattr(state, name)[b].numpy() for key, name in names.items()} for b in range(batch)]
    for _ in range(3):
        hidden = torch.randn(batch, model.controller.output_size, generator=g, dtype=torch.float64)
        with torch.no_grad():
            read_vectors, state, _ = model.access(hidden, None, state, fused=engine == "fused")
            xi = model.interface.project(hidden).numpy()
            got = {"M": state.memory, "u": state.usage, "ww": state.write_weights, "wr": state.read_weights,
                   "p": state.precedence, "L": state.link, "r": read_vectors,
                   "a": allocation.allocation_weights(state.usage)}
        for b in range(batch):
            paper[b] = _paper_step(xi[b], paper[b], list(model.interface.sizes.items()), reads, width)
            for key, value in got.items():
                np.testing.assert_allclose(value[b].numpy(), paper[b][key], rtol=0, atol=1e-12, err_msg=key)


def test_gradcheck_of_a_short_run():
    model = make(link_sparsity=4)
    x = inputs(batch=2, steps=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: model(x), (x,), fast_mode=True)


def test_same_seed_same_numbers():
    torch.testing.assert_close(make(seed=5)(inputs()), make(seed=5)(inputs()))


@pytest.mark.slow
def test_learns_to_recall_a_bit():
    """A few Adam steps on a tiny recall task lower the loss (the model can learn at all)."""
    model = make(dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        bits = torch.randint(0, 2, (16, 3, D_OUT), generator=g).float()
        x = torch.zeros(16, 6, D_IN)
        x[:, :3, :D_OUT] = bits
        x[:, 3, -1] = 1.0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 3:], bits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("num_reads", [0, -1, 1.5])
def test_bad_read_head_count(num_reads):
    with pytest.raises(ValueError, match="num_reads must be a positive integer"):
        make(num_reads=num_reads)


def test_bad_write_head_count():
    with pytest.raises(ValueError, match="num_writes must be 1"):
        make(num_writes=2)


@pytest.mark.parametrize("k", [0, N + 1])
def test_bad_sparsity(k):
    with pytest.raises(ValueError, match=r"link_sparsity K .* \[1, memory_size=7\]"):
        make(link_sparsity=k)


def test_sparsity_without_links_is_refused():
    """K entries of a link matrix that ``use_links=False`` drops: refused, not silently ignored."""
    with pytest.raises(ValueError, match=r"link_sparsity=3 needs use_links=True"):
        make(use_links=False, link_sparsity=3)


def test_sparsity_larger_than_evaluation_memory():
    model = make(link_sparsity=5)
    with pytest.raises(ValueError, match=r"link_sparsity K .* memory_size=4"):
        model(inputs(), memory_size=4)


def test_bad_input_width():
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, T, D_in=5\)"):
        make()(torch.zeros(B, T, D_IN + 1, dtype=torch.float64))


def test_link_state_bytes_table():
    """The memory of the link state at N = 128, 512, 1024 with K = 8 (float32, int64 indices)."""
    for slots in (128, 512, 1024):
        dense = link_state_bytes(make(dtype=torch.float32).initial_state(1, memory_size=slots))
        sparse_model = make(dtype=torch.float32, memory_size=slots, link_sparsity=8)
        sparse = link_state_bytes(sparse_model.initial_state(1))
        assert dense == slots * slots * 4
        assert sparse == slots * 8 * 12
        assert dense / sparse == pytest.approx(slots / 24)


def test_memory_access_callback_draws_dnc_pictures(tmp_path):
    from memnet.callbacks import draw_memory_access
    from memnet.lightning import SequenceModule

    module = SequenceModule(make(dtype=torch.float32))
    x = inputs(dtype=torch.float32)
    batch = {"inputs": x, "targets": (x[..., :D_OUT] > 0.5).float(), "mask": torch.ones(B, T)}
    path = draw_memory_access(module, batch, tmp_path / "epoch_0000.png")
    assert path == tmp_path / "epoch_0000.png" and path.stat().st_size > 0
    assert (tmp_path / "epoch_0000_dnc.png").stat().st_size > 0


def test_memory_access_callback_skips_networks_without_a_trace_but_not_their_errors(tmp_path):
    from memnet.callbacks import draw_memory_access
    from memnet.lightning import SequenceModule

    x = inputs(dtype=torch.float32)
    batch = {"inputs": x, "targets": (x[..., :D_OUT] > 0.5).float(), "mask": torch.ones(B, T)}

    class NoTrace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Linear(D_IN, D_OUT)

        def forward(self, inputs):
            return self.out(inputs)

    assert draw_memory_access(SequenceModule(NoTrace()), batch, tmp_path / "none.png") is None
    dnc = make(dtype=torch.float32)
    dnc._trace_step = lambda *args, **kwargs: (_ for _ in ()).throw(TypeError("a bug inside the network"))
    with pytest.raises(TypeError, match="a bug inside the network"):  # was swallowed: no figure, no word
        draw_memory_access(SequenceModule(dnc), batch, tmp_path / "dnc.png")
