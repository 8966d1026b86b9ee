"""The memory matrix: reading, writing (erase then add), and initial states.

``read`` and ``write`` check the shapes of their arguments on entry
(``memnet.shapes``): a wrong one raises a ``ValueError`` naming it instead of
broadcasting silently.

Axes:  b - batch, h - heads, n - memory slots, w - slot width
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, repeat
from torch import nn

from memnet.shapes import check_memory_and_weights, check_write
from memnet.utils import SeededDraws, check_positive

# The constant every slot starts at under the default "constant" scheme. A small
# non-zero value keeps cosine similarity defined on the first step and breaks no
# symmetry that matters: content addressing falls back to location addressing.
# Published comparisons (Collier & Beel 2018) found this scheme converges about
# twice as fast as learned or random initial memories.
CONSTANT_INIT = 1e-6

MemoryInitScheme = Literal["constant", "learned", "random"]

# where a random initial memory is drawn, whatever device the network is on: one seed, one memory
CPU = torch.device("cpu")


def read(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Read one vector per head: a weighted sum of the slots.

    r = Σ_i w[i] M[i]

    Args:
        memory: (B, N, W) memory matrix M.
        weights: (B, H, N) read weightings w.

    Returns:
        (B, H, W) read vectors r.
    """
    check_memory_and_weights(memory, weights)
    # (B, H, N) @ (B, N, W): the batched matmul form of "b h n, b n w -> b h w"
    return torch.matmul(weights, memory)


def write(
    memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor
) -> torch.Tensor:
    """Erase then add, for all write heads at once.

    M_t = M_{t−1} ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ

    With several heads the order of the erasures does not matter (the product
    commutes) and the additions are summed, as in the NTM paper.

    Args:
        memory: (B, N, W) memory matrix M_{t−1}.
        weights: (B, H, N) write weightings w.
        erase: (B, H, W) erase vectors e, entries in [0, 1].
        add: (B, H, W) add vectors a.

    Returns:
        (B, N, W) the new memory M_t.
    """
    check_write(memory, weights, erase, add)
    erase_outer = rearrange(weights, "b h n -> b h n 1") * rearrange(erase, "b h w -> b h 1 w")
    # (B, N, W); one head (the usual case) needs no product, whose backward is costly
    keep = 1 - erase_outer[:, 0] if erase_outer.shape[1] == 1 else torch.prod(1 - erase_outer, dim=1)
    # (B, N, H) @ (B, H, W): Σ_h w_h a_hᵀ as one batched matmul
    add_outer = torch.matmul(rearrange(weights, "b h n -> b n h"), add)
    return memory * keep + add_outer


