"""The Differentiable Neural Computer (Graves et al. 2016, Nature; Methods section).

One step, with R read heads and one write head:
    1. controller input = concat(x_t, r_{t−1})                  read vectors of the previous step
    2. h_t, controller state = controller.step(...)
    3. interface vector ξ_t = interface(h_t), split into named, squashed fields
    4. dynamic allocation: ψ_t from the free gates and w^r_{t−1}; usage u_t; allocation a_t
    5. write weighting w^w_t = g^w (g^a a_t + (1 − g^a) c^w_t), content c^w_t on M_{t−1}
    6. erase and add: M_t = M_{t−1} ∘ (1 − w^w e_tᵀ) + w^w v_tᵀ
    7. temporal links: L_t from w^w_t and p_{t−1}; precedence p_t
    8. read weightings w^r_t = π[1] b_t + π[2] c^r_t + π[3] f_t, content c^r_t on M_t,
       forward f_t = L_t w^r_{t−1}, backward b_t = L_tᵀ w^r_{t−1}
    9. read vectors r_t = M_tᵀ w^r_t;  y_t = output(concat(h_t, r_t))

Options: ``use_allocation=False`` drops the free gates and the allocation gate
(the write is content-addressed only); ``use_links=False`` drops the read
modes and the link matrix (reads are content-addressed only); ``link_sparsity=K``
keeps K entries per row of the link matrix (Sparse DNC, Rae et al. 2016), so
the link state costs O(N·K) rather than O(N²).

Axes:  b - batch, t - time, r - read heads, n - slots, w - slot width, m - read modes
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from memnet import addressing, allocation
from memnet import fused as fused_ops
from memnet import memory as mem
from memnet.allocation import NUM_READ_MODES, SparseLink
from memnet.controllers import ControllerFactory, ControllerState
from memnet.memory import MemoryInit, MemoryInitScheme
from memnet.models.core import AccessResult, Engine, MemoryModel
from memnet.models.pretrained import Pretrained
from memnet.utils import check_positive


class Interface(NamedTuple):
    """The interface vector ξ_t split into its fields, each squashed to its range.

    Fields switched off in the model (``use_allocation``, ``use_links``) are None.

    Attributes:
        read_keys: (B, R, W) read keys k^r_t (unsquashed).
        read_strengths: (B, R) read strengths β^r_t ≥ 1 (oneplus).
        write_key: (B, 1, W) write key k^w_t (unsquashed).
        write_strength: (B, 1) write strength β^w_t ≥ 1 (oneplus).
        erase: (B, 1, W) erase vector e_t in [0, 1] (sigmoid).
        write_vector: (B, 1, W) write vector v_t (unsquashed).
        free_gates: (B, R) free gates f^r_t in [0, 1] (sigmoid), or None.
        allocation_gate: (B,) allocation gate g^a_t in [0, 1] (sigmoid), or None.
        write_gate: (B,) write gate g^w_t in [0, 1] (sigmoid).
        read_modes: (B, R, 3) read modes π^r_t (softmax: backward, content, forward), or None.
    """

    read_keys: torch.Tensor
    read_strengths: torch.Tensor
    write_key: torch.Tensor
    write_strength: torch.Tensor
    erase: torch.Tensor
    write_vector: torch.Tensor
    free_gates: torch.Tensor | None
    allocation_gate: torch.Tensor | None
    write_gate: torch.Tensor
    read_modes: torch.Tensor | None


class DNCInterface(nn.Module):
    """One linear layer from the controller output to the interface vector ξ_t, then its fields.

    Args:
        input_size: width of the controller output h_t.
        num_reads: R, read heads.
        word_size: W, slot width.
        use_allocation: emit the free gates and the allocation gate.
        use_links: emit the read modes.
    """

    def __init__(
        self,
        *,
        input_size: int,
        num_reads: int,
        word_size: int,
        use_allocation: bool = True,
        use_links: bool = True,
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, num_reads=num_reads, word_size=word_size)
        self.num_reads = num_reads
        self.word_size = word_size
        self.use_allocation = use_allocation
        self.use_links = use_links
        sizes = {
            "read_keys": num_reads * word_size,
            "read_strengths": num_reads,
            "write_key": word_size,
            "write_strength": 1,
            "erase": word_size,
            "write_vector": word_size,
            "write_gate": 1,
        }
        if use_allocation:
            sizes |= {"free_gates": num_reads, "allocation_gate": 1}
        if use_links:
            sizes |= {"read_modes": num_reads * NUM_READ_MODES}
        self.sizes = sizes
        self.project = nn.Linear(input_size, sum(sizes.values()))

    def forward(self, hidden: torch.Tensor) -> Interface:
        """hidden (B, D) -> ``Interface`` of squashed fields."""
        raw = dict(zip(self.sizes, self.project(hidden).split(list(self.sizes.values()), dim=-1)))
        r = self.num_reads
        free_gates = allocation_gate = read_modes = None
        if self.use_allocation:
            free_gates = torch.sigmoid(raw["free_gates"])  # f^r ∈ [0, 1]
            allocation_gate = torch.sigmoid(raw["allocation_gate"]).squeeze(-1)  # g^a ∈ [0, 1]
        if self.use_links:  # π^r: softmax over (backward, content, forward)
            read_modes = F.softmax(rearrange(raw["read_modes"], "b (r m) -> b r m", r=r), dim=-1)
        return Interface(
            read_keys=rearrange(raw["read_keys"], "b (r w) -> b r w", r=r),  # k^r: unsquashed
            read_strengths=_oneplus(raw["read_strengths"]),  # β^r ∈ [1, ∞)
            write_key=rearrange(raw["write_key"], "b w -> b 1 w"),  # k^w: unsquashed
            write_strength=_oneplus(raw["write_strength"]),  # β^w ∈ [1, ∞), (B, 1)
            erase=rearrange(torch.sigmoid(raw["erase"]), "b w -> b 1 w"),  # e ∈ [0, 1]^W
            write_vector=rearrange(raw["write_vector"], "b w -> b 1 w"),  # v: unsquashed
            free_gates=free_gates,
            allocation_gate=allocation_gate,
            write_gate=torch.sigmoid(raw["write_gate"]).squeeze(-1),  # g^w ∈ [0, 1]
            read_modes=read_modes,
        )


class DNCState(NamedTuple):
    """Everything the DNC carries from one step to the next.

    Attributes:
        controller: the controller's own state.
        memory: (B, N, W) memory M.
        read_vectors: (B, R, W) read vectors r.
        read_weights: (B, R, N) read weightings w^r.
        write_weights: (B, N) write weighting w^w.
        usage: (B, N) usage u.
        precedence: (B, N) precedence p.
        link: (B, N, N) link matrix L, or a ``SparseLink`` (values, indices (B, N, K))
            when the model keeps K entries per row, or None without links (``use_links=False``).
    """

    controller: ControllerState
    memory: torch.Tensor
    read_vectors: torch.Tensor
    read_weights: torch.Tensor
    write_weights: torch.Tensor
    usage: torch.Tensor
    precedence: torch.Tensor
    link: torch.Tensor | SparseLink | None


class DNCTrace(NamedTuple):
    """Per-step quantities, for plots of memory access (``memnet.plots``).

    Attributes:
        read_weights: (B, T, R, N).
        write_weights: (B, T, 1, N).
        usage: (B, T, N) usage after each step's frees (before its write).
        link: (B, T, N, N) link matrix (dense, also for a sparse link; zeros without links).
        read_modes: (B, T, R, 3) backward, content, forward (content only without links).
        allocation_gate: (B, T) (zeros without allocation).
        write_gate: (B, T).
    """

    read_weights: torch.Tensor
    write_weights: torch.Tensor
    usage: torch.Tensor
    link: torch.Tensor
    read_modes: torch.Tensor
    allocation_gate: torch.Tensor
    write_gate: torch.Tensor


class DNC(Pretrained, MemoryModel):
    """A Differentiable Neural Computer over sequences.

    The parameters do not depend on ``memory_size``: a model trained with 32
    slots runs with 128 by passing ``memory_size=128`` to ``forward``.

    Args:
        input_size: D_in, width of one input step.
        output_size: D_out, width of one output step (logits).
        controller: factory ``input_size -> Controller``; default an LSTM with 100 units.
        memory_size: N, slots.
        word_size: W, slot width.
        num_reads: R, read heads.
        num_writes: write heads; must be 1 (the DNC has one write head).
        use_allocation: dynamic memory allocation (False: content-addressed writes only).
        use_links: temporal link matrix and read modes (False: content-addressed reads only).
        link_sparsity: K, entries kept per row of the link matrix (Sparse DNC);
            None keeps the dense N × N matrix. Must satisfy 1 ≤ K ≤ N, and needs ``use_links``.
        memory_init: ``constant`` (default), ``learned`` or ``random`` initial memory; ``random``
            draws a fresh N(0, 0.5²) memory per batch in training (from its own seeded stream, kept in
            checkpoints) and the same draw at every call in evaluation (``memnet.memory.MemoryInit``).
        engine: execution path (``memnet.models.core``): ``fused`` (default; fused content
            addressing, write, allocation and link update, hoisted input and output layers),
            ``eager`` (the reference functions, for debugging) or ``compiled``.
        compile_backend: the ``torch.compile`` backend of the ``compiled`` engine.
        compile_unroll: time steps per call of the ``compiled`` engine; None: 4 at every batch size
            on the CPU, 8 on a GPU (``memnet.models.core``).
        compile_mode: inductor's mode for the ``compiled`` engine (``memnet.models.core``): ``auto``
            (default) replays the compiled steps as CUDA graphs on a GPU (``reduce-overhead``) and
            compiles with inductor's default on the CPU; None: inductor's default everywhere.
    """

    # float16 (``trainer.precision 16-true``) gives non-finite gradients: usage products and the
    # allocation's cumulative product underflow its 5-bit exponent. bfloat16 and float32/64 work.
    refuses_precisions = ("16-true",)

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        controller: ControllerFactory | None = None,
        memory_size: int = 32,
        word_size: int = 20,
        num_reads: int = 1,
        num_writes: int = 1,
        use_allocation: bool = True,
        use_links: bool = True,
        link_sparsity: int | None = None,
        memory_init: MemoryInitScheme = "constant",
        engine: Engine = "fused",
        compile_backend: str = "inductor",
        compile_unroll: int | None = None,
        compile_mode: str | None = "auto",
    ) -> None:
        super().__init__(
            input_size,
            output_size,
            controller=controller,
            memory_size=memory_size,
            word_size=word_size,
            num_reads=num_reads,
            engine=engine,
            compile_backend=compile_backend,
            compile_unroll=compile_unroll,
            compile_mode=compile_mode,
        )
        if num_writes != 1:
            raise ValueError(f"num_writes must be 1 (the DNC has one write head), got {num_writes!r}")
        if link_sparsity is not None:
            if not use_links:
                raise ValueError(
                    f"link_sparsity={link_sparsity!r} needs use_links=True: without links there is no link "
                    "matrix to keep K entries of; set link_sparsity to null or use_links to true"
                )
            allocation.check_num_kept(link_sparsity, memory_size)
        self.use_allocation = use_allocation
        self.use_links = use_links
        self.link_sparsity = link_sparsity
        self._build_controller()
        self.interface = DNCInterface(
            input_size=self.controller.output_size,
            num_reads=num_reads,
            word_size=word_size,
            use_allocation=use_allocation,
            use_links=use_links,
        )
        self.memory_init = MemoryInit(word_size=word_size, scheme=memory_init)
        self._build_output()

    def initial_state(
        self,
        batch_size: int,
        *,
        memory_size: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> DNCState:
        """The state before the first step (all weightings, usage, precedence and links 0).

        ``memory_size`` overrides N for this episode. Without links (``use_links=False``) the
        state holds no link matrix (``link`` is None), so that its N × N zeros cost nothing.
        """
        memory_size, device, dtype = self._state_options(batch_size, memory_size, device, dtype)
        zeros = {"device": device, "dtype": dtype}
        if not self.use_links:
            link = None
        elif self.link_sparsity is not None:
            link = allocation.initial_sparse_link(batch_size, memory_size, self.link_sparsity, **zeros)
        else:
            link = torch.zeros(batch_size, memory_size, memory_size, **zeros)
        return DNCState(
            controller=self.controller.initial_state(batch_size, device=device, dtype=dtype),
            memory=self.memory_init(batch_size, memory_size, generator=generator, **zeros),
            read_vectors=torch.zeros(batch_size, self.num_reads, self.word_size, **zeros),
            read_weights=torch.zeros(batch_size, self.num_reads, memory_size, **zeros),
            write_weights=torch.zeros(batch_size, memory_size, **zeros),
            usage=torch.zeros(batch_size, memory_size, **zeros),
            precedence=torch.zeros(batch_size, memory_size, **zeros),
            link=link,
        )

    def access(self, hidden, controller_state, state: DNCState, *, fused: bool) -> AccessResult:
        """Steps 3–9: the interface, allocation, write, links and read (module docstring)."""
        xi = self.interface(hidden)
        content_weights = fused_ops.content_weights if fused else addressing.content_weights
        allocation_weights = fused_ops.allocation_weights if fused else allocation.allocation_weights
        write = fused_ops.write if fused else mem.write

        # Write: allocation from usage, mixed with content addressing on M_{t−1}.
        write_content = content_weights(state.memory, xi.write_key, xi.write_strength)[:, 0]
        usage = state.usage
        if self.use_allocation:
            psi = allocation.retention(xi.free_gates, state.read_weights)
            usage = allocation.update_usage(state.usage, state.write_weights, psi)
            write_weights = allocation.write_weighting(
                allocation_weights(usage), write_content, xi.allocation_gate, xi.write_gate
            )
        else:
            write_weights = rearrange(xi.write_gate, "b -> b 1") * write_content
        memory = write(state.memory, rearrange(write_weights, "b n -> b 1 n"), xi.erase, xi.write_vector)

        # Read: content on M_t, and one step along the temporal links from w^r_{t−1}.
        read_weights = content_weights(memory, xi.read_keys, xi.read_strengths)
        link, precedence = state.link, state.precedence
        if self.use_links:
            if self.link_sparsity is not None:
                link = allocation.update_sparse_link(state.link, state.precedence, write_weights)
                forward, backward = allocation.sparse_directional_weights(link, state.read_weights)
            elif fused:
                link = fused_ops.update_link(state.link, state.precedence, write_weights)
                # (B, R, N) @ (B, N, N): contiguous operands, the batched matmul's fast path
                forward = torch.matmul(state.read_weights, link.transpose(1, 2))
                backward = torch.matmul(state.read_weights, link)
            else:
                link = allocation.update_link(state.link, state.precedence, write_weights)
                forward, backward = allocation.directional_weights(link, state.read_weights)
            precedence = allocation.update_precedence(state.precedence, write_weights)
            if fused:
                modes = xi.read_modes
                read_weights = backward * modes[..., 0:1] + read_weights * modes[..., 1:2] + forward * modes[..., 2:3]
            else:
                read_weights = allocation.mix_read_modes(backward, read_weights, forward, xi.read_modes)
        read_vectors = mem.read(memory, read_weights)
        new_state = DNCState(
            controller_state, memory, read_vectors, read_weights, write_weights, usage, precedence, link
        )
        return AccessResult(read_vectors, new_state, xi)

    def trace_step(self, state: DNCState, extras: Interface) -> tuple[torch.Tensor, ...]:
        return self._trace_step(state, extras)

    def _make_trace(self, fields: list[torch.Tensor]) -> DNCTrace:
        return DNCTrace(*fields)

    def _trace_step(self, state: DNCState, xi: Interface) -> tuple[torch.Tensor, ...]:
        """The trace fields of one step, each without the time axis."""
        batch, slots = state.usage.shape
        if state.link is None:  # no links: the trace shows the zero matrix
            link = state.usage.new_zeros(batch, slots, slots)
        elif isinstance(state.link, SparseLink):
            link = allocation.sparse_to_dense(state.link)
        else:
            link = state.link
        if xi.read_modes is not None:
            read_modes = xi.read_modes
        else:  # content only
            read_modes = state.usage.new_tensor([0.0, 1.0, 0.0]).expand(batch, self.num_reads, NUM_READ_MODES)
        allocation_gate = xi.allocation_gate
        if allocation_gate is None:
            allocation_gate = state.usage.new_zeros(batch)
        return (
            state.read_weights,
            rearrange(state.write_weights, "b n -> b 1 n"),
            state.usage,
            link,
            read_modes,
            allocation_gate,
            xi.write_gate,
        )


def link_state_bytes(state: DNCState) -> int:
    """Bytes held by the link matrix of ``state`` (values and indices for a sparse link; 0 without links)."""
    if state.link is None:
        return 0
    if isinstance(state.link, SparseLink):
        return sum(t.numel() * t.element_size() for t in state.link)
    return state.link.numel() * state.link.element_size()


def _oneplus(x: torch.Tensor) -> torch.Tensor:
    """oneplus(x) = 1 + log(1 + eˣ) ∈ [1, ∞), the paper's squashing of strengths."""
    return 1 + F.softplus(x)
