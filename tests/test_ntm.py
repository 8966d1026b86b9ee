"""The NTM: one step against the paper's equations in NumPy, shapes, step/forward equivalence, batch
independence, seeding, memory resizing."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from memnet.addressing import NORM_EPS
from memnet.controllers import FeedForwardController, LSTMController
from memnet.heads import NTMHeads
from memnet.models.ntm import NTM


def make(input_size=5, output_size=4, **kwargs):
    kwargs.setdefault("controller", partial(LSTMController, hidden_size=11))
    return NTM(input_size, output_size, **kwargs)


def _paper_step(memory, prev_weights, params, reads, writes, shift_range, eps):
    """One NTM step of one episode from Graves et al. 2014 §3, in NumPy float64, loops over heads.

    ``params``: one row of the heads' linear layer, per head [k (W), β, g, s (S), γ], then per write
    head [e (W), a (W)]. Cosine K(u, v) = u·v / (|u| |v| + eps), |x| = sqrt(x·x + eps²) (eps 0: the
    paper's). All heads address M_{t−1}; all erases (eq. 3), then all adds (eq. 4); reads see M_t.
    """
    slots, width = memory.shape
    window = 2 * shift_range + 1
    softplus = lambda x: np.log1p(np.exp(x))
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    softmax = lambda x: np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    norm = lambda x: np.sqrt(x @ x + eps**2)
    weights = np.empty((reads + writes, slots))
    for h in range(reads + writes):
        p = params[h * (width + 3 + window) : (h + 1) * (width + 3 + window)]
        key, beta, gate = p[:width], softplus(p[width]), sigmoid(p[width + 1])
        shifts, gamma = softmax(p[width + 2 : width + 2 + window]), 1 + softplus(p[-1])
        cosine = np.array([key @ row / (norm(key) * norm(row) + eps) for row in memory])  # eq. 6
        gated = gate * softmax(beta * cosine) + (1 - gate) * prev_weights[h]  # eqs. 5, 7
        shifted = np.zeros(slots)  # eq. 8: w̃(i) = Σ_j w_g(j) s(i − j), s indexed by offset −S..S
        for i in range(slots):
            for j in range(slots):
                for offset in range(-shift_range, shift_range + 1):
                    if (i - j - offset) % slots == 0:
                        shifted[i] += gated[j] * shifts[offset + shift_range]
        weights[h] = shifted**gamma / (shifted**gamma).sum()  # eq. 9
    start = (reads + writes) * (width + 3 + window)
    erase = [sigmoid(params[start + 2 * width * h : start + 2 * width * h + width]) for h in range(writes)]
    add = [params[start + 2 * width * h + width : start + 2 * width * (h + 1)] for h in range(writes)]
    new_memory = memory.copy()
    for h in range(writes):
        new_memory = new_memory * (1 - np.outer(weights[reads + h], erase[h]))
    for h in range(writes):
        new_memory = new_memory + np.outer(weights[reads + h], add[h])
    return weights, new_memory, weights[:reads] @ new_memory


@pytest.mark.parametrize("fused", [False, True])
def test_one_step_equals_the_papers_equations_in_numpy(fused):
    """Head parameters (activations, layout), addressing, erase/add of two write heads and the reads
    of two read heads, against an independent float64 loop; and the shift's direction."""
    batch, slots, width, reads, writes = 2, 6, 4, 2, 2
    torch.manual_seed(0)
    ntm = make(memory_size=slots, word_size=width, num_reads=reads, num_writes=writes, shift_range=1).double()
    g = torch.Generator().manual_seed(1)
    hidden = 2 * torch.randn(batch, 11, dtype=torch.float64, generator=g)
    memory = torch.randn(batch, slots, width, dtype=torch.float64, generator=g)
    prev = torch.softmax(2 * torch.randn(batch, reads + writes, slots, dtype=torch.float64, generator=g), -1)
    state = ntm.initial_state(batch, dtype=torch.float64)._replace(memory=memory, weights=prev)
    with torch.no_grad():
        read_vectors, new_state, _ = ntm.access(hidden, state.controller, state, fused=fused)
        params = ntm.heads.project(hidden).numpy()
    for b in range(batch):
        for eps, atol in ((NORM_EPS, 1e-12), (0.0, 1e-6)):  # memnet's cosine ε; the paper's, ε's effect
            weights, new_memory, reads_want = _paper_step(memory[b].numpy(), prev[b].numpy(), params[b],
                                                          reads, writes, 1, eps)
            np.testing.assert_allclose(new_state.weights[b].numpy(), weights, rtol=0, atol=atol)
            np.testing.assert_allclose(new_state.memory[b].numpy(), new_memory, rtol=0, atol=atol)
            np.testing.assert_allclose(read_vectors[b].numpy(), reads_want, rtol=0, atol=atol)
    # gate 0, all shift mass on +1, γ large: every head's focus moves from slot i to slot i + 1 (mod N)
    with torch.no_grad():
        ntm.heads.project.weight.zero_()
        bias = ntm.heads.project.bias.view(-1)[: (reads + writes) * ntm.heads.address_width]
        bias.view(reads + writes, -1)[:, width:] = torch.tensor([0.0, -50, -50, -50, 50, 50])
        focus = torch.tensor([[2, 5, 0, 3]]).expand(batch, -1)
        one_hot = torch.nn.functional.one_hot(focus, slots).double()
        moved = ntm.heads(hidden, one_hot, memory, fused=fused).weights
    torch.testing.assert_close(moved.argmax(-1), (focus + 1) % slots)
    assert (moved.max(-1).values > 1 - 1e-9).all()


@pytest.mark.parametrize(
    "b, t, n, w, reads, writes",
    [(3, 6, 7, 5, 2, 1), (1, 1, 1, 1, 1, 1), (2, 4, 9, 3, 3, 2), (4, 2, 16, 8, 1, 3)],
)
def test_shapes_and_trace(b, t, n, w, reads, writes):
    torch.manual_seed(0)
    ntm = make(memory_size=n, word_size=w, num_reads=reads, num_writes=writes)
    logits, trace = ntm(torch.randn(b, t, 5), return_trace=True)
    assert logits.shape == (b, t, 4)
    assert trace.read_weights.shape == (b, t, reads, n)
    assert trace.write_weights.shape == (b, t, writes, n)
    torch.testing.assert_close(trace.read_weights.sum(-1), torch.ones(b, t, reads))
    assert (trace.write_weights >= 0).all()


def test_forward_equals_stepping_by_hand():
    torch.manual_seed(1)
    ntm = make(memory_size=7, word_size=5, num_reads=2, num_writes=2).double()
    inputs = torch.randn(3, 6, 5, dtype=torch.float64)
    state = ntm.initial_state(3)
    stepped = []
    for t in range(6):
        logits, state = ntm.step(inputs[:, t], state)
        stepped.append(logits)
    torch.testing.assert_close(ntm(inputs), torch.stack(stepped, 1))


def test_batch_equals_single_runs():
    torch.manual_seed(2)
    ntm = make(memory_size=7, word_size=5, num_reads=2).double()
    inputs = torch.randn(3, 6, 5, dtype=torch.float64)
    batched = ntm(inputs)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], ntm(inputs[i : i + 1]))


