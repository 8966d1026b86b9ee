"""Tests of memnet.allocation: DNC usage, allocation, precedence, temporal links, sparse links.

Sizes all differ (b=3, n=7, r=2, k=4) so that a swapped axis cannot pass.
"""

from __future__ import annotations

import pytest
import torch

from memnet import allocation as A

B, N, R, K = 3, 7, 2, 4


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def weightings(gen, *shape, total=None, dtype=torch.float64):
    """Random weightings over the last axis summing to ``total`` (default a random value ≤ 1)."""
    w = torch.softmax(3 * torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)
    if total is None:
        total = torch.rand(*shape[:-1], 1, generator=gen, dtype=dtype)
    return w * total


def run_links(gen, steps=6, dtype=torch.float64):
    """A dense link, its precedence and the write weightings of ``steps`` random writes."""
    link = torch.zeros(B, N, N, dtype=dtype)
    precedence = torch.zeros(B, N, dtype=dtype)
    writes = []
    for _ in range(steps):
        write = weightings(gen, B, N, dtype=dtype)
        link = A.update_link(link, precedence, write)
        precedence = A.update_precedence(precedence, write)
        writes.append(write)
    return link, precedence, writes


# --------------------------------------------------------------------------- retention, usage


def test_retention_matches_product_formula(gen):
    free = torch.rand(B, R, generator=gen, dtype=torch.float64)
    reads = weightings(gen, B, R, N)
    psi = A.retention(free, reads)
    expected = torch.ones(B, N, dtype=torch.float64)
    for r in range(R):
        expected = expected * (1 - free[:, r : r + 1] * reads[:, r])
    torch.testing.assert_close(psi, expected)
    assert psi.shape == (B, N) and psi.min() >= 0 and psi.max() <= 1


def test_usage_stays_in_unit_interval(gen):
    usage = torch.zeros(B, N, dtype=torch.float64)
    for _ in range(20):
        write = weightings(gen, B, N)
        psi = A.retention(torch.rand(B, R, generator=gen, dtype=torch.float64), weightings(gen, B, R, N))
        usage = A.update_usage(usage, write, psi)
        assert usage.min() >= 0 and usage.max() <= 1


def test_usage_is_one_after_full_write_and_zero_after_full_free():
    usage = torch.zeros(B, N)
    write = torch.zeros(B, N)
    write[:, 3] = 1.0  # a one-hot write with write gate 1
    usage = A.update_usage(usage, write, torch.ones(B, N))
    assert torch.all(usage[:, 3] == 1) and torch.all(usage[:, torch.arange(N) != 3] == 0)
    reads = torch.zeros(B, R, N)
    reads[:, 1, 3] = 1.0  # read head 1 read slot 3 ...
    free = torch.zeros(B, R)
    free[:, 1] = 1.0  # ... and frees it with gate 1
    usage = A.update_usage(usage, torch.zeros(B, N), A.retention(free, reads))
    assert torch.all(usage == 0)


# --------------------------------------------------------------------------- allocation


def test_allocation_non_negative_and_sums_to_one_minus_product(gen):
    usage = torch.rand(B, N, generator=gen, dtype=torch.float64)
    alloc = A.allocation_weights(usage)
    assert alloc.shape == (B, N) and alloc.min() >= 0
    lifted = A.USAGE_EPS + (1 - A.USAGE_EPS) * usage
    torch.testing.assert_close(alloc.sum(-1), 1 - lifted.prod(-1))
    assert torch.all(alloc.sum(-1) <= 1)


def test_allocation_matches_sorted_formula_loop(gen):
    usage = torch.rand(B, N, generator=gen, dtype=torch.float64)
    alloc = A.allocation_weights(usage)
    lifted = A.USAGE_EPS + (1 - A.USAGE_EPS) * usage
    for b in range(B):
        order = sorted(range(N), key=lambda i: float(lifted[b, i]))
        product = 1.0
        for slot in order:
            assert abs(float(alloc[b, slot]) - (1 - float(lifted[b, slot])) * product) < 1e-12
            product *= float(lifted[b, slot])


