"""Contract tests of memnet.memory: read, write, initial states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memnet import memory as mem

B, H, N, W = 3, 4, 7, 5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_read_is_weighted_sum_of_slots():
    memory = torch.randn(B, N, W, dtype=torch.float64)
    weights = torch.softmax(torch.randn(B, H, N, dtype=torch.float64), -1)
    got = mem.read(memory, weights)
    assert got.shape == (B, H, W)
    m, w = memory.numpy(), weights.numpy()
    want = np.zeros((B, H, W))
    for b in range(B):
        for h in range(H):
            for n in range(N):
                want[b, h] += w[b, h, n] * m[b, n]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


def test_write_matches_loop_over_heads():
    memory = torch.randn(B, N, W, dtype=torch.float64)
    weights = torch.softmax(torch.randn(B, H, N, dtype=torch.float64), -1)
    erase = torch.rand(B, H, W, dtype=torch.float64)
    add = torch.randn(B, H, W, dtype=torch.float64)
    got = mem.write(memory, weights, erase, add)
    m, w, e, a = memory.numpy(), weights.numpy(), erase.numpy(), add.numpy()
    want = m.copy()
    for b in range(B):
        keep = np.ones((N, W))
        for h in range(H):
            keep *= 1 - np.outer(w[b, h], e[b, h])
        want[b] = m[b] * keep + sum(np.outer(w[b, h], a[b, h]) for h in range(H))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


def test_full_erase_then_add_replaces_a_slot():
    memory = torch.randn(B, N, W)
    weights = torch.zeros(B, 1, N)
    weights[..., 2] = 1.0
    add = torch.randn(B, 1, W)
    out = mem.write(memory, weights, torch.ones(B, 1, W), add)
    torch.testing.assert_close(out[:, 2], add[:, 0])
    torch.testing.assert_close(out[:, [0, 1, 3, 4, 5, 6]], memory[:, [0, 1, 3, 4, 5, 6]])


def test_gradcheck_read_and_write():
    memory = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.softmax(torch.randn(2, 3, 4, dtype=torch.float64), -1).requires_grad_()
    erase = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    add = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mem.read, (memory, weights))
    assert torch.autograd.gradcheck(mem.write, (memory, weights, erase, add))


def test_memory_init_schemes():
    constant = mem.MemoryInit(word_size=W)(B, N)
    assert constant.shape == (B, N, W) and torch.all(constant == mem.CONSTANT_INIT)
    learned = mem.MemoryInit(word_size=W, scheme="learned")
    out = learned(B, N)
    assert out.shape == (B, N, W) and out.requires_grad
    assert sum(p.numel() for p in learned.parameters()) == W  # independent of N
    random = mem.MemoryInit(word_size=W, scheme="random")
    a = random(B, N, generator=torch.Generator().manual_seed(1))
    b = random(B, N, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert a.std() > 0.1


def test_random_memory_init_draws_its_own_stream_kept_in_checkpoints_and_one_draw_in_evaluation():
    from memnet.lightning import SequenceModule
    from memnet.models.ntm import NTM

    random = mem.MemoryInit(word_size=W, scheme="random", seed=5)
    first = random(B, N)
    state = random.rng_state()
    second = random(B, N)
    assert not torch.equal(first, second)  # training: the stream goes on
    resumed = mem.MemoryInit(word_size=W, scheme="random", seed=5)
    resumed.set_rng_state(state)
    assert torch.equal(resumed(B, N), second)  # from a checkpoint's state: the unbroken run's next draw
    random.eval()
    torch.manual_seed(1)
    evaluated = random(B, N)
    torch.manual_seed(2)  # the global generator plays no part
    assert torch.equal(random(B, N), evaluated) and torch.equal(mem.MemoryInit(word_size=W, scheme="random", seed=5).eval()(B, N), evaluated)
    assert mem.MemoryInit(word_size=W).rng_state() is None

    module = SequenceModule(NTM(4, 4, memory_size=N, word_size=W, memory_init="random"))
    module.net(torch.zeros(2, 3, 4))
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["memnet_rng_states"]) == {"net.memory_init"}
    after = module.net.memory_init(B, N)
    module.net.memory_init(B, N)
    module.on_load_checkpoint(checkpoint)
    assert torch.equal(module.net.memory_init(B, N), after)


def _random_draws(monkeypatch) -> list:
    """Record the device of every generator ``torch.randn`` draws with."""
    draws, randn = [], torch.randn

    def spy(*args, generator=None, **kwargs):
        draws.append(None if generator is None else generator.device)
        return randn(*args, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "randn", spy)
    return draws


@pytest.mark.parametrize("training", [True, False])
def test_random_memory_init_is_drawn_on_the_cpu_whatever_the_device(monkeypatch, training):
    """The memory of one seed does not depend on the device: drawn by a CPU generator, then moved. (A CUDA
    generator of the same seed draws other numbers: a CPU run and a CUDA run started from different memories;
    asked for another device, the draw made a generator there, which on ``meta`` raises.)"""
    draws = _random_draws(monkeypatch)
    init = mem.MemoryInit(word_size=W, scheme="random", seed=5, random_std=0.3).train(training)
    moved = init(B, N, device="meta", dtype=torch.float64)  # a device that is not the CPU (no CUDA needed)
    assert moved.device.type == "meta" and moved.shape == (B, N, W) and moved.dtype == torch.float64
    assert draws == [torch.device("cpu")]
    manual = 0.3 * torch.randn(B, N, W, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(mem.MemoryInit(word_size=W, scheme="random", seed=5, random_std=0.3).train(training)(
        B, N, dtype=torch.float64), manual)  # the seed's first CPU draw, in training and evaluation


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_memory_init_is_the_same_on_cuda_as_on_the_cpu():
    from memnet.models.ntm import NTM

    for training in (True, False):
        cpu = mem.MemoryInit(word_size=W, scheme="random", seed=5).train(training)
        cuda = mem.MemoryInit(word_size=W, scheme="random", seed=5).train(training)
        for _ in range(2):  # the training stream goes on alike
            drawn = cuda(B, N, device="cuda")
            assert drawn.is_cuda and torch.equal(drawn.cpu(), cpu(B, N))
    torch.manual_seed(0)
    net = NTM(4, 4, memory_size=N, word_size=W, memory_init="random").eval()  # one draw, of the seed
    on_cpu = net.initial_state(B).memory
    assert torch.equal(net.cuda().initial_state(B).memory.cpu(), on_cpu)


def test_memory_init_rejects_bad_values():
    with pytest.raises(ValueError, match="memory_init"):
        mem.MemoryInit(word_size=W, scheme="zeros")
    with pytest.raises(ValueError, match="word_size"):
        mem.MemoryInit(word_size=0)
    with pytest.raises(ValueError, match="memory_size"):
        mem.MemoryInit(word_size=W)(B, 0)


def test_initial_weights_and_reads():
    init = mem.InitialWeights(num_heads=H, num_reads=2, word_size=W)
    weights = init.weights(B, N)
    assert weights.shape == (B, H, N)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H))
    assert torch.all(init.reads(B) == 0) and init.reads(B).shape == (B, 2, W)
    learned = mem.InitialWeights(num_heads=H, num_reads=2, word_size=W, learned=True)
    assert learned.reads(B).requires_grad
    for slots in (N, 3 * N):  # learned weightings do not depend on N
        w = learned.weights(B, slots)
        assert w.shape == (B, H, slots) and w.requires_grad
        torch.testing.assert_close(w.sum(-1), torch.ones(B, H))
        assert (w[..., 0] > 0.99).all()


# Each a shape that broadcast silently to a result of the right size, or failed inside torch with a message
# naming no argument. Sizes B, H, N, W = 3, 4, 7, 5.
def _weights(*shape):
    return torch.softmax(torch.randn(*shape), dim=-1)


BAD_SHAPES = {
    "read: memory of one episode for a batch": (
        lambda: mem.read(torch.randn(1, N, W), _weights(B, H, N)),
        r"weights: expected \(B, H, N\) = \(1, H, 7\) matching memory \(B, N, W\), got \(3, 4, 7\)"),
    "read: weights without a batch": (
        lambda: mem.read(torch.randn(B, N, W), _weights(H, N)),
        r"weights: expected \(B, H, N\) = \(3, H, 7\) matching memory \(B, N, W\), got \(4, 7\)"),
    "read: weights over fewer slots": (
        lambda: mem.read(torch.randn(B, N, W), _weights(B, H, N - 1)),
        r"weights: expected \(B, H, N\) = \(3, H, 7\) matching memory \(B, N, W\), got \(3, 4, 6\)"),
    "write: memory of one episode for a batch": (
        lambda: mem.write(torch.randn(1, N, W), _weights(B, 1, N), torch.rand(B, 1, W), torch.randn(B, 1, W)),
        r"weights: expected \(B, H, N\) = \(1, H, 7\) matching memory \(B, N, W\), got \(3, 1, 7\)"),
    "write: one erase vector for all heads": (
        lambda: mem.write(torch.randn(B, N, W), _weights(B, H, N), torch.rand(B, 1, W), torch.randn(B, H, W)),
        (r"erase: expected \(B, H, W\) = \(3, 4, 5\) matching weights \(B, H, N\) and memory \(B, N, W\), "
         r"got \(3, 1, 5\)")),
    "write: one erase value per head": (
        lambda: mem.write(torch.randn(B, N, W), _weights(B, H, N), torch.rand(B, H, 1), torch.randn(B, H, W)),
        r"erase: expected \(B, H, W\) = \(3, 4, 5\) .*, got \(3, 4, 1\)"),
    "write: add vectors one too wide": (
        lambda: mem.write(torch.randn(B, N, W), _weights(B, H, N), torch.rand(B, H, W), torch.randn(B, H, W + 1)),
        r"add: expected \(B, H, W\) = \(3, 4, 5\) .*, got \(3, 4, 6\)"),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_a_wrong_shape_is_named_not_broadcast(case):
    make, match = BAD_SHAPES[case]
    with pytest.raises(ValueError, match=match):
        make()


def test_the_shape_checks_trace_into_one_graph_of_any_sizes():
    """``torch.compile`` traces the entry checks as guards on sizes: one graph, no break, at symbolic
    sizes too; a wrong shape is still named."""
    from memnet import addressing

    def step(memory, keys, strengths, previous, gate, shifts, gamma, erase, add):
        content = addressing.content_weights(memory, keys, strengths)
        weights = addressing.sharpen(addressing.shift(addressing.interpolate(content, previous, gate), shifts), gamma)
        memory = mem.write(memory, weights[:, 1:], erase, add)
        return mem.read(memory, weights[:, :1]), addressing.cosine_similarity(memory, keys)

    def arguments(batch, slots, heads=3):
        g = torch.Generator().manual_seed(batch)
        distribution = lambda *shape: torch.softmax(torch.randn(*shape, generator=g), dim=-1)
        return (torch.randn(batch, slots, W, generator=g), torch.randn(batch, heads, W, generator=g),
                torch.rand(batch, heads, generator=g), distribution(batch, heads, slots),
                torch.rand(batch, heads, generator=g),
                distribution(batch, heads, 3), 1 + torch.rand(batch, heads, generator=g),
                torch.rand(batch, heads - 1, W, generator=g), torch.randn(batch, heads - 1, W, generator=g))

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager", fullgraph=True, dynamic=True)
    for batch, slots in ((B, N), (B + 1, N + 2)):
        for got, expected in zip(compiled(*arguments(batch, slots)), step(*arguments(batch, slots))):
            torch.testing.assert_close(got, expected)
    bad = list(arguments(B, N))
    bad[2] = torch.rand(B, 1)  # one strength for every head
    with pytest.raises(ValueError, match=r"strengths: expected \(B, H\) = \(3, 3\) matching keys"):
        torch.compile(step, backend="eager", dynamic=True)(*bad)