def test_same_seed_same_loss():
    def loss(seed):
        torch.manual_seed(seed)
        ntm = make()
        inputs = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(9))
        return ntm(inputs).pow(2).mean().item()

    assert loss(3) == loss(3)
    assert loss(3) != loss(4)


def test_memory_size_changes_at_evaluation_without_new_parameters():
    torch.manual_seed(0)
    ntm = make(memory_size=8)
    params = sum(p.numel() for p in ntm.parameters())
    assert params == sum(p.numel() for p in make(memory_size=512).parameters())
    logits, trace = ntm(torch.randn(2, 3, 5), memory_size=32, return_trace=True)
    assert trace.read_weights.shape[-1] == 32 and logits.shape == (2, 3, 4)


def test_feed_forward_controller_plugs_in():
    ntm = make(controller=partial(FeedForwardController, hidden_size=6))
    assert ntm(torch.randn(2, 3, 5)).shape == (2, 3, 4)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    ntm = make(memory_init="learned", learn_initial_state=True)
    ntm(torch.randn(2, 4, 5)).sum().backward()
    missing = [name for name, p in ntm.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_heads_weightings_are_distributions():
    heads = NTMHeads(input_size=6, num_reads=2, num_writes=3, word_size=5, shift_range=2)
    prev = torch.softmax(torch.randn(3, 5, 7), -1)
    out = heads(torch.randn(3, 6), prev, torch.randn(3, 7, 5))
    assert out.weights.shape == (3, 5, 7) and out.erase.shape == (3, 3, 5) and out.add.shape == (3, 3, 5)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, 5))
    assert ((out.erase >= 0) & (out.erase <= 1)).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [({"memory_size": 0}, "memory_size"), ({"num_reads": 0}, "num_reads"), ({"num_writes": -1}, "num_writes"),
     ({"word_size": 0}, "word_size"), ({"shift_range": -1}, "shift_range"), ({"memory_init": "zeros"}, "memory_init")],
)
def test_bad_sizes_fail_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make(**kwargs)


def test_bad_memory_size_at_call_fails():
    with pytest.raises(ValueError, match="memory_size"):
        make().initial_state(2, memory_size=-3)


def test_lstm_controller_rejects_dropout_out_of_range():
    with pytest.raises(ValueError, match="dropout"):
        LSTMController(5, hidden_size=4, num_layers=2, dropout=1.5)
