"""Optimisation recipes beyond torch's: a linear-start schedule that restarts, per-matrix clipping,
and gradients shrunk before a global-norm clip so that its norm cannot overflow.

Both reproduce the code of End-to-End Memory Networks (Sukhbaatar et al. 2015;
facebookarchive/MemNN, ``MemN2N-babi-matlab``): a linear-start phase of a fixed
number of epochs at its own learning rate, then the softmax back in and a step
schedule started afresh; and each weight matrix's gradient clipped on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch.optim.lr_scheduler import LRScheduler

ClipNorm = Literal["spectral", "frobenius"]


class LinearStartStepLR(LRScheduler):
    """A fixed linear-start phase at its own rate, then a step schedule that starts afresh.

    With L = ``linear_start_epochs`` and lr₀ the optimiser's learning rate, the rate
    of (0-based) epoch e is::

        e < L:   linear_start_lr
        e ≥ L:   lr₀ · gamma^⌊(e − L + 1) / step_size⌋

    i.e. counting the epochs after the linear start from 1, the rate is halved
    (gamma 0.5) at the start of epochs step_size, 2·step_size, …, as the authors'
    ``train.m`` does (``if mod(ep, lrate_decay_step) == 0``). Step it once per
    epoch (``scheduler_interval: epoch``; ``step`` is refused). ``memnet.callbacks.LinearStartSwitch``
    with ``epochs: L`` puts the softmax back at the same epoch and checks that the
    two agree.

    Example (L = 2, linear_start_lr 0.005, lr₀ 0.01, step_size 3, gamma 0.5), epochs
    0..7: 0.005, 0.005, 0.01, 0.01, 0.005, 0.005, 0.005, 0.0025.

    Args:
        optimizer: the optimiser; its learning rate is lr₀.
        linear_start_epochs: L, the length of the linear-start phase (0: none).
        linear_start_lr: the rate during the linear start.
        step_size: epochs between two reductions after the linear start.
        gamma: the factor of each reduction.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, linear_start_epochs: int, linear_start_lr: float,
                 step_size: int, gamma: float = 0.5, last_epoch: int = -1) -> None:
        if isinstance(linear_start_epochs, bool) or not isinstance(linear_start_epochs, int) or linear_start_epochs < 0:
            raise ValueError(f"linear_start_epochs must be a non-negative integer, got {linear_start_epochs!r}")
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
        if not linear_start_lr > 0:
            raise ValueError(f"linear_start_lr must be positive, got {linear_start_lr!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
        self.linear_start_epochs = linear_start_epochs
        self.linear_start_lr = linear_start_lr
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def rate(self, epoch: int, base_lr: float) -> float:
        """The learning rate of 0-based ``epoch`` for an optimiser whose rate is ``base_lr``."""
        if epoch < self.linear_start_epochs:
            return self.linear_start_lr
        return base_lr * self.gamma ** ((epoch - self.linear_start_epochs + 1) // self.step_size)

    def get_lr(self) -> list[float]:
        return [self.rate(self.last_epoch, base_lr) for base_lr in self.base_lrs]


def clip_per_matrix_(groups: Iterable[Sequence[torch.nn.Parameter]], max_norm: float,
                     norm: ClipNorm = "spectral") -> list[torch.Tensor]:
    """Clip each group's gradient to norm ``max_norm`` on its own, in place.

    A group is one weight matrix, possibly stored as several parameters of the
    same width (rows stacked: an embedding and its time rows). Its gradient G,
    (rows, D), is scaled by max_norm / ‖G‖ when ‖G‖ > max_norm. ``spectral`` is the
    largest singular value (MATLAB's ``norm`` of a matrix, what the authors' code
    uses), ``frobenius`` the square root of the sum of squares. A 1-d gradient is
    one row. Parameters without a gradient are skipped. Float16 and bfloat16 gradients
    have their norm computed in float32, and a norm whose squares could overflow is taken
    of G divided by its largest absolute entry.

    Returns:
        each group's norm before clipping (0 for a group without gradients).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    if norm not in ("spectral", "frobenius"):
        raise ValueError(f"norm must be 'spectral' or 'frobenius', got {norm!r}")
    norms = []
    for group in groups:
        grads = [p.grad for p in group if p.grad is not None]
        if not grads:
            norms.append(torch.zeros(()))
            continue
        rows = [g.reshape(1, -1) if g.dim() < 2 else g.reshape(g.shape[0], -1) for g in grads]
        if len({r.shape[1] for r in rows}) > 1:
            raise ValueError(f"a clipping group stacks matrices of one width, got widths {[r.shape[1] for r in rows]}")
        matrix = torch.cat(rows)
        if matrix.dtype in (torch.float16, torch.bfloat16):  # bf16-true / 16-true: eigvalsh has no such kernel
            matrix = matrix.float()
        # ‖G‖ = m ‖G / m‖ with m the largest |G_ij| where squares could overflow (float32 gradients of ~1e19: an
        # inf Frobenius norm zeroed the gradient, an inf Gram matrix failed eigvalsh); elsewhere m = 1, which
        # leaves every number as it was. No host sync.
        largest = overflow_scale(matrix)
        matrix = matrix / largest
        if norm == "spectral":
            # σ_max(G) = √λ_max(GᵀG): the eigenvalues of the (D, D) Gram matrix cost half of an SVD of G
            gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
            value = torch.linalg.eigvalsh(gram)[-1].clamp_min(0).sqrt()
        else:
            value = torch.linalg.matrix_norm(matrix, ord="fro")
        scale = (max_norm / largest / value).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))
        norms.append((largest * value).detach())
    return norms


def shrink_gradients_(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """Scale every gradient by one factor, in place, so that no entry is above ``max_norm`` in absolute value.

    Before a clip of the global norm to ``max_norm`` (torch's ``clip_grad_norm_``, which sums the squares in
    the gradients' dtype): float32 gradients of ~1e19 are finite, but their norm overflows to inf and the clip
    coefficient to 0, a step of nothing instead of a clipped one. Shrunk, the squares cannot overflow, the
    direction is kept, and a norm that was above ``max_norm`` stays at or above it, so the clip still ends on
    ``max_norm``. Gradients whose squares cannot overflow are left as they were, bit for bit. No host sync.
    """
    grads = [p.grad for p in parameters if p.grad is not None and p.grad.numel()]
    if not grads:
        return
    device = grads[0].device
    largest = torch.stack([norm.to(device, torch.float64) for norm in torch._foreach_norm(grads, math.inf)]).amax()
    # only where the squares could overflow: elsewhere the factor is 1, and the gradients stay bit for bit
    factor = torch.where(largest > _overflow_limit(sum(g.numel() for g in grads)),
                         (max_norm / largest).clamp(max=1.0), torch.ones_like(largest))
    torch._foreach_mul_(grads, factor)


def _overflow_limit(count: int) -> float:
    """The largest |entry| up to which the sum of ``count`` float32 squares cannot overflow."""
    return math.sqrt(torch.finfo(torch.float32).max / max(count, 1)) / 2


def overflow_scale(matrix: torch.Tensor) -> torch.Tensor:
    """The largest |entry| of ``matrix`` where the sum of its squares could overflow float32, else 1 (a 0-d tensor)."""
    largest = matrix.detach().abs().amax().to(torch.promote_types(matrix.dtype, torch.float32))  # float64 stays
    return torch.where(largest > _overflow_limit(matrix.numel()), largest, torch.ones_like(largest))