class MemoryInit(nn.Module):
    """The initial memory M_0 of an episode, independent of the memory size's parameters.

    Schemes:
        ``constant``: every entry is ``CONSTANT_INIT`` (the default; fastest to converge).
        ``learned``: one learned vector of width W shared by every slot, so that the
            parameters do not depend on N and the memory can be enlarged at evaluation.
        ``random``: entries drawn from N(0, ``random_std``²). In training each call (each
            batch) draws anew, from the module's own generator (seeded by ``seed``, its state
            kept in checkpoints, so a resumed run draws what the unbroken run would). In
            evaluation every call returns the same draw, made afresh from ``seed``: deliberately,
            so that a checkpoint's validation does not depend on what ran before it (every
            evaluation batch of one shape (B, N, W) starts from the same memory). Drawn on the
            CPU and moved to ``device``, so that one seed gives one memory on every device (a
            CUDA generator draws other numbers than a CPU one of the same seed). A
            ``torch.Generator`` passed to ``forward`` is used instead, in training and evaluation
            (drawn on its own device).

    Args:
        word_size: W, the width of a slot.
        scheme: one of ``constant``, ``learned``, ``random``.
        random_std: standard deviation of the ``random`` scheme.
        seed: seed of the ``random`` scheme's draws; default ``torch.initial_seed()`` (the run's
            ``seed_everything``).
    """

    def __init__(
        self, *, word_size: int, scheme: MemoryInitScheme = "constant", random_std: float = 0.5,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if scheme not in ("constant", "learned", "random"):
            raise ValueError(
                f"memory_init must be one of 'constant', 'learned', 'random', got {scheme!r}"
            )
        check_positive(word_size=word_size)
        self.scheme = scheme
        self.word_size = word_size
        self.random_std = random_std
        self.seed = torch.initial_seed() if seed is None else seed
        self._draws = SeededDraws(self.seed) if scheme == "random" else None
        if scheme == "learned":
            self.bias = nn.Parameter(torch.empty(word_size).uniform_(-0.1, 0.1))

    def forward(
        self,
        batch_size: int,
        memory_size: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Returns (B, N, W) initial memory for ``batch_size`` episodes of ``memory_size`` slots."""
        check_positive(memory_size=memory_size)
        shape = (batch_size, memory_size, self.word_size)
        if self.scheme == "constant":
            return torch.full(shape, CONSTANT_INIT, device=device, dtype=dtype)
        if self.scheme == "learned":
            return repeat(self.bias.to(dtype or self.bias.dtype), "w -> b n w", b=batch_size, n=memory_size)
        if generator is None:  # training continues the module's draws; evaluation draws the same each time
            generator = (self._draws.generator(CPU) if self.training else torch.Generator(CPU).manual_seed(self.seed))
        # on the generator's device (the CPU: the same numbers for a CPU and a CUDA run of one seed), then moved:
        # one (B, N, W) copy per episode, not per step
        noise = torch.randn(shape, device=generator.device, dtype=dtype, generator=generator) * self.random_std
        return noise.to(device=device)

    def set_seed(self, seed: int) -> None:
        """Draw from ``seed`` from now on, as if built with it (a network rebuilt by ``memnet.models.load``)."""
        self.seed = seed
        self._draws = SeededDraws(seed) if self.scheme == "random" else None

    def rng_state(self) -> dict | None:
        """The ``random`` scheme's generator state for a checkpoint (None: another scheme, or nothing drawn)."""
        return None if self._draws is None else self._draws.state()

    def set_rng_state(self, state: dict) -> None:
        """Continue the training draws from ``state`` (what :meth:`rng_state` returned)."""
        if self._draws is not None:
            self._draws.set_state(state)


class InitialWeights(nn.Module):
    """Initial head weightings w_0 and read vectors r_0, fixed or learned.

    Fixed (the default): weightings are one-hot on slot 0, the usual choice that
    lets location-based shifts walk the memory from a known place, and read
    vectors are zero. Learned (``learned=True``): each read head has a learned
    initial read vector (width W), and each head a learned focus f on slot 0,
    w_0 = softmax([f, 0, …, 0]) over the N slots. Neither depends on N, so the
    memory can still be enlarged at evaluation.

    Args:
        num_heads: number of heads whose weightings are initialised.
        num_reads: R, the number of read heads (for the read vectors).
        word_size: W.
        learned: learn the initial read vectors and weightings.
    """

    # Initial focus of a learned weighting: softmax([10, 0, ...]) puts all but
    # ~e^-10 per slot on slot 0, the fixed scheme's starting point.
    INITIAL_FOCUS = 10.0

    def __init__(self, *, num_heads: int, num_reads: int, word_size: int, learned: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_reads = num_reads
        self.word_size = word_size
        self.learned = learned
        if learned:
            self.read_vectors = nn.Parameter(torch.randn(num_reads, word_size) * 0.01)
            self.focus = nn.Parameter(torch.full((num_heads,), self.INITIAL_FOCUS))

    def weights(
        self, batch_size: int, memory_size: int, *, device=None, dtype=None
    ) -> torch.Tensor:
        """Returns (B, H, N) initial weightings, each summing to 1."""
        if self.learned:
            logits = torch.zeros(self.num_heads, memory_size, device=self.focus.device, dtype=dtype or self.focus.dtype)
            logits = torch.cat([self.focus.to(logits.dtype).unsqueeze(-1), logits[:, 1:]], dim=-1)
            return repeat(torch.softmax(logits, dim=-1), "h n -> b h n", b=batch_size)
        weights = torch.zeros(batch_size, self.num_heads, memory_size, device=device, dtype=dtype)
        weights[..., 0] = 1.0
        return weights

    def reads(self, batch_size: int, *, device=None, dtype=None) -> torch.Tensor:
        """Returns (B, R, W) initial read vectors."""
        if self.learned:
            return repeat(self.read_vectors.to(dtype or self.read_vectors.dtype), "r w -> b r w", b=batch_size)
        return torch.zeros(batch_size, self.num_reads, self.word_size, device=device, dtype=dtype)


def flatten_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H·W): read vectors as one controller input."""
    return rearrange(x, "b h w -> b (h w)")