def test_allocation_goes_to_the_free_slot():
    usage = torch.ones(B, N)
    usage[:, 5] = 0.0
    alloc = A.allocation_weights(usage)
    assert torch.allclose(alloc[:, 5], torch.ones(B), atol=1e-5)
    assert alloc.argmax(-1).tolist() == [5] * B


def test_allocation_no_nan_gradient_with_ties_and_zeros():
    for usage in (torch.zeros(B, N), torch.ones(B, N), torch.full((B, N), 0.5)):
        usage = usage.double().requires_grad_()
        alloc = A.allocation_weights(usage)
        (alloc * torch.arange(N, dtype=torch.float64)).sum().backward()
        assert torch.isfinite(usage.grad).all()


def test_write_weighting_mixes_and_gates(gen):
    alloc, content = weightings(gen, B, N, total=1.0), weightings(gen, B, N, total=1.0)
    ga = torch.rand(B, generator=gen, dtype=torch.float64)
    gw = torch.rand(B, generator=gen, dtype=torch.float64)
    write = A.write_weighting(alloc, content, ga, gw)
    torch.testing.assert_close(write, gw[:, None] * (ga[:, None] * alloc + (1 - ga[:, None]) * content))
    assert torch.all(write.sum(-1) <= 1 + 1e-12)


# --------------------------------------------------------------------------- precedence, links


def test_precedence_sums_to_at_most_one(gen):
    precedence = torch.zeros(B, N, dtype=torch.float64)
    for _ in range(10):
        precedence = A.update_precedence(precedence, weightings(gen, B, N))
        assert precedence.min() >= 0 and torch.all(precedence.sum(-1) <= 1 + 1e-12)


def test_link_properties(gen):
    link, _, _ = run_links(gen, steps=10)
    assert link.min() >= 0 and link.max() <= 1
    assert torch.all(torch.diagonal(link, dim1=-2, dim2=-1) == 0)
    assert torch.all(link.sum(-1) <= 1 + 1e-12) and torch.all(link.sum(-2) <= 1 + 1e-12)


def test_link_matches_elementwise_loop(gen):
    prev_link, precedence, _ = run_links(gen, steps=3)
    write = weightings(gen, B, N)
    link = A.update_link(prev_link, precedence, write)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                expected = 0.0 if i == j else (
                    (1 - write[b, i] - write[b, j]) * prev_link[b, i, j] + write[b, i] * precedence[b, j]
                )
                assert abs(float(link[b, i, j]) - float(expected)) < 1e-12


def test_forward_weighting_follows_order_of_writes():
    """Write slots 4, 1, 6 in turn; reading slot 4 then stepping forward gives 1, then 6; backward inverts."""
    link = torch.zeros(1, N, N)
    precedence = torch.zeros(1, N)
    order = [4, 1, 6]
    for slot in order:
        write = torch.zeros(1, N)
        write[0, slot] = 1.0
        link = A.update_link(link, precedence, write)
        precedence = A.update_precedence(precedence, write)
    read = torch.zeros(1, 1, N)
    read[0, 0, 4] = 1.0
    seen = [4]
    for _ in range(2):
        read, _ = A.directional_weights(link, read)
        seen.append(int(read.argmax()))
        assert float(read.max()) == pytest.approx(1.0)
    assert seen == order
    for _ in range(2):
        _, read = A.directional_weights(link, read)
        seen.append(int(read.argmax()))
    assert seen == order + [1, 4]
    assert float(A.directional_weights(link, read)[1].sum()) == pytest.approx(0.0)  # nothing before the first


def test_directional_weights_match_loop(gen):
    link, _, _ = run_links(gen)
    reads = weightings(gen, B, R, N)
    forward, backward = A.directional_weights(link, reads)
    for b in range(B):
        for r in range(R):
            torch.testing.assert_close(forward[b, r], link[b] @ reads[b, r])
            torch.testing.assert_close(backward[b, r], link[b].T @ reads[b, r])


