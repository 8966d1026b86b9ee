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
from torch import nn

from memnet import memory as mem
from memnet.controllers import ControllerFactory, ControllerState, LSTMController
from memnet.heads import NTMHeads
from memnet.memory import InitialWeights, MemoryInit, MemoryInitScheme
from memnet.models.pretrained import Pretrained
from memnet.utils import check_positive, check_sequence_inputs


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


class NTM(Pretrained, nn.Module):
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
        memory_init: ``constant`` (default), ``learned`` or ``random`` initial memory.
        learn_initial_state: learn the initial read vectors and head weightings
            (default: zero reads, weightings one-hot on slot 0).
    """

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
    ) -> None:
        super().__init__()
        check_positive(
            input_size=input_size,
            output_size=output_size,
            memory_size=memory_size,
            word_size=word_size,
            num_reads=num_reads,
            num_writes=num_writes,
        )
        self.input_size = input_size
        self.output_size = output_size
        self.memory_size = memory_size
        self.word_size = word_size
        self.num_reads = num_reads
        self.num_writes = num_writes
        factory = controller if controller is not None else LSTMController
        self.controller = factory(input_size + num_reads * word_size)
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
        self.output = nn.Linear(self.controller.output_size + num_reads * word_size, output_size)

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
        memory_size = self.memory_size if memory_size is None else memory_size
        check_positive(memory_size=memory_size)
        if dtype is None:
            dtype = self.output.weight.dtype
        if device is None:
            device = self.output.weight.device
        return NTMState(
            controller=self.controller.initial_state(batch_size, device=device, dtype=dtype),
            memory=self.memory_init(batch_size, memory_size, device=device, dtype=dtype, generator=generator),
            read_vectors=self.initial_weights.reads(batch_size, device=device, dtype=dtype),
            weights=self.initial_weights.weights(batch_size, memory_size, device=device, dtype=dtype),
        )

    def step(self, x: torch.Tensor, state: NTMState) -> tuple[torch.Tensor, NTMState]:
        """One step: x (B, D_in) -> logits (B, D_out) and the new state."""
        controller_input = torch.cat([x, mem.flatten_heads(state.read_vectors)], dim=-1)
        hidden, controller_state = self.controller.step(controller_input, state.controller)
        weights, erase, add = self.heads(hidden, state.weights, state.memory)
        memory = mem.write(state.memory, weights[:, self.num_reads :], erase, add)
        read_vectors = mem.read(memory, weights[:, : self.num_reads])
        logits = self.output(torch.cat([hidden, mem.flatten_heads(read_vectors)], dim=-1))
        return logits, NTMState(controller_state, memory, read_vectors, weights)

    def forward(
        self,
        inputs: torch.Tensor,
        *,
        state: NTMState | None = None,
        memory_size: int | None = None,
        return_trace: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, NTMTrace]:
        """Run a whole sequence.

        Args:
            inputs: (B, T, D_in).
            state: a starting state; default ``initial_state``.
            memory_size: N for this call (default ``self.memory_size``).
            return_trace: also return the per-step read and write weightings.

        Returns:
            logits (B, T, D_out), and with ``return_trace`` an ``NTMTrace``.
        """
        check_sequence_inputs(inputs, self.input_size, model="NTM", memory_size=memory_size)
        if state is None:
            state = self.initial_state(
                inputs.shape[0], memory_size=memory_size, device=inputs.device, dtype=inputs.dtype
            )
        outputs, weights = [], []
        for t in range(inputs.shape[1]):
            logits, state = self.step(inputs[:, t], state)
            outputs.append(logits)
            if return_trace:
                weights.append(state.weights)
        logits = torch.stack(outputs, dim=1)
        if not return_trace:
            return logits
        weights = torch.stack(weights, dim=1)  # (B, T, H, N)
        return logits, NTMTrace(weights[:, :, : self.num_reads], weights[:, :, self.num_reads :])
