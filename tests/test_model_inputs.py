"""The public ``forward`` of the memory models refuses what it cannot run, in one line naming the model."""

from __future__ import annotations

import pytest
import torch

from memnet.models.dnc import DNC
from memnet.models.ntm import NTM


def _models():
    return [NTM(5, 3, memory_size=7, word_size=4), DNC(5, 3, memory_size=7, word_size=4)]


@pytest.mark.parametrize("net", _models(), ids=["ntm", "dnc"])
def test_wrong_input_width_is_named(net):
    name = type(net).__name__
    with pytest.raises(ValueError, match=rf"{name}: inputs must have shape \(B, T, D_in=5\), got \(2, 3, 6\)"):
        net(torch.zeros(2, 3, 6))


@pytest.mark.parametrize("net", _models(), ids=["ntm", "dnc"])
def test_sequence_of_length_zero_is_refused(net):
    with pytest.raises(ValueError, match=rf"{type(net).__name__}: inputs of shape \(2, 0, 5\) are empty"):
        net(torch.zeros(2, 0, 5))


@pytest.mark.parametrize("net", _models(), ids=["ntm", "dnc"])
def test_memory_size_zero_is_refused_not_replaced_by_the_trained_size(net):
    with pytest.raises(ValueError, match=rf"{type(net).__name__}: memory_size must be a positive integer, got 0"):
        net(torch.zeros(2, 3, 5), memory_size=0)
    with pytest.raises(ValueError, match="memory_size must be a positive integer, got 0"):
        net.initial_state(2, memory_size=0)
    assert net(torch.zeros(2, 3, 5), memory_size=9, return_trace=True)[1].read_weights.shape[-1] == 9