def test_mix_read_modes(gen):
    backward, content, forward = (weightings(gen, B, R, N, total=1.0) for _ in range(3))
    modes = torch.softmax(torch.randn(B, R, 3, generator=gen, dtype=torch.float64), -1)
    mixed = A.mix_read_modes(backward, content, forward, modes)
    expected = modes[..., 0:1] * backward + modes[..., 1:2] * content + modes[..., 2:3] * forward
    torch.testing.assert_close(mixed, expected)
    only_content = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(B, R, 3)
    torch.testing.assert_close(A.mix_read_modes(backward, content, forward, only_content), content)


# --------------------------------------------------------------------------- vectorised == per-example loop


def test_vectorised_equals_per_example_loop(gen):
    free = torch.rand(B, R, generator=gen, dtype=torch.float64)
    reads = weightings(gen, B, R, N)
    usage = torch.rand(B, N, generator=gen, dtype=torch.float64)
    write = weightings(gen, B, N)
    link, precedence, _ = run_links(gen)

    def all_outputs(free, reads, usage, write, link, precedence):
        psi = A.retention(free, reads)
        new_usage = A.update_usage(usage, write, psi)
        new_link = A.update_link(link, precedence, write)
        return (psi, new_usage, A.allocation_weights(new_usage), A.update_precedence(precedence, write),
                new_link, *A.directional_weights(new_link, reads))

    batched = all_outputs(free, reads, usage, write, link, precedence)
    for b in range(B):
        single = all_outputs(*(x[b : b + 1] for x in (free, reads, usage, write, link, precedence)))
        for got, want in zip(single, batched):
            torch.testing.assert_close(got, want[b : b + 1])


# --------------------------------------------------------------------------- gradcheck (float64)


def test_gradcheck_every_function(gen):
    def pos(*shape, scale=1.0):
        """A leaf tensor with entries in [0.1, 0.9]·scale (away from every kink)."""
        return (scale * (0.1 + 0.8 * torch.rand(*shape, generator=gen, dtype=torch.float64))).requires_grad_()

    free, reads, usage, write, psi = pos(B, R), pos(B, R, N, scale=1 / N), pos(B, N), pos(B, N, scale=1 / N), pos(B, N)
    link, precedence = pos(B, N, N, scale=1 / N), pos(B, N, scale=1 / N)
    gates = pos(B), pos(B)
    modes = pos(B, R, 3)
    more_reads = pos(B, R, N, scale=1 / N), pos(B, R, N, scale=1 / N)
    checks = [
        (A.retention, (free, reads)),
        (A.update_usage, (usage, write, psi)),
        (A.allocation_weights, (usage,)),
        (A.write_weighting, (psi, write, *gates)),
        (A.update_precedence, (precedence, write)),
        (A.update_link, (link, precedence, write)),
        (A.directional_weights, (link, reads)),
        (A.mix_read_modes, (reads, *more_reads, modes)),
    ]
    for function, inputs in checks:
        assert torch.autograd.gradcheck(function, inputs), function.__name__


def test_gradcheck_sparse_link(gen):
    dense, precedence, _ = run_links(gen, steps=5)
    values, indices = torch.topk(dense, K, dim=-1)
    values = values.detach().requires_grad_()
    write = (weightings(gen, B, N) * 0.5).requires_grad_()
    precedence = precedence.detach().requires_grad_()

    def update(values, precedence, write):
        return A.update_sparse_link(A.SparseLink(values, indices), precedence, write).values

    assert torch.autograd.gradcheck(update, (values, precedence, write))
    reads = weightings(gen, B, R, N).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, r: A.sparse_directional_weights(A.SparseLink(v, indices), r), (values, reads)
    )


# --------------------------------------------------------------------------- sparse links


def test_sparse_link_equals_dense_at_k_equal_n(gen):
    dense = torch.zeros(B, N, N, dtype=torch.float64)
    sparse = A.initial_sparse_link(B, N, N, dtype=torch.float64)
    precedence = torch.zeros(B, N, dtype=torch.float64)
    reads = weightings(gen, B, R, N)
    for _ in range(8):
        write = weightings(gen, B, N)
        dense = A.update_link(dense, precedence, write)
        sparse = A.update_sparse_link(sparse, precedence, write)
        precedence = A.update_precedence(precedence, write)
        torch.testing.assert_close(A.sparse_to_dense(sparse), dense)
        for got, want in zip(A.sparse_directional_weights(sparse, reads), A.directional_weights(dense, reads)):
            torch.testing.assert_close(got, want)


