"""The Neural Turing Machine (Graves, Wayne & Danihelka 2014).

One step:
    1. controller input = concat(x_t, r_{t−1})            read vectors of the previous step
    2. h_t, controller state = controller.step(...)
    3. all heads address M_{t−1} from h_t (content, interpolation, shift, sharpening)
    4. write heads erase then add: M_t = write(M_{t−1}, w^w, e, a)
    5. read heads read the new memory: r_t = read(M_t, w^r)
    6. y_t = output(concat(h_t, r_t))

Axes:  b - batch, t - time, h - heads, r - read heads, n - slots, w - slot width
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from memnet import fused as fused_ops
from memnet import memory as mem
from memnet.controllers import ControllerFactory, ControllerState
from memnet.heads import NTMHeads
from memnet.memory import InitialWeights, MemoryInit, MemoryInitScheme
from memnet.models.core import AccessResult, Engine, MemoryModel
from memnet.models.pretrained import Pretrained


class NTMState(NamedTuple):
    """Everything the NTM carries from one step to the next.

    Attributes:
        controller: the controller's own state.
        memory: (B, N, W) memory M.
        read_vectors: (B, R, W) read vectors r.
        weights: (B, H, N) weightings of all heads, read heads first.
    """

    controller: ControllerState
    memory: torch.Tensor
    read_vectors: torch.Tensor
    weights: torch.Tensor


class NTMTrace(NamedTuple):
    """Per-step weightings, for plots of memory access.

    Attributes:
        read_weights: (B, T, R, N).
        write_weights: (B, T, H_w, N).
    """

    read_weights: torch.Tensor
    write_weights: torch.Tensor


class NTM(Pretrained, MemoryModel):
    """A Neural Turing Machine over sequences.

    The parameters do not depend on ``memory_size``: a model trained with 128
    slots runs with 512 by passing ``memory_size=512`` to ``forward`` (or setting
    the attribute).

    Args:
        input_size: D_in, width of one input step.
        output_size: D_out, width of one output step (logits).
        controller: factory ``input_size -> Controller``; default an LSTM with 100 units.
        memory_size: N, slots (128 in the NTM paper).
        word_size: W, slot width (20 in the NTM paper).
        num_reads: R, read heads.
        num_writes: write heads.
        shift_range: largest location shift; the window is 2·shift_range + 1.
        memory_init: ``constant`` (default), ``learned`` or ``random`` initial memory; ``random``
            draws a fresh N(0, 0.5²) memory per batch in training (from its own seeded stream, kept in
            checkpoints) and the same draw at every call in evaluation (``memnet.memory.MemoryInit``).
        learn_initial_state: learn the initial read vectors and head weightings
            (default: zero reads, weightings one-hot on slot 0).
        engine: execution path (``memnet.models.core``): ``eager`` (default; the reference
            functions), ``fused`` (the fused addressing and write, hoisted input and output
            layers: 1.1–1.2× on the CPU, equal to eager up to rounding) or ``compiled``
            (``torch.compile``, 2.3× after a compile of minutes). Eager stays the default
            because the copy recipe's trajectory is chaotic: with the fused path's rounding,
            seed 0 reached 0.08 bits at step 2,000 (one run) or later (another) rather
            than eager's 1,700, so ``make train``'s published figures keep eager's numbers.
        compile_backend: the ``torch.compile`` backend of the ``compiled`` engine.
        compile_unroll: time steps per call of the ``compiled`` engine; None: on the CPU 4 below
            batch 64, else 1; 8 on a GPU (``memnet.models.core``).
        compile_mode: inductor's mode for the ``compiled`` engine (``memnet.models.core``): ``auto``
            (default) replays the compiled steps as CUDA graphs on a GPU (``reduce-overhead``) and
            compiles with inductor's default on the CPU; None: inductor's default everywhere.
    """

    auto_unroll_max_batch = 64  # its unrolled compiled graph was slower at batch 128 (make bench)

    # float16 (``trainer.precision 16-true``) gives non-finite gradients from the first step: the
    # addressing's epsilons (``NORM_EPS``², ``WEIGHT_EPS``) and the squares of the initial memory's
    # entries (1e-6) underflow to 0 in its 5-bit exponent, so slot norms are 0 and the cosine's gradient
    # (1 / ε² overflows) is inf·0 = NaN. bfloat16 (float32's exponent) and float32/64 work.
    refuses_precisions = ("16-true",)

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        controller: ControllerFactory | None = None,
        memory_size: int = 128,
        word_size: int = 20,
        num_reads: int = 1,
        num_writes: int = 1,
        shift_range: int = 1,
        memory_init: MemoryInitScheme = "constant",
        learn_initial_state: bool = False,
        engine: Engine = "eager",
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
            num_writes=num_writes,
        )
        self.num_writes = num_writes
        self._build_controller()
        self.heads = NTMHeads(
            input_size=self.controller.output_size,
            num_reads=num_reads,
            num_writes=num_writes,
            word_size=word_size,
            shift_range=shift_range,
        )
        self.memory_init = MemoryInit(word_size=word_size, scheme=memory_init)
        self.initial_weights = InitialWeights(
            num_heads=num_reads + num_writes,
            num_reads=num_reads,
            word_size=word_size,
            learned=learn_initial_state,
        )
        self._build_output()

    def initial_state(
        self,
        batch_size: int,
        *,
        memory_size: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> NTMState:
        """The state before the first step; ``memory_size`` overrides N for this episode."""
        memory_size, device, dtype = self._state_options(batch_size, memory_size, device, dtype)
        return NTMState(
            controller=self.controller.initial_state(batch_size, device=device, dtype=dtype),
            memory=self.memory_init(batch_size, memory_size, device=device, dtype=dtype, generator=generator),
            read_vectors=self.initial_weights.reads(batch_size, device=device, dtype=dtype),
            weights=self.initial_weights.weights(batch_size, memory_size, device=device, dtype=dtype),
        )

    def access(self, hidden, controller_state, state: NTMState, *, fused: bool) -> AccessResult:
        """Steps 3–5: address M_{t−1} from h_t, erase and add, read the new memory."""
        weights, erase, add = self.heads(hidden, state.weights, state.memory, fused=fused)
        write = fused_ops.write if fused else mem.write
        memory = write(state.memory, weights[:, self.num_reads :], erase, add)
        read_vectors = mem.read(memory, weights[:, : self.num_reads])
        return AccessResult(read_vectors, NTMState(controller_state, memory, read_vectors, weights), None)

    def trace_step(self, state: NTMState, extras) -> tuple[torch.Tensor, ...]:
        return (state.weights,)

    def _make_trace(self, fields: list[torch.Tensor]) -> NTMTrace:
        weights = fields[0]  # (B, T, H, N)
        return NTMTrace(weights[:, :, : self.num_reads], weights[:, :, self.num_reads :])
