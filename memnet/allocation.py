"""Dynamic memory allocation and temporal memory links of the DNC (Graves et al. 2016, Methods).

Pure, parameter-free, differentiable functions, one write head and R read
heads, every one working on a whole batch at once. The equations are those of
the paper's Methods section ("Dynamic memory allocation", "Temporal memory
linkage", "Read weighting"); the paper's symbols are given in each docstring.

The sparse link matrix follows the Sparse DNC (Rae et al. 2016): each row of L
keeps only its K largest entries, stored as values and column indices, so that
the link state costs O(N·K) instead of O(N²). At K = N it equals the dense link.

Axes:  b - batch, r - read heads, n, i, j - memory slots, k - kept entries per row,
       m - read modes
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import einsum, rearrange

from memnet.shapes import check_link_update, check_rank, check_same

# Usage is lifted to ε + (1 − ε)·u before allocation. A usage of exactly 0 would
# make the product Π u[φ_i] (and so the gradient of cumprod) degenerate, and
# free slots would all tie at 0; the lift keeps every factor strictly positive.
# 1e-6 is the value of the reference implementation (deepmind/dnc) and is far
# below any usage that matters while still representable in float32 next to 1.
USAGE_EPS = 1e-6

# The read modes, in the order of the paper's π_t: backward, content, forward.
NUM_READ_MODES = 3


class SparseLink(NamedTuple):
    """A link matrix that keeps K entries per row (Sparse DNC, Rae et al. 2016).

    Row i holds L[i, indices[i, k]] = values[i, k]; every other entry of the row is 0.
    The K column indices of a row are distinct.

    Attributes:
        values: (B, N, K) the kept entries, in [0, 1].
        indices: (B, N, K) their columns (int64).
    """

    values: torch.Tensor
    indices: torch.Tensor


def retention(free_gates: torch.Tensor, prev_read_weights: torch.Tensor) -> torch.Tensor:
    """Memory retention vector: how much of each slot is *not* freed by the read heads.

    ψ_t = Π_{r=1..R} (1 − f^r_t w^{r}_{t−1})

    Args:
        free_gates: (B, R) free gates f^r_t in [0, 1].
        prev_read_weights: (B, R, N) read weightings w^r_{t−1} of the previous step.

    Returns:
        (B, N) retention ψ_t in [0, 1].
    """
    check_rank("free_gates", free_gates, 2, "(B, R)")
    check_rank("prev_read_weights", prev_read_weights, 3, "(B, R, N)")
    if free_gates.shape != prev_read_weights.shape[:2]:
        raise ValueError(
            f"free_gates {tuple(free_gates.shape)} must be (B, R) matching prev_read_weights "
            f"{tuple(prev_read_weights.shape)} = (B, R, N): one free gate per read head"
        )
    factors = 1 - rearrange(free_gates, "b r -> b r 1") * prev_read_weights  # (B, R, N)
    # The product over the R heads as R − 1 multiplications: the backward of ``torch.prod`` asks the
    # device whether a factor is 0 (a host sync), which a CUDA graph of the training step cannot capture.
    heads = factors.unbind(1)
    psi = heads[0]
    for factor in heads[1:]:
        psi = psi * factor
    return psi


def update_usage(
    prev_usage: torch.Tensor, prev_write_weights: torch.Tensor, retention: torch.Tensor
) -> torch.Tensor:
    """Usage after the previous write and this step's frees.

    u_t = (u_{t−1} + w^w_{t−1} − u_{t−1} ∘ w^w_{t−1}) ∘ ψ_t

    A slot written with weight 1 becomes fully used (u = 1); a slot freed by a
    read head with weight 1 and free gate 1 (ψ = 0) becomes free (u = 0).
    The gradient flows into w^w_{t−1} as well (the paper's equation; deepmind/dnc stops it there).

    Args:
        prev_usage: (B, N) usage u_{t−1} in [0, 1].
        prev_write_weights: (B, N) write weighting w^w_{t−1} of the previous step.
        retention: (B, N) retention ψ_t in [0, 1].

    Returns:
        (B, N) usage u_t in [0, 1].
    """
    check_same("prev_usage", prev_usage, "prev_write_weights", prev_write_weights, "(B, N)")
    check_same("prev_usage", prev_usage, "retention", retention, "(B, N)")
    return (prev_usage + prev_write_weights - prev_usage * prev_write_weights) * retention


def allocation_weights(usage: torch.Tensor) -> torch.Tensor:
    """Allocation weighting: the least used slots get the write, in order of usage.

    With φ_t the slot indices sorted by usage ascending (φ_t[1] the least used),

        a_t[φ_t[j]] = (1 − u_t[φ_t[j]]) Π_{i=1..j−1} u_t[φ_t[i]]

    so a_t is non-negative and Σ_j a_t[j] = 1 − Π_j u_t[j]. Usage is first lifted
    to ε + (1 − ε) u (``USAGE_EPS``), which keeps the gradient finite when usages
    are 0 or tie; the sort itself passes no gradient (as in the paper).

    Args:
        usage: (B, N) usage u_t in [0, 1].

    Returns:
        (B, N) allocation weighting a_t.
    """
    check_rank("usage", usage, 2, "(B, N)")
    usage = USAGE_EPS + (1 - USAGE_EPS) * usage
    sorted_usage, order = torch.sort(usage, dim=-1, stable=True)
    # Exclusive cumulative product: Π_{i<j} u[φ_i], with an empty product of 1 first.
    ones = torch.ones_like(sorted_usage[:, :1])
    before = torch.cumprod(torch.cat([ones, sorted_usage[:, :-1]], dim=-1), dim=-1)
    sorted_allocation = (1 - sorted_usage) * before
    return torch.zeros_like(sorted_allocation).scatter(-1, order, sorted_allocation)


def write_weighting(
    allocation: torch.Tensor,
    content: torch.Tensor,
    allocation_gate: torch.Tensor,
    write_gate: torch.Tensor,
) -> torch.Tensor:
    """Write weighting: a gated mix of allocation and content addressing.

    w^w_t = g^w_t (g^a_t a_t + (1 − g^a_t) c^w_t)

    Args:
        allocation: (B, N) allocation weighting a_t.
        content: (B, N) write content weighting c^w_t.
        allocation_gate: (B,) allocation gate g^a_t in [0, 1].
        write_gate: (B,) write gate g^w_t in [0, 1].

    Returns:
        (B, N) write weighting w^w_t, summing to at most 1.
    """
    check_same("allocation", allocation, "content", content, "(B, N)")
    for name, gate in (("allocation_gate", allocation_gate), ("write_gate", write_gate)):
        if gate.shape != allocation.shape[:1]:
            raise ValueError(
                f"{name} must have shape (B,) = {tuple(allocation.shape[:1])}, got {tuple(gate.shape)}"
            )
    allocation_gate = rearrange(allocation_gate, "b -> b 1")
    write_gate = rearrange(write_gate, "b -> b 1")
    return write_gate * (allocation_gate * allocation + (1 - allocation_gate) * content)


def update_precedence(prev_precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    """Precedence weighting: how much each slot was the last one written to.

    p_t = (1 − Σ_i w^w_t[i]) p_{t−1} + w^w_t,   p_0 = 0

    Args:
        prev_precedence: (B, N) precedence p_{t−1}.
        write_weights: (B, N) write weighting w^w_t.

    Returns:
        (B, N) precedence p_t, summing to at most 1.
    """
    check_same("prev_precedence", prev_precedence, "write_weights", write_weights, "(B, N)")
    return (1 - write_weights.sum(-1, keepdim=True)) * prev_precedence + write_weights


def update_link(
    prev_link: torch.Tensor, prev_precedence: torch.Tensor, write_weights: torch.Tensor
) -> torch.Tensor:
    """Temporal link matrix: L[i, j] is the degree to which slot i was written just after slot j.

    L_t[i, j] = (1 − w^w_t[i] − w^w_t[j]) L_{t−1}[i, j] + w^w_t[i] p_{t−1}[j],   L_t[i, i] = 0

    Entries stay in [0, 1] and every row and column sums to at most 1.

    Args:
        prev_link: (B, N, N) link matrix L_{t−1}.
        prev_precedence: (B, N) precedence p_{t−1}.
        write_weights: (B, N) write weighting w^w_t.

    Returns:
        (B, N, N) link matrix L_t with a zero diagonal.
    """
    check_link_update(prev_link, prev_precedence, write_weights)
    slots = write_weights.shape[-1]
    write_i = rearrange(write_weights, "b i -> b i 1")
    write_j = rearrange(write_weights, "b j -> b 1 j")
    link = (1 - write_i - write_j) * prev_link + write_i * rearrange(prev_precedence, "b j -> b 1 j")
    off_diagonal = 1 - torch.eye(slots, dtype=link.dtype, device=link.device)
    return link * off_diagonal


def directional_weights(
    link: torch.Tensor, prev_read_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward weightings: one step along the order of writes from each read head.

    f^r_t = L_t w^r_{t−1},   b^r_t = L_tᵀ w^r_{t−1}

    Args:
        link: (B, N, N) link matrix L_t.
        prev_read_weights: (B, R, N) read weightings w^r_{t−1}.

    Returns:
        (forward, backward), each (B, R, N).
    """
    check_rank("link", link, 3, "(B, N, N)")
    check_rank("prev_read_weights", prev_read_weights, 3, "(B, R, N)")
    batch, _, slots = prev_read_weights.shape
    if link.shape != (batch, slots, slots):
        raise ValueError(
            f"link must have shape (B, N, N) = {(batch, slots, slots)} to match prev_read_weights "
            f"{tuple(prev_read_weights.shape)}, got {tuple(link.shape)}"
        )
    forward = einsum(link, prev_read_weights, "b i j, b r j -> b r i")
    backward = einsum(link, prev_read_weights, "b i j, b r i -> b r j")
    return forward, backward


def mix_read_modes(
    backward: torch.Tensor, content: torch.Tensor, forward: torch.Tensor, read_modes: torch.Tensor
) -> torch.Tensor:
    """Read weighting: backward, content and forward weightings mixed by the read modes.

    w^r_t = π_t[1] b_t + π_t[2] c^r_t + π_t[3] f_t

    Args:
        backward: (B, R, N) backward weightings b_t.
        content: (B, R, N) read content weightings c^r_t.
        forward: (B, R, N) forward weightings f_t.
        read_modes: (B, R, 3) read modes π_t (a softmax over the last axis), in the
            order backward, content, forward.

    Returns:
        (B, R, N) read weightings w^r_t.
    """
    check_same("backward", backward, "content", content, "(B, R, N)")
    check_same("forward", forward, "content", content, "(B, R, N)")
    expected = (*content.shape[:2], NUM_READ_MODES)
    if read_modes.shape != expected:
        raise ValueError(
            f"read_modes must have shape (B, R, {NUM_READ_MODES}) = {expected} (backward, content, "
            f"forward per read head), got {tuple(read_modes.shape)}"
        )
    modes = torch.stack([backward, content, forward], dim=-1)  # (B, R, N, 3)
    return einsum(modes, read_modes, "b r n m, b r m -> b r n")


# ----------------------------------------------------------------------------
# Sparse link matrix (Rae et al. 2016)
# ----------------------------------------------------------------------------


def initial_sparse_link(
    batch_size: int,
    memory_size: int,
    num_kept: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> SparseLink:
    """The empty sparse link L_0 = 0 with K = ``num_kept`` entries per row.

    Returns:
        ``SparseLink`` with values (B, N, K) zeros and, in every row, the distinct
        columns 0..K−1.
    """
    check_num_kept(num_kept, memory_size)
    values = torch.zeros(batch_size, memory_size, num_kept, device=device, dtype=dtype)
    columns = torch.arange(num_kept, device=device)
    indices = columns.expand(batch_size, memory_size, num_kept).contiguous()
    return SparseLink(values, indices)


def check_num_kept(num_kept: int, memory_size: int) -> None:
    """Raise ``ValueError`` unless 1 ≤ K = ``num_kept`` ≤ N = ``memory_size``."""
    if not isinstance(num_kept, int) or isinstance(num_kept, bool) or not 1 <= num_kept <= memory_size:
        raise ValueError(
            f"link_sparsity K (entries kept per row of the link matrix) must be an integer "
            f"in [1, memory_size={memory_size}], got {num_kept!r}"
        )


def update_sparse_link(
    prev_link: SparseLink, prev_precedence: torch.Tensor, write_weights: torch.Tensor
) -> SparseLink:
    """The link update of ``update_link``, keeping the K largest entries of every row.

    L̃[i, j] = (1 − w^w_t[i] − w^w_t[j]) L_{t−1}[i, j] + w^w_t[i] p̃_{t−1}[j],  L̃[i, i] = 0,
    L_t[i, ·] = the K largest entries of L̃[i, ·]

    where p̃_{t−1} keeps the K largest entries of the precedence (Sparse DNC). Row i
    of L̃ then has at most 2K non-zero candidates: its K kept columns and the K
    columns of p̃; a column in both is summed once. Time and memory are
    O(B·N·K²), never O(N²). With K = N nothing is dropped and the result equals
    ``update_link`` exactly.

    Args:
        prev_link: ``SparseLink`` with values and indices (B, N, K).
        prev_precedence: (B, N) precedence p_{t−1}.
        write_weights: (B, N) write weighting w^w_t.

    Returns:
        ``SparseLink`` L_t with values and indices (B, N, K).
    """
    check_same("prev_precedence", prev_precedence, "write_weights", write_weights, "(B, N)")
    values, indices = prev_link
    batch, slots = write_weights.shape
    num_kept = values.shape[-1]
    if values.shape != (batch, slots, num_kept) or indices.shape != values.shape:
        raise ValueError(
            f"prev_link values and indices must both have shape (B, N, K) = ({batch}, {slots}, K), "
            f"got {tuple(values.shape)} and {tuple(indices.shape)}"
        )
    check_num_kept(num_kept, slots)
    rows = rearrange(torch.arange(slots, device=values.device), "n -> 1 n 1")
    write_i = rearrange(write_weights, "b i -> b i 1")

    # Old entries, decayed: (1 − w[i] − w[j]) L[i, j] for the kept columns j.
    write_j = _gather_rows(write_weights, indices)
    old_values = (1 - write_i - write_j) * values  # (B, N, K)

    # New entries w[i] p[j] for the K largest precedences.
    top_precedence, top_columns = torch.topk(prev_precedence, num_kept, dim=-1)  # (B, K)
    new_values = write_i * rearrange(top_precedence, "b k -> b 1 k")  # (B, N, K)
    new_columns = rearrange(top_columns, "b k -> b 1 k").expand(batch, slots, num_kept)

    # A new column already kept in row i adds to that entry instead of competing with it.
    same = rearrange(indices, "b n k -> b n k 1") == rearrange(new_columns, "b n c -> b n 1 c")  # (B,N,K,K)
    old_values = old_values + einsum(same.to(new_values.dtype), new_values, "b n k c, b n c -> b n k")
    duplicate = same.any(dim=2)  # (B, N, K)

    candidate_values = torch.cat([old_values, new_values], dim=-1)  # (B, N, 2K)
    candidate_columns = torch.cat([indices, new_columns], dim=-1)
    off_diagonal = (candidate_columns != rows).to(candidate_values.dtype)
    candidate_values = candidate_values * off_diagonal  # L[i, i] = 0
    # Duplicates rank below every real candidate (values are ≥ 0), and at least
    # K real candidates (the old columns) exist, so no duplicate is ever kept.
    ranking = torch.where(
        torch.cat([torch.zeros_like(duplicate), duplicate], dim=-1),
        torch.full_like(candidate_values, -1.0),
        candidate_values.detach(),
    )
    keep = torch.topk(ranking, num_kept, dim=-1).indices  # (B, N, K)
    return SparseLink(torch.gather(candidate_values, -1, keep), torch.gather(candidate_columns, -1, keep))


def sparse_directional_weights(
    link: SparseLink, prev_read_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``directional_weights`` for a sparse link: f^r = L w^r, b^r = Lᵀ w^r in O(R·N·K).

    Args:
        link: ``SparseLink`` with values and indices (B, N, K).
        prev_read_weights: (B, R, N) read weightings w^r_{t−1}.

    Returns:
        (forward, backward), each (B, R, N).
    """
    check_rank("prev_read_weights", prev_read_weights, 3, "(B, R, N)")
    values, indices = link
    batch, num_reads, slots = prev_read_weights.shape
    if values.shape[:2] != (batch, slots) or indices.shape != values.shape:
        raise ValueError(
            f"link values and indices must have shape (B, N, K) with (B, N) = {(batch, slots)} "
            f"to match prev_read_weights, got {tuple(values.shape)} and {tuple(indices.shape)}"
        )
    num_kept = values.shape[-1]
    # forward[r, i] = Σ_k values[i, k] w[r, indices[i, k]]
    flat_indices = rearrange(indices, "b n k -> b 1 (n k)").expand(batch, num_reads, slots * num_kept)
    gathered = torch.gather(prev_read_weights, -1, flat_indices)
    gathered = rearrange(gathered, "b r (n k) -> b r n k", k=num_kept)
    forward = einsum(gathered, values, "b r n k, b n k -> b r n")
    # backward[r, j] = Σ_{i,k: indices[i,k] = j} values[i, k] w[r, i]
    contributions = einsum(values, prev_read_weights, "b n k, b r n -> b r n k")
    backward = torch.zeros_like(prev_read_weights).scatter_add(
        -1, flat_indices, rearrange(contributions, "b r n k -> b r (n k)")
    )
    return forward, backward


def sparse_to_dense(link: SparseLink) -> torch.Tensor:
    """The dense (B, N, N) link matrix of a ``SparseLink`` (for plots and tests)."""
    values, indices = link
    batch, slots, _ = values.shape
    return values.new_zeros(batch, slots, slots).scatter_add(-1, indices, values)


def _gather_rows(weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """weights (B, N) at the columns indices (B, N, K) -> (B, N, K), in O(N·K)."""
    num_kept = indices.shape[-1]
    flat = torch.gather(weights, -1, rearrange(indices, "b n k -> b (n k)"))
    return rearrange(flat, "b (n k) -> b n k", k=num_kept)
