"""NTM read and write heads, all computed in one tensor operation.

One linear layer turns the controller output h_t into the addressing
parameters of every head at once; the addressing pipeline of the NTM paper
(content → interpolation → shift → sharpening) then runs on all heads
together. Write heads also emit an erase and an add vector.

Axes:  b - batch, h - heads (read heads first, then write heads), n - slots,
       w - slot width, s - shift window
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from memnet import addressing
from memnet import fused as fused_ops
from memnet.utils import check_positive, is_integer


class HeadOutput(NamedTuple):
    """What the heads decide at one step.

    Attributes:
        weights: (B, H, N) weightings of all heads, the R read heads first.
        erase: (B, H_w, W) erase vectors e of the write heads, in [0, 1].
        add: (B, H_w, W) add vectors a of the write heads.
    """

    weights: torch.Tensor
    erase: torch.Tensor
    add: torch.Tensor


class NTMHeads(nn.Module):
    """Addressing of ``num_reads`` read and ``num_writes`` write heads.

    Per head the controller output is mapped to (NTM paper §3.3):
        k   key (W), used as is
        β   key strength, softplus so β ≥ 0
        g   interpolation gate, sigmoid so g ∈ [0, 1]
        s   shift distribution over offsets −shift_range..+shift_range, softmax
        γ   sharpening exponent, 1 + softplus so γ ≥ 1
    and per write head also
        e   erase vector (W), sigmoid
        a   add vector (W), unsquashed: a bounded add (tanh) caps what one write can
            store and was measured to slow copy-task convergence about fivefold

    Args:
        input_size: width of the controller output h_t.
        num_reads: R, read heads.
        num_writes: write heads.
        word_size: W, slot width.
        shift_range: largest shift offset; the window S is 2·shift_range + 1.
    """

    def __init__(
        self, *, input_size: int, num_reads: int, num_writes: int, word_size: int, shift_range: int = 1
    ) -> None:
        super().__init__()
        check_positive(input_size=input_size, num_reads=num_reads, num_writes=num_writes, word_size=word_size)
        if not is_integer(shift_range) or shift_range < 0:
            raise ValueError(f"shift_range must be a non-negative integer, got {shift_range!r}")
        self.num_reads = num_reads
        self.num_writes = num_writes
        self.num_heads = num_reads + num_writes
        self.word_size = word_size
        self.shift_window = 2 * shift_range + 1
        # key, strength, gate, shifts, gamma
        self.address_width = word_size + 3 + self.shift_window
        self.project = nn.Linear(
            input_size, self.num_heads * self.address_width + num_writes * 2 * word_size
        )

    def forward(
        self, hidden: torch.Tensor, prev_weights: torch.Tensor, memory: torch.Tensor, *, fused: bool = False
    ) -> HeadOutput:
        """Address the memory for all heads.

        Args:
            hidden: (B, D) controller output h_t.
            prev_weights: (B, H, N) weightings of the previous step.
            memory: (B, N, W) the memory the keys are compared with.
            fused: run the pipeline as ``memnet.fused.address`` (one autograd node with a
                hand-written backward) instead of the reference functions; same values.

        Returns:
            ``HeadOutput`` with weights (B, H, N), erase and add (B, H_w, W).
        """
        params = self.project(hidden)
        address, write = params.split(
            [self.num_heads * self.address_width, self.num_writes * 2 * self.word_size], dim=-1
        )
        address = rearrange(address, "b (h p) -> b h p", h=self.num_heads)
        key, strength, gate, shifts, gamma = address.split(
            [self.word_size, 1, 1, self.shift_window, 1], dim=-1
        )
        strength = F.softplus(strength.squeeze(-1))
        gate = torch.sigmoid(gate.squeeze(-1))
        shifts = F.softmax(shifts, dim=-1)
        gamma = 1 + F.softplus(gamma.squeeze(-1))
        if fused and self.shift_window // 2 <= memory.shape[1]:
            weights = fused_ops.address(memory, prev_weights, key, strength, gate, shifts, gamma)
        else:
            content = addressing.content_weights(memory, key, strength)
            gated = addressing.interpolate(content, prev_weights, gate)
            weights = addressing.sharpen(addressing.shift(gated, shifts), gamma)

        write = rearrange(write, "b (h p) -> b h p", h=self.num_writes)
        erase, add = write.split([self.word_size, self.word_size], dim=-1)
        return HeadOutput(weights, torch.sigmoid(erase), add)