def test_sparse_link_keeps_k_distinct_columns_and_properties(gen):
    sparse = A.initial_sparse_link(B, N, K, dtype=torch.float64)
    precedence = torch.zeros(B, N, dtype=torch.float64)
    for _ in range(10):
        write = weightings(gen, B, N)
        sparse = A.update_sparse_link(sparse, precedence, write)
        precedence = A.update_precedence(precedence, write)
        assert sparse.values.shape == sparse.indices.shape == (B, N, K)
        sorted_columns = sparse.indices.sort(-1).values
        assert torch.all(sorted_columns[..., 1:] != sorted_columns[..., :-1])  # distinct per row
        dense = A.sparse_to_dense(sparse)
        assert dense.min() >= 0 and dense.max() <= 1
        assert torch.all(torch.diagonal(dense, dim1=-2, dim2=-1) == 0)
        assert torch.all(dense.sum(-1) <= 1 + 1e-12) and torch.all(dense.sum(-2) <= 1 + 1e-12)


def test_sparse_link_follows_one_hot_writes_exactly():
    """With one-hot writes each row has at most one entry, so K=2 loses nothing."""
    dense = torch.zeros(1, N, N)
    sparse = A.initial_sparse_link(1, N, 2)
    precedence = torch.zeros(1, N)
    for slot in [2, 5, 0, 6]:
        write = torch.zeros(1, N)
        write[0, slot] = 1.0
        dense = A.update_link(dense, precedence, write)
        sparse = A.update_sparse_link(sparse, precedence, write)
        precedence = A.update_precedence(precedence, write)
    torch.testing.assert_close(A.sparse_to_dense(sparse), dense)


def test_sparse_link_memory_is_linear_in_slots():
    bytes_per_row = {}
    for slots in (64, 256):
        link = A.initial_sparse_link(1, slots, 8)
        bytes_per_row[slots] = sum(t.numel() * t.element_size() for t in link) / slots
    assert bytes_per_row[64] == bytes_per_row[256] == 8 * (4 + 8)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("num_kept", [0, N + 1, 2.5, True])
def test_bad_sparsity_names_the_argument(num_kept):
    with pytest.raises(ValueError, match=r"link_sparsity K .* \[1, memory_size=7\]"):
        A.initial_sparse_link(B, N, num_kept)


def test_bad_read_modes_count_names_the_argument(gen):
    w = weightings(gen, B, R, N)
    with pytest.raises(ValueError, match=r"read_modes must have shape \(B, R, 3\)"):
        A.mix_read_modes(w, w, w, torch.ones(B, R, 2))
    with pytest.raises(ValueError, match="read_modes"):
        A.mix_read_modes(w, w, w, torch.ones(B, R + 1, 3))


def test_bad_head_counts_and_shapes_name_the_argument(gen):
    with pytest.raises(ValueError, match="free_gates .* one free gate per read head"):
        A.retention(torch.rand(B, R + 1), weightings(gen, B, R, N))
    with pytest.raises(ValueError, match="prev_read_weights must have shape"):
        A.retention(torch.rand(B, R), torch.rand(B, N))
    with pytest.raises(ValueError, match="prev_link must have shape"):
        A.update_link(torch.zeros(B, N, N + 1), torch.zeros(B, N), torch.zeros(B, N))
    with pytest.raises(ValueError, match="link must have shape"):
        A.directional_weights(torch.zeros(B, N, N), torch.zeros(B, R, N + 1))
    with pytest.raises(ValueError, match="prev_usage .* prev_write_weights"):
        A.update_usage(torch.zeros(B, N), torch.zeros(B, N + 1), torch.zeros(B, N))
    with pytest.raises(ValueError, match="write_gate must have shape"):
        A.write_weighting(torch.zeros(B, N), torch.zeros(B, N), torch.zeros(B), torch.zeros(B, 1))
