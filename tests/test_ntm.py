"""The NTM: shapes, step/forward equivalence, batch independence, seeding, memory resizing."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from memnet.controllers import FeedForwardController, LSTMController
from memnet.heads import NTMHeads
from memnet.models.ntm import NTM


def make(input_size=5, output_size=4, **kwargs):
    kwargs.setdefault("controller", partial(LSTMController, hidden_size=11))
    return NTM(input_size, output_size, **kwargs)


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
