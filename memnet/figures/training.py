"""Short training loops for the figures: small models trained in seconds when no checkpoint is given.

They are plain loops (no Trainer, no logger, no checkpoint files) over a batch sampler or a
data loader, seeded, with Adam and gradient clipping; the command that draws the figures
chooses the sizes and the number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from memnet.utils import is_integer

SequenceSampler = Callable[[torch.Generator], dict]  # generator -> batch with inputs, targets, mask


def masked_bits_per_sequence(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Binary cross-entropy over the scored bits, in bits per sequence, mean over the batch.

    logits, ``batch["targets"]`` (B, T, D); ``batch["mask"]`` (B, T).
    """
    nats = F.binary_cross_entropy_with_logits(logits, batch["targets"], reduction="none")
    return (nats * batch["mask"].unsqueeze(-1)).sum() / logits.shape[0] / math.log(2)


def train_sequence_model(
    net: nn.Module,
    sample: SequenceSampler,
    *,
    steps: int,
    lr: float = 3e-3,
    clip: float = 1.0,
    seed: int = 0,
) -> float:
    """Train ``net: (B, T, D_in) -> logits (B, T, D_out)`` on ``steps`` sampled batches; returns the last cost.

    The cost is the masked binary cross-entropy in bits per sequence (the NTM paper's); the
    data comes from ``sample(generator)`` with a generator seeded by ``seed``.
    """
    if not is_integer(steps) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    cost = float("nan")
    for _ in range(steps):
        batch = sample(generator)
        loss = masked_bits_per_sequence(net(batch["inputs"]), batch)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        cost = float(loss.detach())
    net.eval()
    return cost


def train_qa_model(
    net: nn.Module,
    batches: Callable[[], Iterable[dict]],
    *,
    epochs: int,
    lr: float = 0.01,
    clip: float = 40.0,
    seed: int = 0,
) -> float:
    """Train ``net(story, query) -> answer logits (B, A)`` for ``epochs`` passes; returns the last epoch's error (%).

    ``batches()`` gives one epoch of bAbI batches (``story``, ``query``, ``answer``).
    """
    if not is_integer(epochs) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    error = float("nan")
    for _ in range(epochs):
        wrong = total = 0
        for batch in batches():
            logits = net(batch["story"], batch["query"])
            loss = F.cross_entropy(logits, batch["answer"])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), clip)
            optimizer.step()
            wrong += int((logits.argmax(-1) != batch["answer"]).sum())
            total += len(batch["answer"])
        error = 100.0 * wrong / max(1, total)
    net.eval()
    return error
