"""Fused NTM memory operations with hand-written backward passes.

The pure functions of ``memnet.addressing`` and ``memnet.memory`` are the
readable reference: each equation of the NTM paper is one function, and autograd
differentiates them. That costs a dozen autograd nodes and as many (B, H, N)
temporaries per head and per step, each paying per-operation overhead on the
CPU. The two ``torch.autograd.Function``s here compute the same values over all
heads at once and differentiate them by hand:

    address(memory, prev_weights, keys, strengths, gates, shift_weights, gammas)
        content → interpolation → shift → sharpening, one node instead of ~25
    content_weights(memory, keys, strengths)
        the content step alone (the DNC's read and write keys)

and, for the DNC, the allocation weighting (sort and cumulative product) and the
N × N temporal link update of ``memnet.allocation``.
    write(memory, weights, erase, add)
        M ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ, one node, no batched matmul of rank 1

Each checks the shapes of its arguments on entry as its reference does (``memnet.shapes``):
a wrong one raises a ``ValueError`` naming it instead of broadcasting silently.

They are tested against the reference (float64 values and gradients, gradcheck);
a model's ``engine="eager"`` uses the reference instead, for debugging. They are
differentiable once: a second derivative through them (``create_graph=True``, e.g. a
gradient penalty) raises, where the reference functions give it.

Axes:  b - batch, h - heads, n - memory slots, w - slot width, s - shift window
"""

from __future__ import annotations

import functools

import torch

from memnet.addressing import NORM_EPS, WEIGHT_EPS
from memnet.allocation import USAGE_EPS
from memnet.shapes import (
    check_link_update,
    check_memory_and_keys,
    check_per_head,
    check_rank,
    check_shape,
    check_write,
    differs,
)


def address(
    memory: torch.Tensor,
    prev_weights: torch.Tensor,
    keys: torch.Tensor,
    strengths: torch.Tensor,
    gates: torch.Tensor,
    shift_weights: torch.Tensor,
    gammas: torch.Tensor,
) -> torch.Tensor:
    """The NTM addressing pipeline for all heads, as one differentiable operation.

    Equals ``sharpen(shift(interpolate(content_weights(memory, keys, strengths),
    prev_weights, gates), shift_weights), gammas)`` of ``memnet.addressing``.

    Args:
        memory: (B, N, W) memory M_{t−1}.
        prev_weights: (B, H, N) weightings w_{t−1}.
        keys: (B, H, W) keys k.
        strengths: (B, H) key strengths β ≥ 0.
        gates: (B, H) interpolation gates g in [0, 1].
        shift_weights: (B, H, S) shift distributions s, S odd and S ≤ 2N + 1.
        gammas: (B, H) sharpening exponents γ ≥ 1.

    Returns:
        (B, H, N) weightings w_t, each row summing to 1.
    """
    check_memory_and_keys(memory, keys)
    for name, per_head in (("strengths", strengths), ("gates", gates), ("gammas", gammas)):
        check_per_head("keys", keys, "(B, H, W)", name, per_head)
    expected = (keys.shape[0], keys.shape[1], memory.shape[1])  # (B, H, N)
    if differs(prev_weights.shape, expected):
        check_shape("prev_weights", prev_weights, "(B, H, N)", expected, "keys (B, H, W) and memory (B, N, W)")
    check_per_head("prev_weights", prev_weights, "(B, H, N)", "shift_weights", shift_weights, last="S")
    window = shift_weights.shape[-1]
    if window % 2 != 1 or window // 2 > memory.shape[1]:
        raise ValueError(
            f"shift window S must be odd and at most 2N + 1 = {2 * memory.shape[1] + 1}, "
            f"got shift_weights with S={window}"
        )
    return _apply_exact(_Address, memory, prev_weights, keys, strengths, gates, shift_weights, gammas)


