"""Content and location addressing of an external memory (Graves et al. 2014, NTM, §3.3).

Pure, parameter-free, differentiable functions. Every one works on all heads of
a batch at once, and checks the shapes of its arguments on entry (``memnet.shapes``):
a wrong one raises a ``ValueError`` naming it instead of broadcasting silently.

Axes:  b - batch, h - heads, n - memory slots, w - slot width, s - shift window
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from memnet.shapes import check_memory_and_keys, check_per_head, check_shape, differs

# Added to norms before dividing: the cosine of a zero vector is then 0 rather
# than NaN, and its gradient stays finite. 1e-6 is far below the norm of any
# real slot or key yet large enough to stay meaningful in float32.
NORM_EPS = 1e-6

# Floor for a weighting before it is raised to a power in `sharpen`. Without it,
# w**gamma for w == 0 has an infinite (or NaN) gradient when gamma < 1 would be
# used and underflows to an all-zero row for large gamma; the floor keeps the
# log finite. It is below float32's resolution of a weighting that sums to 1.
WEIGHT_EPS = 1e-12


def cosine_similarity(memory: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every key with every memory slot.

    K[u, v] = u·v / (‖u‖ ‖v‖ + ε)

    Args:
        memory: (B, N, W) memory matrix M.
        keys: (B, H, W) one key k per head.

    Returns:
        (B, H, N) similarities in [-1, 1]; 0 where a key or a slot is the zero vector.
    """
    check_memory_and_keys(memory, keys)
    return _cosine_similarity(memory, keys)


def _cosine_similarity(memory: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    # (B, H, W) @ (B, W, N): a batched matmul, the fastest form of "b h w, b n w -> b h n"
    dots = torch.matmul(keys, memory.transpose(1, 2))
    key_norms = _safe_norm(keys)  # (B, H)
    memory_norms = _safe_norm(memory)  # (B, N)
    denominator = rearrange(key_norms, "b h -> b h 1") * rearrange(memory_norms, "b n -> b 1 n")
    return dots / (denominator + NORM_EPS)


def content_weights(
    memory: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor
) -> torch.Tensor:
    """Content-based weighting: a softmax over slots of strength × cosine similarity.

    w^c[i] = exp(β K[k, M(i)]) / Σ_j exp(β K[k, M(j)])

    Args:
        memory: (B, N, W) memory matrix M.
        keys: (B, H, W) keys k.
        strengths: (B, H) key strengths β ≥ 0.

    Returns:
        (B, H, N) weightings, each row non-negative and summing to 1. Large
        strengths do not overflow: the softmax subtracts the row maximum.
    """
    check_memory_and_keys(memory, keys)
    check_per_head("keys", keys, "(B, H, W)", "strengths", strengths)
    similarity = _cosine_similarity(memory, keys)
    return F.softmax(similarity * rearrange(strengths, "b h -> b h 1"), dim=-1)


def interpolate(
    content: torch.Tensor, previous: torch.Tensor, gate: torch.Tensor
) -> torch.Tensor:
    """Interpolation gate between the content weighting and the previous weighting.

    w^g = g w^c + (1 − g) w_{t−1}

    Args:
        content: (B, H, N) content weightings w^c.
        previous: (B, H, N) previous weightings w_{t−1}.
        gate: (B, H) interpolation gates g in [0, 1].

    Returns:
        (B, H, N) gated weightings.
    """
    check_per_head("content", content, "(B, H, N)", "gate", gate)
    if differs(previous.shape, content.shape):
        check_shape("previous", previous, "(B, H, N)", tuple(content.shape), "content (B, H, N)")
    gate = rearrange(gate, "b h -> b h 1")
    return gate * content + (1 - gate) * previous


def shift(weights: torch.Tensor, shift_weights: torch.Tensor) -> torch.Tensor:
    """Rotation of each weighting by a distribution over shifts (circular convolution).

    w̃[i] = Σ_j w[j] s[i − j]   (indices modulo N)

    ``shift_weights[..., k]`` is the weight of the offset ``k − S // 2``, so all
    mass on offset +1 equals ``torch.roll(weights, 1, -1)``.

    Args:
        weights: (B, H, N) weightings w^g.
        shift_weights: (B, H, S) shift distributions s, S odd.

    Returns:
        (B, H, N) shifted weightings.
    """
    check_per_head("weights", weights, "(B, H, N)", "shift_weights", shift_weights, last="S")
    window = shift_weights.shape[-1]
    if window % 2 != 1:
        raise ValueError(f"shift window S must be odd, got shift_weights with S={window}")
    half = window // 2
    num_slots = weights.shape[-1]
    # One gather instead of a loop over offsets: rolled[..., k, i] = w[i - (k - half)].
    offsets = torch.arange(-half, half + 1, device=weights.device)  # (S,)
    slots = torch.arange(num_slots, device=weights.device)  # (N,)
    index = (rearrange(slots, "n -> 1 n") - rearrange(offsets, "s -> s 1")) % num_slots  # (S, N)
    rolled = weights[..., index]  # (B, H, S, N)
    return (rolled * rearrange(shift_weights, "b h s -> b h s 1")).sum(dim=2)


def sharpen(weights: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Sharpening: raise each weighting to the power γ ≥ 1 and renormalise.

    w[i] = w̃[i]^γ / Σ_j w̃[j]^γ

    Computed as a softmax of γ log w̃, which is exact, cannot overflow, and does
    not return NaN for an all-but-zero weighting.

    Args:
        weights: (B, H, N) non-negative weightings w̃.
        gamma: (B, H) sharpening exponents γ ≥ 1.

    Returns:
        (B, H, N) sharpened weightings, each row summing to 1.
    """
    check_per_head("weights", weights, "(B, H, N)", "gamma", gamma)
    log_weights = torch.log(weights.clamp_min(WEIGHT_EPS))
    return F.softmax(log_weights * rearrange(gamma, "b h -> b h 1"), dim=-1)


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis with a finite gradient at the zero vector."""
    return torch.sqrt((x * x).sum(-1) + NORM_EPS**2)
