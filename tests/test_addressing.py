"""Contract tests of memnet.addressing against independent loop/NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memnet import addressing

B, H, N, W, S = 3, 4, 7, 5, 3  # all different, so a swapped axis cannot pass


def rand(*shape, dtype=torch.float64, generator=None):
    return torch.randn(*shape, dtype=dtype, generator=generator)


def distribution(*shape, dtype=torch.float64):
    return torch.softmax(torch.randn(*shape, dtype=dtype), dim=-1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_cosine_similarity_matches_numpy_loop():
    memory, keys = rand(B, N, W), rand(B, H, W)
    got = addressing.cosine_similarity(memory, keys)
    assert got.shape == (B, H, N)
    m, k = memory.numpy(), keys.numpy()
    want = np.empty((B, H, N))
    for b in range(B):
        for h in range(H):
            for n in range(N):
                want[b, h, n] = k[b, h] @ m[b, n] / (np.linalg.norm(k[b, h]) * np.linalg.norm(m[b, n]))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_cosine_similarity_of_zero_vectors_is_zero_with_finite_gradient():
    memory = rand(B, N, W).requires_grad_()
    keys = torch.zeros(B, H, W, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        memory[:, 2] = 0.0
    similarity = addressing.cosine_similarity(memory, keys)
    assert torch.all(similarity == 0)
    similarity.sum().backward()
    assert torch.isfinite(memory.grad).all() and torch.isfinite(keys.grad).all()


def test_content_weights_is_softmax_of_strength_times_cosine():
    memory, keys = rand(B, N, W), rand(B, H, W)
    strengths = torch.rand(B, H, dtype=torch.float64) * 5
    got = addressing.content_weights(memory, keys, strengths)
    m, k, s = memory.numpy(), keys.numpy(), strengths.numpy()
    for b in range(B):
        for h in range(H):
            cos = np.array([k[b, h] @ m[b, n] / (np.linalg.norm(k[b, h]) * np.linalg.norm(m[b, n])) for n in range(N)])
            e = np.exp(s[b, h] * cos)
            np.testing.assert_allclose(got[b, h].numpy(), e / e.sum(), atol=1e-6)


def test_content_weights_with_huge_strength_is_finite_and_one_hot():
    memory, keys = rand(B, N, W), rand(B, H, W)
    strengths = torch.full((B, H), 1e9, dtype=torch.float64, requires_grad=True)
    weights = addressing.content_weights(memory, keys, strengths)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, dtype=torch.float64))
    assert torch.allclose(weights.max(-1).values, torch.ones(B, H, dtype=torch.float64))
    weights.sum().backward()
    assert torch.isfinite(strengths.grad).all()


def test_interpolate():
    content, previous = distribution(B, H, N), distribution(B, H, N)
    gate = torch.rand(B, H, dtype=torch.float64)
    got = addressing.interpolate(content, previous, gate)
    for b in range(B):
        for h in range(H):
            want = gate[b, h] * content[b, h] + (1 - gate[b, h]) * previous[b, h]
            torch.testing.assert_close(got[b, h], want)
    torch.testing.assert_close(got.sum(-1), torch.ones(B, H, dtype=torch.float64))


def test_shift_matches_circular_convolution_loop():
    weights, shifts = distribution(B, H, N), distribution(B, H, S)
    got = addressing.shift(weights, shifts)
    w, s = weights.numpy(), shifts.numpy()
    want = np.zeros((B, H, N))
    for b in range(B):
        for h in range(H):
            for i in range(N):
                for k in range(S):
                    offset = k - S // 2
                    want[b, h, i] += w[b, h, (i - offset) % N] * s[b, h, k]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_shift_all_mass_on_plus_one_is_roll(window):
    weights = distribution(B, H, N)
    shifts = torch.zeros(B, H, window, dtype=torch.float64)
    if window == 1:
        shifts[..., 0] = 1.0
        torch.testing.assert_close(addressing.shift(weights, shifts), weights)
        return
    shifts[..., window // 2 + 1] = 1.0
    torch.testing.assert_close(addressing.shift(weights, shifts), torch.roll(weights, 1, -1))


def test_shift_rejects_even_window():
    with pytest.raises(ValueError, match="odd"):
        addressing.shift(distribution(B, H, N), distribution(B, H, 2))


def test_sharpen_matches_power_and_renormalise():
    weights = distribution(B, H, N)
    gamma = 1 + torch.rand(B, H, dtype=torch.float64) * 3
    got = addressing.sharpen(weights, gamma)
    want = weights ** gamma.unsqueeze(-1)
    want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(got, want)


def test_sharpen_near_one_hot_is_finite():
    weights = torch.zeros(B, H, N, dtype=torch.float32)
    weights[..., 3] = 1.0
    weights = weights.requires_grad_()
    gamma = torch.full((B, H), 50.0, requires_grad=True)
    out = addressing.sharpen(weights, gamma)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(B, H))
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(weights.grad).all() and torch.isfinite(gamma.grad).all()


@pytest.mark.parametrize("name", ["content", "interpolate", "shift", "sharpen", "pipeline"])
def test_weightings_are_distributions(name):
    memory, keys = rand(B, N, W), rand(B, H, W)
    strengths, gate = torch.rand(B, H, dtype=torch.float64) * 10, torch.rand(B, H, dtype=torch.float64)
    gamma = 1 + torch.rand(B, H, dtype=torch.float64) * 5
    content = addressing.content_weights(memory, keys, strengths)
    gated = addressing.interpolate(content, distribution(B, H, N), gate)
    shifted = addressing.shift(gated, distribution(B, H, S))
    results = {"content": content, "interpolate": gated, "shift": shifted,
               "sharpen": addressing.sharpen(distribution(B, H, N), gamma),
               "pipeline": addressing.sharpen(shifted, gamma)}
    weights = results[name]
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, dtype=torch.float64))


def test_gradcheck_every_function():
    memory = rand(2, 4, 3).requires_grad_()
    keys = rand(2, 3, 3).requires_grad_()
    strengths = (torch.rand(2, 3, dtype=torch.float64) * 3).requires_grad_()
    previous = distribution(2, 3, 4).requires_grad_()
    gate = torch.rand(2, 3, dtype=torch.float64).requires_grad_()
    shifts = distribution(2, 3, 3).requires_grad_()
    gamma = (1 + torch.rand(2, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(addressing.cosine_similarity, (memory, keys))
    assert torch.autograd.gradcheck(addressing.content_weights, (memory, keys, strengths))
    assert torch.autograd.gradcheck(addressing.interpolate, (previous, distribution(2, 3, 4).requires_grad_(), gate))
    assert torch.autograd.gradcheck(addressing.shift, (previous, shifts))
    assert torch.autograd.gradcheck(addressing.sharpen, (previous, gamma))


# Each a shape that broadcast silently to a result of the right size, or failed inside torch or einops
# with a message naming no argument. Sizes B, H, N, W, S = 3, 4, 7, 5, 3.
BAD_SHAPES = {
    "memory of one episode for a batch": (
        lambda: addressing.cosine_similarity(rand(1, N, W), rand(B, H, W)),
        r"keys: expected \(B, H, W\) = \(1, H, 5\) matching memory \(B, N, W\), got \(3, 4, 5\)"),
    "keys one wider than a slot": (
        lambda: addressing.content_weights(rand(B, N, W), rand(B, H, W + 1), torch.ones(B, H)),
        r"keys: expected \(B, H, W\) = \(3, H, 5\) matching memory \(B, N, W\), got \(3, 4, 6\)"),
    "one strength for all heads": (
        lambda: addressing.content_weights(rand(B, N, W), rand(B, H, W), torch.ones(B, 1)),
        r"strengths: expected \(B, H\) = \(3, 4\) matching keys \(B, H, W\), got \(3, 1\)"),
    "strengths of one head, no heads' axis": (
        lambda: addressing.content_weights(rand(B, N, W), rand(B, 1, W), torch.ones(B)),
        r"strengths: expected \(B, H\) = \(3, 1\) matching keys \(B, H, W\), got \(3,\)"),
    "memory without a batch": (
        lambda: addressing.content_weights(rand(N, W), rand(B, H, W), torch.ones(B, H)),
        r"memory: expected \(B, N, W\), got \(7, 5\)"),
    "previous weights of one head": (
        lambda: addressing.interpolate(distribution(B, H, N), distribution(B, 1, N), torch.rand(B, H)),
        r"previous: expected \(B, H, N\) = \(3, 4, 7\) matching content \(B, H, N\), got \(3, 1, 7\)"),
    "one gate for all heads": (
        lambda: addressing.interpolate(distribution(B, H, N), distribution(B, H, N), torch.rand(B, 1)),
        r"gate: expected \(B, H\) = \(3, 4\) matching content \(B, H, N\), got \(3, 1\)"),
    "one shift distribution for all heads": (
        lambda: addressing.shift(distribution(B, H, N), distribution(B, 1, S)),
        r"shift_weights: expected \(B, H, S\) = \(3, 4, S\) matching weights \(B, H, N\), got \(3, 1, 3\)"),
    "gamma of one episode for a batch": (
        lambda: addressing.sharpen(distribution(B, H, N), 1 + torch.rand(1, H)),
        r"gamma: expected \(B, H\) = \(3, 4\) matching weights \(B, H, N\), got \(1, 4\)"),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_a_wrong_shape_is_named_not_broadcast(case):
    make, match = BAD_SHAPES[case]
    with pytest.raises(ValueError, match=match):
        make()