def content_weights(memory: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
    """Content weighting for all heads as one differentiable operation.

    Equals ``memnet.addressing.content_weights``: softmax over N of β·cosine(k, M_i).

    Args:
        memory: (B, N, W) memory M.
        keys: (B, H, W) keys k.
        strengths: (B, H) key strengths β.

    Returns:
        (B, H, N) weightings, rows summing to 1.
    """
    check_memory_and_keys(memory, keys)
    check_per_head("keys", keys, "(B, H, W)", "strengths", strengths)
    return _apply_exact(_Content, memory, keys, strengths)


def write(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """Erase then add for all write heads, as one differentiable operation.

    Equals ``memnet.memory.write``: M_t = M_{t−1} ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ.

    Args:
        memory: (B, N, W) memory M_{t−1}.
        weights: (B, H, N) write weightings w.
        erase: (B, H, W) erase vectors e.
        add: (B, H, W) add vectors a.

    Returns:
        (B, N, W) the new memory M_t.
    """
    check_write(memory, weights, erase, add)
    return _apply_exact(_Write, memory, weights, erase, add)


def _apply_exact(function: type[torch.autograd.Function], *tensors: torch.Tensor) -> torch.Tensor:
    """``function.apply`` on ``tensors`` cast to one dtype (their promotion), with autocast off.

    Under ``bf16-mixed`` precision the controller's outputs are bfloat16 and the memory
    float32; the hand-written backward passes need one dtype, as the forward had.
    """
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    with torch.autocast(device_type=tensors[0].device.type, enabled=False):
        return function.apply(*(t.to(dtype) for t in tensors))


class _NoSecondDerivative(torch.autograd.Function):
    """The gradients of a hand-written backward run with ``create_graph=True``, passed through as
    they are, on a node that raises if they are differentiated again."""

    @staticmethod
    def forward(ctx, name, count, *tensors):
        ctx.name = name
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"memnet.fused.{ctx.name} has no second derivative (its backward pass is written by hand); "
            "differentiate twice (create_graph=True, a gradient penalty) through engine='eager'"
        )


def _first_order(name: str):
    """Decorate the hand-written ``backward`` of the operation ``name``: exact first derivatives.

    The hand-written backward passes recompute nothing from the inputs with autograd: a
    second derivative through them (``create_graph=True``) would silently miss every
    term that goes through what the forward saved. Under ``create_graph`` the gradients
    are computed without a graph and tied, with the operation's saved tensors (its inputs
    among them) and the incoming gradients, to a node that raises when differentiated.
    """

    def decorate(backward):
        @functools.wraps(backward)
        def first_order_backward(ctx, *grads):
            if not torch.is_grad_enabled():  # an ordinary backward pass
                return backward(ctx, *grads)
            with torch.no_grad():
                results = backward(ctx, *grads)
            single = not isinstance(results, tuple)
            results = (results,) if single else results
            present = [index for index, result in enumerate(results) if result is not None]
            tied = _NoSecondDerivative.apply(
                name, len(present), *(results[index] for index in present), *grads, *ctx.saved_tensors
            )
            results = list(results)
            for index, result in zip(present, tied):
                results[index] = result
            return results[0] if single else tuple(results)

        return first_order_backward

    return decorate


def _windows(x: torch.Tensor, half: int) -> torch.Tensor:
    """(B, H, N) -> (B, H, N, S): windows[..., i, k] = x[..., (i + k − half) mod N]."""
    if half == 0:
        return x.unsqueeze(-1)
    num_slots = x.shape[-1]
    pieces = [x]
    # Circular padding of `half` slots on each side (repeated when half > N).
    while sum(p.shape[-1] for p in pieces) < num_slots + 2 * half:
        pieces = [x, *pieces, x]
    padded = torch.cat(pieces, dim=-1)
    start = (len(pieces) // 2) * num_slots - half
    return padded[..., start : start + num_slots + 2 * half].unfold(-1, 2 * half + 1, 1)


def _norm(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``_safe_norm``: sqrt(Σ x² + ε²) over the last axis."""
    return torch.sqrt((x * x).sum(-1) + NORM_EPS**2)


def _softmax_backward(output: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient of the logits of y = softmax(z) over the last axis, given dL/dy."""
    return output * (grad - (output * grad).sum(-1, keepdim=True))


class _Address(torch.autograd.Function):
    @staticmethod
    def forward(ctx, memory, prev_weights, keys, strengths, gates, shift_weights, gammas):
        half = shift_weights.shape[-1] // 2
        content, key_norm, memory_norm, denominator, cosine = _content_forward(memory, keys, strengths)
        gate = gates.unsqueeze(-1)
        gated = torch.lerp(prev_weights, content, gate)  # g c + (1 − g) w_{t−1}
        # shifted[i] = Σ_s gated[i − (s − half)] s[s] = Σ_k windows[i, k] s[2 half − k]
        reversed_shifts = shift_weights.flip(-1)
        shifted = (_windows(gated, half) * reversed_shifts.unsqueeze(-2)).sum(-1)
        clamped = shifted.clamp_min(WEIGHT_EPS)
        log_shifted = torch.log(clamped)
        weights = torch.softmax(log_shifted * gammas.unsqueeze(-1), dim=-1)
        ctx.half = half
        ctx.save_for_backward(  # the inputs as given: _first_order ties second derivatives to them
            memory, prev_weights, keys, strengths, gates, shift_weights, gammas,
            key_norm, memory_norm, denominator, cosine, content, gated, shifted, clamped, log_shifted, weights,
        )
        return weights

    @staticmethod
    @_first_order("address")
    def backward(ctx, grad_weights):
        (memory, prev_weights, keys, strengths, gates, shift_weights, gammas,
         key_norm, memory_norm, denominator, cosine, content, gated, shifted, clamped, log_shifted,
         weights) = ctx.saved_tensors
        half = ctx.half
        gate, reversed_shifts = gates.unsqueeze(-1), shift_weights.flip(-1)
        # Sharpening: w = softmax(γ log max(w̃, ε)).
        grad_logits = _softmax_backward(weights, grad_weights)
        grad_gammas = (grad_logits * log_shifted).sum(-1)
        passes = (shifted >= WEIGHT_EPS).to(grad_logits.dtype)  # clamp_min passes the gradient here
        grad_shifted = grad_logits * gammas.unsqueeze(-1) * passes / clamped
        # Shift: d gated[j] = Σ_s s[s] d shifted[j + s − half]; d s[s] = Σ_i d shifted[i] gated[i − s + half].
        shifts = reversed_shifts.flip(-1)
        grad_gated = (_windows(grad_shifted, half) * shifts.unsqueeze(-2)).sum(-1)
        grad_shift_weights = (_windows(gated, half) * grad_shifted.unsqueeze(-1)).sum(-2).flip(-1)
        # Interpolation.
        grad_content = grad_gated * gate
        grad_prev = grad_gated - grad_content
        grad_gates = (grad_gated * (content - prev_weights)).sum(-1)
        grad_memory, grad_keys, grad_strengths = _content_backward(
            grad_content, memory, keys, strengths, content, key_norm, memory_norm, denominator, cosine
        )
        return grad_memory, grad_prev, grad_keys, grad_strengths, grad_gates, grad_shift_weights, grad_gammas


def _content_forward(memory, keys, strengths):
    """Content weighting and what its backward needs (see ``memnet.addressing.content_weights``)."""
    key_norm = _norm(keys)  # (B, H)
    memory_norm = _norm(memory)  # (B, N)
    dots = torch.matmul(keys, memory.transpose(1, 2))  # (B, H, N)
    denominator = key_norm.unsqueeze(-1) * memory_norm.unsqueeze(1) + NORM_EPS
    cosine = dots / denominator
    content = torch.softmax(cosine * strengths.unsqueeze(-1), dim=-1)
    return content, key_norm, memory_norm, denominator, cosine


def _content_backward(grad_content, memory, keys, strengths, content, key_norm, memory_norm, denominator, cosine):
    """Gradients of memory, keys and strengths: softmax of β·cosine, cosine = dots / (‖k‖ ‖M_i‖ + ε)."""
    grad_scores = _softmax_backward(content, grad_content)
    grad_strengths = (grad_scores * cosine).sum(-1)
    grad_dots = grad_scores * strengths.unsqueeze(-1) / denominator
    grad_denominator = -grad_dots * cosine
    grad_key_norm = (grad_denominator * memory_norm.unsqueeze(1)).sum(-1)  # (B, H)
    grad_memory_norm = (grad_denominator * key_norm.unsqueeze(-1)).sum(1)  # (B, N)
    grad_keys = torch.matmul(grad_dots, memory) + keys * (grad_key_norm / key_norm).unsqueeze(-1)
    grad_memory = torch.addcmul(_head_outer_sum(grad_dots, keys), memory, (grad_memory_norm / memory_norm).unsqueeze(-1))
    return grad_memory, grad_keys, grad_strengths


class _Content(torch.autograd.Function):
    @staticmethod
    def forward(ctx, memory, keys, strengths):
        content, *saved = _content_forward(memory, keys, strengths)
        ctx.save_for_backward(memory, keys, strengths, content, *saved)
        return content

    @staticmethod
    @_first_order("content_weights")
    def backward(ctx, grad_content):
        return _content_backward(grad_content, *ctx.saved_tensors)


def _head_outer_sum(per_slot: torch.Tensor, per_width: torch.Tensor) -> torch.Tensor:
    """Σ_h per_slot_h per_width_hᵀ: (B, H, N), (B, H, W) -> (B, N, W).

    One head is a broadcast product (a rank-1 batched matmul falls back to a slow
    per-batch loop on the CPU); several are one batched matmul.
    """
    if per_slot.shape[1] == 1:
        return per_slot[:, 0].unsqueeze(-1) * per_width[:, 0].unsqueeze(-2)
    return torch.matmul(per_slot.transpose(1, 2).contiguous(), per_width)


class _Write(torch.autograd.Function):
    @staticmethod
    def forward(ctx, memory, weights, erase, add):
        if weights.shape[1] == 1:
            keep = 1 - weights[:, 0].unsqueeze(-1) * erase[:, 0].unsqueeze(-2)  # (B, N, W)
        else:
            keep = torch.prod(1 - weights.unsqueeze(-1) * erase.unsqueeze(-2), dim=1)
        ctx.save_for_backward(memory, weights, erase, add, keep)
        return memory * keep + _head_outer_sum(weights, add)

    @staticmethod
    @_first_order("write")
    def backward(ctx, grad):
        memory, weights, erase, add, keep = ctx.saved_tensors
        grad = grad.contiguous()
        grad_memory = grad * keep
        grad_keep = grad * memory  # d keep, (B, N, W)
        if weights.shape[1] == 1:
            # d (w eᵀ) = −d keep: d w = (d M_t) a − (d keep) e, d e = −(d keep)ᵀ w, as matmuls
            grad_weights = torch.matmul(add, grad.transpose(1, 2)) - torch.matmul(erase, grad_keep.transpose(1, 2))
            grad_erase = -torch.matmul(weights, grad_keep)
            return grad_memory, grad_weights, grad_erase, torch.matmul(weights, grad)
        # d (w_h e_hᵀ) = −d keep ∘ Π_{h' ≠ h} (1 − w_h' e_h'ᵀ), by prefix and suffix products.
        factors = 1 - weights.unsqueeze(-1) * erase.unsqueeze(-2)  # (B, H, N, W)
        ones = torch.ones_like(factors[:, :1])
        before = torch.cumprod(torch.cat([ones, factors[:, :-1]], dim=1), dim=1)
        after = torch.cumprod(torch.cat([ones, factors[:, 1:].flip(1)], dim=1), dim=1).flip(1)
        grad_outer = -grad_keep.unsqueeze(1) * before * after
        # d w_h = (d outer_h) e_h + (d M_t) a_h;  d e_h = (d outer_h)ᵀ w_h;  d a_h = (d M_t)ᵀ w_h
        grad_weights = (grad_outer * erase.unsqueeze(-2)).sum(-1) + torch.matmul(add, grad.transpose(1, 2))
        grad_erase = (grad_outer * weights.unsqueeze(-1)).sum(-2)
        grad_add = torch.matmul(weights, grad)
        return grad_memory, grad_weights, grad_erase, grad_add


# ----------------------------------------------------------------------------
# DNC: allocation and temporal links (Graves et al. 2016, Methods)
# ----------------------------------------------------------------------------


def allocation_weights(usage: torch.Tensor) -> torch.Tensor:
    """Allocation weighting as one differentiable operation.

    Equals ``memnet.allocation.allocation_weights``: with φ the slots sorted by lifted
    usage ascending, a[φ_j] = (1 − u[φ_j]) Π_{i<j} u[φ_i]; the sort passes no gradient.

    Args:
        usage: (B, N) usage u_t in [0, 1].

    Returns:
        (B, N) allocation weighting a_t.
    """
    check_rank("usage", usage, 2, "(B, N)")
    return _apply_exact(_Allocation, usage)


def update_link(prev_link: torch.Tensor, prev_precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    """Temporal link update as one differentiable operation.

    Equals ``memnet.allocation.update_link``:
    L_t[i, j] = (1 − w[i] − w[j]) L_{t−1}[i, j] + w[i] p_{t−1}[j], zero diagonal.

    Args:
        prev_link: (B, N, N) link matrix L_{t−1}.
        prev_precedence: (B, N) precedence p_{t−1}.
        write_weights: (B, N) write weighting w^w_t.

    Returns:
        (B, N, N) link matrix L_t.
    """
    check_link_update(prev_link, prev_precedence, write_weights)
    return _apply_exact(_Link, prev_link, prev_precedence, write_weights)


class _Allocation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, usage):
        lifted = USAGE_EPS + (1 - USAGE_EPS) * usage
        sorted_usage, order = torch.sort(lifted, dim=-1, stable=True)
        before = torch.cumprod(torch.cat([torch.ones_like(sorted_usage[:, :1]), sorted_usage[:, :-1]], -1), -1)
        sorted_allocation = (1 - sorted_usage) * before
        ctx.save_for_backward(sorted_usage, order, before, sorted_allocation, usage)  # usage: for _first_order
        return torch.zeros_like(sorted_allocation).scatter(-1, order, sorted_allocation)

    @staticmethod
    @_first_order("allocation_weights")
    def backward(ctx, grad):
        sorted_usage, order, before, sorted_allocation, _ = ctx.saved_tensors
        grad_sorted = torch.gather(grad, -1, order)
        # ∂a_j/∂u_k = −Π_{i<k} u_i for j = k, a_j / u_k for j > k, 0 otherwise (in sorted order).
        weighted = grad_sorted * sorted_allocation
        # Σ_{j>k} d a_j a_j, an exclusive suffix sum: the inclusive sum less a_k's own term would cancel
        # (a free slot's a_k ≈ 1 beside later terms of ~u_k = 1e-6), an error that the division by u_k
        # then multiplies by 1e6 (float32: 0.1 off a gradient of 2.8)
        later = torch.cat([weighted[:, 1:].flip(-1).cumsum(-1).flip(-1), torch.zeros_like(weighted[:, :1])], -1)
        grad_usage_sorted = (later / sorted_usage - grad_sorted * before) * (1 - USAGE_EPS)
        return torch.zeros_like(grad_usage_sorted).scatter(-1, order, grad_usage_sorted)


class _Link(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prev_link, prev_precedence, write_weights):
        slots = write_weights.shape[-1]
        write_i = write_weights.unsqueeze(-1)  # (B, N, 1)
        decay = 1 - write_i - write_weights.unsqueeze(-2)  # (B, N, N)
        off_diagonal = 1 - torch.eye(slots, dtype=prev_link.dtype, device=prev_link.device)
        ctx.save_for_backward(prev_link, prev_precedence, write_weights, decay, off_diagonal)
        return torch.addcmul(decay * prev_link, write_i, prev_precedence.unsqueeze(-2)) * off_diagonal

    @staticmethod
    @_first_order("update_link")
    def backward(ctx, grad):
        prev_link, prev_precedence, write_weights, decay, off_diagonal = ctx.saved_tensors
        grad = grad * off_diagonal
        grad_link = grad * decay
        decayed = grad * prev_link  # d(decay) ∘ L
        grad_write = (
            torch.matmul(grad, prev_precedence.unsqueeze(-1)).squeeze(-1) - decayed.sum(-1) - decayed.sum(-2)
        )
        grad_precedence = torch.matmul(write_weights.unsqueeze(-2), grad).squeeze(-2)
        return grad_link, grad_precedence, grad_write
